"""``featureviz maps MODEL``: feature maps of an image, hook mode, chain mode or both compared."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

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
from torch_featureviz.cli.infer import (
    as_clip,
    check_image_count,
    clip_frames,
    resolve_channels,
    with_channel_retry,
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


def _inputs_and_maps(
    args: argparse.Namespace, loaded: Any, names: list[str]
) -> tuple[list[Any], dict[str, Any]]:
    """The model's inputs made from the images (a clip for a video model, one per --image for
    a model taking several) and, but in chain mode, the hook-mode maps of one probe pass."""
    import torch

    from torch_featureviz.loading.images import load_image

    model = loaded.model
    resolve_channels(args, model)
    frames = clip_frames(args, model, loaded.weights)
    paths = list(args.image or [None])
    check_image_count(args, model, len(args.image or []))
    if len(paths) > 1 and args.mode != "hook":
        raise UsageError(f"--mode {args.mode} takes one --image; use --mode hook for several.")
    device = next(model.parameters()).device

    def probe(channels: int) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        xs = []
        for path in paths:
            with user_input():
                image = load_image(path, channels=channels)
            with user_input("preprocessing the image failed: "):
                xs.append(as_clip(loaded.transform(image).to(device), frames))
        if args.mode == "chain":
            return xs, {}
        with forward(args):
            inputs = xs[0] if len(xs) == 1 else tuple(xs)
            return xs, torch_featureviz.capture_feature_maps(
                model, inputs, names, max_channels=args.max_channels
            )

    return with_channel_retry(args, probe)


def _write_inputs(xs: list[Any], out: Path | None, writer: Any) -> list[Path]:
    """Each input as an image: its RGB channels (--input-channels N > 3 repeats them), or gray;
    a clip's first frame."""
    from torch_featureviz.render.figures import save_grid_figure
    from torch_featureviz.render.grids import to_display_image

    written = []
    for k, xk in enumerate(xs):
        shown = xk[:, :, 0] if xk.dim() == 5 else xk
        shown = shown[:, :3] if shown.shape[1] >= 3 else shown[:, :1]
        stem = "input" if k == 0 else f"input_{k + 1}"
        if out is not None:
            path = out / f"{stem}.png"
            written.append(save_grid_figure(to_display_image(shown), path, title=stem))
        if writer is not None:
            writer.log_image(shown, 0, name="image" if k == 0 else f"image_{k + 1}")
    return written


def run(args: argparse.Namespace) -> int:
    import torch

    from torch_featureviz.capture.chain import chain_feature_maps
    from torch_featureviz.capture.discovery import Extractor
    from torch_featureviz.render.figures import (
        map_similarities,
        save_comparison_figures,
        save_feature_figures,
    )

    loaded = load(args)
    if loaded.weights is not None and args.input_size is not None:
        warn(
            args,
            f"--input-size is ignored with --weights: {loaded.weights} brings its own transforms.",
        )
    model = loaded.model
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
    out, logdir = outputs(args)
    xs, hook = _inputs_and_maps(args, loaded, names)
    x = xs[0]
    chain: dict[str, torch.Tensor] = {}
    if args.mode in ("chain", "both"):
        with user_input("chain mode: "):
            full = chain_feature_maps(model, x, max_channels=args.max_channels)
        chain = {n: full[n] for n in names if n in full}
    similarity = map_similarities(chain, hook)

    written: list[Path] = []
    with writer_for(logdir) as writer, user_input():
        written += _write_inputs(xs, out, writer)
        for mode, maps in (("hook", hook), ("chain", chain)):
            if maps:
                with progress_bar(args, f"{mode} maps") as progress:
                    written += save_feature_figures(
                        maps, out, mode=mode, cmap=args.cmap, writer=writer, progress=progress
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

    shown_paths = ", ".join(args.image or ["built-in (Grace Hopper)"])
    say(args, f"model: {loaded.description}; image: {shown_paths}")
    shapes = " and ".join(str(tuple(xk.shape)) for xk in xs)
    say(args, f"input {shapes}; mode {args.mode}; {len(hook or chain)} layers")
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
        action="append",
        help="a PNG or JPEG (default: the built-in photo of Grace Hopper from matplotlib); "
        "repeat it for a model whose forward takes several images (RAFT, siamese nets): "
        "--image A --image B",
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
