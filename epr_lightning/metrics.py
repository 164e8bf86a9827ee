"""Diversity and success metrics over prompt groups, as torchmetrics ``Metric``s that sync across ranks.

Every metric here is computed *within each prompt group* (the G completions sampled for one prompt) and then
averaged over groups: a per-group value is added to a ``total`` state and a ``groups`` counter, both reduced
with ``sum`` across ranks, so ``compute()`` under DDP/FSDP equals a single-process pass over all groups.

Inputs are the per-sample lists a ``StepRecord`` carries (``completions``, ``answers``, ``correct``) plus the
``group_index`` tensor (or list) telling which prompt each sample belongs to. Groups need not be contiguous.

Pure per-group functions (``distinct_n``, ``self_bleu``, ``pass_at_k``, ``distinct_correct``, ``unique_ratio``)
carry the maths and are unit-tested on hand-computed values; the ``Metric`` classes only group and accumulate.
Text is split on whitespace (``str.split()``), the same tokenisation torchmetrics' BLEU uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.text import bleu_score

T = TypeVar("T")


# ---------------------------------------------------------------------------------------------------------
# Pure per-group functions
# ---------------------------------------------------------------------------------------------------------
def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """All contiguous n-grams of ``tokens`` (empty when ``len(tokens) < n``)."""
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float | None:
    """Distinct-n of one group: #distinct n-grams / #n-grams, pooled over the group's texts.

    Whitespace tokens. Returns ``None`` when the group has no n-gram at all (every text shorter than n), so
    such groups are left out of the average instead of counting as 0 or 1.
    """
    if n < 1:
        raise ValueError(f"distinct_n: n must be >= 1, got {n}")
    grams = [g for t in texts for g in ngrams(t.split(), n)]
    if not grams:
        return None
    return len(set(grams)) / len(grams)


def self_bleu(texts: Sequence[str], n_gram: int = 4) -> float | None:
    """Self-BLEU of one group: mean over i of BLEU(text_i, references = the other texts).

    Uses torchmetrics ``bleu_score([c_i], [[others]], n, smooth=True)`` with two documented adjustments:
    a text identical (token for token) to one of its references scores 1.0, and a text with fewer than
    ``n_gram`` tokens is scored with ``n = len(tokens)`` (torchmetrics returns 0 whenever some n-gram order
    has no match, which would make every short identical pair score 0). An empty text scores 0 unless another
    text is empty too. Returns ``None`` for groups of fewer than two texts (no references).
    """
    if not 1 <= n_gram <= 4:
        raise ValueError(f"self_bleu: n_gram must be in 1..4, got {n_gram}")
    if len(texts) < 2:
        return None
    toks = [t.split() for t in texts]
    scores = []
    for i, cand in enumerate(toks):
        refs = [toks[j] for j in range(len(toks)) if j != i]
        if any(cand == r for r in refs):
            scores.append(1.0)
        elif not cand:
            scores.append(0.0)
        else:
            n = min(n_gram, len(cand))
            ref_texts = [" ".join(r) for r in refs]
            scores.append(float(bleu_score([" ".join(cand)], [ref_texts], n_gram=n, smooth=True)))
    return sum(scores) / len(scores)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 − C(n−c, k) / C(n, k).

    Computed in the numerically stable product form 1 − ∏_{i=n−c+1}^{n} (1 − k/i) (Chen et al., 2021);
    equals 1.0 when n − c < k (every k-subset contains a correct sample).
    """
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: need 1 <= k <= n (samples per group), got k={k}, n={n}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def distinct_correct(answers: Sequence[str | None], correct: Sequence[bool]) -> int:
    """Number of distinct final answers among the group's correct samples (``None`` answers ignored).

    Answers are compared after stripping surrounding whitespace.
    """
    if len(answers) != len(correct):
        raise ValueError(f"distinct_correct: {len(answers)} answers but {len(correct)} correct flags")
    return len({a.strip() for a, ok in zip(answers, correct, strict=True) if ok and a is not None})


def unique_ratio(texts: Sequence[str]) -> float | None:
    """Share of unique completions in one group: #distinct texts / #texts.

    Texts are compared after collapsing whitespace runs (``" ".join(t.split())``). ``None`` for an empty group.
    """
    if not texts:
        return None
    return len({" ".join(t.split()) for t in texts}) / len(texts)


def group_by(values: Sequence[T], group_index: Tensor | Sequence[int]) -> list[list[T]]:
    """Split per-sample ``values`` into groups by ``group_index`` (in order of first appearance)."""
    idx = group_index.tolist() if isinstance(group_index, Tensor) else list(group_index)
    if len(idx) != len(values):
        raise ValueError(f"group_index has {len(idx)} entries but there are {len(values)} samples")
    groups: dict[int, list[T]] = {}
    for g, v in zip(idx, values, strict=True):
        groups.setdefault(int(g), []).append(v)
    return list(groups.values())


