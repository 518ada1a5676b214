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
import math
from typing import Literal

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd

from torch_featureviz._validation import check_non_negative_int, check_positive_int
from torch_featureviz.capture.discovery import CONV_TYPES

__all__ = [
    "make_feature_grid",
    "make_filter_grid",
    "make_image_grid",
    "to_display_image",
    "to_output_filters",
]

Normalize = Literal["tile", "grid"]
FilterChannel = Literal["auto", "rgb", "mean", "strongest"] | int

#: Filters are upscaled (nearest) so each tile is at least this many pixels wide by default.
MIN_FILTER_TILE = 32

#: Height in pixels of one channel's band in a ``(C, L)`` feature map image (before ``upscale``).
ROW_HEIGHT = 4


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
    check_non_negative_int(padding, "padding")
    check_positive_int(upscale, "upscale")
    check_positive_int(nrow, "nrow", allow_none=True)
    if not 0 <= check_non_negative_int(pad_value, "pad_value") <= 255:
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


def _check_real(x: torch.Tensor) -> None:
    if x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"tiles must be real numbers, got {x.dtype}.")


def _rows_image(
    rows: torch.Tensor, *, normalize: Normalize, row_height: int, col_width: int
) -> torch.Tensor:
    """Turn ``(R, c, L)`` rows (c = 1 or 3) into one ``(c, R * row_height, L * col_width)``
    uint8 image without padding: each row a band, scaled alone (``"tile"``) or with the others.
    """
    r, c, length = rows.shape
    if r == 0 or length == 0:
        raise ValueError(f"cannot make a grid of empty tiles {tuple(rows.shape)}.")
    _check_real(rows)
    pixels = _normalize(rows.detach().float().unsqueeze(2), normalize)  # (R, c, 1, L)
    pixels = pixels.mul_(255.0).round_().to(torch.uint8)
    pixels = pixels.repeat_interleave(row_height, dim=2).repeat_interleave(col_width, dim=3)
    return pixels.permute(1, 0, 2, 3).reshape(c, r * row_height, length * col_width)


def _pad(image: torch.Tensor, padding: int, pad_value: int = 255) -> torch.Tensor:
    """``image`` ``(c, h, w)`` with a ``padding``-pixel border of ``pad_value``."""
    check_non_negative_int(padding, "padding")
    c, h, w = image.shape
    out = image.new_full((c, h + 2 * padding, w + 2 * padding), pad_value)
    out[:, padding : padding + h, padding : padding + w] = image
    return out


def _check_upscale(upscale: int) -> int:
    return check_positive_int(upscale, "upscale")


def _filter_tiles(weight: torch.Tensor, channel: FilterChannel) -> torch.Tensor:
    """Reduce ``(O, I, *k)`` weights to ``(O, 1 or 3, *k)`` tiles."""
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


