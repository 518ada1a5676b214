"""The real TensorBoard server reads this project's logs: runs, tags, and every image, exactly.

The server is the ``tensorboard`` binary of this environment, started on 127.0.0.1 on a free port,
and stopped by the fixture's finalizer (the whole process group, so nothing is left running).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.support.helpers import tiny_net
from tests.support.tensorboard_server import (
    SAMPLES,
    TensorBoardServer,
    blob_key_tag,
    marker_image,
    start_tensorboard,
    wait_for,
)
from torch_featureviz import TensorBoardWriter, capture_feature_maps, cli
from torch_featureviz.render.grids import make_feature_grid, make_filter_grid, to_display_image


@dataclass
class ExpectedLogs:
    """What was written: ``{run: {tag: [(step, grid or None, (H, W, C))]}}``."""

    runs: dict[str, dict[str, list[tuple[int, torch.Tensor | None, tuple[int, int, int]]]]] = (
        field(default_factory=dict)
    )

    def add(self, run: str, tag: str, step: int, grid: torch.Tensor | None,
            shape: tuple[int, int, int] | None = None) -> None:
        if grid is not None:
            shape = (int(grid.shape[1]), int(grid.shape[2]), int(grid.shape[0]))
        assert shape is not None
        self.runs.setdefault(run, {}).setdefault(tag, []).append((step, grid, shape))


def write_library_run(logdir: Path, expected: ExpectedLogs, *, steps: int = SAMPLES) -> None:
    """Run ``tiny``: TinyNet's filters over ``steps`` steps, its hook maps, input and marker."""
    model = tiny_net(seed=0).eval()
    torch.manual_seed(1)
    x = torch.rand(1, 3, 32, 32)
    maps = capture_feature_maps(model, x)
    with TensorBoardWriter(logdir / "tiny") as tb:
        for step in range(steps):
            with torch.no_grad():
                model.stem[0].weight.add_(0.01 * step)  # the filters change between steps
            tags = tb.log_filters(model, step)
            for tag, conv in zip(tags, _convs(model).values(), strict=True):
                expected.add("tiny", tag, step, make_filter_grid(conv.weight))
        for tag, m in zip(tb.log_feature_maps(maps, 0), maps.values(), strict=True):
            expected.add("tiny", tag, 0, make_feature_grid(m))
        expected.add("tiny", tb.log_image(x, 0), 0, to_display_image(x))
        marker = marker_image()
        expected.add("tiny", tb.log_image(marker, 0, name="marker"), 0, to_display_image(marker))


def _convs(model: torch.nn.Module) -> dict[str, torch.nn.Conv2d]:
    return {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}


def write_cli_run(logdir: Path, expected: ExpectedLogs) -> None:
    """Run ``cli_maps``: ``featureviz maps resnet18 --mode both`` at 64 px, 8 channels."""
    code = cli.main(
        ["maps", "resnet18", "--mode", "both", "--layers", "conv1,layer1.0.conv1",
         "--input-size", "64", "--max-channels", "8", "--logdir", str(logdir / "cli_maps"), "-q"]
    )
    assert code == 0
    # resnet18 at 64 px: conv1 gives 32x32 in both modes, layer1.0.conv1 16x16 (hook) and
    # 32x32 (chain, which skips the max-pool). Grid sizes depend on shapes only.
    shapes = {
        "feature_maps/hook/conv1": (8, 32, 32),
        "feature_maps/hook/layer1.0.conv1": (8, 16, 16),
        "feature_maps/chain/conv1": (8, 32, 32),
        "feature_maps/chain/layer1.0.conv1": (8, 32, 32),
    }
    for tag, shape in shapes.items():
        grid = make_feature_grid(torch.zeros(shape))
        expected.add("cli_maps", tag, 0, None, (int(grid.shape[1]), int(grid.shape[2]), 1))
    expected.add("cli_maps", "input/image", 0, None, (64, 64, 3))


def decode_png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "PNG"
        array = np.asarray(im)
    return array if array.ndim == 3 else array[:, :, None]


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[TensorBoardServer, ExpectedLogs]]:
    logdir = tmp_path_factory.mktemp("tb_logs")
    expected = ExpectedLogs()
    write_library_run(logdir, expected)
    write_cli_run(logdir, expected)
    server = start_tensorboard(logdir, logdir.parent / "tensorboard.log", set(expected.runs))
    try:
        yield server, expected
    finally:
        server.stop()
        assert server.proc.returncode is not None, "tensorboard is still running"


@pytest.mark.slow
def test_every_run_and_tag_is_listed(served: tuple[TensorBoardServer, ExpectedLogs]) -> None:
    server, expected = served
    assert set(server.get_json("/data/runs")) == set(expected.runs)

    def all_tags_loaded() -> bool:
        tags = server.get_json("/data/plugin/images/tags")
        return all(set(tags.get(run, {})) == set(t) for run, t in expected.runs.items())

    wait_for(server, all_tags_loaded, "every image tag listed", 60)
    tags = server.get_json("/data/plugin/images/tags")
    for run, by_tag in expected.runs.items():
        assert set(tags[run]) == set(by_tag), run
        for tag in by_tag:
            assert tags[run][tag]["samples"] == 1, (run, tag)  # one image per step
    assert len(expected.runs["tiny"]["filters/stem.0"]) == SAMPLES


@pytest.mark.slow
def test_every_image_decodes_to_what_was_written(
    served: tuple[TensorBoardServer, ExpectedLogs],
) -> None:
    server, expected = served
    checked = 0
    for run, by_tag in expected.runs.items():
        for tag, samples in by_tag.items():
            entries = server.get_json("/data/plugin/images/images", run=run, tag=tag)
            # --samples_per_plugin images=100: all 15 steps are kept, not the default 10.
            assert [e["step"] for e in entries] == [s for s, _, _ in samples], (run, tag)
            for entry, (step, grid, shape) in zip(entries, samples, strict=True):
                assert blob_key_tag(entry["query"]) == (run, tag, step)
                data = server.get("/data/plugin/images/individualImage?" + entry["query"])
                pixels = decode_png(data)
                assert pixels.shape == shape, (run, tag, step)
                if grid is not None:
                    assert np.array_equal(pixels, grid.permute(1, 2, 0).numpy()), (run, tag, step)
                checked += 1
    assert checked == sum(len(s) for t in expected.runs.values() for s in t.values())
    assert checked > 2 * SAMPLES
