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

import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from torch_featureviz._validation import (
    ModelInput,
    check_bool,
    check_choice,
    check_model_input,
    check_module,
    check_non_negative_int,
    check_positive_int,
    describe_input,
    forward_args,
    input_hint,
    match_model,
    unbatched_dims,
)
from torch_featureviz.capture.compat import in_backward, is_compiling, left_by_interrupt
from torch_featureviz.capture.discovery import ConvTypes, find_conv_layers, unwrap_model
from torch_featureviz.capture.pooling import pool_factor, pool_map
from torch_featureviz.naming import CallCounter

__all__ = [
    "FeatureCapture",
    "PassObserver",
    "PassRecord",
    "capture_feature_maps",
    "preserved_state",
]

Record = Literal["all", "grad"]
_RECORD: tuple[Record, ...] = ("all", "grad")

#: A builtin that takes any arguments and returns None. A copied or pickled model gets this in
#: place of the package's hooks, so ``copy.deepcopy`` (EMA and SWA models) yields inert hooks and
#: ``torch.save(model)`` writes a file that loads without torch_featureviz installed (it pickles
#: as ``getattr(None, "__init__")``).
_INERT = None.__init__  # type: ignore[misc]


class _Hook:
    """A hook of a capture. Copies and pickles as :data:`_INERT`, so a copied model does no
    capture work and a saved one does not need this package."""

    __slots__ = ("capture", "name")

    def __init__(self, capture: FeatureCapture, name: str) -> None:
        self.capture = capture
        self.name = name

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        return _INERT

    def __copy__(self) -> Any:
        return _INERT

    def __reduce__(self) -> tuple[Any, tuple[Any, str]]:
        return getattr, (None, "__init__")


class _ConvHook(_Hook):
    __slots__ = ()

    def __call__(self, module: nn.Module, args: Any, output: Any) -> None:
        cap = self.capture
        if cap.enabled:
            cap._on_output(self.name, module, output)


class _ModuleHook(_Hook):
    """A hook on a module an observer asked to watch (see :meth:`PassObserver.watch`)."""

    __slots__ = ("observer",)

    def __init__(self, capture: FeatureCapture, name: str, observer: PassObserver) -> None:
        super().__init__(capture, name)
        self.observer = observer

    def __call__(self, module: nn.Module, args: Any, output: Any) -> None:
        cap = self.capture
        if cap.enabled and cap._pending is not None and self.observer in cap._observing:
            cap._on_module_output(self.observer, self.name, module, args, output)


class _RootPreHook(_Hook):
    __slots__ = ()

    def __call__(self, module: nn.Module, args: Any) -> None:
        cap = self.capture
        # How the model runs, for the monitor: hooks removed between captures are never seen
        # again by a graph Dynamo traced with them (nor added to one traced without them).
        if is_compiling():
            cap.compiled = True
        elif not cap._probing:  # probe passes call the unwrapped model, never compiled
            cap.ran_eagerly = True
        if cap.enabled:
            cap._start_root_pass()


class _RootPostHook(_Hook):
    __slots__ = ()

    def __call__(self, module: nn.Module, args: Any, output: Any) -> None:
        # Registered with always_call=True: it also runs when the forward raised an Exception
        # (then ``output`` is None). A KeyboardInterrupt skips it; the next pass start or
        # ``end_pass()`` clears what it left.
        cap = self.capture
        if cap._pending is not None or cap._in_root:
            cap._end_root_pass(failed=output is None and sys.exc_info()[0] is not None)


@dataclass
class PassRecord:
    """One pass of a :class:`FeatureCapture`, as observers see it and as it is published."""

    #: ``"root"``, ``"implicit"`` or ``"probe"`` (see the module docstring).
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
    calls: CallCounter = field(default_factory=CallCounter, repr=False)


