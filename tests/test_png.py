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


@pytest.mark.parametrize("impl", ["crc32c", "numpy_crc32c"])
def test_crc32c_matches_tensorboard(impl):
    """Both the C path (google-crc32c) and the numpy fallback give tensorboard's values."""
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import crc32c, masked_crc32c

    from torch_featureviz import _png

    fn = getattr(_png, impl)
    assert fn(b"123456789") == 0xE3069283  # the CRC-32C check value
    rng = np.random.default_rng(0)
    # Around the byte-loop cut-off (128), the lane size (64) and each merge level (64 lanes of
    # 64 bytes, 64 of those): every padding and merge path.
    sizes = (0, 1, 7, 127, 128, 129, 191, 4095, 4096, 4097, 65_536, 100_003, 262_143, 262_145)
    for n in sizes:
        data = rng.integers(0, 256, size=n, dtype=np.uint8).tobytes()
        assert fn(data) == crc32c(data), n
        assert _png.masked_crc32c(data) == masked_crc32c(data), n
    for data in (bytes(5000), b"\xff" * 5000, bytes(300) + b"\x01"):  # leading zeros matter
        assert fn(data) == crc32c(data)
