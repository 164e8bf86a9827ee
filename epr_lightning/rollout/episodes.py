"""Multi-turn rollouts: episodes of an ``Environment``, generated turn by turn, batched, token-exact.

Each turn, the contexts of all still-active episodes go to the engine together (one ``generate`` call with
one sample each: the HF engine and both SGLang engines continue from the given ``input_ids``); finished
episodes drop out. A model turn ends at an end-of-turn token, at the per-turn token cap or at one of the
environment's ``stop_strings()`` (``</tool_call>``: added to the engines' stop strings, the turn keeps it). Its
token ids and sampler log-probs are kept as generated; the environment's answer is appended as tokens of the
chat template's tool (or user: ``task.observation_role``) message (``TurnTokens``) with mask 0, so it is out
of the loss, the advantages and the entropy statistics, and out of the text the diversity metrics read.

An episode ends by one of:
    ``final_answer``  the environment said ``done`` (its reward is the episode's),
    ``turn_limit``    ``max_turns`` model turns without that (reward: ``final_reward()``),
    ``token_budget``  the next model turn or observation would pass ``max_episode_tokens`` (likewise),
    ``env_error``     ``step``/``final_reward`` raised, timed out or returned a bad value (reward 0).

An ``env_error`` episode keeps what went wrong as a ``Failure`` (kind ``env_error:<Exception>``,
``env_timeout`` or ``env_bad_value``; the message; the file:line in the environment's code), which
``reward_failures.RewardFailureStop`` shows once per kind and per run.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from epr_lightning.envs.base import Environment, EnvironmentTask, StepResult
from epr_lightning.reward_failures import Failure, code_location, exception_failure, first_of_each_kind
from epr_lightning.rollout.base import Rollout, RolloutEngine, SamplingParams, TokenBatch
from epr_lightning.rollout.turn_tokens import TurnTokens
from epr_lightning.tasks.base import Example
from epr_lightning.tasks.scoring import RolloutScores

END_CAUSES = ("final_answer", "turn_limit", "token_budget", "env_error")


class EnvironmentFailure(Exception):
    """An environment call raised, hung past its timeout or answered something that is not a StepResult.

    ``failure`` says what went wrong and where (None: a bad value, located by the caller).
    """

    def __init__(self, message: str, failure: Failure | None = None) -> None:
        super().__init__(message)
        self.failure = failure


def call_with_timeout(fn: Any, timeout_s: float, *args: Any) -> Any:
    """``fn(*args)`` in a daemon thread; ``EnvironmentFailure`` when it raises or outlives ``timeout_s``.

    A hung call cannot be killed from Python: its thread is abandoned (daemon, so it never blocks exit).
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn(*args)
        except BaseException as err:
            box["error"] = err

    thread = threading.Thread(target=target, daemon=True, name="epr-env-call")
    thread.start()
    thread.join(timeout_s)
    name = getattr(fn, "__qualname__", fn)
    if thread.is_alive():
        message = f"{name} timed out after {timeout_s}s"
        raise EnvironmentFailure(message, Failure("env_timeout", message, code_location(fn)))
    if "error" in box:
        err = box["error"]
        failure = exception_failure(err, code_location(fn), prefix="env_")
        raise EnvironmentFailure(f"{name} raised {type(err).__name__}: {err}", failure)
    return box["value"]


def checked_step(result: Any) -> StepResult:
    if not isinstance(result, StepResult):
        raise EnvironmentFailure(f"step returned {type(result).__name__}, not a StepResult")
    if not result.done and not isinstance(result.observation, str):
        raise EnvironmentFailure(
            f"step returned a {type(result.observation).__name__} observation, not a str"
        )
    return result


def checked_reward(value: Any) -> float:
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise EnvironmentFailure(f"the environment's reward {value!r} is not a finite number")
    return float(value)


