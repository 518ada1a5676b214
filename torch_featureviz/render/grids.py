"""Pure functions that turn conv weights and activations into ``uint8`` image grids.

Everything runs on the input tensor's own device, in float32 whatever the input dtype (fp16,
bf16, float64, channels_last all work), and inputs are never modified. The result is a
``(C, H, W)`` ``uint8`` tensor on the same device (``C`` is 1 for grayscale, 3 for RGB), the
layout ``SummaryWriter.add_image`` expects; only that finished grid needs to cross to the host.

Normalisation maps each tile's finite min..max to 0..255 (``normalize="tile"``, the default) or
one shared min..max for the whole grid (``normalize="grid"``). Bad values never spoil good ones:
NaN and -Inf pixels are 0, +Inf pixels 255, and a constant tile (a dead ReLU channel) is black.

Every conv type renders to a plain image, so TensorBoard and figures need no special case:

- feature maps ``(C, H, W)`` (2-d and transposed 2-d convs): one tile per channel;
- ``(C, L)`` (1-d convs): one horizontal band per channel, each band a row of the map scaled on
  its own (``"tile"`` means "row" here) and :data:`ROW_HEIGHT` pixels tall;
- ``(C, T, H, W)`` (3-d convs): one frame per channel, the middle one unless ``frame=`` says;
- filters: 2-d as tiles, 1-d as an ``(out, k)`` heat map (``(out, in)`` for ``k == 1``), 3-d by
  their middle temporal slice; transposed-conv weights are regrouped per *output* channel first.
"""

from __future__ import annotations

import functools

import torch

from torch_featureviz._validation import check_positive_int
from torch_featureviz.render.filters import (
    MIN_FILTER_TILE,
    FilterChannel,
    make_filter_grid,
    to_output_filters,
)
from torch_featureviz.render.tiles import (
    Normalize,
    arrange_tiles,
    check_upscale,
    make_image_grid,
    pad_image,
    rows_image,
)

__all__ = [
    "MIN_FILTER_TILE",
    "ROW_HEIGHT",
    "FilterChannel",
    "Normalize",
    "make_feature_grid",
    "make_filter_grid",
    "make_image_grid",
    "to_display_image",
    "to_output_filters",
]

#: Height in pixels of one channel's band in a ``(C, L)`` feature map image (before ``upscale``).
ROW_HEIGHT = 4


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
    frame: int | None = None,
) -> torch.Tensor:
    """Render one sample's activations as a uint8 image, one tile (or band) per channel.

    The shape says which conv made the map:

    - ``(C, H, W)``, 2-d convs: a grid of ``H x W`` grayscale tiles.
    - ``(C, L)``, 1-d convs: one horizontal band per channel, in channel order from the top,
      each ``ROW_HEIGHT * upscale`` pixels tall and ``L * upscale`` wide. With
      ``normalize="tile"`` each band is scaled on its own (a row is a tile). ``nrow`` is
      unused. (A single 2-d channel ``(H, W)`` is therefore passed as ``maps[None]``.)
    - ``(C, T, H, W)``, 3-d convs: a grid of one frame per channel, the middle frame
      ``T // 2`` unless ``frame`` chooses another.
    - ``(C, 1, 1)`` (squeeze-excitation, ECA and ASPP pooling convs): one band of ``C`` cells
      on one shared scale, channel 0 on the left.

    Args:
        maps: activations of one sample, as above. Any real dtype or memory format; not
            modified.
        max_channels: first channels shown; ``None`` shows all.
        nrow, normalize, padding, upscale: as for :func:`make_image_grid`.
        cmap: a matplotlib colormap name to colour the grid (``(3, H, W)`` output); ``None``
            keeps grayscale.
        frame: the time index shown for ``(C, T, H, W)`` maps (negative counts from the end);
            ``None`` is the middle frame. Ignored for maps without a time axis, so one setting
            can serve a model with several conv types.

    Returns:
        ``(1, H', W')`` uint8 (or ``(3, H', W')`` with ``cmap``) on ``maps.device``.

    Raises:
        TypeError: ``maps`` is not a tensor, or ``frame`` is not an int.
        ValueError: a shape other than the three above, or a bad option.

    Example::

        >>> import torch
        >>> make_feature_grid(torch.randn(16, 28, 28)).shape
        torch.Size([1, 117, 117])
        >>> make_feature_grid(torch.randn(8, 100)).shape  # 8 bands of 4 px
        torch.Size([1, 34, 102])
        >>> make_feature_grid(torch.randn(16, 4, 28, 28), frame=0).shape
        torch.Size([1, 117, 117])
    """
    if not isinstance(maps, torch.Tensor):
        raise TypeError(f"maps must be a (C, H, W) tensor, got {type(maps).__name__}.")
    if maps.dim() not in (2, 3, 4):
        hint = " Select one sample first, e.g. maps[0]." if maps.dim() == 5 else ""
        raise ValueError(
            "maps must have shape (C, L), (C, H, W) or (C, T, H, W), got "
            f"{tuple(maps.shape)}.{hint}"
        )
    if frame is not None and (isinstance(frame, bool) or not isinstance(frame, int)):
        raise TypeError(f"frame must be an int or None, got {type(frame).__name__}.")
    if maps.dim() == 4:
        t = maps.shape[1]
        index = t // 2 if frame is None else frame
        if not -t <= index < t:
            raise ValueError(f"frame={frame} is out of range for a map of {t} frames.")
        maps = maps[:, index]
    if check_positive_int(max_channels, "max_channels", allow_none=True) is not None:
        maps = maps[:max_channels]
    if maps.dim() == 3 and maps.shape[-2:] == (1, 1):
        # (C, 1, 1) maps (squeeze-excitation, ECA, ASPP pooling): one value per channel. As
        # 1x1 tiles each would be scaled alone, hence black; as one band of C square cells they
        # share one scale and show each channel against the others.
        cell = ROW_HEIGHT * check_upscale(upscale)
        image = rows_image(
            maps.reshape(1, 1, -1), normalize="tile", row_height=cell, col_width=cell
        )
        if cmap is not None:
            image = _colormap_lut(cmap).to(image.device)[image[0].long()].permute(2, 0, 1)
        return pad_image(image, padding)
    if maps.dim() == 2:
        if normalize not in ("tile", "grid"):
            raise ValueError(f"normalize must be 'tile' or 'grid', got {normalize!r}.")
        up = check_upscale(upscale)
        image = rows_image(
            maps.unsqueeze(1), normalize=normalize, row_height=ROW_HEIGHT * up, col_width=up
        )
        if cmap is not None:
            image = _colormap_lut(cmap).to(image.device)[image[0].long()].permute(2, 0, 1)
        return pad_image(image, padding)
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
    return arrange_tiles(coloured, nrow=nrow, padding=padding, pad_value=255)


def to_display_image(image: torch.Tensor) -> torch.Tensor:
    """Turn an input image ``(C, H, W)`` or ``(1, C, H, W)`` into a ``(C, H, W)`` uint8 image.

    The whole image is min-max scaled as one (so normalised model inputs display sensibly).

    Example::

        >>> import torch
        >>> shown = to_display_image(torch.randn(1, 3, 32, 48))
        >>> shown.shape, shown.dtype, int(shown.min()), int(shown.max())
        (torch.Size([3, 32, 48]), torch.uint8, 0, 255)
    """
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a tensor, got {type(image).__name__}.")
    if image.dim() == 4:
        image = image[0]
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"image must be (C, H, W) with C in (1, 3), got {tuple(image.shape)}.")
    return make_image_grid(image.unsqueeze(0), padding=0, normalize="grid")
