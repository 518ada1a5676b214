import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from tests.support.helpers import tiny_net
from torch_featureviz import (
    FeatureCapture,
    find_conv_layers,
    make_filter_grid,
    save_feature_figures,
    save_filter_figures,
    save_grid_figure,
    save_overview,
)
from torch_featureviz.naming import unique_stems, unique_tags
from torch_featureviz.render.figures import map_similarities, save_comparison_figures


@pytest.fixture()
def maps():
    model = tiny_net().eval()
    with FeatureCapture(model) as cap, torch.no_grad():
        model(torch.randn(1, 3, 16, 16))
    return cap.maps


def test_one_file_per_layer_plus_overview(tmp_path, maps):
    paths = save_feature_figures(maps, tmp_path)
    assert len(paths) == len(maps) + 1
    assert paths[-1].name == "maps_hook_overview.png"
    assert {p.name for p in paths[:-1]} == {
        "maps_hook_stem.0.png",
        "maps_hook_blocks.0.conv.png",
        "maps_hook_blocks.1.conv.png",
        "maps_hook_heads.down.png",
        "maps_hook_shared.png",
        "maps_hook_shared_call1.png",
    }
    for p in paths:
        img = np.asarray(Image.open(p).convert("L"))
        assert img.shape[0] > 50 and img.std() > 5  # something was drawn, not a blank page


def test_filter_figures_and_no_figures_left_open(tmp_path):
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    paths = save_filter_figures(tiny_net(), tmp_path, fmt="pdf")
    assert len(paths) == 6 and all(p.suffix == ".pdf" and p.stat().st_size > 0 for p in paths)
    assert plt.get_fignums() == before
    assert matplotlib.get_backend()  # works headless whatever the backend


def test_title_and_size(tmp_path):
    grid = torch.zeros(1, 200, 300, dtype=torch.uint8)
    p = save_grid_figure(grid, tmp_path / "g.png", title="conv1: maps (64, 112, 112)")
    w, h = Image.open(p).size
    assert w == 300 and 200 < h < 260  # about one pixel per grid pixel, plus a title band
    big = save_grid_figure(torch.zeros(3, 4000, 4000, dtype=torch.uint8), tmp_path / "big.png")
    assert max(Image.open(big).size) <= 1450  # capped, no 30-inch figures


def test_figure_errors(tmp_path, maps):
    with pytest.raises(ValueError, match="unsupported figure format '.bmp'"):
        save_grid_figure(torch.zeros(1, 4, 4, dtype=torch.uint8), tmp_path / "x.bmp")
    with pytest.raises(ValueError, match="maps is empty"):
        save_feature_figures({}, tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError, match="cannot write to"):
        save_feature_figures(maps, blocker / "out")
    with pytest.raises(OSError, match="cannot write to"):
        save_overview({"a": torch.zeros(1, 4, 4, dtype=torch.uint8)}, blocker / "o.png")


class _RecordingWriter:
    """A writer seam: records what would go to TensorBoard."""

    def __init__(self, prefix=None):
        self.prefix = prefix
        self.grids = {}
        self.scalars = []

    def log_grid(self, tag, grid, step):
        assert tag not in self.grids, tag
        self.grids[tag] = (grid.clone(), step)

    def log_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))


def test_filter_figures_to_files_and_writer_with_progress(tmp_path):
    model = tiny_net()
    writer, calls = _RecordingWriter(), []
    paths = save_filter_figures(
        model, tmp_path, writer=writer, step=3, max_filters=4,
        progress=lambda name, done, total: calls.append((name, done, total)),
    )
    names = list(find_conv_layers(model))
    assert calls == [(n, i, len(names)) for i, n in enumerate(names, start=1)]
    assert [p.name for p in paths] == [f"filters_{n}.png" for n in names] + ["filters_overview.png"]
    assert list(writer.grids) == [f"filters/{n}" for n in names]
    for name, (grid, step) in zip(names, writer.grids.values(), strict=True):
        assert step == 3
        assert torch.equal(grid, make_filter_grid(find_conv_layers(model)[name], max_filters=4))
    # TensorBoard only: no files at all; the writer's prefix heads its tags.
    only = _RecordingWriter(prefix="G")
    assert save_filter_figures(model, None, writer=only) == []
    assert list(only.grids) == [f"G/filters/{n}" for n in names]


