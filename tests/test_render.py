import math

import pytest
import torch
from torch import nn

from torch_featureviz import make_feature_grid, make_filter_grid, make_image_grid, to_display_image


def tile_region(grid, index, *, h, w, ncol, padding=1):
    """Pixels of tile ``index`` in a grid made with make_image_grid's layout."""
    r, c = divmod(index, ncol)
    top, left = padding + r * (h + padding), padding + c * (w + padding)
    return grid[:, top : top + h, left : left + w]


def test_golden_pixels_of_a_tiny_grid():
    tiles = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]], [[[5.0, 5.0], [5.0, 5.0]]]])
    grid = make_image_grid(tiles, padding=1, pad_value=255)
    expected = torch.tensor(
        [
            [255, 255, 255, 255, 255, 255, 255],
            [255, 0, 85, 255, 0, 0, 255],
            [255, 170, 255, 255, 0, 0, 255],
            [255, 255, 255, 255, 255, 255, 255],
        ],
        dtype=torch.uint8,
    )
    assert grid.dtype == torch.uint8
    assert torch.equal(grid[0], expected)  # per-tile min-max; constant tile is black


def test_grid_shape_formula():
    maps = torch.randn(10, 7, 5)
    grid = make_feature_grid(maps, padding=2, nrow=4, upscale=3)
    rows = math.ceil(10 / 4)
    assert grid.shape == (1, rows * (7 * 3 + 2) + 2, 4 * (5 * 3 + 2) + 2)


def test_filter_grid_rgb_for_first_layer_and_mean_for_deep_layers():
    torch.manual_seed(0)
    first = nn.Conv2d(3, 64, 7)
    deep = nn.Conv2d(64, 16, 3)
    g1 = make_filter_grid(first)
    assert g1.shape == (3, 8 * (35 + 1) + 1, 8 * (35 + 1) + 1)  # 7x7 upscaled x5 to >= 32 px
    g2 = make_filter_grid(deep, upscale=1)
    assert g2.shape == (1, 4 * 4 + 1, 4 * 4 + 1)
    mean_tiles = deep.weight.detach().mean(dim=1, keepdim=True)
    assert torch.equal(g2, make_image_grid(mean_tiles))
    assert make_filter_grid(first, channel="mean").shape[0] == 1


def test_filter_channel_choices():
    w = torch.zeros(2, 4, 3, 3)
    w[0, 2] = torch.arange(9.0).view(3, 3)  # filter 0: strongest input channel is 2
    w[1, 1] = -torch.arange(9.0).view(3, 3)
    strongest = make_filter_grid(w, channel="strongest", upscale=1)
    chosen = make_image_grid(torch.stack([w[0, 2:3], w[1, 1:2]]))
    assert torch.equal(strongest, chosen)
    idx = make_filter_grid(w, channel=2, upscale=1)
    assert torch.equal(idx, make_image_grid(w[:, 2:3]))
    assert torch.equal(make_filter_grid(w, channel=-1, upscale=1), make_image_grid(w[:, 3:4]))


def test_max_filters_and_max_channels():
    assert make_filter_grid(torch.randn(100, 3, 3, 3), max_filters=4, upscale=1).shape == (3, 9, 9)
    assert make_filter_grid(torch.randn(100, 3, 3, 3), max_filters=None, upscale=1).shape[1] == 41
    assert make_feature_grid(torch.randn(9, 4, 4), max_channels=1).shape == (1, 6, 6)


def test_nan_inf_and_constant_do_not_spoil_other_tiles():
    torch.manual_seed(0)
    good = torch.randn(1, 6, 6)
    bad = torch.randn(1, 6, 6)
    bad[0, 0, 0] = float("nan")
    bad[0, 1, 1] = float("inf")
    bad[0, 2, 2] = float("-inf")
    const = torch.full((1, 6, 6), 3.0)
    all_nan = torch.full((1, 6, 6), float("nan"))
    maps = torch.cat([good, bad, const, all_nan])
    grid = make_feature_grid(maps)
    clean = make_feature_grid(torch.cat([good, torch.zeros(3, 6, 6)]))
    t = lambda g, i: tile_region(g, i, h=6, w=6, ncol=2)  # noqa: E731
    assert torch.equal(t(grid, 0), t(clean, 0))  # the finite tile is untouched
    bad_tile = t(grid, 1)[0]
    assert bad_tile[0, 0] == 0 and bad_tile[1, 1] == 255 and bad_tile[2, 2] == 0
    finite = torch.isfinite(bad[0])
    assert bad_tile[finite].min() == 0 and bad_tile[finite].max() == 255
    assert (t(grid, 2) == 0).all() and (t(grid, 3) == 0).all()
    # one shared scale: NaN/Inf still excluded from the range
    shared = make_feature_grid(maps, normalize="grid")
    assert shared.dtype == torch.uint8 and (t(shared, 3) == 0).all()


def test_shared_scale_option():
    maps = torch.stack([torch.linspace(0, 1, 16).view(4, 4), torch.linspace(0, 2, 16).view(4, 4)])
    per_tile = make_feature_grid(maps)
    shared = make_feature_grid(maps, normalize="grid")
    t = lambda g, i: tile_region(g, i, h=4, w=4, ncol=2)  # noqa: E731
    assert t(per_tile, 0).max() == 255 and t(per_tile, 1).max() == 255
    assert t(shared, 0).max() == 128 and t(shared, 1).max() == 255


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_low_and_high_precision_match_float32(dtype):
    maps = torch.arange(2 * 4 * 4, dtype=torch.float32).view(2, 4, 4)  # exactly representable
    assert torch.equal(make_feature_grid(maps.to(dtype)), make_feature_grid(maps))
    w = torch.arange(4 * 3 * 3 * 3, dtype=torch.float32).view(4, 3, 3, 3) / 8
    assert torch.equal(make_filter_grid(w.to(dtype)), make_filter_grid(w))


