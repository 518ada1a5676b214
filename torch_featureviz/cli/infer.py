"""What the CLI infers about a model's input when the user did not say: the channel count, a
clip for video (3-D conv) models, and how many images the model's forward takes.

Every inference is printed as a ``featureviz: note:`` line naming the option that overrides it
(docs/troubleshooting.md lists them all).
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from torch_featureviz.cli.common import UsageError

T = TypeVar("T")

#: Frames of the clip made from the image for a video model, when its weights do not say.
DEFAULT_FRAMES = 8

#: torch's message for a conv fed the wrong channel count: "... expected input[1, 3, 28, 28] to
#: have 1 channels, but got 3 channels instead".
_WANTS_CHANNELS = re.compile(r"to have (\d+) channels, but got (\d+) channels")


def note(args: argparse.Namespace, message: str) -> None:
    """Say what was inferred, on stderr (stdout stays the command's output), unless --quiet."""
    if not getattr(args, "quiet", False):
        print(f"featureviz: note: {message}", file=sys.stderr)


def first_conv(model: Any) -> tuple[str, Any] | None:
    """The first conv in module order (``Conv1d/2d/3d``, not transposed), or None."""
    from torch import nn

    for name, module in model.named_modules():
        if isinstance(module, nn.modules.conv._ConvNd) and not module.transposed:
            return name, module
    return None


def is_video(model: Any) -> bool:
    """Whether the model's first conv is 3-D, so it takes ``(N, C, T, H, W)`` clips."""
    from torch import nn

    found = first_conv(model)
    return found is not None and isinstance(found[1], nn.Conv3d)


def resolve_channels(args: argparse.Namespace, model: Any) -> None:
    """Set ``args.input_channels`` from the first conv when the user gave none.

    Only 1 (grayscale) and 3 (RGB) are taken from the conv: a space-to-depth stem (YOLO's
    Focus, TResNet) has a first conv with 12 inputs made from a 3-channel image.
    """
    args.channels_given = args.input_channels is not None
    if args.channels_given:
        return
    args.input_channels = 3
    found = first_conv(model)
    if found is not None and found[1].in_channels == 1:
        args.input_channels = 1
        note(
            args,
            f"feeding 1 input channel (grayscale): the first conv, {found[0] or 'the model'}, "
            "takes 1; give --input-channels to override.",
        )


def with_channel_retry(args: argparse.Namespace, run: Callable[[int], T]) -> T:
    """``run(channels)``; when its probe forward fails because the model wants another channel
    count (and --input-channels was not given), say so and retry once with that count."""
    try:
        return run(args.input_channels)
    except UsageError as e:
        match = _WANTS_CHANNELS.search(str(e.__cause__ or ""))
        if getattr(args, "channels_given", True) or match is None:
            raise
        wanted = int(match.group(1))
        if wanted == args.input_channels:
            raise
        note(
            args,
            f"the model wants {wanted} input channels, not {args.input_channels}: retried with "
            f"--input-channels {wanted} (give it to skip the retry).",
        )
        args.input_channels = wanted
        return run(wanted)


def clip_frames(args: argparse.Namespace, model: Any, weights: Any) -> int | None:
    """The clip length for a video model (``--frames``, the weights' own ``clip_len``, else
    :data:`DEFAULT_FRAMES`), or None for an image model."""
    if not is_video(model):
        if args.frames is not None:
            raise UsageError(
                "--frames is for video models (a first conv that is Conv3d); this model's first "
                "conv is not."
            )
        return None
    if args.frames is not None:
        return int(args.frames)
    docs = str(getattr(weights, "meta", {}).get("_docs", "")) if weights is not None else ""
    own = re.search(r"clip_len=(\d+)", docs)
    frames = int(own.group(1)) if own else DEFAULT_FRAMES
    source = "its weights' clip length" if own else "the default"
    note(
        args,
        f"video model: feeding a clip of {frames} copies of the image, laid out (N, C, T, H, W) "
        f"({source}); give --frames to override.",
    )
    return frames


def as_clip(x: Any, frames: int | None) -> Any:
    """``(N, C, H, W)`` (or a one-frame ``(N, C, 1, H, W)``) to ``(N, C, frames, H, W)``."""
    if frames is None:
        return x
    if x.dim() == 4:
        x = x.unsqueeze(2)
    return x.expand(-1, -1, frames, -1, -1).contiguous() if x.shape[2] == 1 else x


def forward_inputs(model: Any) -> tuple[int, bool, list[str]]:
    """How many positional inputs the model's forward requires, whether it takes more
    (``*args`` or defaults), and the required parameters' names."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return 1, True, []
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    required = [p.name for p in params if p.kind in positional and p.default is p.empty]
    more = any(
        p.kind is inspect.Parameter.VAR_POSITIONAL
        or (p.kind in positional and p.default is not p.empty)
        for p in params
    )
    return len(required), more, required


def check_image_count(args: argparse.Namespace, model: Any, given: int) -> int:
    """How many inputs to feed: one per ``--image`` (the built-in photo when none), checked
    against the forward's signature, with a usage error that says how to pass several."""
    required, more, names = forward_inputs(model)
    wanted = max(given, 1)
    if wanted < required:
        listed = ", ".join(names)
        raise UsageError(
            f"{type(model).__name__}.forward takes {required} inputs ({listed}): give one "
            f"--image per input (--image A.png --image B.png); from Python, pass a tuple: "
            f"capture_feature_maps(model, ({listed}))."
        )
    if wanted > max(required, 1) and not more:
        raise UsageError(
            f"{given} --image options, but {type(model).__name__}.forward takes "
            f"{max(required, 1)} input(s): give one --image per input."
        )
    return wanted
