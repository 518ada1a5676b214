"""The featureviz tab in headless Chromium, driven like a user over the DevTools protocol.

A real ``tensorboard`` server serves logs of two short ``FeatureMonitor`` runs; the system
Chromium (``--remote-debugging-pipe``, nothing downloaded) opens the tab, clicks a layer, moves
the step with the slider and the arrow keys, and checks every panel then shows the new step,
both in the DOM and in the network log (which also shows that only images in view are
fetched). It clicks a tile and a heat-map cell, compares the two runs, and saves a screenshot
(``FEATUREVIZ_SCREENSHOT=docs/featureviz_tab.png`` to refresh the README's).
"""

from __future__ import annotations

import io
import os
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support.plugin_helpers import (
    MODEL_ORDER,
    Chromium,
    chromium_executable,
    write_chosen_channel_logs,
    write_monitor_logs,
)
from tests.support.tensorboard_server import TensorBoardServer, start_tensorboard

pytestmark = pytest.mark.slow
ENTRY = "/data/plugin_entry.html?name=featureviz"
STEPS = [0, 2, 4, 6]

ALL_SHOW = (
    "(s => { const imgs = [...document.querySelectorAll('img.fv-grid')];"
    " return imgs.length > 0 && imgs.every(i => i.dataset.loadedStep === String(s)"
    " && i.complete && i.naturalWidth > 0); })"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TensorBoardServer]:
    if chromium_executable() is None:
        pytest.fail("headless Chromium is needed: apt-get update && apt-get install -y chromium")
    logdir = tmp_path_factory.mktemp("tab_logs")
    write_monitor_logs(logdir / "lr_0.1", steps=8)
    write_monitor_logs(logdir / "lr_0.01", steps=8, seed=1)
    write_chosen_channel_logs(logdir / "top_channels")  # sorts last: not the first run shown
    tb = start_tensorboard(
        logdir, logdir.parent / "tb_tab.log", {"lr_0.1", "lr_0.01", "top_channels"}
    )
    try:
        yield tb
    finally:
        tb.stop()
        assert tb.proc.returncode is not None


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Chromium]:
    chromium = Chromium(tmp_path / "profile", window=(1400, 1000))
    try:
        yield chromium
    finally:
        chromium.close()
        assert chromium.proc.returncode is not None


def _image_requests(browser: Chromium) -> list[dict[str, str]]:
    out = []
    for u in browser.requested_urls():
        parsed = urllib.parse.urlparse(u)
        if parsed.path.endswith("/featureviz/image"):
            out.append({k: v[0] for k, v in urllib.parse.parse_qs(parsed.query).items()})
    return out


