"""Hook mode: capture the true output of every selected conv during a real forward pass.

One mechanism decides what a *pass* is, for every user of hooks in this package:

- A **root pass** is one call of the model's own ``forward``: a pre-hook on the root module
  opens it and a post-hook (``always_call``) closes it. When the forward raises, the partial
  pass is dropped and :attr:`FeatureCapture.maps` keeps the last complete one.
- An **implicit pass** covers convs that run outside any root call, e.g. timm's
  ``model.forward_head(model.forward_features(x))`` or a backbone called on its own. It opens at
  the first such conv and is published when the conv that opened it runs again, when a root pass
  starts, when :meth:`FeatureCapture.end_pass` is called or when :attr:`FeatureCapture.maps` is
  read.
- A **probe pass** (:meth:`FeatureCapture.probe`) is a root pass run by the package itself, under
  ``no_grad`` in eval mode, leaving the model exactly as it was.

Work per conv output and per finished pass is added through :class:`PassObserver`; the monitor's
statistics are one. Nothing here ever raises inside the user's forward or backward: what cannot
be captured is skipped, counted in :attr:`PassRecord.skipped`, and warned about once.
"""

from __future__ import annotations

import functools
import sys
import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from torch_featureviz._validation import (
    ModelInput,
    check_bool,
    check_choice,
    check_module,
    check_non_negative_int,
    check_positive_int,
    describe_input,
    forward_args,
    input_hint,
    match_model,
)
from torch_featureviz.capture.compat import is_compiling, left_by_interrupt
from torch_featureviz.capture.discovery import ConvTypes, find_conv_layers, unwrap_model
from torch_featureviz.capture.handles import InertOnCopy
from torch_featureviz.capture.passes import PassObserver, PassRecord
from torch_featureviz.capture.selection import MapSelector, PixelCap
from torch_featureviz.capture.state import preserved_state
from torch_featureviz.capture.tracker import PassTracker, Policy

__all__ = ["FeatureCapture", "PassObserver", "PassRecord", "preserved_state"]

Record = Policy
_RECORD: tuple[Record, ...] = ("all", "grad")

