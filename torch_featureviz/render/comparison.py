"""Chain mode against hook mode: the cosine similarity of a layer's two maps, side-by-side
figures per layer and a bar chart of the similarity per layer.

Example::

    >>> import torch
    >>> m = torch.rand(2, 6, 6)
    >>> {name: round(s, 6) for name, s in map_similarities({"conv1": m}, {"conv1": m}).items()}
    {'conv1': 1.0}
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from torch_featureviz._validation import check_cmap, check_writable_dir
from torch_featureviz.naming import unique_stems
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
from torch_featureviz.render.grids import make_feature_grid

__all__ = [
    "map_similarities",
    "map_similarity",
    "save_comparison_figure",
    "save_comparison_figures",
    "save_similarity_figure",
]


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

    Example::

        >>> import tempfile, torch
        >>> m = torch.rand(4, 8, 8)
        >>> path = Path(tempfile.mkdtemp()) / "compare_conv1.png"
        >>> save_comparison_figure("conv1", m, m, path, similarity=map_similarity(m, m)).name
        'compare_conv1.png'
    """
    path = Path(path)
    check_suffix(path)
    cmap = check_cmap(cmap)
    check_writable_dir(path.parent)
    grids = [make_feature_grid(chain_map, cmap=cmap), make_feature_grid(hook_map, cmap=cmap)]
    height = max(g.shape[1] for g in grids)
    widths = [g.shape[2] for g in grids]
    scale = min(1.0, MAX_INCHES * DPI / max(sum(widths), height))
    fig_h = height * scale / DPI + 0.8
    fig = new_figure(max(sum(widths) * scale / DPI + 0.3, 4.0), fig_h)
    axes = fig.subplots(1, 2, gridspec_kw={"width_ratios": widths})
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1.0 - 0.7 / fig_h, wspace=0.04)
    panels = zip(axes, grids, ("chain", "hook"), (chain_map, hook_map), strict=True)
    for ax, grid, mode, m in panels:
        show_grid(ax, grid, f"{mode} {tuple(m.shape)}")
    title = name if similarity is None else f"{name}: cosine similarity {similarity:.3f}"
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=DPI)
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

    Example::

        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "similarity.png"
        >>> save_similarity_figure({"conv1": 0.98, "conv2": 0.4, "conv3": float("nan")}, path).name
        'similarity.png'
    """
    if not similarity:
        raise ValueError("similarity is empty: compare at least one layer.")
    path = Path(path)
    check_suffix(path)
    check_writable_dir(path.parent)
    names = list(similarity)
    values = [float(similarity[n]) for n in names]
    fig = new_figure(min(max(4.0, 0.35 * len(names) + 1.5), 24.0), 4.5)
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
    fig.savefig(path, dpi=DPI)
    fig.clear()
    return path


def map_similarities(
    chain_maps: Mapping[str, torch.Tensor], hook_maps: Mapping[str, torch.Tensor]
) -> dict[str, float]:
    """:func:`map_similarity` of every layer in both mappings, in ``chain_maps``' order.

    Example::

        >>> import torch
        >>> m = torch.rand(2, 6, 6)
        >>> {name: round(s, 6) for name, s in map_similarities({"c": m, "x": m}, {"c": m}).items()}
        {'c': 1.0}
    """
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

    Example::

        >>> import tempfile, torch
        >>> chain = {"conv1": torch.rand(4, 16, 16), "conv2": torch.rand(2, 8, 8)}
        >>> hook = {"conv1": torch.rand(4, 8, 8), "conv2": torch.rand(2, 4, 4)}
        >>> [p.name for p in save_comparison_figures(chain, hook, tempfile.mkdtemp())]
        ['compare_conv1.png', 'compare_conv2.png', 'similarity.png']
    """
    values = dict(map_similarities(chain_maps, hook_maps) if similarity is None else similarity)
    if not values:
        raise ValueError("no layer is in both chain_maps and hook_maps: nothing to compare.")
    cmap = check_cmap(cmap)
    out = check_targets(out_dir, writer, fmt)
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
