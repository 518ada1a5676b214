"""The one model-loading path every subcommand shares: the model and output options, the model,
its layers, the output directories and the probe forward with its one-line errors."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from torch_featureviz.cli.common import (
    DEFAULT_OUT,
    EPILOG,
    Parser,
    UsageError,
    input_size_arg,
    one_line,
    path_arg,
    positive_int,
    say,
    user_input,
)


def patterns(args: argparse.Namespace) -> list[str] | None:
    raw = getattr(args, "layers", None)
    if not raw:
        return None
    return [p.strip() for item in raw for p in item.split(",") if p.strip()]


def device(args: argparse.Namespace) -> Any:
    import torch

    try:
        device = torch.device(args.device)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device: unknown device {args.device!r}; use cpu or cuda.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA GPU is available here; use --device cpu.")
    return device


def load(args: argparse.Namespace) -> Any:
    from torch_featureviz.loading.models import load_model

    if args.model is None and args.model_class is None:
        raise UsageError(
            "give a model name (e.g. resnet18, timm:resnet18 or hf:ResNetModel) or --model-class."
        )
    if args.model is not None and args.model_class is not None:
        raise UsageError(
            f"give either MODEL ({args.model!r}) or --model-class ({args.model_class!r}), not both."
        )
    with user_input():
        loaded = load_model(
            args.model,
            weights=args.weights,
            checkpoint=args.checkpoint,
            model_class=args.model_class,
            config=args.config,
            input_size=args.input_size,
            progress=not args.quiet,
        )
    loaded.model.to(device(args))
    return loaded


def select_layers(model: Any, args: argparse.Namespace) -> dict[str, Any]:
    from torch_featureviz.capture.discovery import find_conv_layers

    with user_input("--layers: " if patterns(args) else ""):
        return find_conv_layers(model, include=patterns(args))


def outputs(args: argparse.Namespace) -> tuple[Path | None, Any]:
    """The figure directory and the TensorBoard directory (a path, or an fsspec URL kept as a
    string), both checked writable up front."""
    from torch_featureviz._validation import check_writable_dir
    from torch_featureviz.log.remote import is_url, remote_dir

    out = args.out
    if out is None and args.logdir is None:
        out = DEFAULT_OUT
    dirs: list[Any] = []
    for value, flag in ((out, "--out"), (args.logdir, "--logdir")):
        if value is None:
            dirs.append(None)
            continue
        if flag == "--logdir" and is_url(value):
            try:
                remote_dir(value)  # fsspec and the URL's filesystem installed, directory made
            except (ImportError, ValueError, OSError) as e:
                raise UsageError(f"{flag}: {one_line(e)}") from e
            dirs.append(value)
            continue
        path = Path(value)
        with user_input(f"{flag}: "):
            check_writable_dir(path)
        dirs.append(path)
    return dirs[0], dirs[1]


#: Forward errors that mean "this input size does not fit the model": a linear head after a
#: flatten, a pooling or kernel that runs out of pixels, a fixed-size ViT, a U-Net's odd sizes.
SIZE_ERRORS = re.compile(
    r"mat1 and mat2 shapes cannot be multiplied|output size is too small|kernel size can't be "
    r"greater than actual input size|input image size|image size .*doesn't match|"
    r"sizes of tensors must match|must match the size of tensor b|padding size should be less",
    re.IGNORECASE,
)


def forward_error(e: BaseException, args: argparse.Namespace) -> UsageError:
    """The model's forward failed on the input: say what failed, and the option to change."""
    text = one_line(e)
    if SIZE_ERRORS.search(text):
        hint = "; try another --input-size (most ImageNet models take 224)"
    elif "channel" in text.lower():
        hint = f"; the input has {args.input_channels} channels: try another --input-channels"
    else:
        hint = ""
    return UsageError(f"{text}{hint}.")


@contextmanager
def forward(args: argparse.Namespace) -> Iterator[None]:
    """A probe pass: the model's forward failing (RuntimeError), or the input refused before it
    (ValueError), becomes a one-line error with a hint where one helps."""
    try:
        with user_input():
            yield
    except UsageError as e:
        if isinstance(e.__cause__, ValueError):
            raise forward_error(e.__cause__, args) from e.__cause__
        raise
    except RuntimeError as e:
        raise forward_error(e, args) from e