def test_channels_last_and_non_contiguous_inputs():
    x = torch.randn(1, 8, 5, 5)
    cl = x.to(memory_format=torch.channels_last)
    assert torch.equal(make_feature_grid(cl[0]), make_feature_grid(x[0]))
    w = torch.randn(8, 3, 3, 3)
    assert torch.equal(
        make_filter_grid(w.to(memory_format=torch.channels_last)), make_filter_grid(w)
    )
    assert torch.equal(
        make_feature_grid(x[0].transpose(1, 2)),
        make_feature_grid(x[0].transpose(1, 2).contiguous()),
    )


def test_huge_tiny_and_denormal_values():
    maps = torch.stack(
        [
            torch.tensor([[1e38, -1e38], [3e38, 0.0]]),
            torch.tensor([[1e-40, 2e-40], [0.0, 1e-45]]),  # denormals
            torch.tensor([[1e-30, 3e-30], [2e-30, 0.0]]),
        ]
    )
    grid = make_feature_grid(maps)
    for i in range(3):
        tile = tile_region(grid, i, h=2, w=2, ncol=2)
        assert tile.min() == 0 and tile.max() == 255, i


def test_inputs_are_not_modified():
    maps = torch.randn(4, 6, 6)
    maps[0, 0, 0] = float("nan")
    w = torch.randn(4, 3, 3, 3)
    m0, w0 = maps.clone(), w.clone()
    make_feature_grid(maps, normalize="grid")
    make_filter_grid(w)
    assert torch.equal(w, w0) and torch.allclose(maps, m0, equal_nan=True)


def test_colormap():
    grid = make_feature_grid(torch.randn(4, 5, 5), cmap="viridis")
    assert grid.shape[0] == 3 and grid.dtype == torch.uint8
    with pytest.raises(ValueError, match="unknown matplotlib colormap 'nope'"):
        make_feature_grid(torch.randn(4, 5, 5), cmap="nope")


def test_display_image():
    img = to_display_image(torch.randn(1, 3, 10, 12))
    assert img.shape == (3, 10, 12) and img.min() == 0 and img.max() == 255


def test_render_errors():
    with pytest.raises(ValueError, match=r"Select one sample first, e.g. maps\[0\]"):
        make_feature_grid(torch.randn(1, 2, 3, 3))
    with pytest.raises(TypeError, match="maps must be a"):
        make_feature_grid([1, 2])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="4-D conv weight"):
        make_filter_grid(torch.randn(3, 3))
    with pytest.raises(TypeError, match="weight must be a tensor or nn.Conv2d"):
        make_filter_grid("w")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="channel='rgb' needs filters with 3 input channels"):
        make_filter_grid(torch.randn(2, 4, 3, 3), channel="rgb")
    with pytest.raises(ValueError, match="channel=7 is out of range for 4 input channels"):
        make_filter_grid(torch.randn(2, 4, 3, 3), channel=7)
    with pytest.raises(ValueError, match="channel must be 'auto'"):
        make_filter_grid(torch.randn(2, 4, 3, 3), channel="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="normalize must be 'tile' or 'grid'"):
        make_feature_grid(torch.randn(2, 3, 3), normalize="global")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_filters must be a positive int"):
        make_filter_grid(torch.randn(2, 3, 3, 3), max_filters=0)
    with pytest.raises(ValueError, match="cannot make a grid of empty tiles"):
        make_feature_grid(torch.randn(0, 3, 3))
    with pytest.raises(ValueError, match="tiles must have 1 or 3 channels"):
        make_image_grid(torch.randn(2, 2, 3, 3))
    with pytest.raises(ValueError, match="nrow must be a positive int"):
        make_image_grid(torch.randn(2, 1, 3, 3), nrow=0)
    with pytest.raises(ValueError, match="upscale must be an int >= 1"):
        make_image_grid(torch.randn(2, 1, 3, 3), upscale=0)
    with pytest.raises(ValueError, match="image must be"):
        to_display_image(torch.randn(5, 4, 4))


def test_colormap_keeps_padding_and_empty_cells_white():
    maps = torch.randn(5, 4, 4)
    grid = make_feature_grid(maps, cmap="viridis", padding=1)
    gray = make_feature_grid(maps, padding=1)
    assert grid.shape[1:] == gray.shape[1:]
    lut = __import__("torch_featureviz.render", fromlist=["_colormap_lut"])._colormap_lut("viridis")
    for i in range(5):
        tile = tile_region(grid, i, h=4, w=4, ncol=3)
        expected = lut[tile_region(gray, i, h=4, w=4, ncol=3)[0].long()].permute(2, 0, 1)
        assert torch.equal(tile, expected)
    assert (tile_region(grid, 5, h=4, w=4, ncol=3) == 255).all()  # the empty sixth cell
    assert (grid[:, 0, :] == 255).all() and (grid[:, :, 0] == 255).all()


def test_one_by_one_kernels_share_one_scale_by_default():
    w = torch.tensor([0.0, 1.0, 2.0, 4.0]).view(4, 1, 1, 1)
    grid = make_filter_grid(w, upscale=1)
    assert torch.equal(grid, make_image_grid(w, normalize="grid"))
    tiles = [tile_region(grid, i, h=1, w=1, ncol=2).item() for i in range(4)]
    assert tiles == [0, 64, 128, 255]  # not all black, as a per-tile scale would make them
    assert (make_filter_grid(w, normalize="tile", upscale=1)[0, 1::2, 1::2] == 0).all()
