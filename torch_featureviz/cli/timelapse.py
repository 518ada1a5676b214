"""``featureviz timelapse LOGDIR``: one layer over training as an animated GIF."""

from __future__ import annotations

import argparse
from typing import Any

from torch_featureviz.cli.common import EXIT_OK, say, user_input, wrap
from torch_featureviz.cli.loading import Parents


def run(args: argparse.Namespace) -> int:
    from torch_featureviz.viewer.timelapse import write_timelapse

    with user_input():
        path = write_timelapse(
            args.logdir, args.layer, args.output, view=args.view, prefix=args.prefix
        )
    say(args, f"wrote {path}")
    return EXIT_OK


def register(sub: Any, parents: Parents) -> None:
    p = sub.add_parser(
        "timelapse",
        help="one layer over training as an animated GIF, from the event files",
        description=wrap(
            "Write an animated GIF of one layer's filters or feature maps over training, "
            "each frame labelled with its step, read from the TensorBoard event files alone "
            "(no model, no rerun)."
        ),
        **parents.formatting,
    )
    p.add_argument("logdir", metavar="LOGDIR", help="the run's log directory")
    p.add_argument("--layer", required=True, metavar="NAME", help="layer name, e.g. conv1")
    p.add_argument(
        "--view",
        choices=("filters", "hook", "probe", "chain"),
        default="filters",
        help="filters, or the maps of the training batch (hook), probe or chain (default: filters)",
    )
    p.add_argument("--prefix", metavar="NAME", help="the monitor's name, when a run has several")
    p.add_argument(
        "-o",
        "--output",
        metavar="PATH",
        help="the GIF to write (default: LOGDIR/timelapse_<view>_<layer>.gif)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    p.set_defaults(func=run)
