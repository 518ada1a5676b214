"""A minimal, fast PNG encoder for uint8 grids.

Feature-map grids are large, mostly smooth and written often. PIL's default path (as used by
``SummaryWriter.add_image``) resizes and compresses at level 6 with adaptive filtering; a plain
filter-0 stream at zlib level 1 is several times faster and only slightly larger. The output is a
standard PNG that any decoder (PIL, TensorBoard's front end, browsers) reads.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
import torch

__all__: list[str] = []

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOR_TYPE = {1: 0, 3: 2, 4: 6}  # grayscale, RGB, RGBA


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)) & 0xFFFFFFFF)
    )


def to_hwc_numpy(grid: torch.Tensor) -> np.ndarray:
    """Move a ``(C, H, W)`` uint8 grid to the host as a contiguous ``(H, W, C)`` array."""
    if grid.dtype != torch.uint8 or grid.dim() != 3 or grid.shape[0] not in _COLOR_TYPE:
        raise ValueError(
            f"expected a (C, H, W) uint8 grid with C in 1, 3, 4; got {tuple(grid.shape)} "
            f"{grid.dtype}."
        )
    return np.ascontiguousarray(grid.detach().permute(1, 2, 0).cpu().numpy())


def encode_png(pixels: np.ndarray, *, level: int = 1) -> bytes:
    """Encode an ``(H, W, C)`` uint8 array (C = 1, 3 or 4) as PNG bytes."""
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] not in _COLOR_TYPE:
        raise ValueError(f"expected (H, W, C) uint8 pixels, got {pixels.shape} {pixels.dtype}.")
    h, w, c = pixels.shape
    rows = np.empty((h, 1 + w * c), dtype=np.uint8)
    rows[:, 0] = 0  # filter type "None" for every scanline
    rows[:, 1:] = pixels.reshape(h, w * c)
    header = struct.pack(">IIBBBBB", w, h, 8, _COLOR_TYPE[c], 0, 0, 0)
    return b"".join(
        (
            _SIGNATURE,
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", zlib.compress(rows.tobytes(), level)),
            _chunk(b"IEND", b""),
        )
    )
