"""Activation statistics: tiny reductions in the hooks, finished on the writer thread.

:class:`ActivationStatistics` is a :class:`~torch_featureviz.capture.hooks.PassObserver`: during a
captured training pass it reduces each conv output to a few float32 numbers on the output's
device (no host sync, no full-size temporaries), and publishes them with the pass. The writer
thread turns them into the logged values (:func:`finish_stats`) and keeps the dead-channel
window (:class:`DeadChannelWindow`).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from torch_featureviz.capture.compat import is_compiling
from torch_featureviz.capture.passes import PassObserver, PassRecord

__all__ = [
    "ACTIVATIONS",
    "NORMS",
    "STAT_NAMES",
    "ActivationStatistics",
    "DeadChannelWindow",
    "LayerSums",
    "finish_stats",
]

#: The per-layer statistics the monitor logs, in order.
STAT_NAMES = ("mean", "std", "near_zero", "dead_channels")


@dataclass
class LayerSums:
    """A hook's reductions of one conv output, still on its device."""

    #: ``(sum, sum of squares, near-zero count in the shown sample)``: 0-dim float32 tensors
    #: (not stacked into one: ``torch.stack`` of three scalars costs the hook as much as a sum).
    sums: tuple[torch.Tensor, ...]
    #: Each channel's maximum over the batch and positions, ``(C,)``.
    peak: torch.Tensor
    #: Elements in the output, and in the shown sample.
    numel: int
    sample_numel: int


#: Modules whose output is "the activation" of the conv that feeds them.
ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU,
    nn.SiLU, nn.Mish, nn.Hardswish, nn.Hardtanh, nn.Softplus, nn.Tanh, nn.Sigmoid,
    nn.Hardsigmoid,
)  # fmt: skip
#: Modules that may sit between a conv and its activation.
NORMS: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm*, SyncBatchNorm, InstanceNorm*
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)


def _is_norm_act(module: nn.Module) -> bool:
    """A norm layer that applies its own activation (timm's ``BatchNormAct2d`` and kin)."""
    act = getattr(module, "act", None)
    return isinstance(module, NORMS) and isinstance(act, ACTIVATIONS)


def _kind(module: nn.Module) -> tuple[bool, bool, str]:
    """How the flow from a conv meets ``module``: whether it passes through it (a plain
    norm), whether the module works in place, and the statistics' source label otherwise."""
    passes_through = isinstance(module, NORMS) and not _is_norm_act(module)
    label = f"{type(getattr(module, 'act', module)).__name__} after the conv"
    return passes_through, bool(getattr(module, "inplace", False)), label