def test_layer_names_that_sanitise_alike_get_distinct_files_and_tags(tmp_path):
    torch.manual_seed(0)
    model = nn.ModuleDict({"a b": nn.Conv2d(3, 2, 3), "a/b": nn.Conv2d(3, 2, 3)})
    writer = _RecordingWriter()
    paths = save_filter_figures(model, tmp_path, writer=writer)
    stems = unique_stems(["a b", "a/b"])
    assert len(set(stems.values())) == 2
    assert [p.name for p in paths[:2]] == [f"filters_{stems[n]}.png" for n in ("a b", "a/b")]
    assert list(writer.grids) == unique_tags("filters", ["a b", "a/b"])


def test_feature_figures_to_writer_and_comparisons(tmp_path, maps):
    writer = _RecordingWriter()
    paths = save_feature_figures(maps, None, mode="chain", cmap="magma", writer=writer)
    assert paths == [] and list(writer.grids) == unique_tags("feature_maps", maps, "chain")
    assert all(grid.shape[0] == 3 for grid, _ in writer.grids.values())  # coloured
    hook = {k: v * 2 for k, v in maps.items()}
    similarity = map_similarities(maps, hook)
    assert similarity == pytest.approx(dict.fromkeys(maps, 1.0))
    calls = []
    paths = save_comparison_figures(
        maps, hook, tmp_path, writer=writer, progress=lambda *a: calls.append(a)
    )
    stems = unique_stems(maps)
    assert [p.name for p in paths] == [f"compare_{stems[n]}.png" for n in maps] + ["similarity.png"]
    assert [s[2] for s in writer.scalars] == list(range(len(maps)))
    assert {s[0] for s in writer.scalars} == {"chain_vs_hook/cosine_similarity"}
    assert len(calls) == len(maps)


def test_options_are_checked_before_anything_is_written(tmp_path, maps):
    out = tmp_path / "never"
    cases = [
        (lambda: save_feature_figures(maps, out, cmap="virdis"),
         ValueError, r"cmap 'virdis' is not a matplotlib colormap\. Did you mean 'viridis'"),
        (lambda: save_feature_figures(maps, out, cmap=3), TypeError, r"cmap must be a matplotlib"),
        (lambda: save_feature_figures(maps, out, fmt="bmp"), ValueError, r"unsupported figure"),
        (lambda: save_feature_figures(maps, out, layers=["nope"]), ValueError, r"not in maps"),
        (lambda: save_feature_figures(maps, None), ValueError, r"give out_dir, writer or both"),
        (lambda: save_feature_figures(maps, ""), ValueError, r"out_dir must not be empty"),
        (lambda: save_feature_figures(maps, out, writer=object()), TypeError, r"log_grid"),
        (lambda: save_feature_figures([1], out), TypeError, r"maps must be a"),
        (lambda: save_filter_figures(tiny_net(), out, channel=99), ValueError, r"out of range"),
        (lambda: save_filter_figures(tiny_net(), out, max_filters=0), ValueError, r"max_filters"),
        (lambda: save_filter_figures({"x": "w"}, out), TypeError, r"layer 'x' must be a conv"),
        (lambda: save_filter_figures(3, out), TypeError, r"model_or_layers must be a model"),
        (lambda: save_comparison_figures(maps, {}, out), ValueError, r"no layer is in both"),
    ]
    for call, error, pattern in cases:
        with pytest.raises(error, match=pattern):
            call()
    assert not out.exists()
