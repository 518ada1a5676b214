"""Shared fixtures. Plain helpers and reference implementations (hook-free reference maps,
event-file readers, sinks that gate or fail) live in the ``tests/support/`` package; tests never
import another test module."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from torch import nn

from tests.support.helpers import read_events, reference_maps, tiny_net


@pytest.fixture
def tiny_model() -> nn.Module:
    """A seeded TinyNet: nested containers, a user block with an in-place ReLU, a conv called
    twice, a linear head."""
    return tiny_net()


@pytest.fixture
def reference() -> Callable[..., dict[str, Any]]:
    """``reference(model, x)``: every conv output of one forward, computed without hooks."""
    return reference_maps


@pytest.fixture
def logs() -> Callable[[str | Path], Any]:
    """``logs(log_dir)``: an EventAccumulator with every image, scalar and histogram loaded."""
    return read_events
