"""The codebase checks itself: docs it points to live in the repository, no import cycles, the README's
layout table matches the tree, tests share factories through conftest.py only."""

from __future__ import annotations

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
