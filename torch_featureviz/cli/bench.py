"""``featureviz bench ...``: the benchmarks of a source checkout (arguments go to the script)."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from typing import Any

import torch_featureviz
from torch_featureviz.cli.common import UsageError
from torch_featureviz.cli.loading import Parents

BENCH_HELP = "run the benchmarks (needs a source checkout); arguments go to the bench script"


def bench_script() -> Path:
    """Where ``featureviz bench`` looks for the benchmark script (in a source checkout)."""
    root = Path(torch_featureviz.__file__).resolve().parents[1]
    return root / "benchmarks" / "bench_featureviz.py"


def run(args: argparse.Namespace, extra: list[str]) -> int:
    path = bench_script()
    if not path.is_file():
        raise UsageError(
            f"the benchmarks are not installed ({path} does not exist); 'featureviz bench' runs "
            "from a source checkout of torch_featureviz."
        )
    spec = importlib.util.spec_from_file_location("bench_featureviz", path)
    if spec is None or spec.loader is None:
        raise UsageError(f"cannot load {path} as a Python module.")
    module = importlib.util.module_from_spec(spec)
    folder = str(path.parent)
    added = folder not in sys.path
    if added:  # the script may import its sibling modules
        sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
        if not callable(getattr(module, "main", None)):
            raise UsageError(f"{path} has no main(argv) function.")
        return int(module.main(list(extra)) or 0)
    finally:
        if added and folder in sys.path:
            sys.path.remove(folder)


def register(sub: Any, parents: Parents) -> None:
    p = sub.add_parser("bench", help=BENCH_HELP, add_help=False)
    p.set_defaults(func=run, passthrough=True)
