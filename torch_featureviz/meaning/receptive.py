"""Receptive fields measured by a gradient probe, on any graph.

For each selected conv, one unit's output is back-propagated to the input of a private copy of
the model whose weights cannot cancel; the input pixels with a non-zero gradient are the unit's
field. See docs/examples.md for what the probe changes in the copy and why.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional

from torch_featureviz._validation import check_module
from torch_featureviz.capture import find_conv_layers, unwrap_model

__all__ = ["ReceptiveField", "receptive_fields"]

#: The probe input grows by this many pixels per try while a field is clipped: a multiple of
#: every power-of-two stride, so "same" padding (timm's Conv2dSame) stays as at the real size.
_GROW = 256
#: Tries beyond the real size before a field is called unbounded (global pooling, attention).
_TRIES = 4
#: Probe samples * pixels per forward (memory of one float64 probe forward with gradients).
_PIXEL_BUDGET = 2**19

_Box = tuple[int, int, int, int]
#: What one probe finds for a layer: the boxes of two diagonal neighbours, the first one's map
#: location, and whether both are clear of the border (unclipped).
_Found = tuple[_Box, _Box, tuple[int, int], bool]


@dataclass(frozen=True)
class ReceptiveField:
    """Where a conv's map location looks in the input.

    Attributes:
        size: ``(h, w)`` of the field in input pixels.
        stride: ``(h, w)`` input pixels between neighbouring map locations.
        offset: ``(top, left)`` of location ``(0, 0)``'s field (negative when it starts in the
            padding).
        input_size: ``(H, W)`` of the input it was measured for; boxes are clipped to it.
        unbounded: the field did not fit in the largest probe (global pooling or attention
            upstream); every box is then the whole input.

    Example::

        >>> rf = ReceptiveField(size=(7, 7), stride=(2, 2), offset=(-3, -3), input_size=(32, 32))
        >>> rf.box(0, 0), rf.box(5, 4)
        ((0, 0, 4, 4), (7, 5, 14, 12))
    """

    size: tuple[int, int]
    stride: tuple[int, int]
    offset: tuple[int, int]
    input_size: tuple[int, int]
    unbounded: bool = False

    def box(self, y: int, x: int) -> tuple[int, int, int, int]:
        """``(top, left, bottom, right)`` of map location ``(y, x)``'s field, in input pixels,
        bottom and right exclusive, clipped to the input."""
        h, w = self.input_size
        if self.unbounded:
            return (0, 0, h, w)
        top = self.offset[0] + y * self.stride[0]
        left = self.offset[1] + x * self.stride[1]
        return (
            min(max(top, 0), h),
            min(max(left, 0), w),
            min(max(top + self.size[0], 0), h),
            min(max(left + self.size[1], 0), w),
        )

    def covers(self, fraction: float = 0.5) -> bool:
        """Whether the field covers more than ``fraction`` of the input's area."""
        h, w = self.input_size
        return self.unbounded or min(self.size[0], h) * min(self.size[1], w) > fraction * h * w


class _DensePool(nn.Module):
    """Max pooling's window, averaged: every pixel of the window gets gradient (max pooling
    sends it to the argmax only, which would shrink the measured field)."""

    def __init__(self, pool: nn.MaxPool2d) -> None:
        super().__init__()
        self.kernel_size = pool.kernel_size
        self.stride = pool.stride
        self.padding = pool.padding
        self.dilation = pool.dilation
        self.ceil_mode = pool.ceil_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dilation in (1, (1, 1)):
            return functional.avg_pool2d(
                x, self.kernel_size, self.stride, self.padding, self.ceil_mode
            )
        # avg_pool2d has no dilation: a depthwise conv of ones is the same window.
        k = nn.modules.utils._pair(self.kernel_size)
        c = x.shape[1]
        ones = x.new_ones(c, 1, *k) / (k[0] * k[1])
        return functional.conv2d(x, ones, None, self.stride, self.padding, self.dilation, groups=c)


