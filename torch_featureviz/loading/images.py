"""Read images with torchvision's own decoders and prepare them for a model.

No OpenCV and no download: the built-in image is the photo matplotlib ships as sample data
(Grace Hopper's portrait).

:func:`load_image` accepts PNG and JPEG files of any colour type: grayscale (with or without
alpha), palette, RGB, RGBA, CMYK JPEG and 16-bit PNG. With ``channels=3`` grayscale is repeated
to 3 channels and alpha is dropped; ``channels=1`` converts to grayscale; any other count is
made from the RGB channels, repeated (channel ``i`` is colour ``i % 3``) or cut (``channels=2``
keeps red and green). A missing, empty, non-image, truncated or corrupt file raises an
exception with a one-line message that names the file. At most :data:`MAX_IMAGE_BYTES` are
read, so a device such as ``/dev/zero`` or a huge file given by mistake fails at once.
"""

from __future__ import annotations

import inspect
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MAX_IMAGE_BYTES",
    "load_image",
    "preprocess",
    "sample_image_path",
]

#: The largest file :func:`load_image` reads (256 MiB: far above any photo, far below memory).
MAX_IMAGE_BYTES = 256 * 2**20

#: The default normalisation when no weights' own transforms are known (torchvision's ImageNet).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
# torchvision's C++ errors start with "function, /path/to/file.cpp:171, "; keep the sentence only.
_TV_DEPRECATION = r"The image decoding and encoding capabilities of TorchVision are deprecated"
_CPP_PREFIX = re.compile(r"^.*?\.(?:cpp|h|hpp):\d+,\s*")


def sample_image_path() -> Path:
    """The built-in image: Grace Hopper's portrait from matplotlib's sample data (no download).

    Example::

        >>> sample_image_path().name
        'grace_hopper.jpg'
    """
    from matplotlib import cbook

    return Path(str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))


