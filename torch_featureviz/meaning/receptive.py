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

#: Probe sizes step by this many pixels: a multiple of every power-of-two stride up to 64, so
#: padding that depends on the size ("same" padding, timm's Conv2dSame) is as at the real size.
_STEP = 64
#: Probe samples * pixels per forward (memory of one probe forward with gradients).
_PIXEL_BUDGET = 2**20

_Box = tuple[int, int, int, int]


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
    """A float32 CPU copy of ``root`` whose weights are positive and whose max pooling is
    dense, in eval mode: with a positive input every activation is positive, so no path to the
    input can cancel and the gradient is non-zero exactly on the field."""
    probe = copy.deepcopy(root).to("cpu", torch.float32).eval()  # the package's hooks go inert
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in probe.parameters():
            r = torch.rand(p.shape, generator=g) + 0.5
            if p.dim() >= 2:
                # Gain sqrt(k*k) per layer at the centre and 1/sqrt(k*k) at the edge of the
                # window: values and gradients stay within float32 over a hundred layers.
                spatial = p[0, 0].numel() if p.dim() > 2 else 1
                r = r / (p[0].numel() / spatial**0.5)
            p.copy_(r)
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


def _run(
    probe: nn.Module, modules: dict[str, nn.Module], x: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Forward ``x`` through ``probe``, returning the first output of each of ``modules``."""
    outs: dict[str, torch.Tensor] = {}

    def keep(name: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if name not in outs and isinstance(output, torch.Tensor) and output.dim() == 4:
                outs[name] = output
        return hook

    handles = [m.register_forward_hook(keep(n)) for n, m in modules.items()]
    try:
        probe(x)
    finally:
        for handle in handles:
            handle.remove()
    return outs


def _corners(
    probe: nn.Module, modules: dict[str, nn.Module], channels: int, size: tuple[int, int]
) -> dict[str, tuple[tuple[int, int], _Box, _Box]]:
    """For each of ``modules`` at input ``size``: its map size, and the input boxes of its
    first unit ``(0, 0)`` (sample 2i) and last unit ``(h-1, w-1)`` (sample 2i + 1)."""
    names = list(modules)
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(2 * len(names), channels, *size, generator=g) + 0.5).requires_grad_(True)
    with torch.enable_grad():
        outs = _run(probe, modules, x)
        total = x.new_zeros(())
        for i, name in enumerate(names):
            if name in outs:
                out = outs[name]
                total = total + out[2 * i, :, 0, 0].sum() + out[2 * i + 1, :, -1, -1].sum()
        if total.requires_grad:
            total.backward()
    grad = x.grad if x.grad is not None else torch.zeros_like(x)
    found = {}
    for i, name in enumerate(names):
        if name not in outs:
            continue
        boxes = []
        for sample in (2 * i, 2 * i + 1):
            hit = grad[sample].abs().sum(0) > 0
            top, bottom = _extent(hit.any(1))
            left, right = _extent(hit.any(0))
            boxes.append((top, left, bottom, right))
        found[name] = ((outs[name].shape[2], outs[name].shape[3]), boxes[0], boxes[1])
    return found


def _map_sizes(
    probe: nn.Module, modules: dict[str, nn.Module], channels: int, size: tuple[int, int]
) -> dict[str, tuple[int, int]]:
    """The map size of each of ``modules`` at input ``size`` ({} if the model refuses it)."""
    try:
        with torch.no_grad():
            outs = _run(probe, modules, torch.ones(1, channels, *size))
    except Exception:  # noqa: BLE001 - a model with a fixed input size
        return {}
    return {n: (o.shape[2], o.shape[3]) for n, o in outs.items()}


def _resolve(
    found: tuple[tuple[int, int], _Box, _Box],
    bigger: tuple[int, int] | None,
    size: tuple[int, int],
    input_size: tuple[int, int],
) -> ReceptiveField | None:
    """The field from the corner units' boxes at ``size`` and the map size one step bigger, or
    None when the boxes are clipped where they must not be."""
    (mh, mw), first, last = found
    if mh < 2 or mw < 2:
        return None
    if not (first[2] < size[0] and first[3] < size[1] and last[0] > 0 and last[1] > 0):
        return None  # the first unit's far side or the last unit's near side is clipped
    stride = []
    for axis, n in enumerate((mh, mw)):
        grown = None if bigger is None else bigger[axis] - n
        if grown is not None and grown > 0 and _STEP % grown == 0:
            stride.append(_STEP // grown)
        elif grown is None:
            stride.append(max(1, round(size[axis] / n)))  # no bigger size: the map's ratio
        else:
            return None  # the map does not grow with the input (global pooling upstream)
    offset = (last[0] - (mh - 1) * stride[0], last[1] - (mw - 1) * stride[1])
    extent = (first[2] - offset[0], first[3] - offset[1])
    return ReceptiveField(extent, (stride[0], stride[1]), offset, input_size)


def receptive_fields(
    model: nn.Module,
    input_size: tuple[int, int, int] = (3, 224, 224),
    layers: str | Iterable[str] | None = None,
) -> dict[str, ReceptiveField]:
    """Measure the receptive field of every selected 2-d conv, by gradient probe.

    The probe runs on a private float32 copy of the model (so ``model`` is untouched) with
    positive weights, BatchNorm as a positive affine map, eval mode and max pooling replaced
    by its window's mean: the gradient of one output unit is then non-zero on exactly the input
    pixels it depends on, whatever the graph (residuals, concatenated branches, dilation,
    pooling, "same" padding). The first unit's far edge and the last unit's near edge give size
    and offset; the map's growth between two input sizes gives the stride. Probes start small
    (the same size modulo 64 as the input) and grow, so shallow layers cost little; a field that
    is still clipped at twice the input is whole-image for every box (``unbounded``).

    Args:
        model: the CNN; DataParallel/DDP/compile wrappers are looked through.
        input_size: ``(C, H, W)`` of the model's input.
        layers: qualified conv names or globs; ``None`` selects every 2-d conv.

    Returns:
        ``{layer: ReceptiveField}`` in ``named_modules()`` order.

    Raises:
        TypeError, ValueError: bad arguments, or a selected layer that is not a 2-d conv.
        RuntimeError: the model's forward failed on a probe input of the real size.

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
    # Sizes congruent to the input's modulo _STEP, from small up to twice the input.
    back = max(0, (min(h, w) - 16) // _STEP)
    size = (h - back * _STEP, w - back * _STEP)
    while todo and size[0] <= 2 * h + _STEP and size[1] <= 2 * w + _STEP:
        grown = (size[0] + _STEP, size[1] + _STEP)
        bigger = _map_sizes(probe, {n: modules[n] for n in todo}, c, grown)
        chunk = max(1, _PIXEL_BUDGET // (2 * size[0] * size[1]))
        still: list[str] = []
        for i in range(0, len(todo), chunk):
            part = {n: modules[n] for n in todo[i:i + chunk]}
            try:
                found = _corners(probe, part, c, size)
            except Exception as e:
                if size[0] < h or size[1] < w:  # too small for this model: try larger
                    still.extend(part)
                    continue
                raise RuntimeError(
                    f"the probe forward of {type(root).__name__} failed on an input of shape "
                    f"(N, {c}, {size[0]}, {size[1]}): {e}"
                ) from e
            for name in part:
                rf = None if name not in found else _resolve(
                    found[name], bigger.get(name), size, (h, w))
                if rf is None:
                    still.append(name)
                else:
                    fields[name] = rf
        todo = still
        size = (size[0] + _STEP, size[1] + _STEP)
    unbounded = ReceptiveField((h, w), (1, 1), (0, 0), (h, w), unbounded=True)
    return {name: fields.get(name, unbounded) for name in convs}


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
