"""What one capture logs and at what size, decided once from the layers and the options:
:func:`plan_log` returns a :class:`LogPlan`, the one door from the byte budget to rendering."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from torch_featureviz.monitor.budget import MapBudget, plan_filters
from torch_featureviz.monitor.config import MonitorConfig
from torch_featureviz.render.grids import to_output_filters

__all__ = ["LogPlan", "plan_log"]

#: What ``log_budget`` keeps aside from images: a capture's fixed records (its summaries, the
#: model-wide statistics), and per watched conv its scalars and its images' own PNG and
#: summary headers (measured: 450-600 bytes per conv on resnet50 and densenet201; PNGs of
#: noise-like grids also take a little more than a byte per pixel).
FIXED_BYTES = 5_000
BYTES_PER_LAYER = 700
#: The probe's input image, logged once, takes at most this share of ``log_budget`` (as
#: pixel values); a larger one is average-pooled by an integer factor.
PROBE_IMAGE_SHARE = 8


@dataclass
class LogPlan:
    """The sizes of a capture's images: how many filters (and inputs) each filter grid shows
    and its tile width, the pixel cap of every map, and how much the probe image is pooled.

    Made by :func:`plan_log`; the capture's hooks call :attr:`map_cap`, the sampled steps trim
    their filters with :meth:`trim_filters`, and the writer draws tiles :attr:`filter_tile` wide.
    """

    #: The pixel cap of each map (a :class:`~torch_featureviz.FeatureCapture` ``pixel_cap``).
    map_cap: MapBudget
    #: The filter tile width, in pixels.
    filter_tile: int
    #: The most filters a grid shows (``None``: all) unless :attr:`filter_shown` says otherwise.
    max_filters: int | None
    #: ``{layer: (filters shown, inputs shown of a 1x1 conv's weight matrix or None)}``.
    filter_shown: dict[str, tuple[int | None, int | None]] = field(default_factory=dict)
    #: The largest probe image, in pixel values, and the longest grid side (``None``: none).
    probe_values: int | None = None
    max_grid_side: int | None = None

    def trim_filters(self, name: str, conv: nn.Module, weight: torch.Tensor) -> torch.Tensor:
        """The filters of ``conv`` (its ``weight``, one filter per output channel) to draw."""
        w = to_output_filters(
            weight,
            transposed=bool(getattr(conv, "transposed", False)),
            groups=int(getattr(conv, "groups", 1)),
        )
        shown, inputs = self.filter_shown.get(name, (self.max_filters, None))
        w = w if shown is None else w[:shown]
        return w if inputs is None else w[:, :inputs]

    def probe_image_factor(self, shape: tuple[int, ...]) -> int:
        """The pooling factor that fits a ``(C, H, W)`` probe image within ``max_grid_side``
        and its share of ``log_budget``."""
        factor = 1
        if self.max_grid_side is not None and max(shape[1:]) > self.max_grid_side:
            factor = math.ceil(max(shape[1:]) / self.max_grid_side)
        if self.probe_values is not None:
            while (
                shape[0] * math.ceil(shape[1] / factor) * math.ceil(shape[2] / factor)
                > self.probe_values
                and factor < max(shape[1:])
            ):
                factor += 1
        return factor


def plan_log(
    layers: Mapping[str, nn.Module],
    config: MonitorConfig,
    *,
    probe: bool,
    reads_weights: bool,
) -> LogPlan:
    """Share ``config.log_budget`` between the filter grids and the maps of each view.

    The filter grids take what they need, up to two thirds of it: past that their tiles, then
    their filter counts, are halved (:func:`~.budget.plan_filters`), so a model with hundreds
    of convs stays within the budget too. Each view's maps (the training batch's when
    ``log_hook_maps``, the probe's when ``probe``) get an equal part of the rest.
    ``max_grid_side`` caps every filter grid as it caps maps. A pure function of its inputs.

    Args:
        layers: the watched convs, ``{name: module}``.
        config: the monitor's options.
        probe: whether captures have probe maps.
        reads_weights: whether captures read the convs' weights (not under sharding with
            ``gather_filters=False``).

    Example::

        >>> convs = {"a": nn.Conv2d(3, 8, 3), "b": nn.Conv2d(8, 8, 3)}
        >>> plan = plan_log(convs, MonitorConfig(), probe=False, reads_weights=True)
        >>> plan.filter_tile, plan.map_cap.budget
        (8, 490400)
    """
    cfg = config
    count = len(layers)
    budget = cfg.log_budget
    if budget is not None:
        budget = max(budget - FIXED_BYTES - BYTES_PER_LAYER * count, 0)
    tile = cfg.filter_tile
    shown: Mapping[str, tuple[int | None, int | None]] = {}
    if cfg.log_filters and reads_weights:
        filter_budget = None if budget is None else budget * 2 // 3
        tile, shown, pixels = plan_filters(
            layers, cfg.max_filters, cfg.filter_tile, filter_budget, cfg.max_grid_side
        )
        if budget is not None:
            budget -= pixels
    if budget is not None:
        views = int(cfg.log_hook_maps) + int(probe)
        budget = max(budget, 64 * count) // max(views, 1)
    return LogPlan(
        map_cap=MapBudget(budget, count, cfg.max_grid_side),
        filter_tile=tile,
        max_filters=cfg.max_filters,
        filter_shown=dict(shown),
        probe_values=None if cfg.log_budget is None else cfg.log_budget // PROBE_IMAGE_SHARE,
        max_grid_side=cfg.max_grid_side,
    )
