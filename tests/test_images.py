"""load_image and preprocess: every colour type and every broken file, with real files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from torch_featureviz.loading.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    load_image,
    preprocess,
    sample_image_path,
)

RNG = np.random.default_rng(0)


def _save(tmp_path: Path, name: str, array: np.ndarray, mode: str | None = None) -> Path:
    path = tmp_path / name
    (Image.fromarray(array, mode) if mode else Image.fromarray(array)).save(path)
    return path


def test_builtin_image_is_the_matplotlib_sample() -> None:
    assert sample_image_path().is_file()
    img = load_image()
    assert img.shape == (3, 600, 512)
    assert img.dtype == torch.float32
    assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0
    # The same file read by PIL gives the same pixels (JPEG decoders agree to within 1 level).
    ref = np.asarray(Image.open(sample_image_path()).convert("RGB"), dtype=np.float32)
    assert np.abs(img.permute(1, 2, 0).numpy() * 255 - ref).max() <= 2.0


def test_rgb_png_is_exact(tmp_path: Path) -> None:
    rgb = RNG.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    img = load_image(_save(tmp_path, "rgb.png", rgb))
    assert img.shape == (3, 37, 53)
    np.testing.assert_array_equal((img.permute(1, 2, 0).numpy() * 255).round(), rgb)


def test_grayscale_png_becomes_three_equal_channels(tmp_path: Path) -> None:
    gray = RNG.integers(0, 256, (20, 30), dtype=np.uint8)
    img = load_image(_save(tmp_path, "gray.png", gray, "L"))
    assert img.shape == (3, 20, 30)
    for c in range(3):
        np.testing.assert_array_equal((img[c].numpy() * 255).round(), gray)


def test_grayscale_jpeg_becomes_three_channels(tmp_path: Path) -> None:
    gray = RNG.integers(0, 256, (24, 24), dtype=np.uint8)
    img = load_image(_save(tmp_path, "gray.jpg", gray, "L"))
    assert img.shape == (3, 24, 24)
    assert torch.equal(img[0], img[1]) and torch.equal(img[1], img[2])


def test_rgba_png_drops_alpha(tmp_path: Path) -> None:
    rgba = RNG.integers(0, 256, (16, 12, 4), dtype=np.uint8)
    rgba[..., 3] = 0  # fully transparent: the colours must still come through unchanged
    img = load_image(_save(tmp_path, "rgba.png", rgba, "RGBA"))
    assert img.shape == (3, 16, 12)
    np.testing.assert_array_equal((img.permute(1, 2, 0).numpy() * 255).round(), rgba[..., :3])


def test_gray_alpha_and_palette_pngs(tmp_path: Path) -> None:
    la = RNG.integers(0, 256, (10, 10, 2), dtype=np.uint8)
    img = load_image(_save(tmp_path, "la.png", la, "LA"))
    assert img.shape == (3, 10, 10)
    np.testing.assert_array_equal((img[1].numpy() * 255).round(), la[..., 0])
    rgb = RNG.integers(0, 256, (10, 14, 3), dtype=np.uint8)
    path = tmp_path / "palette.png"
    Image.fromarray(rgb).convert("P").save(path)
    expected = np.asarray(Image.open(path).convert("RGB"))
    img = load_image(path)
    np.testing.assert_array_equal((img.permute(1, 2, 0).numpy() * 255).round(), expected)


def test_sixteen_bit_png_is_scaled_to_unit_range(tmp_path: Path) -> None:
    gray16 = (RNG.integers(0, 256, (8, 9)) * 257).astype(np.uint16)
    path = tmp_path / "g16.png"
    Image.fromarray(gray16).save(path)
    img = load_image(path)
    assert img.shape == (3, 8, 9)
    assert float(img.max()) <= 1.0
    np.testing.assert_allclose(img[0].numpy(), gray16 / 65535.0, atol=1 / 255)


def test_channels_one_gives_grayscale(tmp_path: Path) -> None:
    rgb = RNG.integers(0, 256, (12, 12, 3), dtype=np.uint8)
    img = load_image(_save(tmp_path, "c.png", rgb), channels=1)
    assert img.shape == (1, 12, 12)


def test_tiny_and_elongated_images_preprocess_to_the_model_size(tmp_path: Path) -> None:
    for shape in ((1, 1, 3), (7, 900, 3)):
        path = _save(tmp_path, f"{shape[0]}x{shape[1]}.png", RNG.integers(0, 256, shape, np.uint8))
        x = preprocess(load_image(path), size=32)
        assert x.shape == (1, 3, 32, 32)
        assert torch.isfinite(x).all()


def test_truncated_jpeg_is_refused(tmp_path: Path) -> None:
    data = sample_image_path().read_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.jpg' is truncated or corrupt") as info:
        load_image(path)
    message = str(info.value)
    assert "\n" not in message and ".cpp" not in message  # no C++ source paths for users


def test_truncated_png_is_refused(tmp_path: Path) -> None:
    path = _save(tmp_path, "full.png", RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    cut = tmp_path / "cut.png"
    cut.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ValueError, match=r"truncated or corrupt"):
        load_image(cut)


def test_non_image_empty_missing_and_directory(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello, not an image")
    with pytest.raises(ValueError, match=r"not a PNG or JPEG image .*convert it"):
        load_image(text)
    with pytest.raises(ValueError, match=r"not a PNG or JPEG image \(it starts with b'ab'\)"):
        (tmp_path / "short").write_bytes(b"ab")
        load_image(tmp_path / "short")
    gif = tmp_path / "a.gif"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(gif)
    with pytest.raises(ValueError, match=r"not a PNG or JPEG"):
        load_image(gif)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"is empty \(0 bytes\)"):
        load_image(empty)
    with pytest.raises(FileNotFoundError, match=r"image not found: .*nope\.png"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(IsADirectoryError, match=r"is a directory"):
        load_image(tmp_path)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"channels must be >= 1, got 0"):
        load_image(channels=0)
    with pytest.raises(TypeError, match=r"channels must be a positive int, got str"):
        load_image(channels="3")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"max_bytes must be a positive int, got float"):
        load_image(max_bytes=1e9)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"path must be a str or os.PathLike"):
        load_image(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"path must not be empty"):
        load_image("")


def test_other_channel_counts_repeat_or_cut_rgb(tmp_path: Path) -> None:
    rgb = RNG.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    path = _save(tmp_path, "rgb.png", rgb)
    full = load_image(path)
    assert torch.equal(load_image(path, channels=2), full[:2])
    assert torch.equal(load_image(path, channels=4), full[[0, 1, 2, 0]])
    assert torch.equal(load_image(path, channels=6), torch.cat([full, full]))
    gray = load_image(_save(tmp_path, "g.png", rgb[..., 0], "L"), channels=5)
    assert gray.shape == (5, 6, 5) and all(torch.equal(gray[0], gray[c]) for c in range(5))


def test_reads_are_capped(tmp_path: Path) -> None:
    # A device that never ends fails on its first bytes, without reading on.
    with pytest.raises(ValueError, match=r"'/dev/zero' is not a PNG or JPEG image"):
        load_image("/dev/zero")
    path = _save(tmp_path, "big.png", RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    size = path.stat().st_size
    assert load_image(path, max_bytes=size).shape == (3, 64, 64)
    with pytest.raises(ValueError, match=rf"big\.png' is larger than {size - 1} bytes"):
        load_image(path, max_bytes=size - 1)


def test_preprocess_normalises_and_does_not_modify_input() -> None:
    image = torch.full((3, 40, 60), 0.5)
    before = image.clone()
    x = preprocess(image, size=24)
    assert x.shape == (1, 3, 24, 24)
    assert torch.equal(image, before)
    for c in range(3):
        expected = (0.5 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        assert torch.allclose(x[0, c], torch.full((24, 24), expected), atol=1e-5)


def test_preprocess_errors() -> None:
    with pytest.raises(TypeError, match=r"image must be a \(C, H, W\) tensor, got ndarray"):
        preprocess(np.zeros((3, 4, 4)))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"got shape \(1, 3, 4, 4\)"):
        preprocess(torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match=r"size must be >= 1, got 0"):
        preprocess(torch.zeros(3, 4, 4), size=0)
    with pytest.raises(TypeError, match=r"size must be an int, got float"):
        preprocess(torch.zeros(3, 4, 4), size=2.0)  # type: ignore[arg-type]