class ActivationStatistics(PassObserver):
    """Reduce what every captured conv of a training pass computes to :class:`LayerSums`.

    The statistics describe the *activation that follows the conv* where there is one: the
    output of the first activation module (ReLU, SiLU, GELU, ...; see :data:`ACTIVATIONS`) fed
    by the conv's output directly or through one norm layer (BatchNorm, GroupNorm, LayerNorm,
    or a norm with a built-in activation such as timm's ``BatchNormAct2d``). The link is found
    from the tensors that flow in each pass, so shared activation modules (torchvision's
    ``BasicBlock.relu``) and in-place ones work. A conv with no such activation (one followed by
    a residual addition, a pooling, the head) is described by its own output; :attr:`source`
    says which, per layer. Under ``torch.compile`` tensors cannot be followed, and every conv
    is described by its output.

    Mean, std and channel activity cover the whole batch and every channel (not only the kept
    sample), so a short last batch still gets statistics. Probe passes are ignored.

    Args:
        sample: the batch index whose near-zero fraction is counted.
        near_zero: ``|x| <= near_zero`` counts as a near-zero value.
        after_activation: follow convs to their activation; False describes conv outputs.
    """

    def __init__(
        self, *, sample: int = 0, near_zero: float = 1e-6, after_activation: bool = True
    ) -> None:
        self.sample = sample
        self.near_zero = near_zero
        self.after_activation = after_activation
        #: When False, passes are observed but nothing is reduced.
        self.enabled = True
        #: ``(pass index, {key: LayerSums})`` of the last complete training pass (the same sums
        #: are on that pass's ``PassRecord.results["stats"]``, which is what the monitor reads).
        self.published: tuple[int, dict[str, LayerSums]] | None = None
        #: ``{key: "conv output" | "<Activation> after the conv"}`` as found so far.
        self.source: dict[str, str] = {}
        self._pending: dict[str, LayerSums] | None = None
        # id(tensor) -> (the conv key it came from, its version then), this pass
        self._flow: dict[int, tuple[str, int]] = {}
        self._alive: list[torch.Tensor] = []  # keeps those ids valid until the pass ends
        self._followed: set[str] = set()  # conv keys whose activation was found
        # this pass: followed conv key -> (its output, version, spatial rank) until its
        # activation is reduced; what is left at the end falls back to the conv output
        self._waiting: dict[str, tuple[torch.Tensor, int, int]] = {}
        self._spatial: dict[str, int] = {}  # conv key -> its spatial rank (2 for a Conv2d)
        # watched module name -> (a norm the flow passes through, in place, the source label);
        # read from each module once, when the hooks are registered
        self._kinds: dict[str, tuple[bool, bool, str]] = {}

    #: Probe passes are not training passes: their statistics would describe the probe.
    observes_probes = False
    #: A complete pass's ``{key: LayerSums}`` is ``record.results["stats"]``.
    result_key = "stats"

    def watch(self, root: nn.Module) -> dict[str, nn.Module]:
        if not self.after_activation:
            return {}
        kinds = (*ACTIVATIONS, *NORMS)
        watched = {n: m for n, m in root.named_modules() if isinstance(m, kinds)}
        self._kinds = {n: _kind(m) for n, m in watched.items()}
        return watched

    def start(self, record: PassRecord) -> None:
        self._pending = {} if self.enabled and record.kind != "probe" else None
        self._waiting.clear()
        self._flow.clear()
        self._alive.clear()

    def output(self, record: PassRecord, key: str, module: nn.Module, output: torch.Tensor) -> None:
        target = self._pending
        if target is None:
            return
        spatial = self._spatial.get(key)
        if spatial is None:
            spatial = self._spatial[key] = len(getattr(module, "kernel_size", (0, 0)))
        if self.after_activation and not is_compiling():
            version = self._follow(output, key)
            if key in self._followed:  # its activation will be reduced instead
                self._waiting[key] = (output, version, spatial)
                return
        self._reduce(target, key, spatial, output, "conv output")

    def module_output(
        self, record: PassRecord, name: str, module: nn.Module, args: Any, output: Any
    ) -> None:
        # Runs for every norm and activation of a captured pass: the common case (a tensor
        # this pass did not follow) returns after one dict lookup.
        target = self._pending
        if target is None or not args:
            return
        x = args[0]
        seen = self._flow.get(id(x))
        if seen is None or not isinstance(output, torch.Tensor) or is_compiling():
            return
        source, version = seen
        kind = self._kinds.get(name)
        if kind is None:  # a module watched through another root
            kind = self._kinds[name] = _kind(module)
        passes_through, inplace, label = kind
        # The tensor must reach this module unmodified: an in-place `out += identity` between
        # bn2 and the ReLU (torchvision's BasicBlock) keeps the object but changes its values.
        # An in-place activation itself bumps the version once.
        expected = version + 1 if inplace and output is x else version
        if _version(x) != expected:
            return
        if passes_through:
            self._follow(output, source)  # conv -> norm -> (activation)
            return
        del self._flow[id(x)]  # only the first activation after the conv counts
        self._followed.add(source)
        self._waiting.pop(source, None)
        self._reduce(target, source, self._spatial[source], output, label)

    def _follow(self, tensor: torch.Tensor, key: str) -> int:
        """Follow ``tensor`` as ``key``'s flow this pass; returns its version (-1: none)."""
        version = _version(tensor)
        if version >= 0:
            self._flow[id(tensor)] = (key, version)
            self._alive.append(tensor)
        return version

    def _reduce(
        self,
        target: dict[str, LayerSums],
        key: str,
        spatial: int,
        output: torch.Tensor,
        source: str,
    ) -> None:
        numel = output.numel()
        if numel == 0:
            return
        # Reductions only, and as few ops as possible (each costs the training thread a few
        # microseconds of dispatch): float32, so bf16 and fp16 activations work.
        x = output.detach() if output.requires_grad else output
        if x.dtype != torch.float32:
            x = x.float()
        if x.dim() == spatial + 2:
            dims = (0, *range(2, x.dim()))
            one = x.select(0, min(self.sample, x.shape[0] - 1))
        else:  # an unbatched conv call: (C, *spatial)
            dims = tuple(range(1, x.dim()))
            one = x
        peak = _channel_max(x, dims)
        # Near-zero values are counted in the shown sample (every channel): a comparison
        # needs a temporary, and one sample keeps it small.
        # The comparison writes into abs()'s own temporary: a float count, no cast.
        near = one.abs().le_(self.near_zero).sum()
        if numel < 2**31 and x.is_contiguous():
            flat = x.view(-1)
            squares = torch.dot(flat, flat)  # one BLAS pass; about half vector_norm's time
        else:  # channels_last (a view would copy) or too long for BLAS
            squares = torch.linalg.vector_norm(x).square()
        target[key] = LayerSums((x.sum(), squares, near), peak, numel, one.numel())
        self.source[key] = source

    def end(self, record: PassRecord, complete: bool) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            # A conv whose activation this pass did not reach (another branch ran, or the
            # tensor was changed in place on the way): its own output, if still unchanged.
            for key, (output, version, spatial) in self._waiting.items():
                if _version(output) == version:
                    self._reduce(pending, key, spatial, output, "conv output")
        self._waiting.clear()
        self._flow.clear()
        self._alive.clear()
        if complete and pending is not None:
            record.results[self.result_key] = pending
            self.published = (record.index, pending)


