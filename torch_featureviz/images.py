"""Read images with torchvision's own decoders and prepare them for a model.

No OpenCV and no download: the built-in image is the photo matplotlib ships as sample data.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "load_image", "preprocess", "sample_image_path"]

#: The default normalisation when no weights' own transforms are known (torchvision's ImageNet).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def sample_image_path() -> Path:
    """The built-in image: Grace Hopper's portrait from matplotlib's sample data (no download)."""
    from matplotlib import cbook

    return Path(str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))


def load_image(path: str | os.PathLike[str] | None = None, *, channels: int = 3) -> torch.Tensor:
    """Decode a PNG or JPEG file into a ``(C, H, W)`` float32 tensor in [0, 1].

    Grayscale images are repeated to 3 channels and RGBA loses its alpha when ``channels=3``;
    ``channels=1`` gives grayscale.

    Args:
        path: the file; ``None`` loads the built-in image.
        channels: 3 (RGB) or 1 (grayscale).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a PNG or JPEG, or it is truncated or corrupt.
    """
    from torchvision.io import ImageReadMode, decode_image, read_file

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}.")
    p = sample_image_path() if path is None else Path(path)
    if not p.exists():
        raise FileNotFoundError(f"image not found: {str(p)!r}")
    if p.is_dir():
        raise ValueError(f"{str(p)!r} is a directory, not an image file.")
    data = read_file(str(p))
    head = bytes(data[:8].tolist())
    if not (head.startswith(b"\x89PNG\r\n\x1a\n") or head.startswith(b"\xff\xd8")):
        raise ValueError(f"{str(p)!r} is not a PNG or JPEG image.")
    mode = ImageReadMode.RGB if channels == 3 else ImageReadMode.GRAY
    try:
        img = decode_image(data, mode=mode)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{str(p)!r} is truncated or corrupt: {first}") from e
    return img.float().div_(255.0)


def preprocess(
    image: torch.Tensor,
    *,
    size: int = 224,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
) -> torch.Tensor:
    """The documented default transform: resize the short side to ``size``, centre-crop to
    ``size`` x ``size``, normalise with ``mean``/``std``. Returns ``(1, C, size, size)``.
    """
    from torchvision.transforms import functional as tvf

    if not isinstance(image, torch.Tensor) or image.dim() != 3:
        raise ValueError("image must be a (C, H, W) tensor; use load_image() to read a file.")
    x = tvf.resize(image, [size], antialias=True)
    x = tvf.center_crop(x, [size, size])
    c = x.shape[0]
    x = tvf.normalize(x, list(mean)[:c] if c < len(mean) else list(mean), list(std)[:c])
    return x.unsqueeze(0)
