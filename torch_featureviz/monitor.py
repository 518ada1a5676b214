"""Watch filters and feature maps evolve during training, at almost no cost to the training run.

:class:`FeatureMonitor` is attached once to a model in an ordinary training loop and called once
per optimisation step::

    monitor = FeatureMonitor(model, "runs/exp1", every=100, probe=image)
    for x, y in loader:
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        monitor.step()
    monitor.close()

How it stays cheap:

- The hooks are registered once, at construction (before any ``torch.compile``), and gated by
  :attr:`FeatureCapture.enabled <torch_featureviz.FeatureCapture.enabled>`. On an unsampled step
  every hook returns at once and :meth:`FeatureMonitor.step` only increments a counter: no tensor
  work and no host synchronisation.
- On a sampled step the training thread only copies small, already selected tensors (one sample,
  ``max_channels`` channels per layer, the first ``max_filters`` filters, a few statistics) and
  puts them into a bounded queue. A background thread renders the grids, encodes the PNGs and
  writes the event file, at a lower scheduling priority on Linux (nice +10), so on a machine
  whose cores training saturates it uses idle time first. When the queue is full the capture
  is dropped, counted in :attr:`FeatureMonitor.dropped` and a warning says so; memory never
  grows without bound.

What is logged at the global step (tags):

- ``filters/<layer>``: filter grids (see :func:`~torch_featureviz.make_filter_grid`; 1x1
  kernels share one scale across the grid);
- ``feature_maps/hook/<layer>``: maps of sample ``sample`` of the *training batch*, captured
  during the step's own forward pass (no extra forward);
- ``feature_maps/probe/<layer>``: maps of the fixed ``probe`` input, run under
  ``torch.no_grad()`` in eval mode; the model is restored exactly afterwards (train flags,
  BatchNorm statistics, RNG state). ``input/probe`` shows the probe once;
- ``activations/<layer>/{mean,std,near_zero,dead_channels}``: statistics of the conv's output
  computed in float32 (so bf16 and fp16 training work). ``mean``, ``std`` and
  ``dead_channels`` cover the whole training batch and every channel; ``near_zero`` is the
  fraction of values with ``|x| <= near_zero`` in the shown sample (every channel); a
  channel is *active* in a capture when some value is ``> active_threshold``, and
  ``dead_channels`` is the fraction of channels never active in the last ``dead_window``
  captures;
- ``histograms/activations/<layer>`` and ``histograms/weights/<layer>`` when
  ``histograms=True`` (activations of the captured sample, weights of the shown filters);
- ``featureviz/dropped_captures``: how many captures were dropped so far.

TensorBoard shows only 10 images per tag by default; start it with
``tensorboard --logdir DIR --samples_per_plugin images=1000`` (see
:func:`~torch_featureviz.tensorboard_command`) to scrub through every step.

Distributed training: under DDP only rank 0 captures and writes by default (no collective is
ever issued); names never carry DDP's or DataParallel's ``module.`` prefix.
"""

from __future__ import annotations

import atexit
import math
import os
import queue
import sys
import threading
import time
import warnings
import weakref
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from torch_featureviz._validation import (
    check_image_batch,
    check_module,
    check_positive_int,
)
from torch_featureviz.capture import FeatureCapture, preserved_state
from torch_featureviz.discovery import find_conv_layers, unwrap_model
from torch_featureviz.tensorboard import TensorBoardWriter, layer_tag

__all__ = ["FeatureMonitor"]

_STOP = object()

#: The open monitor of each model: a second monitor on the same model closes the first (a
#: notebook cell run twice must not stack hooks; wandb.watch's pitfall).
_ATTACHED: weakref.WeakKeyDictionary[nn.Module, weakref.ref[FeatureMonitor]] = (
    weakref.WeakKeyDictionary()
)


#: A hook's reductions of one conv output, on its device: ``tensor([sum, L2 norm, near-zero
#: count in the shown sample])`` (float32), each channel's maximum ``(C,)``, the output's element
#: count and the shown sample's element count.
_LayerSums = tuple[torch.Tensor, torch.Tensor, int, int]


