"""A bounded queue and one background thread that hands each item to a sink.

:class:`BackgroundWriter` is what keeps logging off the training thread: ``submit`` puts an item
into a bounded queue and returns, a thread at a lower priority passes each item to the sink, and
the first error the sink raises is kept and handed back to the training thread
(:meth:`BackgroundWriter.raise_error`). The sink is any object with ``write(item)``, ``flush()``
and ``close()``; tests inject their own (a slow one, a failing one).

The thread holds no reference to whoever owns the writer, so an owner that is garbage-collected
without closing it can still be finalised (and close it).

The thread runs torch's kernels on one thread (:class:`KernelThreads`). With PyTorch's OpenMP
backend (Linux and Windows wheels) a thread that runs a kernel large enough to split gets an
OpenMP team of its own; once the process has more OpenMP threads than cores, libgomp stops
spinning between parallel regions, so every small kernel of the *training* thread waits for its
workers to wake. Measured on 2 cores, that made the demo's whole training step 1.3-1.9x slower
after the first capture, for the rest of the run.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any, Literal, Protocol

__all__ = ["BackgroundWriter", "KernelThreads", "Sink"]

OnFull = Literal["drop", "block"]
_STOP = object()


class Sink(Protocol):
    """What a :class:`BackgroundWriter` writes into."""

    def write(self, item: Any) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


def _lower_thread_priority(nice: int = 10) -> None:
    """Make the calling thread yield the CPU to training (Linux: per-thread scheduling).

    Rendering and encoding are off the training thread, but training on the CPU keeps every
    core busy, and a writer that preempts one of torch's intra-op workers stalls the whole
    parallel region it belongs to. So the thread takes a ``nice`` value ``nice`` steps lower.

    Not ``SCHED_IDLE``: it was tried, and measured 0.911x against 0.893x at nice +10 (demo,
    batch 16, a capture every 10 steps, 2 cores), but an idle-class thread gets about 1% of a
    core while anything else is runnable. With two busy processes beside it (DataLoader workers,
    another job on a shared node) four captures took 6 s to write instead of 0.12 s, so captures
    were dropped and ``close()`` could give up with captures unwritten.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        tid = threading.get_native_id()
    except AttributeError:
        return
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except (AttributeError, OSError):  # not permitted or not supported: run at normal priority
        pass


class KernelThreads:
    """Run a new thread's torch kernels on ``threads`` threads without changing anyone else's.

    ``torch.set_num_threads`` sets the calling thread's OpenMP thread count and also the
    process-wide default that threads started later begin with. So the new thread sets its own
    count (:meth:`apply`) and says so, and the thread that started it then puts the
    process-wide default back (:meth:`restore`) while keeping its own count. Under PyTorch's
    native thread pool (no OpenMP) the count is process-wide: :meth:`restore` puts it back and
    the new thread shares the pool, as without this class.

    Both sides are bounded: if the new thread has not applied its count within ``timeout``
    seconds, :meth:`restore` gives up and the new thread then leaves the counts alone.
    """

    def __init__(self, threads: int = 1, timeout: float = 10.0) -> None:
        import torch

        self.threads = threads
        self.timeout = timeout
        self.starter_threads = torch.get_num_threads()
        self._lock = threading.Lock()
        self._applied = threading.Event()
        self._abandoned = False

    def apply(self, then: Callable[[], None] | None = None) -> None:
        """Called first thing in the new thread; ``then`` runs before :meth:`restore` may
        return (the writer lowers its priority there, after taking its count at full speed)."""
        import torch

        with self._lock:
            try:
                if not self._abandoned and self.threads != self.starter_threads:
                    torch.set_num_threads(self.threads)
                    torch.get_num_threads()  # fixes this thread's count before restore() runs
            finally:
                try:
                    if then is not None:
                        then()
                finally:
                    self._applied.set()

    def restore(self) -> None:
        """Called by the starting thread after ``Thread.start()``."""
        import torch

        self._applied.wait(self.timeout)
        with self._lock:
            if not self._applied.is_set():
                self._abandoned = True
                return
        if self.threads != self.starter_threads:
            torch.set_num_threads(self.starter_threads)


