"""Multi-turn environments: the contract (``Environment``, ``StepResult``), the task that carries one
(``EnvironmentTask``) and the built-in tool-use world (``ToolWorld``)."""

from epr_lightning.envs.base import Environment, EnvironmentTask, EpisodeReward, StepResult
from epr_lightning.envs.toolworld import ToolWorld

__all__ = ["Environment", "EnvironmentTask", "EpisodeReward", "StepResult", "ToolWorld"]
