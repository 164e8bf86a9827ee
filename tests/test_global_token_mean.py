"""Token means are global across data-parallel ranks: with unequal token counts per rank, the averaged gradient
of two gloo ranks equals the gradient of one process holding both ranks' tokens (DAPO's token mean)."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from epr_lightning.objectives import Objective, PPOClipLoss
from epr_lightning.objectives.aggregation import global_normaliser
from epr_lightning.objectives.base import PolicyBatch

# rank 0 holds 2 sequences with 7 scored tokens, rank 1 holds 3 sequences with 2 scored tokens: a per-rank token
# mean averaged over ranks weighs rank 1's two tokens like rank 0's seven.
MASKS = (
    torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.0]]),
    torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]),
)


def _data(rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(10 + rank)
    mask = MASKS[rank]
    features = torch.randn(*mask.shape, 3, generator=g)
    adv = torch.randn(mask.shape[0], 1, generator=g).expand_as(mask).contiguous()
    return features, adv, mask


def _loss(theta: torch.Tensor, features, adv, mask, aggregation: str, normaliser=None) -> torch.Tensor:
    logp = -torch.nn.functional.softplus(features @ theta)  # a log-probability < 0 with a gradient in θ
    batch = PolicyBatch(
        logp=logp, old_logp=logp.detach() - 0.1, sampler_logp=logp.detach(), advantages=adv, mask=mask
    )
    objective = Objective(loss=PPOClipLoss(eps_low=0.2, eps_high=0.28), aggregation=aggregation)
    return objective.compute_loss(batch, normaliser).loss


def _worker(rank: int, port: int, aggregation: str, queue) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        theta = torch.tensor([0.3, -0.2, 0.5], requires_grad=True)
        features, adv, mask = _data(rank)
        normaliser = global_normaliser(mask)
        _loss(theta, features, adv, mask, aggregation, normaliser).backward()
        grad = theta.grad.clone()
        dist.all_reduce(grad)  # what DDP / FSDP2 do with gradients: the mean over ranks
        queue.put(
            (rank, (grad / 2).tolist(), (normaliser.tokens, normaliser.sequences, normaliser.world_size))
        )
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.distributed
@pytest.mark.timeout(120)
@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean"])
def test_two_ranks_with_unequal_counts_give_the_single_process_gradient(aggregation):
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.spawn(_worker, args=(_free_port(), aggregation, queue), nprocs=2, join=True)
    results = {rank: (grad, counts) for rank, grad, counts in (queue.get() for _ in range(2))}
    assert results[0][1] == results[1][1] == (9.0, 5.0, 2)  # the all-reduced counts

    parts = [_data(r) for r in (0, 1)]
    width = max(p[2].shape[1] for p in parts)
    pad = lambda t: torch.nn.functional.pad(t, (0, 0, 0, width - t.shape[1])) if t.dim() == 3 else t  # noqa: E731
    features, adv, mask = (torch.cat([pad(p[i]) for p in parts]) for i in range(3))
    theta = torch.tensor([0.3, -0.2, 0.5], requires_grad=True)
    _loss(theta, features, adv, mask, aggregation).backward()
    for rank in (0, 1):
        torch.testing.assert_close(torch.tensor(results[rank][0]), theta.grad, rtol=1e-5, atol=1e-6)

    # the bug this guards against: each rank's own token mean, then the DDP average, is a different number
    local = torch.zeros(3)
    for features_r, adv_r, mask_r in parts:
        t = torch.tensor([0.3, -0.2, 0.5], requires_grad=True)
        _loss(t, features_r, adv_r, mask_r, aggregation).backward()
        local += t.grad / 2
    assert not torch.allclose(local, theta.grad, rtol=1e-3)
