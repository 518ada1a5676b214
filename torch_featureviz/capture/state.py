"""Probe passes leave the model as they found it: :func:`preserved_state`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["preserved_state"]


@contextmanager
def preserved_state(model: nn.Module, *, eval_mode: bool = True) -> Iterator[None]:
    """Run a probe pass without changing ``model``: restores every module's train flag.

    With ``eval_mode`` the model is put in eval mode, so BatchNorm running statistics are not
    updated and dropout draws no random numbers. The CPU and CUDA RNG states are restored too,
    for models whose eval mode still samples.

    Example::

        >>> model = nn.Sequential(nn.Conv2d(1, 1, 1), nn.Dropout()).train()
        >>> with preserved_state(model):
        ...     model.training
        False
        >>> model.training
        True
    """
    flags = [(m, m.training) for m in model.modules()]
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        if eval_mode:
            model.eval()
        yield
    finally:
        for m, flag in flags:
            m.training = flag
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
