"""Write filter grids, feature-map grids, images and scalars to TensorBoard.

Tags:

- ``filters/<layer>``: a conv layer's filters (:func:`~torch_featureviz.make_filter_grid`);
- ``feature_maps/<mode>/<layer>``: a capture's maps, ``mode`` being ``hook`` or ``chain``;
- ``input/<name>``: the input image.

Grids are written as PNGs with their own channel count (single-channel for grayscale grids).

TensorBoard keeps only 10 images per tag when it loads logs; to scrub through every logged step,
start it with ``tensorboard --logdir DIR --samples_per_plugin images=0`` (keep them all).
"""

from __future__ import annotations

import errno
import itertools
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from torch_featureviz._validation import (
    check_non_negative_int,
    check_positive_int,
    check_prefix,
    check_writable_dir,
)
from torch_featureviz.capture.discovery import conv_weights
from torch_featureviz.log.remote import is_url, remote_dir
from torch_featureviz.naming import channels_text, layer_tag, make_tag, unique_tags
from torch_featureviz.render.grids import (
    FilterChannel,
    make_feature_grid,
    make_filter_grid,
    to_display_image,
)
from torch_featureviz.render.png import encode_png, tfrecord, to_hwc_numpy

__all__ = ["TensorBoardWriter", "tensorboard_command"]


def tensorboard_command(log_dir: str | os.PathLike[str], *, images: int = 0) -> str:
    """The command that shows ``log_dir`` with every logged image step kept.

    ``images=0`` tells TensorBoard to keep every image step (its default keeps 10 per tag), so
    the scrub has no holes however long the run; pass a number to cap TensorBoard's memory on
    very long runs.

    Example::

        >>> tensorboard_command("runs/exp1")
        'tensorboard --logdir runs/exp1 --samples_per_plugin images=0 --host 127.0.0.1'
    """
    images = check_non_negative_int(images, "images")
    return (
        f"tensorboard --logdir {os.fspath(log_dir)} --samples_per_plugin images={images} "
        "--host 127.0.0.1"
    )


#: Threads that encode a batch of grids (:meth:`TensorBoardWriter.log_feature_maps`).
_ENCODE_THREADS = min(4, os.cpu_count() or 1)
_FILE_NUMBERS = itertools.count()


def _append_binary(path: str) -> Any:
    return open(path, "ab")  # noqa: SIM115 - closed by _EventFile.close()


class _EventFile:
    """An event file this package owns: each ``add_summary`` is one TFRecord, appended.

    ``SummaryWriter``'s own writer checksums each record in pure Python when TensorFlow is
    absent (~8 MB/s) and reopens the file for every record; this one frames records with the
    C CRC-32C (:func:`torch_featureviz.render.png.tfrecord`) and keeps the file open. TensorBoard
    reads it like any other: the name follows ``SummaryWriter``'s pattern, and the first record
    is the file-version event.
    """

    def __init__(
        self, log_dir: Path | str, opener: Callable[[str], Any] = _append_binary, *, local=True
    ) -> None:
        from tensorboard.compat.proto.event_pb2 import Event

        self._event_type = Event
        name = (
            f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
            f"{os.getpid()}.{next(_FILE_NUMBERS)}"
        )
        # Not local: a path on an fsspec filesystem, written through ``opener``.
        self.path: Path | str = Path(log_dir) / name if local else f"{log_dir}/{name}"
        self._lock = threading.Lock()
        self._file = opener(str(self.path))
        self._inode: int | None = os.stat(self.path).st_ino if local else None
        self._write(Event(wall_time=time.time(), file_version="brain.Event:2"))

    def _write(self, event: Any) -> None:
        data = tfrecord(event.SerializeToString())
        with self._lock:
            self._file.write(data)

    def add_summary(self, summary: Any, step: int, walltime: float | None = None) -> None:
        wall = time.time() if walltime is None else walltime
        self._write(self._event_type(summary=summary, step=step, wall_time=wall))

    def flush(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.flush()
                self._check_still_there()

    def _check_still_there(self) -> None:
        """The file is kept open, so writes after its directory was removed or replaced would
        vanish silently; say so instead (raises FileNotFoundError or NotADirectoryError)."""
        if self._inode is None:
            return
        if os.stat(self.path).st_ino != self._inode:
            raise FileNotFoundError(
                errno.ENOENT, "the event file was replaced on disk", str(self.path)
            )

    def close(self) -> None:
        with self._lock:
            self._file.close()


def _image_value(tag: str, png: tuple[int, int, int, bytes]) -> Any:
    from tensorboard.compat.proto.summary_pb2 import Summary

    h, w, c, data = png
    image = Summary.Image(height=h, width=w, colorspace=c, encoded_image_string=data)
    return Summary.Value(tag=tag, image=image)


def _encode_all(
    encode: Callable[[torch.Tensor], tuple[int, int, int, bytes]],
    items: list[torch.Tensor],
    threads: int,
) -> list[tuple[int, int, int, bytes]]:
    """``encode`` each grid, on up to ``threads`` threads when there are several: zlib and the
    device-to-host copy release the GIL. The pool lives for this call only: no thread outlives
    it."""
    if len(items) <= 1 or threads <= 1:
        return [encode(grid) for grid in items]
    workers = min(threads, len(items))
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="featureviz-png") as pool:
            return list(pool.map(encode, items))
    except RuntimeError as e:  # an atexit flush during interpreter shutdown: no new threads
        if "shutdown" not in str(e):
            raise
        return [encode(grid) for grid in items]