class PassObserver:
    """Work added to every captured pass: subclass and pass it to :class:`FeatureCapture`.

    The methods run inside the model's forward, on the conv output's device: keep them to a few
    tensor ops, with no host sync. An exception they raise is caught, the call is recorded in
    :attr:`PassRecord.skipped` and a warning is issued once; it never reaches the user's code.
    """

    #: Whether probe passes (:meth:`FeatureCapture.probe`) reach this observer at all. An
    #: observer that ignores them says so, and its methods and watched modules' hooks then
    #: cost a probe pass nothing.
    observes_probes: bool = True

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
        pixel_cap: Callable[[str, tuple[int, ...]], int | None] | None = None,
        reuse_buffers: bool = False,
    ) -> None:
        check_module(model)
        #: Copy each pass into the tensors of the pass before the last one (see Args).
        self.reuse_buffers = check_bool(reuse_buffers, "reuse_buffers")
        self._spares: dict[str, torch.Tensor] = {}
        if pixel_cap is not None and not callable(pixel_cap):
            raise TypeError(f"pixel_cap must be callable or None, got {type(pixel_cap).__name__}.")
        #: ``(key, kept map shape) -> the most pixels its grid may have``, or None; larger maps
        #: are average-pooled by an integer factor in the hook (the monitor's byte budget).
        self.pixel_cap = pixel_cap
        #: ``{layer key: channel indices}`` to keep instead of the first ``max_channels``
        #: (on the maps' device); set by the monitor's channel choice.
        self.channel_index: dict[str, torch.Tensor] = {}
        #: Record each kept sample's per-channel means in ``PassRecord.channel_means``.
        self.track_channel_means = False
        self.max_channels = check_positive_int(max_channels, "max_channels", allow_none=True)
        self.sample = check_non_negative_int(sample, "sample")
        self.record: Record = check_choice(record, "record", _RECORD)
        self.max_calls = check_positive_int(max_calls, "max_calls", allow_none=True)
        self.observers: list[PassObserver] = list(observers)
        for obs in self.observers:
            if not isinstance(obs, PassObserver):
                raise TypeError(
                    f"observers must be PassObserver instances, got {type(obs).__name__}."
                )
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
        #: Number of complete passes published since the capture was made.
        self.passes = 0
        #: The last published pass (``None`` before the first one).
        self.last: PassRecord | None = None
        #: How many conv calls were skipped or failed, over the capture's life.
        self.skipped_calls = 0
        self._handles: dict[str, RemovableHandle] = {}
        self._pending: PassRecord | None = None
        self._observing: list[PassObserver] = []  # the observers of the pending pass
        self._in_root = False  # a root forward is running (recorded or not)
        self._probing = False  # inside probe(): record the root pass whatever `record` says
        self._next_index = 0
        self._warned: set[str] = set()
        self._device: torch.device | None = None
        if isinstance(model, nn.DataParallel) and model.device_ids:
            # Replicas share hook dicts and run in threads; keep only the first replica's chunk
            # so they cannot overwrite each other (sample indexes that chunk).
            self._device = torch.device("cuda", model.device_ids[0])

    # -- what users read -----------------------------------------------------------------------
    @property
    def maps(self) -> dict[str, torch.Tensor]:
        """``{key: map}`` of the last complete pass (an implicit pass in flight is published
        first)."""
        if self._pending is not None and self._pending.kind == "implicit":
            self._publish()
        return {} if self.last is None else self.last.maps

    @property
    def skipped(self) -> dict[str, str]:
        """``{key: reason}`` for the conv calls the last pass could not capture."""
        self.maps  # noqa: B018 - publishes an implicit pass in flight
        return {} if self.last is None else self.last.skipped

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
            self._handles["<root-pre>"] = self.root.register_forward_pre_hook(
                _RootPreHook(self, "")
            )
            for name, module in self.layers.items():
                self._handles[name] = module.register_forward_hook(_ConvHook(self, name))
            for k, obs in enumerate(self.observers):
                for name, module in obs.watch(self.root).items():
                    self._handles[f"<observer{k}>{name}"] = module.register_forward_hook(
                        _ModuleHook(self, name, obs)
                    )
            self._handles["<root-post>"] = self.root.register_forward_hook(
                _RootPostHook(self, ""), always_call=True
            )
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
        pending = self._pending
        self._in_root = False
        if pending is None:
            return False
        if pending.kind == "implicit":
            self._publish()
            return True
        self._drop()
        return False

    def _records(self) -> bool:
        """Whether a forward starting now is captured (the ``passes`` rule, and never the
        recomputation of checkpointed activations during backward)."""
        if self._probing:
            return True
        if self.record == "grad" and not torch.is_grad_enabled():
            return False
        return is_compiling() or not in_backward()

    def _open(self, kind: str, opener: str | None = None) -> PassRecord:
        record = PassRecord(kind=kind, index=self._next_index, opener=opener)
        self._next_index += 1
        self._pending = record
        self._observing = (
            [obs for obs in self.observers if obs.observes_probes]
            if kind == "probe"
            else list(self.observers)
        )
        for obs in self._observing:
            try:
                obs.start(record)
            except Exception as e:  # noqa: BLE001 - never into the user's forward
                self._note(record, "<start>", f"{type(e).__name__}: {e}", "observer")
        return record

    def _start_root_pass(self) -> None:
        if self._pending is not None:
            # An implicit pass ends where a root pass starts; a root pass still open here was
            # left by an interrupt (Ctrl-C inside forward), and is dropped.
            self.end_pass()
        self._in_root = True
        if self._records():
            self._open("probe" if self._probing else "root")

    def _end_root_pass(self, *, failed: bool) -> None:
        self._in_root = False
        if self._pending is None or self._pending.kind not in ("root", "probe"):
            return
        if failed:
            self._drop()
        else:
            self._publish()

    def _publish(self) -> None:
        record, self._pending = self._pending, None
        assert record is not None
        self._finish(record, complete=True)
        if self.reuse_buffers and record.kind != "probe":
            # The previous pass's tensors may now be overwritten (the documented contract);
            # the one just published stays intact until the next pass is.
            self._spares = {} if self.last is None else dict(self.last.maps)
        self.last = record
        self.passes += 1

    def _drop(self) -> None:
        record, self._pending = self._pending, None
        if record is not None:
            self._finish(record, complete=False)

    def _finish(self, record: PassRecord, *, complete: bool) -> None:
        observing, self._observing = self._observing, []
        for obs in observing:
            try:
                obs.end(record, complete)
            except Exception as e:  # noqa: BLE001
                self._note(record, "<end>", f"{type(e).__name__}: {e}", "observer")

    def _on_output(self, name: str, module: nn.Module, output: Any) -> None:
        if is_compiling():
            self.compiled = True  # a compiled forward whose root hooks run outside the graph
        if self._device is not None and getattr(output, "device", None) != self._device:
            return
        record = self._pending
        if left_by_interrupt(self, record, name):  # Ctrl-C skipped the root's post hook
            record = None
        if record is None:
            if self._in_root or not self._records():
                return  # a forward that is not captured (validation under no_grad, ...)
            record = self._open("implicit", opener=name)
        elif record.kind == "implicit" and name == record.opener and record.maps:
            # The conv that opened an implicit pass runs again: a new forward_features call.
            self._publish()
            record = self._open("implicit", opener=name)
        key, index = record.calls.next_key(name)
        if self.max_calls is not None and index >= self.max_calls:
            return
        try:
            kept = self._select(output, name, record, key)
            if kept is not None:
                record.maps[key] = kept
            if isinstance(output, torch.Tensor):
                for obs in self._observing:
                    obs.output(record, key, module, output)
        except Exception as e:  # noqa: BLE001 - the user's forward must never fail here
            self._note(record, key, f"{type(e).__name__}: {e}", type(e).__name__)

    def _on_module_output(
        self, observer: PassObserver, name: str, module: nn.Module, args: Any, output: Any
    ) -> None:
        record = self._pending
        if record is None:
            return
        try:
            observer.module_output(record, name, module, args, output)
        except Exception as e:  # noqa: BLE001 - the user's forward must never fail here
            self._note(record, name, f"{type(e).__name__}: {e}", type(e).__name__)

    def _note(self, record: PassRecord, key: str, reason: str, kind: str) -> None:
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

    def _select(
        self, output: Any, name: str, record: PassRecord, key: str
    ) -> torch.Tensor | None:
        # The hot path of hook mode: every captured conv call runs it, so it avoids work
        # that changes nothing (a detach without autograd, a slice that keeps every channel).
        if not isinstance(output, torch.Tensor):
            self._note(
                record, key, f"its output is a {type(output).__name__}, not a tensor", "type"
            )
            return None
        spatial = self._spatial[name]
        out = output.detach() if output.requires_grad else output
        dims = out.dim()
        if dims == spatial + 2:  # batched (N, C, *spatial)
            if self.sample >= out.shape[0]:
                reason = f"the batch of {out.shape[0]} has no sample {self.sample}"
                self._note(record, key, reason, "batch")
                return None
            out = out.select(0, self.sample)
        elif dims != spatial + 1:  # an unbatched conv call gives (C, *spatial)
            self._note(record, key, f"unexpected output shape {tuple(out.shape)}", "shape")
            return None
        if self.track_channel_means:
            record.channel_means[key] = out.detach().float().flatten(1).mean(1)
        chosen = self.channel_index.get(key)
        if chosen is not None and chosen.device == out.device and chosen.numel():
            out = out.index_select(0, chosen)
        elif self.max_channels is not None and out.shape[0] > self.max_channels:
            out = out.narrow(0, 0, self.max_channels)
        factor = 1
        if self.pixel_cap is not None:
            shape = tuple(out.shape)
            factor = pool_factor(shape, self.pixel_cap(key, shape))
        # Always a copy: the conv output may be overwritten in place after the hook returns.
        # Outside inference mode, so the copy is an ordinary tensor users can do anything with.
        if is_compiling():
            return _copy(out, factor, None)  # buffer reuse is never traced
        spare = self._spares.pop(key, None) if self.reuse_buffers and factor == 1 else None
        if torch.is_inference_mode_enabled():
            with torch.inference_mode(False):
                return _copy(out, factor, spare)
        return _copy(out, factor, spare)

    # -- probe passes ------------------------------------------------------------------------------
    def probe(self, inputs: ModelInput, *, record: bool = True) -> dict[str, torch.Tensor]:
        """Run one probe pass of ``inputs`` and return its maps, leaving the model unchanged.

        The pass runs under ``torch.no_grad()`` in eval mode; train flags and RNG state are
        restored afterwards, so BatchNorm statistics are bit-for-bit as before. ``inputs`` (a
        tensor, a tuple of positional inputs, or a dict of keyword inputs) is moved to the
        model's current device and floating dtype first.

        Args:
            inputs: the probe input.
            record: ``False`` runs the same pass without recording anything and returns
                ``{}``: how a rank that does not write takes part in a sharded model's probe
                pass (its forward all-gathers, so every rank must run it).

        Raises:
            RuntimeError: the model's forward failed on ``inputs`` (the error is chained).
        """
        args, kwargs = forward_args(match_model(inputs, self.root))
        if not record:
            with preserved_state(self.root), torch.no_grad():
                self._forward(inputs, args, kwargs)
            return {}
        attached = self.attached
        if not attached:
            self.attach()
        enabled, self.enabled = self.enabled, False
        try:
            self.end_pass()
            with preserved_state(self.root), torch.no_grad():
                self.enabled = self._probing = True
                self._forward(inputs, args, kwargs)
        finally:
            self.enabled = self._probing = False
            self.end_pass()  # a failed or interrupted probe leaves nothing open
            self.enabled = enabled
            if not attached:
                self.remove()
        return self.maps

    def _forward(self, inputs: ModelInput, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        try:
            self.root(*args, **kwargs)
        except Exception as e:
            raise RuntimeError(
                f"the forward pass of {type(self.root).__name__} failed on an input of "
                f"{describe_input(inputs)}: {e}{input_hint(e)}"
            ) from e


def _copy(out: torch.Tensor, factor: int, spare: torch.Tensor | None = None) -> torch.Tensor:
    """A float32 contiguous copy of ``out``, average-pooled by ``factor``, written into
    ``spare`` when it fits (same shape and device; never an inference tensor)."""
    if (
        spare is not None
        and spare.shape == out.shape
        and spare.device == out.device
        and not spare.is_inference()
    ):
        return spare.copy_(out)
    if factor > 1:
        return pool_map(out.float(), factor).contiguous()  # pooling makes the copy
    if out.dtype == torch.float32:
        return out.clone(memory_format=torch.contiguous_format)  # cheaper than .to(copy=True)
    return out.to(torch.float32, memory_format=torch.contiguous_format, copy=True)


@contextmanager
def preserved_state(model: nn.Module, *, eval_mode: bool = True) -> Iterator[None]:
    """Run a probe pass without changing ``model``: restores every module's train flag.

    With ``eval_mode`` the model is put in eval mode, so BatchNorm running statistics are not
    updated and dropout draws no random numbers. The CPU and CUDA RNG states are restored too,
    for models whose eval mode still samples.
    """
    flags = [(m, m.training) for m in model.modules()]
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        if eval_mode:
            model.eval()
        yield
    finally:
        for m, flag in flags:
            m.training = flag
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)


