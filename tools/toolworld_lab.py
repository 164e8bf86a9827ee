"""ToolWorld's learning test: can a small model learn there, and how do the methods compare from a warm start?

    python tools/toolworld_lab.py --out docs/lab/toolworld [--methods grpo grpo_repo_r] [--seeds 0 1] \\
        [--eval-tasks 64] [--sft-steps 4] [--runs-dir runs/toolworld]

Every stage is an ``epr-lightning`` subprocess, one at a time, cached under ``--runs-dir`` like
``tools/compare_methods.py``'s runs (by configs, arguments and code version), so rerunning the command resumes:

1. **Untrained**: success per difficulty of the base policy on ``--eval-tasks`` dev tasks (``--difficulties``
   cycled, one episode each, the RL config's episode budget), twice: with the full system prompt and no stop at
   ``</tool_call>`` (ToolWorld's settings before the small-model work), and with the RL config as shipped
   (``configs/task/toolworld_easy.yaml``: the short prompt with a worked example, the stop).
2. **Warm start**: verified demonstrations (``tools/toolworld_demos.py``, ``--demos`` train tasks), SFT on them
   for ``--sft-steps`` optimizer steps (``--sft-config``), and the same evaluation of the SFT policy.
3. **RL from the warm start**: every method × seed on the RL config from the SFT checkpoint
   (``model.init_weights``), validating on ``--rl-val-tasks`` dev tasks at the config's ``val_check_interval``.

Writes into ``--out``: ``evals.csv`` (stage, difficulty, success, tasks), ``runs.csv`` (one row per RL run),
``curves.csv`` (per iteration: train reward, policy entropy, share of groups with mixed rewards), ``table.md``,
and the plots ``curves.png`` (those three per iteration) and ``success.png`` (validation success per level at the
warm start and the end). ``--replot`` redraws the plots from ``--out``'s CSVs and runs nothing.
Success is the verifier's verdict only (``val/success_d<k>``: reward ≥ the task's ``success_threshold``).
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import lab  # noqa: E402  (tools/lab.py: tail means, mean ± std)
import toolworld_demos  # noqa: E402
from compare_methods import Lab, code_version, config_hash, method_config, seed_args, write_csv  # noqa: E402
from lab_plots import plot_toolworld, read_rows  # noqa: E402

ENV = "data.init_args.task.init_args.environment.init_args"
OLD_FORMAT = [f"--{ENV}.prompt_style=full", f"--{ENV}.stop_at_call_end=false"]
MIXED = "rollout/zero_adv_group_frac"  # share of groups whose advantages are all 0 (no mixed rewards)


def eval_args(tasks: int, difficulties: list[int]) -> list[str]:
    """Overrides that validate on ``tasks`` dev tasks, the levels cycled, one episode each."""
    levels = "[" + ",".join(str(d) for d in difficulties) + "]"
    return [f"--{ENV}.difficulties={levels}", f"--{ENV}.num_val={tasks}",
            f"--data.init_args.val_prompts={tasks}", "--model.init_args.val_num_generations=1"]  # fmt: skip


def success_by_level(series: dict[str, list[float]], index: int) -> dict[int, float]:
    """``val/success_d<k>`` at validation ``index`` (0 = the first, -1 = the last), by level."""
    out = {}
    for tag, values in series.items():
        if tag.startswith("val/success_d") and values:
            out[int(tag.removeprefix("val/success_d"))] = values[index]
    return dict(sorted(out.items()))


def overall(by_level: dict[int, float], difficulties: list[int]) -> float:
    """Success over the tasks, weighting each level by its share of the cycled ``difficulties``."""
    weights = {d: difficulties.count(d) for d in by_level}
    total = sum(weights.values())
    return sum(by_level[d] * w for d, w in weights.items()) / total if total else math.nan


def run_summary(series: dict[str, list[float]]) -> dict[str, float]:
    """One RL run: validation success at the start (the warm start) and the end, per level and overall
    (``val/pass@1``: the share of episodes the verifier accepted); train reward; the share of groups with mixed
    rewards; the policy entropy's change."""
    start, end = success_by_level(series, 0), success_by_level(series, -1)
    reward, h = series.get(lab.REWARD, []), series.get(lab.ENTROPY, [])
    mixed = [1.0 - v for v in series.get(MIXED, [])]
    success = series.get("val/pass@1", [])
    row = {
        "iterations": float(len(reward)),
        "val_success_start": success[0] if success else math.nan,
        "val_success_end": success[-1] if success else math.nan,
        **{f"val_success_d{d}_start": v for d, v in start.items()},
        **{f"val_success_d{d}_end": v for d, v in end.items()},
        "reward_initial": reward[0] if reward else math.nan,
        "reward_final": lab.tail_mean(reward) if reward else math.nan,
        "mixed_groups": statistics.fmean(mixed) if mixed else math.nan,
        "entropy_change_pct": 100.0 * (lab.tail_mean(h) / h[0] - 1.0) if h and h[0] else math.nan,
    }
    return row


