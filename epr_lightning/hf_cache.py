"""Hub model ids resolved from the local Hugging Face cache, offline (nothing is ever downloaded).

``HuggingFaceTB/SmolLM2-360M-Instruct`` becomes the snapshot folder that ``huggingface-cli download`` (or any
earlier ``from_pretrained``) left in the cache:

    <cache>/models--HuggingFaceTB--SmolLM2-360M-Instruct/refs/main          → "<commit hash>"
    <cache>/models--HuggingFaceTB--SmolLM2-360M-Instruct/snapshots/<hash>/  → config.json, weights, tokenizer

``<cache>`` is ``HF_HUB_CACHE``, else ``HF_HOME/hub``, else ``~/.cache/huggingface/hub`` (read when called, so a
changed environment is honoured).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache folder the way ``huggingface_hub`` chooses it."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface"
    )
    return Path(home).expanduser() / "hub"


def looks_like_hub_id(text: str) -> bool:
    """``org/name`` or ``name`` (not a path: no leading ``/``, ``.``, ``~``, at most one ``/``)."""
    return bool(_HUB_ID.match(text)) and ".." not in text


def resolve_from_cache(repo_id: str, revision: str | None = None) -> Path:
    """The cached snapshot folder of ``repo_id`` at ``revision`` (a branch/tag name or a commit hash).

    Raises ``FileNotFoundError`` naming the id, the revision and the cache folder when it is not there.
    """
    cache = hub_cache_dir()
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    rev = revision or "main"
    hint = (
        f"policy.path {repo_id!r} is not a local model directory and revision {rev!r} of it is not in the "
        f"local Hugging Face cache {str(cache)!r} (no hub downloads: fetch it beforehand with "
        f"`huggingface-cli download {repo_id}`, or set HF_HUB_CACHE / HF_HOME)"
    )
    if _COMMIT.match(rev):
        commit = rev
    else:
        ref = repo / "refs" / rev
        if not ref.is_file():
            raise FileNotFoundError(hint)
        commit = ref.read_text().strip()
    snapshot = repo / "snapshots" / commit
    if not (snapshot / "config.json").is_file():
        raise FileNotFoundError(hint)
    return snapshot
