"""Small version-proof questions about what torch is doing right now, shared by every hook."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["in_backward", "is_compiling", "left_by_interrupt"]

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


def _owner(hook: Any) -> Any:
    """The capture a hook (an ``InertOnCopy`` around a bound method) belongs to, or None."""
    return getattr(getattr(hook, "fn", None), "__self__", None)


def _root_is_running(capture: Any) -> bool:
    """Whether a module carrying ``capture``'s root hook is running on this thread's stack
    (the root itself, or a replica sharing its hooks)."""
    call_impl = torch.nn.Module._call_impl.__code__
    frame: Any = sys._getframe(2)
    while frame is not None:
        if frame.f_code is call_impl:
            module = frame.f_locals.get("self")
            hooks = getattr(module, "_forward_pre_hooks", {})
            if any(_owner(h) is capture for h in hooks.values()):
                return True
        frame = frame.f_back
    return False


def left_by_interrupt(capture: Any, record: Any, name: str) -> bool:
    """Whether the root pass ``capture`` has open was left by an interrupt, and if so close it.

    A ``KeyboardInterrupt`` inside the root's forward skips its post hook (``always_call``
    covers ``Exception`` only), so the capture still believes the root is running. The next
    root forward clears that at its start; a forward that does not go through the root (timm's
    ``forward_features``) would instead be swallowed by the dead pass. Only a suspicious
    output asks the stack: the first of a pass, a layer's repeated call, or a recording forward
    inside an unrecorded root pass; never while Dynamo traces.
    """
    tracker = capture.tracker
    if not tracker.in_root or is_compiling():
        return False
    if record is None:
        suspect = tracker.records()
    else:
        suspect = record.kind == "root" and (not record.maps or name in record.maps)
    if not suspect or _root_is_running(capture):
        return False
    capture.end_pass()  # drops the dead pass, so this output opens a new one
    return True
