"""overlay_map: a channel's map upsampled and colour-mapped over its image."""

from __future__ import annotations

import pytest
import torch

from torch_featureviz import overlay_map
from torch_featureviz.render import to_display_image
from torch_featureviz.render.grids import _colormap_lut


def test_shape_dtype_and_inputs_untouched() -> None:
    image, m = torch.rand(3, 32, 48), torch.rand(1, 4, 6)
    copies = image.clone(), m.clone()
    out = overlay_map(image, m)
    assert out.shape == (3, 32, 48) and out.dtype == torch.uint8
    assert torch.equal(image, copies[0]) and torch.equal(m, copies[1])


def test_alpha_ends_are_the_image_and_the_colour_map() -> None:
    image = torch.rand(3, 16, 16)
    assert torch.equal(overlay_map(image, torch.rand(4, 4), alpha=0.0), to_display_image(image))
    jet = _colormap_lut("jet")
    top = overlay_map(image, torch.ones(2, 2), alpha=1.0, scale=1.0)
    assert torch.equal(top, jet[255].view(3, 1, 1).expand(3, 16, 16))


def test_hot_spot_lands_on_its_block() -> None:
    m = torch.zeros(4, 4)
    m[1, 2] = 5.0  # one hot location: rows 8..16, columns 16..24 of a 32 px image
    out = overlay_map(torch.zeros(3, 32, 32), m, alpha=1.0, mode="nearest")
    hot = (out == _colormap_lut("jet")[255].view(3, 1, 1)).all(0)
    assert hot.nonzero().min(0).values.tolist() == [8, 16]
    assert hot.nonzero().max(0).values.tolist() == [15, 23]
    smooth = overlay_map(torch.zeros(3, 32, 32), m, alpha=1.0).float()
    # Bilinear: the brightest (reddest, least blue) pixel is inside the block, and it blurs out.
    red = smooth[0] - smooth[2]
    y, x = divmod(int(red.argmax()), 32)
    assert 8 <= y < 16 and 16 <= x < 24
    assert len(torch.unique(smooth.view(3, -1), dim=1).T) > 2


def test_fixed_scale_keeps_frames_comparable() -> None:
    image, m = torch.rand(3, 8, 8), torch.rand(2, 2)
    # Each frame on its own: a channel at half strength looks the same (the flicker problem).
    assert torch.equal(overlay_map(image, m), overlay_map(image, m / 2))
    # A fixed scale: half strength is visibly different, and a range maps its ends.
    assert not torch.equal(overlay_map(image, m, scale=1.0), overlay_map(image, m / 2, scale=1.0))
    low = overlay_map(image, torch.zeros(2, 2), alpha=1.0, scale=(0.0, 2.0))
    assert torch.equal(low, _colormap_lut("jet")[0].view(3, 1, 1).expand(3, 8, 8))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_special_values_and_dtypes(dtype: torch.dtype) -> None:
    m = torch.tensor([[float("nan"), 1.0], [float("inf"), -float("inf")]]).to(dtype)
    out = overlay_map(torch.rand(1, 8, 8), m)
    assert out.shape == (3, 8, 8)
    flat = overlay_map(torch.rand(3, 8, 8), torch.full((3, 3), 2.0).to(dtype), alpha=1.0)
    assert torch.equal(flat, _colormap_lut("jet")[0].view(3, 1, 1).expand(3, 8, 8))
    uint8 = torch.randint(0, 255, (3, 8, 8), dtype=torch.uint8)
    assert torch.equal(overlay_map(uint8, torch.rand(2, 2), alpha=0.0), uint8)


def test_bad_input() -> None:
    image = torch.rand(3, 8, 8)
    with pytest.raises(ValueError, match="alpha"):
        overlay_map(image, torch.rand(2, 2), alpha=2.0)
    with pytest.raises(ValueError, match="not a matplotlib colormap"):
        overlay_map(image, torch.rand(2, 2), cmap="jett")
    with pytest.raises(ValueError, match="one channel's"):
        overlay_map(image, torch.rand(4, 2, 2))
    with pytest.raises(ValueError, match="low < high"):
        overlay_map(image, torch.rand(2, 2), scale=(2.0, 1.0))
    with pytest.raises(ValueError, match="scale"):
        overlay_map(image, torch.rand(2, 2), scale=0.0)
    with pytest.raises(ValueError, match="C in"):
        overlay_map(torch.rand(5, 8, 8), torch.rand(2, 2))
    with pytest.raises(ValueError, match="mode"):
        overlay_map(image, torch.rand(2, 2), mode="bicubic")
    with pytest.raises(TypeError, match="tensors"):
        overlay_map(image, [[1.0]])  # type: ignore[arg-type]
