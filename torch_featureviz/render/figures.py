"""Save filter and feature-map grids as image files with matplotlib, and/or to a writer.

One file per layer, titled with the layer name and shape, plus an overview of many layers.
Figures are built with ``matplotlib.figure.Figure`` (not ``pyplot``), so nothing is registered
globally and nothing stays open after saving; this works headless with no backend set.

:func:`save_filter_figures`, :func:`save_feature_figures` and :func:`save_comparison_figures`
do the per-layer work of a whole model: they render every grid first (so a bad option fails
before any file is written), then save each layer's figure (file stems from
:func:`~torch_featureviz.naming.unique_stems`), log it to an optional ``writer`` (any object
with ``log_grid(tag, grid, step)`` and ``log_scalar(tag, value, step)``, such as
:class:`~torch_featureviz.TensorBoardWriter`; tags from
:func:`~torch_featureviz.naming.unique_tags`), call ``progress(name, done, total)`` after each
layer, and save the overview last.
"""


from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torch_featureviz._validation import check_cmap, check_writable_dir
from torch_featureviz.capture.discovery import conv_weights
from torch_featureviz.naming import unique_stems, unique_tags
from torch_featureviz.render.canvas import (
    DPI,
    MAX_INCHES,
    GridWriter,
    Progress,
    check_suffix,
    check_targets,
    new_figure,
    show_grid,
)
from torch_featureviz.render.comparison import (
    map_similarities,
    map_similarity,
    save_comparison_figure,
    save_comparison_figures,
    save_similarity_figure,
)
from torch_featureviz.render.grids import FilterChannel, make_feature_grid, make_filter_grid

__all__ = [
    "GridWriter",
    "Progress",
    "map_similarities",
    "map_similarity",
    "save_comparison_figure",
    "save_comparison_figures",
    "save_feature_figures",
    "save_filter_figures",
    "save_grid_figure",
    "save_overview",
    "save_similarity_figure",
]

def save_grid_figure(
    grid: torch.Tensor, path: str | os.PathLike[str], *, title: str | None = None
) -> Path:
    """Save one ``(C, H, W)`` uint8 grid as a titled figure, at about one pixel per grid pixel.

    Returns:
        The path written.

    Example::

        >>> import tempfile, torch
        >>> grid = make_filter_grid(torch.nn.Conv2d(3, 4, 3))
        >>> save_grid_figure(grid, Path(tempfile.mkdtemp()) / "conv.png", title="conv").name
        'conv.png'
    """
    path = Path(path)
    check_suffix(path)
    check_writable_dir(path.parent)
    h, w = grid.shape[-2:]
    scale = min(1.0, MAX_INCHES * DPI / max(h, w))
    width = max(w * scale / DPI, 2.5)
    height = h * scale / DPI + (0.4 if title else 0.1)
    fig = new_figure(width, height)
    ax = fig.add_axes((0.0, 0.0, 1.0, (h * scale / DPI) / height))
    show_grid(ax, grid)
    if title:
        fig.suptitle(title, fontsize=9, y=1.0 - 0.05 / height, va="top")
    fig.savefig(path, dpi=DPI)
    fig.clear()
    return path


