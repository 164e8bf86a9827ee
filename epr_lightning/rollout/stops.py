"""Stop strings, token-exactly: where a completion that a string (not a token) ends stops, in sampled tokens.

A stop string (``SamplingParams.stop``, e.g. ``</tool_call>``) ends a completion at the first token whose
decoded text completes it; the completion keeps that token (and so the string). Engines stop there natively
where they can (transformers' ``stop_strings``; SGLang's ``stop`` when the server has a tokenizer; a string that
is one vocabulary token, Qwen's ``</tool_call>``, as a stop token id) and every engine then cuts its output with
:func:`stop_string_length`. The cut keeps a prefix of the sampled tokens and their log-probs as they are — a
prefix of a sample is a sample of that length — so nothing is re-encoded, and an engine that ran past the string
(SGLang in-process, whose ``skip_tokenizer_init`` refuses string stops) returns the same tokens as one that
stopped.
"""

from __future__ import annotations

from typing import Any


def _decode(tokenizer: Any, ids: list[int]) -> str:
    return str(tokenizer.decode(ids, skip_special_tokens=False))


def stop_string_length(ids: list[int], stop: list[str], tokenizer: Any) -> int | None:
    """The fewest leading tokens of ``ids`` whose decoded text contains one of ``stop`` (None: no prefix does).

    Decoded text only grows as tokens are added, so "contains a stop string" is monotone in the prefix length
    and a binary search finds the first such prefix in O(log n) decodes.
    """
    if not stop or not ids or not any(s in _decode(tokenizer, ids) for s in stop):
        return None
    lo, hi = 1, len(ids)  # the answer lies in [lo, hi]; hi always contains a stop string
    while lo < hi:
        mid = (lo + hi) // 2
        if any(s in _decode(tokenizer, ids[:mid]) for s in stop):
            hi = mid
        else:
            lo = mid + 1
    return hi


def single_token_stops(stop: list[str], tokenizer: Any) -> tuple[list[int], list[str]]:
    """``stop`` split into the ids of strings that are one vocabulary token (the tokenizer encodes the string as
    exactly that token, e.g. Qwen's added ``</tool_call>``) and the other strings."""
    ids, strings = [], []
    for s in stop:
        encoded = list(tokenizer(s, add_special_tokens=False)["input_ids"])
        if len(encoded) == 1 and _decode(tokenizer, encoded) == s:
            ids.append(int(encoded[0]))
        else:
            strings.append(s)
    return ids, strings


def cut_at_stop(
    ids: list[int], logprobs: list[float], stop: list[str], tokenizer: Any
) -> tuple[list[int], list[float], bool]:
    """``ids`` and ``logprobs`` up to and including the token that completes a stop string, and whether one did."""
    n = stop_string_length(ids, stop, tokenizer)
    if n is None:
        return list(ids), list(logprobs), False
    return list(ids[:n]), list(logprobs[:n]), True
