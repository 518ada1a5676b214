"""What one monitor capture is, and how it becomes TensorBoard records.

The training thread builds a :class:`CaptureItem` (host copies started with
:func:`start_host_copies`, no waiting); the background writer passes it to
:class:`TensorBoardSink`, which renders, encodes and writes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from torch_featureviz.naming import layer_tag
from torch_featureviz.statistics import DeadChannelWindow, LayerSums, finish_stats
from torch_featureviz.tensorboard import TensorBoardWriter

__all__ = ["CaptureItem", "TensorBoardSink", "start_host_copies"]


@dataclass
class CaptureItem:
    """What one sampled step hands to the background writer (host tensors only)."""

    step: int
    walltime: float
    hook_maps: dict[str, torch.Tensor] = field(default_factory=dict)
    probe_maps: dict[str, torch.Tensor] = field(default_factory=dict)
    filters: dict[str, torch.Tensor] = field(default_factory=dict)
    stats: dict[str, LayerSums] = field(default_factory=dict)
    probe_image: torch.Tensor | None = None
    #: Captures dropped before this one (logged as ``featureviz/dropped_captures``).
    dropped: int = 0
    #: A CUDA event to wait on before reading pinned host copies.
    ready: Any = None


def start_host_copies(item: CaptureItem) -> None:
    """Start copying every tensor of ``item`` to the host without blocking the caller.

    CUDA tensors go to pinned memory with ``non_blocking`` copies and one event to wait on;
    captured maps and statistics are already fresh tensors, while weights are copied because
    the optimiser updates them in place.
    """
    event = None

    def move(t: torch.Tensor, copy: bool = False) -> torch.Tensor:
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
    item.stats = {
        k: LayerSums(move(s.sums), move(s.peak), s.numel, s.sample_numel)
        for k, s in item.stats.items()
    }
    if item.probe_image is not None:
        item.probe_image = move(item.probe_image)
    if event is not None:
        event.record()
        item.ready = event


class TensorBoardSink:
    """Write :class:`CaptureItem` s through a :class:`~torch_featureviz.TensorBoardWriter`.

    Args:
        writer: the writer (closed by :meth:`close`).
        log_filters: write filter grids (filters may still be present for histograms).
        histograms: write activation and weight histograms.
        dead: the dead-channel window the statistics update.
    """

    def __init__(
        self,
        writer: TensorBoardWriter,
        *,
        log_filters: bool = True,
        histograms: bool = False,
        dead: DeadChannelWindow,
    ) -> None:
        self.writer = writer
        self.log_filters = log_filters
        self.histograms = histograms
        self.dead = dead

    def write(self, item: CaptureItem) -> None:
        """Write one capture, then flush (what was written before a crash stays readable)."""
        writer = self.writer
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
        for key, sums in item.stats.items():
            mean, std, near = finish_stats(sums)
            values = {
                "mean": mean,
                "std": std,
                "near_zero": near,
                "dead_channels": self.dead.update(key, sums.peak),
            }
            for stat, value in values.items():
                scalars[writer.tag("activations", layer_tag(key), stat)] = value
        if self.histograms:
            for key, m in item.hook_maps.items():
                writer.log_histogram(
                    writer.tag("histograms", "activations", layer_tag(key)), m, step
                )
            for key, w in item.filters.items():
                writer.log_histogram(writer.tag("histograms", "weights", layer_tag(key)), w, step)
        scalars[writer.tag("featureviz", "dropped_captures")] = item.dropped
        writer.log_scalars(scalars, step)
        writer.flush()

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