def save_overview(
    grids: Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
    max_panels: int = 64,
) -> Path:
    """Save many grids as one figure of titled panels (the first ``max_panels`` of them).

    Example::

        >>> import tempfile, torch
        >>> grids = {"maps": make_feature_grid(torch.rand(4, 6, 6)),
        ...          "filters": make_filter_grid(torch.nn.Conv2d(3, 2, 3))}
        >>> save_overview(grids, Path(tempfile.mkdtemp()) / "all.png", title="maps").name
        'all.png'
    """
    path = Path(path)
    check_suffix(path)
    check_writable_dir(path.parent)
    items = list(grids.items())
    shown = items[:max_panels]
    cols = min(len(shown), 8)
    rows = math.ceil(len(shown) / cols)
    fig = new_figure(2.2 * cols, 2.4 * rows + (0.5 if title else 0))
    for i, (name, grid) in enumerate(shown):
        show_grid(fig.add_subplot(rows, cols, i + 1), grid, name)
    if title:
        more = f" (first {len(shown)} of {len(items)})" if len(items) > len(shown) else ""
        fig.suptitle(title + more, fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    fig.clear()
    return path


def _save_layers(
    grids: Mapping[str, torch.Tensor],
    titles: Mapping[str, str],
    out: Path | None,
    *,
    stem: str,
    overview: str,
    fmt: str,
    writer: GridWriter | None,
    tag: tuple[str, ...],
    step: int,
    progress: Progress | None,
) -> list[Path]:
    """The one save loop: a figure and/or a logged grid per layer, then the overview."""
    names = list(grids)
    stems = unique_stems(names)
    tags = unique_tags(tag[0], names, *tag[1:], prefix=getattr(writer, "prefix", None))
    paths: list[Path] = []
    if out is not None:
        check_writable_dir(out)
    for done, (name, grid_tag) in enumerate(zip(names, tags, strict=True), start=1):
        if out is not None:
            path = out / f"{stem}_{stems[name]}.{fmt}"
            paths.append(save_grid_figure(grids[name], path, title=titles[name]))
        if writer is not None:
            writer.log_grid(grid_tag, grids[name], step)
        if progress is not None:
            progress(name, done, len(names))
    if out is not None and grids:
        paths.append(save_overview(grids, out / f"{stem}_overview.{fmt}", title=overview))
    return paths


def _weight(name: str, layer: Any) -> torch.Tensor:
    weight = layer.weight if isinstance(layer, nn.Module) else layer
    if not isinstance(weight, torch.Tensor):
        raise TypeError(
            f"layer {name!r} must be a conv module or a weight tensor, got {type(layer).__name__}."
        )
    return weight


def save_filter_figures(
    model_or_layers: nn.Module | Mapping[str, nn.Module | torch.Tensor],
    out_dir: str | os.PathLike[str] | None,
    *,
    layers: Any = None,
    channel: FilterChannel = "auto",
    max_filters: int | None = 64,
    fmt: str = "png",
    writer: GridWriter | None = None,
    step: int = 0,
    progress: Progress | None = None,
) -> list[Path]:
    """Save one filter figure per conv layer plus ``filters_overview.<fmt>`` into ``out_dir``.

    Args:
        model_or_layers: a model (its convs are found, filtered by ``layers`` globs) or a
            mapping of layer name to conv module or weight tensor.
        out_dir: the directory for ``filters_<layer>.<fmt>`` files; ``None`` writes no files
            (then give ``writer``).
        channel, max_filters: how filters become tiles (see
            :func:`~torch_featureviz.make_filter_grid`); checked on every layer before any
            file is written.
        fmt: ``png``, ``pdf``, ``svg``, ``jpg`` or ``jpeg``.
        writer: also log each grid under ``filters/<layer>`` at ``step`` (see the module
            docstring).
        progress: called after each layer (see :data:`Progress`).

    Returns:
        The paths written, the overview last (empty without ``out_dir``).

    Raises:
        TypeError, ValueError: a bad argument, a ``channel`` a layer cannot show, or neither
            ``out_dir`` nor ``writer``.
        OSError: ``out_dir`` cannot be written.

    Example::

        >>> import tempfile, torch
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(4, 2, 1))
        >>> [p.name for p in save_filter_figures(model, tempfile.mkdtemp())]
        ['filters_0.png', 'filters_1.png', 'filters_overview.png']
    """
    weights: Mapping[str, Any] = conv_weights(model_or_layers, layers)
    out = check_targets(out_dir, writer, fmt)
    tensors = {name: _weight(name, w) for name, w in weights.items()}
    grids = {
        name: make_filter_grid(t, channel=channel, max_filters=max_filters)
        for name, t in tensors.items()
    }
    titles = {name: f"{name}: filters {tuple(t.shape)}" for name, t in tensors.items()}
    return _save_layers(
        grids, titles, out, stem="filters", overview="Filters", fmt=fmt, writer=writer,
        tag=("filters",), step=step, progress=progress,
    )


def save_feature_figures(
    maps: Mapping[str, torch.Tensor],
    out_dir: str | os.PathLike[str] | None,
    *,
    mode: str = "hook",
    cmap: str | None = None,
    fmt: str = "png",
    layers: Sequence[str] | None = None,
    writer: GridWriter | None = None,
    step: int = 0,
    progress: Progress | None = None,
) -> list[Path]:
    """Save one feature-map figure per layer plus ``maps_<mode>_overview.<fmt>`` into ``out_dir``.

    Args:
        maps: ``{layer: (C, H, W)}`` as returned by hook or chain mode.
        out_dir: the directory for ``maps_<mode>_<layer>.<fmt>`` files; ``None`` writes no
            files (then give ``writer``).
        mode: ``"hook"``, ``"chain"``, ``"probe"``...; goes into file names, titles and tags.
        cmap: a matplotlib colormap name; ``None`` is grayscale.
        layers: only these names (default: all).
        writer: also log each grid under ``feature_maps/<mode>/<layer>`` at ``step``.
        progress: called after each layer (see :data:`Progress`).

    Returns:
        The paths written, the overview last (empty without ``out_dir``).

    Raises:
        TypeError, ValueError: a bad argument (an unknown ``cmap``, a name not in ``maps``),
            empty ``maps``, or neither ``out_dir`` nor ``writer``.
        OSError: ``out_dir`` cannot be written.

    Example::

        >>> import tempfile, torch
        >>> maps = {"conv1": torch.rand(4, 8, 8), "layer1.0.conv1": torch.rand(2, 4, 4)}
        >>> [p.name for p in save_feature_figures(maps, tempfile.mkdtemp(), cmap="viridis")]
        ['maps_hook_conv1.png', 'maps_hook_layer1.0.conv1.png', 'maps_hook_overview.png']
    """
    if not isinstance(maps, Mapping):
        raise TypeError(f"maps must be a {{name: tensor}} mapping, got {type(maps).__name__}.")
    if not maps:
        raise ValueError("maps is empty: run a forward pass inside the FeatureCapture first.")
    if not isinstance(mode, str) or not mode.isidentifier():
        raise ValueError(f"mode must be a simple word such as 'hook' or 'chain', got {mode!r}.")
    cmap = check_cmap(cmap)
    names = list(maps) if layers is None else list(layers)
    unknown = [n for n in names if n not in maps]
    if unknown:
        raise ValueError(f"layers {unknown[:3]} are not in maps; choose from {list(maps)[:5]}.")
    out = check_targets(out_dir, writer, fmt)
    grids = {name: make_feature_grid(maps[name], cmap=cmap) for name in names}
    titles = {name: f"{name}: {mode} maps {tuple(maps[name].shape)}" for name in names}
    return _save_layers(
        grids, titles, out, stem=f"maps_{mode}", overview=f"Feature maps ({mode} mode)",
        fmt=fmt, writer=writer, tag=("feature_maps", mode), step=step, progress=progress,
    )
