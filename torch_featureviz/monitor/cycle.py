"""The monitor's step cycle: arm the hooks before a sampled forward, read its filters and probe
maps ahead of it, collect what the forward produced at its ``step()`` (:class:`StepCycle`).

One capture spans two calls: the ``step()`` (or ``prepare()``) that *announces* step N arms
the hooks and, when N is sampled, reads its weights; step N's own ``step()`` takes its forward's
pass, adopts those weights (or reads them again when the model changed or N was not announced)
and queues the capture. The schedule is asked once per announcement and once more at the
step itself only when it could have changed its answer (time-based sampling, or a step that
was never announced).
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

from torch_featureviz.capture.discovery import is_compiled
from torch_featureviz.capture.hooks import FeatureCapture
from torch_featureviz.monitor.background import BackgroundWriter
from torch_featureviz.monitor.channels import ChannelChooser
from torch_featureviz.monitor.config import MonitorConfig
from torch_featureviz.monitor.schedule import CaptureSchedule
from torch_featureviz.monitor.sharding import Sharding
from torch_featureviz.monitor.sink import CaptureItem, start_host_copies
from torch_featureviz.monitor.weights import UnchangedCheck, WeightReader

__all__ = ["CycleState", "StepCycle"]


@dataclass
class CycleState:
    """Everything the cycle remembers between calls."""

    #: The last announced step and the schedule's answer for it.
    announced: tuple[int, bool] | None = None
    #: The capture's pass count when the hooks were armed (``None``: not armed).
    armed_at: int | None = None
    #: The step whose weights were read ahead, and what was read (``None`` on ranks that
    #: only take part).
    prepared_step: int | None = None
    prepared: CaptureItem | None = None
    #: Whether the "no conv output" warning was given.
    warned_no_pass: bool = False


class StepCycle:
    """Arm, prepare and collect the captures of a training run, step by step.

    Args:
        capture: the capture whose hooks see the training forwards, or ``None`` on a rank
            that does not capture (it may still take part in a sharded model's probe passes).
        reader: reads filters and runs probe passes (on every rank of a sharded model).
        schedule: which steps are sampled.
        config: the monitor's options.
        background: the writer captures are queued to (``None`` on ranks that do not write).
        chooser: the channel choice (``channels != "first"``).
        unchanged: the check that the model did not change after its weights were read
            (``None`` on sharded models).
        parts: the result keys of the monitor's optional parts, copied onto each capture.
        model: the model as the user passed it (to notice it being compiled).
        sharding: how the model is sharded, or ``None``.

    Example::

        >>> cycle = StepCycle(None, None, CaptureSchedule(2), MonitorConfig())
        >>> cycle.step(0, 1), cycle.state.announced
        (False, None)
    """

    def __init__(
        self,
        capture: FeatureCapture | None,
        reader: WeightReader | None,
        schedule: CaptureSchedule,
        config: MonitorConfig,
        *,
        background: BackgroundWriter | None = None,
        chooser: ChannelChooser | None = None,
        unchanged: UnchangedCheck | None = None,
        parts: Iterable[str] = (),
        model: nn.Module | None = None,
        sharding: Sharding | None = None,
    ) -> None:
        self.capture = capture
        self.reader = reader
        self.schedule = schedule
        self.config = config
        self.background = background
        self.chooser = chooser
        self.unchanged = unchanged
        self.parts = list(parts)
        self.model = model
        self.sharding = sharding
        self.pid = os.getpid()
        #: The one mutable field.
        self.state = CycleState()

    def failed(self) -> bool:
        """Whether there is no writer, or it failed: nothing more is captured."""
        return self.background is None or self.background.error is not None

    def _due(self, step: int, *, at_step: bool = False) -> bool:
        """The schedule's answer for ``step``, asked when ``step`` is announced. At the step
        itself it is asked again only if the step was not announced, or time could have made
        it due since (``every_seconds``)."""
        announced = self.state.announced
        if announced is not None and announced[0] == step:
            if not at_step or announced[1] or self.schedule.every_seconds is None:
                return announced[1]
        return self.schedule.due(step)

    def announce(self, step: int) -> None:
        """Get ready for the forward of ``step``: arm (or disarm) the hooks and, when it is
        sampled, read its filters and probe maps now."""
        self.arm(step)
        self.prepare(step)

    def arm(self, step: int) -> None:
        """Arm the hooks for ``step``'s forward when it is sampled; disarm them otherwise."""
        due = self.schedule.due(step)
        self.state.announced = (step, due)
        cap = self.capture
        if cap is None or self.failed():
            return
        cfg = self.config
        armed = (cfg.log_hook_maps or cfg.log_stats) and due
        cap.enabled = armed
        self.state.armed_at = cap.passes if armed else None
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
        if self.model is not None and is_compiled(self.model):
            cap.compiled = True  # and it stays so: no need to look again
            return False
        return True

    def prepare(self, step: int) -> None:
        """If ``step`` is sampled, read its filters and run its probe pass now, before its
        forward. Under sharding every rank calls this at the same points, so the ranks'
        collectives match."""
        state = self.state
        if state.prepared_step == step or os.getpid() != self.pid or not self._due(step):
            return
        cap = self.capture
        keep = cap is not None and not self.failed()
        view = None
        if self.reader is not None and (keep or self.sharding is not None):
            view = self.reader.view(step, keep=keep)
        state.prepared_step, state.prepared = step, view
        if self.unchanged is not None:
            self.unchanged.mark()
        if cap is not None and state.armed_at is not None:
            state.armed_at = cap.passes  # the probe pass is not the sampled forward

    def _drop_prepared(self, current: int) -> None:
        """Forget what was prepared for ``current`` or an earlier step: never kept past it."""
        state = self.state
        if state.prepared_step is not None and state.prepared_step <= current:
            state.prepared_step = state.prepared = None

    def forget(self) -> None:
        """Drop what was read ahead (the monitor closes)."""
        self.state.prepared_step = self.state.prepared = None

    def step(self, current: int, next_step: int) -> bool:
        """End step ``current``: collect it when sampled, then announce ``next_step``.

        Returns whether ``current`` was captured (on a rank of a sharded model that does not
        write, whether it took part in a sampled step).
        """
        cap = self.capture
        if cap is None or self.failed():
            if cap is not None:
                cap.enabled = False  # a failed writer: the hooks stay off
            if self.sharding is None:
                return False
            # Take part in the collectives of a sampled step, keep nothing: the same calls,
            # in the same order, as the writing rank's step().
            due = self._due(current, at_step=True)
            if due and self.state.prepared_step != current and self.reader is not None:
                self.reader.read(keep=False)
            self._drop_prepared(current)
            self.state.announced = (next_step, self.schedule.due(next_step))
            self.prepare(next_step)
            return due and cap is None
        captured = False
        try:
            armed = cap.enabled
            # Under sharding the step number alone decides, the same on every rank.
            due = self._due(current, at_step=True)
            if (due or (self.sharding is None and armed)) and os.getpid() == self.pid:
                cap.enabled = False
                self._collect(cap, current, armed)
                captured = True
        finally:
            # Also after a KeyboardInterrupt inside step(): the next step starts clean.
            cap.end_pass()
            self._drop_prepared(current)
            self.arm(next_step)
        self.prepare(next_step)
        return captured

    def _fresh_pass(self, cap: FeatureCapture, step: int, armed: bool) -> bool:
        """Whether the armed forward of ``step`` left a pass of its own (warned once if not)."""
        state, last = self.state, cap.last
        armed_at = state.armed_at
        fresh = (
            armed
            and armed_at is not None
            and cap.passes > armed_at
            and last is not None
            and last.kind != "probe"
        )
        empty = fresh and last is not None and not last.maps and not last.skipped
        if armed and (empty or cap.passes == armed_at) and not state.warned_no_pass:
            state.warned_no_pass = True
            warnings.warn(
                f"FeatureMonitor captured no conv output of {type(cap.root).__name__} in the "
                f"forward before step() of step {step}, a sampled step: its training-batch "
                "maps and statistics are not logged (filters and probe maps are). Either no "
                "forward ran with gradients enabled (passes='grad', the default, leaves out "
                "torch.no_grad() and inference_mode: pass passes='all', formerly record='all', "
                "to capture inference), "
                "or the forward ran code compiled without the hooks (torch.compile applied "
                "after the monitor's first steps: create the monitor right before "
                "torch.compile, or pass keep_hooks=True). This warning is shown once.",
                RuntimeWarning,
                stacklevel=5,
            )
        return fresh

    def _collect(self, cap: FeatureCapture, step: int, armed: bool) -> None:
        background, cfg, state = self.background, self.config, self.state
        assert background is not None
        cap.end_pass()  # an implicit pass (a loop that bypasses forward) ends here
        self.schedule.mark()
        item = CaptureItem(step=step, walltime=time.time(), dropped=background.dropped)
        last = cap.last
        if self._fresh_pass(cap, step, armed) and last is not None:
            if cfg.log_hook_maps:
                item.hook_maps = dict(last.maps)
            if self.chooser is not None:
                item.channels = self.chooser.shown(cap.channel_index, last.maps)
                cap.channel_index = self.chooser.update(last.channel_means, cap.channel_index)
            stats = last.results.get("stats")
            if cfg.log_stats and stats is not None:
                item.stats = dict(stats)
            item.parts = {k: last.results[k] for k in self.parts if k in last.results}
        start_host_copies(item)
        # The weights were read before this step's forward (see prepare); a step reached
        # without that (a jump of global_step, one sampled by time, an interrupted
        # preparation) or whose model changed before its forward reads them now, after taking
        # its forward's pass.
        view = state.prepared
        changed = self.unchanged is not None and self.unchanged.changed
        if (state.prepared_step != step or changed) and self.reader is not None:
            view = self.reader.view(step, keep=True)
        state.prepared_step = state.prepared = None
        if view is not None:
            item.adopt_weights(view)
        background.submit(item, label=f"the capture of step {step}")
