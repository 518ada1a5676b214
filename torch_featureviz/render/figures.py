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
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from torch_featureviz._validation import check_cmap, check_writable_dir
from torch_featureviz.capture.discovery import conv_weights
from torch_featureviz.naming import unique_stems, unique_tags
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

_FORMATS = (".png", ".pdf", ".svg", ".jpg", ".jpeg")
_DPI = 100
_MAX_INCHES = 14.0

#: Called after each layer is saved: ``progress(layer key, layers done, layers in all)``.
Progress = Callable[[str, int, int], None]


class GridWriter(Protocol):
    """Where grids and scalars go besides files: :class:`~torch_featureviz.TensorBoardWriter`
    has these methods. A ``prefix`` attribute, if the writer has one, heads every tag."""

    def log_grid(self, tag: str, grid: torch.Tensor, step: int) -> None: ...

    def log_scalar(self, tag: str, value: float, step: int) -> None: ...


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


def _check_targets(
    out_dir: str | os.PathLike[str] | None, writer: GridWriter | None, fmt: str
) -> Path | None:
    """Check the targets without touching the disk: the directory is made only once every grid
    has rendered, so a bad option leaves nothing behind."""
    if not isinstance(fmt, str):
        raise TypeError(f"fmt must be a str such as 'png', got {type(fmt).__name__}.")
    _check_suffix(Path(f"figure.{fmt}"))
    if writer is not None and not callable(getattr(writer, "log_grid", None)):
        raise TypeError(
            f"writer must have a log_grid(tag, grid, step) method (a TensorBoardWriter), got "
            f"{type(writer).__name__}."
        )
    if out_dir is None:
        if writer is None:
            raise ValueError("give out_dir, writer or both: there is nowhere to save the grids.")
        return None
    if not isinstance(out_dir, (str, os.PathLike)):
        raise TypeError(f"out_dir must be a path or None, got {type(out_dir).__name__}.")
    if not os.fspath(out_dir):
        raise ValueError("out_dir must not be empty; give a directory such as 'figures'.")
    return Path(out_dir)


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
    """
    weights: Mapping[str, Any] = conv_weights(model_or_layers, layers)
    out = _check_targets(out_dir, writer, fmt)
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
    out = _check_targets(out_dir, writer, fmt)
    grids = {name: make_feature_grid(maps[name], cmap=cmap) for name in names}
    titles = {name: f"{name}: {mode} maps {tuple(maps[name].shape)}" for name in names}
    return _save_layers(
        grids, titles, out, stem=f"maps_{mode}", overview=f"Feature maps ({mode} mode)",
        fmt=fmt, writer=writer, tag=("feature_maps", mode), step=step, progress=progress,
    )


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
    cmap = check_cmap(cmap)
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


def map_similarities(
    chain_maps: Mapping[str, torch.Tensor], hook_maps: Mapping[str, torch.Tensor]
) -> dict[str, float]:
    """:func:`map_similarity` of every layer in both mappings, in ``chain_maps``' order."""
    for label, maps in (("chain_maps", chain_maps), ("hook_maps", hook_maps)):
        if not isinstance(maps, Mapping):
            kind = type(maps).__name__
            raise TypeError(f"{label} must be a {{name: tensor}} mapping, got {kind}.")
    return {n: map_similarity(chain_maps[n], hook_maps[n]) for n in chain_maps if n in hook_maps}


def save_comparison_figures(
    chain_maps: Mapping[str, torch.Tensor],
    hook_maps: Mapping[str, torch.Tensor],
    out_dir: str | os.PathLike[str] | None,
    *,
    similarity: Mapping[str, float] | None = None,
    cmap: str | None = None,
    fmt: str = "png",
    writer: GridWriter | None = None,
    step: int = 0,
    progress: Progress | None = None,
) -> list[Path]:
    """Chain mode against hook mode for every layer in both: ``compare_<layer>.<fmt>`` each
    (:func:`save_comparison_figure`), then ``similarity.<fmt>`` (:func:`save_similarity_figure`).

    Args:
        chain_maps, hook_maps: ``{layer: (C, H, W)}`` from the two modes.
        out_dir: the directory for the figures; ``None`` writes no files (then give ``writer``).
        similarity: per-layer values from :func:`map_similarities` (computed when omitted).
        cmap: a matplotlib colormap name; ``None`` is grayscale.
        writer: also log each finite similarity as the scalar
            ``chain_vs_hook/cosine_similarity``, its step the layer's index.
        progress: called after each layer (see :data:`Progress`).

    Returns:
        The paths written, the similarity chart last (empty without ``out_dir``).

    Raises:
        TypeError, ValueError: a bad argument, no layer in both mappings, or neither ``out_dir``
            nor ``writer``.
        OSError: ``out_dir`` cannot be written.
    """
    values = dict(map_similarities(chain_maps, hook_maps) if similarity is None else similarity)
    if not values:
        raise ValueError("no layer is in both chain_maps and hook_maps: nothing to compare.")
    cmap = check_cmap(cmap)
    out = _check_targets(out_dir, writer, fmt)
    stems = unique_stems(values)
    prefix = getattr(writer, "prefix", None)
    tag = "chain_vs_hook/cosine_similarity"
    tag = f"{prefix}/{tag}" if prefix else tag
    paths: list[Path] = []
    if out is not None:
        check_writable_dir(out)
    for done, (name, value) in enumerate(values.items(), start=1):
        if out is not None:
            paths.append(
                save_comparison_figure(
                    name, chain_maps[name], hook_maps[name], out / f"compare_{stems[name]}.{fmt}",
                    similarity=value, cmap=cmap,
                )
            )
        if writer is not None and math.isfinite(value):
            writer.log_scalar(tag, value, step + done - 1)
        if progress is not None:
            progress(name, done, len(values))
    if out is not None:
        paths.append(save_similarity_figure(values, out / f"similarity.{fmt}"))
    return paths
