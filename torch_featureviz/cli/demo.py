"""``featureviz demo ...``: the built-in training demo (it parses its own arguments)."""

from __future__ import annotations

import argparse
from typing import Any

from torch_featureviz.cli.common import Parser, UsageError, user_input
from torch_featureviz.cli.loading import Parents

DEMO_HELP = "train a small CNN on built-in data and log its filters and maps as it learns"


def run(args: argparse.Namespace, extra: list[str]) -> int:
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
    parser = Parser(prog="featureviz demo", description=DEMO_HELP)
    demo.add_demo_arguments(parser)
    demo_args = parser.parse_args(extra)
    with user_input():
        return int(demo.run_demo(demo_args) or 0)


def register(sub: Any, parents: Parents) -> None:
    p = sub.add_parser("demo", help=DEMO_HELP, add_help=False)
    p.set_defaults(func=run, passthrough=True)
