"""The ``featureviz`` command: argument parsing and one-line errors, then the library.

Exit codes: 0 success, 1 unexpected internal error, 2 bad input (usage, files, model names),
130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch_featureviz

__all__ = ["main"]


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


def _build_model(name: str):  # type: ignore[no-untyped-def]
    import torchvision

    try:
        return torchvision.models.get_model(name, weights=None)
    except ValueError:
        known = torchvision.models.list_models()
        import difflib

        close = difflib.get_close_matches(name, known, n=3) or known[:3]
        raise UsageError(f"unknown model {name!r}; did you mean {', '.join(close)}?") from None


def _cmd_info(args: argparse.Namespace) -> int:
    model = _build_model(args.model)
    info = torch_featureviz.Extractor(model).info()
    for key, value in info.items():
        print(f"{key}: {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="featureviz",
        description="See what a CNN's conv layers learned (filters) and compute (feature maps).",
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {torch_featureviz.__version__}"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("info", help="summarise a torchvision model's conv layers")
    p.add_argument("model", help="a torchvision model name, e.g. resnet50")
    p.set_defaults(func=_cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except UsageError as e:
        print(f"featureviz: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("featureviz: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
