"""Activation statistics: tiny reductions in the hooks, finished on the writer thread.

:class:`ActivationStatistics` is a :class:`~torch_featureviz.capture.PassObserver`: during a
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

from torch_featureviz.capture import PassObserver, PassRecord, _compiling

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
        #: ``(pass index, {key: LayerSums})`` of the last complete training pass.
        self.published: tuple[int, dict[str, LayerSums]] | None = None
        #: ``{key: "conv output" | "<Activation> after the conv"}`` as found so far.
        self.source: dict[str, str] = {}
        self._pending: dict[str, LayerSums] | None = None
        # id(tensor) -> (the conv key it came from, its version then), this pass
        self._flow: dict[int, tuple[str, int]] = {}
        self._alive: list[torch.Tensor] = []  # keeps those ids valid until the pass ends
        self._followed: set[str] = set()  # conv keys whose activation was found
        self._convs: dict[str, nn.Module] = {}  # conv key -> its module (for the spatial rank)

    def watch(self, root: nn.Module) -> dict[str, nn.Module]:
        if not self.after_activation:
            return {}
        kinds = (*ACTIVATIONS, *NORMS)
        return {n: m for n, m in root.named_modules() if isinstance(m, kinds)}

    def start(self, record: PassRecord) -> None:
        self._pending = {} if self.enabled and record.kind != "probe" else None
        self._flow.clear()
        self._alive.clear()

    def output(self, record: PassRecord, key: str, module: nn.Module, output: torch.Tensor) -> None:
        target = self._pending
        if target is None:
            return
        if self.after_activation and not _compiling():
            self._follow(output, key)
            self._convs[key] = module
            if key in self._followed:
                return  # its activation will be reduced instead
        self._reduce(target, key, module, output, "conv output")

    def module_output(
        self, record: PassRecord, name: str, module: nn.Module, args: Any, output: Any
    ) -> None:
        target = self._pending
        if target is None or not args or _compiling():
            return
        x = args[0]
        seen = self._flow.get(id(x))
        if seen is None or not isinstance(output, torch.Tensor):
            return
        source, version = seen
        # The tensor must reach this module unmodified: an in-place `out += identity` between
        # bn2 and the ReLU (torchvision's BasicBlock) keeps the object but changes its values.
        # An in-place activation itself bumps the version once.
        expected = version + (1 if getattr(module, "inplace", False) and output is x else 0)
        if _version(x) != expected:
            return
        if isinstance(module, NORMS) and not _is_norm_act(module):
            self._follow(output, source)  # conv -> norm -> (activation)
            return
        conv = self._convs.get(source)
        del self._flow[id(args[0])]  # only the first activation after the conv counts
        self._followed.add(source)
        kind = type(getattr(module, "act", module)).__name__
        self._reduce(target, source, conv or module, output, f"{kind} after the conv")

    def _follow(self, tensor: torch.Tensor, key: str) -> None:
        version = _version(tensor)
        if version >= 0:
            self._flow[id(tensor)] = (key, version)
            self._alive.append(tensor)

    def _reduce(
        self,
        target: dict[str, LayerSums],
        key: str,
        module: nn.Module,
        output: torch.Tensor,
        source: str,
    ) -> None:
        if output.numel() == 0:
            return
        spatial = len(getattr(module, "kernel_size", (0, 0)))
        # Reductions only, and as few ops as possible (each costs the training thread a few
        # microseconds of dispatch): float32, so bf16 and fp16 activations work.
        x = output.detach().float()
        if x.dim() == spatial + 2:
            dims = (0, *range(2, x.dim()))
            one = x[min(self.sample, x.shape[0] - 1)]
        else:  # an unbatched conv call: (C, *spatial)
            dims = tuple(range(1, x.dim()))
            one = x
        peak = _channel_max(x, dims)
        # Near-zero values are counted in the shown sample (every channel): a comparison
        # needs a temporary, and one sample keeps it small.
        # The comparison writes into abs()'s own temporary: a float count, no cast.
        near = one.abs().le_(self.near_zero).sum()
        if x.is_contiguous() and x.numel() < 2**31:
            flat = x.view(-1)
            squares = torch.dot(flat, flat)  # one BLAS pass; about half vector_norm's time
        else:  # channels_last (a view would copy) or too long for BLAS
            squares = torch.linalg.vector_norm(x).square()
        sums = (x.sum(), squares, near)
        target[key] = LayerSums(sums, peak, x.numel(), one.numel())
        self.source[key] = source

    def end(self, record: PassRecord, complete: bool) -> None:
        pending, self._pending = self._pending, None
        self._flow.clear()
        self._alive.clear()
        if complete and pending is not None:
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
