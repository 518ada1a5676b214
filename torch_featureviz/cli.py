"""The ``featureviz`` command: argument parsing and one-line errors, then the library.

Commands::

    featureviz info MODEL       the Extractor summary and a table of every conv layer
    featureviz filters MODEL    filter grids as figures (--out) and/or TensorBoard logs (--logdir)
    featureviz maps MODEL       feature maps of an image, hook mode, chain mode or both compared
    featureviz demo ...         the built-in training demo (torch_featureviz.demo)
    featureviz bench ...        the benchmarks (benchmarks/bench_featureviz.py, source checkout)

MODEL is a torchvision model name (``featureviz info resnet50``); ``--model-class module:Class``
builds your own model instead. ``--weights`` (torchvision weights, downloaded) or
``--checkpoint`` (a state dict) set the weights; otherwise they are random.

Exit codes:

- 0: success.
- 1: an unexpected internal error (one line; ``--traceback`` shows where it happened).
- 2: bad input: a usage error, a missing, unreadable, non-image or truncated image, an unknown
  model or weights name, weights that cannot be downloaded, a checkpoint that is not a state dict
  or whose keys do not match, a layer pattern that matches nothing, an output directory that
  cannot be written, a model that fails on the input size.
- 130: interrupted (Ctrl-C).

Every error is one line on stderr, never a traceback (unless ``--traceback``). ``--quiet``
silences everything but errors; otherwise a progress bar runs on stderr across layers.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import sys
import textwrap
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import torch_featureviz

__all__ = ["build_parser", "main"]

T = TypeVar("T")

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

_EPILOG = """\
exit codes:
  0    success
  1    unexpected internal error (one line; add --traceback for details)
  2    bad input: usage, image file (missing, not an image, truncated), unknown model or
       weights name, no network for --weights, checkpoint keys that do not match, a layer
       pattern that matches nothing, an output directory that cannot be written
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


def _progress(args: argparse.Namespace, items: Iterable[T], desc: str, total: int) -> Iterable[T]:
    from tqdm import tqdm

    return tqdm(
        items,
        desc=desc,
        total=total,
        unit="layer",
        file=sys.stderr,
        disable=bool(getattr(args, "quiet", False)),
        leave=False,
        dynamic_ncols=True,
    )


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

    size = args.input_size if args.input_size is not None else 224
    if args.model is None and args.model_class is None:
        raise UsageError("give a torchvision model name (e.g. resnet18) or --model-class.")
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
            input_size=size,
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


def _first_in_channels(layers: dict[str, Any]) -> int:
    return int(next(iter(layers.values())).in_channels)


# -- info -----------------------------------------------------------------------------------------


def _output_sizes(model: Any, in_channels: int, size: int | tuple[int, int], device: Any) -> Any:
    """Each conv's output shape from one real forward pass of zeros (the model is unchanged)."""
    import torch

    from torch_featureviz.capture import capture_feature_maps

    h, w = (size, size) if isinstance(size, int) else size
    x = torch.zeros(1, in_channels, h, w, device=device)
    try:
        maps = capture_feature_maps(model, x, max_channels=1)
    except RuntimeError as e:
        raise UsageError(
            f"{_one_line(e)}; try another --input-size (most ImageNet models take 224)."
        ) from e
    shapes: dict[str, tuple[int, int]] = {}
    calls: dict[str, int] = {}
    for key, m in maps.items():
        name = key.split("#", 1)[0]
        calls[name] = calls.get(name, 0) + 1
        shapes.setdefault(name, (int(m.shape[-2]), int(m.shape[-1])))
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
    size = args.input_size if args.input_size is not None else 224
    all_layers = _select_layers(model, argparse.Namespace(layers=None))
    shapes, calls = _output_sizes(
        model, _first_in_channels(all_layers), size, next(model.parameters()).device
    )
    size_text = f"{size}x{size}" if isinstance(size, int) else f"{size[0]}x{size[1]}"
    rows = [["layer", "in->out", "kernel", "stride", "groups", f"output @ {size_text}"]]
    for name, conv in layers.items():
        out = "not run"
        if name in shapes:
            h, w = shapes[name]
            out = f"{conv.out_channels}x{h}x{w}"
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


