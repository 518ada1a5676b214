"""How a :class:`~torch_featureviz.FeatureMonitor` is put together from its options: the log
plan, the capture with its observers and optional parts (:data:`PARTS`), the probe check, the
event file and the writer thread. Each function builds one thing; the facade calls them in order.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from torch_featureviz._validation import (
    ModelInput,
    check_model_input,
    describe_input,
    input_hint,
    unbatched_dims,
)
from torch_featureviz.capture.discovery import find_conv_layers
from torch_featureviz.capture.hooks import FeatureCapture
from torch_featureviz.log.tensorboard import TensorBoardWriter
from torch_featureviz.monitor.agreement import check_sharded_options, reads_weights
from torch_featureviz.monitor.background import BackgroundWriter, Sink
from torch_featureviz.monitor.config import MonitorConfig
from torch_featureviz.monitor.parts import MonitorPart, PartFactory, build_parts
from torch_featureviz.monitor.plan import LogPlan, plan_log
from torch_featureviz.monitor.sharding import Sharding
from torch_featureviz.monitor.sink import SUMMARY_NAMES, TensorBoardSink, stat_groups
from torch_featureviz.monitor.statistics import STAT_NAMES, ActivationStatistics, DeadChannelWindow
from torch_featureviz.monitor.weights import UnchangedCheck, WeightReader

__all__ = ["PARTS", "Assembly", "assemble", "check_probe", "open_writer", "start_writer"]

#: The optional parts every monitor builds (the one place to register one): factories
#: ``(config, root) -> MonitorPart | None``, in the order their results are logged.
PARTS: list[PartFactory] = []




@dataclass
class Assembly:
    """What :func:`assemble` makes for a monitor: its plan, observers, capture and reader."""

    plan: LogPlan
    stats: ActivationStatistics
    unchanged: UnchangedCheck | None
    parts: list[MonitorPart]
    capture: FeatureCapture
    probe: ModelInput | None
    reader: WeightReader


def assemble(
    model: nn.Module,
    root: nn.Module,
    cfg: MonitorConfig,
    probe: ModelInput | None,
    sharding: Sharding | None,
    *,
    rank: int,
    active: bool,
) -> Assembly:
    """Plan the log (:func:`~.plan.plan_log`), then build the capture (a model without convs
    fails here, with its own message) with its observers: the statistics (``log_stats``), the
    unchanged check (eager, unsharded models) and the parts of :data:`PARTS`. Check the options
    across a sharded model's ranks and the probe (a trial pass), then make the weight reader."""
    convs = find_conv_layers(root, include=cfg.layers, types=cfg.types)
    weights = reads_weights(cfg, sharding)
    plan = plan_log(convs, cfg, probe=probe is not None and active, reads_weights=weights)
    stats = ActivationStatistics(
        sample=cfg.sample, near_zero=cfg.near_zero, after_activation=cfg.stats_after_activation
    )
    unchanged = UnchangedCheck(root) if sharding is None else None
    parts = build_parts(PARTS, cfg, root)
    observers = [obs for obs in (stats if cfg.log_stats else None, unchanged) if obs is not None]
    capture = FeatureCapture(
        model,
        cfg.layers,
        max_channels=cfg.max_channels,
        sample=cfg.sample,
        record=cfg.passes,
        max_calls=cfg.max_calls,
        types=cfg.types,
        observers=[*observers, *parts],
        pixel_cap=plan.map_cap,
        track_channel_means=cfg.channels != "first",
    )
    if sharding is not None:
        check_sharded_options(
            cfg, list(capture.layers), probe, rank=rank, active=active, sharding=sharding
        )
    checked = None
    if probe is not None and (active or sharding is not None):
        checked = check_probe(probe, capture)
    reader = WeightReader(
        capture, plan, probe=checked, reads_weights=weights, sharding=sharding, sample=cfg.sample
    )
    return Assembly(plan, stats, unchanged, parts, capture, checked, reader)


def open_writer(
    cfg: MonitorConfig,
    plan: LogPlan,
    layers: list[str],
    log_dir: Any,
    opener: Callable[[str], Any] | None,
) -> tuple[TensorBoardWriter, int]:
    """The event file, with the tab's layer index and the charts' layout written; and how many
    charts that layout has."""
    # Encode on the writer thread itself: it runs at a low priority to use idle CPU, and
    # extra encoder threads would only compete with training.
    writer = TensorBoardWriter(
        log_dir,
        max_filters=cfg.max_filters,
        cmap=cfg.cmap,
        encode_threads=1,
        prefix=cfg.name,
        min_filter_tile=plan.filter_tile,
        opener=opener,
    )
    writer.log_layer_index(layers, cfg.start_step)  # the tab's layer order
    charts = 0
    if cfg.log_stats:
        charts = writer.log_scalar_layout(
            stat_groups(layers), STAT_NAMES, SUMMARY_NAMES, cfg.start_step
        )
    if cfg.handle_sigterm and threading.current_thread() is not threading.main_thread():
        writer.close()
        raise ValueError(
            "handle_sigterm=True needs the monitor to be created in the main thread (Python "
            "runs signal handlers there); create it there or leave handle_sigterm False."
        )
    return writer, charts


def check_probe(probe: Any, capture: FeatureCapture) -> ModelInput:
    """The probe, checked and copied, after a trial pass: a probe that does not fit (wrong
    size for a linear head, ...) fails here, in the calling thread, not at the first sampled
    step."""
    x = check_model_input(
        probe, sample=capture.sample, unbatched_dims=unbatched_dims(capture.layers), name="probe"
    )
    if isinstance(x, torch.Tensor):
        x = x.detach().clone()
    try:
        capture.probe(x, keep=False)
    except RuntimeError as e:
        cause = e.__cause__ if isinstance(e.__cause__, Exception) else e
        raise ValueError(
            f"the probe of {describe_input(x)} does not fit {type(capture.root).__name__}: "
            f"{cause}{input_hint(cause)}. Pass a probe shaped like one training batch."
        ) from e
    return x


def start_writer(
    cfg: MonitorConfig,
    writer: TensorBoardWriter,
    parts: list[MonitorPart],
    sink_wrapper: Callable[[Sink], Sink] | None,
) -> BackgroundWriter:
    """The sink over ``writer`` (wrapped by the test seam), behind the writer thread."""
    sink = TensorBoardSink(
        writer,
        log_filters=cfg.log_filters,
        histograms=cfg.histograms,
        dead=DeadChannelWindow(cfg.dead_window, cfg.active_threshold),
        parts=parts,
    )
    return BackgroundWriter(
        sink if sink_wrapper is None else sink_wrapper(sink),
        queue_size=cfg.queue_size,
        on_full=cfg.on_full,
        block_timeout=cfg.block_timeout,
        name="featureviz-monitor-writer",
    )