def test_slider_keys_tiles_heat_map_and_compare(
    server: TensorBoardServer, browser: Chromium, tmp_path: Path
) -> None:
    browser.navigate(server.url + ENTRY)
    browser.wait_for("document.body && document.body.dataset.ready === 'true'")
    # The index: model order, grouped by module path, with a filter box.
    layers = browser.evaluate(
        "[...document.querySelectorAll('.fv-layer')].map(b => b.dataset.layer)")
    assert layers == MODEL_ORDER
    groups = browser.evaluate(
        "[...document.querySelectorAll('.fv-group summary')].map(s => s.textContent)")
    assert groups == ["(top level)", "layer1.0", "layer2.0"]
    # First view: the first layer at the last step, every panel loaded.
    browser.wait_for(f"{ALL_SHOW}(6)")

    # Click a layer: its card opens beside the first one; then keep only it.
    browser.click(".fv-layer[data-layer='layer1.0.conv2']")
    browser.wait_for("document.querySelectorAll('.fv-card').length === 2")
    browser.click(".fv-card[data-layer='conv1'] .fv-close")
    browser.wait_for("document.querySelectorAll('.fv-card').length === 1")
    views = browser.evaluate(
        "[...document.querySelectorAll('img.fv-grid')].map(i => i.dataset.view)")
    assert views == ["filters", "hook", "probe"]
    browser.wait_for(f"{ALL_SHOW}(6)")
    before = len(_image_requests(browser))

    # Move the slider to step 2: every panel shows step 2, and the page fetched exactly
    # the three images of that step (only what is in view).
    browser.click("#fv-slider", fx=0.34)
    browser.wait_for("document.body.dataset.step === '2'")
    browser.wait_for(f"{ALL_SHOW}(2)")
    captions = browser.evaluate(
        "[...document.querySelectorAll('.fv-when')].map(c => c.textContent)")
    assert captions == ["step 2"] * 3
    new = _image_requests(browser)[before:]
    assert sorted(r["tag"] for r in new) == sorted(
        f"{k}/layer1.0.conv2" for k in ("filters", "feature_maps/hook", "feature_maps/probe"))
    assert {r["step"] for r in new} == {"2"} and {r["run"] for r in new} == {"lr_0.01"}

    # Arrow keys move every panel too.
    browser.key("ArrowLeft", 37)
    browser.wait_for(f"{ALL_SHOW}(0)")
    browser.key("ArrowRight", 39)
    browser.key("ArrowRight", 39)
    browser.wait_for(f"{ALL_SHOW}(4)")
    # The statistics charts mark the current step.
    assert browser.evaluate("document.querySelectorAll('.fv-stat .fv-mark').length") == 4

    # Click a tile (the second row, first column of a 3-column grid of 8 channels).
    browser.click("img.fv-grid[data-view='hook']", fx=0.1, fy=0.5)
    strip = browser.wait_for("document.querySelector('.fv-tile').dataset.stripSteps")
    assert strip == ",".join(str(s) for s in STEPS)
    assert browser.evaluate("document.querySelector('.fv-tile').dataset.channel") == "3"
    browser.wait_for("document.querySelector('.fv-strip').naturalWidth > 0")

    # Compare with the other run: a second row of panels at the same step.
    browser.evaluate(
        "(() => { const s = document.querySelector('#fv-compare'); s.value = 'lr_0.1';"
        " s.dispatchEvent(new Event('change')); })()"
    )
    browser.wait_for("document.querySelectorAll('img.fv-grid').length === 6")
    browser.wait_for(f"{ALL_SHOW}(4)")
    runs = browser.evaluate(
        "[...document.querySelectorAll('img.fv-grid')].map(i => i.dataset.run)")
    assert runs == ["lr_0.01"] * 3 + ["lr_0.1"] * 3  # the first run (sorted), then the other
    browser.click("img.fv-grid[data-view='filters']", fx=0.5, fy=0.5)
    browser.wait_for("document.querySelector('.fv-tile').dataset.stripSteps")
    png = tmp_path / "featureviz_tab.png"
    browser.screenshot(png)
    target = os.environ.get("FEATUREVIZ_SCREENSHOT")
    if target:
        Path(target).write_bytes(png.read_bytes())

    # A heat-map cell: the last layer (bottom row) at the first step (left column).
    browser.click("canvas.fv-heatmap", fx=0.05, fy=0.95)
    browser.wait_for("document.querySelector('.fv-card').dataset.layer === 'layer2.0.conv1'")
    browser.wait_for(f"{ALL_SHOW}(0)")
    assert browser.evaluate("document.querySelectorAll('.fv-card').length") == 1

    with Image.open(png) as im:
        pixels = np.asarray(im.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 500  # real grids were drawn


def test_tab_appears_in_tensorboard_and_loads_the_frontend(
    server: TensorBoardServer, browser: Chromium, tmp_path: Path
) -> None:
    browser.navigate(server.url + "/#featureviz")
    frame = "document.querySelector('iframe')"
    browser.wait_for(
        f"(() => {{ const f = {frame}; return f && f.contentDocument && f.contentDocument.body"
        " && f.contentDocument.body.dataset.ready === 'true'; })()", timeout=60)
    tabs = browser.evaluate("document.body.innerText")
    assert "FEATUREVIZ" in tabs.upper()
    browser.wait_for(
        f"[...{frame}.contentDocument.querySelectorAll('img.fv-grid')].every(i => i.naturalWidth"
        " > 0 && i.dataset.loadedStep === '6')")
    png = tmp_path / "tensorboard_tab.png"
    browser.screenshot(png)
    with Image.open(io.BytesIO(png.read_bytes())) as im:
        assert im.size[0] == 1400


def test_a_tile_names_the_channel_the_monitor_chose(
    server: TensorBoardServer, browser: Chromium
) -> None:
    """channels="top": the third tile at step 3 is channel 9, and the tile view says so."""
    browser.navigate(server.url + ENTRY)
    browser.wait_for("document.body && document.body.dataset.ready === 'true'")
    browser.evaluate(
        "(() => { const s = document.querySelector('#fv-run'); s.value = 'top_channels';"
        " s.dispatchEvent(new Event('change')); })()"
    )
    browser.wait_for("document.querySelector(\"img.fv-grid[data-view='hook']\") &&"
                     " document.querySelector(\"img.fv-grid[data-view='hook']\").dataset.run"
                     " === 'top_channels'")
    browser.wait_for(f"{ALL_SHOW}(4)")
    # A 2x2 grid of 3 tiles: the first tile of the second row is tile 2.
    browser.click("img.fv-grid[data-view='hook']", fx=0.25, fy=0.75)
    browser.wait_for("document.querySelector('.fv-tile').dataset.stripSteps")
    assert browser.evaluate("document.querySelector('.fv-tile').dataset.channel") == "9"
    head = browser.evaluate("document.querySelector('.fv-tile-head b').textContent")
    assert head.endswith("channel 9 (tile 2)"), head
    assert browser.evaluate("document.querySelector('.fv-tile').dataset.stripSteps") == "1,2,3,4"
