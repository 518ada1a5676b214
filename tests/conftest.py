"""Shared fixtures, and how the suite runs in parallel.

Plain helpers and reference implementations (hook-free reference maps, event-file readers, sinks
that gate or fail) live in the ``tests/support/`` package; tests never import another test
module.

``.ci/run`` runs the suite with pytest-xdist (``-n auto --dist loadgroup``). Tests of one
``xdist_group`` run on one worker, one after another: :data:`XDIST_GROUPS` keeps the tests that
start gloo process groups, Chromium or a TensorBoard server (local ports, process groups, many
cores) off each other's backs, and every other file whose tests share a module-scoped fixture is
grouped by file, so the fixture is built once, not once per worker. Each worker runs torch
(and the processes it starts) on its share of the cores, not on all of them at once.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from tests.support.helpers import read_events, reference_maps, tiny_net

#: Files whose tests must not run beside each other on two workers, and their group.
XDIST_GROUPS = {
    "test_distributed.py": "gloo",  # gloo process groups on local ports, two ranks each
    "test_fsdp.py": "gloo",
    "test_browser.py": "browser",  # headless Chromium and TensorBoard servers
    "test_plugin_browser.py": "browser",
    "test_tensorboard_server.py": "browser",
    "test_plugin.py": "browser",
}


def pytest_configure(config: pytest.Config) -> None:
    """Under xdist, give each worker's torch its share of the cores: with torch's default of
    one thread per core, two workers would each run as many threads as there are cores."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if os.environ.get("PYTEST_XDIST_WORKER") and workers:
        share = max(1, (os.cpu_count() or 1) // int(workers))
        torch.set_num_threads(share)
        os.environ.setdefault("OMP_NUM_THREADS", str(share))  # the processes tests start


def _shares_a_module_fixture(item: pytest.Item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    return any(
        d.scope in ("module", "package", "class")
        for defs in info.name2fixturedefs.values()
        for d in defs
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test with its ``xdist_group`` (see the module docstring); without xdist the
    marks change nothing."""
    for item in items:
        if item.get_closest_marker("xdist_group") is not None:
            continue
        group = XDIST_GROUPS.get(item.path.name)
        if group is None and _shares_a_module_fixture(item):
            group = item.path.name
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))


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
