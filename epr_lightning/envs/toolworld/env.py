"""ToolWorld: the built-in multi-turn environment — apps with state, JSON tool calls, a state-based verifier."""

from __future__ import annotations

import copy
from typing import Any, Literal

from epr_lightning.envs.base import Environment, StepResult
from epr_lightning.envs.toolworld.api import ToolResult, dispatch, parse_tool_calls, registry, truncate
from epr_lightning.envs.toolworld.apps import APPS, build_apps
from epr_lightning.envs.toolworld.prompts import SHORT_INSTRUCTIONS, PromptStyle, system_message
from epr_lightning.envs.toolworld.tasks import LEVELS, generate_tasks
from epr_lightning.envs.toolworld.verifier import MAX_SHAPED, episode_reward
from epr_lightning.tasks.base import Example, Split

INSTRUCTIONS = (
    "You complete the user's task by calling tools. To call a tool, write\n"
    '<tool_call>\n{"name": "<tool name>", "arguments": {<arguments as JSON>}}\n</tool_call>\n'
    "To call several tools at once, put a JSON list of calls in one block. The results come back in the next "
    "message. Look up ids before using them. When the task is done, reply with a short final answer and no "
    "tool call."
)

CALL_END = "</tool_call>"
MIN_OBSERVATION_CHARS = 64