@dataclass
class Episode:
    """One episode's record. ``completion_ids`` = all tokens after the prompt; ``token_mask`` 1 = model token."""

    example: Example
    env: Environment
    prompt_ids: list[int]
    completion_ids: list[int] = field(default_factory=list)
    token_mask: list[int] = field(default_factory=list)
    sampler_logprobs: list[float] = field(default_factory=list)
    turns: list[dict[str, str]] = field(default_factory=list)  # {"role": "assistant"|"tool", "content": ...}
    reward: float = 0.0
    ended_by: str | None = None
    counters: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    failure: Failure | None = None  # what ended it with env_error, and where
    spans: list[tuple[str, int, int]] = field(default_factory=list)  # (role, start, end) in completion_ids

    def add(self, ids: list[int], logprobs: list[float] | None) -> None:
        """Append a model turn's tokens (with their sampler log-probs) or, with None, an observation's."""
        start = len(self.completion_ids)
        self.spans.append(("assistant" if logprobs is not None else "tool", start, start + len(ids)))
        self.completion_ids += ids
        self.token_mask += [1 if logprobs is not None else 0] * len(ids)
        self.sampler_logprobs += list(logprobs) if logprobs is not None else [0.0] * len(ids)

    @property
    def num_turns(self) -> int:
        return sum(t["role"] == "assistant" for t in self.turns)


@dataclass
class EpisodeRollout(Rollout):
    """A ``Rollout`` whose completions are whole episodes (model turns and observations interleaved).

    ``completion_text`` holds the model's turns only (joined by blank lines) for diversity metrics;
    ``episodes`` keep every turn, the reward, the end cause and the environment's counters.
    """

    episodes: list[Episode] = field(default_factory=list)

    def to_batch(self, pad_token_id: int, device: torch.device | str = "cpu") -> TokenBatch:
        batch = super().to_batch(pad_token_id, "cpu")
        for i, ep in enumerate(self.episodes):
            start = len(ep.prompt_ids)
            batch.loss_mask[i, start : start + len(ep.token_mask)] = torch.tensor(
                ep.token_mask, dtype=torch.float32
            )
        batch.sampler_logprobs *= batch.loss_mask
        return TokenBatch(**{k: v.to(device) for k, v in batch.__dict__.items()})

    def scores(self, success_threshold: float) -> RolloutScores:
        """Rewards [N], correctness [N], answers (none) and the number of failed episodes, like ``score_rollout``."""
        rewards = torch.tensor([ep.reward for ep in self.episodes], dtype=torch.float32)
        failed = [ep for ep in self.episodes if ep.ended_by == "env_error"]
        first = first_of_each_kind([ep.failure for ep in failed])
        return RolloutScores(
            rewards, rewards >= success_threshold, [None] * len(self.episodes), len(failed), first
        )


def _fail(ep: Episode, err: EnvironmentFailure, fn: Any) -> None:
    """End ``ep`` with ``env_error`` and reward 0 (a bad value is located at ``fn``'s definition)."""
    failure = err.failure or Failure("env_bad_value", str(err), code_location(fn))
    ep.reward, ep.ended_by, ep.error, ep.failure = 0.0, "env_error", str(err), failure


def _end(ep: Episode, cause: str, timeout_s: float) -> None:
    ep.ended_by = cause
    try:
        ep.reward = checked_reward(call_with_timeout(ep.env.final_reward, timeout_s))
    except EnvironmentFailure as err:
        _fail(ep, err, ep.env.final_reward)


def _take_step(ep: Episode, text: str, timeout_s: float) -> StepResult | None:
    """The environment's answer, or None after ending the episode with reward 0 on a failure."""
    try:
        result = checked_step(call_with_timeout(ep.env.step, timeout_s, text))
        for k, v in result.info.items():
            ep.counters[k] = ep.counters.get(k, 0.0) + float(v)
        if result.done:
            ep.reward, ep.ended_by = checked_reward(result.reward), "final_answer"
        return result
    except EnvironmentFailure as err:
        _fail(ep, err, ep.env.step)
        return None


def start_episodes(
    task: EnvironmentTask, examples: list[Example], num_samples: int, turn_tokens: TurnTokens
) -> list[Episode]:
    """``num_samples`` fresh episodes per example, prompt-major, each on its own spawned environment.

    An episode that cannot start (``reset`` raising or hanging) stops the run with one line naming the
    example: without opening messages there is nothing to sample from.
    """
    episodes = []
    for ex in examples:
        for _ in range(num_samples):
            env = task.environment.spawn()
            try:
                messages = call_with_timeout(env.reset, task.step_timeout_s, ex)
            except EnvironmentFailure as err:
                raise RuntimeError(
                    f"example {ex.id!r}: the environment could not start an episode: {err}"
                ) from None
            tools = env.tools()
            episodes.append(Episode(ex, env, turn_tokens.prompt(messages, tools)))
    return episodes