def _cmd_filters(args: argparse.Namespace) -> int:
    from torch_featureviz.figures import _unique_stem, save_grid_figure, save_overview
    from torch_featureviz.render import make_filter_grid
    from torch_featureviz.tensorboard import TensorBoardWriter, tensorboard_command

    loaded = _load(args)
    layers = _select_layers(loaded.model, args)
    out, logdir = _outputs(args)
    with _user_input():
        grids = {
            name: make_filter_grid(conv, channel=args.channel, max_filters=args.max_filters)
            for name, conv in layers.items()
        }
    written: list[Path] = []
    writer = TensorBoardWriter(logdir, max_filters=args.max_filters) if logdir else None
    try:
        used: set[str] = set()
        for name in _progress(args, list(layers), "filters", len(layers)):
            conv = layers[name]
            if out is not None:
                title = f"{name}: filters {tuple(conv.weight.shape)}"
                path = out / f"filters_{_unique_stem(name, used)}.png"
                written.append(save_grid_figure(grids[name], path, title=title))
            if writer is not None:
                writer.log_grid(f"filters/{torch_featureviz.layer_tag(name)}", grids[name], 0)
        if out is not None:
            written.append(save_overview(grids, out / "filters_overview.png", title="Filters"))
    finally:
        if writer is not None:
            writer.close()
    _say(args, f"model: {loaded.description}; {len(layers)} conv layers")
    if out is not None:
        _say(args, f"wrote {len(written)} figures to {out}")
    if logdir is not None:
        _say(args, f"wrote TensorBoard logs to {logdir}; view them with:")
        _say(args, f"  {tensorboard_command(logdir)}")
    return EXIT_OK


# -- maps -----------------------------------------------------------------------------------------


def _cmd_maps(args: argparse.Namespace) -> int:
    import torch

    from torch_featureviz.chain import chain_feature_maps
    from torch_featureviz.discovery import Extractor
    from torch_featureviz.figures import (
        _unique_stem,
        map_similarity,
        save_comparison_figure,
        save_grid_figure,
        save_overview,
        save_similarity_figure,
    )
    from torch_featureviz.images import load_image
    from torch_featureviz.render import make_feature_grid, to_display_image
    from torch_featureviz.tensorboard import TensorBoardWriter, layer_tag, tensorboard_command

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
    in_ch = _first_in_channels(_select_layers(model, argparse.Namespace(layers=None)))
    with _user_input():
        image = load_image(args.image, channels=3 if in_ch != 1 else 1)
    device = next(model.parameters()).device
    with _user_input("preprocessing the image failed: "):
        x = loaded.transform(image).to(device)
    if x.shape[1] != in_ch:
        raise UsageError(
            f"the model's first conv expects {in_ch} input channels, the image has {x.shape[1]}."
        )
    max_ch = args.max_channels
    hook: dict[str, torch.Tensor] = {}
    chain: dict[str, torch.Tensor] = {}
    if args.mode in ("hook", "both"):
        try:
            hook = torch_featureviz.capture_feature_maps(model, x, names, max_channels=max_ch)
        except RuntimeError as e:
            raise UsageError(_one_line(e)) from e
    if args.mode in ("chain", "both"):
        with _user_input("chain mode: "):
            full = chain_feature_maps(model, x, max_channels=max_ch)
        chain = {n: full[n] for n in names if n in full}
    similarity = {n: map_similarity(chain[n], hook[n]) for n in chain if n in hook}

    written: list[Path] = []
    writer = TensorBoardWriter(logdir) if logdir else None
    try:
        if out is not None:
            written.append(save_grid_figure(to_display_image(x), out / "input.png", title="input"))
        if writer is not None:
            writer.log_image(x, 0, name="image")
        for mode, maps in (("hook", hook), ("chain", chain)):
            if not maps:
                continue
            grids: dict[str, torch.Tensor] = {}
            used: set[str] = set()
            for name in _progress(args, list(maps), f"{mode} maps", len(maps)):
                grid = make_feature_grid(maps[name], cmap=args.cmap)
                grids[name] = grid
                if out is not None:
                    title = f"{name}: {mode} maps {tuple(maps[name].shape)}"
                    path = out / f"maps_{mode}_{_unique_stem(name, used)}.png"
                    written.append(save_grid_figure(grid, path, title=title))
                if writer is not None:
                    writer.log_grid(f"feature_maps/{mode}/{layer_tag(name)}", grid, 0)
            if out is not None:
                title = f"Feature maps ({mode} mode)"
                written.append(save_overview(grids, out / f"maps_{mode}_overview.png", title=title))
        if similarity:
            used = set()
            for name in _progress(args, list(similarity), "chain vs hook", len(similarity)):
                if out is not None:
                    path = out / f"compare_{_unique_stem(name, used)}.png"
                    written.append(
                        save_comparison_figure(
                            name, chain[name], hook[name], path,
                            similarity=similarity[name], cmap=args.cmap,
                        )
                    )
            if out is not None:
                written.append(save_similarity_figure(similarity, out / "similarity.png"))
            if writer is not None:
                for i, value in enumerate(similarity.values()):
                    if math.isfinite(value):
                        writer.log_scalar("chain_vs_hook/cosine_similarity", value, i)
    finally:
        if writer is not None:
            writer.close()

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
    if out is not None:
        _say(args, f"wrote {len(written)} figures to {out}")
    if logdir is not None:
        _say(args, f"wrote TensorBoard logs to {logdir}; view them with:")
        _say(args, f"  {tensorboard_command(logdir)}")
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
        help="a torchvision model name, e.g. resnet18 or mobilenet_v3_small",
    )
    g.add_argument(
        "--weights", metavar="NAME",
        help="torchvision weights, e.g. DEFAULT or IMAGENET1K_V2 (downloaded if not cached); "
        "default: random weights",
    )
    g.add_argument(
        "--checkpoint", metavar="PATH",
        help="a state dict saved with torch.save(model.state_dict(), PATH); keys must match",
    )
    g.add_argument(
        "--model-class", metavar="MODULE:CLASS",
        help="your own nn.Module class (or file.py:Class), built with no arguments",
    )
    g.add_argument(
        "--input-size", type=_input_size, metavar="N|HxW",
        help="input size without --weights (default 224: resize + centre crop + ImageNet "
        "mean/std); with --weights their own transforms are used",
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
        "--out", metavar="DIR",
        help=f"write PNG figures here (default: ./{_DEFAULT_OUT} unless --logdir is given)",
    )
    g.add_argument("--logdir", metavar="DIR", help="write TensorBoard logs here")
    return p


