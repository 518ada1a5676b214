"""Integer average pooling of captured maps, done in the hook on the map's own device, so a
capture's memory and its logged pixels stay bounded (the monitor's byte budget picks the cap)."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as nnf

__all__ = ["BAND", "map_pixels", "pool_factor", "pool_map"]

#: Height in pixels of one channel's band in a ``(C, L)`` grid (see ``render.ROW_HEIGHT``).
BAND = 4


def map_pixels(shape: tuple[int, ...]) -> int:
    """Pixels of the grid of a ``(C, L)``, ``(C, H, W)`` or ``(C, T, H, W)`` map (one frame),
    counting the 1-px gap beside each tile (a third of a 7x7 map's grid)."""
    if len(shape) == 2:
        return shape[0] * shape[1] * BAND
    c, h, w = shape[0], shape[-2], shape[-1]
    return c * (h + 1) * (w + 1)


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
