"""The featureviz TensorBoard plugin: metadata, layer index, tile geometry, and a real server."""

from __future__ import annotations

import io
import json
import subprocess
import urllib.error
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from tests.support.plugin_helpers import (
    MODEL_ORDER,
    write_chosen_channel_logs,
    write_monitor_logs,
    write_synthetic_logs,
)
from tests.support.tensorboard_server import (
    _DIRECT,
    TensorBoardServer,
    free_port,
    start_tensorboard,
    tensorboard_command,
    wait_for,
)
from torch_featureviz.log.metadata import parse_layers
from torch_featureviz.render.grids import make_feature_grid, make_filter_grid
from torch_featureviz.viewer import PLUGIN_NAME, layers_summary
from torch_featureviz.viewer.layout import build_index, grid_geometry, natural_key
from torch_featureviz.viewer.plugin import FeatureVizPlugin

ROUTE = "/data/plugin/featureviz"


# -- pure parts ------------------------------------------------------------------------------------
def test_layers_summary_round_trips_and_is_a_featureviz_tensor() -> None:
    summary = layers_summary(["conv1", "layer1.0.conv1"], prefix="D")
    (value,) = summary.value
    assert value.tag == "D/featureviz/layers"
    assert value.metadata.plugin_data.plugin_name == PLUGIN_NAME == "featureviz"
    assert value.tensor.dtype == 7 and not value.tensor.tensor_shape.dim  # DT_STRING, 0-d
    payload = json.loads(value.tensor.string_val[0])
    assert payload == {"version": 1, "layers": ["conv1", "layer1.0.conv1"]}
    assert layers_summary([], None).value[0].tag == "featureviz/layers"
    with pytest.raises(TypeError, match="list of layer tag strings"):
        layers_summary("conv1")  # type: ignore[arg-type]
    assert parse_layers(b"not json") is None
    assert parse_layers(b'{"version": 2, "layers": []}') is None
    assert parse_layers(np.array(b'{"version": 1, "layers": ["a"]}')) == ["a"]


def test_index_uses_model_order_groups_prefixes_and_falls_back_to_natural_order() -> None:
    images = ["filters/layer10.conv", "filters/layer2.conv", "feature_maps/hook/layer2.conv",
              "G/feature_maps/probe/conv1", "input/probe", "loss_image"]
    scalars = ["activations/layer2.conv/dead_channels", "summary/dead_channels", "loss"]
    natural = build_index(images, scalars)
    assert [m["prefix"] for m in natural] == ["", "G"]
    assert [x["layer"] for x in natural[0]["layers"]] == ["layer2.conv", "layer10.conv"]
    assert natural[0]["order"] == "natural"
    first = natural[0]["layers"][0]
    assert first["group"] == "layer2"
    assert first["views"] == {"filters": "filters/layer2.conv",
                              "hook": "feature_maps/hook/layer2.conv"}
    assert first["stats"] == {"dead_channels": "activations/layer2.conv/dead_channels"}
    assert natural[0]["inputs"] == {"probe": "input/probe"}
    assert natural[0]["summary"] == {"dead_channels": "summary/dead_channels"}
    ordered = build_index(images, scalars, {"": ["layer10.conv", "layer2.conv"]})
    assert [x["layer"] for x in ordered[0]["layers"]] == ["layer10.conv", "layer2.conv"]
    assert ordered[0]["order"] == "model" and ordered[1]["order"] == "natural"
    assert sorted(["a10", "a9", "a1"], key=natural_key) == ["a1", "a9", "a10"]


@pytest.mark.parametrize("n", [1, 2, 5, 8, 12, 16, 30, 64])
def test_grid_geometry_finds_every_tile_of_the_writers_grids(n: int) -> None:
    torch.manual_seed(n)
    maps = torch.rand(n, 5, 7) + 0.01
    grid = make_feature_grid(maps).permute(1, 2, 0).numpy()
    found = grid_geometry(grid)
    assert (found.count, found.tile_width, found.tile_height) == (n, 7, 5)
    assert found == grid_geometry(grid, channels=n)
    # Each box holds exactly that channel's tile (min-max scaled, so compare its ranking).
    for k in range(n):
        left, top, right, bottom = found.box(k)
        tile = grid[top:bottom, left:right, 0].astype(float)
        ref = maps[k].numpy()
        assert np.corrcoef(tile.ravel(), ref.ravel())[0, 1] > 0.99
    with pytest.raises(IndexError, match="out of range"):
        found.box(n)
    weights = torch.randn(n, 3, 3, 3)
    fgrid = make_filter_grid(weights).permute(1, 2, 0).numpy()
    assert grid_geometry(fgrid).count == n


