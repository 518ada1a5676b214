"""``featureviz bench ...``: the capture benchmark of a source checkout (arguments go to it).

The benchmarks are not part of the installed package: they live in the ``benchmarks`` package
of a source checkout, and this command imports ``benchmarks.bench_capture`` when it can (run
from the repository root with ``python -m torch_featureviz.cli bench ...``, or with the root on
``PYTHONPATH``) and says so clearly when it cannot. It never runs a file by its path.
"""

from __future__ import annotations

import argparse
import importlib
from types import ModuleType
from typing import Any

from torch_featureviz.cli.common import UsageError
from torch_featureviz.cli.loading import Parents

BENCH_HELP = (
    "run the capture benchmark (benchmarks.bench_capture of a source checkout); arguments go to it"
)
#: The module ``featureviz bench`` runs.
BENCH_MODULE = "benchmarks.bench_capture"
NOT_AVAILABLE = (
    "the benchmarks are not part of the installed package: 'featureviz bench' imports "
    f"{BENCH_MODULE} from a source checkout of torch_featureviz. From the repository root run "
    f"'python -m {BENCH_MODULE} ARGS' (or 'PYTHONPATH=. featureviz bench ARGS')."
)


def load_benchmark(name: str | None = None) -> ModuleType:
    """The benchmark module, imported by name; :class:`UsageError` when it is not importable.

    >>> try:
    ...     load_benchmark("no_such_package.bench_capture")
    ... except UsageError as e:
    ...     print(str(e).split(":")[0])
    the benchmarks are not part of the installed package
    """
    name = BENCH_MODULE if name is None else name
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name is not None and name.startswith(e.name):  # the benchmarks themselves, not a
            raise UsageError(NOT_AVAILABLE) from None  # dependency they import
        raise
    if not callable(getattr(module, "main", None)):
        raise UsageError(f"{name} ({module.__file__}) has no main(argv): {NOT_AVAILABLE}")
    return module


def run(args: argparse.Namespace, extra: list[str]) -> int:
    return int(load_benchmark().main(list(extra)) or 0)


def register(sub: Any, parents: Parents) -> None:
    p = sub.add_parser("bench", help=BENCH_HELP, add_help=False)
    p.set_defaults(func=run, passthrough=True)
