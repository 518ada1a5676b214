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

__all__ = [
    "map_similarity",
    "save_comparison_figure",
    "save_feature_figures",
    "save_filter_figures",
    "save_grid_figure",
    "save_overview",
    "save_similarity_figure",
]

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
        stem = _unique_stem(name, used)
        paths.append(save_grid_figure(grid, out / f"filters_{stem}.{fmt}", title=title))
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
        save_overview(
            grids, out / f"maps_{mode}_overview.{fmt}", title=f"Feature maps ({mode} mode)"
        )
    )
    return paths


# -- chain mode against hook mode ---------------------------------------------------------------


def map_similarity(chain_map: torch.Tensor, hook_map: torch.Tensor) -> float:
    """Cosine similarity between a chain-mode map and the real (hook-mode) map of one layer.

    The two maps rarely have the same shape: chain mode skips pooling, so on a ResNet its maps
    are twice the real resolution, and either side may keep fewer channels. Before comparing,
    both are cut to their common channels, and the larger one is average-pooled
    (``adaptive_avg_pool2d``, an area average) down to the smaller height and width. The
    flattened maps are then compared: 1 means the same pattern up to scale, 0 unrelated.

    Args:
        chain_map: ``(C, H, W)`` (or ``(H, W)``) map from chain mode.
        hook_map: ``(C', H', W')`` map of the same layer from hook mode.

    Returns:
        The cosine similarity in [-1, 1], or ``nan`` when either map is all zeros or not finite.

    Raises:
        TypeError: a map is not a tensor.
        ValueError: a map is not 2-D or 3-D, or is empty.

    Example::

        >>> m = torch.rand(4, 8, 8)
        >>> round(map_similarity(m.repeat_interleave(2, 1).repeat_interleave(2, 2), m), 4)
        1.0
    """
    pair = []
    for label, m in (("chain_map", chain_map), ("hook_map", hook_map)):
        if not isinstance(m, torch.Tensor):
            raise TypeError(f"{label} must be a (C, H, W) tensor, got {type(m).__name__}.")
        if m.dim() == 2:
            m = m.unsqueeze(0)
        if m.dim() != 3 or m.numel() == 0:
            raise ValueError(f"{label} must be a non-empty (C, H, W) tensor, got {tuple(m.shape)}.")
        pair.append(m.detach().float())
    a, b = pair
    c = min(a.shape[0], b.shape[0])
    size = (min(a.shape[1], b.shape[1]), min(a.shape[2], b.shape[2]))
    a = torch.nn.functional.adaptive_avg_pool2d(a[:c].to(b.device), size)
    b = torch.nn.functional.adaptive_avg_pool2d(b[:c], size)
    a, b = a.flatten().double(), b.flatten().double()
    na, nb = a.norm(), b.norm()
    if not (torch.isfinite(na) and torch.isfinite(nb)) or na == 0 or nb == 0:
        return math.nan
    return float((a @ b) / (na * nb))


def save_comparison_figure(
    name: str,
    chain_map: torch.Tensor,
    hook_map: torch.Tensor,
    path: str | os.PathLike[str],
    *,
    similarity: float | None = None,
    cmap: str | None = None,
) -> Path:
    """Save one layer's chain-mode and hook-mode maps side by side (chain left, hook right).

    Each panel is titled with its mode and map shape; the figure title names the layer and, if
    given, the cosine ``similarity`` (see :func:`map_similarity`).

    Args:
        name: the layer's qualified name.
        chain_map, hook_map: ``(C, H, W)`` maps of that layer.
        path: the file to write (``.png``, ``.pdf``, ``.svg``, ``.jpg``).
        similarity: shown in the title when given.
        cmap: a matplotlib colormap for both grids; ``None`` is grayscale.

    Returns:
        The path written.

    Raises:
        ValueError: unsupported file suffix, or maps that are not ``(C, H, W)``.
        OSError: the directory cannot be written.
    """
    path = Path(path)
    _check_suffix(path)
    check_writable_dir(path.parent)
    grids = [make_feature_grid(chain_map, cmap=cmap), make_feature_grid(hook_map, cmap=cmap)]
    height = max(g.shape[1] for g in grids)
    widths = [g.shape[2] for g in grids]
    scale = min(1.0, _MAX_INCHES * _DPI / max(sum(widths), height))
    fig_h = height * scale / _DPI + 0.8
    fig = _new_figure(max(sum(widths) * scale / _DPI + 0.3, 4.0), fig_h)
    axes = fig.subplots(1, 2, gridspec_kw={"width_ratios": widths})
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1.0 - 0.7 / fig_h, wspace=0.04)
    panels = zip(axes, grids, ("chain", "hook"), (chain_map, hook_map), strict=True)
    for ax, grid, mode, m in panels:
        _show(ax, grid, f"{mode} {tuple(m.shape)}")
    title = name if similarity is None else f"{name}: cosine similarity {similarity:.3f}"
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=_DPI)
    fig.clear()
    return path


def save_similarity_figure(
    similarity: Mapping[str, float],
    path: str | os.PathLike[str],
    *,
    title: str = "Chain mode against hook mode: cosine similarity per layer",
) -> Path:
    """Save a bar chart of per-layer similarity (as from :func:`map_similarity`), in layer order.

    Bars near 1 mark layers where the article's chain reproduces what the network computes;
    the chain usually departs after the first layer, where it skips BatchNorm, ReLU, pooling and
    residual additions. A ``nan`` (an all-zero map) is drawn as a grey ``x`` on the zero line.

    Returns:
        The path written.

    Raises:
        ValueError: ``similarity`` is empty, or unsupported file suffix.
        OSError: the directory cannot be written.
    """
    if not similarity:
        raise ValueError("similarity is empty: compare at least one layer.")
    path = Path(path)
    _check_suffix(path)
    check_writable_dir(path.parent)
    names = list(similarity)
    values = [float(similarity[n]) for n in names]
    fig = _new_figure(min(max(4.0, 0.35 * len(names) + 1.5), 24.0), 4.5)
    ax = fig.add_subplot(1, 1, 1)
    xs = list(range(len(names)))
    finite = [v if math.isfinite(v) else 0.0 for v in values]
    colors = ["tab:green" if v >= 0.9 else "tab:orange" if v >= 0.5 else "tab:red" for v in finite]
    ax.bar(xs, finite, color=colors)
    bad = [x for x, v in zip(xs, values, strict=True) if not math.isfinite(v)]
    if bad:
        ax.plot(bad, [0.0] * len(bad), "x", color="grey")
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.axhline(0.0, color="black", linewidth=0.5)
    ax.set_ylim(min(-0.05, min(finite) - 0.05), 1.05)
    ax.set_xticks(xs)
    ax.set_xticklabels(names, rotation=90, fontsize=7)
    ax.set_ylabel("cosine similarity")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    fig.clear()
    return path