def to_output_filters(
    weight: torch.Tensor | nn.Module, *, transposed: bool = False, groups: int = 1
) -> torch.Tensor:
    """Return a conv's filters, one per output channel, in a conv's ``(O, I / groups, *k)``
    layout, whatever the conv type.

    A conv's weight already is that; a transposed conv's weight is ``(I, O / groups, *k)``:
    output channel ``o`` of group ``g`` is made from input channels ``g * I / groups`` up to
    ``(g + 1) * I / groups``, through ``weight[those inputs, o - g * O / groups]``. Slice the
    result (``[:max_filters]``) to keep the first output channels of any conv.

    Args:
        weight: a conv module (``transposed`` and ``groups`` are then read from it), or its
            weight tensor.
        transposed: the tensor is a transposed conv's weight.
        groups: that transposed conv's ``groups``.

    Returns:
        The detached weight for a conv; for a transposed conv, a regrouped view of it. On the
        weight's device, in its dtype.

    Raises:
        TypeError: ``weight`` is neither a tensor nor a conv module.
        ValueError: ``groups`` does not divide the input channels.

    Example::

        >>> import torch
        >>> to_output_filters(torch.nn.ConvTranspose2d(8, 4, 3, groups=2)).shape
        torch.Size([4, 4, 3, 3])
    """
    if isinstance(weight, nn.Module):
        if not isinstance(weight, CONV_TYPES):
            raise TypeError(
                f"weight must be a tensor or a conv module (nn.Conv1d/2d/3d, "
                f"nn.ConvTranspose1d/2d/3d), got {type(weight).__name__}."
            )
        module: _ConvNd = weight  # type: ignore[assignment]
        transposed = isinstance(module, _ConvTransposeNd)
        groups = module.groups
        weight = module.weight
    if not isinstance(weight, torch.Tensor):
        raise TypeError(
            f"weight must be a tensor or a conv module such as nn.Conv2d, got "
            f"{type(weight).__name__}."
        )
    if not isinstance(transposed, bool):
        raise TypeError(f"transposed must be a bool, got {type(transposed).__name__}.")
    weight = weight.detach()
    if not transposed:
        return weight
    in_ch = weight.shape[0]
    check_positive_int(groups, "groups")
    if in_ch % groups:
        raise ValueError(
            f"groups={groups} does not divide the {in_ch} input channels of this transposed "
            f"conv weight {tuple(weight.shape)}."
        )
    per_group = weight.unflatten(0, (groups, in_ch // groups))  # (g, I/g, O/g, *k)
    return per_group.transpose(1, 2).flatten(0, 1)  # (O, I/g, *k)


def make_filter_grid(
    weight: torch.Tensor | nn.Module,
    *,
    channel: FilterChannel = "auto",
    max_filters: int | None = 64,
    nrow: int | None = None,
    normalize: Normalize | None = None,
    padding: int = 1,
    upscale: int | None = None,
    transposed: bool = False,
    groups: int = 1,
    min_tile: int = MIN_FILTER_TILE,
) -> torch.Tensor:
    """Render a conv layer's filters as one uint8 image, one tile (or row) per output channel.

    How a filter's input channels become a tile (``channel``):

    - ``"auto"`` (default): ``"rgb"`` when the filter has 3 input channels (a first layer),
      else ``"mean"``.
    - ``"rgb"``: the 3 input channels as an RGB tile, normalised together.
    - ``"mean"``: the mean over input channels, in grayscale. This is the documented default for
      deep layers: it shows the spatial pattern the filter responds to on average, rather than
      one arbitrary input channel as the original article did.
    - ``"strongest"``: for each filter, the input channel with the largest L2 norm.
    - an int: that input channel, for every filter.

    By conv type:

    - 2-d ``(O, I, kh, kw)``: a grid of ``kh x kw`` tiles. A 1x1 kernel has no shape to show
      (one flat pixel per filter), so it renders as the ``(out, in)`` weight matrix instead, a
      heat map of the first ``max_filters`` inputs of each filter, as for 1-d kernels of size 1.
    - 1-d ``(O, I, k)``: an ``(out, k)`` heat map, one row per filter, its input channels
      reduced by ``channel`` as above; kernels of size 1 have no shape to show, so they render
      as an ``(out, in)`` heat map of their weights instead (``channel`` is then unused). Rows
      are scaled one by one (``normalize="tile"``, the default) or together (``"grid"``); each
      cell is ``upscale`` pixels square. ``nrow`` is unused.
    - 3-d ``(O, I, kt, kh, kw)``: the middle temporal slice ``[:, :, kt // 2]``, as 2-d.
    - transposed convs: their weight is ``(I, O / groups, *k)``, the other way round from a
      conv's. The filters shown are the *output* channels, as for a conv: filter ``o`` holds the
      weights from every input channel of its group to output ``o``. A module says it is
      transposed; for a raw tensor pass ``transposed=True`` (and ``groups``), or regroup it
      first with :func:`to_output_filters`.

    Args:
        weight: a conv weight as above, or the conv module itself (any of ``nn.Conv1d/2d/3d``,
            ``nn.ConvTranspose1d/2d/3d`` or a subclass). Not modified.
        max_filters: first filters (output channels) shown; ``None`` shows all.
        normalize: as for :func:`make_image_grid`; default ``"tile"``, except ``"grid"`` for
            2-d 1x1 kernels: their tiles are single pixels, so a per-tile scale would make every
            one black, while one shared scale shows each filter's weight against the others.
        nrow, padding: as for :func:`make_image_grid`.
        upscale: nearest-neighbour factor; default makes tiles (1-d: rows) >= ``min_tile`` px.
        min_tile: the smallest tile (1-d: row) width the default ``upscale`` gives, in pixels.
        transposed: the raw ``weight`` tensor is a transposed conv's ``(I, O / groups, *k)``.
            Read from the module when a module is given.
        groups: the transposed conv's ``groups`` (only used with ``transposed``; read from the
            module when a module is given).

    Returns:
        ``(3, H, W)`` for RGB tiles, else ``(1, H, W)``; uint8 on the weight's device.

    Raises:
        TypeError: ``weight`` is neither a tensor nor a conv module.
        ValueError: a weight that is not 3-, 4- or 5-D, an unmaterialised lazy conv, or a bad
            option.

    Example::

        >>> import torch
        >>> make_filter_grid(torch.nn.Conv2d(3, 64, 7)).shape
        torch.Size([3, 289, 289])
        >>> make_filter_grid(torch.nn.Conv1d(8, 4, 5)).shape  # 4 rows of 5 cells, 7 px each
        torch.Size([1, 30, 37])
    """
    if isinstance(weight, nn.Module) and not isinstance(weight, CONV_TYPES):
        raise TypeError(
            f"weight must be a tensor or a conv module (nn.Conv1d/2d/3d, "
            f"nn.ConvTranspose1d/2d/3d), got {type(weight).__name__}."
        )
    raw = weight.weight if isinstance(weight, nn.Module) else weight
    if isinstance(raw, nn.parameter.UninitializedParameter):
        raise ValueError(
            "this lazy conv's weight is not materialised yet; run one forward pass first."
        )
    if isinstance(raw, torch.Tensor) and raw.dim() not in (3, 4, 5):
        raise ValueError(
            "weight must be a conv weight: (out, in, k) for 1-d, (out, in, kh, kw) for 2-d or "
            f"(out, in, kt, kh, kw) for 3-d convs, got shape {tuple(raw.shape)}."
        )
    check_positive_int(max_filters, "max_filters", allow_none=True)
    w = to_output_filters(weight, transposed=transposed, groups=groups)
    if w.dim() == 5:
        w = w[:, :, w.shape[2] // 2]  # the middle temporal slice
    if max_filters is not None:
        w = w[:max_filters]
    if w.dim() == 4 and w.shape[-2:] == (1, 1):
        w = w[:, :, :, 0]  # a 1x1 kernel: its (out, in) weight matrix
    if w.dim() == 3:
        if w.shape[2] == 1 and max_filters is not None:
            w = w[:, :max_filters]
        return _filter_rows(
            w, channel, normalize=normalize, padding=padding, upscale=upscale, min_tile=min_tile
        )
    tiles = _filter_tiles(w.float(), channel)
    if normalize is None:
        normalize = "tile"
    if upscale is None:
        upscale = max(1, math.ceil(min_tile / max(tiles.shape[-2:])))
    return make_image_grid(tiles, nrow=nrow, normalize=normalize, padding=padding, upscale=upscale)


def _filter_rows(
    w: torch.Tensor,
    channel: FilterChannel,
    *,
    normalize: Normalize | None,
    padding: int,
    upscale: int | None,
    min_tile: int = MIN_FILTER_TILE,
) -> torch.Tensor:
    """1-d filters ``(O, I, k)`` as a heat map: ``(out, k)``, or ``(out, in)`` when k == 1."""
    if w.shape[0] == 0 or w.shape[1] == 0 or w.shape[2] == 0:
        raise ValueError(f"cannot make a grid of empty tiles {tuple(w.shape)}.")
    _check_real(w)
    if w.shape[2] == 1:
        if channel not in ("auto", "mean", "strongest", "rgb") and not isinstance(channel, int):
            _filter_tiles(w.float(), channel)  # the usual message for a bad value
        rows = w[:, :, 0].float().unsqueeze(1)  # (O, 1, I)
    else:
        rows = _filter_tiles(w.float(), channel)  # (O, 1 or 3, k)
    cell = _check_upscale(
        upscale if upscale is not None else max(1, math.ceil(min_tile / rows.shape[2]))
    )
    image = _rows_image(rows, normalize=normalize or "tile", row_height=cell, col_width=cell)
    return _pad(image, padding)


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
        cell = ROW_HEIGHT * _check_upscale(upscale)
        image = _rows_image(
            maps.reshape(1, 1, -1), normalize="tile", row_height=cell, col_width=cell
        )
        if cmap is not None:
            image = _colormap_lut(cmap).to(image.device)[image[0].long()].permute(2, 0, 1)
        return _pad(image, padding)
    if maps.dim() == 2:
        if normalize not in ("tile", "grid"):
            raise ValueError(f"normalize must be 'tile' or 'grid', got {normalize!r}.")
        up = _check_upscale(upscale)
        image = _rows_image(
            maps.unsqueeze(1), normalize=normalize, row_height=ROW_HEIGHT * up, col_width=up
        )
        if cmap is not None:
            image = _colormap_lut(cmap).to(image.device)[image[0].long()].permute(2, 0, 1)
        return _pad(image, padding)
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
