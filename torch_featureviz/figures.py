"""Save filter and feature-map grids as image files with matplotlib.

One file per layer, titled with the layer name and shape, plus an overview of many layers.
Figures are built with ``matplotlib.figure.Figure`` (not ``pyplot``), so nothing is registered
globally and nothing stays open after saving; this works headless with no backend set.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torch_featureviz._validation import check_writable_dir
from torch_featureviz.discovery import find_conv_layers
from torch_featureviz.render import FilterChannel, make_feature_grid, make_filter_grid
from torch_featureviz.tensorboard import layer_tag

__all__ = ["save_feature_figures", "save_filter_figures", "save_grid_figure", "save_overview"]

_FORMATS = (".png", ".pdf", ".svg", ".jpg", ".jpeg")
_DPI = 100
_MAX_INCHES = 14.0


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _show(ax: Any, grid: torch.Tensor, title: str | None = None) -> None:
    pixels = grid.detach().cpu().permute(1, 2, 0).numpy()
    if pixels.shape[2] == 1:
        ax.imshow(pixels[:, :, 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(pixels, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)


def _check_suffix(path: Path) -> None:
    if path.suffix.lower() not in _FORMATS:
        raise ValueError(f"unsupported figure format {path.suffix!r}; use one of {_FORMATS}.")


def save_grid_figure(
    grid: torch.Tensor, path: str | os.PathLike[str], *, title: str | None = None
) -> Path:
    """Save one ``(C, H, W)`` uint8 grid as a titled figure, at about one pixel per grid pixel.

    Returns:
        The path written.
    """
    path = Path(path)
    _check_suffix(path)
    check_writable_dir(path.parent)
    h, w = grid.shape[-2:]
    scale = min(1.0, _MAX_INCHES * _DPI / max(h, w))
    width = max(w * scale / _DPI, 2.5)
    height = h * scale / _DPI + (0.4 if title else 0.1)
    fig = _new_figure(width, height)
    ax = fig.add_axes((0.0, 0.0, 1.0, (h * scale / _DPI) / height))
    _show(ax, grid)
    if title:
        fig.suptitle(title, fontsize=9, y=1.0 - 0.05 / height, va="top")
    fig.savefig(path, dpi=_DPI)
    fig.clear()
    return path


def save_overview(
    grids: Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
    max_panels: int = 64,
) -> Path:
    """Save many grids as one figure of titled panels (the first ``max_panels`` of them)."""
    path = Path(path)
    _check_suffix(path)
    check_writable_dir(path.parent)
    items = list(grids.items())
    shown = items[:max_panels]
    cols = min(len(shown), 8)
    rows = math.ceil(len(shown) / cols)
    fig = _new_figure(2.2 * cols, 2.4 * rows + (0.5 if title else 0))
    for i, (name, grid) in enumerate(shown):
        _show(fig.add_subplot(rows, cols, i + 1), grid, name)
    if title:
        more = f" (first {len(shown)} of {len(items)})" if len(items) > len(shown) else ""
        fig.suptitle(title + more, fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    fig.clear()
    return path


def _unique_stem(name: str, used: set[str]) -> str:
    stem, k = layer_tag(name), 2
    base = stem
    while stem in used:
        stem, k = f"{base}_{k}", k + 1
    used.add(stem)
    return stem


def save_filter_figures(
    model_or_layers: nn.Module | Mapping[str, nn.Conv2d | torch.Tensor],
    out_dir: str | os.PathLike[str],
    *,
    layers: Any = None,
    channel: FilterChannel = "auto",
    max_filters: int | None = 64,
    fmt: str = "png",
) -> list[Path]:
    """Save one filter figure per conv layer plus ``filters_overview.<fmt>`` into ``out_dir``.

    Returns:
        The paths written, the overview last.
    """
    if isinstance(model_or_layers, nn.Module):
        weights: Mapping[str, Any] = find_conv_layers(model_or_layers, include=layers)
    else:
        weights = model_or_layers
    out = Path(out_dir)
    check_writable_dir(out)
    paths: list[Path] = []
    grids: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for name, w in weights.items():
        tensor = w.weight if isinstance(w, nn.Conv2d) else w
        grid = make_filter_grid(tensor, channel=channel, max_filters=max_filters)
        grids[name] = grid
        title = f"{name}: filters {tuple(tensor.shape)}"
        paths.append(save_grid_figure(grid, out / f"filters_{_unique_stem(name, used)}.{fmt}", title=title))
    paths.append(save_overview(grids, out / f"filters_overview.{fmt}", title="Filters"))
    return paths


def save_feature_figures(
    maps: Mapping[str, torch.Tensor],
    out_dir: str | os.PathLike[str],
    *,
    mode: str = "hook",
    cmap: str | None = None,
    fmt: str = "png",
    layers: Sequence[str] | None = None,
) -> list[Path]:
    """Save one feature-map figure per layer plus ``maps_<mode>_overview.<fmt>`` into ``out_dir``.

    Args:
        maps: ``{layer: (C, H, W)}`` as returned by hook or chain mode.
        mode: ``"hook"`` or ``"chain"``; goes into file names and titles.
        layers: only these names (default: all).

    Returns:
        The paths written, the overview last.
    """
    if not maps:
        raise ValueError("maps is empty: run a forward pass inside the FeatureCapture first.")
    out = Path(out_dir)
    check_writable_dir(out)
    names = list(maps) if layers is None else list(layers)
    paths: list[Path] = []
    grids: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for name in names:
        m = maps[name]
        grid = make_feature_grid(m, cmap=cmap)
        grids[name] = grid
        title = f"{name}: {mode} maps {tuple(m.shape)}"
        stem = _unique_stem(name, used)
        paths.append(save_grid_figure(grid, out / f"maps_{mode}_{stem}.{fmt}", title=title))
    paths.append(
        save_overview(grids, out / f"maps_{mode}_overview.{fmt}", title=f"Feature maps ({mode} mode)")
    )
    return paths