def _probe_copy(root: nn.Module) -> nn.Module:
    """A float64 CPU copy of ``root`` whose weights are positive and whose max pooling is
    dense, in eval mode: with a positive input every activation is positive, so no path to the
    input can cancel and the gradient is non-zero exactly on the field."""
    probe = copy.deepcopy(root).to("cpu", torch.float64).eval()  # the package's hooks go inert
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in probe.parameters():
            r = torch.rand(p.shape, generator=g, dtype=torch.float64) + 0.5
            p.copy_(r / p[0].numel() if p.dim() >= 2 else r)
        for m in probe.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
                m.reset_running_stats()  # mean 0, variance 1: a positive affine map
    for name, m in list(probe.named_modules()):
        if isinstance(m, nn.MaxPool2d | nn.AdaptiveMaxPool2d):
            parent, _, attr = name.rpartition(".")
            new = (
                _DensePool(m) if isinstance(m, nn.MaxPool2d)
                else nn.AdaptiveAvgPool2d(m.output_size)
            )
            setattr(probe.get_submodule(parent) if parent else probe, attr, new)
    for p in probe.parameters():
        p.requires_grad_(False)
    return probe


def _extent(mask: torch.Tensor) -> tuple[int, int]:
    """First and one-past-last True of a 1-d mask (``(0, 0)`` when none)."""
    hits = mask.nonzero().flatten()
    if hits.numel() == 0:
        return (0, 0)
    return (int(hits[0]), int(hits[-1]) + 1)


