"""The byte budget: what one capture writes stays small, and huge inputs stay bounded."""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

from tests.support.helpers import GatedSink, read_events
from torch_featureviz import FeatureMonitor, find_conv_layers
from torch_featureviz.capture.pooling import map_pixels, pool_factor, pool_map
from torch_featureviz.monitor.budget import MapBudget, filter_extent, plan_filters, water_fill


def event_bytes(log_dir: Path) -> int:
    return sum(p.stat().st_size for p in log_dir.iterdir() if "tfevents" in p.name)


def two_captures(model: nn.Module, log_dir: Path, *, batch: int, size: int) -> tuple[int, int]:
    """The bytes of a FeatureMonitor's first and second capture, at its defaults, a probe."""
    probe = torch.randn(1, 3, size, size)
    with FeatureMonitor(model, log_dir, every=1, probe=probe, on_full="block") as monitor:
        model(torch.randn(batch, 3, size, size)).sum().backward()
        monitor.step()
        monitor.flush()
        first = event_bytes(log_dir)
        model(torch.randn(batch, 3, size, size)).sum().backward()
        monitor.step()
    return first, event_bytes(log_dir) - first


def test_water_fill_keeps_small_maps_native() -> None:
    caps = water_fill({"small": 10, "mid": 100, "big": 10_000}, budget=300)
    assert caps["small"] == 10 and caps["mid"] == 100
    assert caps["big"] == 190  # what the others left
    assert sum(caps.values()) <= 300


@pytest.mark.parametrize("shape", [(16, 112, 112), (8, 1000), (4, 3, 64, 64), (2, 7, 7)])
def test_pool_factor_fits_the_cap(shape: tuple[int, ...]) -> None:
    cap = 2_000
    factor = pool_factor(shape, cap)
    pooled = pool_map(torch.randn(shape), factor)
    assert map_pixels(tuple(pooled.shape)) <= max(cap, shape[0] * 4)
    if factor > 1:  # the smallest factor that fits
        smaller = pool_map(torch.randn(shape), factor - 1)
        assert map_pixels(tuple(smaller.shape)) > cap
    assert pool_factor(shape, None) == 1


def test_map_budget_caps_the_grid_side() -> None:
    budget = MapBudget(None, layers=1, max_side=256)
    cap = budget("conv", (16, 1024, 1024))
    assert cap is not None and cap <= 16 * 63 * 63  # 4 tiles across, 256 px


@pytest.mark.slow
def test_resnet50_capture_fits_half_a_megabyte(tmp_path: Path) -> None:
    torch.manual_seed(0)
    first, second = two_captures(torchvision.models.resnet50(), tmp_path, batch=4, size=224)
    assert first <= 500_000, first  # with the one-time records (probe image, layer index)
    assert second <= 500_000, second
    tags = read_events(tmp_path).Tags()["images"]
    assert sum(t.startswith("filters/") for t in tags) == 53  # every conv still logged
    assert sum(t.startswith("feature_maps/hook/") for t in tags) == 53
    assert sum(t.startswith("feature_maps/probe/") for t in tags) == 53


def _many_convs(n: int, width: int = 64) -> nn.Sequential:
    """A deep stack of 1x1 and 3x3 convs, as a densenet's: most filters are weight matrices."""
    layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1), nn.ReLU()]
    for i in range(n - 1):
        layers += [nn.Conv2d(width, width, 1 if i % 2 else 3, padding=0 if i % 2 else 1)]
        layers += [nn.BatchNorm2d(width), nn.ReLU()]
    return nn.Sequential(*layers)


def test_filter_plan_keeps_resnet50s_grids_and_fits_hundreds_of_convs() -> None:
    r50 = find_conv_layers(torchvision.models.resnet50())
    tile, shown, pixels = plan_filters(r50, 64, 8, 320_000, 2048)
    assert tile == 8 and pixels <= 320_000  # resnet50's grids as drawn without a budget
    assert shown == {n: filter_extent(c, 64, 8)[:2] for n, c in r50.items()}

    deep = find_conv_layers(_many_convs(200))
    unplanned = sum(filter_extent(c, 64, 8)[2] for c in deep.values())
    assert unplanned > 600_000
    tile, shown, pixels = plan_filters(deep, 64, 8, 250_000, 2048)
    assert pixels <= 250_000 and set(shown) == set(deep)  # every conv keeps a grid
    assert min(f for f, _ in shown.values()) >= 16  # tiles shrink before filters go
    assert plan_filters(deep, 64, 8, None, None)[2] == unplanned