class ToolWorld(Environment):
    """Offline apps (contacts, calendar, notes, payments, messages) driven by JSON tool calls.

    A turn with one or more ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks (or a JSON list
    of calls in a block, the SmolLM2 format) runs them in order (malformed or unknown calls answer an error,
    counted in ``episode/tool_errors``); a turn without one is the final answer and ends the episode. The
    results, one JSON line per call, are the observation, cut to ``max_observation_chars``. The reward is 1
    when the world's final state differs from the start by exactly the task's required effects (see
    ``verifier``), else 0 — also when the rollout ends the episode on a turn limit or token budget.

    Args:
        difficulties: levels to generate (1 = one call … 5 = five to seven calls with lookups), in turn.
        num_train: training tasks.
        num_val: validation tasks (from ``val_split``).
        val_split: "dev" or "test" — the held-out split validation uses (train/dev/test are disjoint).
        seed: generator seed (the same seed gives the same tasks).
        apps: the apps the model can use (None = all); only tasks needing no other app are generated.
        tool_docs: "full" lists every tool's signature and summary in the system message; "none" leaves the
            documentation to the chat template's own ``tools=`` rendering (Qwen2.5, Llama 3.1, Hermes).
        instructions: the system message's text before the tool list (None = the built-in one).
        max_calls_per_turn: calls beyond this in one turn (list elements count) are answered with an error, not
            run.
        max_observation_chars: the longest observation in characters (not tokens): a longer one keeps its start
            and ends with ``… [truncated N chars]``, so one broad result or error cannot eat the episode's
            token budget.
        stop_at_call_end: a model turn's generation stops at ``</tool_call>`` (the engines' stop strings; the
            turn keeps it), so a turn holds at most one call block and cannot go on to invent its results.
        prompt_style: "full" = every tool; "short" = only the tools of the apps the task uses and one worked
            example (a task and its exact ``<tool_call>`` reply), for small models (see ``prompts``).
        shaped_reward: 0 (default) = the reward is the verifier's verdict, 1 or 0; w in (0, 0.5] = an
            unverified episode earns ``w·(½·[a well-formed call ran] + ½·progress)`` ≤ w, always below a
            success's 1 (success, pass@k and success per level count verified episodes only).
    """

    def __init__(
        self,
        difficulties: list[int] | None = None,
        num_train: int = 2000,
        num_val: int = 100,
        val_split: Literal["dev", "test"] = "dev",
        seed: int = 0,
        apps: list[str] | None = None,
        tool_docs: Literal["full", "none"] = "full",
        instructions: str | None = None,
        max_calls_per_turn: int = 8,
        max_observation_chars: int = 1500,
        stop_at_call_end: bool = True,
        prompt_style: PromptStyle = "full",
        shaped_reward: float = 0.0,
    ) -> None:
        self.difficulties = list(difficulties) if difficulties is not None else list(LEVELS)
        if not self.difficulties:
            raise ValueError("toolworld.difficulties must not be empty")
        if num_train < 1 or num_val < 0:
            raise ValueError(f"toolworld needs num_train >= 1 and num_val >= 0, got {num_train}, {num_val}")
        if val_split not in ("dev", "test"):
            raise ValueError(f"toolworld.val_split must be 'dev' or 'test', got {val_split!r}")
        if tool_docs not in ("full", "none"):
            raise ValueError(f"toolworld.tool_docs must be 'full' or 'none', got {tool_docs!r}")
        if max_calls_per_turn < 1:
            raise ValueError(f"toolworld.max_calls_per_turn must be >= 1, got {max_calls_per_turn}")
        if max_observation_chars < MIN_OBSERVATION_CHARS:
            raise ValueError(
                f"toolworld.max_observation_chars must be >= {MIN_OBSERVATION_CHARS} (room for the truncation "
                f"marker), got {max_observation_chars}"
            )
        self.apps = list(apps) if apps is not None else list(APPS)
        build_apps({}, self.apps)  # unknown app names fail here, at config time
        for d in self.difficulties:  # so does a level with no task for these apps
            generate_tasks("train", 0, [d], seed, self.apps)
        self.num_train, self.num_val, self.val_split = num_train, num_val, val_split
        self.seed = seed
        self.tool_docs = tool_docs
        default = SHORT_INSTRUCTIONS if prompt_style == "short" else INSTRUCTIONS
        self.instructions = default if instructions is None else instructions
        self.max_calls_per_turn = max_calls_per_turn
        self.max_observation_chars = max_observation_chars
        self.stop_at_call_end = stop_at_call_end
        self._specs = registry(build_apps(_empty_world(), self.apps))  # for docs and schemas only
        self.prompt_style = prompt_style
        self.system_message()  # an unknown style fails here, at config time
        if not 0.0 <= shaped_reward <= MAX_SHAPED:
            raise ValueError(f"toolworld.shaped_reward must be in [0, {MAX_SHAPED}], got {shaped_reward}")
        self.shaped_reward = shaped_reward

    # ---------------------------------------------------------------- tasks
    def system_message(self, task_apps: list[str] | None = None) -> str:
        """The system message (short style: for a task whose solution uses ``task_apps``)."""
        signatures = {name: spec.signature_line() for name, spec in self._specs.items()}
        return system_message(self.prompt_style, self.instructions, signatures, self.tool_docs, task_apps)

    def tools(self) -> list[dict[str, Any]]:
        return [spec.schema() for spec in self._specs.values()]

    def stop_strings(self) -> list[str]:
        return [CALL_END] if self.stop_at_call_end else []

    def split_examples(self, split: str, n: int) -> list[Example]:
        """``n`` examples of the generator's ``split`` ("train", "dev" or "test")."""
        out = []
        for i, spec in enumerate(generate_tasks(split, n, self.difficulties, self.seed, self.apps)):
            system = self.system_message(spec.apps)
            messages = [{"role": "system", "content": system}, {"role": "user", "content": spec.instruction}]
            meta = {
                "difficulty": spec.difficulty,
                "template": spec.template,
                "world": spec.world,
                "required": spec.required,
            }
            out.append(Example(f"toolworld/{split}/{i:05d}", spec.instruction, None, meta, messages))
        return out

    def examples(self, split: Split) -> list[Example]:
        if split == "train":
            return self.split_examples("train", self.num_train)
        return self.split_examples(self.val_split, self.num_val)

    # ---------------------------------------------------------------- an episode
    def reset(self, example: Example) -> list[dict[str, Any]]:
        self.start = example.meta["world"]
        self.state = copy.deepcopy(self.start)
        self.required = example.meta["required"]
        self.tool_registry = registry(build_apps(self.state, self.apps))
        self.good_calls = 0  # calls that ran without an error (for the shaped reward)
        return [dict(m) for m in example.messages or []]

    def step(self, action: str) -> StepResult:
        calls = parse_tool_calls(action)
        if not calls:
            return StepResult(done=True, reward=self.final_reward())
        results = []
        for i, call in enumerate(calls):
            if i >= self.max_calls_per_turn:
                results.append(
                    ToolResult(call.name, error=f"more than {self.max_calls_per_turn} calls in one turn")
                )
            else:
                results.append(dispatch(self.tool_registry, call))
        errors = sum(r.error is not None for r in results)
        self.good_calls += len(results) - errors
        observation = truncate("\n".join(r.to_json() for r in results), self.max_observation_chars)
        return StepResult(observation, info={"tool_calls": float(len(calls)), "tool_errors": float(errors)})

    def final_reward(self) -> float:
        return episode_reward(self.start, self.state, self.required, self.good_calls, self.shaped_reward)


def _empty_world() -> dict[str, Any]:
    return {
        "contacts": [],
        "calendar": [],
        "notes": [],
        "payments": {"balance": 0.0, "transactions": []},
        "messages": [],
    }