class FeatureCapture:
    """Forward hooks on a model's conv layers that keep one sample's activations.

    Inside the ``with`` block, every forward pass of ``model`` (yours, in training or inference,
    at any batch size) fills :attr:`maps` with the output of each selected conv for sample
    ``sample``: a detached ``float32`` tensor of shape ``(C, *spatial)`` (``(C, H, W)`` for a
    Conv2d) with ``C <= max_channels``. Each complete pass replaces the previous one, so ``maps``
    always holds the latest pass; a module called twice in one pass is kept twice, as ``name``
    and ``name#1`` (see :mod:`torch_featureviz.naming`).

    The hooks only select and copy (on the tensor's own device, no host sync), so the copy is
    taken before any in-place op downstream (``ReLU(inplace=True)``) can overwrite it, and the
    model's outputs are bit-identical with and without a capture. Recomputation by activation
    checkpointing during backward is ignored. A batch too short for ``sample`` (or empty) skips
    the layer for that pass, with the reason in :attr:`skipped`; the forward never fails because
    of the capture.

    Args:
        model: any ``nn.Module`` with at least one conv; DataParallel, DDP and
            ``torch.compile`` wrappers are looked through. Register before ``torch.compile`` and
            gate with :attr:`enabled` rather than re-entering every step.
        layers: qualified conv names or ``fnmatch`` globs; ``None`` selects every conv.
        max_channels: keep the first ``max_channels`` channels; ``None`` keeps all.
        sample: index in the batch of the sample to keep.
        record: ``"all"`` captures every forward; ``"grad"`` only forwards run with gradients
            enabled (training), not those under ``torch.no_grad()`` or
            ``torch.inference_mode()`` (validation, EMA evaluation).
        max_calls: keep only the first ``max_calls`` calls of each module per pass (a detection
            head run once per FPN level); ``None`` keeps every call.
        observers: :class:`PassObserver` instances that add work per conv output and per pass.
        types: restrict to these conv types (see :func:`~torch_featureviz.find_conv_layers`);
            ``None`` selects every convolution, 1-d, 2-d, 3-d and transposed.
        pixel_cap: called with each kept map's key and shape, returns the most pixels its grid
            may have (``None``: no limit); larger maps are average-pooled by an integer factor,
            on device, before the copy. The monitor's byte budget is one.
        track_channel_means: record each kept sample's per-channel means (every channel) in
            :attr:`PassRecord.channel_means` (the monitor's channel choice reads them).
        reuse_buffers: an opt-in for loops that look at each pass's maps and let them go:
            each pass copies into the tensors of the pass *before* the last one instead of
            allocating (on CPU, ~14 MB of fresh copies a pass on resnet50 cost page faults).
            The contract: :attr:`maps` stays valid until the next pass is published; after
            that its tensors (and their views and ``.numpy()`` arrays) are overwritten, so
            ``.clone()`` what you keep. Off by default, and never used under
            ``torch.compile``.

    Raises:
        TypeError, ValueError: bad arguments, before any hook is registered.

    Example::

        >>> import torch, torchvision
        >>> model = torchvision.models.resnet18().eval()
        >>> with FeatureCapture(model, max_channels=8) as cap:
        ...     _ = model(torch.randn(2, 3, 64, 64))
        >>> cap.maps["layer1.0.conv1"].shape
        torch.Size([8, 16, 16])
    """

    def __init__(
        self,
        model: nn.Module,
        layers: str | Iterable[str] | None = None,
        *,
        max_channels: int | None = 64,
        sample: int = 0,
        record: Record = "all",
        max_calls: int | None = None,
        observers: Iterable[PassObserver] = (),
        types: ConvTypes | None = None,
        pixel_cap: PixelCap | None = None,
        track_channel_means: bool = False,
        reuse_buffers: bool = False,
    ) -> None:
        check_module(model)
        self.max_channels = check_positive_int(max_channels, "max_channels", allow_none=True)
        self.sample = check_non_negative_int(sample, "sample")
        #: What each hook keeps of its conv's output (sample, channels, pixel cap, copy).
        self.selector = MapSelector(
            sample=self.sample,
            max_channels=self.max_channels,
            pixel_cap=pixel_cap,
            track_channel_means=check_bool(track_channel_means, "track_channel_means"),
            reuse_buffers=check_bool(reuse_buffers, "reuse_buffers"),
        )
        self.record: Record = check_choice(record, "record", _RECORD)
        self.max_calls = check_positive_int(max_calls, "max_calls", allow_none=True)
        self.observers: list[PassObserver] = _check_observers(observers)
        self.model = model
        self.root = unwrap_model(model)
        self.layers: dict[str, nn.Module] = dict(
            find_conv_layers(self.root, include=layers, types=types)
        )
        # The spatial rank of each conv (2 for Conv2d), read once: hooks run on every call.
        self._spatial = {n: len(getattr(m, "kernel_size", (0, 0))) for n, m in self.layers.items()}
        #: When False the hooks return at once: on a compiled model, toggle it instead of
        #: removing hooks (keeps its graphs valid). On an eager model :meth:`remove` and
        #: :meth:`attach` are cheaper still (no hook at all: PyTorch's fast call path).
        self.enabled = True
        #: Whether a forward of the model has run the hooks eagerly, or under
        #: ``torch.compile``'s tracing (set by the hooks; read by the monitor, which removes
        #: the hooks between captures only on a model seen to run eagerly and never compiled).
        self.ran_eagerly = False
        self.compiled = False
        #: Which pass is open, and when it is published (see :class:`~.tracker.PassTracker`).
        self.tracker = PassTracker(self.observers, self.record, self.selector.recycle)
        self._handles: dict[str, RemovableHandle] = {}
        self._device = _first_replica(model)

    # -- settings, and what users read -----------------------------------------------------------
    @property
    def reuse_buffers(self) -> bool:
        """Whether passes copy into the tensors of the pass before the last one."""
        return self.selector.reuse_buffers

    @property
    def channel_index(self) -> dict[str, torch.Tensor]:
        """``{layer key: channel indices}`` to keep instead of the first ``max_channels`` (on
        the maps' device); set by the monitor's channel choice."""
        return self.selector.channel_index

    @channel_index.setter
    def channel_index(self, index: dict[str, torch.Tensor]) -> None:
        self.selector.channel_index = index

    @property
    def passes(self) -> int:
        """Number of complete passes published since the capture was made."""
        return self.tracker.passes

    @property
    def last(self) -> PassRecord | None:
        """The last published pass (``None`` before the first one)."""
        return self.tracker.last

    @property
    def skipped_calls(self) -> int:
        """How many conv calls were skipped or failed, over the capture's life."""
        return self.tracker.skipped_calls

    @property
    def maps(self) -> dict[str, torch.Tensor]:
        """``{key: map}`` of the last complete pass, or of an implicit pass in flight (reading
        it changes nothing: the pass is published at its end)."""
        current = self.tracker.current
        return {} if current is None else current.maps

    @property
    def skipped(self) -> dict[str, str]:
        """``{key: reason}`` for the conv calls the last pass (as :attr:`maps`) could not
        capture."""
        current = self.tracker.current
        return {} if current is None else current.skipped

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def attached(self) -> bool:
        """Whether the hooks are currently registered."""
        return bool(self._handles)

    def attach(self) -> FeatureCapture:
        """Register the hooks (what ``__enter__`` does) and return ``self``."""
        if self._handles:
            raise RuntimeError("This FeatureCapture is already attached; use it once at a time.")
        try:
            _register_hooks(self, self._handles)
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        """Remove every hook. Idempotent; ``maps`` is kept (an implicit pass is published)."""
        handles, self._handles = self._handles, {}
        for handle in handles.values():
            handle.remove()
        self.end_pass()

    def __enter__(self) -> FeatureCapture:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __del__(self) -> None:  # safety net only; use the context manager
        try:
            self.remove()
        except Exception:
            pass

    def __repr__(self) -> str:
        return (
            f"FeatureCapture({type(self.root).__name__}, {len(self.layers)} layers, "
            f"max_channels={self.max_channels}, sample={self.sample}, record={self.record!r}, "
            f"attached={self.attached}, enabled={self.enabled})"
        )

    # -- passes ----------------------------------------------------------------------------------
    def end_pass(self) -> bool:
        """Close whatever pass is open: publish an implicit pass, drop a root pass that an
        interrupt (Ctrl-C) left open. Returns whether a pass was published.

        The monitor calls this at every ``step()``, so a pass never spans two steps.
        """
        return self.tracker.end_pass()

    # -- the hooks (wrapped in InertOnCopy) ---------------------------------------------------
    def _on_root_pre(self, module: nn.Module, args: Any) -> None:
        # How the model runs, for the monitor: hooks removed between captures are never seen
        # again by a graph Dynamo traced with them (nor added to one traced without them).
        if is_compiling():
            self.compiled = True
        elif not self.tracker.probing:  # probe passes call the unwrapped model, never compiled
            self.ran_eagerly = True
        if self.enabled:
            self.tracker.start_root_pass()

    def _on_root_post(self, module: nn.Module, args: Any, output: Any) -> None:
        # Registered with always_call=True: it also runs when the forward raised an Exception
        # (then ``output`` is None). A KeyboardInterrupt skips it; the next pass start or
        # ``end_pass()`` clears what it left.
        tracker = self.tracker
        if tracker.pending is not None or tracker.in_root:
            tracker.end_root_pass(failed=output is None and sys.exc_info()[0] is not None)

    def _on_watched(
        self, observer: PassObserver, name: str, module: nn.Module, args: Any, output: Any
    ) -> None:
        """A module an observer asked to watch ran (see :meth:`PassObserver.watch`)."""
        record = self.tracker.pending
        if not self.enabled or record is None or observer not in self.tracker.observing:
            return
        try:
            observer.module_output(record, name, module, args, output)
        except Exception as e:  # noqa: BLE001 - the user's forward must never fail here
            self.tracker.note(record, name, f"{type(e).__name__}: {e}", type(e).__name__)

    def _on_conv(self, name: str, module: nn.Module, args: Any, output: Any) -> None:
        if not self.enabled:
            return
        if is_compiling():
            self.compiled = True  # a compiled forward whose root hooks run outside the graph
        if self._device is not None and getattr(output, "device", None) != self._device:
            return
        tracker = self.tracker
        record = tracker.pending
        if left_by_interrupt(self, record, name):  # Ctrl-C skipped the root's post hook
            record = None
        if record is None:
            if tracker.in_root or not tracker.records():
                return  # a forward that is not captured (validation under no_grad, ...)
            record = tracker.open("implicit", opener=name)
        elif record.kind == "implicit" and name == record.opener and record.maps:
            # The conv that opened an implicit pass runs again: a new forward_features call.
            tracker.publish()
            record = tracker.open("implicit", opener=name)
        key, index = record.calls.next_key(name)
        if self.max_calls is not None and index >= self.max_calls:
            return
        try:
            kept = self.selector.select(output, self._spatial[name], key, record)
            if isinstance(kept, tuple):
                tracker.note(record, key, *kept)
            else:
                record.maps[key] = kept
            if isinstance(output, torch.Tensor):
                for obs in tracker.observing:
                    obs.output(record, key, module, output)
        except Exception as e:  # noqa: BLE001 - the user's forward must never fail here
            tracker.note(record, key, f"{type(e).__name__}: {e}", type(e).__name__)

    # -- probe passes ------------------------------------------------------------------------------
    def probe(
        self, inputs: ModelInput, *, keep: bool = True, record: bool | None = None
    ) -> dict[str, torch.Tensor]:
        """Run one probe pass of ``inputs`` and return its maps, leaving the model unchanged.

        The pass runs under ``torch.no_grad()`` in eval mode; train flags and RNG state are
        restored afterwards, so BatchNorm statistics are bit-for-bit as before. ``inputs`` (a
        tensor, a tuple of positional inputs, or a dict of keyword inputs) is moved to the
        model's current device and floating dtype first.

        Args:
            inputs: the probe input.
            keep: ``False`` runs the same pass without keeping anything and returns
                ``{}``: how a rank that does not write takes part in a sharded model's probe
                pass (its forward all-gathers, so every rank must run it).
            record: the old spelling of ``keep`` (deprecated; a ``FutureWarning``).

        Raises:
            RuntimeError: the model's forward failed on ``inputs`` (the error is chained).
        """
        if record is not None:
            warnings.warn(
                "FeatureCapture.probe(record=...) is deprecated; use keep=... (the same flag).",
                FutureWarning,
                stacklevel=2,
            )
            keep = record
        return _run_probe(self, inputs, keep=keep)


