import io

import numpy as np
import pytest
import torch
from PIL import Image

from torch_featureviz._png import encode_png, to_hwc_numpy


@pytest.mark.parametrize("channels, mode", [(1, "L"), (3, "RGB"), (4, "RGBA")])
def test_png_round_trip_through_pil(channels, mode):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(17, 23, channels), dtype=np.uint8)
    for level in (0, 1, 9):
        img = Image.open(io.BytesIO(encode_png(pixels, level=level)))
        assert img.mode == mode and img.size == (23, 17)
        decoded = np.asarray(img)
        assert np.array_equal(decoded.reshape(17, 23, channels), pixels)


def test_to_hwc_numpy_and_errors():
    grid = torch.arange(2 * 3, dtype=torch.uint8).view(1, 2, 3)
    arr = to_hwc_numpy(grid)
    assert arr.shape == (2, 3, 1) and arr.flags["C_CONTIGUOUS"]
    with pytest.raises(ValueError, match=r"expected a \(C, H, W\) uint8 grid"):
        to_hwc_numpy(torch.zeros(2, 3, 3))
    with pytest.raises(ValueError, match=r"expected \(H, W, C\) uint8 pixels"):
        encode_png(np.zeros((3, 3, 2), dtype=np.uint8))
