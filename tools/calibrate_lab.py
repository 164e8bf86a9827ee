"""Choose the fair lab's task by measuring the untrained model: validate only (no training) on each candidate.

    python tools/calibrate_lab.py --out docs/lab/fair [--only NAME ...]

Each candidate is the lab base (configs/lab/base.yaml), a task config (plus overrides) and the fair regime
(configs/lab/fair/regime.yaml: T = 1.0, 64 held-out prompts × 16 samples); ``epr-lightning validate`` runs it
once on the packaged SmolLM2 and ``callbacks.ValidationRecords`` leaves the per-prompt counts. A candidate
qualifies when the untrained model's pass@1 is in [0.15, 0.4], pass@16 − pass@1 ≥ 0.35 and at least 25% of the
prompts are solved at most 2 times in 16: room to learn, room for pass@k at large k to separate methods, and
prompts that only exploration reaches. Finished candidates are cached under ``--runs-dir`` (by the content of
their configs and overrides). Writes ``calibration.csv`` and ``calibration.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import lab_records as lr  # noqa: E402

BASE = ["configs/lab/base.yaml"]
REGIME = ["configs/lab/fair/regime.yaml"]
TASK = "--data.init_args.task.init_args."
#: name → (task configs, overrides): tasks the project ships or generates cheaply
CANDIDATES: dict[str, tuple[list[str], list[str]]] = {
    "arithmetic 0-9": (["configs/lab/arithmetic.yaml"], []),
    "arithmetic 0-20": (["configs/lab/arithmetic.yaml"], [f"{TASK}max_value=20"]),
    "arithmetic 0-9, 3 operands": (["configs/lab/arithmetic.yaml"], [f"{TASK}num_operands=3"]),
    "arithmetic 0-12 with ×": (["configs/lab/arithmetic.yaml"], [f"{TASK}max_value=12", f"{TASK}ops=+-*"]),
    "word problems 0-9": (["configs/lab/arithmetic.yaml", "configs/lab/task_b.yaml"], []),
    "numbers with a property": (["configs/lab/numprop.yaml"], []),
}
CRITERIA = "pass@1 in [0.15, 0.4], pass@16 − pass@1 ≥ 0.35, ≥ 25% of prompts solved ≤ 2/16"


def qualifies(row: dict) -> bool:
    return 0.15 <= row["pass_at_1"] <= 0.4 and row["pass16_minus_pass1"] >= 0.35 and row["rare_share"] >= 0.25


def measure(name: str, runs_dir: Path) -> dict:
    configs, sets = CANDIDATES[name]
    files = BASE + configs + REGIME
    key = hashlib.sha256(
        "\0".join([*(Path(ROOT / f).read_text() for f in files), *sets]).encode()
    ).hexdigest()[:12]
    label = "".join(ch if ch.isalnum() else "_" for ch in name)
    log_dir = runs_dir / label / key
    if not list(log_dir.glob("val_groups/iteration_*.jsonl")):
        cmd = [sys.executable, "-m", "epr_lightning", "validate", *(a for f in files for a in ("--config", f)),
               *sets, "--seed_everything=0", "--model.init_args.sampling.seed=0",
               "--trainer.logger.init_args.save_dir", str(runs_dir), "--trainer.logger.init_args.name", label,
               "--trainer.logger.init_args.version", key]  # fmt: skip
        print(f"{name}: validating …", flush=True)
        log = runs_dir / f"{label}-{key}.log"
        with open(log, "w") as f:
            proc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"calibrate_lab: {name} failed (exit {proc.returncode}); log {log}")
    records = lr.load_records(log_dir)[0]
    p1, p16 = lr.pass_at_k_mean(records, 1), lr.pass_at_k_mean(records, 16)
    row = {
        "task": name,
        "overrides": " ".join(sets),
        "prompts": len(records),
        "samples": records[0]["n"],
        "pass_at_1": p1,
        "pass_at_4": lr.pass_at_k_mean(records, 4),
        "pass_at_16": p16,
        "pass16_minus_pass1": p16 - p1,
        "rare_share": len(lr.rare_ids(records)) / len(records),
        "never_solved_share": sum(r["c"] == 0 for r in records) / len(records),
        "tokens_per_sample": sum(r["tokens"] for r in records) / sum(r["n"] for r in records),
    }
    row["qualifies"] = qualifies(row)
    print(f"{name}: pass@1 {p1:.3f}, pass@16 {p16:.3f}, ≤2/16 {row['rare_share']:.2f}", flush=True)
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--runs-dir", default="runs/calibration")
    p.add_argument("--only", nargs="+", choices=sorted(CANDIDATES), help="measure these candidates only")
    args = p.parse_args(argv)
    runs_dir = Path(args.runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    rows = [measure(name, runs_dir) for name in (args.only or CANDIDATES)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "calibration.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(
            {k: f"{v:.4g}" if isinstance(v, float) else v for k, v in row.items()} for row in rows
        )
    lines = [
        f"Produced by `python tools/calibrate_lab.py --out {args.out}`: the untrained SmolLM2 (LoRA not yet "
        "trained), validate only, T = 1.0, the held-out prompts × 16 samples, seed 0. Criteria: "
        + CRITERIA
        + ".",
        "",
        "| task | overrides | prompts × samples | pass@1 | pass@4 | pass@16 | pass@16 − pass@1 | solved ≤ 2/16 | "
        "never solved | tokens / sample | qualifies |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['task']} | {r['overrides'] or '–'} | {r['prompts']} × {r['samples']} | {r['pass_at_1']:.3f} | "
            f"{r['pass_at_4']:.3f} | {r['pass_at_16']:.3f} | {r['pass16_minus_pass1']:.3f} | {r['rare_share']:.2f} | "
            f"{r['never_solved_share']:.2f} | {r['tokens_per_sample']:.1f} | {'yes' if r['qualifies'] else 'no'} |"
        )
    (out / "calibration.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out}/calibration.md", flush=True)
    return rows


if __name__ == "__main__":
    main()
