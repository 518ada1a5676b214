"""``featureviz filters MODEL``: filter grids as figures and/or TensorBoard logs."""

from __future__ import annotations

import argparse
from typing import Any

from torch_featureviz.cli.common import (
    EXIT_OK,
    filter_channel_arg,
    positive_int,
    progress_bar,
    say,
    user_input,
    wrap,
)
from torch_featureviz.cli.loading import (
    Parents,
    load,
    outputs,
    say_written,
    select_layers,
    writer_for,
)


def run(args: argparse.Namespace) -> int:
    from torch_featureviz.render.figures import save_filter_figures

    loaded = load(args)
    layers = select_layers(loaded.model, args)
    out, logdir = outputs(args)
    with writer_for(logdir) as writer, progress_bar(args, "filters") as progress, user_input():
        written = save_filter_figures(
            layers,
            out,
            channel=args.channel,
            max_filters=args.max_filters,
            writer=writer,
            progress=progress,
        )
    say(args, f"model: {loaded.description}; {len(layers)} conv layers")
    say_written(args, out, logdir, len(written))
    return EXIT_OK


def register(sub: Any, parents: Parents) -> None:
    p = sub.add_parser(
        "filters",
        parents=[parents.model, parents.output],
        help="filter grids as figures and/or TensorBoard",
        description=wrap(
            "Render every conv layer's filters: first layers as RGB, deeper ones as the mean "
            "over input channels (see --filter-channel)."
        ),
        **parents.formatting,
    )
    p.add_argument(
        "--filter-channel",
        "--channel",
        dest="channel",
        type=filter_channel_arg,
        default="auto",
        help="how a filter's input channels become a tile: auto (rgb for 3 inputs, else mean), "
        "rgb, mean, strongest, or an input-channel index (checked on every selected layer)",
    )
    p.add_argument(
        "--max-filters",
        type=positive_int,
        default=64,
        metavar="N",
        help="filters shown per layer (default 64)",
    )
    p.set_defaults(func=run)
