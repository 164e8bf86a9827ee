"""The environment contract for multi-turn episodes, and the task that carries one to the trainer.

An episode: ``reset(example)`` gives the opening chat messages; the model answers; ``step(model_text)``
returns the observation (appended as a ``tool`` message, or a ``user`` one: ``EnvironmentTask.observation_role``),
whether the episode is over and, at the end, its reward. The rollout (``epr_lightning.rollout.episodes``) also
ends an episode itself on a turn limit or a token budget, and then asks ``final_reward()`` (a final-state check)
for the reward. An environment may name strings that end a model turn (``stop_strings``: ``</tool_call>``).

An environment object is a prototype: each episode runs on its own ``spawn()`` (a shallow copy by default),
so ``reset`` must (re)create every piece of per-episode state. Environments are chosen by ``class_path`` in
YAML, like tasks, under ``data.init_args.task: epr_lightning.envs.EnvironmentTask``.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Literal

from epr_lightning.tasks.base import Example, RewardFunction, Split, Task


@dataclass
class StepResult:
    """What the environment answers to one model turn.

    Attributes:
        observation: text shown to the model next (as a ``tool`` or ``user`` message); ignored when ``done``.
        done: the episode is over (the model gave its final answer).
        reward: the episode's reward when ``done`` (None = 0).
        info: counters summed over the episode and logged as ``episode/<name>`` (e.g. ``tool_calls``,
            ``tool_errors``).
    """

    observation: str = ""
    done: bool = False
    reward: float | None = None
    info: dict[str, float] = field(default_factory=dict)


class Environment(ABC):
    """A multi-turn world the policy acts in. Subclass it and implement ``examples``, ``reset`` and ``step``."""

    @abstractmethod
    def examples(self, split: Split) -> list[Example]:
        """The episodes' specifications of a split, in a fixed order (``meta["difficulty"]`` is logged when set)."""

    @abstractmethod
    def reset(self, example: Example) -> list[dict[str, Any]]:
        """Start an episode; return the opening messages (``[{"role": "system"|"user", "content": str}]``)."""

    @abstractmethod
    def step(self, action: str) -> StepResult:
        """Apply the model's turn (its decoded text, special tokens removed)."""

    def final_reward(self) -> float:
        """Reward of an episode the rollout ended (turn limit, token budget) before the environment did."""
        return 0.0

    def tools(self) -> list[dict[str, Any]] | None:
        """JSON-schema tool specs passed to chat templates that take ``tools=`` (None = none)."""
        return None

    def stop_strings(self) -> list[str]:
        """Strings that end a model turn where they appear (the end of an action, e.g. ``</tool_call>``); the
        turn keeps them. The rollout adds them to the engines' stop strings (none by default)."""
        return []

    def spawn(self) -> Environment:
        """A fresh object for one episode (``reset`` is called on it next)."""
        return copy.copy(self)


DEFAULT_WRAPPERS = {"tool": "{observation}", "user": "<tool_response>\n{observation}\n</tool_response>"}


class EpisodeReward(RewardFunction):
    """Stands in for a reward function: an episode's reward comes from its environment, not from a text."""

    def __init__(self, success_threshold: float = 1.0) -> None:
        self.success_threshold = success_threshold

    def __call__(self, example: Example, completion: str) -> float:
        raise RuntimeError("episode rewards come from the environment (see epr_lightning.rollout.episodes)")


class EnvironmentTask(Task):
    """A task whose examples are episodes of an ``Environment`` (the module then rolls out turn by turn).

    Args:
        environment: the world the episodes run in.
        max_turns: model turns per episode (the episode ends by ``turn_limit`` after that many).
        max_episode_tokens: tokens after the prompt (model and observation tokens together) per episode; a
            turn or an observation that would pass it ends the episode by ``token_budget``. Each turn is also
            capped by ``model.sampling.max_new_tokens``.
        step_timeout_s: an environment call (``step``, ``final_reward``) that takes longer ends the episode
            with reward 0 (counted in ``episode/env_errors``), like one that raises or returns a non-string
            observation.
        success_threshold: a reward ≥ this counts as a success (accuracy, pass@k, success per difficulty).
        observation_role: the chat role an observation is rendered in by the chat template: ``"tool"`` (Qwen,
            Hermes, Llama 3.1: the template's own tool-response format) or ``"user"`` (templates without a tool
            role, e.g. the SmolLM2 family's, which read results from a user turn).
        observation_wrapper: the message content, with ``{observation}`` standing for the environment's text;
            None = the text alone for ``"tool"``, ``"<tool_response>\n{observation}\n</tool_response>"`` for
            ``"user"``.
    """

    def __init__(
        self,
        environment: Environment,
        max_turns: int = 8,
        max_episode_tokens: int = 1024,
        step_timeout_s: float = 5.0,
        success_threshold: float = 1.0,
        observation_role: Literal["tool", "user"] = "tool",
        observation_wrapper: str | None = None,
    ) -> None:
        super().__init__(reward=EpisodeReward(success_threshold))
        if max_turns < 1:
            raise ValueError(f"task.max_turns must be >= 1, got {max_turns}")
        if max_episode_tokens < 1:
            raise ValueError(f"task.max_episode_tokens must be >= 1, got {max_episode_tokens}")
        if not step_timeout_s > 0:
            raise ValueError(f"task.step_timeout_s must be > 0, got {step_timeout_s}")
        shaped = float(getattr(environment, "shaped_reward", 0.0))
        if shaped and not success_threshold > shaped:
            raise ValueError(
                f"task.success_threshold ({success_threshold}) must be above the environment's shaped_reward "
                f"({shaped}): a shaped reward for an unverified episode would count as a success"
            )
        if observation_role not in ("tool", "user"):
            raise ValueError(f"task.observation_role must be 'tool' or 'user', got {observation_role!r}")
        if observation_wrapper is None:
            observation_wrapper = DEFAULT_WRAPPERS[observation_role]
        if "{observation}" not in observation_wrapper:
            raise ValueError(
                f"task.observation_wrapper must contain '{{observation}}', got {observation_wrapper!r}"
            )
        self.environment = environment
        self.observation_role = observation_role
        self.observation_wrapper = observation_wrapper
        self.max_turns = max_turns
        self.max_episode_tokens = max_episode_tokens
        self.step_timeout_s = step_timeout_s

    def default_reward(self) -> RewardFunction:
        return EpisodeReward()

    def examples(self, split: Split) -> list[Example]:
        return self.environment.examples(split)
