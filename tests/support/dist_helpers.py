"""Running 2 gloo ranks on CPU with a deadline, so a hang fails the test instead of CI."""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

#: Each rank's collectives time out after this long (a hang becomes an error in the rank).
COLLECTIVE_TIMEOUT = timedelta(seconds=60)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_ranks(
    worker: Callable[..., None], *args: Any, world: int = 2, timeout: float = 300
) -> None:
    """Run ``worker(rank, world, port, *args)`` in ``world`` processes; fail after ``timeout``
    seconds (killing them) if they have not all finished. A rank's exception is re-raised."""
    ctx = mp.spawn(worker, args=(world, free_port(), *args), nprocs=world, join=False)
    deadline = time.monotonic() + timeout
    try:
        while not ctx.join(timeout=max(0.1, min(2.0, deadline - time.monotonic()))):
            if time.monotonic() >= deadline:
                pytest.fail(f"the {world} ranks did not finish within {timeout:g} s: a hang")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()


def init_gloo(rank: int, world: int, port: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
        timeout=COLLECTIVE_TIMEOUT,
    )


def finish_gloo() -> None:
    """Both ranks finish before either tears gloo down, then leave without C++ destructors.

    Destroying the group while the peer still uses its connection can abort the peer, and
    gloo's static destructors can abort a process at exit ("terminate called without an
    active exception", about one run in ten here) after all the work is done and checked.
    """
    try:
        dist.barrier()
    finally:
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
