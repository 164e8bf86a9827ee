"""The method lab: train every method YAML × seed on a lab config, one process at a time, and publish the table.

    python tools/compare_methods.py --config configs/lab/numprop.yaml \\
        --methods grpo rloo dapo repo_r adapo entropy_bonus --seeds 0 1 2 --out docs/lab/numprop \\
        [--then configs/lab/task_b.yaml --then-iterations 10 --threshold 0.5] [--set KEY=VALUE ...]

Each run is ``epr-lightning fit --config <lab configs> --config configs/method/<m>.yaml --seed_everything s``
(+ ``--set`` overrides) in a subprocess, with one progress line per run. A finished run is cached under
``--runs-dir`` by (config hash, method, seed, code commit): rerunning the same command skips it, so an interrupted
lab resumes where it stopped (a run killed midway restarts from its ``last.ckpt``, and its wall time adds the
killed attempt's time up to that checkpoint); ``--cached-only`` trains
nothing and writes the report from the runs finished so far (of a lab still running, say). The code commit is the last
commit that touched the package or callbacks (``+dirty`` and a diff hash when they have uncommitted
changes), so committing results or another method's YAML does not invalidate the cache.

Writes into ``--out``: ``runs.csv`` (one row per run), ``curves.csv`` (per-iteration entropy and reward),
``table.md`` (mean ± std over seeds per method, the core claim's per-seed check and the command), ``entropy.png``,
``reward.png``, ``pair_<a>_<b>.png`` (entropy vs iteration, seeds as bands) and ``summary.png`` (bars; none of the
PNGs with ``--no-plots``). With ``--then``, every run is continued from its final weights on task B
(``model.init_weights``) with the same method, plus one run of the first method from the untrained model,
and ``sequential.csv`` / the table's sequential section report B's reward AUC and iterations to ``--threshold``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import lab  # noqa: E402  (tools/lab.py: the lab's arithmetic)
import lab_pairs  # noqa: E402  (same-base pairs and the pre-registered claims)
import lab_records  # noqa: E402  (per-prompt validation records)

# The configs a run uses are hashed by content (lab configs, method YAML, overrides), so the code version only
# covers the code: a new method YAML does not invalidate the other methods' cached runs.
CODE_PATHS = ("epr_lightning", "callbacks", "pyproject.toml")


def git(*args: str) -> str:
    out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
    return out.stdout.strip()


def code_version() -> str:
    """The last commit that changed the code or configs, ``+dirty<hash>`` when they have uncommitted changes."""
    commit = git("log", "-1", "--format=%h", "--", *CODE_PATHS) or "unknown"
    diff = git("diff", "HEAD", "--", *CODE_PATHS)
    return commit + (f"+dirty{hashlib.sha256(diff.encode()).hexdigest()[:8]}" if diff else "")


def method_config(name: str) -> Path:
    path = Path(name) if name.endswith(".yaml") else ROOT / "configs" / "method" / f"{name}.yaml"
    if not path.is_file():
        raise SystemExit(f"compare_methods: no method config {path} (from --methods {name})")
    return path


def content_hash(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:16]


def config_hash(configs: list[Path], sets: list[str]) -> str:
    return content_hash(*(p.read_text() for p in configs), *sets)


def load_series(log_dir: Path) -> dict[str, list[float]]:
    """tag → values in step order, from the run's TensorBoard event files."""
    from plot_runs import load_scalars

    return {tag: values for tag, (_, values) in load_scalars(log_dir).items()}


