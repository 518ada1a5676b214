"""The :class:`FeatureMonitor` facade: validate the options, plan the log, attach the parts.

What it logs, how it stays cheap and how it ends: ``docs/monitor.md``. The parts it wires are
drawn in ``docs/architecture.md``; optional parts are listed in :data:`~.assembly.PARTS` (see
:mod:`~.parts` for how one observes passes and contributes to each capture's log).
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from torch_featureviz._validation import (
    ModelInput,
    check_module,
    check_non_negative_int,
    check_timeout,
)
from torch_featureviz.capture.discovery import unwrap_model
from torch_featureviz.capture.hooks import FeatureCapture
from torch_featureviz.monitor.assembly import Assembly, assemble, open_writer, start_writer
from torch_featureviz.monitor.background import BackgroundWriter, Sink
from torch_featureviz.monitor.channels import ChannelChooser
from torch_featureviz.monitor.config import MonitorConfig
from torch_featureviz.monitor.cycle import StepCycle
from torch_featureviz.monitor.lifetime import (
    check_not_in_worker,
    claim_log_dir,
    claim_model,
    install_sigterm_handler,
    shutdown,
)
from torch_featureviz.monitor.schedule import CaptureSchedule
from torch_featureviz.monitor.sharding import sharding_of
from torch_featureviz.monitor.statistics import STAT_NAMES
from torch_featureviz.naming import layer_tag, make_tag

__all__ = ["FeatureMonitor"]

def _distributed_rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return int(torch.distributed.get_rank())
    return 0


class FeatureMonitor:
    """Log filters, feature maps and activation statistics of a training model every N steps.

    Create it once, after the model is built and moved to its device (and, under DDP, after
    ``torch.distributed.init_process_group``), and *before* ``torch.compile``; call
    :meth:`step` once per optimisation step (after ``optimizer.step()``); call :meth:`close`
    at the end (or use it as a context manager).

    Args:
        model: the model being trained; DataParallel, DDP and ``torch.compile`` wrappers are
            looked through. It must have at least one conv.
        log_dir: a directory for the event files, or an existing
            ``torch.utils.tensorboard.SummaryWriter`` (which is then flushed but not closed).
        every: capture every ``every`` steps.
        probe: a fixed input whose maps are logged under ``feature_maps/probe/<layer>`` at every
            capture: an ``(N, C, H, W)`` or ``(C, H, W)`` tensor, a tuple of positional inputs,
            or a dict of keyword inputs; ``None`` disables probe passes.
        layers: conv names or ``fnmatch`` globs to watch; ``None`` watches every conv.
        config: a :class:`~torch_featureviz.MonitorConfig`; keyword ``options`` override
            its fields.
        sink_wrapper: the seam for tests and instrumentation: called with the
            :class:`~.sink.TensorBoardSink` the monitor built, it returns the
            :class:`~torch_featureviz.monitor.background.Sink` the background writer writes into (a
            slow one, a failing one, one that also sends captures elsewhere).
        event_file_opener: the seam for tests that make the disk fail: how the event file is
            opened (see :class:`~torch_featureviz.TensorBoardWriter`'s ``opener``).
        **options: any other :class:`~torch_featureviz.MonitorConfig` field
            (``max_channels``, ``passes``, ``on_full``, ``name``, ``histograms``, ...).

    Raises:
        TypeError, ValueError: bad options, a probe that does not fit the model, or a model
            without convs; always in the calling thread, before any hook is registered.
        RuntimeError: created inside a DataLoader worker.
        OSError: ``log_dir`` cannot be written.

    Example::

        >>> import tempfile, torch, torchvision
        >>> model = torchvision.models.resnet18(num_classes=4)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.01)
        >>> with FeatureMonitor(model, tempfile.mkdtemp(), every=2, max_channels=4) as monitor:
        ...     for _ in range(3):
        ...         loss = model(torch.randn(2, 3, 32, 32)).sum()
        ...         loss.backward(); opt.step(); opt.zero_grad()
        ...         sampled = monitor.step()
        >>> monitor.captured, monitor.dropped
        (2, 0)
    """

    def __init__(
        self,
        model: nn.Module,
        log_dir: str | os.PathLike[str] | Any,
        *,
        every: int | None = None,
        probe: ModelInput | None = None,
        layers: str | Iterable[str] | None = None,
        config: MonitorConfig | None = None,
        sink_wrapper: Callable[[Sink], Sink] | None = None,
        event_file_opener: Callable[[str], Any] | None = None,
        **options: Any,
    ) -> None:
        # -- validate: everything in the calling thread, before any hook or file exists ------
        check_module(model)
        self.config = cfg = MonitorConfig.resolve(
            config, options, every=every, layers=layers, sink_wrapper=sink_wrapper
        )
        check_not_in_worker()
        self.every, self.model, self.root = cfg.every, model, unwrap_model(model)
        self.rank = _distributed_rank()
        #: False on DDP ranks other than 0 (with ``rank_zero_only``): nothing is captured there.
        self.active = not (cfg.rank_zero_only and self.rank != 0)
        self.closed = False
        self.schedule = CaptureSchedule(cfg.every, cfg.every_seconds)
        self._next_step = cfg.start_step
        self._capture: FeatureCapture | None = None
        self._background: BackgroundWriter | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._log_dir: str | None = None
        #: Charts in the custom-scalars layout written at construction.
        self.charts = 0
        #: How the model is sharded (``"dtensor"``: FSDP2's ``fully_shard``; ``"fsdp1"``), or
        #: ``None``. Under sharding every rank takes part in probe passes and filter gathers.
        self.sharding = sharding_of(self.root)
        # -- plan: what each capture logs and at what size, and the parts that capture it ----
        built = assemble(
            model, self.root, cfg, probe, self.sharding, rank=self.rank, active=self.active
        )
        self.plan, self.stats, self.parts = built.plan, built.stats, built.parts
        self.probe = built.probe
        #: The watched conv layers' qualified names (empty on ranks that do not capture).
        self.layers: list[str] = list(built.capture.layers) if self.active else []
        # -- attach: the writer, the hooks, the cycle ------------------------------------------
        if not self.active:
            self._cycle = StepCycle(None, built.reader, self.schedule, cfg, sharding=self.sharding)
            self._cycle.prepare(self._next_step)  # under sharding, every rank takes part
            return
        self._attach(built, log_dir, sink_wrapper, event_file_opener)

    def _attach(
        self,
        built: Assembly,
        log_dir: Any,
        sink_wrapper: Callable[[Sink], Sink] | None,
        event_file_opener: Callable[[str], Any] | None,
    ) -> None:
        """Open the log, start the writer thread, register the hooks, announce the first step."""
        cfg, capture = self.config, built.capture
        if isinstance(log_dir, (str, os.PathLike)) and not cfg.rank_zero_only and self.rank:
            log_dir = os.path.join(os.fspath(log_dir), f"rank{self.rank}")
        writer, self.charts = open_writer(
            cfg, self.plan, list(capture.layers), log_dir, event_file_opener
        )
        claim_log_dir(self, writer.log_dir, cfg.name)
        # -- from here on, resources exist ----------------------------------------------------
        claim_model(self, self.root)
        self._background = start_writer(cfg, writer, self.parts, sink_wrapper)
        self._log_dir, self._capture = writer.log_dir, capture
        capture.enabled = False
        capture.attach()
        # Closed when collected without close(), and at interpreter exit.
        self._finalizer = weakref.finalize(
            self, shutdown, capture, self._background, cfg.close_timeout
        )
        if cfg.handle_sigterm:
            install_sigterm_handler(self)
        chooser = None
        if cfg.channels != "first":
            chooser = ChannelChooser(cfg.channels, cfg.max_channels, cfg.channel_refresh)
        self._cycle = StepCycle(
            capture,
            built.reader,
            self.schedule,
            cfg,
            background=self._background,
            chooser=chooser,
            unchanged=built.unchanged,
            parts=[part.result_key for part in self.parts],
            model=self.model,
            sharding=self.sharding,
        )
        try:
            self._cycle.announce(self._next_step)
        except BaseException:
            self.close()
            raise

    # -- scheduling ------------------------------------------------------------------------------
    def should_capture(self, step: int) -> bool:
        """Whether ``step`` is a sampled step (``step % every == 0`` or the time interval)."""
        return self.schedule.due(step)

    def prepare(self, step: int) -> None:
        """Get ready for the forward pass of global step ``step``: arm (or disarm) the hooks
        and, if ``step`` is sampled, read its filters and run its probe pass now, with the
        weights that forward will use.

        :meth:`step` already does this for the step that follows it; call ``prepare`` only if
        you drive the global step yourself and it does not advance by one (the Lightning
        callback calls it at the start of every batch). Calling it again for the same step
        does nothing more.
        """
        step = check_non_negative_int(step, "step")
        self._raise_background_error()
        if self._capture is not None:
            self._capture.end_pass()
        if not self.closed:
            self._cycle.announce(step)

    # -- the training-thread API ---------------------------------------------------------------
    def step(self, global_step: int | None = None) -> bool:
        """Mark the end of an optimisation step; on a sampled step, capture and queue it.

        A capture shows the weights its step's forward ran with: when the step after this
        one is sampled, this call already reads its filters and runs its probe pass (the
        model's weights no longer change before that forward), so the sampled step itself
        only copies what its forward produced.

        Args:
            global_step: the step to log at; by default one more than the previous call
                (starting at ``start_step``). The hooks are armed for the step after this
                one; if ``global_step`` jumps to a sampled step they were not armed for, its
                filters and probe maps are logged but no training-batch maps (call
                :meth:`prepare` before that step's forward to get them).

        Returns:
            Whether this step was captured (queued or dropped); on a rank of a sharded model
            that does not write, whether it took part in a sampled step.

        Raises:
            RuntimeError: the background writer failed since the last call (the original
                error is chained); the monitor stops capturing. Or the probe pass failed
                (the model's forward no longer accepts the probe).
        """
        if global_step is not None:
            global_step = check_non_negative_int(global_step, "global_step")
        self._raise_background_error()
        current = self._next_step if global_step is None else global_step
        self._next_step = current + 1
        if self.closed:
            return False
        return self._cycle.step(current, self._next_step)

    # -- results, errors and shutdown ------------------------------------------------------------
    @property
    def captured(self) -> int:
        """Captures handed to the background writer."""
        return 0 if self._background is None else self._background.submitted

    @property
    def dropped(self) -> int:
        """Captures dropped because the writer's queue was full."""
        return 0 if self._background is None else self._background.dropped

    def _raise_background_error(self) -> None:
        if self._background is not None:
            try:
                self._background.raise_error()
            except RuntimeError as e:
                raise RuntimeError(f"FeatureMonitor: {e}") from e.__cause__

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued capture is written (at most ``timeout`` seconds).

        Returns:
            Whether the queue was drained in time.
        """
        if timeout is not None:
            timeout = check_timeout(timeout, "timeout")
        done = True if self._background is None else self._background.flush(timeout)
        self._raise_background_error()
        return done

    def close(self) -> None:
        """Write every queued capture, remove the hooks and close the log. Idempotent.

        Waits at most ``close_timeout`` seconds for the background writer, so it never hangs;
        captures still unwritten then are reported in a warning.

        Raises:
            RuntimeError: the background writer failed and the error was not yet raised by
                :meth:`step`.
        """
        if self.closed:
            return
        self.closed = True
        self._cycle.forget()
        if self._finalizer is not None:
            self._finalizer()  # runs _shutdown once, and never again at exit
        self._raise_background_error()

    def __enter__(self) -> FeatureMonitor:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
            return
        # Do not hide the training error behind a writer error.
        try:
            self.close()
        except RuntimeError:
            pass

    @property
    def log_dir(self) -> str | None:
        """Where the event files go (``None`` on ranks that do not write)."""
        return self._log_dir

    @property
    def error(self) -> BaseException | None:
        """The background writer's error, if it failed."""
        return None if self._background is None else self._background.error

    @property
    def capture(self) -> FeatureCapture | None:
        """The monitor's :class:`~torch_featureviz.FeatureCapture` (``None`` on ranks that do
        not capture); its ``observers`` list is where extra per-layer work can be added."""
        return self._capture

    @property
    def writer_thread(self) -> threading.Thread | None:
        """The background writer's thread (``None`` on ranks that do not write)."""
        return None if self._background is None else self._background.thread

    def __repr__(self) -> str:
        return (
            f"FeatureMonitor({type(self.root).__name__}, every={self.every}, "
            f"rank={self.rank}, active={self.active}, captured={self.captured}, "
            f"dropped={self.dropped}, closed={self.closed})"
        )

    def stats_tags(self, layer: str) -> dict[str, str]:
        """The scalar tags logged for ``layer``."""
        return {
            k: make_tag("activations", layer_tag(layer), k, prefix=self.config.name)
            for k in STAT_NAMES
        }
