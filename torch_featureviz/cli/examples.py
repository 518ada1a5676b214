"""``featureviz examples MODEL --images DIR``: each channel's top-k dataset examples."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch_featureviz.cli.common import (
    EXIT_OK,
    UsageError,
    path_arg,
    positive_int,
    say,
    user_input,
    warn,
    wrap,
)
from torch_featureviz.cli.loading import Parents, forward, load, patterns, writer_for

__all__ = ["image_files", "register", "run", "to_json"]

#: Image files taken from --images (by suffix, any case).
SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def image_files(folder: str) -> list[Path]:
    """Every image file under ``folder``, recursively, in sorted order."""
    root = Path(folder)
    if not root.is_dir():
        raise UsageError(f"--images: {folder!r} is not a directory.")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
    if not files:
        raise UsageError(
            f"--images: no image files ({', '.join(SUFFIXES)}) under {folder!r}."
        )
    return files


def _batches(
    args: argparse.Namespace, loaded: Any, files: list[Path], used: list[Path]
) -> Iterator[Any]:
    """Batches of preprocessed images with a progress bar; unreadable files are skipped with a
    warning (``used`` lists the files in stream order, so an example's index names its file)."""
    import torch
    from tqdm import tqdm

    from torch_featureviz.cli.infer import resolve_channels
    from torch_featureviz.loading.images import load_image

    resolve_channels(args, loaded.model)  # 1 for a grayscale first conv, as `maps` does
    device = next(loaded.model.parameters()).device
    pending: list[Any] = []
    bar = tqdm(files, desc="images", unit="image", file=sys.stderr, disable=args.quiet,
               leave=False, dynamic_ncols=True)
    try:
        for path in bar:
            try:
                image = load_image(path, channels=args.input_channels)
                x = loaded.transform(image)
            except (ValueError, OSError) as e:
                warn(args, f"skipping {path}: {e}")
                continue
            pending.append(x)
            used.append(path)
            if len(pending) == args.batch_size:
                yield torch.cat(pending).to(device)
                pending = []
        if pending:
            yield torch.cat(pending).to(device)
    finally:
        bar.close()


def to_json(examples: Any, files: list[Path], root: Path) -> dict[str, Any]:
    """``{layer: {channel (str): [{"file", "value", "box"}, ...]}}``, files relative to
    ``root``."""
    return {
        layer: {
            str(c): [
                {
                    "file": files[e.index].relative_to(root).as_posix(),
                    "value": e.value,
                    "box": list(e.box),
                }
                for e in exs
            ]
            for c, exs in per_channel.items()
        }
        for layer, per_channel in examples.items()
    }


def _figure_paths(out: Path, layers: list[str]) -> dict[str, Path]:
    from torch_featureviz.naming import unique_stems

    if len(layers) == 1:
        return {layers[0]: out}
    stems = unique_stems(layers)
    return {name: out.with_name(f"{out.stem}_{stems[name]}{out.suffix}") for name in layers}


def run(args: argparse.Namespace) -> int:
    from torch_featureviz._validation import check_writable_dir
    from torch_featureviz.meaning import (
        collect_examples,
        examples_figure_image,
        save_examples_figure,
    )
    from torch_featureviz.naming import layer_tag

    files = image_files(args.images)
    out = Path(args.output)
    with user_input("-o: "):
        if out.suffix.lower() not in (".png", ".pdf", ".svg", ".jpg", ".jpeg"):
            raise ValueError(f"expected a .png, .pdf, .svg or .jpg file, got {str(out)!r}.")
        check_writable_dir(out.parent)
        if args.json is not None:
            check_writable_dir(Path(args.json).parent)
        if args.logdir is not None:
            check_writable_dir(Path(args.logdir))
    loaded = load(args)
    used: list[Path] = []
    with forward(args):
        examples = collect_examples(
            loaded.model, _batches(args, loaded, files, used), k=args.k,
            layers=patterns(args), max_channels=args.max_channels,
        )
    if not used:
        raise UsageError(f"--images: none of the {len(files)} files under {args.images!r} "
                         "could be read as an image.")
    paths = _figure_paths(out, examples.layers)
    with user_input(), writer_for(Path(args.logdir) if args.logdir else None) as writer:
        for layer, path in paths.items():
            save_examples_figure(examples, layer, path, max_channels=args.rows)
            if writer is not None:
                image = examples_figure_image(examples, layer, max_channels=args.rows)
                writer.log_grid(writer.tag("summary", "examples", layer_tag(layer)), image, 0)
        if writer is not None:
            examples.save(Path(args.logdir) / "examples.pt")
    if args.json is not None:
        Path(args.json).write_text(json.dumps(to_json(examples, used, Path(args.images)), indent=1))
    say(args, f"model: {loaded.description}; {len(used)} images from {args.images}")
    say(args, f"top {args.k} examples of {len(examples)} layers; figures:")
    say(args, *(f"  {p}" for p in paths.values()))
    if args.json is not None:
        say(args, f"wrote {args.json}")
    if args.logdir is not None:
        say(args, f"wrote the figures and examples.pt to the TensorBoard run {args.logdir}")
    return EXIT_OK


def register(sub: Any, parents: Parents) -> None:
    p = sub.add_parser(
        "examples",
        parents=[parents.model],
        help="each channel's top-k dataset examples from a folder of images",
        description=wrap(
            "Each channel's top-k dataset examples: the images of a folder (recursively) that "
            "activate it most, each cut to the receptive field of the unit that fired (or the "
            "whole image with the region marked, where the field covers over half the input). "
            "One forward per batch; receptive fields are measured by a gradient probe."
        ),
        **parents.formatting,
    )
    p.add_argument("--images", metavar="DIR", type=path_arg, required=True,
                   help="a folder of images (PNG, JPEG, ...), searched recursively")
    p.add_argument("-k", type=positive_int, default=9, metavar="K",
                   help="examples per channel (default 9)")
    p.add_argument("-o", "--output", metavar="FILE", type=path_arg, default="examples.png",
                   help="the figure (default examples.png); with several layers one file per "
                   "layer, FILE's stem + _<layer>")
    p.add_argument("--json", metavar="FILE", type=path_arg,
                   help='write {layer: {channel: [{"file", "value", "box"}, ...]}} here')
    p.add_argument("--logdir", metavar="DIR", type=path_arg,
                   help="also log the figures (and examples.pt) to this TensorBoard run")
    p.add_argument("--max-channels", type=positive_int, default=64, metavar="N",
                   help="channels ranked per layer (default 64)")
    p.add_argument("--rows", type=positive_int, default=16, metavar="N",
                   help="channels shown per figure (default 16)")
    p.add_argument("--batch-size", type=positive_int, default=16, metavar="N",
                   help="images per forward (default 16)")
    p.set_defaults(func=run)
