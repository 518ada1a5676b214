"""examples/article_walkthrough.py runs and writes every figure of the article's walkthrough."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "article_walkthrough.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("article_walkthrough", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_walkthrough_writes_every_figure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    walkthrough = _load()
    torch.manual_seed(0)
    out = tmp_path / "walk"
    code = walkthrough.main(
        ["--out", str(out), "--model", "resnet18", "--input-size", "64", "--max-channels", "8"]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "Total CNN Layers: 17" in printed
    # The first conv sees the same input either way; the chain departs right after it.
    assert re.search(r"conv1 +chain \(8, 32, 32\) +hook \(8, 32, 32\) +cosine \+1\.000", printed)
    assert "chain mode departs from the real network at 'layer1.0.conv1'" in printed

    top = {p.name for p in out.iterdir()}
    assert top == {
        "step2_first_layer_filters_article_channel0.png", "step2_first_layer_filters_rgb.png",
        "step3_input.png", "step3_chain", "step3_hook", "step4_similarity.png", "step4_compare",
    }
    chain = sorted(p.name for p in (out / "step3_chain").iterdir())
    hook = sorted(p.name for p in (out / "step3_hook").iterdir())
    assert len(chain) == 17 + 1 and "maps_chain_overview.png" in chain  # every CNN layer
    assert len(hook) == 20 + 1 and "maps_hook_layer2.0.downsample.0.png" in hook  # every conv
    assert len(list((out / "step4_compare").iterdir())) == 4
    for path in out.rglob("*.png"):
        with Image.open(path) as im:
            im.verify()
    # The article's view of the first layer is grey (one input channel); the RGB view is colour.
    for name, colour in (("rgb", True), ("article_channel0", False)):
        with Image.open(out / f"step2_first_layer_filters_{name}.png") as im:
            pixels = np.asarray(im.convert("RGB")).astype(int)
        spread = (pixels.max(axis=-1) - pixels.min(axis=-1)) > 8  # a pixel that is not grey
        assert bool(spread.mean() > 0.1) is colour, name


def test_walkthrough_output_flag(tmp_path: Path) -> None:
    walkthrough = _load()
    args = walkthrough.parse_args(["--out", str(tmp_path / "x"), "--quiet"])
    assert args.out == tmp_path / "x" and args.quiet and args.model == "resnet50"
    assert walkthrough.parse_args([]).out == Path("article_walkthrough")