def _channel_max(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Each channel's maximum, ``(C,)``, of a batched ``(N, C, *spatial)`` output (``dims`` is
    every dim but 1) or an unbatched ``(C, *spatial)`` one (every dim but 0).

    On a contiguous tensor, first over each sample's positions (contiguous rows) and then over
    the batch: one strided reduction over ``(0, 2, 3)`` reads memory in an order that costs
    3-6x as much on CPU once the tensor outgrows the cache (1.4 ms instead of 0.13-0.23 ms for
    resnet50's (4, 256, 56, 56) at 224 px). A channels_last tensor's positions are not
    contiguous rows, and its strided reduction is already the fast one.
    """
    if not dims:  # (C,): an unbatched call of a conv with no spatial dims
        return x.reshape(x.shape[0], -1).amax(dim=1)
    if x.is_contiguous():
        if dims[0] == 1:  # unbatched: each channel's positions are one contiguous row
            return x.flatten(1).amax(dim=1)
        if x.dim() >= 3:  # batched, with positions to reduce per sample
            return x.flatten(2).amax(dim=2).amax(dim=0)
    return x.amax(dim=dims)


def _version(tensor: torch.Tensor) -> int:
    """The tensor's in-place version counter, or -1 (inference tensors have none)."""
    try:
        return int(tensor._version)
    except RuntimeError:
        return -1


def finish_stats(layer: LayerSums) -> tuple[float, float, float]:
    """Mean, std (Bessel-corrected) and near-zero fraction from a hook's float32 sums."""
    total, squares, near = (float(v) for v in layer.sums)
    n = max(layer.numel, 1)
    mean = total / n
    var = max(squares / n - mean * mean, 0.0) * (n / max(n - 1, 1))
    return mean, math.sqrt(var), near / max(layer.sample_numel, 1)


class DeadChannelWindow:
    """Which channels were never active over the last ``size`` captures, per layer.

    A channel is active in a capture when its maximum exceeds ``threshold``.
    """

    def __init__(self, size: int, threshold: float = 0.0) -> None:
        self.size = size
        self.threshold = threshold
        self._windows: dict[str, deque[torch.Tensor]] = {}

    def update(self, key: str, peak: torch.Tensor) -> float:
        """Add a capture's channel maxima for ``key``; return the fraction of dead channels."""
        active = peak > self.threshold
        window = self._windows.setdefault(key, deque(maxlen=self.size))
        if window and window[-1].shape != active.shape:
            window.clear()
        window.append(active)
        ever = torch.stack(list(window)).any(dim=0)
        return 1.0 - ever.float().mean().item()