def test_grid_geometry_rejects_what_is_no_grid() -> None:
    with pytest.raises(ValueError, match="no grid of 5 tiles"):
        grid_geometry(np.zeros((10, 10), np.uint8), channels=5)
    with pytest.raises(ValueError, match=r"\(H, W\) or \(H, W, C\)"):
        grid_geometry(np.zeros((2, 2, 2, 2), np.uint8))


class _Provider:
    def __init__(self, tags: list[str]) -> None:
        self.tags = tags

    def list_blob_sequences(self, ctx, *, experiment_id, plugin_name):  # type: ignore[no-untyped-def]
        return {"run": dict.fromkeys(self.tags)}


def test_is_active_for_package_image_tags_only() -> None:
    def plugin(tags: list[str]) -> FeatureVizPlugin:
        return FeatureVizPlugin(SimpleNamespace(data_provider=_Provider(tags)))  # type: ignore[arg-type]

    assert plugin(["G/filters/conv1"]).is_active()
    assert not plugin(["my_images/cat"]).is_active()
    assert plugin([]).data_plugin_names() == ("featureviz",)
    assert FeatureVizPlugin(SimpleNamespace(data_provider=None)).is_active() is False  # type: ignore[arg-type]


# -- a real server ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def logdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("plugin_logs")
    write_monitor_logs(root / "monitor")
    write_monitor_logs(root / "old", order=False)  # no layer-order summary: natural order
    write_synthetic_logs(root / "gan", layers=3, prefix="G")
    write_synthetic_logs(root / "gan", layers=2, prefix="D", steps=[0, 20], seed=1)
    write_chosen_channel_logs(root / "chosen")
    return root


@pytest.fixture(scope="module")
def server(logdir: Path) -> Iterator[TensorBoardServer]:
    tb = start_tensorboard(
        logdir, logdir.parent / "tb_plugin.log", {"monitor", "old", "gan", "chosen"}
    )
    try:
        yield tb
    finally:
        tb.stop()
        assert tb.proc.returncode is not None


def _png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


@pytest.mark.slow
def test_plugin_is_listed_enabled_and_loads_its_es_module(server: TensorBoardServer) -> None:
    listing = server.get_json("/data/plugins_listing")
    entry = listing["featureviz"]
    assert entry["enabled"] is True
    assert entry["loading_mechanism"] == {"type": "IFRAME",
                                          "module_path": f"{ROUTE}/static/index.js"}
    js = server.get(f"{ROUTE}/static/index.js").decode()
    assert "export async function render" in js
    # No CDN, no network: the only absolute URL is the SVG namespace, which is never fetched.
    assert "//" not in js.replace("http://www.w3.org/2000/svg", "").replace("// ", "")
    assert b".fv-panel" in server.get(f"{ROUTE}/static/style.css")
    with pytest.raises(urllib.error.HTTPError) as e:
        server.get(f"{ROUTE}/static/../plugin.py")
    assert e.value.code == 404


@pytest.mark.slow
def test_index_lists_models_per_prefix_in_model_order(server: TensorBoardServer) -> None:
    runs = server.get_json(f"{ROUTE}/index")["runs"]
    assert set(runs) == {"monitor", "old", "gan", "chosen"}
    (mon,) = runs["monitor"]["models"]
    assert mon["order"] == "model"
    assert [x["layer"] for x in mon["layers"]] == MODEL_ORDER
    assert set(mon["layers"][0]["views"]) == {"filters", "hook", "probe"}
    assert set(mon["layers"][0]["stats"]) == {"mean", "std", "near_zero", "dead_channels"}
    assert mon["inputs"] == {"probe": "input/probe"}
    assert runs["old"]["models"][0]["order"] == "natural"
    gan = {m["prefix"]: m for m in runs["gan"]["models"]}
    assert set(gan) == {"G", "D"} and gan["G"]["order"] == gan["D"]["order"] == "model"
    assert len(gan["G"]["layers"]) == 3 and len(gan["D"]["layers"]) == 2
    assert gan["D"]["layers"][0]["views"]["filters"] == "D/filters/conv1"


