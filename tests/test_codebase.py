"""The codebase checks itself: docs it points to live in the repository, no import cycles, the README's
layout table matches the tree, tests share factories through conftest.py only."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("epr_lightning", "callbacks", "tools", "tests", "configs", "examples")


def _source_files() -> list[Path]:
    suffixes = {".py", ".yaml", ".yml", ".sh", ".md"}
    return [p for d in SOURCE_DIRS for p in (ROOT / d).rglob("*") if p.is_file() and p.suffix in suffixes]


def test_no_comment_points_outside_the_repository():
    outside = re.compile(r"paper\.md|\.\./shared/|shared/notes")
    hits = [
        f"{p.relative_to(ROOT)}:{i}"
        for p in _source_files()
        if p.name != "test_codebase.py"
        for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
        if outside.search(line)
    ]
    assert not hits, f"comments citing documents outside the repository (use docs/methods.md): {hits}"


def test_methods_sections_cited_exist():
    headings = (ROOT / "docs" / "methods.md").read_text().splitlines()
    sections = {m.group(1) for h in headings if (m := re.match(r"#{2,3} (\d+(?:\.\d+)?)\.? ", h))}
    cited = {
        (p.relative_to(ROOT), s)
        for p in _source_files()
        for m in re.finditer(r"docs/methods\.md §([\d.]+(?:[/–-]§?[\d.]+)*)", p.read_text(errors="replace"))
        for s in re.split(r"[/–-]§?", m.group(1).rstrip("."))
    }
    missing = sorted(str(c) for c in cited if c[1] not in sections)
    assert cited and not missing, f"docs/methods.md has no such section: {missing}"


# ---------------------------------------------------------------------------------------------- import cycles
PACKAGES = {"epr_lightning": ROOT / "epr_lightning", "epr_lightning.callbacks": ROOT / "callbacks"}


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """module → the package modules it imports anywhere: top level, in functions, under TYPE_CHECKING."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[: len(base) - node.level + 1]
                    source = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    source = node.module or ""
                targets.add(source)
                targets.update(f"{source}.{alias.name}" for alias in node.names)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, …, a], or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)) is not None:
            return cycle
    return None


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert "epr_lightning.update" in graph["epr_lightning.module"]  # the walk sees the imports
    assert find_cycle(graph) is None, " → ".join(find_cycle(graph) or [])


def test_find_cycle_sees_a_cycle_through_type_checking_imports():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


# ---------------------------------------------------------------------------------------- the README's layout
FILE_LIKE = re.compile(r"[\w/]+/|[\w./]+\.(?:py|yaml|sh|md)")


def _layout_rows() -> list[tuple[list[str], list[str]]]:
    text = (ROOT / "README.md").read_text()
    start = text.index("| Path | Holds |")
    rows = []
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        path_cell, holds_cell = line.strip("|").split("|", 1)
        paths = [p for p in re.findall(r"`([^`]+)`", path_cell) if FILE_LIKE.fullmatch(p)]
        rows.append((paths, [n for n in re.findall(r"`([^`]+)`", holds_cell) if FILE_LIKE.fullmatch(n)]))
    return rows


def test_readme_layout_table_matches_the_tree():
    rows = _layout_rows()
    listed_files: set[Path] = set()
    for paths, names in rows:
        for path in paths:
            assert (ROOT / path).exists(), f"README layout names {path}, which does not exist"
            listed_files.add((ROOT / path).resolve())
            if path.endswith("/"):
                named = {(ROOT / path / n).resolve() for n in names}
                missing = [n for n in named if not n.exists()]
                assert not missing, f"README layout: {path} has no {missing}"
                tracked = {
                    p.resolve()
                    for p in (ROOT / path).iterdir()
                    if p.name not in {"__init__.py", "__pycache__", "py.typed"}
                    and not p.name.endswith(".pyc")
                }
                assert named == tracked, (
                    f"README layout row {path}: not listed {sorted(p.name for p in tracked - named)}, "
                    f"listed but absent {sorted(p.name for p in named - tracked)}"
                )
    top_level = {p.resolve() for p in (ROOT / "epr_lightning").glob("*.py")} - {
        (ROOT / "epr_lightning" / n).resolve() for n in ("__init__.py", "__main__.py")
    }
    unlisted = sorted(p.name for p in top_level - listed_files)
    assert not unlisted, f"epr_lightning modules missing from the README layout table: {unlisted}"


# ------------------------------------------------------------------------------------- tests import no tests
def test_tests_do_not_import_each_other():
    own = {p.stem for p in (ROOT / "tests").glob("*.py")}
    hits = []
    for path in (ROOT / "tests").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] if not node.level else [a.name for a in node.names]
            for name in names:
                first = name.split(".")[0]
                if first == "tests" or (first in own and first != "conftest"):
                    hits.append(f"{path.name} imports {name}")
    assert not hits, f"shared test helpers belong in tests/conftest.py: {hits}"