class BackgroundWriter:
    """Write items to ``sink`` on a background thread, through a bounded queue.

    Args:
        sink: where items go (see :class:`Sink`); closed by the thread after the last item.
        queue_size: items that may wait; more are dropped (``on_full="drop"``) or wait
            (``"block"``).
        on_full: ``"drop"`` never blocks the caller; ``"block"`` waits up to ``block_timeout``
            seconds for room, then drops with a warning that says why.
        block_timeout: the longest ``submit`` waits under ``"block"``.
        nice: how much lower the thread's scheduling priority is (Linux).
        name: the thread's name.
        kernel_threads: intra-op threads of the torch kernels the thread runs (see
            :class:`KernelThreads`); ``None`` leaves them at torch's setting.
    """

    def __init__(
        self,
        sink: Sink,
        *,
        queue_size: int = 4,
        on_full: OnFull = "drop",
        block_timeout: float = 60.0,
        nice: int = 10,
        name: str = "featureviz-writer",
        kernel_threads: int | None = 1,
    ) -> None:
        self.on_full = on_full
        self.block_timeout = block_timeout
        #: Items accepted, and items dropped because the queue was full.
        self.submitted = 0
        self.dropped = 0
        self._sink = sink
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._error: BaseException | None = None
        self._error_reported = False
        self._stopping = False
        self._closed = False
        self._next_warn = 1
        threads = None if kernel_threads is None else KernelThreads(kernel_threads)
        self._thread = threading.Thread(
            target=_run,
            args=(self._queue, sink, self._fail, self._stopped, nice, threads),
            name=name,
            daemon=True,
        )
        self._thread.start()
        if threads is not None:
            threads.restore()

    # -- the owner's side -------------------------------------------------------------------------
    @property
    def error(self) -> BaseException | None:
        """The sink's first error, if it failed."""
        return self._error

    @property
    def thread(self) -> threading.Thread:
        """The writer thread."""
        return self._thread

    @property
    def pending(self) -> int:
        """Items submitted and not yet written."""
        return self._queue.unfinished_tasks

    def submit(self, item: Any, *, label: str = "an item") -> bool:
        """Queue ``item``; returns whether it was accepted (False: dropped, or closed).

        ``label`` names the item in the warning when it is dropped."""
        if self._closed or self._error is not None:
            return False
        try:
            if self.on_full == "block":
                self._queue.put(item, timeout=self.block_timeout)
            else:
                self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1
            if self.dropped >= self._next_warn:  # 1, 2, 4, 8, ...: never a warning per step
                self._next_warn *= 2
                why = (
                    f"waited {self.block_timeout:g} s for the background writer"
                    if self.on_full == "block"
                    else "the background writer is behind"
                )
                warnings.warn(
                    f"FeatureMonitor dropped {label}: {why} ({self._queue.maxsize} queued, "
                    f"{self.dropped} dropped so far). Capture less often (a larger `every`), log "
                    "fewer layers or channels, or raise `queue_size`.",
                    RuntimeWarning,
                    stacklevel=3,
                )
            return False
        self.submitted += 1
        return True

    def raise_error(self) -> None:
        """Raise the sink's error once, as a RuntimeError chained to it."""
        err = self._error
        if err is None or self._error_reported:
            return
        self._error_reported = True
        hint = (
            "check that the log directory is writable and has free space"
            if isinstance(err, OSError)
            else "this is a bug in torch_featureviz; please report it with the traceback"
        )
        raise RuntimeError(
            f"the background writer failed: {type(err).__name__}: {err}. No further captures "
            f"are logged; {hint}."
        ) from err

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued item is written (at most ``timeout`` seconds); returns whether
        it was. The sink is expected to flush after each item."""
        if self._thread.is_alive():
            deadline = None if timeout is None else time.monotonic() + timeout
            done = self._queue.all_tasks_done  # notified by the thread's task_done()
            with done:
                while self._queue.unfinished_tasks and self._thread.is_alive():
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    # Bounded waits: a thread that died still lets this loop look again.
                    done.wait(0.1 if remaining is None else min(remaining, 0.1))
        return True

    def close(self, timeout: float = 30.0) -> bool:
        """Write what is queued, close the sink and end the thread. Idempotent.

        Waits at most ``timeout`` seconds; returns whether the thread finished. If it did not,
        it keeps writing in the background (a slow disk still gets everything, later).
        """
        if self._closed:
            return not self._thread.is_alive()
        self._closed = True
        self._stopping = True
        try:
            self._queue.put_nowait(_STOP)
        except queue.Full:
            pass  # the thread notices `_stopping` once the queue is drained
        if threading.current_thread() is self._thread:
            return False  # closed from the writer thread itself (a finaliser run there)
        self._thread.join(timeout)
        if self._thread.is_alive():
            warnings.warn(
                f"close() gave up after {timeout:.0f} s with {self._queue.qsize()} captures "
                "unwritten: the background writer is stuck (a slow or hung disk?). It keeps "
                "writing in the background.",
                RuntimeWarning,
                stacklevel=3,
            )
            return False
        return True

    # -- callbacks from the thread ----------------------------------------------------------------
    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error

    def _stopped(self) -> bool:
        return self._stopping

    def __repr__(self) -> str:
        return (
            f"BackgroundWriter(pending={self.pending}, submitted={self.submitted}, "
            f"dropped={self.dropped}, closed={self._closed})"
        )


def _run(
    q: queue.Queue[Any],
    sink: Sink,
    fail: Any,
    stopped: Any,
    nice: int,
    threads: KernelThreads | None,
) -> None:
    """The writer thread: a plain function of the queue and the sink, so that it keeps no
    reference to the writer's owner."""
    # The count first, at normal priority (the constructor waits for it), then the priority.
    if threads is None:
        _lower_thread_priority(nice)
    else:
        try:
            threads.apply(then=lambda: _lower_thread_priority(nice))
        except Exception:  # noqa: BLE001 - torch's own default then: slower, never wrong
            pass
    failed = False
    while True:
        try:
            item = q.get(timeout=0.1)
        except queue.Empty:
            if stopped():  # close() could not enqueue the stop marker: drained now
                break
            continue
        try:
            if item is _STOP:
                break
            if not failed:
                sink.write(item)
        except BaseException as e:  # noqa: BLE001 - handed to the training thread
            failed = True
            fail(e)
        finally:
            q.task_done()
    try:
        sink.close()
    except BaseException as e:  # noqa: BLE001 - reported like a write error
        fail(e)
