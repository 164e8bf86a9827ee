"""Verified ToolWorld demonstrations as chat-message JSONL, for SFT before RL.

    python tools/toolworld_demos.py --config configs/task/toolworld_easy.yaml --split train --num 500 \\
        --out runs/demos/toolworld_easy.jsonl [--difficulties 0 0 1] [--seed 0]

The task (environment, prompt style, observation role) comes from the config's ``data.init_args.task`` (later
configs override earlier ones; none = ``EnvironmentTask(ToolWorld())``), so a demonstration opens with the very
messages an RL episode of that config opens with. The solver (``epr_lightning.envs.toolworld.solver``) plays
each task by stepping the real environment, reading only the instruction and the observations; an episode is
written only when the verifier accepts its final state. One line per verified episode::

    {"messages": [{"role": "system", ...}, {"role": "user", ...},
                  {"role": "assistant", "content": "<tool_call>...</tool_call>"},
                  {"role": "tool", "content": <the observation, as the task renders it>}, ...,
                  {"role": "assistant", "content": "Done."}]}

(plus ``"tools"``, the JSON-schema tool list, when the environment leaves the tool docs to the chat template:
``tool_docs: none``). Observation messages carry the role and text an RL episode shows the model
(``task.observation_role`` and ``task.observation_wrapper``), so the chat template renders a demonstration
into the same tokens as the RL episode of the same trajectory. Prints ``solved N/M`` (and per difficulty).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from epr_lightning.envs import EnvironmentTask, ToolWorld
from epr_lightning.envs.toolworld.solver import play


def merged(configs: Sequence[Path]) -> dict[str, Any]:
    """The ``data.init_args.task`` entry of the configs, later ones overriding earlier ones key by key; a later
    ``class_path`` naming another class replaces the entry (as the CLI does: the old class's arguments go)."""

    def merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        if "class_path" in b and b["class_path"] != a.get("class_path", b["class_path"]):
            a = {}
        out = dict(a)
        for k, v in b.items():
            out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        return out

    task: dict[str, Any] = {}
    for path in configs:
        doc = yaml.safe_load(Path(path).read_text()) or {}
        task = merge(task, ((doc.get("data") or {}).get("init_args") or {}).get("task") or {})
    return task


def load_task(configs: Sequence[Path], difficulties: list[int] | None = None) -> EnvironmentTask:
    """The ``EnvironmentTask`` the configs define (instantiated as the CLI would), difficulties overridden."""
    from jsonargparse import ArgumentParser

    task = merged(configs) or {"class_path": "epr_lightning.envs.EnvironmentTask"}
    init = task.setdefault("init_args", {})
    env = init.setdefault("environment", {"class_path": "epr_lightning.envs.ToolWorld"})
    if difficulties is not None:
        env.setdefault("init_args", {})["difficulties"] = list(difficulties)
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--task", type=EnvironmentTask)
    cfg = parser.parse_object({"task": task})
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    built = instantiate(cfg).task
    if not isinstance(built.environment, ToolWorld):
        raise SystemExit(f"the config's environment is {type(built.environment).__name__}, not ToolWorld")
    return built


def observation_message(task: EnvironmentTask) -> Callable[[str], dict[str, str]]:
    """The message an RL episode of ``task`` shows the model for an observation text."""
    role = getattr(task, "observation_role", "tool")
    wrapper = getattr(task, "observation_wrapper", None) or "{observation}"
    return lambda text: {"role": role, "content": wrapper.replace("{observation}", text)}


def demonstrations(
    task: EnvironmentTask, split: str, num: int
) -> tuple[list[dict[str, Any]], dict[int, list[int]]]:
    """The verified demonstrations of the first ``num`` tasks of ``split``; {difficulty: [solved, attempted]}."""
    env = task.environment
    assert isinstance(env, ToolWorld)
    to_message = observation_message(task)
    records: list[dict[str, Any]] = []
    tally: dict[int, list[int]] = {}
    for ex in env.split_examples(split, num):
        trajectory = play(env, ex, to_message)
        counts = tally.setdefault(int(ex.meta["difficulty"]), [0, 0])
        counts[1] += 1
        turns = sum(m["role"] == "assistant" for m in trajectory.messages)
        if trajectory.success and turns <= task.max_turns:
            counts[0] += 1
            record: dict[str, Any] = {"messages": trajectory.messages}
            if env.tool_docs == "none":
                record["tools"] = env.tools()
            records.append(record)
    return records, dict(sorted(tally.items()))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--config", type=Path, action="append", default=[], help="YAML(s) with data.init_args.task"
    )
    ap.add_argument("--split", choices=["train", "dev", "test"], default="train")
    ap.add_argument("--num", type=int, default=200, help="tasks to attempt")
    ap.add_argument("--difficulties", type=int, nargs="+", default=None, help="override the config's levels")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    task = load_task(args.config, args.difficulties)
    records, tally = demonstrations(task, args.split, args.num)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    levels = ", ".join(f"d{d} {s}/{n}" for d, (s, n) in tally.items())
    print(f"solved {len(records)}/{args.num} ({levels}) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