def _run_probe(cap: FeatureCapture, inputs: ModelInput, *, keep: bool) -> dict[str, torch.Tensor]:
    """:meth:`FeatureCapture.probe`'s pass: attach if needed, record it as a probe pass (or
    nothing, when not ``keep``), restore the model and the capture's state."""
    root = cap.root
    args, kwargs = forward_args(match_model(inputs, root))
    if not keep:
        with preserved_state(root), torch.no_grad():
            _forward(root, inputs, args, kwargs)
        return {}
    attached = cap.attached
    if not attached:
        cap.attach()
    enabled, cap.enabled = cap.enabled, False
    try:
        cap.end_pass()
        with preserved_state(root), torch.no_grad():
            cap.enabled = cap.tracker.probing = True
            _forward(root, inputs, args, kwargs)
    finally:
        cap.enabled = cap.tracker.probing = False
        cap.end_pass()  # a failed or interrupted probe leaves nothing open
        cap.enabled = enabled
        if not attached:
            cap.remove()
    return cap.maps


def _forward(
    root: nn.Module, inputs: ModelInput, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    try:
        root(*args, **kwargs)
    except Exception as e:
        raise RuntimeError(
            f"the forward pass of {type(root).__name__} failed on an input of "
            f"{describe_input(inputs)}: {e}{input_hint(e)}"
        ) from e


def _register_hooks(cap: FeatureCapture, handles: dict[str, RemovableHandle]) -> None:
    """Register ``cap``'s hooks into ``handles``: the root's pre-hook, each conv's, each module
    an observer watches, and the root's post-hook (which also runs when the forward raises)."""
    root = cap.root
    handles["<root-pre>"] = root.register_forward_pre_hook(InertOnCopy(cap._on_root_pre))
    for name, module in cap.layers.items():
        handles[name] = module.register_forward_hook(
            InertOnCopy(functools.partial(cap._on_conv, name))
        )
    for k, obs in enumerate(cap.observers):
        for name, module in obs.watch(root).items():
            handles[f"<observer{k}>{name}"] = module.register_forward_hook(
                InertOnCopy(functools.partial(cap._on_watched, obs, name))
            )
    handles["<root-post>"] = root.register_forward_hook(
        InertOnCopy(cap._on_root_post), always_call=True
    )


def _first_replica(model: nn.Module) -> torch.device | None:
    """DataParallel replicas share hook dicts and run in threads: keep only the first
    replica's chunk, so they cannot overwrite each other (``sample`` indexes that chunk)."""
    if isinstance(model, nn.DataParallel) and model.device_ids:
        return torch.device("cuda", model.device_ids[0])
    return None


def _check_observers(observers: Iterable[PassObserver]) -> list[PassObserver]:
    out = list(observers)
    for obs in out:
        if not isinstance(obs, PassObserver):
            raise TypeError(f"observers must be PassObserver instances, got {type(obs).__name__}.")
    return out
