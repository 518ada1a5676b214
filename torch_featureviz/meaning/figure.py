"""The dataset-examples figure: one row per channel, its k examples side by side, labelled."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy
import torch

from torch_featureviz._validation import check_positive_int, check_writable_dir
from torch_featureviz.meaning.examples import Example, Examples
from torch_featureviz.render.grids import to_display_image

__all__ = ["examples_figure_image", "save_examples_figure"]

_FORMATS = (".png", ".pdf", ".svg", ".jpg", ".jpeg")
_CELL = 1.1  # inches per example


def _pixels(e: Example) -> Any:
    crop = e.crop.detach().float()
    if crop.shape[0] not in (1, 3):
        crop = crop.mean(0, keepdim=True)  # not an image: its mean over channels
    return to_display_image(crop).permute(1, 2, 0).numpy()


def _figure(
    examples: Examples, layer: str, channels: Iterable[int] | None, max_channels: int
) -> Any:
    if not isinstance(examples, Examples):
        raise TypeError(f"examples must be an Examples, got {type(examples).__name__}.")
    max_channels = check_positive_int(max_channels, "max_channels")
    per_channel = examples[layer]
    chosen = list(per_channel)[:max_channels] if channels is None else [int(c) for c in channels]
    missing = [c for c in chosen if c not in per_channel]
    if missing:
        raise ValueError(
            f"layer {layer!r} has no examples for channels {missing}; it has {list(per_channel)}."
        )
    if not chosen:
        raise ValueError(f"layer {layer!r} has no channels to show.")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    cols = max(1, examples.k)
    fig = Figure(figsize=(0.6 + cols * _CELL, 0.5 + len(chosen) * _CELL), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(chosen), cols, squeeze=False)
    for r, c in enumerate(chosen):
        for j in range(cols):
            ax = axes[r][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(f"channel {c}", fontsize=8)
            if j >= len(per_channel[c]):
                ax.set_frame_on(False)
                continue
            e = per_channel[c][j]
            ax.imshow(_pixels(e), cmap="gray", interpolation="nearest")
            if e.whole:
                top, left, bottom, right = e.box
                ax.add_patch(Rectangle((left - 0.5, top - 0.5), right - left, bottom - top,
                                       fill=False, edgecolor="yellow", linewidth=1.2))
            ax.set_title(f"{e.value:.3g} · #{e.index}", fontsize=7)
    fig.suptitle(f"{layer}: top {examples.k} dataset examples per channel", fontsize=9)
    return fig


def examples_figure_image(
    examples: Examples,
    layer: str,
    *,
    channels: Iterable[int] | None = None,
    max_channels: int = 16,
) -> torch.Tensor:
    """The figure of :func:`save_examples_figure` as a ``(3, H, W)`` uint8 image (for a
    TensorBoard writer's ``log_grid``).

    Example::

        >>> import torch
        >>> from torch_featureviz.meaning import Example
        >>> ex = Example(1.5, 3, None, (0, 0), (0, 0, 5, 5), torch.rand(3, 5, 5))
        >>> image = examples_figure_image(Examples({"conv1": {0: [ex]}}, k=1), "conv1")
        >>> image.dtype, image.shape[0]
        (torch.uint8, 3)
    """
    fig = _figure(examples, layer, channels, max_channels)
    fig.canvas.draw()
    pixels = torch.from_numpy(numpy.asarray(fig.canvas.buffer_rgba())[:, :, :3].copy())
    fig.clear()
    return pixels.permute(2, 0, 1).contiguous()


def save_examples_figure(
    examples: Examples,
    layer: str,
    path: str | os.PathLike[str],
    *,
    channels: Iterable[int] | None = None,
    max_channels: int = 16,
) -> Path:
    """Save a layer's dataset examples as one figure: a row per channel, its examples best
    first, each titled with its peak value and stream index. Whole-image examples (fields
    larger than about half the input) show the unit's region as a rectangle.

    Args:
        examples: from :func:`~torch_featureviz.meaning.collect_examples` or the monitor.
        layer: the layer key.
        path: a ``.png``, ``.pdf``, ``.svg`` or ``.jpg`` file.
        channels: the channels to show, in order; ``None``: the first ``max_channels``.
        max_channels: rows when ``channels`` is None.

    Returns:
        The path written.

    Raises:
        TypeError, ValueError: not :class:`Examples`, an unknown layer or channel, a bad
            suffix.

    Example::

        >>> import torch, tempfile, pathlib
        >>> from torch_featureviz.meaning import Example
        >>> ex = Example(1.5, 3, None, (0, 0), (0, 0, 5, 5), torch.rand(3, 5, 5))
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "conv1.png"
        >>> save_examples_figure(Examples({"conv1": {0: [ex]}}, k=1), "conv1", out).exists()
        True
    """
    path = Path(path)
    if path.suffix.lower() not in _FORMATS:
        raise ValueError(f"unsupported figure format {path.suffix!r}; use one of {_FORMATS}.")
    check_writable_dir(path.parent)
    fig = _figure(examples, layer, channels, max_channels)
    fig.savefig(path, dpi=100)
    fig.clear()
    return path
