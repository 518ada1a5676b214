"""What one monitor capture is, and how it becomes TensorBoard records.

The training thread builds a :class:`CaptureItem` (host copies started with
:func:`start_host_copies`, no waiting); the background writer passes it to
:class:`TensorBoardSink`, which renders, encodes and writes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from torch_featureviz.log.tensorboard import TensorBoardWriter
from torch_featureviz.monitor.statistics import DeadChannelWindow, LayerSums, finish_stats
from torch_featureviz.naming import layer_tag

__all__ = [
    "SUMMARY_NAMES",
    "CaptureItem",
    "TensorBoardSink",
    "model_summary",
    "stat_groups",
    "start_host_copies",
]

#: Model-wide scalars logged at each capture, under ``summary/<name>``.
SUMMARY_NAMES = ("dead_channels_mean", "dead_channels_max", "layers_with_dead_channels")


def model_summary(dead_fractions: list[float]) -> dict[str, float]:
    """The model-wide summaries of one capture's per-layer dead-channel fractions."""
    return {
        "dead_channels_mean": sum(dead_fractions) / len(dead_fractions),
        "dead_channels_max": max(dead_fractions),
        "layers_with_dead_channels": float(sum(f > 0 for f in dead_fractions)),
    }


def stat_groups(layers: list[str], max_groups: int = 6) -> dict[str, list[str]]:
    """Group layer keys into stages for the custom-scalars charts, in model order.

    Layers group by their first name component (``layer1``, ``features``); a group holding most
    of the model (timm's ``blocks``, torchvision's ``features``) is split by its second one, and
    groups beyond ``max_groups`` are merged into contiguous runs so the chart count stays small.
    """

    def head(key: str, depth: int) -> str:
        parts = key.split(".")
        return ".".join(parts[: min(depth, max(len(parts) - 1, 1))])

    groups: dict[str, list[str]] = {}
    for key in layers:
        groups.setdefault(head(key, 1), []).append(key)
    if len(groups) < 3 and layers:
        big = max(groups, key=lambda g: len(groups[g]))
        inner: dict[str, list[str]] = {}
        for key in groups.pop(big):
            inner.setdefault(head(key, 2), []).append(key)
        groups.update(inner)
        groups = {g: groups[g] for g in sorted(groups, key=lambda g: layers.index(groups[g][0]))}
    if len(groups) > max_groups:
        names = list(groups)
        size = -(-len(names) // max_groups)
        merged: dict[str, list[str]] = {}
        for i in range(0, len(names), size):
            chunk = names[i : i + size]
            title = chunk[0] if len(chunk) == 1 else f"{chunk[0]} .. {chunk[-1]}"
            merged[title] = [k for n in chunk for k in groups[n]]
        groups = merged
    return groups


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
    #: ``{key: channel of each tile}`` when the monitor chooses channels.
    channels: dict[str, list[int]] | None = None
    #: Captures dropped before this one (logged as ``featureviz/dropped_captures``).
    dropped: int = 0
    #: CUDA events to wait on before reading pinned host copies (one per batch of copies).
    ready: tuple[Any, ...] = ()
    #: ``{result_key: result}`` of the monitor's optional parts (see :mod:`~.parts`).
    parts: dict[str, Any] = field(default_factory=dict)

    def adopt_weights(self, view: CaptureItem) -> None:
        """Take the filters, probe maps and probe image of ``view``: the capture's weights as
        read before its forward, with their host copies already started."""
        self.filters = view.filters
        self.probe_maps = view.probe_maps
        self.probe_image = view.probe_image
        self.ready = (*view.ready, *self.ready)


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

    def move_sums(sums: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        if sums[0].device.type == "cpu":
            return sums
        return move(torch.stack(sums)).unbind()  # one copy to the host, not three

    item.stats = {
        k: LayerSums(move_sums(s.sums), move(s.peak), s.numel, s.sample_numel)
        for k, s in item.stats.items()
    }
    if item.probe_image is not None:
        item.probe_image = move(item.probe_image)
    item.parts = {
        k: move(v) if isinstance(v, torch.Tensor)
        else {n: move(t) for n, t in v.items()} if _tensor_dict(v) else v
        for k, v in item.parts.items()
    }
    if event is not None:
        event.record()
        item.ready = (*item.ready, event)


def _tensor_dict(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(t, torch.Tensor) for t in value.values())


class TensorBoardSink:
    """Write :class:`CaptureItem` s through a :class:`~torch_featureviz.TensorBoardWriter`.

    Args:
        writer: the writer (closed by :meth:`close`).
        log_filters: write filter grids (filters may still be present for histograms).
        histograms: write activation and weight histograms.
        dead: the dead-channel window the statistics update.
        parts: the monitor's optional parts; each writes its own result (see :mod:`~.parts`).
    """

    def __init__(
        self,
        writer: TensorBoardWriter,
        *,
        log_filters: bool = True,
        histograms: bool = False,
        dead: DeadChannelWindow,
        parts: Sequence[Any] = (),
    ) -> None:
        self.writer = writer
        self.parts = list(parts)
        self.log_filters = log_filters
        self.histograms = histograms
        self.dead = dead

    def write(self, item: CaptureItem) -> None:
        """Write one capture, then flush (what was written before a crash stays readable)."""
        writer = self.writer
        for event in item.ready:
            event.synchronize()
        step = item.step
        if item.probe_image is not None:
            writer.log_image(item.probe_image, step, name="probe")
        if self.log_filters and item.filters:
            writer.log_filters(item.filters, step)
        if item.channels:
            writer.log_channels(item.channels, step)
        if item.hook_maps:
            writer.log_feature_maps(item.hook_maps, step, mode="hook")
        if item.probe_maps:
            writer.log_feature_maps(item.probe_maps, step, mode="probe")
        scalars: dict[str, float] = {}
        dead_fractions: list[float] = []
        for key, sums in item.stats.items():
            mean, std, near = finish_stats(sums)
            values = {
                "mean": mean,
                "std": std,
                "near_zero": near,
                "dead_channels": self.dead.update(key, sums.peak),
            }
            dead_fractions.append(values["dead_channels"])
            for stat, value in values.items():
                scalars[writer.tag("activations", layer_tag(key), stat)] = value
        if self.histograms:
            for key, m in item.hook_maps.items():
                writer.log_histogram(
                    writer.tag("histograms", "activations", layer_tag(key)), m, step
                )
            for key, w in item.filters.items():
                writer.log_histogram(writer.tag("histograms", "weights", layer_tag(key)), w, step)
        if dead_fractions:
            scalars.update(
                {writer.tag("summary", k): v for k, v in model_summary(dead_fractions).items()}
            )
        scalars[writer.tag("featureviz", "dropped_captures")] = item.dropped
        writer.log_scalars(scalars, step)
        for part in self.parts:
            if part.result_key in item.parts:
                part.log(writer, step, item.parts[part.result_key])
        writer.flush()

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