class Lab:
    """Runs (or finds cached) lab runs and keeps their results."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.configs = [Path(c) for c in args.config]
        self.version = code_version()
        self.root = Path(args.runs_dir)
        self.cache = self.root / "cache"
        self.cache.mkdir(parents=True, exist_ok=True)
        self.done = 0

    def key(self, *parts: str) -> str:
        return content_hash(self.version, *parts)

    def run(
        self, label: str, key: str, cli_args: list[str], total: int, index: int, command: str = "fit"
    ) -> dict | None:
        """Train one run (or return its cached result); ``label`` names it in the progress line. With
        ``--cached-only`` a run that is not cached is not trained: None. ``command`` is the ``epr-lightning``
        subcommand (``fit``; ``validate`` and ``sft`` for the ToolWorld lab)."""
        cached = self.cache / f"{key}.json"
        log_dir = self.root / label / key
        if cached.is_file():
            result = json.loads(cached.read_text())
            print(f"[{index}/{total}] {label}: cached ({key})", flush=True)
            return result
        if self.args.cached_only:
            print(f"[{index}/{total}] {label}: not finished yet, left out (--cached-only)", flush=True)
            return None
        last = log_dir / "checkpoints" / "last.ckpt"
        resume = ["--ckpt_path", str(last)] if last.is_file() else []
        # Wall time accumulates over a killed run's attempts: each attempt records when it started, and a resumed
        # one adds the time its predecessor took to reach last.ckpt (what came after it is trained again).
        attempt = self.root / f"{label.replace('/', '_')}-{key}.attempt.json"
        previous = 0.0
        if resume and attempt.is_file():
            before = json.loads(attempt.read_text())
            previous = before["previous_s"] + max(0.0, last.stat().st_mtime - before["started"])
        cmd = [sys.executable, "-m", "epr_lightning", command, *cli_args,
               "--trainer.logger.init_args.save_dir", str(self.root),
               "--trainer.logger.init_args.name", label,
               "--trainer.logger.init_args.version", key, *resume]  # fmt: skip
        start = time.time()
        attempt.write_text(json.dumps({"previous_s": previous, "started": start}))
        doing = "training" if command == "fit" else command
        print(f"[{index}/{total}] {label}: {doing}{' (resuming)' if resume else ''} …", flush=True)
        log_file = self.root / f"{label.replace('/', '_')}-{key}.log"
        with open(log_file, "w") as log:
            proc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=False)
        wall = previous + time.time() - start
        if proc.returncode != 0:
            tail = log_file.read_text()[-2000:]
            raise SystemExit(
                f"compare_methods: {label} failed (exit {proc.returncode}); log {log_file}:\n{tail}"
            )
        series = load_series(log_dir)
        groups = {str(i): r for i, r in lab_records.load_records(log_dir).items()}
        result = {"label": label, "key": key, "code": self.version, "wall_s": wall, "log_dir": str(log_dir),
                  "series": series, "val_groups": groups, "command": cmd}  # fmt: skip
        cached.write_text(json.dumps(result))
        if command != "fit":
            print(f"[{index}/{total}] {label}: {command} done in {wall / 60:.1f} min", flush=True)
            return result
        s = lab.summarize_run(series, wall)
        print(
            f"[{index}/{total}] {label}: {wall / 60:.1f} min, reward {s['reward_initial']:.2f} → "
            f"{s['reward_final']:.2f}, entropy {s['entropy_change_pct']:+.0f}% (val), "
            f"{s['rollout_entropy_change_pct']:+.0f}% (rollouts)",
            flush=True,
        )
        return result


def seed_args(seed: int) -> list[str]:
    return [f"--seed_everything={seed}", f"--model.init_args.sampling.seed={seed}"]


def set_args(sets: list[str]) -> list[str]:
    out = []
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"compare_methods: --set needs KEY=VALUE, got {item!r}")
        out.append(f"--{key.removeprefix('--')}={value}")
    return out


def vary_variants(vary: str | None) -> list[tuple[str, list[str]]]:
    """``KEY=V1,V2`` → [("[leaf=V1]", ["--KEY=V1"]), …]; no ``--vary`` → one variant without a suffix."""
    if not vary:
        return [("", [])]
    key, sep, values = vary.partition("=")
    items = [v.strip() for v in values.split(",") if v.strip()]
    if not sep or not key or not items:
        raise SystemExit(f"compare_methods: --vary needs KEY=V1,V2,..., got {vary!r}")
    leaf = key.rsplit(".", 1)[-1]
    return [(f"[{leaf}={v}]", [f"--{key.removeprefix('--')}={v}"]) for v in items]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", action="append", required=True, help="lab config(s), composed in order")
    p.add_argument("--methods", nargs="+", required=True, help="configs/method/<name>.yaml names (or paths)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--out", required=True, help="where runs.csv, table.md and the PNGs go")
    p.add_argument("--runs-dir", default="runs/lab", help="logs, checkpoints and the run cache")
    p.add_argument("--set", action="append", default=[], help="KEY=VALUE CLI override for every run")
    p.add_argument("--vary", help="KEY=V1,V2,...: run every method once per value (a sweep; a trade-off PNG)")
    p.add_argument("--then", help="task-B config for sequential learning (continue each run's final weights)")
    p.add_argument("--then-iterations", type=int, default=10, help="iterations on task B")
    p.add_argument("--threshold", type=float, default=0.5, help="task-B reward for 'iterations to threshold'")
    p.add_argument("--pair", nargs=2, default=["grpo", "repo_r"], help="methods drawn side by side")
    p.add_argument("--claim", nargs=2, default=["repo_r", "grpo"], help="METHOD BASELINE of the core claim")
    p.add_argument(
        "--pairs",
        nargs="+",
        default=[],
        metavar="BASE:METHOD",
        help="same-base pairs: paired differences with bootstrap intervals and the pre-registered claims",
    )
    p.add_argument("--keep-checkpoints", action="store_true", help="keep every run's checkpoints")
    p.add_argument("--no-plots", action="store_true", help="write the CSVs and table.md only (no PNGs)")
    p.add_argument(
        "--cached-only",
        action="store_true",
        help="train nothing: write the report from the runs that have finished (e.g. while a lab runs)",
    )
    args = p.parse_args(argv)
    for c in args.config + ([args.then] if args.then else []):
        if not Path(c).is_file():
            raise SystemExit(f"compare_methods: config {c} does not exist")
    methods = {Path(m).stem: method_config(m) for m in args.methods}
    variants = vary_variants(args.vary)
    pairs = lab_pairs.parse_pairs(args.pairs, [m + suffix for m in methods for suffix, _ in variants])
    sets = set_args(args.set)
    lab_runs = Lab(args)
    base = [a for c in lab_runs.configs for a in ("--config", str(c))]
    chash = config_hash(lab_runs.configs, args.set)
    total = len(methods) * len(args.seeds) * (2 if args.then else 1) + (len(args.seeds) if args.then else 0)
    rows, curves, results = [], [], {}
    index = 0
    total *= len(variants)
    for method, path in methods.items():
        for suffix, extra in variants:
            name = method + suffix
            for seed in args.seeds:
                index += 1
                key = lab_runs.key(chash, path.read_text(), str(seed), *extra)
                cli = [*base, "--config", str(path), *seed_args(seed), *sets, *extra]
                res = lab_runs.run(f"{name.replace('=', '')}_s{seed}", key, cli, total, index)
                if res is None:
                    continue
                results[name, seed] = res
                summary = {**lab.summarize_run(res["series"], res["wall_s"]), **lab_pairs.record_summary(res)}
                rows.append(
                    {"method": name, "seed": seed, "code": res["code"], "config_hash": chash, **summary}
                )
                for i, (h, r) in enumerate(
                    zip(res["series"][lab.ENTROPY], res["series"][lab.REWARD], strict=False)
                ):
                    curves.append({"method": name, "seed": seed, "iteration": i, "entropy": h, "reward": r})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sequential = (
        run_sequential(args, lab_runs, methods, results, base, sets, chash, total, index) if args.then else []
    )
    if not args.keep_checkpoints and not args.cached_only:  # a lab still running may need them
        for res in results.values():
            shutil.rmtree(Path(res["log_dir"]) / "checkpoints", ignore_errors=True)
    claim = lab.holds_entropy(rows, args.claim[0], 15.0, args.claim[1], 0.05)
    if not rows:  # --cached-only before any run has finished
        print("compare_methods: no finished runs yet, nothing to report", flush=True)
        return {"rows": rows, "sequential": sequential, "claim": claim}
    fair = (lab_pairs.pair_runs(results), pairs)
    write_outputs(out, rows, curves, sequential, claim, args, chash, lab_runs.version, fair)
    return {"rows": rows, "sequential": sequential, "claim": claim}


def run_sequential(
    args, lab_runs: Lab, methods: dict, results: dict, base, sets, chash: str, total: int, index: int
) -> list:
    task_b = Path(args.then)
    n = args.then_iterations  # B's run is shorter: it validates at its own end (and at iteration 0)
    iters = [f"--data.init_args.batches_per_epoch={n}", f"--trainer.val_check_interval={n}"]
    rows = []
    jobs = [
        (name, seed, results[name, seed])
        for name in methods
        for seed in args.seeds
        if (name, seed) in results
    ]
    first = next(iter(methods))
    jobs += [(f"{first}_from_base", seed, None) for seed in args.seeds]
    for name, seed, parent in jobs:
        index += 1
        method_path = methods[name.removesuffix("_from_base")]
        ckpt = Path(parent["log_dir"]) / "checkpoints" / "last.ckpt" if parent else None
        origin = parent["key"] if parent else f"base:{chash}:{method_path.read_text()}:{seed}"
        key = lab_runs.key(origin, task_b.read_text(), str(args.then_iterations))
        cached = (lab_runs.cache / f"{key}.json").is_file()
        if ckpt is not None and not ckpt.is_file() and not cached and not args.cached_only:
            # the parent's weights were cleaned up before its continuation ran: train the parent again
            (lab_runs.cache / f"{parent['key']}.json").unlink()
            cli = [*base, "--config", str(method_path), *seed_args(seed), *sets]
            lab_runs.run(parent["label"], parent["key"], cli, total, index)
        cli = [*base, "--config", str(method_path), "--config", str(task_b), *seed_args(seed), *sets, *iters]
        cli += [f"--model.init_args.init_weights={ckpt}"] if ckpt else []
        res = lab_runs.run(f"then/{name}_s{seed}", key, cli, total, index)
        if res is None:
            continue
        summary = lab.sequential_summary(res["series"][lab.REWARD], args.threshold)
        h, val = res["series"][lab.ENTROPY], res["series"].get("val/pass@1", [])
        rows.append({"method": name, "seed": seed, "entropy_b_initial": h[0], "entropy_b_end": lab.tail_mean(h),
                     **summary, **({"val_pass1_b_start": val[0], "val_pass1_b_end": val[-1]} if val else {})})  # fmt: skip
    return rows


def write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def core_claim_lines(claim: dict, a: str, b: str) -> list[str]:
    """The old regime's core claim (``--claim``): entropy within ±15% on every seed, reward ≥ baseline − 0.05."""
    lines = [f"Core claim: {a}'s entropy (val) ends within ±15% of its initial value on every seed "
             f"({'yes' if claim['in_band'] else 'no'}) and its final reward, {claim['reward']:.3f} (mean over seeds), "
             f"is at least {b}'s {claim['baseline_reward']:.3f} − 0.05 ({'yes' if claim['reward_ok'] else 'no'}): "
             f"**{'holds' if claim['holds'] else 'does not hold'}**.", "",
             f"| seed | {a} entropy change % | {b} entropy change % | {a} final reward | {b} final reward |",
             "|---|---|---|---|---|"]  # fmt: skip
    for s in claim["seeds"]:
        lines.append(
            f"| {s['seed']} | {s['entropy_change_pct']:+.1f} | {s['baseline_entropy_change_pct']:+.1f} | "
            f"{s['reward_final']:.2f} | {s['baseline_reward_final']:.2f} |"
        )
    return lines