@pytest.mark.slow
def test_a_model_with_hundreds_of_convs_stays_within_the_budget(tmp_path: Path) -> None:
    torch.manual_seed(0)
    _, later = two_captures(_many_convs(150), tmp_path, batch=2, size=32)
    assert later <= 500_000
    tags = read_events(tmp_path).Tags()["images"]
    assert sum(t.startswith("filters/") for t in tags) == 150  # every conv still logged
    assert sum(t.startswith("feature_maps/probe/") for t in tags) == 150


def test_max_grid_side_caps_filter_grids_too(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Conv2d(3, 64, 3), nn.Conv2d(64, 300, 1), nn.Conv1d(300, 400, 1))
    with FeatureMonitor(
        model,
        tmp_path,
        every=1,
        on_full="block",
        filter_tile=256,
        max_filters=None,
        log_budget=None,
        max_grid_side=200,
        log_hook_maps=False,
        log_stats=False,
    ) as monitor:
        monitor.step()
    ea = read_events(tmp_path)
    sides = {t: max(ea.Images(t)[0].width, ea.Images(t)[0].height) for t in ea.Tags()["images"]}
    assert len(sides) == 3 and max(sides.values()) <= 200, sides
    assert min(sides.values()) > 100  # cut to fit, not shrunk to nothing


@pytest.mark.parametrize("options", [{}, {"max_grid_side": 512}], ids=["defaults", "side512"])
def test_a_2048_px_input_stays_bounded(tmp_path: Path, options: dict[str, int]) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1)
    ).eval()
    probe = torch.randn(1, 3, 2048, 2048)
    side = options.get("max_grid_side", 2048)
    with FeatureMonitor(model, tmp_path, every=1, on_full="block", probe=probe, **options) as mon:
        model.train()
        x = torch.randn(1, 3, 2048, 2048, requires_grad=True)
        model(x).mean().backward()
        mon.step()
        capture = mon.capture
        assert capture is not None and capture.last is not None
        # Pooled in the hook, so the memory a capture keeps is bounded by the budget: the
        # maps of one view hold at most log_budget values (README, "A byte budget").
        kept = sum(m.numel() for m in capture.last.maps.values())
        assert kept <= 500_000, kept
    ea = read_events(tmp_path)
    for tag in ea.Tags()["images"]:
        (event,) = ea.Images(tag)
        assert max(event.width, event.height) <= side, tag
        assert len(event.encoded_image_string) <= 2_000_000, tag
    assert event_bytes(tmp_path) <= 500_000  # one capture, the probe image included
    pixels = np.asarray(
        Image.open(io.BytesIO(ea.Images("feature_maps/hook/0")[0].encoded_image_string))
    )
    assert len(np.unique(pixels)) > 10  # pooled, not blank


def test_block_policy_waits_for_a_slow_writer(tmp_path: Path) -> None:
    """Deterministic under any load: the writer is held until the queue is full, then let go."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    sinks: list[GatedSink] = []

    def wrap(inner: object) -> GatedSink:
        sinks.append(GatedSink(inner))
        return sinks[0]

    monitor = FeatureMonitor(
        model, tmp_path, every=1, queue_size=1, on_full="block", block_timeout=60, sink_wrapper=wrap
    )
    opener = threading.Timer(0.3, sinks[0].event.set)  # the disk "recovers" while step() waits
    opener.start()
    for _ in range(6):
        model(torch.randn(2, 3, 8, 8)).sum().backward()
        assert monitor.step()
    monitor.close()
    opener.join()
    assert monitor.dropped == 0 and monitor.captured == 6
    assert [e.step for e in read_events(tmp_path).Images("filters/0")] == list(range(6))


def test_block_policy_gives_up_after_its_timeout_and_says_why(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3))
    sinks: list[GatedSink] = []

    def wrap(inner: object) -> GatedSink:
        sinks.append(GatedSink(inner))
        return sinks[0]

    monitor = FeatureMonitor(
        model,
        tmp_path,
        every=1,
        queue_size=1,
        on_full="block",
        block_timeout=0.2,
        sink_wrapper=wrap,
        close_timeout=30,
    )
    with pytest.warns(RuntimeWarning, match=r"dropped the capture of step \d: waited 0.2 s"):
        for _ in range(4):
            model(torch.randn(1, 3, 8, 8)).sum().backward()
            monitor.step()
    assert monitor.dropped >= 1
    sinks[0].event.set()
    monitor.close()
    assert os.listdir(tmp_path)
