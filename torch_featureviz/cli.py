"""The ``featureviz`` command: argument parsing and one-line errors, then the library.

Commands::

    featureviz info MODEL       the Extractor summary and a table of every conv layer
    featureviz filters MODEL    filter grids as figures (--out) and/or TensorBoard logs (--logdir)
    featureviz maps MODEL       feature maps of an image, hook mode, chain mode or both compared
    featureviz demo ...         the built-in training demo (torch_featureviz.demo)
    featureviz bench ...        the benchmarks (benchmarks/bench_featureviz.py, source checkout)

MODEL is a torchvision model name (``featureviz info resnet50``), ``timm:NAME`` (``timm:resnet18``,
needs the ``timm`` extra) or ``hf:CLASS`` (``hf:ResNetModel``, needs the ``hf`` extra; ``--config
FILE.json`` for a config other than the class's default); ``--model-class module:Class`` builds
your own model instead. ``--weights`` (downloaded) or ``--checkpoint`` (a state dict) set the
weights; otherwise they are random and nothing is downloaded, detection backbones included.

The input is built from the image, never from what the first conv seems to expect: 3 channels
(RGB) unless ``--input-channels N`` says otherwise (1: grayscale; other N: the RGB channels
repeated, channel i being colour i % 3, or cut). Only the model's forward decides whether it
fits; when it does not, the error says what failed and, if the size or the channels are the
problem, which option to change.

Exit codes:

- 0: success.
- 1: an unexpected internal error (one line; ``--traceback`` shows where it happened).
- 2: bad input: a usage error, a missing, unreadable, non-image, oversized or truncated image, an
  unknown model, class or weights name, a missing optional extra (timm, transformers), a model
  that cannot be built, weights that cannot be downloaded, a checkpoint that is not a state dict
  or whose keys do not match, a layer pattern that matches nothing, an output directory that
  cannot be written, a model whose forward fails on the input.
- 130: interrupted (Ctrl-C).

Every error is one line on stderr, never a traceback (unless ``--traceback``). ``--quiet``
silences everything but errors; otherwise a progress bar runs on stderr across layers.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import sys
import textwrap
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, NoReturn

import torch_featureviz

__all__ = ["build_parser", "main"]

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

_EPILOG = """\
exit codes:
  0    success
  1    unexpected internal error (one line; add --traceback for details)
  2    bad input: usage, image file (missing, not an image, truncated), unknown model or
       weights name, a missing extra (timm, transformers), no network for --weights,
       checkpoint keys that do not match, a layer pattern that matches nothing, an output
       directory that cannot be written, a forward pass that fails on the input
  130  interrupted

Run 'featureviz COMMAND --help' for a command's options."""

