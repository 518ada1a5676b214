"""Issue 29's field cases: models and scripts a new user brings (grayscale, video and two-input
models on the CLI; a latent probe; interrupts; forked children)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from torch_featureviz import cli


class MnistNet(nn.Module):
    """A grayscale model: its first conv takes 1 channel."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3)
        self.conv2 = nn.Conv2d(4, 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.conv1(x)))


class LateStem(nn.Module):
    """The first conv in module order (``head``, 3 inputs) is not the first one run (``stem``,
    1 input): only the channel-mismatch retry finds the right count."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, 2, 1)
        self.stem = nn.Conv2d(1, 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stem(x))


class TinyVideo(nn.Module):
    """A video model: (N, C, T, H, W) clips through a Conv3d."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv3d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


class Siamese(nn.Module):
    """A two-input model: the same conv on each image, then their difference."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.conv1(a) - self.conv1(b)


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _png(path: Path, value: int) -> str:
    from PIL import Image

    Image.new("RGB", (32, 32), (value, value, value)).save(path)
    return str(path)


# -- case 2: grayscale models on the CLI -----------------------------------------------------------


def test_cli_feeds_grayscale_model_one_channel(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = "tests.test_field_polish:MnistNet"
    code, out, err = run_main(
        ["maps", "--model-class", model, "--input-size", "28", "--out", str(tmp_path)], capsys
    )
    assert code == 0, err
    assert "input (1, 1, 28, 28)" in out
    assert "feeding 1 input channel" in err and "--input-channels" in err
    assert (tmp_path / "maps_hook_conv2.png").is_file()
    code, out, err = run_main(["info", "--model-class", model, "--input-size", "28"], capsys)
    assert code == 0, err
    assert re.search(r"conv2 +4->8 .* 8x24x24", out), out
    # Given explicitly, the count is the user's: the old error, with its hint.
    code, out, err = run_main(
        ["info", "--model-class", model, "--input-size", "28", "--input-channels", "3"], capsys
    )
    assert code == 2 and "to have 1 channels" in err and "--input-channels" in err
    assert "note" not in err


def test_cli_retries_with_the_channels_the_model_asks_for(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run_main(
        ["info", "--model-class", "tests.test_field_polish:LateStem", "--input-size", "16"],
        capsys,
    )
    assert code == 0, err
    assert "retried with --input-channels 1" in err
    assert re.search(r"stem +1->3 .* 3x14x14", out), out


# -- case 3: video models -------------------------------------------------------------------------


def test_cli_feeds_video_models_a_clip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = "tests.test_field_polish:TinyVideo"
    code, out, err = run_main(
        ["maps", "--model-class", model, "--input-size", "20", "--out", str(tmp_path)], capsys
    )
    assert code == 0, err
    assert "input (1, 3, 8, 20, 20)" in out  # (N, C, T, H, W), 8 frames by default
    assert "clip of 8" in err and "--frames" in err
    assert (tmp_path / "maps_hook_conv2.png").is_file() and (tmp_path / "input.png").is_file()
    code, out, err = run_main(
        ["info", "--model-class", model, "--input-size", "20", "--frames", "3"], capsys
    )
    assert code == 0, err
    assert re.search(r"conv2 +4->4 +3x3x3 .* 4x3x20x20", out), out
    code, out, err = run_main(
        ["info", "--model-class", "tests.test_field_polish:MnistNet", "--frames", "3"], capsys
    )
    assert code == 2 and "--frames is for video models" in err


@pytest.mark.slow
def test_cli_runs_torchvision_r3d_18(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(["info", "r3d_18", "--input-size", "16", "--frames", "2"], capsys)
    assert code == 0, err
    assert re.search(r"^stem\.0 +3->64 +3x7x7 .* 64x2x8x8", out, re.M), out


# -- case 4: two-input models ---------------------------------------------------------------------


def test_cli_passes_two_images_to_a_two_input_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = "tests.test_field_polish:Siamese"
    dark, light = _png(tmp_path / "dark.png", 0), _png(tmp_path / "light.png", 255)
    out_dir = tmp_path / "out"
    code, out, err = run_main(
        ["maps", "--model-class", model, "--input-size", "16", "--image", dark, "--image", light,
         "--out", str(out_dir)],
        capsys,
    )
    assert code == 0, err
    assert "input (1, 3, 16, 16) and (1, 3, 16, 16)" in out
    # conv1 ran once per image: both calls captured, and the two inputs drawn.
    for name in ("maps_hook_conv1.png", "maps_hook_conv1_call1.png", "input.png", "input_2.png"):
        assert (out_dir / name).is_file(), name
    code, out, err = run_main(["info", "--model-class", model, "--input-size", "16"], capsys)
    assert code == 0 and re.search(r"conv1 .* 4x14x14 \(2 calls\)", out), out


def test_cli_one_image_for_a_two_input_model_says_how(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_main(
        ["maps", "--model-class", "tests.test_field_polish:Siamese", "--out", str(tmp_path)],
        capsys,
    )
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert "--image A.png --image B.png" in err and "capture_feature_maps(model, (a, b))" in err
    code, out, err = run_main(
        ["maps", "--model-class", "tests.test_field_polish:MnistNet", "--image", "a.png",
         "--image", "b.png", "--out", str(tmp_path)],
        capsys,
    )
    assert code == 2 and "takes 1 input(s)" in err


# -- case 5: a KeyboardInterrupt in the middle of a forward ---------------------------------------


class Interruptible(nn.Module):
    """``features`` then ``head`` (timm's forward_features + forward_head); ``features`` raises
    a KeyboardInterrupt between its convs when armed."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3)
        self.c2 = nn.Conv2d(4, 4, 3)
        self.armed = False

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.c1(x)
        if self.armed:
            self.armed = False
            raise KeyboardInterrupt
        return self.c2(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x).mean((2, 3))


def _interrupt(model: Interruptible) -> None:
    model.armed = True
    with pytest.raises(KeyboardInterrupt):
        model(torch.randn(1, 3, 8, 8))


@pytest.mark.parametrize("how", ["root", "forward_features"])
def test_after_an_interrupt_the_next_pass_is_captured(how: str) -> None:
    from torch_featureviz import FeatureCapture

    torch.manual_seed(0)
    model = Interruptible()
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        want = {"c1": model.c1(x)[0], "c2": model.c2(model.c1(x))[0]}
    with FeatureCapture(model) as cap:
        model(torch.randn(1, 3, 8, 8))
        assert cap.passes == 1
        _interrupt(model)
        assert cap.passes == 1  # the half-finished pass is not published
        with torch.no_grad():
            model(x) if how == "root" else model.forward_features(x)
        cap.end_pass()  # publishes the forward_features pass (the monitor does this at step())
        assert cap.passes == 2
        assert sorted(cap.maps) == ["c1", "c2"]
        for name, expected in want.items():
            assert torch.allclose(cap.maps[name], expected), name
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_weight_sharing_is_not_mistaken_for_an_interrupt() -> None:
    from torch_featureviz import FeatureCapture

    model = Siamese()
    a, b = torch.randn(1, 3, 8, 8), torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        want_a, want_b = model.conv1(a)[0], model.conv1(b)[0]
    with FeatureCapture(model) as cap, torch.no_grad():
        model(a, b)
        first, second = maps = dict(cap.maps)  # conv1's two calls, in call order
    assert cap.passes == 1 and first == "conv1"
    assert torch.allclose(maps[first], want_a) and torch.allclose(maps[second], want_b)