def _probe(
    probe: nn.Module, modules: dict[str, nn.Module], channels: int, size: tuple[int, int]
) -> dict[str, _Found | None]:
    """Gradient-probe ``modules`` at input ``size``: for each, the fields of two diagonal
    neighbour units near the map centre, and whether both lie clear of the border."""
    names = list(modules)
    h, w = size
    x = (torch.rand(2 * len(names), channels, h, w, generator=torch.Generator().manual_seed(1),
                    dtype=torch.float64) + 0.5).requires_grad_(True)
    outs: dict[str, torch.Tensor] = {}

    def keep(name: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if name not in outs and isinstance(output, torch.Tensor):
                outs[name] = output
        return hook

    handles = [m.register_forward_hook(keep(n)) for n, m in modules.items()]
    try:
        with torch.enable_grad():
            probe(x)
    finally:
        for handle in handles:
            handle.remove()
    total = x.new_zeros(())
    units: dict[str, tuple[int, int, int, int]] = {}
    for i, name in enumerate(names):
        out = outs.get(name)
        if out is None or out.dim() != 4:
            continue
        mh, mw = out.shape[-2:]
        y0, x0 = max((mh - 2) // 2, 0), max((mw - 2) // 2, 0)
        units[name] = (mh, mw, y0, x0)
        total = total + out[2 * i, :, y0, x0].sum()
        if mh > 1 and mw > 1:
            total = total + out[2 * i + 1, :, y0 + 1, x0 + 1].sum()
    if total.requires_grad:
        total.backward()
    grad = x.grad if x.grad is not None else torch.zeros_like(x)
    found: dict[str, _Found | None] = {}
    for i, name in enumerate(names):
        if name not in units:
            found[name] = None
            continue
        boxes = []
        for s in (2 * i, 2 * i + 1):
            g = grad[s].abs().sum(0) > 0
            top, bottom = _extent(g.any(1))
            left, right = _extent(g.any(0))
            boxes.append((top, left, bottom, right))
        mh, mw, y0, x0 = units[name]
        clear = mh > 1 and mw > 1 and all(
            b[0] > 0 and b[1] > 0 and b[2] < h and b[3] < w for b in boxes
        )
        found[name] = (boxes[0], boxes[1], (y0, x0), clear)
    return found


def receptive_fields(
    model: nn.Module,
    input_size: tuple[int, int, int] = (3, 224, 224),
    layers: str | Iterable[str] | None = None,
) -> dict[str, ReceptiveField]:
    """Measure the receptive field of every selected 2-d conv, by gradient probe.

    The probe runs on a private float64 copy of the model (so ``model`` is untouched) with
    positive weights, BatchNorm as a positive affine map, eval mode and max pooling replaced
    by its window's mean: the gradient of one output unit is then non-zero on exactly the input
    pixels it depends on, whatever the graph (residuals, concatenated branches, dilation,
    pooling, "same" padding). Two diagonal neighbour units give the stride; their position
    gives the offset. A field that the input clips is measured again on a larger input.

    Args:
        model: the CNN; DataParallel/DDP/compile wrappers are looked through.
        input_size: ``(C, H, W)`` of the model's input.
        layers: qualified conv names or globs; ``None`` selects every 2-d conv.

    Returns:
        ``{layer: ReceptiveField}`` in ``named_modules()`` order.

    Raises:
        TypeError, ValueError: bad arguments, or a selected layer that is not a 2-d conv.
        RuntimeError: the model's forward failed on a probe input.

    Example::

        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3, stride=2))
        >>> rf = receptive_fields(net, (3, 32, 32))["1"]
        >>> rf.size, rf.stride, rf.box(0, 0)
        ((5, 5), (2, 2), (0, 0, 5, 5))
    """
    check_module(model)
    c, h, w = _check_input_size(input_size)
    root = unwrap_model(model)
    convs = find_conv_layers(root, include=layers, types=nn.Conv2d)
    probe = _probe_copy(root)
    modules = {name: probe.get_submodule(name) for name in convs}
    todo = list(modules)
    fields: dict[str, ReceptiveField] = {}
    for attempt in range(_TRIES + 1):
        size = (h + attempt * _GROW, w + attempt * _GROW)
        chunk = max(1, _PIXEL_BUDGET // (2 * size[0] * size[1]))
        still: list[str] = []
        for start in range(0, len(todo), chunk):
            part = {n: modules[n] for n in todo[start:start + chunk]}
            try:
                found = _probe(probe, part, c, size)
            except Exception as e:
                raise RuntimeError(
                    f"the probe forward of {type(root).__name__} failed on an input of shape "
                    f"(N, {c}, {size[0]}, {size[1]}): {e}"
                ) from e
            for name, result in found.items():
                if result is not None and result[3]:
                    fields[name] = _field(result[0], result[1], result[2], (h, w))
                else:
                    still.append(name)
        todo = still
        if not todo:
            break
    for name in todo:  # still clipped at the largest probe: the whole input, always
        fields[name] = ReceptiveField((h, w), (1, 1), (0, 0), (h, w), unbounded=True)
    return {name: fields[name] for name in convs}


def _field(
    a: tuple[int, int, int, int],
    b: tuple[int, int, int, int],
    unit: tuple[int, int],
    input_size: tuple[int, int],
) -> ReceptiveField:
    """The field from the boxes of units ``unit`` (``a``) and ``unit + (1, 1)`` (``b``)."""
    stride = (b[0] - a[0], b[1] - a[1])
    extent = (a[2] - a[0], a[3] - a[1])
    offset = (a[0] - unit[0] * stride[0], a[1] - unit[1] * stride[1])
    return ReceptiveField(extent, stride, offset, input_size)


def _check_input_size(input_size: Any) -> tuple[int, int, int]:
    if (
        not isinstance(input_size, tuple | list)
        or len(input_size) != 3
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in input_size)
    ):
        raise TypeError(f"input_size must be a (C, H, W) tuple of ints, got {input_size!r}.")
    if min(input_size) < 1:
        raise ValueError(f"input_size must be positive, got {tuple(input_size)}.")
    return (input_size[0], input_size[1], input_size[2])
