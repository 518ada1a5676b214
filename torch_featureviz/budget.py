"""How many pixels each logged map may have, so that a capture stays within a byte budget.

A feature-map grid of activations compresses to about one byte per pixel (random-weight and early
training activations are close to noise), so a byte budget is a pixel budget. The monitor shares
its budget among the maps of a capture by *water-filling*: maps smaller than an equal share keep
their native resolution, and what they leave is shared by the larger ones, which are
average-pooled by an integer factor until they fit (:func:`pool_factor`). ``max_grid_side`` caps
every grid's side on top of that, so a huge input gives a bounded image. Pooling happens in the
hook, on the map's device, so memory stays bounded too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch.nn import functional as nnf

from torch_featureviz.sharding import weight_shape

__all__ = [
    "MapBudget",
    "grid_side_cap",
    "map_pixels",
    "pool_factor",
    "pool_map",
    "water_fill",
]

#: Height in pixels of one channel's band in a ``(C, L)`` grid (see ``render.ROW_HEIGHT``).
_BAND = 4


def map_pixels(shape: tuple[int, ...]) -> int:
    """Pixels of the grid of a ``(C, L)``, ``(C, H, W)`` or ``(C, T, H, W)`` map (one frame)."""
    if len(shape) == 2:
        return shape[0] * shape[1] * _BAND
    c, h, w = shape[0], shape[-2], shape[-1]
    return c * h * w


def pool_factor(shape: tuple[int, ...], cap: int | None) -> int:
    """The smallest integer factor whose average pooling brings the map's grid within ``cap``
    pixels (1: no pooling)."""
    if cap is None or map_pixels(shape) <= cap:
        return 1
    dims = shape[1:] if len(shape) == 2 else shape[-2:]
    factor = max(1, math.floor(math.sqrt(map_pixels(shape) / max(cap, 1))))
    while True:
        pooled = tuple(math.ceil(d / factor) for d in dims)
        if map_pixels((shape[0], *pooled)) <= cap or all(d == 1 for d in pooled):
            return factor
        factor += 1


def pool_map(m: torch.Tensor, factor: int) -> torch.Tensor:
    """Average-pool a map's spatial dims by ``factor`` (ceil mode, so no position is lost)."""
    if factor <= 1:
        return m
    if m.dim() == 2:  # (C, L)
        return nnf.avg_pool1d(m.unsqueeze(0), factor, ceil_mode=True)[0]
    if m.dim() == 3:  # (C, H, W)
        return nnf.avg_pool2d(m.unsqueeze(0), factor, ceil_mode=True)[0]
    return nnf.avg_pool3d(m.unsqueeze(0), (1, factor, factor), ceil_mode=True)[0]  # (C, T, H, W)


def grid_side_cap(shape: tuple[int, ...], max_side: int | None) -> int | None:
    """The pixel count above which a map's near-square grid would be wider than ``max_side``."""
    if max_side is None:
        return None
    if len(shape) == 2:
        return max(1, shape[0] * _BAND * max_side)
    cols = math.ceil(math.sqrt(shape[0]))
    tile = max(1, max_side // cols - 1)
    return shape[0] * tile * tile


def water_fill(sizes: Mapping[str, int], budget: int) -> dict[str, int]:
    """Share ``budget`` pixels among maps of native ``sizes``: each gets
    ``min(size, level)``, with the one ``level`` at which the shares add up to the budget."""
    caps: dict[str, int] = {}
    remaining = budget
    order = sorted(sizes, key=lambda k: sizes[k])
    for i, key in enumerate(order):
        share = remaining // max(len(order) - i, 1)
        caps[key] = max(1, min(sizes[key], share))
        remaining -= caps[key]
    return caps


class MapBudget:
    """The pixel cap of each map of a capture: ``budget`` pixels per view, water-filled.

    Call it as a :class:`~torch_featureviz.FeatureCapture` ``pixel_cap``. Until every expected
    layer has been seen once, a map gets an equal share; from then on the shares are
    water-filled over the maps' native sizes, so small maps keep their full resolution.

    Args:
        budget: pixels for the maps of one view (training batch, or probe) of one capture;
            ``None`` for no budget.
        layers: how many maps a view is expected to have (the watched convs).
        max_side: the longest side any grid may have, in pixels; ``None`` for no limit.
    """

    def __init__(self, budget: int | None, layers: int, max_side: int | None) -> None:
        self.budget = budget
        self.layers = max(1, layers)
        self.max_side = max_side
        self.native: dict[str, int] = {}
        self._caps: dict[str, int] | None = None
        # (key, shape) -> cap, while the shares stay as they are: every captured conv call
        # asks, and from the first complete pass on the answer no longer changes.
        self._answers: dict[tuple[str, tuple[int, ...]], int | None] = {}

    def __call__(self, key: str, shape: tuple[int, ...]) -> int | None:
        known = self._answers.get((key, shape), -1)
        if known != -1:
            return known
        side = grid_side_cap(shape, self.max_side)
        if self.budget is None:
            cap: int | None = side
        else:
            size = map_pixels(shape)
            if self.native.get(key) != size:
                self.native[key] = size
                self._caps = None
                self._answers.clear()
            if self._caps is None and len(self.native) >= self.layers:
                self._caps = water_fill(self.native, self.budget)
                self._answers.clear()
            share = (
                self._caps[key]
                if self._caps is not None and key in self._caps
                else self.budget // max(self.layers, len(self.native))
            )
            cap = share if side is None else min(share, side)
        self._answers[(key, shape)] = cap
        return cap


def filter_pixels(module: torch.nn.Module, max_filters: int | None, min_tile: int) -> int:
    """About how many pixels the filter grid of a conv has (see ``render.make_filter_grid``)."""
    shape = weight_shape(module)  # never reads a sharded weight
    if shape is None or len(shape) < 3:
        return 0
    transposed = getattr(module, "transposed", False)
    out = shape[1] * getattr(module, "groups", 1) if transposed else shape[0]
    inputs = shape[0] if transposed else shape[1]
    n = out if max_filters is None else min(out, max_filters)
    kernel = tuple(shape[2:])[-2:]
    if len(kernel) == 1 or kernel == (1, 1):  # a heat map of (out, k) or (out, in) cells
        cols = kernel[0] if kernel != (1, 1) and len(kernel) == 1 and kernel[0] > 1 else (
            inputs if max_filters is None else min(inputs, max_filters)
        )
        cell = max(1, math.ceil(min_tile / cols))
        return n * cell * cols * cell
    side = max(kernel) * max(1, math.ceil(min_tile / max(kernel))) + 1
    channels = 3 if inputs == 3 else 1
    return n * side * side * channels
