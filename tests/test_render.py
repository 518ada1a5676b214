import math

import pytest
import torch
from torch import nn

from torch_featureviz import make_feature_grid, make_filter_grid, make_image_grid, to_display_image
from torch_featureviz.render.grids import ROW_HEIGHT


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
        make_feature_grid(torch.randn(1, 2, 2, 3, 3))
    with pytest.raises(TypeError, match="maps must be a"):
        make_feature_grid([1, 2])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"weight must be a conv weight: \(out, in, k\) for 1-d"):
        make_filter_grid(torch.randn(3, 3))
    with pytest.raises(TypeError, match="weight must be a tensor or a conv module"):
        make_filter_grid("w")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="channel='rgb' needs filters with 3 input channels"):
        make_filter_grid(torch.randn(2, 4, 3, 3), channel="rgb")
    with pytest.raises(ValueError, match="channel=7 is out of range for 4 input channels"):
        make_filter_grid(torch.randn(2, 4, 3, 3), channel=7)
    with pytest.raises(ValueError, match="channel must be 'auto'"):
        make_filter_grid(torch.randn(2, 4, 3, 3), channel="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="normalize must be 'tile' or 'grid'"):
        make_feature_grid(torch.randn(2, 3, 3), normalize="global")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_filters must be >= 1"):
        make_filter_grid(torch.randn(2, 3, 3, 3), max_filters=0)
    with pytest.raises(ValueError, match="cannot make a grid of empty tiles"):
        make_feature_grid(torch.randn(0, 3, 3))
    with pytest.raises(ValueError, match="tiles must have 1 or 3 channels"):
        make_image_grid(torch.randn(2, 2, 3, 3))
    with pytest.raises(ValueError, match="nrow must be >= 1"):
        make_image_grid(torch.randn(2, 1, 3, 3), nrow=0)
    with pytest.raises(ValueError, match="upscale must be >= 1"):
        make_image_grid(torch.randn(2, 1, 3, 3), upscale=0)
    with pytest.raises(ValueError, match="image must be"):
        to_display_image(torch.randn(5, 4, 4))


def test_colormap_keeps_padding_and_empty_cells_white():
    maps = torch.randn(5, 4, 4)
    grid = make_feature_grid(maps, cmap="viridis", padding=1)
    gray = make_feature_grid(maps, padding=1)
    assert grid.shape[1:] == gray.shape[1:]
    grids = __import__("torch_featureviz.render.grids", fromlist=["_colormap_lut"])
    lut = grids._colormap_lut("viridis")
    for i in range(5):
        tile = tile_region(grid, i, h=4, w=4, ncol=3)
        expected = lut[tile_region(gray, i, h=4, w=4, ncol=3)[0].long()].permute(2, 0, 1)
        assert torch.equal(tile, expected)
    assert (tile_region(grid, 5, h=4, w=4, ncol=3) == 255).all()  # the empty sixth cell
    assert (grid[:, 0, :] == 255).all() and (grid[:, :, 0] == 255).all()


def test_one_by_one_kernels_render_as_their_weight_matrix():
    w = torch.tensor([[0.0, 1.0, 2.0], [4.0, 4.0, 0.0]]).view(2, 3, 1, 1)
    grid = make_filter_grid(w, upscale=1)
    assert grid.shape == (1, 2 + 2, 3 + 2)  # (out, in) cells, padded
    assert grid[0, 1, 1:4].tolist() == [0, 128, 255]  # each filter's row on its own scale
    assert grid[0, 2, 1:4].tolist() == [255, 255, 0]
    wide = make_filter_grid(torch.randn(80, 200, 1, 1), upscale=1, max_filters=64)
    assert wide.shape == (1, 64 + 2, 64 + 2)  # the first 64 inputs of the first 64 filters


def test_one_by_one_maps_share_one_scale():
    maps = torch.tensor([0.0, 1.0, 2.0, 4.0]).view(4, 1, 1)
    grid = make_feature_grid(maps, padding=1)
    assert grid.shape == (1, 4 + 2, 16 + 2)  # one band of four 4-px cells
    assert grid[0, 1, 1::4][:4].tolist() == [0, 64, 128, 255]  # not black: one shared scale


# -- 1-d maps (C, L): one band per channel ---------------------------------------------------


def test_1d_maps_golden_pixels():
    maps = torch.tensor([[0.0, 1.0, 2.0], [5.0, 5.0, 5.0], [2.0, 0.0, 1.0]])
    grid = make_feature_grid(maps, padding=1)
    assert grid.shape == (1, 3 * ROW_HEIGHT + 2, 3 + 2) and grid.dtype == torch.uint8
    band = lambda i: grid[0, 1 + i * ROW_HEIGHT : 1 + (i + 1) * ROW_HEIGHT, 1:4]  # noqa: E731
    assert (band(0) == torch.tensor([0, 128, 255], dtype=torch.uint8)).all()  # scaled per row
    assert (band(1) == 0).all()  # a constant row is black
    assert (band(2) == torch.tensor([255, 0, 128], dtype=torch.uint8)).all()
    assert (grid[0, 0] == 255).all() and (grid[0, :, 0] == 255).all()  # white border
    shared = make_feature_grid(maps, normalize="grid", padding=0)
    assert shared[0, 0].tolist() == [0, 51, 102] and shared[0, ROW_HEIGHT].tolist() == [255] * 3


def test_1d_maps_options():
    torch.manual_seed(0)
    maps = torch.randn(6, 20)
    up = make_feature_grid(maps, upscale=2, padding=0)
    assert up.shape == (1, 6 * ROW_HEIGHT * 2, 40)
    assert torch.equal(up[:, ::2, ::2], make_feature_grid(maps, padding=0)[:, : 6 * ROW_HEIGHT])
    assert make_feature_grid(maps, max_channels=2).shape == (1, 2 * ROW_HEIGHT + 2, 22)
    coloured = make_feature_grid(maps, cmap="viridis")
    assert coloured.shape == (3, 6 * ROW_HEIGHT + 2, 22)
    assert (coloured[:, 0] == 255).all()  # the border stays white
    bad = maps.clone()
    bad[1, 3] = float("nan")
    spoiled = make_feature_grid(bad, padding=0)
    clean = make_feature_grid(maps, padding=0)
    assert spoiled[0, ROW_HEIGHT, 3] == 0
    rows_other_than_1 = [i for i in range(6 * ROW_HEIGHT) if i // ROW_HEIGHT != 1]
    assert torch.equal(spoiled[:, rows_other_than_1], clean[:, rows_other_than_1])
    with pytest.raises(ValueError, match="cannot make a grid of empty tiles"):
        make_feature_grid(torch.zeros(3, 0))
    with pytest.raises(TypeError, match="tiles must be real numbers"):
        make_feature_grid(torch.zeros(3, 4, dtype=torch.complex64))
    with pytest.raises(ValueError, match="upscale must be >= 1"):
        make_feature_grid(maps, upscale=0)
    with pytest.raises(ValueError, match="normalize must be 'tile' or 'grid'"):
        make_feature_grid(maps, normalize="row")  # type: ignore[arg-type]


# -- 3-d maps (C, T, H, W): one frame per channel --------------------------------------------


def test_3d_maps_show_the_middle_frame_or_the_chosen_one():
    torch.manual_seed(0)
    video = torch.randn(5, 4, 6, 7)
    assert torch.equal(make_feature_grid(video), make_feature_grid(video[:, 2]))
    assert torch.equal(make_feature_grid(video, frame=0), make_feature_grid(video[:, 0]))
    assert torch.equal(make_feature_grid(video, frame=-1), make_feature_grid(video[:, 3]))
    assert torch.equal(
        make_feature_grid(video, frame=1, cmap="magma", max_channels=3, nrow=1),
        make_feature_grid(video[:3, 1], cmap="magma", nrow=1),
    )
    assert torch.equal(make_feature_grid(video[:, :1]), make_feature_grid(video[:, 0]))
    still = torch.randn(5, 6, 7)
    assert torch.equal(make_feature_grid(still, frame=3), make_feature_grid(still))  # ignored
    with pytest.raises(ValueError, match="frame=4 is out of range for a map of 4 frames"):
        make_feature_grid(video, frame=4)
    with pytest.raises(TypeError, match="frame must be an int or None, got float"):
        make_feature_grid(video, frame=1.0)  # type: ignore[arg-type]


# -- filters of every conv type ---------------------------------------------------------------


def test_1d_filters_are_an_out_by_k_heat_map():
    torch.manual_seed(0)
    conv = nn.Conv1d(8, 4, 5)
    grid = make_filter_grid(conv, upscale=1, padding=0)
    expected = conv.weight.detach().mean(dim=1)  # (4, 5): channel="auto" is the mean
    assert grid.shape == (1, 4, 5)
    assert torch.equal(grid, make_feature_grid(expected, padding=0)[:, ::ROW_HEIGHT])
    default = make_filter_grid(conv)
    assert default.shape == (1, 4 * 7 + 2, 5 * 7 + 2)  # cells of ceil(32 / 5) = 7 px
    third = make_filter_grid(conv, channel=3, upscale=1, padding=0)
    assert torch.equal(third, make_filter_grid(conv.weight[:, 3:4], upscale=1, padding=0))
    rgb = make_filter_grid(nn.Conv1d(3, 6, 3), upscale=1)
    assert rgb.shape == (3, 6 + 2, 3 + 2)
    assert make_filter_grid(conv, max_filters=2, upscale=1).shape == (1, 2 + 2, 5 + 2)


def test_1d_kernel_size_1_filters_are_an_out_by_in_heat_map():
    w = torch.arange(12.0).view(3, 4, 1)
    grid = make_filter_grid(w, upscale=1, padding=0)
    assert grid.shape == (1, 3, 4)
    assert grid[0].tolist() == [[0, 85, 170, 255]] * 3  # each row scaled on its own
    shared = make_filter_grid(w, upscale=1, padding=0, normalize="grid")
    assert shared[0, 0, 0] == 0 and shared[0, 2, 3] == 255


def test_3d_filters_render_their_middle_temporal_slice():
    torch.manual_seed(0)
    conv = nn.Conv3d(3, 8, (3, 5, 5))
    assert torch.equal(make_filter_grid(conv), make_filter_grid(conv.weight[:, :, 1]))
    assert make_filter_grid(conv).shape[0] == 3  # RGB for a first layer
    even = torch.randn(4, 2, 2, 3, 3)
    assert torch.equal(make_filter_grid(even), make_filter_grid(even[:, :, 1]))


def _per_output(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """A transposed conv's filters, one per output channel, computed the long way."""
    in_ch, out_per_group = weight.shape[:2]
    in_per_group = in_ch // groups
    filters = []
    for o in range(out_per_group * groups):
        g, j = divmod(o, out_per_group)
        filters.append(weight[g * in_per_group : (g + 1) * in_per_group, j])
    return torch.stack(filters)


@pytest.mark.parametrize("groups", [1, 2])
def test_transposed_filters_are_one_per_output_channel(groups):
    torch.manual_seed(0)
    conv = nn.ConvTranspose2d(4, 6, 3, groups=groups)
    assert conv.weight.shape == (4, 6 // groups, 3, 3)
    expected = _per_output(conv.weight.detach(), groups)
    assert expected.shape == (6, 4 // groups, 3, 3)
    for channel in ("auto", "strongest", 0):
        want = make_filter_grid(expected, channel=channel)
        assert torch.equal(make_filter_grid(conv, channel=channel), want)
        got = make_filter_grid(conv.weight, transposed=True, groups=groups, channel=channel)
        assert torch.equal(got, want)
    # Each filter really is what makes its output channel: a one-hot input channel i gives
    # output o the kernel weight[i, o] (stride 1, no bias) in the transposed conv.
    x = torch.zeros(1, 4, 1, 1)
    x[0, 0, 0, 0] = 1.0
    with torch.no_grad():
        out = nn.functional.conv_transpose2d(x, conv.weight, groups=groups)[0]
    torch.testing.assert_close(out[0], expected[0, 0])


def test_transposed_1d_and_3d_filters():
    torch.manual_seed(0)
    t1 = nn.ConvTranspose1d(4, 3, 5)
    assert torch.equal(make_filter_grid(t1), make_filter_grid(_per_output(t1.weight.detach(), 1)))
    assert make_filter_grid(t1, upscale=1, padding=0).shape == (1, 3, 5)
    t3 = nn.ConvTranspose3d(2, 5, (3, 3, 3))
    want = make_filter_grid(_per_output(t3.weight.detach(), 1)[:, :, 1])
    assert torch.equal(make_filter_grid(t3), want)


def test_filter_grid_errors_for_new_types():
    with pytest.raises(TypeError, match="a conv module .* got Linear"):
        make_filter_grid(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="lazy conv's weight is not materialised yet"):
        make_filter_grid(nn.LazyConv2d(3, 3))
    with pytest.raises(ValueError, match="groups=3 does not divide the 4 input channels"):
        make_filter_grid(torch.randn(4, 2, 3, 3), transposed=True, groups=3)
    with pytest.raises(ValueError, match="groups must be >= 1"):
        make_filter_grid(torch.randn(4, 2, 3, 3), transposed=True, groups=0)
    with pytest.raises(TypeError, match="transposed must be a bool"):
        make_filter_grid(torch.randn(4, 2, 3, 3), transposed=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="channel must be 'auto'"):
        make_filter_grid(torch.randn(4, 2, 1), channel="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cannot make a grid of empty tiles"):
        make_filter_grid(torch.randn(4, 0, 3))


CONV_CASES = {  # a conv of each type and an input shape for it
    "Conv1d": (lambda: nn.Conv1d(3, 6, 3), (1, 3, 40)),
    "Conv2d": (lambda: nn.Conv2d(3, 6, 3), (1, 3, 12, 12)),
    "Conv3d": (lambda: nn.Conv3d(3, 6, 3), (1, 3, 5, 12, 12)),
    "ConvTranspose1d": (lambda: nn.ConvTranspose1d(3, 6, 3, stride=2), (1, 3, 20)),
    "ConvTranspose2d": (lambda: nn.ConvTranspose2d(3, 6, 3, stride=2), (1, 3, 6, 6)),
    "ConvTranspose3d": (lambda: nn.ConvTranspose3d(3, 6, 3, stride=2), (1, 3, 3, 6, 6)),
}


@pytest.mark.parametrize("kind", sorted(CONV_CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_conv_type_renders_maps_and_filters(kind, dtype):
    torch.manual_seed(0)
    build, shape = CONV_CASES[kind]
    conv = build().to(dtype)
    with torch.no_grad():
        out = conv(torch.randn(shape, dtype=dtype))[0]
    grids = [make_feature_grid(out), make_filter_grid(conv), make_feature_grid(out, cmap="gray")]
    for grid in grids:
        assert grid.dtype == torch.uint8 and grid.dim() == 3 and grid.shape[0] in (1, 3)
        assert grid.min() == 0 and grid.max() == 255  # not constant
    assert torch.equal(grids[0], make_feature_grid(out.float()))
    transposed = "Transpose" in kind
    assert torch.equal(grids[1], make_filter_grid(conv.weight.float(), transposed=transposed))


def test_to_output_filters_gives_a_convs_layout_for_every_type():
    from torch_featureviz.render.grids import to_output_filters

    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, groups=2)
    assert to_output_filters(conv) is not conv.weight  # detached
    assert torch.equal(to_output_filters(conv), conv.weight)
    for groups in (1, 2):
        t = nn.ConvTranspose2d(4, 6, 3, groups=groups)
        expected = _per_output(t.weight.detach(), groups)
        assert torch.equal(to_output_filters(t), expected)
        assert torch.equal(to_output_filters(t.weight, transposed=True, groups=groups), expected)
        assert not to_output_filters(t).requires_grad
    assert to_output_filters(nn.ConvTranspose3d(2, 5, 3)).shape == (5, 2, 3, 3, 3)
    with pytest.raises(TypeError, match="weight must be a tensor or a conv module"):
        to_output_filters(nn.Linear(2, 2))
