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

import torch
from torch import nn

from torch_featureviz.capture import PassObserver, PassRecord

__all__ = ["STAT_NAMES", "ActivationStatistics", "DeadChannelWindow", "LayerSums", "finish_stats"]

#: The per-layer statistics the monitor logs, in order.
STAT_NAMES = ("mean", "std", "near_zero", "dead_channels")


@dataclass
class LayerSums:
    """A hook's reductions of one conv output, still on its device."""

    #: ``tensor([sum, L2 norm, near-zero count in the shown sample])``, float32.
    sums: torch.Tensor
    #: Each channel's maximum over the batch and positions, ``(C,)``.
    peak: torch.Tensor
    #: Elements in the output, and in the shown sample.
    numel: int
    sample_numel: int


class ActivationStatistics(PassObserver):
    """Reduce every captured conv output of a training pass to :class:`LayerSums`.

    Mean, std and channel activity cover the whole batch and every channel (not only the kept
    sample), so a short last batch still gets statistics. Probe passes are ignored.

    Args:
        sample: the batch index whose near-zero fraction is counted.
        near_zero: ``|x| <= near_zero`` counts as a near-zero value.
    """

    def __init__(self, *, sample: int = 0, near_zero: float = 1e-6) -> None:
        self.sample = sample
        self.near_zero = near_zero
        #: When False, passes are observed but nothing is reduced.
        self.enabled = True
        #: ``(pass index, {key: LayerSums})`` of the last complete training pass.
        self.published: tuple[int, dict[str, LayerSums]] | None = None
        self._pending: dict[str, LayerSums] | None = None

    def start(self, record: PassRecord) -> None:
        self._pending = {} if self.enabled and record.kind != "probe" else None

    def output(self, record: PassRecord, key: str, module: nn.Module, output: torch.Tensor) -> None:
        target = self._pending
        if target is None or output.numel() == 0:
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
        peak = x.amax(dim=dims) if dims else x.reshape(x.shape[0], -1).amax(dim=1)
        # Near-zero values are counted in the shown sample (every channel): a comparison
        # needs a temporary, and one sample keeps it small.
        near = (one.abs() <= self.near_zero).sum()
        sums = torch.stack([x.sum(), torch.linalg.vector_norm(x), near.to(x.dtype)])
        target[key] = LayerSums(sums, peak, x.numel(), one.numel())

    def end(self, record: PassRecord, complete: bool) -> None:
        pending, self._pending = self._pending, None
        if complete and pending is not None:
            self.published = (record.index, pending)


def finish_stats(layer: LayerSums) -> tuple[float, float, float]:
    """Mean, std (Bessel-corrected) and near-zero fraction from a hook's float32 sums."""
    total, norm, near = (float(v) for v in layer.sums.tolist())
    n = max(layer.numel, 1)
    mean = total / n
    var = max(norm * norm / n - mean * mean, 0.0) * (n / max(n - 1, 1))
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