def run_episodes(
    engine: RolloutEngine,
    model: torch.nn.Module | None,
    tokenizer: Any,
    task: EnvironmentTask,
    examples: list[Example],
    params: SamplingParams,
    num_samples: int,
    template_kwargs: dict[str, Any] | None = None,
    any_rank_active: Callable[[bool], bool] | None = None,
) -> EpisodeRollout:
    """Roll out ``num_samples`` episodes per example, all active episodes batched per turn.

    ``any_rank_active(local)`` (multi-process runs) says whether any rank still has an active episode; a rank
    whose episodes have all ended keeps joining the turns with a 1-token dummy request until none has, so an
    engine whose ``generate`` is collective (the HF engine under FSDP2) sees the same number of calls on every
    rank.
    """
    turn_tokens = TurnTokens(
        tokenizer,
        params.stop_token_ids or [tokenizer.eos_token_id],
        template_kwargs,
        task.observation_role,
        task.observation_wrapper,
    )
    end_of_turn = set(params.stop_token_ids) | {tokenizer.eos_token_id}  # not the environment's stop strings
    env_stops = [s for s in task.environment.stop_strings() if s not in params.stop]
    params = dataclasses.replace(params, stop=[*params.stop, *env_stops])
    episodes = start_episodes(task, examples, num_samples, turn_tokens)
    budget = task.max_episode_tokens
    for turn in range(task.max_turns):
        active = [ep for ep in episodes if ep.ended_by is None]
        if any_rank_active is not None and not any_rank_active(bool(active)):
            break
        if not active:
            if any_rank_active is None:
                break
            dummy = dataclasses.replace(params, max_new_tokens=1)
            engine.generate([episodes[0].prompt_ids], dummy, 1, model=model)  # join the other ranks' turn
            continue
        room = max(budget - len(ep.completion_ids) for ep in active)
        turn_params = dataclasses.replace(params, max_new_tokens=min(params.max_new_tokens, room))
        out = engine.generate(
            [ep.prompt_ids + ep.completion_ids for ep in active], turn_params, 1, model=model
        )
        for ep, ids, lps in zip(active, out.completion_ids, out.sampler_logprobs, strict=True):
            left = budget - len(ep.completion_ids)
            ids, lps = list(ids[:left]), list(lps[:left])  # a prefix of a sample is a sample of that length
            ep.add(ids, lps)
            ep.turns.append({"role": "assistant", "content": tokenizer.decode(ids, skip_special_tokens=True)})
            # a turn that a stop string ended has no end-of-turn token: the observation's tokens close it
            stopped = bool(ids) and ids[-1] in end_of_turn
            if not stopped and len(ep.completion_ids) >= budget:
                _end(ep, "token_budget", task.step_timeout_s)
                continue
            result = _take_step(ep, ep.turns[-1]["content"], task.step_timeout_s)
            if result is None or result.done:
                continue
            if turn == task.max_turns - 1:
                _end(ep, "turn_limit", task.step_timeout_s)
                continue
            obs = turn_tokens.observation(result.observation, stopped)
            if len(ep.completion_ids) + len(obs) >= budget:  # no room left for the next model turn
                _end(ep, "token_budget", task.step_timeout_s)
                continue
            ep.add(obs, None)
            ep.turns.append({"role": "tool", "content": result.observation})
    return _as_rollout(episodes, num_samples, tokenizer, engine)


def any_rank_active_fn(device: torch.device) -> Callable[[bool], bool]:
    """``any_rank_active`` over the default process group (an all-reduce MAX of one flag)."""

    def any_rank_active(local: bool) -> bool:
        flag = torch.tensor([1.0 if local else 0.0], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    return any_rank_active


def _as_rollout(
    episodes: list[Episode], num_samples: int, tokenizer: Any, engine: RolloutEngine
) -> EpisodeRollout:
    return EpisodeRollout(
        prompt_ids=[ep.prompt_ids for ep in episodes],
        completion_ids=[ep.completion_ids for ep in episodes],
        sampler_logprobs=[ep.sampler_logprobs for ep in episodes],
        group_index=[i // num_samples for i in range(len(episodes))],
        finish_reason=["length" if ep.ended_by == "token_budget" else "stop" for ep in episodes],
        completion_text=[
            "\n\n".join(t["content"] for t in ep.turns if t["role"] == "assistant") for ep in episodes
        ],
        prompt_text=tokenizer.batch_decode([ep.prompt_ids for ep in episodes], skip_special_tokens=False),
        weight_version=getattr(engine, "weight_version", 0),
        episodes=episodes,
    )
