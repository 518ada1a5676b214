"""``featureviz maps MODEL``: feature maps of an image, hook mode, chain mode or both compared."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch_featureviz
from torch_featureviz.cli.common import (
    EXIT_OK,
    UsageError,
    cmap_arg,
    path_arg,
    positive_int,
    progress_bar,
    say,
    table,
    user_input,
    warn,
    wrap,
)
from torch_featureviz.cli.loading import (
    Parents,
    forward,
    load,
    outputs,
    say_written,
    select_layers,
    writer_for,
)

if TYPE_CHECKING:
    import torch


def _layer_names(model: Any, args: argparse.Namespace) -> list[str]:
    """The selected layers, only those chain mode visits with ``--mode chain``."""
    from torch_featureviz.capture.discovery import Extractor

    layers = select_layers(model, args)
    names = list(layers)
    if args.mode in ("chain", "both"):
        chain_names = set(Extractor(model).activate().CNN_names)
        names = [n for n in names if n in chain_names] if args.mode == "chain" else names
        if not any(n in chain_names for n in layers):
            raise UsageError(
                f"--mode {args.mode}: chain mode skips down-sample convs and the selected layers "
                f"({', '.join(list(layers)[:3])}) are all down-sample convs; choose other --layers."
            )
    return names


def _capture(
    args: argparse.Namespace, model: Any, x: torch.Tensor, names: list[str]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The hook-mode and chain-mode maps ``--mode`` asks for (empty for a mode not asked)."""
    from torch_featureviz.capture.chain import chain_feature_maps

    hook: dict[str, torch.Tensor] = {}
    chain: dict[str, torch.Tensor] = {}
    if args.mode in ("hook", "both"):
        with forward(args):
            hook = torch_featureviz.capture_feature_maps(
                model, x, names, max_channels=args.max_channels
            )
    if args.mode in ("chain", "both"):
        with user_input("chain mode: "):
            full = chain_feature_maps(model, x, max_channels=args.max_channels)
        chain = {n: full[n] for n in names if n in full}
    return hook, chain


def _save(
    args: argparse.Namespace,
    x: torch.Tensor,
    maps: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]],
    similarity: dict[str, float],
    out: Path | None,
    logdir: Path | None,
) -> list[Path]:
    """Write the input, each mode's maps and the comparison as figures and/or logs."""
    from torch_featureviz.render.figures import (
        save_comparison_figures,
        save_feature_figures,
        save_grid_figure,
    )
    from torch_featureviz.render.grids import to_display_image

    hook, chain = maps
    written: list[Path] = []
    # The input as an image: its RGB channels (--input-channels N > 3 repeats them), or gray.
    shown = x[:, :3] if x.shape[1] >= 3 else x[:, :1]
    with writer_for(logdir) as writer, user_input():
        if out is not None:
            path = out / "input.png"
            written.append(save_grid_figure(to_display_image(shown), path, title="input"))
        if writer is not None:
            writer.log_image(shown, 0, name="image")
        for mode, mode_maps in (("hook", hook), ("chain", chain)):
            if mode_maps:
                with progress_bar(args, f"{mode} maps") as progress:
                    written += save_feature_figures(
                        mode_maps, out, mode=mode, cmap=args.cmap, writer=writer,
                        progress=progress,
                    )
        if similarity:
            with progress_bar(args, "chain vs hook") as progress:
                written += save_comparison_figures(
                    chain,
                    hook,
                    out,
                    similarity=similarity,
                    cmap=args.cmap,
                    writer=writer,
                    progress=progress,
                )
    return written


def run(args: argparse.Namespace) -> int:
    from torch_featureviz.loading.images import load_image
    from torch_featureviz.render.figures import map_similarities

    loaded = load(args)
    if loaded.weights is not None and args.input_size is not None:
        warn(
            args,
            f"--input-size is ignored with --weights: {loaded.weights} brings its own transforms.",
        )
    model = loaded.model
    names = _layer_names(model, args)
    out, logdir = outputs(args)
    with user_input():
        image = load_image(args.image, channels=args.input_channels)
    device = next(model.parameters()).device
    with user_input("preprocessing the image failed: "):
        x = loaded.transform(image).to(device)
    hook, chain = _capture(args, model, x, names)
    similarity = map_similarities(chain, hook)
    written = _save(args, x, (hook, chain), similarity, out, logdir)

    say(args, f"model: {loaded.description}; image: {args.image or 'built-in (Grace Hopper)'}")
    say(args, f"input {tuple(x.shape)}; mode {args.mode}; {len(hook or chain)} layers")
    if similarity:
        rows = [["layer", "chain", "hook", "cosine"]]
        rows += [
            [n, "x".join(map(str, chain[n].shape)), "x".join(map(str, hook[n].shape)), f"{s:.3f}"]
            for n, s in similarity.items()
        ]
        say(args, "chain vs hook (larger map average-pooled to the smaller size):")
        say(args, *table(rows, right={3}))
    say_written(args, out, logdir, len(written))
    return EXIT_OK


def register(sub: Any, parents: Parents) -> None:
    p = sub.add_parser(
        "maps",
        parents=[parents.model, parents.output],
        help="feature maps of an image (hook, chain or both)",
        description=wrap(
            "Feature maps of an image. hook: the real activations of each conv (forward "
            "hooks). chain: the original article's procedure, the convs applied one after "
            "another, skipping everything between them. both: the two side by side, and a "
            "per-layer cosine similarity between them (where sizes differ, e.g. chain maps at "
            "twice the resolution, the larger map is average-pooled to the smaller size first)."
        ),
        **parents.formatting,
    )
    p.add_argument(
        "--image",
        metavar="PATH",
        type=path_arg,
        help="a PNG or JPEG (default: the built-in photo of Grace Hopper from matplotlib)",
    )
    p.add_argument(
        "--mode", choices=("hook", "chain", "both"), default="hook", help="default: hook"
    )
    p.add_argument(
        "--max-channels",
        type=positive_int,
        default=64,
        metavar="N",
        help="channels shown per layer (default 64)",
    )
    p.add_argument(
        "--cmap", metavar="NAME", type=cmap_arg, help="matplotlib colormap (default: grayscale)"
    )
    p.set_defaults(func=run)
