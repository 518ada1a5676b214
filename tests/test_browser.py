"""TensorBoard's Images dashboard, opened in headless Chromium, shows this project's images.

Chromium (Debian's ``chromium`` package; ``.ci/run`` installs it) loads
``http://127.0.0.1:PORT/#images`` from a real ``tensorboard`` server, with a virtual-time budget
so the page finishes loading, and saves a screenshot. The dashboard is a Polymer element whose
``<img>`` tags live in shadow DOM, which ``--dump-dom`` does not print; so the test proves the
page rendered the images in two other ways:

- Chromium's network log (``--log-net-log``) shows the page fetched every logged image
  (``individualImage?blob_key=...``, whose key names the run and tag);
- the screenshot contains a logged marker picture (pure magenta and pure cyan, colours the
  TensorBoard page never uses) over a large area, and the many colours of real grids.

If Chromium is missing the test fails with the command to install it; it is never skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support.tensorboard_server import (
    TensorBoardServer,
    blob_key_tag,
    marker_image,
    start_tensorboard,
)
from torch_featureviz import TensorBoardWriter, cli
from torch_featureviz.render.grids import to_display_image

BROWSER_TIMEOUT_S = 120
WINDOW = (1280, 2200)
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-proxy-server",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
]


def chromium_executable() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(
        "headless Chromium is needed for this test and is not installed: "
        "apt-get update && apt-get install -y chromium (.ci/run does this)"
    )


def screenshot(
    url: str, png: Path, workdir: Path, *, window: tuple[int, int] = WINDOW,
    netlog: Path | None = None, budget_ms: int = 30000,
) -> None:
    """Load ``url`` in a fresh headless Chromium profile and save a screenshot to ``png``."""
    profile = workdir / "chromium-profile"
    profile.mkdir(parents=True, exist_ok=True)
    args = [
        chromium_executable(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
        f"--window-size={window[0]},{window[1]}", f"--virtual-time-budget={budget_ms}",
        f"--screenshot={png}",
    ]
    if netlog is not None:
        args.append(f"--log-net-log={netlog}")
    log_path = workdir / "chromium.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*args, url], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        proc.wait(timeout=BROWSER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"chromium did not finish within {BROWSER_TIMEOUT_S} s")
    finally:
        try:  # the browser's helper processes too: nothing may outlive the test
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    if not png.is_file():
        tail = log_path.read_text(errors="replace")[-2000:]
        pytest.fail(f"chromium wrote no screenshot:\n{tail}")


def requested_images(netlog: Path) -> set[tuple[str, str]]:
    """(run, tag) of every ``individualImage`` URL in a Chromium net log."""
    text = netlog.read_text(errors="replace")
    found = set()
    for chunk in text.split("individualImage?")[1:]:
        query = chunk.split('"', 1)[0].split(" ", 1)[0].split("\\", 1)[0]
        try:
            run, tag, _step = blob_key_tag(query)
        except (KeyError, ValueError, json.JSONDecodeError, IndexError):
            continue
        found.add((run, tag))
    return found


def write_browser_logs(logdir: Path, *, marker: bool = True) -> set[tuple[str, str]]:
    """Logs written by the CLI (filters and maps of resnet18) plus, optionally, the marker."""
    assert cli.main(["filters", "resnet18", "--layers", "conv1", "--max-filters", "64",
                     "--logdir", str(logdir / "filters"), "-q"]) == 0
    assert cli.main(["maps", "resnet18", "--layers", "conv1", "--max-channels", "16",
                     "--input-size", "112", "--logdir", str(logdir / "maps"), "-q"]) == 0
    expected = {("filters", "filters/conv1"), ("maps", "feature_maps/hook/conv1"),
                ("maps", "input/image")}
    if marker:
        with TensorBoardWriter(logdir / "marker") as tb:
            tb.log_grid("test_marker/magenta_cyan", to_display_image(marker_image()), 0)
        expected.add(("marker", "test_marker/magenta_cyan"))
    return expected


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> tuple[TensorBoardServer, set]:
    logdir = tmp_path_factory.mktemp("browser_logs")
    expected = write_browser_logs(logdir)
    tb = start_tensorboard(logdir, logdir.parent / "tensorboard.log", {r for r, _ in expected})
    try:
        yield tb, expected
    finally:
        tb.stop()
        assert tb.proc.returncode is not None, "tensorboard is still running"


def _near(pixels: np.ndarray, colour: tuple[int, int, int], tol: int = 12) -> int:
    return int((np.abs(pixels.astype(np.int16) - colour).max(axis=-1) <= tol).sum())


# TensorBoard expands only the first two tag groups of the Images dashboard; a tag filter shows
# every matching tag in one expanded group at the top.
ALL_TAGS = "#images&tagFilter=."


@pytest.mark.slow
def test_images_dashboard_renders_every_image(
    server: tuple[TensorBoardServer, set], tmp_path: Path
) -> None:
    tb, expected = server
    png, netlog = tmp_path / "tensorboard_images.png", tmp_path / "netlog.json"
    screenshot(f"{tb.url}/{ALL_TAGS}", png, tmp_path, netlog=netlog)

    # The page asked the server for every image that was logged.
    assert requested_images(netlog) >= expected

    with Image.open(png) as im:
        assert im.size == WINDOW
        pixels = np.asarray(im.convert("RGB"))
    # The marker is 192x96 px of half magenta, half cyan; TensorBoard draws it at least at its
    # own size, and uses neither colour anywhere else.
    assert _near(pixels, (255, 0, 255)) >= 96 * 96 * 0.8
    assert _near(pixels, (0, 255, 255)) >= 96 * 96 * 0.8
    # Real grids: resnet18's conv1 filters in colour, feature maps and the photo.
    colours = np.unique(pixels.reshape(-1, 3), axis=0)
    assert len(colours) > 3000, len(colours)


@pytest.mark.slow
def test_collapsed_groups_are_neither_fetched_nor_drawn(
    server: tuple[TensorBoardServer, set], tmp_path: Path
) -> None:
    """The control: both checks above can fail. Without the tag filter the marker's group
    (the fourth) stays collapsed, so the page neither fetches nor draws it."""
    tb, expected = server
    png, netlog = tmp_path / "collapsed.png", tmp_path / "netlog.json"
    screenshot(f"{tb.url}/#images", png, tmp_path, netlog=netlog)
    fetched = requested_images(netlog)
    assert ("filters", "filters/conv1") in fetched
    assert ("marker", "test_marker/magenta_cyan") not in fetched
    with Image.open(png) as im:
        pixels = np.asarray(im.convert("RGB"))
    assert _near(pixels, (255, 0, 255)) == 0
