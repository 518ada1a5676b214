"""The code stays lint-clean and type-checks, with the tools and settings in pyproject.toml.

Both tools come with the ``test`` extra, so CI has them; a lint error or a type error fails the
suite like any other regression.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


def test_ruff_finds_nothing() -> None:
    proc = _run("ruff", "check", "torch_featureviz", "tests", "benchmarks", "examples")
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.slow
def test_the_package_type_checks() -> None:
    proc = _run("mypy", "torch_featureviz")
    assert proc.returncode == 0, proc.stdout + proc.stderr
