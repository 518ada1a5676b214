import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import tiny_net
from torch_featureviz import (
    FeatureCapture,
    save_feature_figures,
    save_filter_figures,
    save_grid_figure,
    save_overview,
)


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