def write_outputs(
    out: Path, rows, curves, sequential, claim, args, chash: str, version: str, fair=({}, [])
) -> None:
    from lab_plots import plot_lab

    write_csv(out / "runs.csv", rows)
    write_csv(out / "curves.csv", curves)
    write_csv(out / "sequential.csv", sequential)
    command = "python tools/compare_methods.py " + " ".join(
        [f"--config {c}" for c in args.config] + ["--methods", *args.methods, "--seeds", *map(str, args.seeds)]
        + [f"--set {s}" for s in args.set] + ([f"--vary {args.vary}"] if args.vary else []) + ["--out", args.out]
        + (["--pairs", *args.pairs] if args.pairs else [])
        + ([f"--then {args.then} --then-iterations {args.then_iterations} --threshold {args.threshold}"]
           if args.then else [])
    )  # fmt: skip
    lines = [
        f"Produced by `{command}` at code commit `{version}` (config hash `{chash}`) on {os.cpu_count()} CPU cores.",
        "",
        f"Mean ± std over seeds. Final reward = mean of the last {lab.END_WINDOW} iterations. Entropy change (val) "
        "= token entropy on the held-out prompts after the last update vs before the first (same prompts; the "
        f"controllers' H* is that initial value); (rollouts) = mean of the last {lab.END_WINDOW} rollouts vs "
        "iteration 0.",
        "",
        "Iteration 0 (before any update; the same policy and samples for every method of a seed): "
        + ", ".join(
            f"{title} {lab.fmt_mean_std([r[key] for r in rows], 3)}"
            for key, title in (
                ("entropy_initial", "entropy H0 (nats/token)"),
                ("reward_initial", "reward"),
                ("val_pass1_initial", "val pass@1"),
                ("val_passG_initial", "val pass@G"),
            )
        )  # fmt: skip
        + ".",
        "",
        lab.method_table(rows),
        "",
    ]
    lines += lab_pairs.fair_sections(rows, *fair)
    a, b = args.claim
    if {a, b} <= {row["method"] for row in rows}:  # the old regime's core claim, when both methods ran
        lines += core_claim_lines(claim, a, b)
    if sequential:
        cols = (("reward_auc", "task-B reward AUC"), ("iters_to_threshold", f"iterations to {args.threshold}"),
                ("reached", "reached threshold"), ("entropy_b_initial", "entropy at B start"),
                ("val_pass1_b_start", "val pass@1 at B start"), ("val_pass1_b_end", "val pass@1 at B end"))  # fmt: skip
        lines += ["", f"Sequential learning on `{args.then}` ({args.then_iterations} iterations):", "",
                  lab.method_table(sequential, cols), ""]  # fmt: skip
        lines += lab_pairs.sequential_claims(sequential, sequential[0]["method"])
    (out / "table.md").write_text("\n".join(lines) + "\n")
    if not args.no_plots:
        plot_lab(out, rows, curves, sequential, tuple(args.pair))
    print(f"wrote {out}/table.md, runs.csv, curves.csv{'' if args.no_plots else ' and PNGs'}", flush=True)


if __name__ == "__main__":
    main()
