"""Conv weights to a filter grid: output filters of any conv type (transposed ones regrouped),
input channels reduced to one tile each, 1-d and 1x1 kernels as heat maps.

Example::

    >>> import torch
    >>> make_filter_grid(torch.nn.Conv2d(1, 4, 3), upscale=1).shape  # 2 x 2 tiles of 3 px
    torch.Size([1, 9, 9])
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd

from torch_featureviz._validation import check_positive_int
from torch_featureviz.capture.discovery import CONV_TYPES
from torch_featureviz.render.tiles import (
    Normalize,
    check_real,
    check_upscale,
    make_image_grid,
    pad_image,
    rows_image,
)

__all__ = ["MIN_FILTER_TILE", "FilterChannel", "make_filter_grid", "to_output_filters"]

FilterChannel = Literal["auto", "rgb", "mean", "strongest"] | int

#: Filters are upscaled (nearest) so each tile is at least this many pixels wide by default.
MIN_FILTER_TILE = 32


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
    check_real(w)
    if w.shape[2] == 1:
        if channel not in ("auto", "mean", "strongest", "rgb") and not isinstance(channel, int):
            _filter_tiles(w.float(), channel)  # the usual message for a bad value
        rows = w[:, :, 0].float().unsqueeze(1)  # (O, 1, I)
    else:
        rows = _filter_tiles(w.float(), channel)  # (O, 1 or 3, k)
    cell = check_upscale(
        upscale if upscale is not None else max(1, math.ceil(min_tile / rows.shape[2]))
    )
    image = rows_image(rows, normalize=normalize or "tile", row_height=cell, col_width=cell)
    return pad_image(image, padding)
