"""What every subcommand shares: exit codes, one-line errors, messages, the progress bar and
argument types."""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

EPILOG = """\
exit codes:
  0    success
  1    unexpected internal error (one line; add --traceback for details)
  2    bad input: usage, image file (missing, not an image, truncated), unknown model or
       weights name, a missing extra (timm, transformers), no network for --weights,
       checkpoint keys that do not match, a layer pattern that matches nothing, an output
       directory that cannot be written, a forward pass that fails on the input
  130  interrupted

Run 'featureviz COMMAND --help' for a command's options."""

DEFAULT_OUT = "featureviz-out"


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr, exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def one_line(e: BaseException) -> str:
    text = str(e).strip()
    if isinstance(e, KeyError) and text.startswith(("'", '"')):
        text = text[1:-1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(lines[:2]) if lines else type(e).__name__


@contextmanager
def user_input(prefix: str = "") -> Iterator[None]:
    """Turn the library's ValueError/TypeError/OSError for user input into a UsageError."""
    try:
        yield
    except UsageError:
        raise
    except (ValueError, TypeError, OSError) as e:
        raise UsageError(prefix + one_line(e)) from e


def say(args: argparse.Namespace, *lines: str) -> None:
    if not getattr(args, "quiet", False):
        for line in lines:
            print(line)


def warn(args: argparse.Namespace, message: str) -> None:
    if not getattr(args, "quiet", False):
        print(f"featureviz: warning: {message}", file=sys.stderr)


@contextmanager
def progress_bar(args: argparse.Namespace, desc: str) -> Iterator[Callable[[str, int, int], None]]:
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


def input_size_arg(text: str) -> int | tuple[int, int]:
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


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def path_arg(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    return text


def cmap_arg(text: str) -> str:
    from torch_featureviz._validation import check_cmap

    try:
        check_cmap(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def filter_channel_arg(text: str) -> str | int:
    if text in ("auto", "rgb", "mean", "strongest"):
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected auto, rgb, mean, strongest or an input-channel index, got {text!r}"
        ) from None


def table(rows: list[list[str]], right: set[int]) -> list[str]:
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


def wrap(text: str) -> str:
    return textwrap.fill(text, width=88)
