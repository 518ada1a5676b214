"""Overlays: a feature map upsampled and colour-mapped over the input image, as uint8."""

from __future__ import annotations

import torch
from torch.nn import functional

from torch_featureviz._validation import check_choice, check_cmap, check_float
from torch_featureviz.render.grids import _colormap_lut, to_display_image

__all__ = ["overlay_map"]

_MODES = ("bilinear", "nearest")


def _scaled(m: torch.Tensor, scale: float | tuple[float, float] | None) -> torch.Tensor:
    """``m`` mapped to ``[0, 1]``: by its own range (``None``), by ``[0, scale]`` or by
    ``[low, high]``. NaN counts as the bottom of the range, +-Inf as its ends."""
    if scale is None:
        finite = m[torch.isfinite(m)]
        low = float(finite.min()) if finite.numel() else 0.0
        high = float(finite.max()) if finite.numel() else 1.0
    elif isinstance(scale, tuple):
        low, high = scale
    else:
        low, high = 0.0, scale
    span = high - low
    m = torch.nan_to_num(m, nan=low, posinf=high, neginf=low)
    if span <= 0:  # a constant map (or scale): no division by zero, the bottom colour
        return torch.zeros_like(m)
    return ((m - low) / span).clamp(0.0, 1.0)


def _check_scale(scale: object) -> float | tuple[float, float] | None:
    if scale is None:
        return None
    if isinstance(scale, tuple | list):
        if len(scale) != 2:
            raise ValueError(f"scale as a range must be (low, high), got {scale!r}.")
        low = check_float(scale[0], "scale[0]")
        high = check_float(scale[1], "scale[1]")
        if high <= low:
            raise ValueError(f"scale must have low < high, got {tuple(scale)}.")
        return (low, high)
    return check_float(scale, "scale", minimum=0.0, exclusive=True)


def overlay_map(
    image: torch.Tensor,
    map: torch.Tensor,
    alpha: float = 0.5,
    cmap: str = "jet",
    scale: float | tuple[float, float] | None = None,
    *,
    mode: str = "bilinear",
) -> torch.Tensor:
    """Blend one channel's map, upsampled to the image and colour-mapped, over the image.

    Args:
        image: ``(C, H, W)`` (C in 1, 3) float input as the model saw it (min-max scaled for
            display) or a uint8 image (used as is); a batch of one is accepted.
        map: ``(h, w)`` or ``(1, h, w)`` activations of one channel, any float dtype.
        alpha: opacity of the map, 0 (image only) to 1 (map only).
        cmap: a matplotlib colormap name.
        scale: how values become colours. ``None``: the map's own min-max (each frame on its
            own). A float ``s``: ``[0, s]`` (for example a running high percentile of the
            channel) so frames of a time-lapse are comparable and a fading channel fades. A
            ``(low, high)`` pair: that range. Values outside are clipped.
        mode: ``"bilinear"`` (conv maps: smooth, as the field overlaps) or ``"nearest"`` (each
            map location a block).

    Returns:
        A ``(3, H, W)`` uint8 tensor on the CPU. Inputs are not modified.

    Raises:
        TypeError, ValueError: shapes, dtypes or options that do not fit.

    Example::

        >>> import torch
        >>> out = overlay_map(torch.rand(3, 32, 32), torch.rand(4, 4), scale=1.0)
        >>> out.shape, out.dtype
        (torch.Size([3, 32, 32]), torch.uint8)
    """
    if not isinstance(image, torch.Tensor) or not isinstance(map, torch.Tensor):
        raise TypeError(
            f"image and map must be tensors, got {type(image).__name__} and {type(map).__name__}."
        )
    alpha = check_float(alpha, "alpha", minimum=0.0, maximum=1.0)
    name = check_cmap(cmap)
    if name is None:
        raise TypeError("cmap must be a matplotlib colormap name for an overlay, got None.")
    mode = check_choice(mode, "mode", _MODES)
    fixed = _check_scale(scale)
    if image.dim() == 4 and image.shape[0] == 1:
        image = image[0]
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"image must be (C, H, W) with C in (1, 3), got {tuple(image.shape)}.")
    if map.dim() == 3 and map.shape[0] == 1:
        map = map[0]
    if map.dim() != 2 or map.numel() == 0:
        raise ValueError(
            f"map must be one channel's (h, w) map, got shape {tuple(map.shape)}; pick a "
            "channel with maps[layer][c]."
        )
    if map.is_complex() or map.dtype == torch.bool:
        raise TypeError(f"map must be a real tensor, got dtype {map.dtype}.")
    base = image.detach().cpu()
    base = base if base.dtype == torch.uint8 else to_display_image(base)
    if base.shape[0] == 1:
        base = base.expand(3, -1, -1)
    h, w = base.shape[1:]
    values = _scaled(map.detach().cpu().float(), fixed)
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    up = functional.interpolate(values[None, None], size=(h, w), mode=mode, **kwargs)[0, 0]
    lut = _colormap_lut(name)  # (256, 3) uint8
    colour = lut[(up.clamp(0, 1) * 255).round().long()].permute(2, 0, 1).float()
    out = (1.0 - alpha) * base.float() + alpha * colour
    return out.round().clamp(0, 255).to(torch.uint8)
