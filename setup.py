"""The package layout; every other setting is in pyproject.toml.

Packages are discovered, so a new subpackage cannot be left out of the wheel (tools/check_wheel.py checks it):

* every package under ``epr_lightning/``;
* the top-level ``callbacks/`` folder, installed as ``epr_lightning.callbacks`` (never as a bare ``callbacks``);
* the shipped ``configs/`` as package data, installed as ``epr_lightning/configs`` (``--config demo`` and
  ``epr-lightning configs`` find them there).
"""

from setuptools import find_namespace_packages, find_packages, setup

MAPPED = {"epr_lightning.callbacks": "callbacks", "epr_lightning.configs": "configs"}


def under(package: str, folder: str, *, data: bool = False) -> list[str]:
    """``package`` and its subpackages found in ``folder`` (data folders have no ``__init__.py``)."""
    find = find_namespace_packages if data else find_packages
    return [package, *(f"{package}.{sub}" for sub in find(folder))]


configs = under("epr_lightning.configs", "configs", data=True)
setup(
    packages=[
        *find_packages(include=["epr_lightning", "epr_lightning.*"]),
        *under("epr_lightning.callbacks", "callbacks"),
        *configs,
    ],
    package_dir=MAPPED,
    package_data={"epr_lightning": ["py.typed"], **{p: ["*.yaml", "*.jsonl"] for p in configs}},
    include_package_data=False,
)
