"""What a pass is, as the hooks' users see it: :class:`PassRecord` and :class:`PassObserver`.

A :class:`~torch_featureviz.FeatureCapture` opens a :class:`PassRecord` when a pass starts, fills
it while the convs run and publishes it when the pass ends. Work added per conv output and per
pass is a :class:`PassObserver`; what an observer computes comes back on the record it was handed
(:attr:`PassRecord.results`), never by a side channel.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from torch_featureviz.naming import CallCounter

__all__ = ["PassObserver", "PassRecord"]


@dataclass
class PassRecord:
    """One pass of a :class:`~torch_featureviz.FeatureCapture`, as observers see it and as it
    is published.

    Example::

        >>> record = PassRecord(kind="root", index=0)
        >>> record.calls.next_key("conv"), record.calls.next_key("conv")
        (('conv', 0), ('conv#1', 1))
    """

    #: ``"root"``, ``"implicit"`` or ``"probe"`` (see :mod:`~torch_featureviz.capture.hooks`).
    kind: str
    #: The number of this pass among the capture's passes (0-based).
    index: int
    #: ``{key: map}``: ``(C, *spatial)`` float32 copies of the kept sample, in call order.
    maps: dict[str, torch.Tensor] = field(default_factory=dict)
    #: ``{key: reason}`` for conv calls that could not be captured in this pass.
    skipped: dict[str, str] = field(default_factory=dict)
    #: For an implicit pass, the layer whose call opened it.
    opener: str | None = None
    #: ``{key: (C,) mean of each channel of the kept sample}``, every channel (only when the
    #: capture's ``track_channel_means`` is on).
    channel_means: dict[str, torch.Tensor] = field(default_factory=dict)
    #: What observers computed for this pass, each under its own :attr:`PassObserver.result_key`
    #: (the monitor's statistics are ``results["stats"]``); set when the pass ends complete.
    results: dict[str, Any] = field(default_factory=dict)
    calls: CallCounter = field(default_factory=CallCounter, repr=False)


class PassObserver:
    """Work added to every captured pass: subclass and pass it to
    :class:`~torch_featureviz.FeatureCapture`.

    The methods run inside the model's forward, on the conv output's device: keep them to a few
    tensor ops, with no host sync. An exception they raise is caught, the call is recorded in
    :attr:`PassRecord.skipped` and a warning is issued once; it never reaches the user's code.
    An observer hands its result back by writing ``record.results[self.result_key]`` in
    :meth:`end`.

    Example::

        >>> class CountConvs(PassObserver):
        ...     result_key = "convs"
        ...     def start(self, record): record.results[self.result_key] = 0
        ...     def output(self, record, key, module, output): record.results["convs"] += 1
        >>> CountConvs().observes_probes
        True
    """

    #: Whether probe passes (:meth:`FeatureCapture.probe`) reach this observer at all. An
    #: observer that ignores them says so, and its methods and watched modules' hooks then
    #: cost a probe pass nothing.
    observes_probes: bool = True
    #: The key of this observer's result in :attr:`PassRecord.results`.
    result_key: str = ""

    def start(self, record: PassRecord) -> None:
        """A pass opened."""

    def output(self, record: PassRecord, key: str, module: nn.Module, output: torch.Tensor) -> None:
        """Conv call ``key`` of the pass produced ``output`` (the full batch, not detached)."""

    def end(self, record: PassRecord, complete: bool) -> None:
        """The pass closed; ``complete`` is False when the forward raised (it is dropped)."""

    def watch(self, root: nn.Module) -> Mapping[str, nn.Module]:
        """Other modules of ``root`` whose outputs this observer wants (by qualified name);
        their outputs arrive in :meth:`module_output` during captured passes."""
        return {}

    def module_output(
        self, record: PassRecord, name: str, module: nn.Module, args: Any, output: Any
    ) -> None:
        """A watched module ran inside a captured pass."""
