"""EntropyDynamics: Theorem 1's predicted entropy change against the change the update really made.

Opt-in diagnostic (one extra no-grad forward per logged iteration). From each ``StepRecord``:

- ``dynamics/cov_A_L``: token mean of A·(π·L − S) over the sampled tokens, L = log π_old + H and
  S = Σ_a π_old(a)²·L(a) at that position (``theory.sampled_entropy_covariance`` with the *transformed* token
  advantages, i.e. what the update used). It is lr-free: Theorem 1 (orthogonal score functions, one step η on
  each state's logits) predicts ΔH ≈ −η·cov_A_L; S keeps the sign right for advantages that are not centred
  per state.
- ``dynamics/predicted_dH``: −cov_A_L, the first-order prediction for a unit step (η = 1 on the logits). Its
  *sign* is the prediction; its scale is not comparable with a real optimizer step on shared parameters.
- ``dynamics/cov_pos`` / ``dynamics/cov_neg``: the same mean split by the advantage's sign (contributions of
  tokens with A > 0 and A < 0, each divided by the total number of tokens, so they add up to cov_A_L).
- ``dynamics/measured_dH``: token-mean exact entropy of the *updated* policy over the same tokens (a no-grad
  ``policy_pass``) minus ``record.token_mean_entropy()`` (π_old, before the update).
- ``dynamics/sign_agreement``: running fraction of iterations where sign(predicted) == sign(measured).

[X] the comparison itself is our diagnostic (docs/methods.md §1), not the paper's.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from epr_lightning.objectives.base import masked_mean
from epr_lightning.objectives.theory import sampled_entropy_covariance
from epr_lightning.record import StepRecord
from epr_lightning.rollout.base import TokenBatch

from ._logging import due_record, log_scalars


def signed_covariances(
    logp: Tensor, entropy: Tensor, adv: Tensor, mask: Tensor, collision: Tensor
) -> tuple[float, float, float]:
    """(total, A>0 part, A<0 part) of the token mean of A·(π·L − S); the parts sum to the total.

    Each part is Σ over its tokens divided by the number of *all* masked tokens.
    """
    total = float(sampled_entropy_covariance(logp, entropy, adv, mask, collision))
    p = logp.float().exp()
    terms = adv.float() * (p * (logp.float() + entropy.float()) - collision.float()) * mask
    n = float(mask.sum())
    if n == 0:
        return total, 0.0, 0.0
    return total, float((terms * (adv > 0)).sum()) / n, float((terms * (adv < 0)).sum()) / n


def record_batch(record: StepRecord, device: torch.device | str = "cpu") -> TokenBatch:
    """The record's token batch as a ``TokenBatch`` (attention covers every non-pad position up to the last
    completion token; rows are right-padded, so that is a prefix of each row)."""
    mask = record.loss_mask
    last = torch.where(
        mask > 0, torch.arange(mask.shape[1]).expand_as(mask), torch.full_like(mask, -1, dtype=torch.long)
    )
    ends = (last.max(dim=1).values + 1).clamp_min(1)  # one past each row's last completion token
    attention = (torch.arange(mask.shape[1])[None, :] < ends[:, None]).long()
    return TokenBatch(
        input_ids=record.input_ids.to(device),
        attention_mask=attention.to(device),
        loss_mask=mask.to(device),
        sampler_logprobs=record.sampler_logp.to(device),
        group_index=record.group_index.to(device),
    )


class EntropyDynamics(pl.Callback):
    """Predicted (Theorem 1) vs measured entropy change of each update. Costs one no-grad forward.

    Args:
        every_n: run on every n-th rollout iteration (>= 1).
        max_rows: measure on at most this many samples of the rollout (None = all); the prediction then uses
            the same rows, so the two stay comparable.
    """

    def __init__(self, every_n: int = 1, max_rows: int | None = None) -> None:
        if every_n < 1:
            raise ValueError(f"EntropyDynamics.every_n must be >= 1, got {every_n}")
        if max_rows is not None and max_rows < 1:
            raise ValueError(f"EntropyDynamics.max_rows must be >= 1 or null, got {max_rows}")
        self.every_n = every_n
        self.max_rows = max_rows
        self.agree = 0
        self.compared = 0

    def state_dict(self) -> dict[str, int]:
        return {"agree": self.agree, "compared": self.compared}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.agree, self.compared = int(state["agree"]), int(state["compared"])

    def measure(self, pl_module: Any, record: StepRecord) -> dict[str, float]:
        """All ``dynamics/…`` values for one record (the module must provide ``policy_pass``)."""
        rows = slice(None) if self.max_rows is None else slice(0, self.max_rows)
        if record.collision is None:
            raise ValueError(
                "EntropyDynamics needs StepRecord.collision (S per position); the module records it"
            )
        logp, ent, col = record.old_logp[rows], record.entropy[rows], record.collision[rows]
        adv, mask = record.token_advantages[rows], record.loss_mask[rows]
        cov, cov_pos, cov_neg = signed_covariances(logp, ent, adv, mask, col)
        sub = record if self.max_rows is None else _slice_record(record, rows)
        tokens = record_batch(sub, pl_module.device)
        after = pl_module.policy_pass(tokens, grad=False)
        width = min(after.entropy.shape[1], mask.shape[1])
        h_after = float(masked_mean(after.entropy[:, :width].float().cpu(), mask[:, :width]))
        h_before = float(masked_mean(ent.float(), mask))
        return {
            "dynamics/cov_A_L": cov,
            "dynamics/predicted_dH": -cov,
            "dynamics/cov_pos": cov_pos,
            "dynamics/cov_neg": cov_neg,
            "dynamics/measured_dH": h_after - h_before,
            "dynamics/entropy_after": h_after,
        }

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        record = due_record(outputs, self.every_n)
        if record is None:
            return
        values = self.measure(pl_module, record)
        pred, meas = values["dynamics/predicted_dH"], values["dynamics/measured_dH"]
        if pred != 0 and meas != 0:
            self.compared += 1
            self.agree += int((pred > 0) == (meas > 0))
        if self.compared:
            values["dynamics/sign_agreement"] = self.agree / self.compared
        log_scalars(pl_module, values)


def _slice_record(record: StepRecord, rows: slice) -> StepRecord:
    from dataclasses import replace

    return replace(
        record,
        input_ids=record.input_ids[rows],
        loss_mask=record.loss_mask[rows],
        group_index=record.group_index[rows],
        sampler_logp=record.sampler_logp[rows],
    )