_DEFAULT_OUT = "featureviz-out"


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr, exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    if isinstance(e, KeyError) and text.startswith(("'", '"')):
        text = text[1:-1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(lines[:2]) if lines else type(e).__name__


@contextmanager
def _user_input(prefix: str = "") -> Iterator[None]:
    """Turn the library's ValueError/TypeError/OSError for user input into a UsageError."""
    try:
        yield
    except UsageError:
        raise
    except (ValueError, TypeError, OSError) as e:
        raise UsageError(prefix + _one_line(e)) from e


def _say(args: argparse.Namespace, *lines: str) -> None:
    if not getattr(args, "quiet", False):
        for line in lines:
            print(line)


def _warn(args: argparse.Namespace, message: str) -> None:
    if not getattr(args, "quiet", False):
        print(f"featureviz: warning: {message}", file=sys.stderr)


@contextmanager
def _progress(args: argparse.Namespace, desc: str) -> Iterator[Callable[[str, int, int], None]]:
    """A progress bar on stderr across layers, as the library's ``progress`` callback."""
    from tqdm import tqdm

    bars: list[Any] = []  # made at the first layer: an error before it shows no empty bar

    def update(name: str, done: int, total: int) -> None:
        if not bars:
            bars.append(
                tqdm(
                    desc=desc,
                    total=total,
                    unit="layer",
                    file=sys.stderr,
                    disable=bool(getattr(args, "quiet", False)),
                    leave=False,
                    dynamic_ncols=True,
                )
            )
        bars[0].update(done - bars[0].n)

    try:
        yield update
    finally:
        for bar in bars:
            bar.close()


# -- argument types -------------------------------------------------------------------------------


def _input_size(text: str) -> int | tuple[int, int]:
    parts = text.lower().replace("*", "x").split("x")
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a size such as 224 or 224x160, got {text!r}"
        ) from None
    if len(sizes) not in (1, 2) or any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"expected a size such as 224 or 224x160, got {text!r}")
    return sizes[0] if len(sizes) == 1 else (sizes[0], sizes[1])


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _path(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    return text


def _cmap(text: str) -> str:
    from torch_featureviz._validation import check_cmap

    try:
        check_cmap(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _filter_channel(text: str) -> str | int:
    if text in ("auto", "rgb", "mean", "strongest"):
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected auto, rgb, mean, strongest or an input-channel index, got {text!r}"
        ) from None


# -- shared steps ---------------------------------------------------------------------------------


def _patterns(args: argparse.Namespace) -> list[str] | None:
    raw = getattr(args, "layers", None)
    if not raw:
        return None
    return [p.strip() for item in raw for p in item.split(",") if p.strip()]


def _device(args: argparse.Namespace) -> Any:
    import torch

    try:
        device = torch.device(args.device)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device: unknown device {args.device!r}; use cpu or cuda.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA GPU is available here; use --device cpu.")
    return device


def _load(args: argparse.Namespace) -> Any:
    from torch_featureviz.models import load_model

    if args.model is None and args.model_class is None:
        raise UsageError(
            "give a model name (e.g. resnet18, timm:resnet18 or hf:ResNetModel) or --model-class."
        )
    if args.model is not None and args.model_class is not None:
        raise UsageError(
            f"give either MODEL ({args.model!r}) or --model-class ({args.model_class!r}), not both."
        )
    with _user_input():
        loaded = load_model(
            args.model,
            weights=args.weights,
            checkpoint=args.checkpoint,
            model_class=args.model_class,
            config=args.config,
            input_size=args.input_size,
            progress=not args.quiet,
        )
    loaded.model.to(_device(args))
    return loaded


def _select_layers(model: Any, args: argparse.Namespace) -> dict[str, Any]:
    from torch_featureviz.discovery import find_conv_layers

    with _user_input("--layers: " if _patterns(args) else ""):
        return find_conv_layers(model, include=_patterns(args))


def _outputs(args: argparse.Namespace) -> tuple[Path | None, Path | None]:
    """The figure directory and the TensorBoard directory, both checked writable up front."""
    from torch_featureviz._validation import check_writable_dir

    out = args.out
    if out is None and args.logdir is None:
        out = _DEFAULT_OUT
    dirs: list[Path | None] = []
    for value, flag in ((out, "--out"), (args.logdir, "--logdir")):
        if value is None:
            dirs.append(None)
            continue
        path = Path(value)
        with _user_input(f"{flag}: "):
            check_writable_dir(path)
        dirs.append(path)
    return dirs[0], dirs[1]


#: Forward errors that mean "this input size does not fit the model": a linear head after a
#: flatten, a pooling or kernel that runs out of pixels, a fixed-size ViT, a U-Net's odd sizes.
_SIZE_ERRORS = re.compile(
    r"mat1 and mat2 shapes cannot be multiplied|output size is too small|kernel size can't be "
    r"greater than actual input size|input image size|image size .*doesn't match|"
    r"sizes of tensors must match|must match the size of tensor b|padding size should be less",
    re.IGNORECASE,
)


def _forward_error(e: BaseException, args: argparse.Namespace) -> UsageError:
    """The model's forward failed on the input: say what failed, and the option to change."""
    text = _one_line(e)
    if _SIZE_ERRORS.search(text):
        hint = "; try another --input-size (most ImageNet models take 224)"
    elif "channel" in text.lower():
        hint = f"; the input has {args.input_channels} channels: try another --input-channels"
    else:
        hint = ""
    return UsageError(f"{text}{hint}.")


@contextmanager
def _forward(args: argparse.Namespace) -> Iterator[None]:
    """A probe pass: the model's forward failing (RuntimeError), or the input refused before it
    (ValueError), becomes a one-line error with a hint where one helps."""
    try:
        with _user_input():
            yield
    except UsageError as e:
        if isinstance(e.__cause__, ValueError):
            raise _forward_error(e.__cause__, args) from e.__cause__
        raise
    except RuntimeError as e:
        raise _forward_error(e, args) from e


def _size_text(size: int | tuple[int, int]) -> str:
    return f"{size}x{size}" if isinstance(size, int) else f"{size[0]}x{size[1]}"


# -- info -----------------------------------------------------------------------------------------


def _output_sizes(
    model: Any, args: argparse.Namespace, size: int | tuple[int, int], device: Any
) -> tuple[dict[str, tuple[int, ...]], dict[str, int]]:
    """Each conv's output shape from one real forward pass of zeros (the model is unchanged)."""
    import torch

    from torch_featureviz.capture import capture_feature_maps
    from torch_featureviz.naming import split_call_key

    h, w = (size, size) if isinstance(size, int) else size
    x = torch.zeros(1, args.input_channels, h, w, device=device)
    with _forward(args):
        maps = capture_feature_maps(model, x, max_channels=1)
    shapes: dict[str, tuple[int, ...]] = {}
    calls: dict[str, int] = {}
    for key, m in maps.items():
        name, _ = split_call_key(key)
        calls[name] = calls.get(name, 0) + 1
        shapes.setdefault(name, tuple(int(s) for s in m.shape[1:]))
    return shapes, calls


def _table(rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for k, row in enumerate(rows):
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def _cmd_info(args: argparse.Namespace) -> int:
    loaded = _load(args)
    model = loaded.model
    layers = _select_layers(model, args)
    info = torch_featureviz.Extractor(model).info()
    size = loaded.input_size
    shapes, calls = _output_sizes(model, args, size, next(model.parameters()).device)
    size_text = f"{args.input_channels}x{_size_text(size)}"
    rows = [["layer", "in->out", "kernel", "stride", "groups", f"output @ {size_text}"]]
    for name, conv in layers.items():
        out = "not run"
        if name in shapes:
            out = "x".join(str(n) for n in (conv.out_channels, *shapes[name]))
            if calls[name] > 1:
                out += f" ({calls[name]} calls)"
        rows.append(
            [
                name,
                f"{conv.in_channels}->{conv.out_channels}",
                "x".join(str(k) for k in conv.kernel_size),
                "x".join(str(s) for s in conv.stride),
                str(conv.groups),
                out,
            ]
        )
    if args.quiet:
        return EXIT_OK
    print(f"model: {loaded.description}")
    for key, value in info.items():
        print(f"{key}: {value}")
    print()
    for line in _table(rows, right={4}):
        print(line)
    print(f"\n{len(layers)} conv layers (output size from one forward pass of zeros).")
    return EXIT_OK


# -- filters --------------------------------------------------------------------------------------


def _writer(logdir: Path | None, **options: Any) -> Any:
    from torch_featureviz.tensorboard import TensorBoardWriter

    return TensorBoardWriter(logdir, **options) if logdir is not None else nullcontext()


def _say_written(args: argparse.Namespace, out: Path | None, logdir: Path | None, n: int) -> None:
    from torch_featureviz.tensorboard import tensorboard_command

    if out is not None:
        _say(args, f"wrote {n} figures to {out}")
    if logdir is not None:
        _say(args, f"wrote TensorBoard logs to {logdir}; view them with:")
        _say(args, f"  {tensorboard_command(logdir)}")


def _cmd_filters(args: argparse.Namespace) -> int:
    from torch_featureviz.figures import save_filter_figures

    loaded = _load(args)
    layers = _select_layers(loaded.model, args)
    out, logdir = _outputs(args)
    with _writer(logdir) as writer, _progress(args, "filters") as progress, _user_input():
        written = save_filter_figures(
            layers, out, channel=args.channel, max_filters=args.max_filters, writer=writer,
            progress=progress,
        )
    _say(args, f"model: {loaded.description}; {len(layers)} conv layers")
    _say_written(args, out, logdir, len(written))
    return EXIT_OK


# -- maps -----------------------------------------------------------------------------------------


def _cmd_maps(args: argparse.Namespace) -> int:
    import torch

    from torch_featureviz.chain import chain_feature_maps
    from torch_featureviz.discovery import Extractor
    from torch_featureviz.figures import (
        map_similarities,
        save_comparison_figures,
        save_feature_figures,
        save_grid_figure,
    )
    from torch_featureviz.images import load_image
    from torch_featureviz.render import to_display_image

    loaded = _load(args)
    if loaded.weights is not None and args.input_size is not None:
        _warn(
            args,
            f"--input-size is ignored with --weights: {loaded.weights} brings its own transforms.",
        )
    model = loaded.model
    layers = _select_layers(model, args)
    names = list(layers)
    if args.mode in ("chain", "both"):
        chain_names = set(Extractor(model).activate().CNN_names)
        names = [n for n in names if n in chain_names] if args.mode == "chain" else names
        if not any(n in chain_names for n in layers):
            raise UsageError(
                f"--mode {args.mode}: chain mode skips down-sample convs and the selected layers "
                f"({', '.join(list(layers)[:3])}) are all down-sample convs; choose other --layers."
            )
    out, logdir = _outputs(args)
    with _user_input():
        image = load_image(args.image, channels=args.input_channels)
    device = next(model.parameters()).device
    with _user_input("preprocessing the image failed: "):
        x = loaded.transform(image).to(device)
    hook: dict[str, torch.Tensor] = {}
    chain: dict[str, torch.Tensor] = {}
    if args.mode in ("hook", "both"):
        with _forward(args):
            hook = torch_featureviz.capture_feature_maps(
                model, x, names, max_channels=args.max_channels
            )
    if args.mode in ("chain", "both"):
        with _user_input("chain mode: "):
            full = chain_feature_maps(model, x, max_channels=args.max_channels)
        chain = {n: full[n] for n in names if n in full}
    similarity = map_similarities(chain, hook)

    written: list[Path] = []
    # The input as an image: its RGB channels (--input-channels N > 3 repeats them), or gray.
    shown = x[:, :3] if x.shape[1] >= 3 else x[:, :1]
    with _writer(logdir) as writer, _user_input():
        if out is not None:
            path = out / "input.png"
            written.append(save_grid_figure(to_display_image(shown), path, title="input"))
        if writer is not None:
            writer.log_image(shown, 0, name="image")
        for mode, maps in (("hook", hook), ("chain", chain)):
            if maps:
                with _progress(args, f"{mode} maps") as progress:
                    written += save_feature_figures(
                        maps, out, mode=mode, cmap=args.cmap, writer=writer, progress=progress
                    )
        if similarity:
            with _progress(args, "chain vs hook") as progress:
                written += save_comparison_figures(
                    chain, hook, out, similarity=similarity, cmap=args.cmap, writer=writer,
                    progress=progress,
                )

    _say(args, f"model: {loaded.description}; image: {args.image or 'built-in (Grace Hopper)'}")
    _say(args, f"input {tuple(x.shape)}; mode {args.mode}; {len(hook or chain)} layers")
    if similarity:
        rows = [["layer", "chain", "hook", "cosine"]]
        rows += [
            [n, "x".join(map(str, chain[n].shape)), "x".join(map(str, hook[n].shape)), f"{s:.3f}"]
            for n, s in similarity.items()
        ]
        _say(args, "chain vs hook (larger map average-pooled to the smaller size):")
        _say(args, *_table(rows, right={3}))
    _say_written(args, out, logdir, len(written))
    return EXIT_OK


# -- demo and bench -------------------------------------------------------------------------------


def _cmd_demo(args: argparse.Namespace, extra: list[str]) -> int:
    try:
        from torch_featureviz import demo
    except ImportError as e:
        if e.name in ("torch_featureviz.demo", None):
            raise UsageError(
                "the demo is not part of this installation (torch_featureviz.demo is missing)."
            ) from e
        raise UsageError(
            f"the demo needs {e.name!r}, which is not installed: pip install {e.name}"
        ) from e
    parser = _Parser(prog="featureviz demo", description=_DEMO_HELP)
    demo.add_demo_arguments(parser)
    demo_args = parser.parse_args(extra)
    with _user_input():
        return int(demo.run_demo(demo_args) or 0)


def bench_script() -> Path:
    """Where ``featureviz bench`` looks for the benchmark script (in a source checkout)."""
    root = Path(torch_featureviz.__file__).resolve().parents[1]
    return root / "benchmarks" / "bench_featureviz.py"


def _cmd_bench(args: argparse.Namespace, extra: list[str]) -> int:
    path = bench_script()
    if not path.is_file():
        raise UsageError(
            f"the benchmarks are not installed ({path} does not exist); 'featureviz bench' runs "
            "from a source checkout of torch_featureviz."
        )
    spec = importlib.util.spec_from_file_location("bench_featureviz", path)
    if spec is None or spec.loader is None:
        raise UsageError(f"cannot load {path} as a Python module.")
    module = importlib.util.module_from_spec(spec)
    folder = str(path.parent)
    added = folder not in sys.path
    if added:  # the script may import its sibling modules
        sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
        if not callable(getattr(module, "main", None)):
            raise UsageError(f"{path} has no main(argv) function.")
        return int(module.main(list(extra)) or 0)
    finally:
        if added and folder in sys.path:
            sys.path.remove(folder)


# -- parser ---------------------------------------------------------------------------------------

_DEMO_HELP = "train a small CNN on built-in data and log its filters and maps as it learns"
_BENCH_HELP = "run the benchmarks (needs a source checkout); arguments go to the bench script"


def _wrap(text: str) -> str:
    return textwrap.fill(text, width=88)


def _model_options() -> _Parser:
    p = _Parser(add_help=False)
    g = p.add_argument_group("model")
    g.add_argument(
        "model", nargs="?", metavar="MODEL",
        help="a torchvision model name (resnet18, fcn_resnet50), timm:NAME (timm:resnet18) or "
        "hf:CLASS (hf:ResNetModel)",
    )
    g.add_argument(
        "--weights", metavar="NAME",
        help="pretrained weights, downloaded if not cached: torchvision's DEFAULT or "
        "IMAGENET1K_V2; 'pretrained' or a tag for timm; a Hub id or local directory for hf; "
        "default: random weights, nothing downloaded",
    )
    g.add_argument(
        "--checkpoint", metavar="PATH", type=_path,
        help="a state dict saved with torch.save(model.state_dict(), PATH); keys must match",
    )
    g.add_argument(
        "--model-class", metavar="MODULE:CLASS", type=_path,
        help="your own nn.Module class (or file.py:Class), built with no arguments",
    )
    g.add_argument(
        "--config", metavar="FILE.json", type=_path,
        help="a local transformers config for hf:CLASS (default: the class's default config)",
    )
    g.add_argument(
        "--input-size", type=_input_size, metavar="N|HxW",
        help="input size without torchvision --weights (default: the model's own, else 224: "
        "resize + centre crop + mean/std); torchvision --weights bring their own transforms",
    )
    g.add_argument(
        "--input-channels", type=_positive_int, default=3, metavar="N",
        help="channels of the input made from the image (default 3, RGB; 1: grayscale; other "
        "N: the RGB channels repeated, channel i being colour i %% 3, or cut)",
    )
    g.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument(
        "--layers", action="append", metavar="PATTERN",
        help="conv layers by qualified name or glob, e.g. 'layer1.*' (repeat or comma-separate; "
        "default: all)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    return p


def _output_options() -> _Parser:
    p = _Parser(add_help=False)
    g = p.add_argument_group("output")
    g.add_argument(
        "--out", metavar="DIR", type=_path,
        help=f"write PNG figures here (default: ./{_DEFAULT_OUT} unless --logdir is given)",
    )
    g.add_argument("--logdir", metavar="DIR", type=_path, help="write TensorBoard logs here")
    return p


class Parents:
    """The option groups commands share, handed to each command's registration function."""

    def __init__(self) -> None:
        self.model = _model_options()
        self.output = _output_options()
        self.formatting: dict[str, Any] = {
            "formatter_class": argparse.RawDescriptionHelpFormatter,
            "epilog": _EPILOG,
        }


def _add_info(sub: Any, parents: Parents) -> None:
    p = sub.add_parser(
        "info", parents=[parents.model],
        help="the Extractor summary and a table of every conv layer",
        description=_wrap(
            "Print the Extractor summary and, for every conv layer, its channels, kernel, "
            "stride, groups and output size (from one forward pass of zeros at --input-size "
            "with --input-channels; the model is left unchanged)."
        ),
        **parents.formatting,
    )
    p.set_defaults(func=_cmd_info)


def _add_filters(sub: Any, parents: Parents) -> None:
    p = sub.add_parser(
        "filters", parents=[parents.model, parents.output],
        help="filter grids as figures and/or TensorBoard",
        description=_wrap(
            "Render every conv layer's filters: first layers as RGB, deeper ones as the mean "
            "over input channels (see --filter-channel)."
        ),
        **parents.formatting,
    )
    p.add_argument(
        "--filter-channel", "--channel", dest="channel", type=_filter_channel, default="auto",
        help="how a filter's input channels become a tile: auto (rgb for 3 inputs, else mean), "
        "rgb, mean, strongest, or an input-channel index (checked on every selected layer)",
    )
    p.add_argument(
        "--max-filters", type=_positive_int, default=64, metavar="N",
        help="filters shown per layer (default 64)",
    )
    p.set_defaults(func=_cmd_filters)


def _add_maps(sub: Any, parents: Parents) -> None:
    p = sub.add_parser(
        "maps", parents=[parents.model, parents.output],
        help="feature maps of an image (hook, chain or both)",
        description=_wrap(
            "Feature maps of an image. hook: the real activations of each conv (forward "
            "hooks). chain: the original article's procedure, the convs applied one after "
            "another, skipping everything between them. both: the two side by side, and a "
            "per-layer cosine similarity between them (where sizes differ, e.g. chain maps at "
            "twice the resolution, the larger map is average-pooled to the smaller size first)."
        ),
        **parents.formatting,
    )
    p.add_argument(
        "--image", metavar="PATH", type=_path,
        help="a PNG or JPEG (default: the built-in photo of Grace Hopper from matplotlib)",
    )
    p.add_argument(
        "--mode", choices=("hook", "chain", "both"), default="hook", help="default: hook"
    )
    p.add_argument(
        "--max-channels", type=_positive_int, default=64, metavar="N",
        help="channels shown per layer (default 64)",
    )
    p.add_argument(
        "--cmap", metavar="NAME", type=_cmap, help="matplotlib colormap (default: grayscale)"
    )
    p.set_defaults(func=_cmd_maps)


def _add_demo(sub: Any, parents: Parents) -> None:
    p = sub.add_parser("demo", help=_DEMO_HELP, add_help=False)
    p.set_defaults(func=_cmd_demo, passthrough=True)


def _add_bench(sub: Any, parents: Parents) -> None:
    p = sub.add_parser("bench", help=_BENCH_HELP, add_help=False)
    p.set_defaults(func=_cmd_bench, passthrough=True)


# -- timelapse ------------------------------------------------------------------------------------


def _cmd_timelapse(args: argparse.Namespace) -> int:
    from torch_featureviz.timelapse import write_timelapse

    with _user_input():
        path = write_timelapse(
            args.logdir, args.layer, args.output, view=args.view, prefix=args.prefix
        )
    _say(args, f"wrote {path}")
    return EXIT_OK


def _add_timelapse(sub: Any, parents: Parents) -> None:
    p = sub.add_parser(
        "timelapse", help="one layer over training as an animated GIF, from the event files",
        description=_wrap(
            "Write an animated GIF of one layer's filters or feature maps over training, "
            "each frame labelled with its step, read from the TensorBoard event files alone "
            "(no model, no rerun)."
        ),
        **parents.formatting,
    )
    p.add_argument("logdir", metavar="LOGDIR", help="the run's log directory")
    p.add_argument("--layer", required=True, metavar="NAME", help="layer name, e.g. conv1")
    p.add_argument(
        "--view", choices=("filters", "hook", "probe", "chain"), default="filters",
        help="filters, or the maps of the training batch (hook), probe or chain (default: filters)",
    )
    p.add_argument("--prefix", metavar="NAME", help="the monitor's name, when a run has several")
    p.add_argument(
        "-o", "--output", metavar="PATH",
        help="the GIF to write (default: LOGDIR/timelapse_<view>_<layer>.gif)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    p.set_defaults(func=_cmd_timelapse)


#: Each command registers itself: ``add(subparsers, parents)`` adds its parser and sets
#: ``func`` (``func(args) -> exit code``; with ``passthrough=True``, ``func(args, extra)``
#: gets the arguments it parses itself). A new command is one function and one entry here.
COMMANDS: list[Callable[[Any, Parents], None]] = [
    _add_info, _add_filters, _add_maps, _add_timelapse, _add_demo, _add_bench,
]


def build_parser() -> argparse.ArgumentParser:
    """The ``featureviz`` argument parser (``demo`` and ``bench`` parse their own arguments)."""
    parser = _Parser(
        prog="featureviz",
        description="See what a CNN's conv layers learned (filters) and compute (feature maps).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {torch_featureviz.__version__}"
    )
    parser.add_argument(
        "--traceback", action="store_true", help="show the full traceback of an internal error"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    parents = Parents()
    for add in COMMANDS:
        add(sub, parents)
    parser.set_defaults(commands=tuple(sub.choices))
    return parser


def _format_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    line: str | None = None,
) -> str:
    return f"featureviz: warning: {_one_line(Exception(str(message)))}\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``featureviz`` command and return its exit code (see the module docstring)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    passthrough = getattr(args, "passthrough", False)
    if extra and not passthrough:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        names = list(args.commands)
        parser.error(f"choose a command: {', '.join(names[:-1])} or {names[-1]}")
    old_format = warnings.formatwarning
    warnings.formatwarning = _format_warning  # one line per warning, like the errors
    try:
        return int(args.func(args, extra) if passthrough else args.func(args))
    except UsageError as e:
        print(f"featureviz: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("featureviz: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`featureviz info resnet50 | head`): stop quietly, and keep
        # Python from complaining again when it flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_INTERNAL
    except Exception as e:
        if args.traceback:
            raise
        print(
            f"featureviz: internal error: {type(e).__name__}: {_one_line(e)} "
            "(rerun with --traceback for details)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL
    finally:
        warnings.formatwarning = old_format


if __name__ == "__main__":
    sys.exit(main())
