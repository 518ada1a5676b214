"""Pure functions that turn conv weights and activations into ``uint8`` image grids.

Everything runs on the input tensor's own device, in float32 whatever the input dtype (fp16,
bf16, float64, channels_last all work), and inputs are never modified. The result is a
``(C, H, W)`` ``uint8`` tensor on the same device (``C`` is 1 for grayscale, 3 for RGB), the
layout ``SummaryWriter.add_image`` expects; only that finished grid needs to cross to the host.

Normalisation maps each tile's finite min..max to 0..255 (``normalize="tile"``, the default) or
one shared min..max for the whole grid (``normalize="grid"``). Bad values never spoil good ones:
NaN and -Inf pixels are 0, +Inf pixels 255, and a constant tile (a dead ReLU channel) is black.
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import torch
from torch import nn

__all__ = ["make_feature_grid", "make_filter_grid", "make_image_grid", "to_display_image"]

Normalize = Literal["tile", "grid"]
FilterChannel = Literal["auto", "rgb", "mean", "strongest"] | int

#: Filters are upscaled (nearest) so each tile is at least this many pixels wide by default.
MIN_FILTER_TILE = 32


def _normalize(tiles: torch.Tensor, mode: Normalize) -> torch.Tensor:
    """Map ``(N, C, H, W)`` float32 tiles to [0, 1] per tile or over the whole batch."""
    if mode not in ("tile", "grid"):
        raise ValueError(f"normalize must be 'tile' or 'grid', got {mode!r}.")
    # amin/amax propagate NaN and pass Inf through, so finite extremes mean a finite tensor.
    # (Two vectorised reductions are ~20x faster on CPU than isfinite() or aminmax(dim=...).)
    flat = tiles.reshape(tiles.shape[0] if mode == "tile" else 1, -1)
    lo0, hi0 = flat.amin(dim=1), flat.amax(dim=1)
    if bool(torch.isfinite(lo0).all() & torch.isfinite(hi0).all()):
        return _normalize_finite(tiles, lo0, hi0)
    dims = (1, 2, 3) if mode == "tile" else (0, 1, 2, 3)
    finite = torch.isfinite(tiles)
    zero = torch.zeros((), dtype=tiles.dtype, device=tiles.device)
    # Divide by the largest magnitude first: hi - lo can then neither overflow (1e38 values)
    # nor vanish (denormal values).
    mag = torch.where(finite, tiles.abs(), zero).amax(dim=dims, keepdim=True)
    scaled = tiles / torch.where(mag > 0, mag, torch.ones_like(mag))
    big = torch.tensor(4.0, dtype=tiles.dtype, device=tiles.device)  # |scaled| <= 1 if finite
    lo = torch.where(finite, scaled, big).amin(dim=dims, keepdim=True)
    hi = torch.where(finite, scaled, -big).amax(dim=dims, keepdim=True)
    span = hi - lo
    valid = span > 0  # False for constant tiles and tiles with no finite value
    out = (scaled - lo) / torch.where(valid, span, torch.ones_like(span))
    out = torch.where(valid & finite, out, zero)
    out = torch.where(tiles == math.inf, torch.ones_like(out), out)
    return out.clamp_(0.0, 1.0)


def _normalize_finite(tiles: torch.Tensor, lo0: torch.Tensor, hi0: torch.Tensor) -> torch.Tensor:
    """:func:`_normalize` for tiles without NaN or Inf, given each tile's (or the grid's) min
    and max: the same float32 operations, so the same result to the bit, in four passes over
    the data instead of about fifteen.

    Correctly rounded division and subtraction are monotonic, so ``min(x / m) == min(x) / m``
    for ``m > 0``, every ``(x / m - lo) / span`` already lies in [0, 1] (the general path's
    clamp changes nothing), and a constant tile gives ``x / m - lo == 0``, the general path's 0.
    """
    mag = torch.maximum(lo0.abs(), hi0.abs())
    mag = torch.where(mag > 0, mag, torch.ones_like(mag))
    lo, hi = lo0 / mag, hi0 / mag
    span = hi - lo
    span = torch.where(span > 0, span, torch.ones_like(span))
    shape = (-1, 1, 1, 1)
    out = tiles / mag.view(shape)  # a new tensor: the input is never modified
    return out.sub_(lo.view(shape)).div_(span.view(shape))


def make_image_grid(
    tiles: torch.Tensor,
    *,
    nrow: int | None = None,
    padding: int = 1,
    pad_value: int = 255,
    normalize: Normalize = "tile",
    upscale: int = 1,
) -> torch.Tensor:
    """Arrange ``(N, C, H, W)`` tiles (C = 1 or 3) into one ``(C, H', W')`` uint8 grid.

    Args:
        tiles: any real dtype and memory format; not modified.
        nrow: tiles per row; default ``ceil(sqrt(N))``, a near-square grid.
        padding: pixels between tiles and around the grid.
        pad_value: uint8 value of the padding.
        normalize: ``"tile"`` or ``"grid"`` (see the module docstring).
        upscale: integer nearest-neighbour upscaling of each tile.

    Returns:
        ``(C, rows * (H * upscale + padding) + padding, nrow * (W * upscale + padding) + padding)``
        uint8 tensor on ``tiles.device``.
    """
    if not isinstance(tiles, torch.Tensor) or tiles.dim() != 4:
        raise ValueError(
            f"tiles must be an (N, C, H, W) tensor, got "
            f"{tuple(tiles.shape) if isinstance(tiles, torch.Tensor) else type(tiles).__name__}."
        )
    n, c, h, w = tiles.shape
    if n == 0 or h == 0 or w == 0:
        raise ValueError(f"cannot make a grid of empty tiles {tuple(tiles.shape)}.")
    if c not in (1, 3):
        raise ValueError(f"tiles must have 1 or 3 channels, got {c}.")
    if tiles.is_complex() or tiles.dtype == torch.bool:
        raise TypeError(f"tiles must be real numbers, got {tiles.dtype}.")
    for value, name in ((padding, "padding"), (upscale, "upscale")):
        if isinstance(value, bool) or not isinstance(value, int) or value < (name == "upscale"):
            raise ValueError(f"{name} must be an int >= {int(name == 'upscale')}, got {value!r}.")
    if nrow is not None and (isinstance(nrow, bool) or not isinstance(nrow, int) or nrow < 1):
        raise ValueError(f"nrow must be a positive int or None, got {nrow!r}.")
    if not 0 <= pad_value <= 255:
        raise ValueError(f"pad_value must be in 0..255, got {pad_value}.")

    # _normalize returns a fresh tensor, so scaling it in place cannot touch the input.
    pixels = _normalize(tiles.detach().float(), normalize).mul_(255.0).round_().to(torch.uint8)
    if upscale > 1:
        pixels = pixels.repeat_interleave(upscale, dim=2).repeat_interleave(upscale, dim=3)
    return _arrange(pixels, nrow=nrow, padding=padding, pad_value=pad_value)


def _arrange(
    pixels: torch.Tensor, *, nrow: int | None, padding: int, pad_value: int
) -> torch.Tensor:
    """Lay out ``(N, C, h, w)`` uint8 tiles in a grid with ``padding`` between and around them."""
    n, c, h, w = pixels.shape
    ncol = nrow or math.ceil(math.sqrt(n))
    ncol = min(ncol, n)
    rows = math.ceil(n / ncol)
    ch, cw = h + padding, w + padding
    grid = pixels.new_full((c, rows * ch + padding, ncol * cw + padding), pad_value)
    # Copy the tiles straight into their cells: a (rows, ncol, c, h, w) view of the grid.
    cells = grid[:, padding:, padding:].unflatten(1, (rows, ch)).unflatten(3, (ncol, cw))
    cells = cells.permute(1, 3, 0, 2, 4)[:, :, :, :h, :w]
    full = n // ncol
    if full:
        cells[:full] = pixels[: full * ncol].reshape(full, ncol, c, h, w)
    if n > full * ncol:
        cells[full, : n - full * ncol] = pixels[full * ncol :]
    return grid


def _filter_tiles(weight: torch.Tensor, channel: FilterChannel) -> torch.Tensor:
    """Reduce ``(O, I, kh, kw)`` weights to ``(O, 1 or 3, kh, kw)`` tiles."""
    in_ch = weight.shape[1]
    if channel == "auto":
        channel = "rgb" if in_ch == 3 else "mean"
    if channel == "rgb":
        if in_ch != 3:
            raise ValueError(
                f"channel='rgb' needs filters with 3 input channels, these have {in_ch}; "
                "use 'mean', 'strongest' or an input-channel index."
            )
        return weight
    if channel == "mean":
        return weight.mean(dim=1, keepdim=True)
    if channel == "strongest":
        idx = weight.flatten(2).norm(dim=2).argmax(dim=1)  # (O,) strongest input per filter
        return weight[torch.arange(weight.shape[0], device=weight.device), idx].unsqueeze(1)
    if isinstance(channel, int) and not isinstance(channel, bool):
        if not -in_ch <= channel < in_ch:
            raise ValueError(f"channel={channel} is out of range for {in_ch} input channels.")
        return weight[:, channel : channel + 1 if channel != -1 else None]
    raise ValueError(
        f"channel must be 'auto', 'rgb', 'mean', 'strongest' or an int, got {channel!r}."
    )


def make_filter_grid(
    weight: torch.Tensor | nn.Conv2d,
    *,
    channel: FilterChannel = "auto",
    max_filters: int | None = 64,
    nrow: int | None = None,
    normalize: Normalize | None = None,
    padding: int = 1,
    upscale: int | None = None,
) -> torch.Tensor:
    """Render a conv layer's filters as one uint8 grid, one tile per output filter.

    How a filter's input channels become a tile (``channel``):

    - ``"auto"`` (default): ``"rgb"`` when the filter has 3 input channels (a first layer),
      else ``"mean"``.
    - ``"rgb"``: the 3 input channels as an RGB tile, normalised together.
    - ``"mean"``: the mean over input channels, in grayscale. This is the documented default for
      deep layers: it shows the spatial pattern the filter responds to on average, rather than
      one arbitrary input channel as the original article did.
    - ``"strongest"``: for each filter, the input channel with the largest L2 norm.
    - an int: that input channel, for every filter.

    Args:
        weight: ``(O, I, kh, kw)`` conv weight, or the ``nn.Conv2d`` itself. Not modified.
        max_filters: first filters shown; ``None`` shows all.
        normalize: as for :func:`make_image_grid`; default ``"tile"``, except ``"grid"`` for
            1x1 kernels: their tiles are single pixels, so a per-tile scale would make every one
            black, while one shared scale shows each filter's weight against the others.
        nrow, padding: as for :func:`make_image_grid`.
        upscale: nearest-neighbour factor; default makes tiles >= 32 px wide.

    Returns:
        ``(3, H, W)`` for RGB tiles, else ``(1, H, W)``; uint8 on the weight's device.

    Example::

        >>> import torch
        >>> make_filter_grid(torch.nn.Conv2d(3, 64, 7)).shape
        torch.Size([3, 289, 289])
    """
    if isinstance(weight, nn.Conv2d):
        weight = weight.weight
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a tensor or nn.Conv2d, got {type(weight).__name__}.")
    if weight.dim() != 4:
        raise ValueError(
            f"weight must be a 4-D conv weight (out, in, kh, kw), got shape {tuple(weight.shape)}."
        )
    if max_filters is not None:
        if isinstance(max_filters, bool) or not isinstance(max_filters, int) or max_filters < 1:
            raise ValueError(f"max_filters must be a positive int or None, got {max_filters!r}.")
    w = weight.detach()
    if max_filters is not None:
        w = w[:max_filters]
    tiles = _filter_tiles(w.float(), channel)
    if normalize is None:
        normalize = "grid" if tiles.shape[-2:] == (1, 1) else "tile"
    if upscale is None:
        upscale = max(1, math.ceil(MIN_FILTER_TILE / max(tiles.shape[-2:])))
    return make_image_grid(tiles, nrow=nrow, normalize=normalize, padding=padding, upscale=upscale)


@functools.lru_cache(maxsize=8)
def _colormap_lut(name: str) -> torch.Tensor:
    from matplotlib import colormaps

    try:
        cmap = colormaps[name]
    except KeyError:
        raise ValueError(
            f"unknown matplotlib colormap {name!r}; try 'viridis' or 'magma'."
        ) from None
    values = cmap(torch.linspace(0, 1, 256).numpy())[:, :3]
    return (torch.from_numpy(values) * 255).round().to(torch.uint8)


def make_feature_grid(
    maps: torch.Tensor,
    *,
    max_channels: int | None = None,
    nrow: int | None = None,
    normalize: Normalize = "tile",
    padding: int = 1,
    upscale: int = 1,
    cmap: str | None = None,
) -> torch.Tensor:
    """Render a ``(C, H, W)`` activation as a grid of grayscale tiles, one per channel.

    Args:
        maps: ``(C, H, W)`` activations of one sample (``(H, W)`` is one channel). Any real
            dtype or memory format; not modified.
        max_channels: first channels shown; ``None`` shows all.
        nrow, normalize, padding, upscale: as for :func:`make_image_grid`.
        cmap: a matplotlib colormap name to colour the grid (``(3, H, W)`` output); ``None``
            keeps grayscale.

    Returns:
        ``(1, H', W')`` uint8 (or ``(3, H', W')`` with ``cmap``) on ``maps.device``.

    Example::

        >>> import torch
        >>> make_feature_grid(torch.randn(16, 28, 28)).shape
        torch.Size([1, 117, 117])
    """
    if not isinstance(maps, torch.Tensor):
        raise TypeError(f"maps must be a (C, H, W) tensor, got {type(maps).__name__}.")
    if maps.dim() == 2:
        maps = maps.unsqueeze(0)
    if maps.dim() != 3:
        hint = " Select one sample first, e.g. maps[0]." if maps.dim() == 4 else ""
        raise ValueError(f"maps must have shape (C, H, W), got {tuple(maps.shape)}.{hint}")
    if max_channels is not None:
        if isinstance(max_channels, bool) or not isinstance(max_channels, int) or max_channels < 1:
            raise ValueError(f"max_channels must be a positive int or None, got {max_channels!r}.")
        maps = maps[:max_channels]
    if cmap is None:
        return make_image_grid(
            maps.unsqueeze(1), nrow=nrow, normalize=normalize, padding=padding, upscale=upscale
        )
    # Colour the tiles before laying them out, so padding and empty cells stay white.
    lut = _colormap_lut(cmap).to(maps.device)
    stacked = make_image_grid(
        maps.unsqueeze(1), nrow=1, normalize=normalize, padding=0, upscale=upscale
    )  # (1, C * h, w): the tiles stacked, already scaled to uint8
    tiles = stacked[0].unflatten(0, (maps.shape[0], -1))  # (C, h, w)
    coloured = lut[tiles.long()].permute(0, 3, 1, 2)  # (C, 3, h, w)
    return _arrange(coloured, nrow=nrow, padding=padding, pad_value=255)


def to_display_image(image: torch.Tensor) -> torch.Tensor:
    """Turn an input image ``(C, H, W)`` or ``(1, C, H, W)`` into a ``(C, H, W)`` uint8 image.

    The whole image is min-max scaled as one (so normalised model inputs display sensibly).
    """
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a tensor, got {type(image).__name__}.")
    if image.dim() == 4:
        image = image[0]
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"image must be (C, H, W) with C in (1, 3), got {tuple(image.shape)}.")
    return make_image_grid(image.unsqueeze(0), padding=0, normalize="grid")
