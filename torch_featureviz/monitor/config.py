"""The monitor's options, checked once: :class:`MonitorConfig`.

:class:`~torch_featureviz.FeatureMonitor` and the Lightning callback take the same options and
check them here, in the calling thread, before any hook, thread or file exists.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any, Literal

from torch_featureviz._validation import (
    check_bool,
    check_choice,
    check_cmap,
    check_float,
    check_non_negative_int,
    check_positive_int,
    check_prefix,
    check_timeout,
    unknown_option_message,
)

__all__ = ["MonitorConfig"]


@dataclass(frozen=True)
class MonitorConfig:
    """Every option of :class:`~torch_featureviz.FeatureMonitor` except the model, the log
    directory and the probe.

    Attributes:
        every: capture every ``every`` steps (steps 0, every, 2 * every, ...).
        every_seconds: also capture when this many seconds passed since the last capture.
        layers: conv names or ``fnmatch`` globs to watch; ``None`` watches every conv.
        types: conv types to watch (see :func:`~torch_featureviz.find_conv_layers`); ``None``
            watches every convolution, 1-d, 2-d, 3-d and transposed.
        max_channels: channels per feature-map grid.
        channels: which channels the grids show: ``"first"`` (channels 0..max_channels-1),
            ``"top"`` (the most active: the largest mean activation of the shown sample) or
            ``"changed"`` (the largest change of that mean since the capture before). The
            choice is made from the captures before it and kept until the next refresh, so a
            tile keeps its meaning while you scrub; it is logged as text under
            ``featureviz/channels`` (layer: channel of each tile, in order).
        channel_refresh: choose again every this many captures; ``None`` chooses once.
        max_filters: filters per filter grid.
        sample: which sample of the training batch (and of the probe) is shown.
        log_filters: log filter grids.
        log_hook_maps: log the training batch's maps.
        log_stats: log activation statistics.
        stats_after_activation: describe each conv by the activation that follows it (through
            a norm layer, if any), where there is one; ``False`` describes raw conv outputs.
        histograms: also log activation and weight histograms.
        near_zero: ``|x| <= near_zero`` counts as a near-zero value.
        active_threshold: a channel is active in a capture when some value exceeds this.
        dead_window: how many captures the dead-channel window spans.
        passes: which forwards are the training batch's: ``"grad"`` (default) only forwards
            run with gradients enabled, so validation under ``no_grad``/``inference_mode``
            (and EMA evaluation) is neither copied nor logged; ``"all"`` every forward.
            Formerly spelled ``record=``, which still works with a ``FutureWarning``.
        max_calls: keep only the first ``max_calls`` calls of each module per pass.
        keep_hooks: keep the hooks registered between captures, switched off, instead of
            removing them after each capture and adding them back before the next sampled
            forward. Removing them is the default: a module with hooks takes PyTorch's slower
            call path even when they do nothing (about 1% of a batch-16 step of the demo on 2
            CPU cores). The monitor keeps them by itself once it sees the model compiled
            (wrapped by ``torch.compile``, compiled in place, or traced with the hooks); set it
            when you compile the model after creating the monitor and its first compiled
            forward may fall between captures (Dynamo does not notice hooks added later).
        queue_size: captures that may wait for the background writer.
        on_full: what a sampled step does when the queue is full: ``"drop"`` the capture
            (never blocks training), or ``"block"`` until there is room, at most
            ``block_timeout`` seconds (every step logged, as the demo wants).
        block_timeout: the longest a sampled step waits under ``"block"``.
        close_timeout: seconds :meth:`~torch_featureviz.FeatureMonitor.close` waits.
        rank_zero_only: under ``torch.distributed``, only rank 0 captures and writes. With
            ``False`` every rank writes into ``<log_dir>/rank<r>``.
        gather_filters: under sharded training (FSDP2's ``fully_shard``, FSDP1), gather the
            watched convs' whole weights before sampled steps, every rank taking part in
            ``step()``, to log their filter grids; ``False`` skips filter grids (and weight
            histograms) there, with one warning. Ignored when the model is not sharded.
        start_step: the global step of the first ``step()`` call.
        cmap: a matplotlib colormap for feature maps (``None``: grayscale).
        log_budget: about how many bytes the images of one capture may take (filters, and the
            training-batch and probe maps). The filter grids take up to two thirds of it: past
            that their tiles, then the filters per grid, are halved. Maps are average-pooled
            by integer factors to fit the rest, small maps first keeping their native
            resolution (see :mod:`~.budget`); ``None`` logs native resolution.
        max_grid_side: the longest side of any grid, filters and maps, in pixels (``None``:
            no limit), so a huge input or conv gives a bounded image and bounded memory.
        filter_tile: the filter tile width in pixels (filters are upscaled by an integer
            factor to reach it), unless ``log_budget`` needs it smaller.
        name: put every tag under ``<name>/`` (a GAN's ``"G"`` and ``"D"`` sharing a run).
        handle_sigterm: on SIGTERM, flush the log, then run the previous handler.

    Example:
        >>> config = MonitorConfig(every=50, layers="layer1.*")
        >>> config.every, config.layers
        (50, 'layer1.*')
    """

    every: int = 100
    every_seconds: float | None = None
    layers: str | Iterable[str] | None = None
    types: Any = None
    max_channels: int | None = 16
    channels: Literal["first", "top", "changed"] = "first"
    channel_refresh: int | None = 50
    max_filters: int | None = 64
    sample: int = 0
    log_filters: bool = True
    log_hook_maps: bool = True
    log_stats: bool = True
    stats_after_activation: bool = True
    histograms: bool = False
    near_zero: float = 1e-6
    active_threshold: float = 0.0
    dead_window: int = 10
    passes: Literal["grad", "all"] = "grad"
    max_calls: int | None = None
    keep_hooks: bool = False
    queue_size: int = 4
    on_full: Literal["drop", "block"] = "drop"
    block_timeout: float = 60.0
    close_timeout: float = 30.0
    rank_zero_only: bool = True
    gather_filters: bool = True
    start_step: int = 0
    cmap: str | None = None
    log_budget: int | None = 500_000
    max_grid_side: int | None = 2048
    filter_tile: int = 8
    name: str | None = None
    handle_sigterm: bool = False

    def __post_init__(self) -> None:
        check_positive_int(self.every, "every")
        check_float(
            self.every_seconds, "every_seconds", minimum=0.0, exclusive=True, allow_none=True
        )
        check_positive_int(self.max_channels, "max_channels", allow_none=True)
        check_choice(self.channels, "channels", ("first", "top", "changed"))
        check_positive_int(self.channel_refresh, "channel_refresh", allow_none=True)
        if self.channels != "first" and self.max_channels is None:
            raise ValueError(
                f"channels={self.channels!r} chooses max_channels channels; set max_channels "
                "(e.g. 16) or use channels='first'."
            )
        check_positive_int(self.max_filters, "max_filters", allow_none=True)
        check_non_negative_int(self.sample, "sample")
        for flag in (
            "log_filters",
            "log_hook_maps",
            "log_stats",
            "stats_after_activation",
            "histograms",
            "rank_zero_only",
            "gather_filters",
            "handle_sigterm",
            "keep_hooks",
        ):
            check_bool(getattr(self, flag), flag)
        check_float(self.near_zero, "near_zero", minimum=0.0)
        check_float(self.active_threshold, "active_threshold")
        check_positive_int(self.dead_window, "dead_window")
        check_choice(self.passes, "passes", ("grad", "all"))
        check_positive_int(self.max_calls, "max_calls", allow_none=True)
        check_positive_int(self.queue_size, "queue_size")
        check_choice(self.on_full, "on_full", ("drop", "block"))
        check_timeout(self.block_timeout, "block_timeout")
        check_timeout(self.close_timeout, "close_timeout")
        check_non_negative_int(self.start_step, "start_step")
        check_cmap(self.cmap)
        check_positive_int(self.log_budget, "log_budget", allow_none=True)
        check_positive_int(self.max_grid_side, "max_grid_side", allow_none=True)
        check_positive_int(self.filter_tile, "filter_tile")
        check_prefix(self.name, "name")

    @classmethod
    def from_options(
        cls, options: dict[str, Any], *, what: str = "FeatureMonitor"
    ) -> MonitorConfig:
        """Build a config from keyword options, naming any unknown one and its closest match."""
        known = [f.name for f in fields(cls)]
        if "record" in options:
            _warn_record(stacklevel=4)
            options = dict(options)
            record = options.pop("record")
            options.setdefault("passes", record)
        for key in options:
            if key not in known:
                raise TypeError(unknown_option_message(what, key, known))
        return cls(**options)

    @classmethod
    def resolve(
        cls,
        config: MonitorConfig | None,
        options: dict[str, Any],
        *,
        every: int | None = None,
        layers: str | Iterable[str] | None = None,
        sink_wrapper: Any = None,
    ) -> MonitorConfig:
        """The options of one :class:`~torch_featureviz.FeatureMonitor`: ``config`` (or the
        defaults), overridden by ``every``, ``layers`` and keyword ``options``, all checked.
        ``sink_wrapper``, the monitor's test seam, is checked here too.

        Example::

            >>> MonitorConfig.resolve(MonitorConfig(every=5), {"max_channels": 4}).every
            5
        """
        if sink_wrapper is not None and not callable(sink_wrapper):
            raise TypeError(f"sink_wrapper must be callable, got {type(sink_wrapper).__name__}.")
        if config is not None and not isinstance(config, MonitorConfig):
            raise TypeError(f"config must be a MonitorConfig or None, got {type(config).__name__}.")
        options = dict(options)
        if every is not None:
            options["every"] = every
        if layers is not None:
            options["layers"] = layers
        base = {} if config is None else config.as_dict()
        return cls.from_options({**base, **options})

    def replace(self, **changes: Any) -> MonitorConfig:
        """A copy with ``changes`` applied (and checked)."""
        return type(self).from_options({**self.as_dict(), **changes})

    def as_dict(self) -> dict[str, Any]:
        """The options as a plain dict."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _warn_record(stacklevel: int = 4) -> None:
    warnings.warn(
        "the monitor's record= option is now spelled passes= (the same values, 'grad' or "
        "'all'); record= will be removed in a later release.",
        FutureWarning,
        stacklevel=stacklevel,
    )


def _old_record(self: MonitorConfig) -> str:
    """The old spelling of :attr:`passes` (deprecated)."""
    _warn_record(stacklevel=3)
    return self.passes


_dataclass_init = MonitorConfig.__init__


@functools.wraps(_dataclass_init)
def _init(self: MonitorConfig, *args: Any, record: str | None = None, **kwargs: Any) -> None:
    if record is not None:  # the old spelling of passes=
        _warn_record(stacklevel=3)
        kwargs.setdefault("passes", record)
    _dataclass_init(self, *args, **kwargs)


# ``MonitorConfig(record=...)`` and reading ``config.record`` still work, with a warning; neither
# is a field, so ``dataclasses.replace`` and ``as_dict`` know only ``passes``.
MonitorConfig.__init__ = _init  # type: ignore[method-assign]
MonitorConfig.record = property(_old_record)  # type: ignore[attr-defined]
