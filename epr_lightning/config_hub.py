"""The shipped configs by short name: ``--config demo``, ``--config method/repo_r``, ``epr-lightning configs``.

The YAML files under the repository's ``configs/`` are installed with the package (``epr_lightning/configs``
in the wheel), so a user who only ran ``pip install`` has them too. A ``--config`` value is used as given when
it names an existing file; otherwise a short name (``demo``, ``method/repo_r``, with or without ``.yaml``, with
or without a leading ``configs/``) resolves to the shipped file. So ``--config configs/demo.yaml`` means your
own file when you have one at that path (a clone, a copy), and the packaged one elsewhere.
"""

from __future__ import annotations

import difflib
import re
import sys
from pathlib import Path

_CONFIG_FLAGS = ("--config", "-c")
_NAME = re.compile(r"^[\w./-]+$")  # what a file name or short name looks like (not inline YAML)


def config_root() -> Path:
    """The shipped configs: ``epr_lightning/configs`` in an installed wheel, ``configs/`` in a source tree."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "configs", package.parent / "configs"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"the shipped configs are missing (looked in {package / 'configs'})")


def shipped_configs() -> dict[str, Path]:
    """Short name (``method/repo_r``) → file, sorted by name."""
    root = config_root()
    found = {p.relative_to(root).with_suffix("").as_posix(): p for p in root.rglob("*.yaml")}
    return dict(sorted(found.items()))


def short_name(value: str) -> str:
    """``configs/method/repo_r.yaml`` → ``method/repo_r`` (the name ``epr-lightning configs`` lists)."""
    name = value.removeprefix("./").removeprefix("configs/")
    for suffix in (".yaml", ".yml"):
        name = name.removesuffix(suffix)
    return name


def resolve_config(value: str) -> str:
    """An existing file as given, else the shipped config of that short name; absolute paths and inline YAML
    are left alone.

    Raises ``FileNotFoundError`` naming the value and the closest shipped names when it looks like a file
    name but is neither.
    """
    path = Path(value).expanduser()
    if path.is_file() or path.is_absolute() or not _NAME.match(value):
        return value  # a file, an absolute path (a missing one is reported by the parser) or inline YAML
    shipped = shipped_configs()
    name = short_name(value)
    if name in shipped:
        return str(shipped[name])
    close = difflib.get_close_matches(name, list(shipped), n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    raise FileNotFoundError(
        f"--config {value!r}: no such file, and no shipped config of that name ({len(shipped)} listed by "
        f"`epr-lightning configs`){hint}"
    )


def shipped_data_file(path: str) -> str:
    """A data file a shipped config names (``configs/task/example_prompts.jsonl``): the file under the working
    directory when there is one (a clone, your copy), else the copy shipped with the package."""
    if not path.startswith("configs/") or Path(path).exists():
        return path
    shipped = config_root() / path.removeprefix("configs/")
    return str(shipped) if shipped.is_file() else path


def resolve_config_args(argv: list[str]) -> list[str]:
    """The command line with every ``--config``/``-c`` value resolved by ``resolve_config``."""
    out: list[str] = []
    expect_value = False
    for arg in argv:
        if expect_value:
            out.append(resolve_config(arg))
            expect_value = False
        elif arg in _CONFIG_FLAGS:
            out.append(arg)
            expect_value = True
        elif arg.startswith("--config="):
            out.append("--config=" + resolve_config(arg.split("=", 1)[1]))
        else:
            out.append(arg)
    return out


def describe(path: Path, width: int = 80) -> str:
    """The first comment line of a config file (its one-line description, cut at ``width``), or ''."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            text = line.lstrip("# ").strip()
            return text if len(text) <= width else text[: width - 1].rstrip() + "…"
        if line.strip():
            break
    return ""


def configs_main(argv: list[str]) -> int:
    """``epr-lightning configs`` lists the shipped configs; ``epr-lightning configs NAME`` prints one."""
    if argv and argv[0] in ("-h", "--help"):
        print(
            "usage: epr-lightning configs [NAME]\n\nWithout NAME: the shipped configs, usable as "
            "`--config NAME`. With NAME: print that file (e.g. `epr-lightning configs demo > my_run.yaml`)."
        )
        return 0
    shipped = shipped_configs()
    if argv:
        try:
            print(Path(resolve_config(argv[0])).read_text(), end="")
        except FileNotFoundError as err:
            print(f"epr-lightning: error: {err}", file=sys.stderr)
            return 2
        return 0
    width = max(len(name) for name in shipped)
    print(f"Shipped configs ({config_root()}); use as --config NAME, later files override earlier ones:")
    for name, path in shipped.items():
        print(f"  {name:<{width}}  {describe(path)}".rstrip())
    return 0
