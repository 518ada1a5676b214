"""What every figure module shares: a headless matplotlib figure, a grid drawn on an axis at
one pixel per grid pixel, the supported file formats, and the checks of where results go.

Example::

    >>> import torch
    >>> fig = new_figure(2.0, 2.0)
    >>> show_grid(fig.add_subplot(1, 1, 1), torch.zeros(1, 4, 4, dtype=torch.uint8), "blank")
    >>> check_targets(None, None, "png")
    Traceback (most recent call last):
    ...
    ValueError: give out_dir, writer or both: there is nowhere to save the grids.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch

__all__ = [
    "DPI",
    "FORMATS",
    "MAX_INCHES",
    "GridWriter",
    "Progress",
    "check_suffix",
    "check_targets",
    "new_figure",
    "show_grid",
]

FORMATS = (".png", ".pdf", ".svg", ".jpg", ".jpeg")
DPI = 100
MAX_INCHES = 14.0

#: Called after each layer is saved: ``progress(layer key, layers done, layers in all)``.
Progress = Callable[[str, int, int], None]


class GridWriter(Protocol):
    """Where grids and scalars go besides files: :class:`~torch_featureviz.TensorBoardWriter`
    has these methods. A ``prefix`` attribute, if the writer has one, heads every tag."""

    def log_grid(self, tag: str, grid: torch.Tensor, step: int) -> None: ...

    def log_scalar(self, tag: str, value: float, step: int) -> None: ...


def new_figure(width: float, height: float) -> Any:
    """A matplotlib ``Figure`` on an Agg canvas, ``width`` x ``height`` inches at :data:`DPI`;
    nothing is registered with pyplot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def show_grid(ax: Any, grid: torch.Tensor, title: str | None = None) -> None:
    """Draw a ``(C, H, W)`` uint8 grid on ``ax`` (grayscale for one channel), without axes."""
    pixels = grid.detach().cpu().permute(1, 2, 0).numpy()
    if pixels.shape[2] == 1:
        ax.imshow(pixels[:, :, 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(pixels, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)


def check_suffix(path: Path) -> None:
    """Refuse a figure path whose suffix is not one of :data:`FORMATS`."""
    if path.suffix.lower() not in FORMATS:
        raise ValueError(f"unsupported figure format {path.suffix!r}; use one of {FORMATS}.")


def check_targets(
    out_dir: str | os.PathLike[str] | None, writer: GridWriter | None, fmt: str
) -> Path | None:
    """Check the targets without touching the disk: the directory is made only once every grid
    has rendered, so a bad option leaves nothing behind."""
    if not isinstance(fmt, str):
        raise TypeError(f"fmt must be a str such as 'png', got {type(fmt).__name__}.")
    check_suffix(Path(f"figure.{fmt}"))
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
