"""The ``featureviz`` parser and entry point: each subcommand registers itself in ``COMMANDS``."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch_featureviz
from torch_featureviz.cli import bench, demo, examples, filters, info, maps, timelapse
from torch_featureviz.cli.common import (
    EPILOG,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    Parser,
    UsageError,
    one_line,
)
from torch_featureviz.cli.loading import Parents

__all__ = ["COMMANDS", "build_parser", "main"]

#: Each command registers itself: ``add(subparsers, parents)`` adds its parser and sets
#: ``func`` (``func(args) -> exit code``; with ``passthrough=True``, ``func(args, extra)``
#: gets the arguments it parses itself). A new command is one function and one entry here.
COMMANDS: list[Callable[[Any, Parents], None]] = [
    info.register,
    filters.register,
    maps.register,
    examples.register,
    timelapse.register,
    demo.register,
    bench.register,
]


def build_parser() -> argparse.ArgumentParser:
    """The ``featureviz`` argument parser (``demo`` and ``bench`` parse their own arguments).

    Example::

        >>> args = build_parser().parse_args(["info", "resnet18", "--layers", "layer1.*"])
        >>> args.func.__module__, args.layers
        ('torch_featureviz.cli.info', ['layer1.*'])
    """
    parser = Parser(
        prog="featureviz",
        description="See what a CNN's conv layers learned (filters) and compute (feature maps).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {torch_featureviz.__version__}"
    )
    parser.add_argument(
        "--traceback", action="store_true", help="show the full traceback of an internal error"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
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
    return f"featureviz: warning: {one_line(Exception(str(message)))}\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``featureviz`` command and return its exit code (see :mod:`torch_featureviz.cli`).

    Example::

        >>> main(["info", "no_such_model"])  # a one-line error on stderr, exit code 2
        2
    """
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
            f"featureviz: internal error: {type(e).__name__}: {one_line(e)} "
            "(rerun with --traceback for details)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL
    finally:
        warnings.formatwarning = old_format

