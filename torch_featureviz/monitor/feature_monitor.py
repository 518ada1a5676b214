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

It wires small parts together (see ``docs/architecture.md``): a
:class:`~torch_featureviz.FeatureCapture` armed by its ``enabled`` flag around sampled forwards, an
:class:`~.statistics.ActivationStatistics` observer on it, a
:class:`~torch_featureviz.monitor.schedule.CaptureSchedule`, and a
:class:`~torch_featureviz.monitor.background.BackgroundWriter` feeding a
:class:`~.sink.TensorBoardSink`. Options are a
:class:`~torch_featureviz.MonitorConfig`.

How it stays cheap:

- On an unsampled step the model runs without the monitor's hooks (they are added before a
  sampled step's forward and removed after it; on a compiled model they stay, switched off, see
  ``keep_hooks``) and :meth:`FeatureMonitor.step` only counts: no tensor work and no host
  synchronisation.
- A capture's work on the training thread is spread over two steps. The ``step()`` before a
  sampled step copies the first ``max_filters`` filters and runs the probe pass, with the weights
  the sampled forward will run with; the sampled step's forward copies small, already selected
  tensors (one sample, ``max_channels`` channels per layer, a few sums), and its ``step()``
  queues them. A background thread at a lower priority (nice +10 on Linux) renders, encodes and
  writes.
  When the queue is full the capture is dropped (``on_full="drop"``, counted in
  :attr:`FeatureMonitor.dropped`, with a warning) or the step waits (``on_full="block"``).

What is the training batch: by default (``record="grad"``) the last forward run with gradients
enabled between two ``step()`` calls. Validation under ``torch.no_grad()`` or
``torch.inference_mode()`` and EMA evaluation are neither copied nor logged. A loop that trains in
eval mode is still captured (gradients are on); a loop that validates *with* gradients enabled
before ``step()`` has its validation batch logged instead: wrap validation in ``torch.no_grad()``.
Loops that never call the model's own ``forward`` (``m.forward_head(m.forward_features(x))``)
are captured too: their pass runs from the first conv to ``step()``.

What is logged at the global step (tags, under ``<name>/`` when ``name`` is set), all of it from
the model as that step's forward found it (step 0 shows the initial weights):

- ``filters/<layer>``: filter grids (see :func:`~torch_featureviz.make_filter_grid`) of the
  weights the step's forward ran with;
- ``feature_maps/hook/<layer>``: maps of sample ``sample`` of the training batch, from the
  step's own forward pass (no extra forward);
- ``feature_maps/probe/<layer>``: maps of the fixed ``probe`` input, run under ``no_grad`` in
  eval mode, on the model's current device and dtype, with those same weights (and BatchNorm
  statistics): the pass runs at the ``step()`` before the sampled step, or at the sampled
  ``step()`` itself when that step was not announced (a jump of ``global_step``, a step
  sampled by ``every_seconds``) or when the model's tensors changed before its forward (a
  checkpoint loaded after the monitor was made; checked on eager, unsharded models). The
  model is restored exactly afterwards. ``input/probe`` shows the probe once;
- ``activations/<layer>/{mean,std,near_zero,dead_channels}``: float32 statistics of the
  activation after each conv (see :class:`~.statistics.ActivationStatistics`),
  or of the conv's output. ``mean``, ``std`` and ``dead_channels`` cover the whole training
  batch and every channel; ``near_zero`` is the fraction of values with ``|x| <= near_zero``
  in the shown sample; a channel is *active* in a capture when some value is
  ``> active_threshold``, and ``dead_channels`` is the fraction of channels never active in
  the last ``dead_window`` captures;
- ``histograms/{activations,weights}/<layer>`` when ``histograms=True``;
- ``featureviz/dropped_captures``: how many captures were dropped so far.

TensorBoard shows only 10 images per tag by default; start it with
``tensorboard --logdir DIR --samples_per_plugin images=0`` (see
:func:`~torch_featureviz.tensorboard_command`) to scrub through every step.

Distributed training: under DDP only rank 0 captures and writes by default (no collective is
ever issued); names never carry DDP's or DataParallel's ``module.`` prefix. Under sharded
training (FSDP2's ``fully_shard``, FSDP1) create the monitor on every rank with the same options:
before each sampled step every rank's ``step()`` (the constructor, for the first; ``prepare()``
when it announces the step) gathers the watched filters and runs the probe pass, in that order,
and only rank 0 keeps and writes them (see :mod:`torch_featureviz.monitor.sharding`); hooks
and the writer thread never issue a collective. ``every_seconds`` is refused there.

