"""Trainer side of SGLang's ``"distributed"`` weight sync: the weight-update process group and broadcaster.

``SGLangServerEngine`` (``sglang_server.py``) asks the servers to
``init_weights_update_group`` while ``TorchBroadcaster.join`` enters the same group as rank 0; each bucket's
tensors are then sent with ``TorchBroadcaster.broadcast``.
"""

from __future__ import annotations

from typing import Any

import torch


def init_custom_process_group(
    backend: str,
    init_method: str,
    world_size: int,
    rank: int,
    group_name: str,
    timeout_s: float = 600.0,
) -> Any:
    """A process group outside the default one, created like sglang's function of the same name (a
    rendezvous store prefixed by ``group_name``); both sides of the weight-update group must agree on it.
    ``timeout_s`` bounds the wait for the other ranks (and each collective)."""
    from datetime import timedelta

    from torch.distributed.distributed_c10d import (
        Backend,
        PrefixStore,
        _new_process_group_helper,
        _world,
        rendezvous,
    )

    timeout = timedelta(seconds=timeout_s)
    store, rank, world_size = next(rendezvous(init_method, rank, world_size, timeout=timeout))
    store.set_timeout(timeout)
    pg, _ = _new_process_group_helper(
        world_size,
        rank,
        [],
        Backend(backend),
        PrefixStore(group_name, store),
        group_name=group_name,  # type: ignore[arg-type]  # torch's private helper wants its GroupName NewType
        backend_options=None,
        timeout=timeout,
    )
    _world.pg_group_ranks[pg] = {i: i for i in range(world_size)}
    return pg


class TorchBroadcaster:
    """Trainer side of SGLang's weight-update group: joins as rank 0 and broadcasts tensors from rank 0.

    Tested over gloo on CPU; with the servers it runs over NCCL (tensors must then be on the GPU).
    Tests may replace it with any object that has the same ``join`` and ``broadcast`` methods.
    """

    def __init__(self, timeout_s: float = 600.0) -> None:
        self.group: Any = None
        self.timeout_s = timeout_s

    def join(
        self, master_addr: str, master_port: int, world_size: int, group_name: str, backend: str
    ) -> None:
        self.group = init_custom_process_group(
            backend,
            f"tcp://{master_addr}:{master_port}",
            world_size,
            0,
            group_name,
            timeout_s=self.timeout_s,
        )

    def broadcast(self, tensor: torch.Tensor) -> None:
        torch.distributed.broadcast(tensor, src=0, group=self.group)

    def close(self) -> None:
        if self.group is not None:
            torch.distributed.destroy_process_group(self.group)
            self.group = None