def _scalar_layout(
    prefix: str | None,
    groups: Mapping[str, Iterable[str]],
    stats: Iterable[str],
    summaries: Iterable[str],
) -> dict[str, dict[str, list[Any]]]:
    """The custom-scalars layout of :meth:`TensorBoardWriter.log_scalar_layout`: its charts,
    each a ``["Multiline", [tag regexes]]``, by category."""
    layout: dict[str, dict[str, list[Any]]] = {}
    names = list(summaries)
    if names:
        tags = [re.escape(make_tag("summary", n, prefix=prefix)) + "$" for n in names]
        layout["featureviz summary"] = {"model-wide": ["Multiline", tags]}
    for group, keys in groups.items():
        layer_tags = [layer_tag(k) for k in keys]
        title = f"{prefix}/{group}" if prefix else group
        layout[title] = {
            f"{group} {stat}": [
                "Multiline",
                [re.escape(make_tag("activations", t, stat, prefix=prefix)) + "$"
                 for t in layer_tags],
            ]
            for stat in stats
        }
    return layout


class TensorBoardWriter:
    """Write torch_featureviz grids, images and scalars to TensorBoard event files.

    Given a directory, it writes an event file of its own (a record writer it owns, with a C
    CRC-32C). Given a ``SummaryWriter`` (for example a Lightning logger's ``experiment``), it
    adds its summaries through that writer's public event-file path and never changes the
    writer; it then flushes but does not close it.

    Args:
        log_dir: a directory (created if needed), an fsspec URL such as ``s3://bucket/runs``
            (written through fsspec: ``pip install torch-featureviz[remote]`` and the URL's
            filesystem, e.g. s3fs), or an existing ``torch.utils.tensorboard.SummaryWriter``.
        png_level: zlib level of the PNGs, 0 (fastest) to 9 (smallest).
        filter_channel: how deep filters become tiles (see
            :func:`~torch_featureviz.make_filter_grid`).
        max_filters: filters per filter grid.
        cmap: a matplotlib colormap for feature maps; ``None`` writes grayscale.
        encode_threads: threads that encode the PNGs of one call to :meth:`log_filters` or
            :meth:`log_feature_maps`; default ``min(4, os.cpu_count())``. ``1`` encodes on the
            calling thread (what a background writer that should only use idle CPU wants).
        prefix: put every tag under ``<prefix>/`` (two models logging into one directory).
        min_filter_tile: the smallest filter tile width, in pixels (filters are upscaled by
            an integer factor to reach it; a viewer can upscale further without blur).
        opener: how the event file is opened, ``opener(path) -> binary file`` in append mode
            (default ``open(path, "ab")``); the seam for tests that make the disk fail.

    Example::

        >>> import tempfile, torch, torchvision
        >>> from torch_featureviz import FeatureCapture
        >>> model = torchvision.models.resnet18().eval()
        >>> x = torch.randn(1, 3, 64, 64)
        >>> with FeatureCapture(model, max_channels=16) as cap, torch.no_grad():
        ...     _ = model(x)
        >>> with TensorBoardWriter(tempfile.mkdtemp()) as tb:
        ...     _ = tb.log_filters(model, step=0)
        ...     _ = tb.log_feature_maps(cap.maps, step=0)
        ...     _ = tb.log_image(x, step=0)
    """

    def __init__(
        self,
        log_dir: str | os.PathLike[str] | Any,
        *,
        png_level: int = 1,
        filter_channel: FilterChannel = "auto",
        max_filters: int | None = 64,
        cmap: str | None = None,
        encode_threads: int | None = None,
        prefix: str | None = None,
        min_filter_tile: int = 32,
        opener: Callable[[str], Any] | None = None,
    ) -> None:
        if isinstance(png_level, bool) or not isinstance(png_level, int):
            raise TypeError(f"png_level must be an int in 0..9, got {type(png_level).__name__}.")
        if not 0 <= png_level <= 9:
            raise ValueError(f"png_level must be an int in 0..9, got {png_level!r}.")
        if encode_threads is None:
            encode_threads = _ENCODE_THREADS
        self.encode_threads = check_positive_int(encode_threads, "encode_threads")
        self.png_level = png_level
        self.filter_channel = filter_channel
        self.max_filters = check_positive_int(max_filters, "max_filters", allow_none=True)
        self.cmap = cmap
        self.prefix = check_prefix(prefix)
        self.min_filter_tile = check_positive_int(min_filter_tile, "min_filter_tile")
        #: The user's ``SummaryWriter`` when one was given, else ``None``.
        self.writer: Any = None
        self._events: Any
        if is_url(log_dir):
            # An fsspec URL: one file per writer, kept open ("wb": object stores cannot append).
            url = str(log_dir)
            fs, remote = remote_dir(url)
            self._log_dir = url.rstrip("/")
            open_remote = opener or (lambda p: fs.open(p, "wb"))
            self._events = _EventFile(remote, open_remote, local=False)
        elif isinstance(log_dir, (str, os.PathLike)):
            path = Path(log_dir)
            if not os.fspath(log_dir):
                raise ValueError("log_dir must not be empty; pass a directory such as 'runs/exp1'.")
            check_writable_dir(path)
            self._log_dir = str(path)
            self._events = _EventFile(path, opener or _append_binary)
        elif hasattr(log_dir, "_get_file_writer") and hasattr(log_dir, "add_scalar"):
            self.writer = log_dir
            self._log_dir = str(log_dir.get_logdir())
            self._events = log_dir._get_file_writer()  # the writer's own public-facing sink
        else:
            raise TypeError(
                "log_dir must be a directory path or a torch.utils.tensorboard.SummaryWriter, "
                f"got {type(log_dir).__name__}."
            )
        self.closed = False

    @property
    def log_dir(self) -> str:
        """The directory the event files go to."""
        return self._log_dir

    def tag(self, kind: str, *parts: str) -> str:
        """This writer's tag for ``kind`` and ``parts`` (:func:`~.naming.make_tag`)."""
        return make_tag(kind, *parts, prefix=self.prefix)

    # -- primitives -----------------------------------------------------------------------------
    def log_grid(
        self, tag: str, grid: torch.Tensor, step: int, *, walltime: float | None = None
    ) -> None:
        """Write one ``(C, H, W)`` uint8 grid (C = 1 or 3) as a PNG image under ``tag``."""
        self._check_open()
        self._add_values([_image_value(tag, self._encode(grid))], step, walltime)

    def log_scalar(self, tag: str, value: float, step: int) -> None:
        """Write one scalar."""
        self.log_scalars({tag: value}, step)

    def log_scalars(self, values: Mapping[str, float], step: int) -> None:
        """Write several scalars, ``{tag: value}``, at one step, as one event-file record.

        Each is an ordinary scalar under its own tag in TensorBoard (unlike
        ``SummaryWriter.add_scalars``, which makes one run per tag).
        """
        if not isinstance(values, Mapping):
            kind = type(values).__name__
            raise TypeError(f"values must be a {{tag: number}} mapping, got {kind}.")
        self._check_open()
        from tensorboard.compat.proto.summary_pb2 import Summary

        self._add_values(
            [Summary.Value(tag=str(tag), simple_value=float(v)) for tag, v in values.items()],
            step,
        )

    def log_histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        """Write a histogram of the finite values of ``values`` (any dtype) under ``tag``."""
        self._check_open()
        from torch.utils.tensorboard.summary import histogram

        v = values.detach().float()  # float32: histc has no bf16 kernel on CPU (pytorch#75667)
        v = v[torch.isfinite(v)].cpu()
        if v.numel():
            self._add_values(list(histogram(tag, v.numpy(), "auto").value), step)

    def log_layer_index(self, layers: Iterable[str], step: int = 0) -> None:
        """Record the layers in model order, once per run, for the featureviz TensorBoard tab
        (``[<prefix>/]featureviz/layers``; see :mod:`torch_featureviz.log.metadata`)."""
        from torch_featureviz.log.metadata import layers_summary

        self.add_summary(layers_summary([layer_tag(k) for k in layers], self.prefix), step)

    def log_channels(self, channels: Mapping[str, list[int]], step: int) -> str:
        """Say which channel each tile of each layer's map grid shows, as a text summary
        (``featureviz/channels``): one line per layer, ``layer: c0, c1, ...`` in tile order."""
        from torch.utils.tensorboard.summary import text

        tag = self.tag("featureviz", "channels")
        self._add_values(list(text(tag, channels_text(channels)).value), step)
        return tag

    def log_scalar_layout(
        self,
        groups: Mapping[str, Iterable[str]],
        stats: Iterable[str],
        summaries: Iterable[str] = (),
        step: int = 0,
    ) -> int:
        """Write a custom-scalars layout: one multi-line chart per statistic per group.

        Args:
            groups: ``{group name: layer keys}``, e.g. the stages of a ResNet.
            stats: the per-layer statistics (``activations/<layer>/<stat>``).
            summaries: model-wide scalars (``summary/<name>``), one chart holding them all.

        Returns:
            The number of charts.
        """
        from torch.utils.tensorboard.summary import custom_scalars

        layout = _scalar_layout(self.prefix, groups, stats, summaries)
        self.add_summary(custom_scalars(layout), step)
        return sum(len(charts) for charts in layout.values())

    def add_summary(self, summary: Any, step: int) -> None:
        """Write a ready ``Summary`` protobuf (the plugin's metadata, custom layouts)."""
        self._check_open()
        self._events.add_summary(summary, int(step), None)

    def _encode(self, grid: torch.Tensor) -> tuple[int, int, int, bytes]:
        pixels = to_hwc_numpy(grid)
        h, w, c = pixels.shape
        return h, w, c, encode_png(pixels, level=self.png_level)

    def _add_values(self, values: list[Any], step: int, walltime: float | None = None) -> None:
        """The one write path: ``Summary.Value``s as one event (one record in the file).

        One record per call rather than per image or scalar: each record costs a CRC-32C and a
        protobuf.
        """
        from tensorboard.compat.proto.summary_pb2 import Summary

        if values:
            self._events.add_summary(Summary(value=values), int(step), walltime)

    # -- what users log -------------------------------------------------------------------------
    def log_filters(
        self,
        model_or_layers: nn.Module | Mapping[str, nn.Module | torch.Tensor],
        step: int,
        *,
        layers: Any = None,
    ) -> list[str]:
        """Write a filter grid for each conv layer, under ``filters/<layer>``.

        Args:
            model_or_layers: a model (its convs are found, filtered by ``layers`` globs) or a
                mapping of name to conv module or weight tensor.
            step: the global step.

        Returns:
            The tags written.
        """
        weights: Mapping[str, Any] = conv_weights(model_or_layers, layers)
        grids = {
            name: make_filter_grid(
                w,
                channel=self.filter_channel,
                max_filters=self.max_filters,
                min_tile=self.min_filter_tile,
            )
            for name, w in weights.items()
        }
        return self._log_grids(("filters",), grids, step)

    def log_feature_maps(
        self,
        maps: Mapping[str, torch.Tensor],
        step: int,
        *,
        mode: Literal["hook", "probe", "chain"] | str = "hook",
    ) -> list[str]:
        """Write a grid for each map, under ``feature_maps/<mode>/<layer>``.

        Returns:
            The tags written.
        """
        if not isinstance(maps, Mapping):
            raise TypeError(f"maps must be a {{name: tensor}} mapping, got {type(maps).__name__}.")
        if not isinstance(mode, str) or not re.fullmatch(r"[A-Za-z0-9_\-]+", mode):
            raise ValueError(f"mode must be a simple word such as 'hook' or 'chain', got {mode!r}.")
        grids = {name: make_feature_grid(m, cmap=self.cmap) for name, m in maps.items()}
        return self._log_grids(("feature_maps", mode), grids, step)

    def log_image(self, image: torch.Tensor, step: int, *, name: str = "image") -> str:
        """Write the input image under ``input/<name>``.

        Args:
            image: ``(C, H, W)`` or ``(1, C, H, W)``, any scale (it is min-max scaled as one).
        """
        tag = self.tag("input", layer_tag(name))
        self.log_grid(tag, to_display_image(image), step)
        return tag

    def _log_grids(
        self, head: tuple[str, ...], grids: Mapping[str, torch.Tensor], step: int
    ) -> list[str]:
        tags = unique_tags(head[0], grids, *head[1:], prefix=self.prefix)
        self._check_open()
        pngs = _encode_all(self._encode, list(grids.values()), self.encode_threads)
        self._add_values(
            [_image_value(tag, png) for tag, png in zip(tags, pngs, strict=True)], step
        )
        return tags

    # -- lifecycle ------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError("this TensorBoardWriter is closed; create a new one.")

    def flush(self) -> None:
        """Flush pending events to disk."""
        if not self.closed:
            self._events.flush()

    def close(self) -> None:
        """Flush, and close the event file if this writer created it. Idempotent."""
        if self.closed:
            return
        self.closed = True
        if self.writer is None:
            self._events.close()
        else:
            self.writer.flush()

    def __enter__(self) -> TensorBoardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TensorBoardWriter({self.log_dir!r}, closed={self.closed})"