def capture_feature_maps(
    model: nn.Module,
    image: ModelInput,
    layers: str | Iterable[str] | None = None,
    *,
    max_channels: int | None = 64,
    sample: int = 0,
    max_calls: int | None = None,
    types: ConvTypes | None = None,
) -> dict[str, torch.Tensor]:
    """Run one probe forward pass and return hook-mode maps, leaving the model unchanged.

    The pass runs under ``torch.no_grad()`` in eval mode; the train/eval flags and RNG state are
    restored afterwards, so BatchNorm statistics and parameters are bit-for-bit as before.

    Args:
        model: the CNN.
        image: the model's input: an ``(N, C, H, W)`` tensor (or ``(C, H, W)``, given a batch
            dimension), a tuple of positional inputs (RAFT's two images) or a dict of keyword
            inputs (Hugging Face's ``pixel_values=``). Moved to the model's device and dtype.
        layers, max_channels, sample, max_calls, types: as for :class:`FeatureCapture`.

    Returns:
        ``{layer key: (C, *spatial) float32 tensor}`` in call order.

    Raises:
        TypeError, ValueError: bad arguments.
        RuntimeError: the model's forward failed on the input.
    """
    cap = FeatureCapture(
        model, layers, max_channels=max_channels, sample=sample, max_calls=max_calls, types=types
    )
    x = check_model_input(image, sample=sample, unbatched_dims=unbatched_dims(cap.layers))
    return cap.probe(x)
