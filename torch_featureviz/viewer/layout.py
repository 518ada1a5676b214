"""Pure helpers of the featureviz tab: the layer index and the tile boxes of a logged grid.

Nothing here talks to TensorBoard; the plugin feeds it tag lists and decoded pixels.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from torch_featureviz.naming import parse_tag

__all__ = [
    "MAP_VIEWS",
    "VIEWS",
    "GridGeometry",
    "build_index",
    "grid_geometry",
    "module_group",
    "natural_key",
]

#: The panels of one layer, left to right: filter grids, then the three kinds of feature maps.
VIEWS = ("filters", "hook", "probe", "chain")
MAP_VIEWS = ("hook", "probe", "chain")
_DIGITS = re.compile(r"(\d+)")


def natural_key(text: str) -> tuple[Any, ...]:
    """Sort key that orders ``layer2`` before ``layer10`` (digit runs compare as numbers).

    Example::

        >>> sorted(["layer10.conv", "layer2.conv", "conv1"], key=natural_key)
        ['conv1', 'layer2.conv', 'layer10.conv']
    """
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in _DIGITS.split(text) if p)


def module_group(layer: str) -> str:
    """The module path that holds a layer: ``"layer1.0.conv1"`` -> ``"layer1.0"``; top level ``""``.

    Example::

        >>> module_group("layer1.0.conv1"), module_group("conv1")
        ('layer1.0', '')
    """
    return layer.rpartition(".")[0]


def build_index(
    image_tags: Iterable[str],
    scalar_tags: Iterable[str],
    orders: Mapping[str, list[str]] | None = None,
) -> list[dict[str, Any]]:
    """Group one run's tags into models (one per prefix) and their layers, in model order.

    Args:
        image_tags: the run's image tags (any; tags :func:`parse_tag` rejects are ignored).
        scalar_tags: the run's scalar tags.
        orders: ``{prefix or "": [layer tag, ...]}`` from the layer-order summaries; layers
            absent from it follow in natural order, and a prefix without one is sorted
            naturally.

    Returns:
        JSON-ready models, ``[{"prefix", "order", "layers": [{"layer", "group", "views",
        "stats"}], "inputs", "summary"}]``, the unprefixed model first.
    """
    orders = orders or {}
    models: dict[str, dict[str, Any]] = {}

    def model(prefix: str | None) -> dict[str, Any]:
        key = prefix or ""
        if key not in models:
            models[key] = {"prefix": key, "layers": {}, "inputs": {}, "summary": {}, "scalars": {}}
        return models[key]

    def layer(m: dict[str, Any], name: str) -> dict[str, Any]:
        layers = m["layers"]
        if name not in layers:
            layers[name] = {"layer": name, "group": module_group(name), "views": {}, "stats": {}}
        return layers[name]  # type: ignore[no-any-return]

    for tag in image_tags:
        info = parse_tag(tag)
        if info is None or info.layer is None:
            continue
        if info.kind == "filters":
            layer(model(info.prefix), info.layer)["views"]["filters"] = tag
        elif info.kind == "feature_maps" and info.view:
            layer(model(info.prefix), info.layer)["views"][info.view] = tag
        elif info.kind == "input":
            model(info.prefix)["inputs"][info.layer] = tag
    for tag in scalar_tags:
        info = parse_tag(tag)
        if info is None or info.layer is None:
            continue
        if info.kind == "activations" and info.view:
            layer(model(info.prefix), info.layer)["stats"][info.view] = tag
        elif info.kind == "summary":
            model(info.prefix)["summary"][info.layer] = tag
        elif info.kind == "featureviz":
            model(info.prefix)["scalars"][info.layer] = tag
    for prefix in orders:
        if orders[prefix]:
            model(prefix or None)

    out = []
    for key in sorted(models, key=lambda k: (k != "", natural_key(k))):
        m = models[key]
        order = orders.get(key) or []
        rank = {name: i for i, name in enumerate(order)}
        names = sorted(m["layers"], key=lambda n: (rank.get(n, len(rank)), natural_key(n)))
        m["order"] = "model" if order else "natural"
        m["layers"] = [m["layers"][n] for n in names]
        out.append(m)
    return out


@dataclass(frozen=True)
class GridGeometry:
    """Where the tiles of a logged grid lie (``padding`` pixels between and around tiles)."""

    cols: int
    rows: int
    tile_width: int
    tile_height: int
    #: Tiles holding a channel (the last row may be partly empty).
    count: int
    padding: int = 1

    def box(self, index: int) -> tuple[int, int, int, int]:
        """``(left, top, right, bottom)`` pixel box of tile ``index`` (row-major), exclusive.

        Raises:
            IndexError: ``index`` is not in ``0 .. count - 1``.
        """
        if not 0 <= index < self.count:
            raise IndexError(f"tile {index} is out of range; this grid has {self.count} tiles.")
        row, col = divmod(index, self.cols)
        left = self.padding + col * (self.tile_width + self.padding)
        top = self.padding + row * (self.tile_height + self.padding)
        return left, top, left + self.tile_width, top + self.tile_height

    def as_dict(self) -> dict[str, int]:
        """JSON-ready fields."""
        return {
            "cols": self.cols, "rows": self.rows, "tile_width": self.tile_width,
            "tile_height": self.tile_height, "count": self.count, "padding": self.padding,
        }


def _near_square_rows(cols: int) -> set[int]:
    """Row counts a ``ceil(sqrt(n))``-column grid can have: ``ceil(n / cols)`` for such n."""
    lo = (cols - 1) ** 2 + 1
    return {math.ceil(n / cols) for n in range(lo, cols * cols + 1)}


def _separators(lines: np.ndarray, size: int, padding: int) -> list[int]:
    """Cell counts whose separator lines (of ``padding`` px) are all pad lines, fewest first."""
    found = []
    for cells in range(1, size):
        cell, rest = divmod(size - padding, cells)
        if rest or cell - padding < 1:
            continue
        starts = [k * cell for k in range(cells + 1)]
        if all(lines[s : s + padding].all() for s in starts):
            found.append(cells)
    return found


def grid_geometry(
    pixels: np.ndarray, *, channels: int | None = None, padding: int = 1
) -> GridGeometry:
    """Find the tile layout of a grid written by :mod:`torch_featureviz.render.grids`.

    The writers lay tiles out ``ceil(sqrt(n))`` per row with ``padding`` pixels of the pad
    colour (the corner pixel's) between and around them. With ``channels`` known the layout
    follows from it; otherwise the finest near-square layout whose separator lines are all
    pad colour is taken, and trailing empty (all pad colour) cells of the last row are not
    counted.

    Args:
        pixels: ``(H, W)`` or ``(H, W, C)`` uint8 pixels of the grid.
        channels: the number of tiles, when known.
        padding: the padding the writer used.

    Returns:
        The grid's :class:`GridGeometry`.

    Raises:
        ValueError: ``pixels`` is not 2-d or 3-d, or the sizes fit no grid.
    """
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.ndim != 3:
        raise ValueError(f"pixels must be (H, W) or (H, W, C), got shape {pixels.shape}.")
    height, width = pixels.shape[:2]
    if channels is not None:
        cols = math.ceil(math.sqrt(channels))
        rows = math.ceil(channels / cols)
        tw, rw = divmod(width - padding, cols)
        th, rh = divmod(height - padding, rows)
        if rw or rh or tw <= padding or th <= padding:
            raise ValueError(
                f"a {width}x{height} image is no grid of {channels} tiles with padding {padding}."
            )
        return GridGeometry(cols, rows, tw - padding, th - padding, channels, padding)
    pad = pixels[0, 0]
    is_pad = (pixels == pad).all(axis=-1)
    col_lines = is_pad.all(axis=0)
    row_lines = is_pad.all(axis=1)
    col_options = _separators(col_lines, width, padding)
    row_options = _separators(row_lines, height, padding)
    best: tuple[int, int] | None = None
    for cols in col_options:
        allowed = _near_square_rows(cols)
        for rows in row_options:
            if rows in allowed and (best is None or cols * rows > best[0] * best[1]):
                best = (cols, rows)
    if best is None:
        raise ValueError(
            f"a {width}x{height} image fits no near-square grid with padding {padding}."
        )
    cols, rows = best
    tw = (width - padding) // cols - padding
    th = (height - padding) // rows - padding
    geometry = GridGeometry(cols, rows, tw, th, cols * rows, padding)
    count = (rows - 1) * cols
    for col in range(cols):
        left, top, right, bottom = geometry.box((rows - 1) * cols + col)
        if not is_pad[top:bottom, left:right].all():
            count = (rows - 1) * cols + col + 1
    return GridGeometry(cols, rows, tw, th, max(count, 1), padding)
