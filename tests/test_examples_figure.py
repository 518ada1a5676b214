"""save_examples_figure: channels x k crops, labelled."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from torch_featureviz.meaning import Example, Examples, save_examples_figure


def _examples() -> Examples:
    g = torch.Generator().manual_seed(0)
    crop = [Example(3.0 - j, j, None, (0, 0), (0, 0, 5, 5), torch.rand(3, 5, 5, generator=g))
            for j in range(3)]
    image = torch.rand(3, 16, 16, generator=g)
    whole = [Example(1.0, 9, None, (1, 1), (2, 3, 10, 12), image, True)]
    return Examples({"conv": {0: crop, 1: whole, 2: []}}, k=3)


def test_figure_has_a_row_per_channel(tmp_path) -> None:
    one = save_examples_figure(_examples(), "conv", tmp_path / "one.png", channels=[0])
    three = save_examples_figure(_examples(), "conv", tmp_path / "three.png")
    h1, h3 = Image.open(one).size[1], Image.open(three).size[1]
    assert h3 > 2 * h1 * 0.8  # three rows are about three times one row (plus the title)
    assert Image.open(three).size[0] == Image.open(one).size[0]


def test_bad_input(tmp_path) -> None:
    with pytest.raises(KeyError, match="layers with examples"):
        save_examples_figure(_examples(), "nope", tmp_path / "x.png")
    with pytest.raises(ValueError, match="no examples for channels \\[7\\]"):
        save_examples_figure(_examples(), "conv", tmp_path / "x.png", channels=[7])
    with pytest.raises(ValueError, match="unsupported figure format"):
        save_examples_figure(_examples(), "conv", tmp_path / "x.gif")
    with pytest.raises(TypeError, match="must be an Examples"):
        save_examples_figure({}, "conv", tmp_path / "x.png")  # type: ignore[arg-type]
