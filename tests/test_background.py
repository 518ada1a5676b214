"""The background writer's thread: its torch kernels run on one thread, and nobody else's
thread count changes (``KernelThreads``)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from torch_featureviz import FeatureMonitor
from torch_featureviz.monitor.background import BackgroundWriter, KernelThreads

OPENMP = "OpenMP" in torch.__config__.parallel_info()


@pytest.fixture
def two_threads() -> Iterator[None]:
    """torch at 2 intra-op threads for the test (CI has 2 cores), put back afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


class _Recorder:
    """A sink that runs ``work`` for each item and records the writer thread's thread count."""

    def __init__(self, work: Any = None) -> None:
        self.work = work
        self.threads: list[int] = []

    def write(self, item: Any) -> None:
        self.threads.append(torch.get_num_threads())
        if self.work is not None:
            self.work()

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def _in_new_thread(fn: Any) -> Any:
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join(10)
    return out[0]


def _tasks() -> int:
    return len(os.listdir("/proc/self/task"))


def test_writer_thread_runs_kernels_on_one_thread(two_threads: None) -> None:
    sink = _Recorder()
    writer = BackgroundWriter(sink)
    try:
        assert writer.submit(1) and writer.flush(10)
    finally:
        writer.close()
    assert sink.threads == [1]
    # Nobody else's count changed: this thread's, and that of threads started afterwards.
    assert torch.get_num_threads() == 2
    assert _in_new_thread(torch.get_num_threads) == 2


def test_kernel_threads_none_leaves_torch_setting(two_threads: None) -> None:
    sink = _Recorder()
    writer = BackgroundWriter(sink, kernel_threads=None)
    try:
        assert writer.submit(1) and writer.flush(10)
    finally:
        writer.close()
    assert sink.threads == [2]


_TEAM_SCRIPT = """
import os, sys, torch
from torch_featureviz.monitor.background import BackgroundWriter
torch.set_num_threads(2)
x = torch.randn(1 << 22)
x.mul(2)  # this thread's OpenMP team exists before counting
tasks = lambda: len(os.listdir("/proc/self/task"))
before = tasks()
seen = []
class Sink:
    def write(self, item):
        x.mul(2)  # a kernel large enough to split
        seen.append(tasks() - before)
    def flush(self): pass
    def close(self): pass
limit = None if sys.argv[1] == "none" else int(sys.argv[1])
writer = BackgroundWriter(Sink(), kernel_threads=limit)
assert writer.submit(1) and writer.flush(30)
writer.close()
print(seen[0])
"""


@pytest.mark.skipif(not OPENMP, reason="the OpenMP team only exists under the OpenMP backend")
@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads through /proc")
@pytest.mark.parametrize(("limit", "gained"), [("1", 1), ("none", 2)])
def test_writer_kernels_start_no_openmp_team(limit: str, gained: int) -> None:
    """A kernel large enough to split, run on the writer thread, starts no OpenMP worker: the
    process gains the writer thread alone. (torch's default gains a worker too: what the limit
    avoids.) Each case in a fresh process, so no earlier thread's workers are counted."""
    out = subprocess.run(
        [sys.executable, "-c", _TEAM_SCRIPT, limit],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert int(out.stdout.split()[-1]) == gained


def test_restore_gives_up_on_a_thread_that_never_starts(two_threads: None) -> None:
    limit = KernelThreads(1, timeout=0.01)
    limit.restore()  # nobody applied: gives up, changes nothing
    assert torch.get_num_threads() == 2

    def late() -> int:
        limit.apply()  # too late: leaves the counts alone
        return torch.get_num_threads()

    assert _in_new_thread(late) == 2
    assert _in_new_thread(torch.get_num_threads) == 2


def test_monitor_writer_uses_one_kernel_thread(tmp_path: Any, two_threads: None) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    seen: list[int] = []

    class Wrap:
        def __init__(self, sink: Any) -> None:
            self.sink = sink

        def write(self, item: Any) -> None:
            seen.append(torch.get_num_threads())
            self.sink.write(item)

        def flush(self) -> None:
            self.sink.flush()

        def close(self) -> None:
            self.sink.close()

    with FeatureMonitor(model, tmp_path, every=1, sink_wrapper=Wrap) as monitor:
        model(torch.randn(2, 3, 8, 8))
        assert monitor.step()
        assert monitor.flush(30)
    assert seen == [1]
    assert torch.get_num_threads() == 2


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux scheduling policies")
def test_writer_thread_is_niced_not_idle_class() -> None:
    """The writer yields to training through its nice value only. An idle-class thread
    (``SCHED_IDLE``) starves while anything else is runnable: beside two busy processes it took
    6 s to write what took 0.12 s at nice +10, so captures were dropped under load."""
    seen: list[tuple[int, int]] = []

    class Sink(_Recorder):
        def write(self, item: Any) -> None:
            tid = threading.get_native_id()
            seen.append((os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, tid)))

    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    writer = BackgroundWriter(Sink())
    try:
        assert writer.submit(1) and writer.flush(10)
    finally:
        writer.close()
    ((policy, nice),) = seen
    assert policy == os.SCHED_OTHER
    assert nice == min(19, mine + 10)
