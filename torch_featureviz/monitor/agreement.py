"""A sharded model's monitors must agree: the same options on every rank, and none that cannot
work there (:func:`check_sharded_options`). Raised on every rank alike, before any probe pass or
filter gather runs."""

from __future__ import annotations

import warnings
from typing import Any

import torch

from torch_featureviz._validation import describe_input
from torch_featureviz.monitor.config import MonitorConfig
from torch_featureviz.monitor.sharding import Sharding

__all__ = ["check_sharded_options", "reads_weights"]


def reads_weights(config: MonitorConfig, sharding: Sharding | None) -> bool:
    """Whether sampled steps read the watched convs' weights (gathered under sharding).

    Example::

        >>> reads_weights(MonitorConfig(), None)
        True
        >>> reads_weights(MonitorConfig(gather_filters=False), "dtensor")
        False
    """
    wanted = config.log_filters or config.histograms
    return wanted and (sharding is None or config.gather_filters)


def check_sharded_options(
    config: MonitorConfig,
    layers: list[str],
    probe: Any,
    *,
    rank: int,
    active: bool,
    sharding: Sharding = "dtensor",
) -> None:
    """Check that every rank of a sharded model passed the same options (each rank sees every
    rank's, gathered with one ``all_gather_object``), and refuse those sharding cannot serve.

    Args:
        config: this rank's options.
        layers: the watched convs' names.
        probe: the probe input as given (its description must match), or ``None``.
        rank: this rank, for the message.
        active: whether this rank writes (only it warns about skipped filter grids).
        sharding: how the model is sharded.

    Raises:
        ValueError: an option differs between ranks, or ``every_seconds`` is set.

    Example::

        >>> check_sharded_options(MonitorConfig(), ["conv"], None, rank=0, active=True)
    """
    cfg = config
    mine = {
        "every": cfg.every,
        "every_seconds": cfg.every_seconds,
        "start_step": cfg.start_step,
        "layers": tuple(layers),
        "probe": None if probe is None else describe_input(probe),
        "filters": reads_weights(cfg, sharding),
    }
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    everyone: list[Any] = [None] * world
    if world > 1:
        torch.distributed.all_gather_object(everyone, mine)
    else:
        everyone = [mine]
    for other, theirs in enumerate(everyone):
        for key, value in mine.items():
            if theirs[key] != value:
                raise ValueError(
                    f"FeatureMonitor on a sharded model needs the same options on every "
                    f"rank, but {key} differs: {value!r} on rank {rank}, "
                    f"{theirs[key]!r} on rank {other}. Create the monitor on every rank with "
                    "the same model, options and probe shape: probe passes and filter "
                    "gathers run on all ranks together."
                )
    if cfg.every_seconds is not None:
        raise ValueError(
            "every_seconds cannot be used with a sharded model (FSDP): each rank's clock "
            "would pick different steps, and probe passes and filter gathers need every "
            "rank at the same step. Use every=N."
        )
    if cfg.log_filters and not cfg.gather_filters and active:
        warnings.warn(
            "gather_filters=False: filter grids (and weight histograms) are not logged for "
            "this sharded model; feature maps and statistics still are.",
            RuntimeWarning,
            stacklevel=4,
        )