# -- timelapse ------------------------------------------------------------------------------------


def _cmd_timelapse(args: argparse.Namespace) -> int:
    from torch_featureviz.timelapse import write_timelapse

    with _user_input():
        path = write_timelapse(
            args.logdir, args.layer, args.output, view=args.view, prefix=args.prefix
        )
    _say(args, f"wrote {path}")
    return EXIT_OK


def _add_timelapse_parser(sub: Any, common: dict[str, Any]) -> None:
    p = sub.add_parser(
        "timelapse", help="one layer over training as an animated GIF, from the event files",
        description=_wrap(
            "Write an animated GIF of one layer's filters or feature maps over training, "
            "each frame labelled with its step, read from the TensorBoard event files alone "
            "(no model, no rerun)."
        ),
        epilog=_EPILOG, **common,
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
    model, output = _model_options(), _output_options()
    common: dict[str, Any] = {"formatter_class": argparse.RawDescriptionHelpFormatter}

    p = sub.add_parser(
        "info", parents=[model], help="the Extractor summary and a table of every conv layer",
        description=_wrap(
            "Print the Extractor summary and, for every conv layer, its channels, "
        "kernel, stride, groups and output size (from one forward pass of zeros at "
        "--input-size; the model is left unchanged)."
        ),
        epilog=_EPILOG, **common,
    )
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser(
        "filters", parents=[model, output], help="filter grids as figures and/or TensorBoard",
        description=_wrap(
            "Render every conv layer's filters: first layers as RGB, deeper ones as the "
        "mean over input channels (see --channel)."
        ),
        epilog=_EPILOG, **common,
    )
    p.add_argument(
        "--channel", type=_filter_channel, default="auto",
        help="how a filter's input channels become a tile: auto (rgb for 3 inputs, else mean), "
        "rgb, mean, strongest, or an input-channel index",
    )
    p.add_argument(
        "--max-filters", type=_positive_int, default=64, metavar="N",
        help="filters shown per layer (default 64)",
    )
    p.set_defaults(func=_cmd_filters)

    p = sub.add_parser(
        "maps", parents=[model, output], help="feature maps of an image (hook, chain or both)",
        description=_wrap(
            "Feature maps of an image. hook: the real activations of each conv "
        "(forward hooks). chain: the original article's procedure, the convs applied one after "
        "another, skipping everything between them. both: the two side by side, and a "
        "per-layer cosine similarity between them (where sizes differ, e.g. chain maps at twice "
        "the resolution, the larger map is average-pooled to the smaller size first)."
        ),
        epilog=_EPILOG, **common,
    )
    p.add_argument(
        "--image", metavar="PATH",
        help="a PNG or JPEG (default: the built-in photo of Grace Hopper from matplotlib)",
    )
    p.add_argument(
        "--mode", choices=("hook", "chain", "both"), default="hook", help="default: hook"
    )
    p.add_argument(
        "--max-channels", type=_positive_int, default=64, metavar="N",
        help="channels shown per layer (default 64)",
    )
    p.add_argument("--cmap", metavar="NAME", help="matplotlib colormap (default: grayscale)")
    p.set_defaults(func=_cmd_maps)
    _add_timelapse_parser(sub, common)

    p = sub.add_parser("demo", help=_DEMO_HELP, add_help=False)
    p.set_defaults(func=_cmd_demo, passthrough=True)
    p = sub.add_parser("bench", help=_BENCH_HELP, add_help=False)
    p.set_defaults(func=_cmd_bench, passthrough=True)
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
        parser.error("choose a command: info, filters, maps, timelapse, demo or bench")
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
