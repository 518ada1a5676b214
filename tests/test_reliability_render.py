"""Rendering properties on tensors nobody planned for (hypothesis, issue 6 part 2).

Any ``(C, H, W)`` map or ``(O, I, kh, kw)`` weight, in float32, fp16, bf16 or float64, contiguous
or channels_last, holding NaN, +-Inf, constant, huge, tiny or denormal values, renders to a uint8
grid of the documented shape; every finite tile is scaled min -> 0, max -> 255 monotonically; NaN
and -Inf pixels are 0 and +Inf 255; and a non-finite tile never changes the pixels of the finite
tiles around it. Inputs are never modified, and rendering is deterministic.
"""

from __future__ import annotations

import math
import time

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.support.reliability_models import one_thread, record_figures, reproducible
from torch_featureviz import make_feature_grid, make_filter_grid

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
KINDS = ("normal", "huge", "tiny", "denormal", "max", "constant", "nan", "inf", "mixed")
SETTINGS = reproducible(300)
_BITS = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32,
         torch.float64: torch.int64}


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


def _tile_values(kind: str, shape: tuple[int, ...], dtype: torch.dtype, gen: torch.Generator):
    """float64 values of one tile of the given kind, representable-ish in ``dtype``."""
    fi = torch.finfo(dtype)
    base = torch.randn(shape, generator=gen, dtype=torch.float64)
    if kind == "normal":
        return base
    if kind == "huge":
        return base * (fi.max / 8)
    if kind == "tiny":
        return base * fi.tiny * 4
    if kind == "denormal":  # multiples of the smallest subnormal of dtype
        steps = torch.randint(-6, 7, shape, generator=gen).double()
        return steps * (fi.tiny * fi.eps)
    if kind == "max":  # +-max with a few ordinary values (span overflows if not careful)
        signs = torch.where(base > 0, 1.0, -1.0).double()
        return torch.where(base.abs() > 1, signs * fi.max, base)
    if kind == "constant":
        return torch.full(shape, float(base.flatten()[0]), dtype=torch.float64)
    if kind == "nan":
        return torch.full(shape, math.nan, dtype=torch.float64)
    if kind == "inf":
        return torch.where(base > 0, math.inf, -math.inf).double()
    # mixed: ordinary values with NaN, +Inf and -Inf sprinkled in
    out = base.clone()
    flat = out.view(-1)
    picks = torch.randint(0, flat.numel(), (3,), generator=gen)
    flat[picks[0]], flat[picks[1]], flat[picks[2]] = math.nan, math.inf, -math.inf
    return out


@st.composite
def tensors(draw, *, weights: bool):
    """A ``(C, H, W)`` map (``weights=False``) or an ``(O, I, kh, kw)`` weight, any dtype/layout."""
    dtype = draw(st.sampled_from(DTYPES))
    n = draw(st.integers(1, 9))
    if weights:
        inner = (draw(st.sampled_from([1, 2, 3, 3, 5])),)
        kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
        shape: tuple[int, ...] = (n, *inner, kh, kw)
    else:
        shape = (n, draw(st.integers(1, 7)), draw(st.integers(1, 7)))
    kinds = draw(st.lists(st.sampled_from(KINDS), min_size=n, max_size=n))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    x = torch.stack([_tile_values(k, shape[1:], dtype, gen) for k in kinds]).to(dtype)
    channels_last = draw(st.booleans())
    if channels_last:
        if weights:
            x = x.to(memory_format=torch.channels_last)
        else:  # a (C, H, W) slice of a channels_last batch, as a captured map would be
            x = x.unsqueeze(0).to(memory_format=torch.channels_last)[0]
    return x, kinds, channels_last


def _grid_shape(n: int, c: int, h: int, w: int, padding: int = 1) -> tuple[int, int, int]:
    """The documented shape of make_image_grid's result for n tiles (nrow=None)."""
    ncol = min(math.ceil(math.sqrt(n)), n)
    rows = math.ceil(n / ncol)
    return (c, rows * (h + padding) + padding, ncol * (w + padding) + padding)


def _tile(grid: torch.Tensor, i: int, n: int, h: int, w: int, padding: int = 1) -> torch.Tensor:
    ncol = min(math.ceil(math.sqrt(n)), n)
    r, c = divmod(i, ncol)
    y, x = padding + r * (h + padding), padding + c * (w + padding)
    return grid[:, y : y + h, x : x + w]


