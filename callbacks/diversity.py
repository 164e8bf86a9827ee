"""DiversityMonitor: lexical (and optional semantic) diversity of the G completions per prompt, plus pass@k.

Per prompt group of a ``StepRecord`` (``completions``, ``answers``, ``correct``, ``group_index``), averaged over
groups and synced across ranks through the torchmetrics ``Metric``s of ``epr_lightning.metrics``:

- ``diversity/distinct_{n}``: distinct n-grams / n-grams (whitespace tokens);
- ``diversity/self_bleu``: mean BLEU of each completion against the rest of its group (1 = all identical);
- ``diversity/unique_ratio``: share of distinct completions;
- ``diversity/distinct_correct``: number of distinct correct final answers;
- ``rollout/pass@k``: unbiased pass@k from the G samples (k = 1..G by default);
- ``diversity/embedding_distance`` (optional): mean pairwise cosine distance of sentence embeddings, when
  ``sentence_transformers`` is installed and the model is available locally (never downloaded).

``diversity_metrics(record)`` gives the same numbers for one record without any cross-rank sync (validation).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torchmetrics import Metric

from epr_lightning.metrics import (
    DistinctCorrectAnswers,
    DistinctN,
    PassAtK,
    SelfBLEU,
    UniqueCompletionRatio,
    all_reduce,
    group_by,
)
from epr_lightning.record import StepRecord

from ._logging import due_record, log_scalars

Encoder = Callable[[list[str]], Tensor]


def build_diversity_metrics(
    ngrams: Sequence[int] = (1, 2, 3), self_bleu: bool = True, pass_ks: Sequence[int] = ()
) -> dict[str, Metric]:
    """Fresh ``Metric``s keyed by their logged names (``diversity/…``, ``rollout/pass@k``)."""
    metrics: dict[str, Metric] = {f"diversity/distinct_{n}": DistinctN(n) for n in ngrams}
    if self_bleu:
        metrics["diversity/self_bleu"] = SelfBLEU(4)
    metrics["diversity/unique_ratio"] = UniqueCompletionRatio()
    metrics["diversity/distinct_correct"] = DistinctCorrectAnswers()
    metrics.update({f"rollout/pass@{k}": PassAtK(k) for k in pass_ks})
    return metrics


def update_diversity_metrics(metrics: dict[str, Metric], record: StepRecord) -> None:
    """Feed one record into every metric of ``build_diversity_metrics``."""
    for m in metrics.values():
        if isinstance(m, PassAtK):
            m.update(record.correct, record.group_index)
        elif isinstance(m, DistinctCorrectAnswers):
            m.update(record.answers, record.correct, record.group_index)
        else:
            m.update(record.completions, record.group_index)


def diversity_metrics(
    record: StepRecord,
    ngrams: Sequence[int] = (1, 2, 3),
    self_bleu: bool = True,
    pass_ks: Sequence[int] | None = None,
) -> dict[str, float]:
    """All diversity metrics of one record on this rank (no sync). ``pass_ks=None`` → k = 1..G."""
    ks = range(1, record.num_generations + 1) if pass_ks is None else pass_ks
    metrics = build_diversity_metrics(ngrams, self_bleu, ks)
    update_diversity_metrics(metrics, record)
    return {name: float(m.compute()) for name, m in metrics.items()}


def mean_pairwise_cosine_distance(embeddings: Tensor) -> float | None:
    """Mean of 1 − cos(e_i, e_j) over pairs i < j of one group's [G, D] embeddings; None when G < 2."""
    if embeddings.shape[0] < 2:
        return None
    e = torch.nn.functional.normalize(embeddings.double(), dim=-1)
    sim = e @ e.T
    i, j = torch.triu_indices(len(e), len(e), offset=1)
    return float((1.0 - sim[i, j]).mean())


def load_sentence_encoder(name: str) -> Encoder | None:
    """A local-only sentence-transformers encoder, or None (with one info message) when unavailable."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        rank_zero_info(
            f"DiversityMonitor: sentence_transformers is not installed; skipping embedding diversity ({name})."
        )
        return None
    try:
        model = SentenceTransformer(name, local_files_only=True, device="cpu")
    except Exception as err:
        rank_zero_info(
            f"DiversityMonitor: embedding model {name!r} is not available locally ({err}); skipping."
        )
        return None
    return lambda texts: torch.as_tensor(model.encode(texts, convert_to_numpy=True))


class DiversityMonitor(pl.Callback):
    """Log per-group diversity and pass@k of each rollout batch (see the module docstring for the metrics).

    Args:
        ngrams: n-gram orders for ``diversity/distinct_n``.
        self_bleu: also log ``diversity/self_bleu`` (costs O(G²) BLEU calls per group).
        pass_k: k values for ``rollout/pass@k``; None → every k = 1..G (samples per prompt).
        embedding_model: sentence-transformers model name or local path for ``diversity/embedding_distance``;
            None disables it. Loaded with ``local_files_only`` (never downloaded); skipped when unavailable.
        every_n: compute every N iterations (all ranks must agree, since the metrics sync).
    """

    def __init__(
        self,
        ngrams: tuple[int, ...] = (1, 2, 3),
        self_bleu: bool = True,
        pass_k: tuple[int, ...] | None = None,
        embedding_model: str | None = None,
        every_n: int = 1,
    ) -> None:
        if any(n < 1 for n in ngrams):
            raise ValueError(f"DiversityMonitor.ngrams must be >= 1, got {ngrams}")
        if pass_k is not None and any(k < 1 for k in pass_k):
            raise ValueError(f"DiversityMonitor.pass_k must be >= 1, got {pass_k}")
        if every_n < 1:
            raise ValueError(f"DiversityMonitor.every_n must be >= 1, got {every_n}")
        self.ngrams = tuple(ngrams)
        self.self_bleu = self_bleu
        self.pass_k = None if pass_k is None else tuple(pass_k)
        self.embedding_model = embedding_model
        self.every_n = every_n
        self.metrics: dict[str, Metric] | None = None
        self.encoder: Encoder | None = None
        self._encoder_tried = False

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        record = due_record(outputs, self.every_n)
        if record is None:
            return
        if self.metrics is None:
            ks = self.pass_k if self.pass_k is not None else tuple(range(1, record.num_generations + 1))
            self.metrics = build_diversity_metrics(self.ngrams, self.self_bleu, ks)
        values: dict[str, float] = {}
        for m in self.metrics.values():
            m.to(pl_module.device)
            m.reset()
        update_diversity_metrics(self.metrics, record)
        values.update({name: float(m.compute()) for name, m in self.metrics.items()})
        emb = self.embedding_distance(record, pl_module.device)
        if emb is not None:
            values["diversity/embedding_distance"] = emb
        log_scalars(pl_module, values)

    def embedding_distance(self, record: StepRecord, device: torch.device | str) -> float | None:
        """Mean over groups (all ranks) of the mean pairwise cosine distance; None when disabled/unavailable."""
        if self.embedding_model is None:
            return None
        if not self._encoder_tried and self.encoder is None:
            self._encoder_tried = True
            self.encoder = load_sentence_encoder(self.embedding_model)
        if self.encoder is None:
            return None
        per_group = [
            mean_pairwise_cosine_distance(self.encoder(list(texts)))
            for texts in group_by(record.completions, record.group_index)
        ]
        kept = [d for d in per_group if d is not None]
        sums = all_reduce(torch.tensor([sum(kept), float(len(kept))], dtype=torch.float64), "sum", device)
        return float(sums[0] / sums[1]) if sums[1] > 0 else None
