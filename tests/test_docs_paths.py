"""Every command and path in the docs reruns from a fresh clone: no absolute paths, no scratch files outside the
repository, no pointers to files users do not have."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted(
    [ROOT / "README.md", *(p for p in (ROOT / "docs").rglob("*") if p.suffix in {".md", ".csv", ".txt"})]
)
# an absolute path in a home, a scratch or a work folder (Unix, macOS, Windows), or the team's private notes
SHARED = (
    ".." + "/shared"
)  # the team's notes folder, next to the repository (spelled so this file does not name it)
FORBIDDEN = re.compile(
    r"(?<![\w.])(/work/|/tmp/|/home/|/root/|/Users/|/private/|[A-Z]:\\\\)|" + re.escape(SHARED)
)


@pytest.mark.parametrize("path", DOCS, ids=[str(p.relative_to(ROOT)) for p in DOCS])
def test_docs_name_no_absolute_or_outside_paths(path):
    hits = [
        f"{path.relative_to(ROOT)}:{i}: {m.group(0)!r}"
        for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if (m := FORBIDDEN.search(line))
    ]
    assert not hits, "paths that do not exist in a fresh clone:\n" + "\n".join(hits)


def test_the_check_catches_what_it_is_for():
    for bad in ("--methods /work/labq/s3/x.yaml", "> /tmp/floor_only.csv", f"see {SHARED}/notes/x.md",
                "C:\\\\Users\\\\me"):  # fmt: skip
        assert FORBIDDEN.search(bad), bad
    for fine in ("docs/lab/floor_noflip/runs.csv", "configs/method/repo_r.yaml", "https://example.org/tmp/x"):
        assert not FORBIDDEN.search(fine), fine
