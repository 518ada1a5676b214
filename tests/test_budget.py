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

from tests.helpers import GatedSink, read_events
from torch_featureviz import FeatureMonitor
from torch_featureviz.budget import MapBudget, map_pixels, pool_factor, pool_map, water_fill


def event_bytes(log_dir: Path) -> int:
    return sum(p.stat().st_size for p in log_dir.iterdir() if "tfevents" in p.name)


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
    model = torchvision.models.resnet50()
    probe = torch.randn(1, 3, 224, 224)
    with FeatureMonitor(model, tmp_path, every=1, probe=probe, on_full="block") as monitor:
        for _ in range(2):
            model(torch.randn(4, 3, 224, 224)).sum().backward()
            monitor.step()
            monitor.flush()
            if monitor.captured == 1:
                first = event_bytes(tmp_path)
    second = event_bytes(tmp_path) - first
    assert second <= 500_000, second  # a later capture (the first also holds the probe image)
    tags = read_events(tmp_path).Tags()["images"]
    assert sum(t.startswith("filters/") for t in tags) == 53  # every conv still logged
    assert sum(t.startswith("feature_maps/hook/") for t in tags) == 53
    assert sum(t.startswith("feature_maps/probe/") for t in tags) == 53


def test_a_2048_px_input_stays_bounded(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1)
    ).eval()
    probe = torch.randn(1, 3, 2048, 2048)
    with FeatureMonitor(
        model, tmp_path, every=1, on_full="block", probe=probe, max_grid_side=512
    ) as monitor:
        with torch.no_grad():
            model.train()
        x = torch.randn(1, 3, 2048, 2048, requires_grad=True)
        model(x).mean().backward()
        monitor.step()
        capture = monitor.capture
        assert capture is not None and capture.last is not None
        for key, m in capture.last.maps.items():  # pooled in the hook: bounded memory
            assert m.numel() <= 500_000, (key, tuple(m.shape))
    ea = read_events(tmp_path)
    for tag in ea.Tags()["images"]:
        (event,) = ea.Images(tag)
        if tag.startswith("feature_maps/"):
            assert max(event.width, event.height) <= 512, tag
        assert len(event.encoded_image_string) <= 2_000_000, tag
    assert event_bytes(tmp_path) <= 2 * 500_000 + 3 * 2048 * 2048  # budget + the probe image
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
