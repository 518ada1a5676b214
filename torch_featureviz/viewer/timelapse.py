"""Time-lapse export: one layer's logged grids over training as an animated GIF, step labelled.

Works from the event files alone (no model, no rerun): :func:`read_frames` collects the PNGs of
one tag, :func:`encode_timelapse` turns ``(step, png)`` frames into a GIF, and
:func:`write_timelapse` does both. The TensorBoard tab serves the same GIF as a download.

Each frame is the logged grid (scaled up, nearest neighbour, to at least ``min_width`` px)
under a white band that reads ``step <N>`` and the tag. The GIF's comment is JSON
``{"tag": ..., "steps": [...]}`` so tools can tell which step each frame shows.

Example::

    >>> import tempfile, torch
    >>> from torch_featureviz import TensorBoardWriter
    >>> logdir = tempfile.mkdtemp()
    >>> with TensorBoardWriter(logdir) as tb:
    ...     for step in (0, 10):
    ...         _ = tb.log_feature_maps({"conv1": torch.rand(4, 6, 6)}, step)
    >>> path = write_timelapse(logdir, "conv1", view="hook")
    >>> path.name
    'timelapse_hook_conv1.gif'
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

from torch_featureviz.naming import layer_tag, make_tag, parse_tag

__all__ = ["TIMELAPSE_VIEWS", "encode_timelapse", "read_frames", "timelapse_tag", "write_timelapse"]

#: What a time-lapse can show: filter grids or one kind of feature maps.
TIMELAPSE_VIEWS = ("filters", "hook", "probe", "chain")
LABEL_HEIGHT = 14


def timelapse_tag(layer: str, view: str = "filters", prefix: str | None = None) -> str:
    """The image tag of ``layer``'s ``view``: ``filters/<l>`` or ``feature_maps/<view>/<l>``.

    Args:
        layer: a layer key (``"layer1.0.conv1"``, ``"shared#1"``) or its tag spelling.
        view: one of :data:`TIMELAPSE_VIEWS`.
        prefix: a monitor's ``name``, or ``None``.

    Raises:
        TypeError: ``layer`` is not a string.
        ValueError: ``layer`` is empty or ``view`` is unknown.
    """
    if not isinstance(layer, str):
        raise TypeError(f"layer must be a layer name string, got {type(layer).__name__}.")
    if not layer:
        raise ValueError("layer must be a layer name such as 'conv1', got ''.")
    if view not in TIMELAPSE_VIEWS:
        raise ValueError(f"view must be one of {', '.join(TIMELAPSE_VIEWS)}, got {view!r}.")
    spelled = layer_tag(layer)
    if view == "filters":
        return make_tag("filters", spelled, prefix=prefix)
    return make_tag("feature_maps", view, spelled, prefix=prefix)


def _event_files(logdir: Path) -> list[Path]:
    return sorted(p for p in logdir.rglob("*") if "tfevents" in p.name and p.is_file())


def _image_bytes(value: object) -> bytes | None:
    """The PNG of an image summary value, legacy (``image``) or tensor (images plugin)."""
    if value.HasField("image"):  # type: ignore[attr-defined]
        return bytes(value.image.encoded_image_string)  # type: ignore[attr-defined]
    meta = value.metadata  # type: ignore[attr-defined]
    if value.HasField("tensor") and meta.plugin_data.plugin_name == "images":  # type: ignore[attr-defined]
        strings = value.tensor.string_val  # type: ignore[attr-defined]
        return bytes(strings[2]) if len(strings) > 2 else None
    return None


def read_frames(
    logdir: str | os.PathLike[str], tag: str
) -> list[tuple[int, bytes]]:
    """Every logged PNG of ``tag`` in one run's event files, ``[(step, png)]`` by step.

    A step logged twice (a resumed run) keeps the image written last.

    Args:
        logdir: a run directory, or a log directory holding exactly one run with ``tag``.
        tag: the image tag (see :func:`timelapse_tag`).

    Returns:
        The frames, sorted by step.

    Raises:
        FileNotFoundError: ``logdir`` does not exist or holds no event files.
        ValueError: no run has ``tag`` (the message lists the layers it does have), or several
            do (pass one run's directory).
    """
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    root = Path(logdir)
    if not root.is_dir():
        raise FileNotFoundError(f"log directory {str(root)!r} does not exist.")
    files = _event_files(root)
    if not files:
        raise FileNotFoundError(f"no TensorBoard event files under {str(root)!r}.")
    by_run: dict[Path, dict[int, bytes]] = {}
    seen: set[str] = set()
    for path in files:
        for event in EventFileLoader(str(path)).Load():
            if not event.HasField("summary"):
                continue
            for value in event.summary.value:
                if value.tag != tag:
                    if parse_tag(value.tag) is not None:
                        seen.add(value.tag)
                    continue
                data = _image_bytes(value)
                if data is not None:
                    by_run.setdefault(path.parent, {})[int(event.step)] = data
    if not by_run:
        layers = sorted({i.layer for t in seen if (i := parse_tag(t)) and i.kind != "input"
                         and i.layer})
        listing = ", ".join(str(x) for x in layers[:20]) or "none"
        raise ValueError(f"no images under tag {tag!r} in {str(root)!r}; layers logged: {listing}.")
    if len(by_run) > 1:
        runs = ", ".join(sorted(str(p) for p in by_run))
        raise ValueError(
            f"tag {tag!r} is logged in several runs ({runs}); pass one run's directory."
        )
    frames = next(iter(by_run.values()))
    return sorted(frames.items())


def _label(text: str, width: int) -> object:
    from PIL import Image, ImageDraw

    band = Image.new("RGB", (width, LABEL_HEIGHT), "white")
    ImageDraw.Draw(band).text((2, 1), text, fill="black")
    return band


def encode_timelapse(
    frames: Sequence[tuple[int, bytes]],
    *,
    title: str = "",
    duration_ms: int = 250,
    min_width: int = 256,
) -> bytes:
    """An animated GIF of ``(step, png)`` frames, each under a ``step <N>  <title>`` label.

    Args:
        frames: ``(step, PNG bytes)`` in the order to show.
        title: text after the step in each label (the tag, say).
        duration_ms: how long each frame shows.
        min_width: frames narrower than this are scaled up by a whole factor (nearest
            neighbour, so tiles stay sharp).

    Returns:
        The GIF file's bytes; its comment is JSON ``{"tag": title, "steps": [...]}``.

    Raises:
        ValueError: no frames, or a non-positive ``duration_ms`` or ``min_width``.
    """
    from PIL import Image

    if not frames:
        raise ValueError("a time-lapse needs at least one frame, got none.")
    for value, name in ((duration_ms, "duration_ms"), (min_width, "min_width")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}.")
    images = []
    for _step, data in frames:
        with Image.open(io.BytesIO(data)) as im:
            images.append(im.convert("RGB"))
    width = max(im.width for im in images)
    height = max(im.height for im in images)
    scale = max(1, -(-min_width // width))
    width, height = width * scale, height * scale
    out = []
    for (step, _), im in zip(frames, images, strict=True):
        canvas = Image.new("RGB", (width, height + LABEL_HEIGHT), "white")
        canvas.paste(_label(f"step {step}  {title}".rstrip(), width), (0, 0))  # type: ignore[arg-type]
        canvas.paste(im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST),
                     (0, LABEL_HEIGHT))
        out.append(canvas.quantize(256, method=Image.Quantize.MEDIANCUT))
    comment = json.dumps({"tag": title, "steps": [int(s) for s, _ in frames]})
    buffer = io.BytesIO()
    out[0].save(
        buffer, "GIF", save_all=True, append_images=out[1:], duration=duration_ms, loop=0,
        comment=comment.encode("utf-8"), optimize=False, disposal=1,
    )
    return buffer.getvalue()


def write_timelapse(
    logdir: str | os.PathLike[str],
    layer: str,
    out: str | os.PathLike[str] | None = None,
    *,
    view: str = "filters",
    prefix: str | None = None,
    duration_ms: int = 250,
) -> Path:
    """Write a GIF of one layer's ``view`` over training, read from the event files.

    Args:
        logdir: the run's log directory (or a directory holding one run with this layer).
        layer: the layer's name (``"layer1.0.conv1"``) or tag spelling.
        out: the GIF's path; default ``<logdir>/timelapse_<view>_<layer>.gif``.
        view: ``"filters"``, ``"hook"``, ``"probe"`` or ``"chain"``.
        prefix: the monitor's ``name`` when the run holds several models.
        duration_ms: how long each frame shows.

    Returns:
        The path written.

    Raises:
        FileNotFoundError, ValueError: as for :func:`read_frames` and :func:`timelapse_tag`.
    """
    tag = timelapse_tag(layer, view, prefix)
    frames = read_frames(logdir, tag)
    data = encode_timelapse(frames, title=tag, duration_ms=duration_ms)
    path = (
        Path(out) if out is not None
        else Path(logdir) / f"timelapse_{view}_{layer_tag(layer)}.gif"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path