def format_size(size: int | tuple[int, int]) -> str:
    return f"{size}x{size}" if isinstance(size, int) else f"{size[0]}x{size[1]}"


def writer_for(logdir: Path | str | None, **options: Any) -> Any:
    from torch_featureviz.log.tensorboard import TensorBoardWriter

    return TensorBoardWriter(logdir, **options) if logdir is not None else nullcontext()


def say_written(args: argparse.Namespace, out: Path | None, logdir: Any, n: int) -> None:
    from torch_featureviz.log.tensorboard import tensorboard_command

    if out is not None:
        say(args, f"wrote {n} figures to {out}")
    if logdir is not None:
        say(args, f"wrote TensorBoard logs to {logdir}; view them with:")
        say(args, f"  {tensorboard_command(logdir)}")


def model_options() -> Parser:
    p = Parser(add_help=False)
    g = p.add_argument_group("model")
    g.add_argument(
        "model",
        nargs="?",
        metavar="MODEL",
        help="a torchvision model name (resnet18, fcn_resnet50), timm:NAME (timm:resnet18) or "
        "hf:CLASS (hf:ResNetModel)",
    )
    g.add_argument(
        "--weights",
        metavar="NAME",
        help="pretrained weights, downloaded if not cached: torchvision's DEFAULT or "
        "IMAGENET1K_V2; 'pretrained' or a tag for timm; a Hub id or local directory for hf; "
        "default: random weights, nothing downloaded",
    )
    g.add_argument(
        "--checkpoint",
        metavar="PATH",
        type=path_arg,
        help="a state dict saved with torch.save(model.state_dict(), PATH); keys must match",
    )
    g.add_argument(
        "--model-class",
        metavar="MODULE:CLASS",
        type=path_arg,
        help="your own nn.Module class (or file.py:Class), built with no arguments",
    )
    g.add_argument(
        "--config",
        metavar="FILE.json",
        type=path_arg,
        help="a local transformers config for hf:CLASS (default: the class's default config)",
    )
    g.add_argument(
        "--input-size",
        type=input_size_arg,
        metavar="N|HxW",
        help="input size without torchvision --weights (default: the model's own, else 224: "
        "resize + centre crop + mean/std); torchvision --weights bring their own transforms",
    )
    g.add_argument(
        "--input-channels",
        type=positive_int,
        metavar="N",
        help="channels of the input made from the image (default: 1 when the first conv takes "
        "1, else 3, RGB; a forward that asks for another count is retried with it; other N: "
        "the RGB channels repeated, channel i being colour i %% 3, or cut)",
    )
    g.add_argument(
        "--frames",
        type=positive_int,
        metavar="T",
        help="video models (a Conv3d first): the clip's length, the image repeated, laid out "
        "(N, C, T, H, W) (default: the weights' clip length, else 8)",
    )
    g.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument(
        "--layers",
        action="append",
        metavar="PATTERN",
        help="conv layers by qualified name or glob, e.g. 'layer1.*' (repeat or comma-separate; "
        "default: all)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    return p


def output_options() -> Parser:
    p = Parser(add_help=False)
    g = p.add_argument_group("output")
    g.add_argument(
        "--out",
        metavar="DIR",
        type=path_arg,
        help=f"write PNG figures here (default: ./{DEFAULT_OUT} unless --logdir is given)",
    )
    g.add_argument(
        "--logdir",
        metavar="DIR",
        type=path_arg,
        help="write TensorBoard logs here: a directory or an fsspec URL (s3://bucket/runs; "
        "needs pip install torch-featureviz[remote] and the URL's filesystem, e.g. s3fs)",
    )
    return p


class Parents:
    """The option groups commands share, handed to each command's registration function."""

    def __init__(self) -> None:
        self.model = model_options()
        self.output = output_options()
        self.formatting: dict[str, Any] = {
            "formatter_class": argparse.RawDescriptionHelpFormatter,
            "epilog": EPILOG,
        }