@pytest.mark.slow
def test_layer_image_tiles_strip_deadmap_and_timelapse_routes(server: TensorBoardServer) -> None:
    layer = server.get_json(f"{ROUTE}/layer", run="monitor", prefix="", layer="layer1.0.conv2")
    assert {v: d["steps"] for v, d in layer["views"].items()} == {
        "filters": [0, 2, 4], "hook": [0, 2, 4], "probe": [0, 2, 4]}
    assert [s for s, _ in layer["stats"]["dead_channels"]] == [0, 2, 4]
    assert layer["group"] == "layer1.0"
    tag = layer["views"]["hook"]["tag"]
    pixels = _png(server.get(f"{ROUTE}/image", run="monitor", tag=tag, step=2))
    tiles = server.get_json(f"{ROUTE}/tiles", run="monitor", tag=tag, step=2)
    assert tiles["count"] == 8 and (tiles["cols"], tiles["rows"]) == (3, 3)  # max_channels=8
    assert (tiles["width"], tiles["height"]) == (pixels.shape[1], pixels.shape[0])
    with pytest.raises(urllib.error.HTTPError) as e:
        server.get(f"{ROUTE}/image", run="monitor", tag=tag, step=3)  # never logged
    assert e.value.code == 404
    with pytest.raises(urllib.error.HTTPError) as e:
        server.get(f"{ROUTE}/image", run="monitor", tag=tag, step="x")
    assert e.value.code == 400
    with pytest.raises(urllib.error.HTTPError) as e:
        server.get(f"{ROUTE}/layer", run="monitor", prefix="", layer="nope")
    assert e.value.code == 404

    url = f"{server.url}{ROUTE}/strip?" + urllib.parse.urlencode(
        {"run": "monitor", "tag": tag, "channel": 7, "max": 2})
    with _DIRECT.open(url, timeout=30) as response:
        assert response.headers["X-Featureviz-Steps"] == "0,4"
        strip = _png(response.read())
    assert strip.shape[:2] == (tiles["tile_height"], 2 * tiles["tile_width"] + 1)

    dead = server.get_json(f"{ROUTE}/deadmap", run="gan", prefix="G")
    assert dead["layers"] == ["conv1", "layer1.0.conv1", "layer1.0.conv2"]
    assert dead["steps"] == [0, 10, 20]
    assert dead["values"][2] == pytest.approx([0.0, 0.2, 0.4])
    assert server.get_json(f"{ROUTE}/deadmap", run="gan", prefix="D")["steps"] == [0, 20]

    gif = server.get(f"{ROUTE}/timelapse", run="gan", tag="D/filters/conv1")
    with Image.open(io.BytesIO(gif)) as im:
        assert im.n_frames == 2
        assert json.loads(im.info["comment"])["steps"] == [0, 20]


@pytest.mark.slow
def test_rust_data_server_serves_the_same_index(logdir: Path, server: TensorBoardServer) -> None:
    """The default ``--load_fast`` (Rust data server) path: same index, same images."""
    port = free_port()
    log_path = logdir.parent / "tb_rust.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*tensorboard_command(), "--logdir", str(logdir), "--host", "127.0.0.1", "--port",
             str(port), "--load_fast", "true", "--samples_per_plugin", "images=100",
             "--reload_interval", "1"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    rust = TensorBoardServer(proc, port, log_path)
    try:
        def ready() -> bool:
            runs = rust.get_json(f"{ROUTE}/index")["runs"]
            return set(runs) == {"monitor", "old", "gan", "chosen"} and all(
                len(m["layers"]) for r in runs.values() for m in r["models"])

        wait_for(rust, ready, "featureviz index over the Rust data server", 90)
        wait_for(rust, lambda: server.get_json(f"{ROUTE}/index") == rust.get_json(f"{ROUTE}/index"),
                 "the same index as the Python loader", 30)
        tag = "feature_maps/probe/conv1"
        assert rust.get(f"{ROUTE}/image", run="monitor", tag=tag, step=4) == server.get(
            f"{ROUTE}/image", run="monitor", tag=tag, step=4)
    finally:
        rust.stop()
    assert proc.returncode is not None


@pytest.mark.slow
@pytest.mark.parametrize("view", ["hook", "probe"])
def test_tiles_name_the_chosen_channels_and_strips_follow_a_channel(
    server: TensorBoardServer, view: str
) -> None:
    tag = f"feature_maps/{view}/0"
    first = server.get_json(f"{ROUTE}/tiles", run="chosen", tag=tag, step=0)
    later = server.get_json(f"{ROUTE}/tiles", run="chosen", tag=tag, step=3)
    assert first["channels"] == [0, 1, 2] and later["channels"] == [2, 7, 9]
    plain = server.get_json(f"{ROUTE}/tiles", run="monitor", tag="feature_maps/hook/conv1",
                            step=2)
    assert plain["channels"] is None  # channels="first": tile i is channel i
    # Channel 9 is tile 2 from step 1 on, and not shown at step 0: the strip says so.
    url = f"{server.url}{ROUTE}/strip?" + urllib.parse.urlencode(
        {"run": "chosen", "tag": tag, "channel": 9, "max": 16})
    with _DIRECT.open(url, timeout=30) as response:
        assert response.headers["X-Featureviz-Steps"] == "1,2,3,4"
        strip = _png(response.read())
    grid = _png(server.get(f"{ROUTE}/image", run="chosen", tag=tag, step=1))
    left, top = (later["padding"] + 2 % later["cols"] * (later["tile_width"] + later["padding"]),
                 later["padding"] + 2 // later["cols"] * (later["tile_height"] + later["padding"]))
    tile = grid[top:top + later["tile_height"], left:left + later["tile_width"]]
    assert np.array_equal(strip[:, : later["tile_width"]], tile)