def _check_tile_pixels(values: torch.Tensor, pixels: torch.Tensor) -> None:
    """The documented scaling of one tile: float32 values -> uint8 pixels (same shape)."""
    v, p = values.float().flatten(), pixels.flatten().long()
    finite = torch.isfinite(v)
    assert (p[torch.isnan(v)] == 0).all()
    assert (p[v == -math.inf] == 0).all()
    assert (p[v == math.inf] == 255).all()
    fv, fp = v[finite], p[finite]
    if fv.numel() == 0:
        return
    if fv.min() == fv.max():  # a constant tile (or a dead channel) is black
        assert (fp == 0).all()
        return
    assert (fp[fv == fv.min()] == 0).all() and (fp[fv == fv.max()] == 255).all()
    order = torch.argsort(fv, stable=True)
    assert (fp[order].diff() >= 0).all()  # monotone: a larger value is never darker


def _bits(x: torch.Tensor) -> torch.Tensor:
    return x.view(_BITS[x.dtype]).clone()


def test_feature_grid_properties(request):
    stats: dict[str, float] = {
        "examples": 0, "tiles": 0, "channels_last": 0, **{d: 0 for d in map(str, DTYPES)}
    }
    kinds_seen: set[str] = set()

    @SETTINGS
    @given(data=tensors(weights=False), mode=st.sampled_from(["tile", "grid"]))
    def check(data, mode):
        maps, kinds, channels_last = data
        c, h, w = maps.shape
        before = _bits(maps)
        grid = make_feature_grid(maps, normalize=mode)
        assert grid.dtype == torch.uint8 and grid.device == maps.device
        if (h, w) == (1, 1):  # one band of c cells on one shared scale
            assert tuple(grid.shape) == (1, 4 + 2, 4 * c + 2)
            assert torch.equal(_bits(maps), before)
            return
        assert tuple(grid.shape) == _grid_shape(c, 1, h, w)
        assert torch.equal(_bits(maps), before)  # not modified
        assert torch.equal(make_feature_grid(maps, normalize=mode), grid)  # deterministic
        # padding stays white whatever the values
        assert (grid[:, 0, :] == 255).all() and (grid[:, :, 0] == 255).all()
        if mode == "tile":
            for i in range(c):
                _check_tile_pixels(maps[i], _tile(grid, i, c, h, w)[0])
            # replacing one tile by NaN leaves every other tile's pixels unchanged
            j = c // 2
            spoiled = maps.clone()
            spoiled[j] = math.nan
            again = make_feature_grid(spoiled, normalize=mode)
            assert (_tile(again, j, c, h, w) == 0).all()
            for i in range(c):
                if i != j:
                    assert torch.equal(_tile(again, i, c, h, w), _tile(grid, i, c, h, w)), i
        else:
            _check_tile_pixels(maps, torch.stack([_tile(grid, i, c, h, w)[0] for i in range(c)]))
        # in either mode, an extra NaN or Inf tile next to them changes no existing tile
        for bad in (math.nan, math.inf):
            extra = torch.cat([maps, torch.full((1, h, w), bad, dtype=maps.dtype)])
            more = make_feature_grid(extra, normalize=mode)
            assert tuple(more.shape) == _grid_shape(c + 1, 1, h, w)
            for i in range(c):
                assert torch.equal(_tile(more, i, c + 1, h, w), _tile(grid, i, c, h, w)), i
            assert (_tile(more, c, c + 1, h, w) == (0 if math.isnan(bad) else 255)).all()
        stats["examples"] += 1
        stats["tiles"] += c
        stats["channels_last"] += channels_last
        stats[str(maps.dtype)] += 1
        kinds_seen.update(kinds)

    start = time.perf_counter()
    check()
    stats["seconds"] = round(time.perf_counter() - start, 1)
    record_figures(request, "render_feature_grid", stats)
    assert kinds_seen == set(KINDS)
    assert all(stats[str(d)] > 0 for d in DTYPES) and stats["channels_last"] > 0