Ends of processes: :meth:`FeatureMonitor.close` (or ``with``) writes everything. A monitor that
is garbage-collected without ``close()``, and one still open at interpreter exit, is closed then.
SIGTERM kills a Python process without running either, unless ``handle_sigterm=True``: then the
monitor flushes and closes, and the previous SIGTERM handler runs. A monitor cannot be created
inside a DataLoader worker.
"""

from __future__ import annotations

import itertools
import math
import os
import signal
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.utils.data
from torch import nn

from torch_featureviz._validation import (
    ModelInput,
    check_model_input,
    check_module,
    check_non_negative_int,
    check_timeout,
    describe_input,
    input_hint,
    unbatched_dims,
)
from torch_featureviz.capture.compat import is_compiling
from torch_featureviz.capture.discovery import is_compiled, unwrap_model
from torch_featureviz.capture.hooks import (
    FeatureCapture,
    PassObserver,
    PassRecord,
)
from torch_featureviz.capture.pooling import pool_map
from torch_featureviz.log.tensorboard import TensorBoardWriter
from torch_featureviz.monitor.background import BackgroundWriter, Sink
from torch_featureviz.monitor.budget import MapBudget, plan_filters
from torch_featureviz.monitor.channels import ChannelChooser
from torch_featureviz.monitor.config import MonitorConfig
from torch_featureviz.monitor.schedule import CaptureSchedule
from torch_featureviz.monitor.sharding import gather_weights, sharding_of
from torch_featureviz.monitor.sink import (
    SUMMARY_NAMES,
    CaptureItem,
    TensorBoardSink,
    start_host_copies,
    stat_groups,
)
from torch_featureviz.monitor.statistics import STAT_NAMES, ActivationStatistics, DeadChannelWindow
from torch_featureviz.naming import layer_tag, make_tag
from torch_featureviz.render.grids import to_output_filters

__all__ = ["FeatureMonitor"]

#: The open monitor of each model: a second monitor on the same model closes the first (a
#: notebook cell run twice must not stack hooks; wandb.watch's pitfall).
_ATTACHED: weakref.WeakKeyDictionary[nn.Module, weakref.ref[FeatureMonitor]] = (
    weakref.WeakKeyDictionary()
)
#: What ``log_budget`` keeps aside from images: a capture's fixed records (its summaries, the
#: model-wide statistics), and per watched conv its scalars and its images' own PNG and
#: summary headers (measured: 450-600 bytes per conv on resnet50 and densenet201; PNGs of
#: noise-like grids also take a little more than a byte per pixel).
_FIXED_BYTES = 5_000
_BYTES_PER_LAYER = 700
#: The probe's input image, logged once, takes at most this share of ``log_budget`` (as
#: pixel values); a larger one is average-pooled by an integer factor.
_PROBE_IMAGE_SHARE = 8
#: Open monitors by (log directory, name), to warn when two would write the same tags.
_LOG_DIRS: dict[tuple[str, str | None], weakref.ref[FeatureMonitor]] = {}


def _distributed_rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return int(torch.distributed.get_rank())
    return 0


def _versions(root: nn.Module) -> tuple[int, ...]:
    """The in-place version counters of every parameter and buffer (-1 where a tensor has
    none): any write to the model's tensors (an optimizer step, ``load_state_dict``, a BatchNorm
    update) changes them."""
    out = []
    for t in itertools.chain(root.parameters(), root.buffers()):
        try:
            out.append(int(t._version))
        except RuntimeError:  # an inference tensor
            out.append(-1)
    return tuple(out)


class _UnchangedCheck(PassObserver):
    """Whether the model's tensors changed between :meth:`mark` and the start of the next
    training pass. The monitor marks when it has read a sampled step's filters and run its
    probe pass ahead of that step's forward; a change before that forward (a checkpoint loaded
    after the monitor was made, weights set by hand) means they no longer show the model the
    forward runs with, and the step reads them again at its own ``step()``. Eager, unsharded
    models only (a sharded model's registered tensors are shards; a compiled forward is not
    looked into)."""

    observes_probes = False

    def __init__(self, root: nn.Module) -> None:
        self.root = root
        self.changed = False
        self._marked: tuple[int, ...] | None = None

    def mark(self) -> None:
        self._marked = _versions(self.root)
        self.changed = False

    def start(self, record: PassRecord) -> None:
        marked, self._marked = self._marked, None  # the first pass after the mark decides
        if marked is not None and not is_compiling() and _versions(self.root) != marked:
            self.changed = True


def _shutdown(capture: FeatureCapture, background: BackgroundWriter, timeout: float) -> None:
    """Remove the hooks and close the writer: what close() and the finaliser both do. It holds
    no reference to the monitor, so a monitor can be collected and still be closed."""
    capture.enabled = False
    capture.remove()
    background.close(timeout)


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
            (``max_channels``, ``record``, ``on_full``, ``name``, ``histograms``, ...).

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
        # -- everything is checked in the calling thread, before any hook or file exists ------
        check_module(model)
        if sink_wrapper is not None and not callable(sink_wrapper):
            raise TypeError(f"sink_wrapper must be callable, got {type(sink_wrapper).__name__}.")
        if config is not None and not isinstance(config, MonitorConfig):
            raise TypeError(f"config must be a MonitorConfig or None, got {type(config).__name__}.")
        if every is not None:
            options["every"] = every
        if layers is not None:
            options["layers"] = layers
        base = {} if config is None else config.as_dict()
        self.config = cfg = MonitorConfig.from_options({**base, **options})
        if torch.utils.data.get_worker_info() is not None:
            raise RuntimeError(
                "FeatureMonitor cannot be created inside a DataLoader worker: its writer thread "
                "would die with the worker. Create it in the training process."
            )
        self.every = cfg.every
        self.model = model
        self.root = unwrap_model(model)
        self.rank = _distributed_rank()
        #: False on DDP ranks other than 0 (with ``rank_zero_only``): nothing is captured there.
        self.active = not (cfg.rank_zero_only and self.rank != 0)
        self.closed = False
        self.schedule = CaptureSchedule(cfg.every, cfg.every_seconds)
        self._next_step = cfg.start_step
        self._armed_at: int | None = None
        # The weights of the next sampled step (filters and probe maps, host copies started),
        # read before its forward; see _prepare.
        self._prepared_step: int | None = None
        self._prepared: CaptureItem | None = None
        self._pid = os.getpid()
        self._probe_logged = False
        self._capture: FeatureCapture | None = None
        self._warned_no_pass = False
        self._background: BackgroundWriter | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self.probe: ModelInput | None = None
        #: Charts in the custom-scalars layout written at construction.
        self.charts = 0
        self.stats = ActivationStatistics(
            sample=cfg.sample, near_zero=cfg.near_zero, after_activation=cfg.stats_after_activation
        )
        capture = FeatureCapture(
            model,
            cfg.layers,
            max_channels=cfg.max_channels,
            sample=cfg.sample,
            record=cfg.record,
            max_calls=cfg.max_calls,
            types=cfg.types,
            observers=[self.stats] if cfg.log_stats else [],
        )  # a model without convs fails here, with its own message
        #: How the model is sharded (``"dtensor"``: FSDP2's ``fully_shard``; ``"fsdp1"``), or
        #: ``None``. Under sharding every rank takes part in probe passes and filter gathers.
        self.sharding = sharding_of(self.root)
        self._unchanged: _UnchangedCheck | None = None
        # What each filter grid shows (filters, and inputs of a 1x1 conv's weight matrix) and
        # its tile width, fitted to log_budget and max_grid_side by _map_budget.
        self._filter_shown: dict[str, tuple[int, int | None]] = {}
        self._filter_tile = cfg.filter_tile
        if self.sharding is None:
            self._unchanged = _UnchangedCheck(self.root)
            capture.observers.append(self._unchanged)
        self._shared = capture  # what the collective part of a sampled step runs on
        if self.sharding is not None:
            self._check_sharded(capture, probe)
        #: The watched conv layers' qualified names (empty on ranks that do not capture).
        self.layers: list[str] = list(capture.layers) if self.active else []
        if not self.active:
            if self.sharding is not None and probe is not None:
                self.probe = self._check_probe(probe, capture, record=False)
            self._prepare(self._next_step)  # under sharding, every rank takes part
            return
        if probe is not None:
            self.probe = self._check_probe(probe, capture)
        if isinstance(log_dir, (str, os.PathLike)) and not cfg.rank_zero_only and self.rank:
            log_dir = os.path.join(os.fspath(log_dir), f"rank{self.rank}")
        # Encode on the writer thread itself: it runs at a low priority to use idle CPU, and
        # extra encoder threads would only compete with training.
        capture.pixel_cap = self._map_budget(capture)
        capture.track_channel_means = cfg.channels != "first"
        self._chooser = ChannelChooser(cfg.channels, cfg.max_channels, cfg.channel_refresh)
        writer = TensorBoardWriter(
            log_dir,
            max_filters=cfg.max_filters,
            cmap=cfg.cmap,
            encode_threads=1,
            prefix=cfg.name,
            min_filter_tile=self._filter_tile,
            opener=event_file_opener,
        )
        self._warn_shared_log_dir(writer.log_dir)
        writer.log_layer_index(capture.layers, cfg.start_step)  # the tab's layer order
        if cfg.log_stats:
            self.charts = writer.log_scalar_layout(
                stat_groups(list(capture.layers)), STAT_NAMES, SUMMARY_NAMES, cfg.start_step
            )
        if cfg.handle_sigterm and threading.current_thread() is not threading.main_thread():
            writer.close()
            raise ValueError(
                "handle_sigterm=True needs the monitor to be created in the main thread (Python "
                "runs signal handlers there); create it there or leave handle_sigterm False."
            )

        # -- from here on, resources exist: attach, start the writer thread ------------------
        self._close_previous_monitor()
        sink = TensorBoardSink(
            writer,
            log_filters=cfg.log_filters,
            histograms=cfg.histograms,
            dead=DeadChannelWindow(cfg.dead_window, cfg.active_threshold),
        )
        self._background = BackgroundWriter(
            sink if sink_wrapper is None else sink_wrapper(sink),
            queue_size=cfg.queue_size,
            on_full=cfg.on_full,
            block_timeout=cfg.block_timeout,
            name="featureviz-monitor-writer",
        )
        self._log_dir = writer.log_dir
        self._capture = capture
        capture.enabled = False
        capture.attach()
        # Closed when collected without close(), and at interpreter exit.
        self._finalizer = weakref.finalize(
            self, _shutdown, capture, self._background, cfg.close_timeout
        )
        if cfg.handle_sigterm:
            self._install_sigterm_handler()
        self._arm(self._next_step)
        try:
            self._prepare(self._next_step)
        except BaseException:
            self.close()
            raise

    # -- construction helpers --------------------------------------------------------------------
    def _check_sharded(self, capture: FeatureCapture, probe: ModelInput | None) -> None:
        """Under sharding: the same options on every rank, and none that cannot work; raised
        on every rank alike (each sees every rank's options), before any collective is run."""
        cfg = self.config
        mine = {
            "every": cfg.every,
            "every_seconds": cfg.every_seconds,
            "start_step": cfg.start_step,
            "layers": tuple(capture.layers),
            "probe": None if probe is None else describe_input(probe),
            "filters": self._reads_weights,
        }
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        everyone: list[Any] = [None] * world
        if world > 1:
            torch.distributed.all_gather_object(everyone, mine)
        else:
            everyone = [mine]
        for rank, theirs in enumerate(everyone):
            for key, value in mine.items():
                if theirs[key] != value:
                    raise ValueError(
                        f"FeatureMonitor on a sharded model needs the same options on every "
                        f"rank, but {key} differs: {value!r} on rank {self.rank}, "
                        f"{theirs[key]!r} on rank {rank}. Create the monitor on every rank with "
                        "the same model, options and probe shape: probe passes and filter "
                        "gathers run on all ranks together."
                    )
        if cfg.every_seconds is not None:
            raise ValueError(
                "every_seconds cannot be used with a sharded model (FSDP): each rank's clock "
                "would pick different steps, and probe passes and filter gathers need every "
                "rank at the same step. Use every=N."
            )
        if cfg.log_filters and not cfg.gather_filters and self.active:
            warnings.warn(
                "gather_filters=False: filter grids (and weight histograms) are not logged for "
                "this sharded model; feature maps and statistics still are.",
                RuntimeWarning,
                stacklevel=3,
            )

    @property
    def _reads_weights(self) -> bool:
        """Whether sampled steps read the watched convs' weights (gathered under sharding)."""
        cfg = self.config
        wanted = cfg.log_filters or cfg.histograms
        return wanted and (self.sharding is None or cfg.gather_filters)

    def _check_probe(
        self, probe: Any, capture: FeatureCapture, *, record: bool = True
    ) -> ModelInput:
        x = check_model_input(
            probe,
            sample=capture.sample,
            unbatched_dims=unbatched_dims(capture.layers),
            name="probe",
        )
        if isinstance(x, torch.Tensor):
            x = x.detach().clone()
        # A trial pass, so a probe that does not fit (wrong size for a linear head, ...) fails
        # here, in the calling thread, rather than at the first sampled step.
        try:
            capture.probe(x, record=record)
        except RuntimeError as e:
            cause = e.__cause__ if isinstance(e.__cause__, Exception) else e
            raise ValueError(
                f"the probe of {describe_input(x)} does not fit {type(self.root).__name__}: "
                f"{cause}{input_hint(cause)}. Pass a probe shaped like one training batch."
            ) from e
        return x

    def _map_budget(self, capture: FeatureCapture) -> MapBudget:
        """Share ``log_budget`` between the filter grids and the maps of each view.

        The filter grids take what they need, up to two thirds of it: past that their tiles,
        then their filter counts, are halved (:func:`~.budget.plan_filters`),
        so a model with hundreds of convs stays within the budget too. Each view's maps get
        an equal part of the rest. ``max_grid_side`` caps every filter grid as it caps maps.
        """
        cfg = self.config
        layers = len(capture.layers)
        budget = cfg.log_budget
        if budget is not None:
            budget = max(budget - _FIXED_BYTES - _BYTES_PER_LAYER * layers, 0)
        if cfg.log_filters and self._reads_weights:
            filter_budget = None if budget is None else budget * 2 // 3
            self._filter_tile, self._filter_shown, pixels = plan_filters(
                capture.layers, cfg.max_filters, cfg.filter_tile, filter_budget, cfg.max_grid_side
            )
            if budget is not None:
                budget -= pixels
        if budget is not None:
            views = int(cfg.log_hook_maps) + int(self.probe is not None)
            budget = max(budget, 64 * layers) // max(views, 1)
        return MapBudget(budget, layers, cfg.max_grid_side)

    def _warn_shared_log_dir(self, log_dir: str) -> None:
        key = (os.path.realpath(log_dir), self.config.name)
        other = _LOG_DIRS.get(key)
        other_monitor = other() if other is not None else None
        if other_monitor is not None and not other_monitor.closed:
            warnings.warn(
                f"another open FeatureMonitor writes into {log_dir!r} with the same tags "
                f"(name={self.config.name!r}); their images and charts will mix. Give each "
                "monitor its own name=..., e.g. FeatureMonitor(G, logdir, name='G').",
                RuntimeWarning,
                stacklevel=3,
            )
        _LOG_DIRS[key] = weakref.ref(self)

    def _close_previous_monitor(self) -> None:
        previous_ref = _ATTACHED.get(self.root)
        previous = previous_ref() if previous_ref is not None else None
        if previous is not None and not previous.closed:
            warnings.warn(
                f"{type(self.root).__name__} already had an open FeatureMonitor; closing it so "
                "hooks do not pile up. Call close() (or use `with`) when you are done with one.",
                RuntimeWarning,
                stacklevel=3,
            )
            try:
                previous.close()
            except RuntimeError:
                pass  # its writer's error belongs to the old run
        _ATTACHED[self.root] = weakref.ref(self)

    def _install_sigterm_handler(self) -> None:
        ref = weakref.ref(self)
        previous = signal.getsignal(signal.SIGTERM)

        def on_sigterm(signum: int, frame: Any) -> None:
            monitor = ref()
            if monitor is not None:
                try:
                    monitor.close()
                except Exception:  # noqa: BLE001 - the process is ending; keep chaining
                    pass
            if callable(previous):
                previous(signum, frame)
            elif previous != signal.SIG_IGN:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.kill(os.getpid(), signal.SIGTERM)

        signal.signal(signal.SIGTERM, on_sigterm)

    # -- scheduling ------------------------------------------------------------------------------
    def should_capture(self, step: int) -> bool:
        """Whether ``step`` is a sampled step (``step % every == 0`` or the time interval)."""
        return self.schedule.due(step)

    def _arm(self, step: int) -> None:
        cap = self._capture
        if cap is None or self.closed or self._failed():
            return
        cfg = self.config
        armed = (cfg.log_hook_maps or cfg.log_stats) and self.schedule.due(step)
        cap.enabled = armed
        self._armed_at = cap.passes if armed else None
        # Hooks only around sampled forwards: a module with hooks takes PyTorch's slower call
        # path even when they return at once. Kept (switched off) on a compiled model, whose
        # graphs are traced with them, and until a training forward has been seen to run
        # eagerly (one compiled later, while they were removed, would never see them).
        if armed:
            if not cap.attached:
                cap.attach()
        elif cap.attached and self._may_remove_hooks(cap):
            cap.remove()

    def _may_remove_hooks(self, cap: FeatureCapture) -> bool:
        if self.config.keep_hooks or cap.compiled or not cap.ran_eagerly:
            return False
        if is_compiled(self.model):
            cap.compiled = True  # and it stays so: no need to look again
            return False
        return True

    def _failed(self) -> bool:
        return self._background is None or self._background.error is not None

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
        self._arm(step)
        self._prepare(step)

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
        cap = self._capture
        if cap is None or self._failed():
            if cap is not None:
                cap.enabled = False  # a failed writer: the hooks stay off
            if self.sharding is None:
                return False
            # Take part in the collectives of a sampled step, keep nothing: the same calls,
            # in the same order, as the writing rank's step().
            due = self.schedule.due(current)
            if due and self._prepared_step != current:
                self._shared_work(keep=False)
            self._drop_prepared(current)
            self._prepare(self._next_step)
            return due and cap is None
        captured = False
        try:
            armed = cap.enabled
            # Under sharding the step number alone decides, the same on every rank.
            due = self.schedule.due(current)
            if (due or (self.sharding is None and armed)) and os.getpid() == self._pid:
                cap.enabled = False
                self._collect(current, armed)
                captured = True
        finally:
            # Also after a KeyboardInterrupt inside step(): the next step starts clean.
            cap.end_pass()
            self._drop_prepared(current)
            self._arm(self._next_step)
        self._prepare(self._next_step)
        return captured

    def _drop_prepared(self, current: int) -> None:
        """Forget what was prepared for ``current`` or an earlier step: never kept past it."""
        if self._prepared_step is not None and self._prepared_step <= current:
            self._prepared_step = self._prepared = None

    def _prepare(self, step: int) -> None:
        """If ``step`` is sampled, read its filters and run its probe pass now, before its
        forward: the capture then shows the weights that forward runs with, and its own
        ``step()`` only copies what the forward produced. Under sharding every rank calls
        this at the same points (the constructor, ``step()``, ``prepare()``), so the ranks'
        collectives match."""
        if (
            self._prepared_step == step
            or self.closed
            or os.getpid() != self._pid
            or not self.schedule.due(step)
        ):
            return
        cap = self._capture
        keep = cap is not None and not self._failed()
        view = None
        if keep or self.sharding is not None:
            view = self._weights_view(step, keep=keep)
        self._prepared_step, self._prepared = step, view
        if self._unchanged is not None:
            self._unchanged.mark()
        if cap is not None and self._armed_at is not None:
            self._armed_at = cap.passes  # the probe pass is not the sampled forward

    def _probe_image_factor(self, shape: torch.Size) -> int:
        """The pooling factor that fits a ``(C, H, W)`` probe image within ``max_grid_side``
        and its share of ``log_budget``."""
        cfg = self.config
        factor = 1
        if cfg.max_grid_side is not None and max(shape[1:]) > cfg.max_grid_side:
            factor = math.ceil(max(shape[1:]) / cfg.max_grid_side)
        if cfg.log_budget is not None:
            values = cfg.log_budget // _PROBE_IMAGE_SHARE
            while (
                shape[0] * math.ceil(shape[1] / factor) * math.ceil(shape[2] / factor) > values
                and factor < max(shape[1:])
            ):
                factor += 1
        return factor

    def _weights_view(self, step: int, *, keep: bool) -> CaptureItem | None:
        """The filters and probe maps of ``step`` as a :class:`CaptureItem` with its host
        copies started (``None`` when not ``keep``: then this rank only takes part)."""
        filters, probe_maps = self._shared_work(keep=keep)
        if not keep:
            return None
        view = CaptureItem(step=step, walltime=0.0, filters=filters)
        if self.probe is not None:
            view.probe_maps = probe_maps
            if not self._probe_logged:
                self._probe_logged = True
                first = self.probe if isinstance(self.probe, torch.Tensor) else None
                if first is not None and first.dim() >= 3:
                    image = first[self.config.sample].detach().float()
                    if image.dim() == 3:
                        image = pool_map(image, self._probe_image_factor(image.shape))
                    view.probe_image = image
        start_host_copies(view)
        return view

    def _collect(self, step: int, armed: bool) -> None:
        cap, background, cfg = self._capture, self._background, self.config
        assert cap is not None and background is not None
        cap.end_pass()  # an implicit pass (a loop that bypasses forward) ends here
        self.schedule.mark()
        item = CaptureItem(step=step, walltime=time.time(), dropped=background.dropped)
        last = cap.last
        fresh = (
            armed
            and self._armed_at is not None
            and cap.passes > self._armed_at
            and last is not None
            and last.kind != "probe"
        )
        empty = fresh and last is not None and not last.maps and not last.skipped
        if armed and (empty or cap.passes == self._armed_at) and not self._warned_no_pass:
            self._warned_no_pass = True
            warnings.warn(
                f"FeatureMonitor captured no conv output of {type(self.root).__name__} in the "
                f"forward before step() of step {step}, a sampled step: its training-batch "
                "maps and statistics are not logged (filters and probe maps are). Either no "
                "forward ran with gradients enabled (record='grad', the default, leaves out "
                "torch.no_grad() and inference_mode: pass record='all' to capture inference), "
                "or the forward ran code compiled without the hooks (torch.compile applied "
                "after the monitor's first steps: create the monitor right before "
                "torch.compile, or pass keep_hooks=True). This warning is shown once.",
                RuntimeWarning,
                stacklevel=3,
            )
        if fresh and last is not None:
            if cfg.log_hook_maps:
                item.hook_maps = dict(last.maps)
            if cfg.channels != "first":
                item.channels = self._chooser.shown(cap.channel_index, last.maps)
                cap.channel_index = self._chooser.update(last.channel_means, cap.channel_index)
            published = self.stats.published
            if cfg.log_stats and published is not None and published[0] == last.index:
                item.stats = dict(published[1])
        start_host_copies(item)
        # The weights were read before this step's forward (see _prepare); a step reached
        # without that (a jump of global_step, one sampled by time, an interrupted
        # preparation) or whose model changed before its forward reads them now, after taking
        # its forward's pass.
        view = self._prepared
        changed = self._unchanged is not None and self._unchanged.changed
        if self._prepared_step != step or changed:
            view = self._weights_view(step, keep=True)
        self._prepared_step = self._prepared = None
        if view is not None:
            item.adopt_weights(view)
        background.submit(item, label=f"the capture of step {step}")

    def _shared_work(
        self, *, keep: bool
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """What a sampled step runs that, on a sharded model, needs every rank: read the
        watched convs' filters (gathered), then the probe pass. Always in this order, so the
        ranks' collectives match. Returns ``(filters, probe maps)``, empty when not ``keep``."""
        cfg, cap = self.config, self._shared
        filters: dict[str, torch.Tensor] = {}
        if self._reads_weights:
            weights = gather_weights(self.root, cap.layers, keep=keep, sharding=self.sharding)
            for name, w in weights.items():
                conv = cap.layers[name]
                w = to_output_filters(  # one filter per output channel
                    w,
                    transposed=bool(getattr(conv, "transposed", False)),
                    groups=int(getattr(conv, "groups", 1)),
                )
                shown, inputs = self._filter_shown.get(name, (cfg.max_filters, None))
                w = w if shown is None else w[:shown]
                filters[name] = w if inputs is None else w[:, :inputs]
        maps: dict[str, torch.Tensor] = {}
        if self.probe is not None:
            maps = dict(cap.probe(self.probe, record=keep))
        return filters, maps

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
        self._prepared_step = self._prepared = None
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
        return getattr(self, "_log_dir", None)

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