def _decoder_error(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    text = _CPP_PREFIX.sub("", lines[0]) if lines else ""
    return text or type(e).__name__


def _decode_kwargs() -> dict[str, bool]:
    from torchvision.io import decode_image

    # apply_exif_orientation arrived in torchvision 0.16; phone photos need it to stand upright.
    if "apply_exif_orientation" in inspect.signature(decode_image).parameters:
        return {"apply_exif_orientation": True}
    return {}


def read_capped(
    path: Path,
    max_bytes: int,
    *,
    what: str,
    hint: str,
    check_head: Callable[[bytes], None] | None = None,
) -> bytes:
    """At most ``max_bytes`` of a file, so that a device such as ``/dev/zero`` cannot make a
    read run forever (private to the package; models.py reads configs with it).

    ``check_head`` sees the first 8 bytes before the rest is read, and may raise.

    Raises:
        OSError: the file cannot be read (the message names ``what`` and the path).
        ValueError: the file holds more than ``max_bytes`` (the message ends with ``hint``).
    """
    try:
        with path.open("rb") as f:
            head = f.read(8)
            if check_head is not None:
                check_head(head)
            data = head + f.read(max(0, max_bytes - len(head)) + 1)
    except OSError as e:
        raise OSError(f"cannot read {what} {str(path)!r}: {e.strerror or e}.") from e
    if len(data) > max_bytes:
        raise ValueError(
            f"{what} {str(path)!r} is larger than {max_bytes} bytes, the most that is read; {hint}"
        )
    return data


def _check_magic(p: Path) -> Callable[[bytes], None]:
    def check(head: bytes) -> None:
        if not head:
            raise ValueError(f"{str(p)!r} is empty (0 bytes), not an image.")
        if not (head.startswith(_PNG_MAGIC) or head.startswith(_JPEG_MAGIC)):
            raise ValueError(
                f"{str(p)!r} is not a PNG or JPEG image (it starts with {head!r}); "
                "convert it to PNG or JPEG."
            )

    return check


def load_image(
    path: str | os.PathLike[str] | None = None,
    *,
    channels: int = 3,
    max_bytes: int = MAX_IMAGE_BYTES,
) -> torch.Tensor:
    """Decode a PNG or JPEG file into a ``(C, H, W)`` float32 tensor in [0, 1].

    Grayscale images are repeated to 3 channels and RGBA loses its alpha when ``channels=3``;
    ``channels=1`` gives grayscale (the decoder's luma conversion). Other counts are made from
    the RGB channels: repeated, channel ``i`` being colour ``i % 3`` (``channels=6`` is RGBRGB),
    or cut (``channels=2`` is red and green). 16-bit PNGs are scaled by 65535, 8-bit images by
    255.

    Args:
        path: the file; ``None`` loads the built-in image (:func:`sample_image_path`).
        channels: the channels of the result, >= 1 (3: RGB, 1: grayscale).
        max_bytes: the most bytes read; a larger file is refused unread.

    Returns:
        ``(channels, H, W)`` float32 tensor with values in [0, 1], at the file's own size.

    Raises:
        TypeError: ``path`` is not a path, or ``channels`` or ``max_bytes`` not an int.
        ValueError: ``channels`` or ``max_bytes`` < 1, an empty path; the file is empty,
            larger than ``max_bytes``, not a PNG or JPEG, or it is truncated or corrupt.
        FileNotFoundError: no such file.
        OSError: the file exists but cannot be read (a directory, no permission).

    Example::

        >>> load_image().shape, load_image(channels=1).shape, load_image(channels=4).shape
        (torch.Size([3, 600, 512]), torch.Size([1, 600, 512]), torch.Size([4, 600, 512]))
    """
    from torchvision.io import ImageReadMode, decode_image

    for value, label in ((channels, "channels"), (max_bytes, "max_bytes")):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{label} must be a positive int, got {type(value).__name__}.")
        if value < 1:
            raise ValueError(f"{label} must be >= 1, got {value}.")
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise TypeError(
            f"path must be a str or os.PathLike (or None for the built-in image), got "
            f"{type(path).__name__}."
        )
    if path is not None and not os.fspath(path):
        raise ValueError("path must not be empty; give an image file (or None for the built-in).")
    p = sample_image_path() if path is None else Path(path)
    if not p.exists():
        raise FileNotFoundError(f"image not found: {str(p)!r}; check the path.")
    if p.is_dir():
        raise IsADirectoryError(f"{str(p)!r} is a directory, not an image file.")
    data = read_capped(
        p, max_bytes, what="image", check_head=_check_magic(p),
        hint="is it the image you meant? Resize it, or pass a larger max_bytes.",
    )
    mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
    raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    try:
        with warnings.catch_warnings():
            # torchvision 0.29 deprecates its decoders in favour of TorchCodec, on every call;
            # they still work and are what this package documents. Removal would fail loudly.
            warnings.filterwarnings("ignore", _TV_DEPRECATION, DeprecationWarning)
            img = decode_image(raw, mode=mode, **_decode_kwargs())
    except RuntimeError as e:
        reason = _decoder_error(e)
        if "8-bit" in reason:  # 16-bit PNGs: torchvision before 0.20 cannot decode them
            raise ValueError(
                f"{str(p)!r} cannot be decoded by this torchvision ({reason}); save it as an "
                "8-bit PNG or upgrade torchvision."
            ) from e
        raise ValueError(f"{str(p)!r} is truncated or corrupt: {reason}.") from e
    if img.dtype == torch.uint8:
        scale = 255.0
    elif img.dtype in (torch.int32, torch.int64) or str(img.dtype) == "torch.uint16":
        scale = 65535.0  # 16-bit PNG (uint16 on new torchvision, int32 on some older ones)
    else:
        scale = 1.0
    out = img.float().div_(scale)
    if channels not in (1, 3):
        out = out[torch.arange(channels) % 3]  # repeat (RGBRGB...) or cut (RG)
    return out


def preprocess(
    image: torch.Tensor,
    *,
    size: int = 224,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
) -> torch.Tensor:
    """The documented default transform: resize the short side to ``size``, centre-crop to
    ``size`` x ``size``, normalise with ``mean``/``std``.

    This is what the CLI uses when no ``--weights`` are given; with weights, the weights' own
    ``.transforms()`` are used instead.

    Args:
        image: ``(C, H, W)`` float tensor in [0, 1], as returned by :func:`load_image`.
        size: the side of the square output.
        mean, std: per-channel normalisation (ImageNet's by default); a 1-channel image uses the
            first entry.

    Returns:
        ``(1, C, size, size)`` float tensor; ``image`` is not modified.

    Raises:
        TypeError: ``image`` is not a tensor or ``size`` not an int.
        ValueError: ``image`` is not 3-D or ``size`` < 1.

    Example::

        >>> preprocess(load_image(), size=64).shape
        torch.Size([1, 3, 64, 64])
    """
    from torchvision.transforms import functional as tvf

    if not isinstance(image, torch.Tensor):
        raise TypeError(
            f"image must be a (C, H, W) tensor, got {type(image).__name__}; "
            "use load_image() to read a file."
        )
    if image.dim() != 3:
        raise ValueError(
            f"image must be a (C, H, W) tensor, got shape {tuple(image.shape)}; "
            "use load_image() to read a file."
        )
    if isinstance(size, bool) or not isinstance(size, int):
        raise TypeError(f"size must be an int, got {type(size).__name__}.")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}.")
    x = tvf.resize(image.float(), [size], antialias=True)
    x = tvf.center_crop(x, [size, size])
    c = x.shape[0]
    x = tvf.normalize(x, list(mean)[:c], list(std)[:c])
    return x.unsqueeze(0)
