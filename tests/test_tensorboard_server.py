"""The real TensorBoard server reads this project's logs: runs, tags, and every image, exactly.

The server is the ``tensorboard`` binary of this environment, started on 127.0.0.1 on a free port,
and stopped by the fixture's finalizer (the whole process group, so nothing is left running).
The helpers here are also used by ``test_browser.py``.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import tiny_net
from torch_featureviz import TensorBoardWriter, capture_feature_maps, cli
from torch_featureviz.render import make_feature_grid, make_filter_grid, to_display_image

START_TIMEOUT_S = 90.0
# Talk to the local server directly, whatever *_proxy variables the environment (or an earlier
# test, through urllib's global opener) has set.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
SAMPLES = 15  # more than TensorBoard's default of 10 images per tag


@dataclass
class TensorBoardServer:
    """A running ``tensorboard`` process and how to ask it things."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str, **params: Any) -> bytes:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with _DIRECT.open(f"{self.url}{path}{query}", timeout=30) as response:
            return response.read()

    def get_json(self, path: str, **params: Any) -> Any:
        return json.loads(self.get(path, **params))

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return "<no log>"

    def stop(self) -> None:
        """Stop the server and anything it started; idempotent."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tensorboard_command() -> list[str]:
    exe = Path(sys.executable).parent / "tensorboard"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "tensorboard.main"]


def wait_for(
    server: TensorBoardServer, check: Callable[[], bool], what: str, timeout: float
) -> None:
    """Poll ``check`` until it is true; fail with the server's log after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            pytest.fail(f"tensorboard exited with {server.proc.returncode}:\n{server.log_tail()}")
        try:
            if check():
                return
        except (urllib.error.URLError, ConnectionError, OSError, ValueError) as e:
            last = e
        time.sleep(0.25)
    pytest.fail(
        f"tensorboard: no {what} within {timeout:.0f} s (last: {last!r}):\n{server.log_tail()}"
    )


def start_tensorboard(logdir: Path, log_path: Path, expected_runs: set[str]) -> TensorBoardServer:
    """Start ``tensorboard`` on a free port and wait until it lists ``expected_runs``."""
    for _attempt in range(3):  # a port taken between free_port() and the bind: try another
        port = free_port()
        log = open(log_path, "wb")  # noqa: SIM115 - closed with the process below
        proc = subprocess.Popen(
            [*tensorboard_command(), "--logdir", str(logdir), "--host", "127.0.0.1",
             "--port", str(port), "--samples_per_plugin", "images=100", "--load_fast", "false",
             "--reload_interval", "1"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        server = TensorBoardServer(proc, port, log_path)

        def runs_listed(server: TensorBoardServer = server) -> bool:
            return set(server.get_json("/data/runs")) >= expected_runs

        try:
            wait_for(server, runs_listed, f"runs {sorted(expected_runs)} listed", START_TIMEOUT_S)
            return server
        except BaseException:
            server.stop()
            if "address already in use" not in server.log_tail().lower():
                raise
    pytest.fail("tensorboard could not bind a free port three times")


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


def marker_image() -> torch.Tensor:
    """A picture no TensorBoard page contains by itself: pure magenta left, pure cyan right."""
    image = torch.zeros(3, 96, 192)
    image[0, :, :96] = 1.0
    image[2, :, :96] = 1.0
    image[1, :, 96:] = 1.0
    image[2, :, 96:] = 1.0
    return image


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


def blob_key_tag(query: str) -> tuple[str, str, int]:
    """(run, tag, step) from an ``individualImage`` query's ``blob_key``."""
    key = urllib.parse.parse_qs(query)["blob_key"][0]
    fields = json.loads(base64.urlsafe_b64decode(key + "=" * (-len(key) % 4)))
    return fields[2], fields[3], int(fields[4])


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
