"""How many pixels each logged map may have, so that a capture stays within a byte budget.

A feature-map grid of activations compresses to about one byte per pixel (random-weight and early
training activations are close to noise), so a byte budget is a pixel budget. The monitor shares
its budget among the maps of a capture by *water-filling*: maps smaller than an equal share keep
their native resolution, and what they leave is shared by the larger ones, which are
average-pooled by an integer factor until they fit (:func:`pool_factor`). ``max_grid_side`` caps
every grid's side on top of that, so a huge input gives a bounded image. Pooling happens in the
hook, on the map's device, so memory stays bounded too.

The filter grids come out of the same budget (:func:`plan_filters`): they are drawn as they
are asked for while they fit their share, and past it with smaller tiles, then fewer filters
per grid, so a model with hundreds of convs keeps a grid for each and stays within the budget.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from torch_featureviz.capture.pooling import BAND, map_pixels
from torch_featureviz.monitor.sharding import weight_shape

__all__ = [
    "MapBudget",
    "filter_extent",
    "grid_side_cap",
    "plan_filters",
    "water_fill",
]

def grid_side_cap(shape: tuple[int, ...], max_side: int | None) -> int | None:
    """The pixel count above which a map's near-square grid would be wider than ``max_side``."""
    if max_side is None:
        return None
    if len(shape) == 2:
        return max(1, shape[0] * BAND * max_side)
    cols = math.ceil(math.sqrt(shape[0]))
    step = max(2, (max_side - 1) // cols)  # a tile and its gap: cols * step + 1 <= max_side
    return shape[0] * step * step


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


def _filter_layout(module: torch.nn.Module) -> tuple[int, int, tuple[int, ...], int] | None:
    """``(outputs, inputs per filter, kernel shown, colour channels)`` of a conv's filter grid,
    or ``None`` when its weight shape is unknown (see ``render.make_filter_grid``)."""
    shape = weight_shape(module)  # never reads a sharded weight
    if shape is None or len(shape) < 3:
        return None
    groups = max(1, int(getattr(module, "groups", 1)))
    if getattr(module, "transposed", False):  # (I, O / groups, *k)
        out, inputs = shape[1] * groups, shape[0] // groups
    else:
        out, inputs = shape[0], shape[1]
    kernel = tuple(shape[2:])[-2:]  # a 3-d kernel shows its middle temporal slice
    return out, inputs, kernel, 3 if inputs == 3 else 1


def filter_extent(
    module: torch.nn.Module, max_filters: int | None, min_tile: int, max_side: int | None = None
) -> tuple[int, int | None, int]:
    """How much of a conv's filters its grid shows, and about how many pixels that takes.

    Returns ``(filters, inputs, pixels)``: the first ``filters`` output channels are shown;
    a kernel with no shape (1x1, or 1-d of size 1) renders as the ``(out, in)`` weight matrix
    of its first ``inputs`` input channels (``None`` for other kernels). Both are cut further
    so that no side of the grid exceeds ``max_side`` pixels.
    """
    layout = _filter_layout(module)
    if layout is None:
        return 0, None, 0
    out, inputs, kernel, colours = layout
    n = out if max_filters is None else min(out, max_filters)
    if all(k == 1 for k in kernel) or len(kernel) == 1:  # a heat map of (out, k or in) cells
        matrix = all(k == 1 for k in kernel)
        cols = kernel[0]
        if matrix:
            cols = inputs if max_filters is None else min(inputs, max_filters)
        cell = max(1, math.ceil(min_tile / cols))
        if max_side is not None:  # the image is (n * cell + 2, cols * cell + 2)
            fit = max(1, (max_side - 2) // cell)
            n = min(n, fit)
            cols = min(cols, fit) if matrix else cols
        return n, (cols if matrix else None), n * cell * cols * cell
    side = max(kernel) * max(1, math.ceil(min_tile / max(kernel))) + 1  # a tile and its gap
    if max_side is not None:  # a near-square grid of ceil(sqrt(n)) columns, plus its border
        per_row = max(1, (max_side - 1) // side)
        n = min(n, per_row * per_row)
    return n, None, n * side * side * colours


def plan_filters(
    layers: Mapping[str, torch.nn.Module],
    max_filters: int | None,
    min_tile: int,
    budget: int | None,
    max_side: int | None,
) -> tuple[int, dict[str, tuple[int, int | None]], int]:
    """Fit the filter grids of ``layers`` into ``budget`` pixels, and each grid into
    ``max_side``.

    The fewest filters are dropped: for each number of filters per grid (``max_filters``,
    then halved), the tile width is halved (down to the filters' own size: the viewer
    upscales them) until the grids fit; failing that, the filters are halved. Every layer
    keeps a grid.

    Returns:
        ``(tile, {name: (filters, inputs)}, pixels)``: the smallest tile width to render
        with, what :func:`filter_extent` shows of each layer, and the grids' pixels.
    """
    if max_side is not None:  # one tile (a kernel upscaled to about `tile`) fits max_side
        min_tile = min(min_tile, max(1, (max_side - 2) // 2))
    n = max_filters
    while True:
        tile = min_tile
        while True:
            extents = {name: filter_extent(m, n, tile, max_side) for name, m in layers.items()}
            pixels = sum(e[2] for e in extents.values())
            if budget is None or pixels <= budget or tile == 1:
                break
            tile = max(1, tile // 2)
        most = max((e[0] for e in extents.values()), default=1)
        if budget is None or pixels <= budget or most <= 1:
            return tile, {name: (e[0], e[1]) for name, e in extents.items()}, pixels
        n = max(1, (most if n is None else min(n, most)) // 2)
