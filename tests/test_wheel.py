"""The wheel holds every module of the package and the shipped configs (an editable install hides a package
left out of the wheel; tools/check_wheel.py, run by CI, also installs it in a fresh virtualenv and uses it)."""

from __future__ import annotations

import zipfile

from conftest import load_tool

check_wheel = load_tool("check_wheel")


def test_expected_files_cover_every_subpackage_and_config():
    files = check_wheel.expected_files()
    assert "epr_lightning/envs/toolworld/env.py" in files  # a subpackage two levels down
    assert "epr_lightning/callbacks/__init__.py" in files  # callbacks/ is installed under the package
    assert "epr_lightning/configs/method/repo_r.yaml" in files and "epr_lightning/py.typed" in files
    assert not any(f.startswith("callbacks/") or "__pycache__" in f for f in files)


def test_the_wheel_contains_every_source_file(tmp_path):
    wheel = check_wheel.build_wheel(tmp_path)
    assert check_wheel.missing_from(wheel) == []
    with zipfile.ZipFile(wheel) as zf:
        top = {name.split("/")[0] for name in zf.namelist()}
    # one top-level package (and its metadata): never a bare `callbacks` or `configs` package
    assert {t for t in top if not t.endswith(".dist-info")} == {"epr_lightning"}
