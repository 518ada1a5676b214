"""The PNG encoder: exact round trips through PIL, and the row filter it picks."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from torch_featureviz.render.png import encode_png


def _decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        out = np.asarray(im)
    return out[:, :, None] if out.ndim == 2 else out


def _filters(data: bytes, h: int) -> set[int]:
    """The filter byte of every row (the image data decompressed by hand)."""
    import zlib

    idat, pos = b"", 8
    while pos < len(data):
        (length,) = np.frombuffer(data[pos : pos + 4], ">u4")
        kind = data[pos + 4 : pos + 8]
        if kind == b"IDAT":
            idat += data[pos + 8 : pos + 8 + int(length)]
        pos += 12 + int(length)
    raw = zlib.decompress(idat)
    stride = len(raw) // h
    return {raw[r * stride] for r in range(h)}


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(1, 12), w=st.integers(1, 12), c=st.sampled_from([1, 3, 4]),
    upscale=st.integers(1, 4), seed=st.integers(0, 2**16), level=st.sampled_from([0, 1, 6]),
)
def test_every_image_round_trips_exactly(h, w, c, upscale, seed, level) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)
    pixels = np.ascontiguousarray(pixels.repeat(upscale, axis=0).repeat(upscale, axis=1))
    assert np.array_equal(_decode(encode_png(pixels, level=level)), pixels)


def test_upscaled_tiles_get_the_up_filter_and_maps_the_sub_filter() -> None:
    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    smooth = np.cumsum(rng.integers(0, 3, (128, 128, 1)), axis=1).astype(np.uint8)
    up, sub = encode_png(np.ascontiguousarray(tiles)), encode_png(smooth)
    assert _filters(up, 128) == {2} and _filters(sub, 128) == {1}
    # "Up" is what makes a filter grid small: its repeated rows compress to almost nothing.
    assert len(up) < 0.2 * tiles.nbytes


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="expected"):
        encode_png(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="expected"):
        encode_png(np.zeros((4, 4, 3), np.float32))
