"""How a task's samples come about, by kind of task: one completion per prompt (``Completions``) or one
multi-turn episode per sample (``Episodes``, for an ``EnvironmentTask``). Both are a ``SampleKind``;
``RLModule`` builds the one ``rollout_kind`` picks once per run (in ``setup``) and generates, scores and logs
through it, so no stage of the iteration branches on the task's type."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch

from epr_lightning.envs.base import EnvironmentTask
from epr_lightning.envs.metrics import episode_metrics, log_sample_episode, success_by_difficulty
from epr_lightning.prompts import AdmittedPrompts
from epr_lightning.rollout.base import Rollout, RolloutEngine, SamplingParams
from epr_lightning.rollout.episodes import EpisodeRollout, run_episodes
from epr_lightning.tasks.base import Example
from epr_lightning.tasks.scoring import RolloutScores, score_rollout


class SampleKind(Protocol):
    """What the iteration needs of a kind of sample: generate, score, and its own metrics and logging."""

    def generate(
        self, prompts: AdmittedPrompts, params: SamplingParams, n: int, model: torch.nn.Module | None
    ) -> Rollout:
        """``n`` samples per admitted prompt."""
        ...

    def score(self, examples: list[Example], rollout: Rollout) -> RolloutScores:
        """Rewards (and correctness, errors) of the rollout's samples."""
        ...

    def iteration_metrics(self, rollout: Rollout) -> dict[str, float]:
        """Metrics of this kind of rollout beyond the common ``rollout/`` ones."""
        ...

    def log_sample(self, logger: Any, rollout: Rollout, step: int) -> None:
        """Write a sample of the rollout to the logger."""
        ...

    def validation_metrics(self, rollout: Rollout) -> list[tuple[str, float, int]]:
        """Extra ``val/`` metrics as (name, value, weight), averaged over the epoch by weight."""
        ...


class Completions:
    """One completion per sample: the engine continues each prompt once, the task's reward scores the text.

    Args:
        task: the data module's task (its ``reward`` scores completions).
        engine: the rollout engine.
        reward_timeout_s: per-completion reward timeout (a raising/timing-out/NaN reward counts as 0).
    """

    def __init__(self, task: Any, engine: RolloutEngine, reward_timeout_s: float = 5.0) -> None:
        self.task = task
        self.engine = engine
        self.reward_timeout_s = reward_timeout_s

    def generate(
        self, prompts: AdmittedPrompts, params: SamplingParams, n: int, model: torch.nn.Module | None
    ) -> Rollout:
        return self.engine.generate(prompts.ids, params, n, model=model)

    def score(self, examples: list[Example], rollout: Rollout) -> RolloutScores:
        return score_rollout(self.task.reward, examples, rollout, self.reward_timeout_s)

    def iteration_metrics(self, rollout: Rollout) -> dict[str, float]:
        """Metrics of this kind of rollout beyond the common ``rollout/`` ones (none for completions)."""
        return {}

    def log_sample(self, logger: Any, rollout: Rollout, step: int) -> None:
        """Write a sample of the rollout to the logger (completions are sampled by ``SampleLogger``)."""

    def validation_metrics(self, rollout: Rollout) -> list[tuple[str, float, int]]:
        """Extra ``val/`` metrics as (name, value, weight), averaged over the epoch by weight."""
        return []


class Episodes:
    """One multi-turn episode per sample (``rollout/episodes.py``): the environment scores each episode at its
    end; ``episode/`` metrics, a sample episode as TensorBoard text, and success per difficulty in validation.

    Args:
        task: the ``EnvironmentTask``.
        engine: the rollout engine.
        tokenizer: the policy's tokenizer (observations are encoded with its chat template).
        template_kwargs: extra variables for the chat template.
        any_rank_active: in multi-process runs, whether any rank still has an active episode.
    """

    def __init__(
        self,
        task: EnvironmentTask,
        engine: RolloutEngine,
        tokenizer: Any,
        template_kwargs: dict[str, Any] | None = None,
        any_rank_active: Callable[[bool], bool] | None = None,
    ) -> None:
        self.task = task
        self.engine = engine
        self.tokenizer = tokenizer
        self.template_kwargs = template_kwargs
        self.any_rank_active = any_rank_active

    @property
    def threshold(self) -> float:
        return float(self.task.reward.success_threshold)

    def generate(
        self, prompts: AdmittedPrompts, params: SamplingParams, n: int, model: torch.nn.Module | None
    ) -> EpisodeRollout:
        return run_episodes(
            self.engine, model, self.tokenizer, self.task, prompts.examples, params, n,
            self.template_kwargs, self.any_rank_active,
        )  # fmt: skip

    def score(self, examples: list[Example], rollout: Rollout) -> RolloutScores:
        assert isinstance(rollout, EpisodeRollout)
        return rollout.scores(self.threshold)  # the environment scored each episode at its end

    def iteration_metrics(self, rollout: Rollout) -> dict[str, float]:
        assert isinstance(rollout, EpisodeRollout)
        return episode_metrics(rollout, self.threshold)

    def log_sample(self, logger: Any, rollout: Rollout, step: int) -> None:
        assert isinstance(rollout, EpisodeRollout)
        log_sample_episode(logger, rollout, step)

    def validation_metrics(self, rollout: Rollout) -> list[tuple[str, float, int]]:
        """Success per difficulty, and per episode: turns, tool calls, tool errors and the share of episodes
        that each cause ended (``episode/ended_by/<cause>``), so a zero success rate says why."""
        assert isinstance(rollout, EpisodeRollout)
        by_difficulty = success_by_difficulty(rollout.episodes, self.threshold)
        out = [(f"success_d{d}", rate, n) for d, (rate, n) in by_difficulty.items()]
        n = len(rollout.episodes)
        for name, value in episode_metrics(rollout, self.threshold).items():
            if name.startswith("episode/ended_by/"):
                out.append((name, value / max(n, 1), n))  # a count per batch in training; a share here
            elif not name.startswith("episode/success/"):
                out.append((name, value, n))
        return out


def rollout_kind(
    task: Any,
    engine: RolloutEngine,
    *,
    reward_timeout_s: float,
    tokenizer: Any,
    template_kwargs: dict[str, Any] | None = None,
    any_rank_active: Callable[[bool], bool] | None = None,
) -> SampleKind:
    """``Episodes`` for an ``EnvironmentTask``, else ``Completions``."""
    if isinstance(task, EnvironmentTask):
        return Episodes(task, engine, tokenizer, template_kwargs, any_rank_active)
    return Completions(task, engine, reward_timeout_s)