def run_budget(config_yaml: Path) -> str:
    """An RL run's budget in words, from the composed config Lightning saved next to its logs."""
    cfg = yaml.safe_load(config_yaml.read_text())
    model, data = cfg["model"]["init_args"], cfg["data"]["init_args"]
    task = data["task"]["init_args"]
    return (
        f"{data['batches_per_epoch']} iterations x {data['prompts_per_step']} tasks x "
        f"{model['num_generations']} episodes, <= {task['max_turns']} model turns of <= "
        f"{model['sampling']['max_new_tokens']} new tokens, <= {task['max_episode_tokens']} tokens per episode "
        f"after the prompt; validation on {data['val_prompts']} dev tasks x {model['val_num_generations']} "
        f"episode every {cfg['trainer']['val_check_interval']} iterations and at iteration 0"
    )


def table(evals: list[dict], runs: list[dict], args: argparse.Namespace, version: str, budget: str) -> str:
    levels = sorted({e["difficulty"] for e in evals})
    lines = [
        f"Produced by `python tools/toolworld_lab.py {' '.join(args.argv)}` at code commit `{version}`.",
        "",
        f"Budget of an RL run: {budget}.",
        "",
        f"Success on {args.eval_tasks} dev tasks (levels {args.difficulties} cycled, one episode each; the "
        "verifier's verdict):",
        "",
        "| policy | " + " | ".join(f"level {d}" for d in levels) + " | all |",
        "|---|" + "---|" * (len(levels) + 1),
    ]
    for stage in dict.fromkeys(e["stage"] for e in evals):
        cells = {e["difficulty"]: e for e in evals if e["stage"] == stage}
        row = [f"{cells[d]['success']:.2f} ({cells[d]['tasks']})" if d in cells else "–" for d in levels]
        all_ = overall({d: cells[d]["success"] for d in cells}, args.difficulties)
        lines.append(f"| {stage} | " + " | ".join(row) + f" | {all_:.2f} |")
    if runs:
        lines += [
            "",
            "RL from the warm start (mean ± std over seeds; validation success at the warm start = the run's "
            "iteration-0 validation):",
            "",
            "| method | seeds | val success, warm start | val success, end | train reward first → last 5 | "
            "groups with mixed rewards | entropy change % | wall min |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for method in dict.fromkeys(r["method"] for r in runs):
            rs = [r for r in runs if r["method"] == method]

            def col(k: str, rs: list[dict] = rs) -> str:
                return lab.fmt_mean_std(r[k] for r in rs)

            lines.append(
                f"| {method} | {len(rs)} | {col('val_success_start')} | {col('val_success_end')} | "
                f"{col('reward_initial')} → {col('reward_final')} | {col('mixed_groups')} | "
                f"{col('entropy_change_pct')} | {col('wall_min')} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", action="append", help="RL config(s), composed in order "
                   "(default: configs/demo.yaml configs/task/toolworld_easy.yaml)")  # fmt: skip
    p.add_argument("--sft-config", default="configs/sft/toolworld.yaml")
    p.add_argument("--methods", nargs="+", default=["grpo", "grpo_repo_r"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--difficulties", nargs="+", type=int, default=[0, 1], help="levels of the evaluations")
    p.add_argument("--eval-tasks", type=int, default=64)
    p.add_argument("--rl-val-tasks", type=int, default=32)
    p.add_argument("--demos", type=int, default=500, help="train tasks the solver plays for SFT")
    # SFT must stop while success is partial, or RL gets no mixed groups: on SmolLM2 4 steps (batch 8, lr 1e-5) gave
    # success 0.66 / 0.28 on levels 0 / 1; 30 steps gave 1.00 / 1.00, entropy 0.001 and all-equal rewards
    p.add_argument("--sft-steps", type=int, default=4)
    p.add_argument("--skip-rl", action="store_true", help="evaluations and the warm start only")
    p.add_argument("--replot", action="store_true", help="redraw the PNGs from --out's CSVs; run nothing")
    p.add_argument("--out", required=True)
    p.add_argument("--runs-dir", default="runs/toolworld")
    args = p.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    if args.replot:
        return replot(Path(args.out))
    args.cached_only = False
    args.config = args.config or ["configs/demo.yaml", "configs/task/toolworld_easy.yaml"]
    for c in [*args.config, args.sft_config]:
        if not Path(c).is_file():
            raise SystemExit(f"toolworld_lab: config {c} does not exist")
    runs = Lab(args)
    configs = [a for c in args.config for a in ("--config", c)]
    chash = config_hash([Path(c) for c in args.config], [])
    evaluation = eval_args(args.eval_tasks, args.difficulties)
    total = 4 + len(args.methods) * len(args.seeds) * (not args.skip_rl)
    evals: list[dict] = []

    def evaluate(stage: str, label: str, extra: list[str], index: int) -> None:
        res = runs.run(label, runs.key(chash, label, *evaluation, *extra), [*configs, *evaluation, *extra],
                       total, index, command="validate")  # fmt: skip
        assert res is not None
        for d, v in success_by_level(res["series"], 0).items():
            evals.append({"stage": stage, "difficulty": d, "success": v,
                          "tasks": args.eval_tasks * args.difficulties.count(d) // len(args.difficulties)})  # fmt: skip

    evaluate("untrained, full prompt, no stop", "eval_untrained_full", OLD_FORMAT, 1)
    evaluate("untrained, the RL config", "eval_untrained", [], 2)
    demos = runs.root / f"demos-{runs.key(chash, str(args.demos))}.jsonl"
    if not demos.is_file():
        rc = toolworld_demos.main(["--split", "train", "--num", str(args.demos), "--out", str(demos),
                                   *(a for c in args.config for a in ("--config", c))])  # fmt: skip
        if rc != 0:
            raise SystemExit(f"toolworld_lab: the demonstrations failed (exit {rc})")
    sft_args = [
        "--config",
        args.sft_config,
        f"--data.init_args.path={demos}",
        f"--trainer.max_steps={args.sft_steps}",
    ]
    sft_key = runs.key(Path(args.sft_config).read_text(), demos.read_text(), *sft_args)
    sft = runs.run("sft", sft_key, sft_args, total, 3, command="sft")
    assert sft is not None
    ckpt = Path(sft["log_dir"]) / "checkpoints" / "last.ckpt"
    warm = [f"--model.init_args.init_weights={ckpt}"]
    evaluate(f"after SFT ({args.sft_steps} steps)", "eval_sft", warm, 4)
    rows, curves = [], []
    budget = ""
    if not args.skip_rl:  # the methods compared from the same warm start
        rl_val = [f"--{ENV}.num_val={args.rl_val_tasks}", f"--data.init_args.val_prompts={args.rl_val_tasks}"]
        index = 4
        for method in args.methods:
            path = method_config(method)
            for seed in args.seeds:
                index += 1
                cli = [*configs, "--config", str(path), *seed_args(seed), *warm, *rl_val]
                key = runs.key(chash, path.read_text(), str(seed), sft_key, *rl_val)
                res = runs.run(f"{path.stem}_s{seed}", key, cli, total, index)
                assert res is not None
                budget = budget or run_budget(Path(res["log_dir"]) / "config.yaml")
                rows.append({"method": path.stem, "seed": seed, **run_summary(res["series"]),
                             "wall_min": res["wall_s"] / 60.0})  # fmt: skip
                series = res["series"]
                mixed, h = series.get(MIXED, []), series.get(lab.ENTROPY, [])
                for i, r in enumerate(series.get(lab.REWARD, [])):
                    curves.append({"method": path.stem, "seed": seed, "iteration": i, "reward": r,
                                   "entropy": h[i] if i < len(h) else math.nan,
                                   "mixed_groups": 1.0 - mixed[i] if i < len(mixed) else math.nan})  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "evals.csv", evals)
    write_csv(out / "runs.csv", rows)  # nothing is written without RL runs
    write_csv(out / "curves.csv", curves)
    (out / "table.md").write_text(table(evals, rows, args, code_version(), budget))
    if rows:
        plot_toolworld(out, rows, curves)
    print((out / "table.md").read_text())
    return {"evals": evals, "runs": rows}


def replot(out: Path) -> dict:
    """The PNGs again from ``out``'s ``runs.csv`` and ``curves.csv`` (as the lab wrote them)."""
    if not (out / "runs.csv").is_file() or not (out / "curves.csv").is_file():
        raise SystemExit(f"toolworld_lab --replot: {out} has no runs.csv and curves.csv to plot")
    runs = read_rows([str(out / "runs.csv")], None, {})
    with open(out / "curves.csv", newline="") as f:
        curves = list(csv.DictReader(f))
    plot_toolworld(out, runs, curves)
    print(f"wrote {out}/curves.png and success.png")
    return {"runs": runs}


if __name__ == "__main__":
    main()
