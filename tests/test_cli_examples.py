"""featureviz examples: a planted red-blob detector found in a folder of images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from torch_featureviz import cli
from torch_featureviz.meaning import Examples

SIZE = 32


class RedBlobNet(nn.Module):
    """Built with no arguments (for --model-class): conv1 channel 0 matches a 3x3 red blob."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        with torch.no_grad():
            self.conv1.weight[0] = torch.tensor([1.0, -1.0, -1.0]).view(3, 1, 1)
            self.conv1.bias[0] = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.conv1(x)))


@pytest.fixture
def folder(tmp_path: Path) -> tuple[Path, dict[str, tuple[int, int]]]:
    rng = np.random.default_rng(0)
    planted = {}
    for i in range(8):
        pixels = rng.integers(108, 148, (SIZE, SIZE, 3), dtype=np.uint8)  # low-contrast grey
        name = f"{'deep/' if i % 2 else ''}img{i}.png"
        if i in (1, 4, 6):
            y, x = (int(v) for v in rng.integers(0, SIZE - 3, 2))
            pixels[y:y + 3, x:x + 3] = (255, 0, 0)
            planted[name] = (y, x)
        (tmp_path / "images" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(tmp_path / "images" / name)
    (tmp_path / "images" / "readme.txt").write_text("not an image")
    return tmp_path, planted


@pytest.mark.slow
def test_json_names_the_planted_files_and_boxes(folder, capsys) -> None:
    tmp, planted = folder
    argv = ["examples", "--model-class", "tests.test_cli_examples:RedBlobNet",
            "--images", str(tmp / "images"), "--layers", "conv1", "-k", "3",
            "--input-size", str(SIZE), "--batch-size", "3", "-o", str(tmp / "fig.png"),
            "--json", str(tmp / "ex.json"), "--logdir", str(tmp / "run")]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "8 images" in out and str(tmp / "fig.png") in out
    found = json.loads((tmp / "ex.json").read_text())
    assert list(found) == ["conv1"] and list(found["conv1"]) == ["0", "1", "2", "3"]
    best = found["conv1"]["0"]
    assert {e["file"] for e in best} == set(planted)
    for e in best:
        y, x = planted[e["file"]]
        top, left, bottom, right = e["box"]
        assert top <= y and left <= x and y + 3 <= bottom and x + 3 <= right
    assert (tmp / "fig.png").stat().st_size > 0
    assert list((tmp / "run").glob("events.out.tfevents.*"))
    saved = Examples.load(tmp / "run" / "examples.pt")
    assert [e.value for e in saved["conv1"][0]] == pytest.approx([e["value"] for e in best])


def test_several_layers_write_one_figure_each(folder, capsys) -> None:
    tmp, _ = folder
    argv = ["examples", "--model-class", "tests.test_cli_examples:RedBlobNet",
            "--images", str(tmp / "images"), "-k", "2", "--input-size", str(SIZE),
            "-o", str(tmp / "ex.png"), "-q"]
    assert cli.main(argv) == 0
    assert capsys.readouterr().out == ""
    assert sorted(p.name for p in tmp.glob("ex_*.png")) == ["ex_conv1.png", "ex_conv2.png"]


def test_bad_input(folder, capsys) -> None:
    tmp, _ = folder
    base = ["examples", "--model-class", "tests.test_cli_examples:RedBlobNet",
            "--input-size", str(SIZE), "-o", str(tmp / "f.png")]
    assert cli.main([*base, "--images", str(tmp / "nope")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    (tmp / "empty").mkdir()
    assert cli.main([*base, "--images", str(tmp / "empty")]) == 2
    assert "no image files" in capsys.readouterr().err
    assert cli.main([*base, "--images", str(tmp / "images"), "--layers", "relu"]) == 2
    assert "matches no conv layer" in capsys.readouterr().err
    assert cli.main([*base, "--images", str(tmp / "images"), "--input-channels", "1"]) == 2
    assert "channels" in capsys.readouterr().err
    assert cli.main([*base[:-1], str(tmp / "f.gif"), "--images", str(tmp / "images")]) == 2
    assert "-o: expected" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main([*base, "--images", str(tmp / "images"), "-k", "0"])
    assert "positive integer" in capsys.readouterr().err