def test_filter_grid_properties(request):
    stats: dict[str, float] = {"examples": 0, "rgb": 0, "channels_last": 0}

    @SETTINGS
    @given(data=tensors(weights=True))
    def check(data):
        # per-tile scaling is what is checked here (1x1 kernels default to one shared scale)
        weight, _, channels_last = data
        o, i_ch, kh, kw = weight.shape
        before = _bits(weight)
        grid = make_filter_grid(weight, normalize="tile")
        if (kh, kw) == (1, 1):  # the (out, in) weight matrix, one cell per weight
            cell = max(1, math.ceil(32 / min(i_ch, 64)))
            assert tuple(grid.shape) == (1, min(o, 64) * cell + 2, min(i_ch, 64) * cell + 2)
            assert torch.equal(_bits(weight), before)
            return
        up = max(1, math.ceil(32 / max(kh, kw)))
        c = 3 if i_ch == 3 else 1  # "auto": RGB for 3 input channels, else the mean
        assert grid.dtype == torch.uint8
        assert tuple(grid.shape) == _grid_shape(o, c, kh * up, kw * up)
        assert torch.equal(_bits(weight), before)
        assert torch.equal(make_filter_grid(weight, normalize="tile"), grid)
        tiles = weight.float() if c == 3 else weight.float().mean(dim=1, keepdim=True)
        for f in range(o):
            big = _tile(grid, f, o, kh * up, kw * up)
            small = big[:, ::up, ::up]
            assert torch.equal(big, small.repeat_interleave(up, 1).repeat_interleave(up, 2))
            _check_tile_pixels(tiles[f], small)
        j = o - 1
        spoiled = weight.clone()
        spoiled[j] = math.nan
        again = make_filter_grid(spoiled, normalize="tile")
        assert (_tile(again, j, o, kh * up, kw * up) == 0).all()
        for f in range(o - 1):
            assert torch.equal(
                _tile(again, f, o, kh * up, kw * up), _tile(grid, f, o, kh * up, kw * up)
            )
        stats["examples"] += 1
        stats["rgb"] += c == 3
        stats["channels_last"] += channels_last

    start = time.perf_counter()
    check()
    stats["seconds"] = round(time.perf_counter() - start, 1)
    record_figures(request, "render_filter_grid", stats)
    assert stats["rgb"] > 0 and stats["channels_last"] > 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_extremes_of_each_dtype(dtype):
    """Hand-picked extremes: +-max, the smallest normal and subnormal, all in one tile."""
    fi = torch.finfo(dtype)
    values = torch.tensor(
        [[[-fi.max, fi.max], [fi.tiny, fi.tiny * fi.eps]], [[0.0, fi.tiny * fi.eps]] * 2,
         [[math.nan, 1.0], [math.inf, -math.inf]]],
        dtype=torch.float64,
    ).to(dtype)
    grid = make_feature_grid(values)
    assert grid.dtype == torch.uint8 and tuple(grid.shape) == _grid_shape(3, 1, 2, 2)
    if dtype == torch.float64:
        # rendering is float32: +-1.8e308 become +-Inf (255 and 0) and the tiny values 0.0, so
        # the finite rest of each tile is constant, hence black
        assert _tile(grid, 0, 3, 2, 2)[0].tolist() == [[0, 255], [0, 0]]
        assert _tile(grid, 1, 3, 2, 2)[0].tolist() == [[0, 0], [0, 0]]
    else:
        # tile 0: -max -> 0, +max -> 255, the tiny ones land in the middle
        assert _tile(grid, 0, 3, 2, 2)[0].tolist() == [[0, 255], [128, 128]]
        # tile 1: 0 and the smallest subnormal are different values: 0 and 255
        assert _tile(grid, 1, 3, 2, 2)[0].tolist() == [[0, 255], [0, 255]]
    # tile 2: a single finite value is a constant tile: black; NaN and -Inf 0, +Inf 255
    assert _tile(grid, 2, 3, 2, 2)[0].tolist() == [[0, 0], [255, 0]]


def test_bad_inputs_are_refused():
    # (C, T, H, W) is a 3-d conv's map since issue 11; one more dim is a batch
    with pytest.raises(ValueError, match=r"got \(1, 2, 3, 4, 5\)\. Select one sample first"):
        make_feature_grid(torch.zeros(1, 2, 3, 4, 5))
    with pytest.raises(ValueError, match=r"cannot make a grid of empty tiles"):
        make_feature_grid(torch.zeros(0, 3, 3))
    with pytest.raises(TypeError, match="tiles must be real numbers"):
        make_feature_grid(torch.zeros(2, 3, 3, dtype=torch.complex64))
    with pytest.raises(ValueError, match=r"weight must be a conv weight: \(out, in, k\)"):
        make_filter_grid(torch.zeros(3, 3))  # (out, in, k) is a 1-d conv's weight since issue 11