# ---------------------------------------------------------------------------------------------------------
# Metric classes: per-group values summed into (total, groups) states, reduced with "sum" across ranks
# ---------------------------------------------------------------------------------------------------------
class _GroupMeanMetric(Metric):
    """Mean of a per-group value over all groups seen (on all ranks). ``compute()`` is NaN before any group."""

    full_state_update = False
    higher_is_better: bool | None = None

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("groups", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.total: Tensor
        self.groups: Tensor

    def _add(self, values: Sequence[float | None]) -> None:
        kept = [float(v) for v in values if v is not None]
        self.total += sum(kept)
        self.groups += len(kept)

    def compute(self) -> Tensor:
        if self.groups == 0:
            return torch.tensor(float("nan"), dtype=torch.float64, device=self.total.device)
        return self.total / self.groups


class DistinctN(_GroupMeanMetric):
    """Distinct-n (distinct n-grams / total n-grams, whitespace tokens) within each prompt group, averaged
    over groups. Groups without any n-gram are skipped.

    Args:
        n: n-gram order (>= 1).
    """

    higher_is_better = True

    def __init__(self, n: int = 2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if n < 1:
            raise ValueError(f"DistinctN: n must be >= 1, got {n}")
        self.n = n

    def update(self, completions: Sequence[str], group_index: Tensor | Sequence[int]) -> None:
        self._add([distinct_n(g, self.n) for g in group_by(completions, group_index)])


class SelfBLEU(_GroupMeanMetric):
    """Self-BLEU (see ``self_bleu``) within each prompt group, averaged over groups; 1.0 = all identical.

    Args:
        n_gram: maximum n-gram order of BLEU (1..4).
    """

    higher_is_better = False

    def __init__(self, n_gram: int = 4, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 1 <= n_gram <= 4:
            raise ValueError(f"SelfBLEU: n_gram must be in 1..4, got {n_gram}")
        self.n_gram = n_gram

    def update(self, completions: Sequence[str], group_index: Tensor | Sequence[int]) -> None:
        self._add([self_bleu(g, self.n_gram) for g in group_by(completions, group_index)])


class PassAtK(_GroupMeanMetric):
    """Unbiased pass@k (``pass_at_k``) per prompt group from its n samples, averaged over groups.

    Args:
        k: number of attempts (1 <= k <= samples per group; a smaller group raises).
    """

    higher_is_better = True

    def __init__(self, k: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if k < 1:
            raise ValueError(f"PassAtK: k must be >= 1, got {k}")
        self.k = k

    def update(self, correct: Tensor | Sequence[bool], group_index: Tensor | Sequence[int]) -> None:
        flags = [bool(c) for c in (correct.tolist() if isinstance(correct, Tensor) else correct)]
        self._add([pass_at_k(len(g), sum(g), self.k) for g in group_by(flags, group_index)])


class DistinctCorrectAnswers(_GroupMeanMetric):
    """Mean number of distinct correct final answers per prompt group (groups with none count as 0)."""

    higher_is_better = True

    def update(
        self,
        answers: Sequence[str | None],
        correct: Tensor | Sequence[bool],
        group_index: Tensor | Sequence[int],
    ) -> None:
        flags = [bool(c) for c in (correct.tolist() if isinstance(correct, Tensor) else correct)]
        pairs = group_by(list(zip(answers, flags, strict=True)), group_index)
        self._add([distinct_correct([a for a, _ in g], [c for _, c in g]) for g in pairs])


class UniqueCompletionRatio(_GroupMeanMetric):
    """Mean share of unique completions (whitespace-normalised exact match) per prompt group."""

    higher_is_better = True

    def update(self, completions: Sequence[str], group_index: Tensor | Sequence[int]) -> None:
        self._add([unique_ratio(g) for g in group_by(completions, group_index)])


# ---------------------------------------------------------------------------------------------------------
# Cross-rank reductions for scalar statistics computed in callbacks
# ---------------------------------------------------------------------------------------------------------
def all_reduce(values: Tensor, op: str = "sum", device: torch.device | str | None = None) -> Tensor:
    """All-reduce a tensor across ranks (``op`` in sum/max/min); identity outside a process group.

    The tensor is moved to ``device`` for the collective (NCCL needs CUDA tensors) and returned on the CPU.
    """
    import torch.distributed as dist

    ops = {"sum": "SUM", "max": "MAX", "min": "MIN"}
    if op not in ops:
        raise ValueError(f"all_reduce: op must be one of {sorted(ops)}, got {op!r}")
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    out = values.detach().clone().to(device if device is not None else values.device)
    dist.all_reduce(out, op=getattr(dist.ReduceOp, ops[op]))
    return out.cpu()


__all__ = [
    "DistinctCorrectAnswers",
    "DistinctN",
    "PassAtK",
    "SelfBLEU",
    "UniqueCompletionRatio",
    "all_reduce",
    "distinct_correct",
    "distinct_n",
    "group_by",
    "ngrams",
    "pass_at_k",
    "self_bleu",
    "unique_ratio",
]