class _MonitorCapture(FeatureCapture):
    """FeatureCapture that also reduces each conv output to a few statistics, on its device.

    Mean, std and channel activity cover the whole batch and every channel (not only the kept
    sample); they stay on the device as tiny tensors (no host sync) and are computed in
    float32.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: str | Iterable[str] | None,
        *,
        max_channels: int | None,
        sample: int,
        near_zero: float,
    ) -> None:
        super().__init__(model, layers, max_channels=max_channels, sample=sample)
        self.near_zero = near_zero
        #: When False (probe passes) only the maps are kept.
        self.with_stats = True
        #: ``{layer: _LayerSums}`` of the last published pass (see :func:`_activation_stats`).
        self.stats: dict[str, _LayerSums] = {}
        self._pending_stats: dict[str, _LayerSums] | None = None

    def _start_pass(self, module: nn.Module, args: Any) -> None:
        if self.enabled:
            self._pending = {}
            self._pending_stats = {} if self.with_stats else None

    def _end_pass(self, module: nn.Module, args: Any, output: Any) -> None:
        stats, self._pending_stats = self._pending_stats, None
        failed = output is None and sys.exc_info()[0] is not None  # a forward that raised
        if self.enabled and self._pending is not None and stats is not None and not failed:
            self.stats = stats
        super()._end_pass(module, args, output)

    def _hook(self, name: str, module: nn.Module, args: Any, output: Any) -> None:
        if not self.enabled:
            return
        if isinstance(output, torch.Tensor) and output.dim() == 4:
            if output.shape[0] <= self.sample:
                return  # a short last batch lacks sample `sample`: skip it, never fail training
        super()._hook(name, module, args, output)
        target = self._pending_stats
        if target is None or not isinstance(output, torch.Tensor) or output.dim() not in (3, 4):
            return
        if self._device is not None and output.device != self._device:
            return
        # Reductions only, and as few ops as possible (each costs the training thread a few
        # microseconds of dispatch): no full-size temporaries (on CPU, allocating them costs
        # more than the arithmetic), float32 so bf16 and fp16 activations work. The writer
        # thread turns the sums into mean, std and fractions.
        x = output.detach().float()
        if x.dim() == 4:
            peak = x.amax(dim=(0, 2, 3))
            one = x[min(self.sample, x.shape[0] - 1)]
        else:  # an unbatched conv call: (C, H, W)
            peak = x.amax(dim=(1, 2))
            one = x
        # Near-zero values are counted in the shown sample (every channel): a comparison
        # needs a temporary, and one sample keeps it small.
        near = (one.abs() <= self.near_zero).sum()
        sums = torch.stack([x.sum(), torch.linalg.vector_norm(x), near.to(x.dtype)])
        key, calls = name, 1
        while key in target:
            key, calls = f"{name}#{calls}", calls + 1
        target[key] = (sums, peak, x.numel(), one.numel())


def _activation_stats(
    sums: torch.Tensor, numel: int, sample_numel: int
) -> tuple[float, float, float]:
    """Mean, std (Bessel-corrected) and near-zero fraction from a hook's float32 sums."""
    total, norm, near = (float(v) for v in sums.tolist())
    n = max(numel, 1)
    mean = total / n
    var = max(norm * norm / n - mean * mean, 0.0) * (n / max(n - 1, 1))
    return mean, math.sqrt(var), near / max(sample_numel, 1)


@dataclass
class _Capture:
    """What one sampled step hands to the background thread (host tensors only)."""

    step: int
    walltime: float
    hook_maps: dict[str, torch.Tensor] = field(default_factory=dict)
    probe_maps: dict[str, torch.Tensor] = field(default_factory=dict)
    filters: dict[str, torch.Tensor] = field(default_factory=dict)
    stats: dict[str, _LayerSums] = field(default_factory=dict)
    probe_image: torch.Tensor | None = None
    ready: Any = None  # a CUDA event to wait on before reading pinned host copies


