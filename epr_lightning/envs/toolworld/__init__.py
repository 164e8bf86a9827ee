"""ToolWorld: a deterministic, offline tool-use world (apps, JSON tool calls, tasks, state-based verifier)."""

from epr_lightning.envs.toolworld.env import ToolWorld

__all__ = ["ToolWorld"]
