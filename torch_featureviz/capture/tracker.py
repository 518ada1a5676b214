"""Which pass is open, and when it is published or dropped: :class:`PassTracker`, the one
mechanism behind every :class:`~torch_featureviz.FeatureCapture` (root, implicit and probe
passes are described in ``docs/capture.md`` and :mod:`~torch_featureviz.capture.hooks`)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Literal

import torch

from torch_featureviz.capture.compat import in_backward, is_compiling
from torch_featureviz.capture.passes import PassObserver, PassRecord

__all__ = ["PassTracker", "Policy"]

#: Which forwards are captured: ``"all"``, or ``"grad"`` (only those with gradients enabled).
Policy = Literal["all", "grad"]


class PassTracker:
    """Open, publish and drop the passes of one capture, and tell its observers.

    Args:
        observers: the observers every pass reaches (probe passes only those that observe
            probes).
        policy: which forwards are captured (``"all"`` or ``"grad"``).
        on_publish: called with the pass published *before* the new one (or ``None``) when a
            training pass is published: the previous pass's buffers may then be reused.

    Example::

        >>> tracker = PassTracker([], "all")
        >>> record = tracker.open("implicit", opener="conv")
        >>> tracker.end_pass(), tracker.passes, tracker.last is record
        (True, 1, True)
    """

    def __init__(
        self,
        observers: list[PassObserver],
        policy: Policy,
        on_publish: Callable[[PassRecord | None], None] | None = None,
    ) -> None:
        self.observers = observers
        self.policy = policy
        self.on_publish = on_publish
        #: Number of complete passes published.
        self.passes = 0
        #: The last published pass (``None`` before the first one).
        self.last: PassRecord | None = None
        #: How many conv calls were skipped or failed, over the tracker's life.
        self.skipped_calls = 0
        #: The open pass, if any.
        self.pending: PassRecord | None = None
        self.observing: list[PassObserver] = []  # the observers of the pending pass
        self.in_root = False  # a root forward is running (recorded or not)
        self.probing = False  # inside a probe pass: record the root pass whatever the policy
        self._next_index = 0
        self._warned: set[str] = set()

    @property
    def current(self) -> PassRecord | None:
        """The pass a reader sees: an implicit pass in flight (it has no end of its own until
        the next pass or :meth:`end_pass`), else the last published one. Reading changes
        nothing."""
        pending = self.pending
        return pending if pending is not None and pending.kind == "implicit" else self.last

    def records(self) -> bool:
        """Whether a forward starting now is captured (the policy, and never the
        recomputation of checkpointed activations during backward)."""
        if self.probing:
            return True
        if self.policy == "grad" and not torch.is_grad_enabled():
            return False
        return is_compiling() or not in_backward()

    def open(self, kind: str, opener: str | None = None) -> PassRecord:
        """Open a pass of ``kind`` and tell its observers."""
        record = PassRecord(kind=kind, index=self._next_index, opener=opener)
        self._next_index += 1
        self.pending = record
        self.observing = (
            [obs for obs in self.observers if obs.observes_probes]
            if kind == "probe"
            else list(self.observers)
        )
        for obs in self.observing:
            try:
                obs.start(record)
            except Exception as e:  # noqa: BLE001 - never into the user's forward
                self.note(record, "<start>", f"{type(e).__name__}: {e}", "observer")
        return record

    def end_pass(self) -> bool:
        """Close whatever pass is open: publish an implicit pass, drop a root pass that an
        interrupt (Ctrl-C) left open. Returns whether a pass was published."""
        pending = self.pending
        self.in_root = False
        if pending is None:
            return False
        if pending.kind == "implicit":
            self.publish()
            return True
        self.drop()
        return False

    def start_root_pass(self) -> None:
        """The root module's forward starts."""
        if self.pending is not None:
            # An implicit pass ends where a root pass starts; a root pass still open here was
            # left by an interrupt (Ctrl-C inside forward), and is dropped.
            self.end_pass()
        self.in_root = True
        if self.records():
            self.open("probe" if self.probing else "root")

    def end_root_pass(self, *, failed: bool) -> None:
        """The root module's forward ended (``failed``: it raised)."""
        self.in_root = False
        if self.pending is None or self.pending.kind not in ("root", "probe"):
            return
        if failed:
            self.drop()
        else:
            self.publish()

    def publish(self) -> None:
        """End the open pass complete: it becomes :attr:`last`."""
        record, self.pending = self.pending, None
        assert record is not None
        self._finish(record, complete=True)
        if record.kind != "probe" and self.on_publish is not None:
            # The previous pass's tensors may now be overwritten (the documented contract);
            # the one just published stays intact until the next pass is.
            self.on_publish(self.last)
        self.last = record
        self.passes += 1

    def drop(self) -> None:
        """End the open pass incomplete: it is forgotten."""
        record, self.pending = self.pending, None
        if record is not None:
            self._finish(record, complete=False)

    def _finish(self, record: PassRecord, *, complete: bool) -> None:
        observing, self.observing = self.observing, []
        for obs in observing:
            try:
                obs.end(record, complete)
            except Exception as e:  # noqa: BLE001
                self.note(record, "<end>", f"{type(e).__name__}: {e}", "observer")

    def note(self, record: PassRecord, key: str, reason: str, kind: str) -> None:
        """Record that call ``key`` was not captured, and warn once per ``kind`` of reason."""
        record.skipped[key] = reason
        self.skipped_calls += 1
        if kind not in self._warned:
            self._warned.add(kind)
            warnings.warn(
                f"FeatureCapture skipped layer {key!r} in a pass: {reason}. Training is not "
                "affected; this warning is shown once per kind of problem.",
                RuntimeWarning,
                stacklevel=2,
            )