def _lower_thread_priority(nice: int = 10) -> None:
    """Make the calling thread yield the CPU to training (Linux: a per-thread nice value).

    Rendering and encoding are off the training thread, but on a machine whose cores training
    saturates they still compete for them; a lower priority makes them use idle time first.
    Threads this thread starts (encoder pools) inherit it.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except (AttributeError, OSError):  # not permitted or not supported: run at normal priority
        pass


def _distributed_rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return int(torch.distributed.get_rank())
    return 0


def _check_float(value: Any, name: str, *, minimum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}.")
    value = float(value)
    if not math.isfinite(value) or (minimum is not None and value < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise ValueError(f"{name} must be a finite number{bound}, got {value!r}.")
    return value


class FeatureMonitor:
    """Log filters, feature maps and activation statistics of a training model every N steps.

    Create it once, after the model is built and moved to its device (and, under DDP, after
    ``torch.distributed.init_process_group``), and *before* ``torch.compile``; call
    :meth:`step` once per optimisation step (after ``optimizer.step()``); call :meth:`close`
    at the end (or use it as a context manager; an interpreter exit also flushes it).

    Args:
        model: the model being trained; DataParallel, DDP and ``torch.compile`` wrappers are
            looked through. It must have at least one ``nn.Conv2d``.
        log_dir: a directory for the event files, or an existing
            ``torch.utils.tensorboard.SummaryWriter`` (which is then flushed but not closed).
        every: capture every ``every`` steps (steps 0, every, 2 * every, ...).
        every_seconds: also capture when this many seconds have passed since the last capture.
        probe: a fixed ``(N, C, H, W)`` or ``(C, H, W)`` input whose maps are logged under
            ``feature_maps/probe/<layer>`` at every capture; ``None`` disables probe passes. It
            is moved to the model's device and dtype once.
        layers: conv names or ``fnmatch`` globs to watch; ``None`` watches every Conv2d.
        max_channels: channels per feature-map grid.
        max_filters: filters per filter grid.
        sample: which sample of the training batch (and of the probe) is shown.
        log_filters: log filter grids.
        log_hook_maps: log the training batch's maps.
        log_stats: log activation statistics.
        histograms: also log activation and weight histograms.
        near_zero: ``|x| <= near_zero`` counts as a near-zero value.
        active_threshold: a channel is active in a capture when some value exceeds this.
        dead_window: how many captures the dead-channel window spans.
        queue_size: captures that may wait for the background writer; more are dropped.
        close_timeout: seconds :meth:`close` waits for the background writer.
        rank_zero_only: under ``torch.distributed``, only rank 0 captures and writes. With
            ``False`` every rank writes into ``<log_dir>/rank<r>``.
        start_step: the global step of the first :meth:`step` call.
        cmap: a matplotlib colormap for feature maps (``None``: grayscale).

    Raises:
        TypeError, ValueError: bad arguments, a probe that does not fit the model, or a model
            without Conv2d layers; always in the calling thread, before any hook is registered.
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
        every: int = 100,
        every_seconds: float | None = None,
        probe: torch.Tensor | None = None,
        layers: str | Iterable[str] | None = None,
        max_channels: int | None = 16,
        max_filters: int | None = 64,
        sample: int = 0,
        log_filters: bool = True,
        log_hook_maps: bool = True,
        log_stats: bool = True,
        histograms: bool = False,
        near_zero: float = 1e-6,
        active_threshold: float = 0.0,
        dead_window: int = 10,
        queue_size: int = 4,
        close_timeout: float = 30.0,
        rank_zero_only: bool = True,
        start_step: int = 0,
        cmap: str | None = None,
    ) -> None:
        # -- validate everything in the calling thread, before any hook or file exists --------
        check_module(model)
        self.every: int = check_positive_int(every, "every")  # type: ignore[assignment]
        if every_seconds is not None:
            every_seconds = _check_float(every_seconds, "every_seconds", minimum=0.0)
            if every_seconds <= 0:
                raise ValueError(f"every_seconds must be > 0 or None, got {every_seconds!r}.")
        self.every_seconds = every_seconds
        self.dead_window = check_positive_int(dead_window, "dead_window")
        self.queue_size: int = check_positive_int(queue_size, "queue_size")  # type: ignore[assignment]
        self.max_filters = check_positive_int(max_filters, "max_filters", allow_none=True)
        self.close_timeout = _check_float(close_timeout, "close_timeout", minimum=0.0)
        near_zero = _check_float(near_zero, "near_zero", minimum=0.0)
        self.active_threshold = _check_float(active_threshold, "active_threshold")
        if isinstance(start_step, bool) or not isinstance(start_step, int) or start_step < 0:
            raise ValueError(f"start_step must be an int >= 0, got {start_step!r}.")
        for flag, name in (
            (log_filters, "log_filters"),
            (log_hook_maps, "log_hook_maps"),
            (log_stats, "log_stats"),
            (histograms, "histograms"),
            (rank_zero_only, "rank_zero_only"),
        ):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be True or False, got {type(flag).__name__}.")
        self.log_filters = log_filters
        self.log_hook_maps = log_hook_maps
        self.log_stats = log_stats
        self.histograms = histograms
        self.model = model
        self.root = unwrap_model(model)
        find_conv_layers(self.root)  # a model without Conv2d fails here, with its own message
        self.rank = _distributed_rank()
        #: False on DDP ranks other than 0 (with ``rank_zero_only``): nothing is captured there.
        self.active = not (rank_zero_only and self.rank != 0)
        self._next_step = start_step
        #: Captures handed to the background writer, and captures dropped (queue full).
        self.captured = 0
        self.dropped = 0
        self.closed = False
        self._capture: _MonitorCapture | None = None
        self._writer: TensorBoardWriter | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._error_reported = False
        self._stopping = False
        self._next_warn = 1
        self._probe_logged = False
        self._last_capture_time = time.monotonic()
        self._armed_passes: int | None = None
        self._atexit: Any = None
        #: The watched conv layers' qualified names (empty on ranks that do not capture).
        self.layers: list[str] = []
        if not self.active:
            return

        capture = _MonitorCapture(
            model,
            layers,
            max_channels=max_channels,
            sample=sample,
            near_zero=near_zero,
        )
        self.layers = list(capture.layers)
        self.probe = None if probe is None else self._check_probe(probe, capture)
        if isinstance(log_dir, (str, os.PathLike)) and not rank_zero_only and self.rank != 0:
            log_dir = os.path.join(os.fspath(log_dir), f"rank{self.rank}")
        # Encode on the writer thread itself: it runs at a low priority to use idle CPU, and
        # extra encoder threads would only compete with training (and cost a start-up each).
        writer = TensorBoardWriter(
            log_dir, max_filters=self.max_filters, cmap=cmap, encode_threads=1
        )

        # -- from here on, resources exist: attach, start the writer thread ------------------
        previous_ref = _ATTACHED.get(self.root)
        previous = previous_ref() if previous_ref is not None else None
        if previous is not None and not previous.closed:
            warnings.warn(
                f"{type(self.root).__name__} already had an open FeatureMonitor; closing it so "
                "hooks do not pile up. Call close() (or use `with`) when you are done with one.",
                RuntimeWarning,
                stacklevel=2,
            )
            try:
                previous.close()
            except RuntimeError:
                pass  # its writer's error belongs to the old run
        _ATTACHED[self.root] = weakref.ref(self)
        self._writer = writer
        self._capture = capture
        capture.enabled = False
        capture.attach()
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=self.queue_size)
        self._window: dict[str, deque[torch.Tensor]] = {}
        self._thread = threading.Thread(
            target=self._run_writer, name="featureviz-monitor-writer", daemon=True
        )
        self._thread.start()
        ref = weakref.ref(self)

        def _close_at_exit() -> None:
            monitor = ref()
            if monitor is not None and not monitor.closed:
                monitor.close()

        self._atexit = _close_at_exit
        atexit.register(_close_at_exit)
        self._arm(self._next_step)

    # -- construction helpers --------------------------------------------------------------------
    def _check_probe(self, probe: Any, capture: _MonitorCapture) -> torch.Tensor:
        first = next(iter(find_conv_layers(self.root).values()))
        x = check_image_batch(
            probe, in_channels=first.in_channels, sample=capture.sample, name="probe"
        )
        x = x.detach().to(device=first.weight.device, dtype=first.weight.dtype).clone()
        # A trial pass, so a probe that does not fit (wrong size for a linear head, ...) fails
        # here, in the calling thread, rather than at the first sampled step.
        with preserved_state(self.root), torch.no_grad():
            try:
                self.root(x)
            except Exception as e:
                raise ValueError(
                    f"the probe of shape {tuple(x.shape)} does not fit "
                    f"{type(self.root).__name__}: {type(e).__name__}: {e}. Pass a probe shaped "
                    "like one training batch, (N, C, H, W) or (C, H, W)."
                ) from e
        return x

    # -- scheduling ------------------------------------------------------------------------------
    def should_capture(self, step: int) -> bool:
        """Whether ``step`` is a sampled step (``step % every == 0`` or the time interval)."""
        if step % self.every == 0:
            return True
        return (
            self.every_seconds is not None
            and time.monotonic() - self._last_capture_time >= self.every_seconds
        )

    def _arm(self, step: int) -> None:
        cap = self._capture
        if cap is None or self.closed or self._error is not None:
            return
        if self.log_hook_maps or self.log_stats:
            armed = self.should_capture(step)
            cap.enabled = armed
            cap.with_stats = self.log_stats
            self._armed_passes = cap.passes if armed else None

    def prepare(self, step: int) -> None:
        """Arm (or disarm) the hooks for the forward pass of global step ``step``.

        :meth:`step` already does this for the step that follows it; call ``prepare`` only if
        you drive the global step yourself and it does not advance by one (the Lightning
        callback calls it at the start of every batch).
        """
        self._raise_background_error()
        self._arm(int(step))

    # -- the training-thread API ---------------------------------------------------------------
    def step(self, global_step: int | None = None) -> bool:
        """Mark the end of an optimisation step; on a sampled step, capture and queue it.

        Args:
            global_step: the step to log at; by default one more than the previous call
                (starting at ``start_step``). The hooks are armed for the step after this
                one; if ``global_step`` jumps to a sampled step they were not armed for, its
                filters and probe maps are logged but no training-batch maps (call
                :meth:`prepare` before that step's forward to get them).

        Returns:
            Whether this step was captured (queued or dropped).

        Raises:
            RuntimeError: the background writer failed since the last call (the original
                error is chained); the monitor stops capturing.
        """
        self._raise_background_error()
        current = self._next_step if global_step is None else int(global_step)
        self._next_step = current + 1
        cap = self._capture
        if cap is None or self.closed or self._error is not None:
            return False
        armed = cap.enabled
        if not armed and not self.should_capture(current):
            self._arm(self._next_step)
            return False
        cap.enabled = False
        self._collect(current, armed)
        self._arm(self._next_step)
        return True

    def _collect(self, step: int, armed: bool) -> None:
        cap = self._capture
        assert cap is not None
        self._last_capture_time = time.monotonic()
        item = _Capture(step=step, walltime=time.time())
        fresh = armed and self._armed_passes is not None and cap.passes > self._armed_passes
        if fresh:
            if self.log_hook_maps:
                item.hook_maps = dict(cap.maps)
            if self.log_stats:
                item.stats = dict(cap.stats)
        if self.probe is not None:
            cap.with_stats = False
            cap.enabled = True
            try:
                with preserved_state(self.root), torch.no_grad():
                    self.root(self.probe)
            finally:
                cap.enabled = False
                cap.with_stats = self.log_stats
            item.probe_maps = dict(cap.maps)
            if not self._probe_logged:
                item.probe_image = self.probe[cap.sample].detach().float()
                self._probe_logged = True
        if self.log_filters or self.histograms:
            for name, conv in cap.layers.items():
                w = conv.weight.detach()
                if self.max_filters is not None:
                    w = w[: self.max_filters]
                item.filters[name] = w
        self._to_host(item)
        try:
            self._queue.put_nowait(item)
            self.captured += 1
        except queue.Full:
            self.dropped += 1
            if self.dropped >= self._next_warn:
                self._next_warn *= 2
                warnings.warn(
                    f"FeatureMonitor dropped the capture of step {step}: the background writer "
                    f"is {self.queue_size} captures behind ({self.dropped} dropped so far). "
                    "Capture less often (a larger `every`), log fewer layers or channels, or "
                    "raise `queue_size`.",
                    RuntimeWarning,
                    stacklevel=3,
                )

    @staticmethod
    def _to_host(item: _Capture) -> None:
        """Copy every tensor of ``item`` to the host without blocking the training thread."""
        event = None

        def move(t: torch.Tensor, copy: bool = False) -> torch.Tensor:
            # Captured maps and statistics are already fresh tensors; weights are copied
            # because the optimiser updates them in place.
            nonlocal event
            if t.device.type == "cpu":
                return t.clone() if copy else t
            if t.device.type == "cuda":
                host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
                host.copy_(t, non_blocking=True)
                event = event or torch.cuda.Event()
                return host
            return t.to("cpu", copy=True)

        item.hook_maps = {k: move(v) for k, v in item.hook_maps.items()}
        item.probe_maps = {k: move(v) for k, v in item.probe_maps.items()}
        item.filters = {k: move(v, copy=True) for k, v in item.filters.items()}
        item.stats = {k: (move(a), move(b), n, m) for k, (a, b, n, m) in item.stats.items()}
        if item.probe_image is not None:
            item.probe_image = move(item.probe_image)
        if event is not None:
            event.record()
            item.ready = event

    # -- background writer -------------------------------------------------------------------
    def _run_writer(self) -> None:
        _lower_thread_priority()
        while True:
            try:
                item = self._queue.get(timeout=0.1)
            except queue.Empty:
                if self._stopping:  # close() could not enqueue the stop marker: drained now
                    self._finish_writer()
                    return
                continue
            try:
                if item is _STOP:
                    self._finish_writer()
                    return
                if self._error is None:
                    self._write(item)
            except BaseException as e:  # noqa: BLE001 - handed to the training thread
                self._error = e
                # Stop capturing: the training thread sees the error at its next step.
                if self._capture is not None:
                    self._capture.enabled = False
            finally:
                self._queue.task_done()

    def _finish_writer(self) -> None:
        """Close the log from the writer thread, after the last capture it wrote."""
        if self._writer is None:
            return
        try:
            self._writer.close()
        except BaseException as e:  # noqa: BLE001 - reported by close() like a writer error
            if self._error is None:
                self._error = e

    def _write(self, item: _Capture) -> None:
        writer = self._writer
        assert writer is not None
        if item.ready is not None:
            item.ready.synchronize()
        step = item.step
        if item.probe_image is not None:
            writer.log_image(item.probe_image, step, name="probe")
        if self.log_filters and item.filters:
            writer.log_filters(item.filters, step)
        if item.hook_maps:
            writer.log_feature_maps(item.hook_maps, step, mode="hook")
        if item.probe_maps:
            writer.log_feature_maps(item.probe_maps, step, mode="probe")
        scalars: dict[str, float] = {}
        for name, (sums, peak, numel, sample_numel) in item.stats.items():
            tag = f"activations/{layer_tag(name)}"
            mean, std, near = _activation_stats(sums, numel, sample_numel)
            active = peak > self.active_threshold
            window = self._window.setdefault(name, deque(maxlen=self.dead_window))
            if window and window[-1].shape != active.shape:
                window.clear()
            window.append(active)
            ever = torch.stack(list(window)).any(dim=0)
            dead = 1.0 - ever.float().mean().item()
            scalars.update(
                {
                    f"{tag}/mean": mean,
                    f"{tag}/std": std,
                    f"{tag}/near_zero": near,
                    f"{tag}/dead_channels": dead,
                }
            )
        if self.histograms:
            for name, m in item.hook_maps.items():
                self._histogram(f"histograms/activations/{layer_tag(name)}", m, step)
            for name, w in item.filters.items():
                self._histogram(f"histograms/weights/{layer_tag(name)}", w, step)
        scalars["featureviz/dropped_captures"] = self.dropped
        writer.log_scalars(scalars, step)
        # Flush each capture: what was written before a crash stays readable.
        writer.flush()

    def _histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        assert self._writer is not None
        v = values.detach().float()  # float32: histc has no bf16 kernel on CPU (pytorch#75667)
        v = v[torch.isfinite(v)]
        if v.numel():
            self._writer.writer.add_histogram(tag, v.numpy(), step)

    # -- errors and shutdown -------------------------------------------------------------------
    def _raise_background_error(self) -> None:
        err = self._error
        if err is not None and not self._error_reported:
            self._error_reported = True
            raise RuntimeError(
                f"FeatureMonitor's background writer failed: {type(err).__name__}: {err}. "
                "No further captures are logged; check that the log directory is writable and "
                "has free space."
            ) from err

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued capture is written (at most ``timeout`` seconds).

        Returns:
            Whether the queue was drained in time.
        """
        if self._thread is None or not self._thread.is_alive():
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        done = self._queue.all_tasks_done  # notified by the writer's task_done()
        with done:
            while self._queue.unfinished_tasks and self._thread.is_alive():
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                # Bounded waits: a writer thread that died still lets this loop look again.
                done.wait(0.1 if remaining is None else min(remaining, 0.1))
        if self._writer is not None and self._error is None:
            self._writer.flush()
        self._raise_background_error()
        return True

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
        if self._atexit is not None:
            atexit.unregister(self._atexit)
            self._atexit = None
        if self._capture is not None:
            self._capture.enabled = False
            self._capture.remove()
        thread = self._thread
        if thread is not None:
            # The writer thread writes what is queued, then closes the log itself (also if
            # this wait gives up: a slow disk then still gets everything, later).
            self._stopping = True
            try:
                self._queue.put_nowait(_STOP)
            except queue.Full:
                pass  # the writer notices `_stopping` once the queue is drained
            thread.join(self.close_timeout)
            if thread.is_alive():
                warnings.warn(
                    f"FeatureMonitor.close() gave up after {self.close_timeout:.0f} s with "
                    f"{self._queue.qsize()} captures unwritten: the background writer is stuck "
                    "(a slow or hung disk?). It keeps writing in the background.",
                    RuntimeWarning,
                    stacklevel=2,
                )
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

    def __del__(self) -> None:  # safety net only; use close() or the context manager
        try:
            if not getattr(self, "closed", True) and self._capture is not None:
                self._capture.remove()
        except Exception:
            pass

    @property
    def log_dir(self) -> str | None:
        """Where the event files go (``None`` on ranks that do not write)."""
        return None if self._writer is None else self._writer.log_dir

    @property
    def error(self) -> BaseException | None:
        """The background writer's error, if it failed."""
        return self._error

    def __repr__(self) -> str:
        return (
            f"FeatureMonitor({type(self.root).__name__}, every={self.every}, "
            f"rank={self.rank}, active={self.active}, captured={self.captured}, "
            f"dropped={self.dropped}, closed={self.closed})"
        )

    @staticmethod
    def stats_tags(layer: str) -> Mapping[str, str]:
        """The scalar tags logged for ``layer``."""
        base = f"activations/{layer_tag(layer)}"
        return {k: f"{base}/{k}" for k in ("mean", "std", "near_zero", "dead_channels")}
