"""Final-answer extraction, number canonicalisation and the exact-answer reward.

Answer convention (all built-in tasks): the prompt asks for the final answer after ``Answer:``. The
extractor also accepts ``\\boxed{...}`` (the usual math-RL convention) and, failing both, falls back to the
last number in the completion. Which of the three found the answer is reported as ``source`` so a reward can
give full credit to a tagged answer and partial (by default zero) credit to a fallback one.

The safe arithmetic-expression evaluator (``safe_eval``, ``parse_expression``, ``canonical_expression``, …)
and ``normalise_text`` live in ``expressions.py``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from epr_lightning.tasks.base import Example, RewardFunction
from epr_lightning.tasks.expressions import (
    normalise_text,
)

AnswerSource = Literal["boxed", "tagged", "fallback"]

#: only this much of a completion's tail is searched (keeps extraction linear and bounded).
MAX_SCAN_CHARS = 20_000
#: a number literal longer than this is not canonicalised (returned as None).
MAX_NUMBER_CHARS = 64

_TAG_RE = re.compile(r"answer\s*[:：]", re.IGNORECASE)
_NUMBER_RE = re.compile(r"[-+−]?\d[\d,]*(?:\.\d+)?|[-+−]?\.\d+")
_CANON_NUMBER_RE = re.compile(r"([+-]?)(\d*)(?:\.(\d*))?")


def canonical_number(text: str | None) -> str | None:
    """Canonical decimal string of a number, or None when ``text`` is not one number.

    Strips whitespace, ``$``, a trailing ``.``, thousands commas; removes leading zeros, trailing fractional
    zeros and a ``+`` sign; ``-0`` becomes ``0``. Works on the string only (no float rounding, no int size
    limit): ``" 1,200.50 "`` → ``"1200.5"``, ``"12.0"`` → ``"12"``, ``"007"`` → ``"7"``.
    """
    if text is None:
        return None
    s = normalise_text(text).strip().strip("$").strip()
    s = s.rstrip(".").replace(",", "")  # inner spaces are not removed: "3 4" is two numbers
    if not s or len(s) > MAX_NUMBER_CHARS:
        return None
    m = _CANON_NUMBER_RE.fullmatch(s)
    if m is None:
        return None
    sign, whole, frac = m.group(1), m.group(2), m.group(3) or ""
    if not whole and not frac:
        return None
    whole = whole.lstrip("0") or "0"
    frac = frac.rstrip("0")
    body = f"{whole}.{frac}" if frac else whole
    if body == "0":
        return "0"
    return ("-" if sign == "-" else "") + body


def canonical_text(text: str | None) -> str:
    """Case-folded, whitespace-collapsed text without surrounding quotes/markdown or a final period."""
    if text is None:
        return ""
    s = " ".join(normalise_text(text[:MAX_SCAN_CHARS]).split()).casefold()
    return s.strip("*`\"' ").rstrip(".").strip()


def _last_boxed(text: str) -> str | None:
    """Contents of the last ``\\boxed{...}`` (nested braces allowed), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i = start + len("\\boxed{")
    depth = 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j]
    return None


def _after_last_tag(text: str) -> str | None:
    """The rest of the line after the last ``Answer:`` tag (markdown ``*`` stripped), or None."""
    last = None
    for match in _TAG_RE.finditer(text):
        last = match
    if last is None:
        return None
    rest = text[last.end() :].lstrip()
    line = rest.split("\n", 1)[0]
    return line.strip().strip("*").strip()


@dataclass(frozen=True)
class ExtractedAnswer:
    """A raw final answer and where it came from (``None`` text when nothing was found)."""

    text: str | None
    source: AnswerSource | None


def extract_final_answer(completion: str) -> ExtractedAnswer:
    """The final answer span: last ``\\boxed{}``, else text after the last ``Answer:``, else last number."""
    tail = normalise_text(completion[-MAX_SCAN_CHARS:])
    boxed = _last_boxed(tail)
    if boxed is not None and boxed.strip():
        return ExtractedAnswer(boxed.strip(), "boxed")
    tagged = _after_last_tag(tail)
    if tagged:
        return ExtractedAnswer(tagged, "tagged")
    numbers = _NUMBER_RE.findall(tail)
    if numbers:
        return ExtractedAnswer(numbers[-1], "fallback")
    return ExtractedAnswer(None, None)


def extract_number(completion: str) -> tuple[str | None, AnswerSource | None]:
    """Canonical final number of a completion and its source, or ``(None, None)``.

    A tagged span that is not a bare number (``"Answer: 12 apples"``, ``"Answer: x = 12"``) yields its first
    number; ``"Answer: 1,234"`` is one thousands-grouped number.
    """
    found = extract_final_answer(completion)
    if found.text is None:
        return None, None
    value = canonical_number(found.text)
    if value is None:
        numbers = _NUMBER_RE.findall(found.text)
        if not numbers:
            return None, None
        value = canonical_number(numbers[0] if found.source != "fallback" else numbers[-1])
    return (value, found.source) if value is not None else (None, None)


# ------------------------------------------------------------------------------------------------ reward


class ExactAnswerReward(RewardFunction):
    """1.0 when the completion's final number equals the reference answer, else 0.0 (plus optional bonuses).

    Reward table (answer compared after :func:`canonical_number`; ``Example.answer`` is the reference; a
    non-numeric reference is compared to the tagged span after :func:`canonical_text` instead):

    ============================================  ===============================
    final answer tagged (``Answer:``/``\\boxed``)   correct → 1.0, wrong → ``format_bonus``
    only the fallback last number found           correct → ``fallback_credit``, wrong → 0.0
    no number at all                              0.0
    ============================================  ===============================

    Args:
        format_bonus: reward for a tagged but wrong answer (shaping; 0 keeps the reward binary).
        fallback_credit: reward for a correct answer found only by the last-number fallback (0 = the
            answer must be tagged; 1 = the tag is not required).
    """

    def __init__(self, format_bonus: float = 0.0, fallback_credit: float = 0.0) -> None:
        if not 0.0 <= format_bonus < 1.0:
            raise ValueError(f"format_bonus must be in [0, 1), got {format_bonus}")
        if not 0.0 <= fallback_credit <= 1.0:
            raise ValueError(f"fallback_credit must be in [0, 1], got {fallback_credit}")
        self.format_bonus = format_bonus
        self.fallback_credit = fallback_credit

    def __call__(self, example: Example, completion: str) -> float:
        reference = canonical_number(example.answer)
        if reference is None:
            return self._score_text(example, completion)
        value, source = extract_number(completion)
        if value is None:
            return 0.0
        if source == "fallback":
            return self.fallback_credit if value == reference else 0.0
        return 1.0 if value == reference else self.format_bonus

    def _score_text(self, example: Example, completion: str) -> float:
        """Non-numeric reference: the tagged/boxed span must match after :func:`canonical_text`."""
        reference = canonical_text(example.answer)
        if not reference:
            raise ValueError(f"example {example.id!r} has no reference answer")
        found = extract_final_answer(completion)
        if found.text is None or found.source == "fallback":
            return 0.0
        return 1.0 if canonical_text(found.text) == reference else self.format_bonus

    def extract_answer(self, completion: str) -> str | None:
        value = extract_number(completion)[0]
        if value is not None:
            return value
        found = extract_final_answer(completion)
        return canonical_text(found.text) or None if found.source in ("boxed", "tagged") else None
