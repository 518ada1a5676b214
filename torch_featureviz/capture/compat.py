"""Small version-proof questions about what torch is doing right now, shared by every hook."""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["in_backward", "is_compiling"]

_is_compiling: Callable[[], bool] = (
    torch.compiler.is_compiling
    if hasattr(getattr(torch, "compiler", None), "is_compiling")
    else torch._dynamo.is_compiling  # torch 2.2
)


def is_compiling() -> bool:
    """Whether Dynamo is tracing this call (torch.compile): hooks must not branch on tensors."""
    return bool(_is_compiling())


_graph_task_id = getattr(torch._C, "_current_graph_task_id", None)


def in_backward() -> bool:
    """Whether autograd is running a backward pass on this thread: activation checkpointing
    (``torch.utils.checkpoint``, reentrant or not) re-runs forward there."""
    return _graph_task_id is not None and _graph_task_id() != -1
