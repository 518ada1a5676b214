"""The built-in demo: dataset, model, and a short real run that must learn."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from torch_featureviz.demo import (
    CLASSES,
    add_demo_arguments,
    build_demo_model,
    main,
    make_pattern_dataset,
    run_demo,
)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_demo_arguments(parser)
    return parser.parse_args(list(argv))


def test_dataset_is_deterministic_balanced_and_in_range() -> None:
    x1, y1 = make_pattern_dataset(80, seed=3)
    x2, y2 = make_pattern_dataset(80, seed=3)
    x3, _ = make_pattern_dataset(80, seed=4)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, x3)
    assert x1.shape == (80, 3, 32, 32) and x1.dtype == torch.float32
    assert float(x1.min()) >= 0.0 and float(x1.max()) <= 1.0
    assert torch.bincount(y1, minlength=len(CLASSES)).tolist() == [10] * len(CLASSES)


def test_stripe_classes_have_their_orientation() -> None:
    x, y = make_pattern_dataset(64, seed=0, noise=0.0)
    gray = x.mean(dim=1)
    dy = (gray[:, 1:, :] - gray[:, :-1, :]).abs().mean(dim=(1, 2))  # change down the rows
    dx = (gray[:, :, 1:] - gray[:, :, :-1]).abs().mean(dim=(1, 2))  # change along a row
    assert bool((dy[y == 0] > 2 * dx[y == 0]).all())  # horizontal stripes
    assert bool((dx[y == 1] > 2 * dy[y == 1]).all())  # vertical stripes


@pytest.mark.parametrize(("n", "size"), [(0, 32), (4, 0), (2.5, 32)])
def test_dataset_rejects_bad_sizes(n: int, size: int) -> None:
    with pytest.raises(ValueError, match="must be a positive int"):
        make_pattern_dataset(n, size=size)


def test_model_is_a_small_resnet() -> None:
    from torch_featureviz import find_conv_layers

    model = build_demo_model()
    names = list(find_conv_layers(model))
    assert names[0] == "stem.conv" and "layer3.0.downsample.0" in names
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert torch.equal(build_demo_model(seed=1).stem.conv.weight,
                       build_demo_model(seed=1).stem.conv.weight)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, len(CLASSES))


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--steps", "0"], "--steps must be >= 1"),
        (["--batch-size", "1"], "--batch-size must be >= 2"),
        (["--every", "0"], "--every must be >= 1"),
        (["--device", "nonsense"], "--device 'nonsense' is not a device"),
    ],
)
def test_bad_options(tmp_path: Path, argv: list[str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        run_demo(parse("--out", str(tmp_path), *argv))


def test_main_turns_bad_options_into_exit_code_2(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["--out", str(tmp_path), "--steps", "0"]) == 2
    assert "featureviz demo: error: --steps must be >= 1" in capsys.readouterr().err


def test_unwritable_out(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError, match="cannot write to"):
        run_demo(parse("--out", str(blocker / "demo"), "--steps", "1"))


@pytest.mark.slow
def test_short_demo_learns_and_writes_everything(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "demo"
    code = run_demo(parse("--out", str(out), "--quick", "--no-progress"))
    assert code == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())

    # It really learns: well above chance (12.5 %) on held-out images.
    assert summary["held_out_accuracy"] >= 0.6, summary
    assert f"Held-out accuracy: {summary['held_out_accuracy']:.1%}" in printed
    # The first-layer filters visibly change, and the figure shows both ends.
    assert summary["first_layer_relative_change"] > 0.2
    assert (out / "figures" / "first_layer_filters_first_vs_last.png").stat().st_size > 10_000
    for name in ("filters_overview.png", "filters_stem.conv.png", "maps_probe_overview.png",
                 "maps_probe_stem.conv.png", "dataset_samples.png"):
        assert (out / "figures" / name).is_file(), name
    # The checkpoint loads into a fresh model, which is the trained one.
    model = build_demo_model(seed=123)
    model.load_state_dict(torch.load(out / "model.pt", weights_only=True))
    x, y = make_pattern_dataset(200, seed=10_000)
    with torch.no_grad():
        accuracy = (model.eval()((x - 0.5) / 0.5).argmax(1) == y).float().mean().item()
    assert accuracy >= 0.6
    assert summary["captures_logged"] >= 10 and summary["captures_dropped"] == 0
    # TensorBoard logs with the monitor's tags, and the exact command to view them.
    ea = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0})
    ea.Reload()
    tags = ea.Tags()
    assert len(ea.Images("filters/stem.conv")) == summary["captures_logged"]
    assert "feature_maps/probe/layer3.0.conv2" in tags["images"]
    assert "feature_maps/hook/stem.conv" in tags["images"]
    assert "activations/layer1.0.conv1/dead_channels" in tags["scalars"]
    assert "--samples_per_plugin images=" in summary["tensorboard_command"]
    assert summary["tensorboard_command"] in printed
    assert str(out / "model.pt") in printed


def test_module_help_runs() -> None:
    out = subprocess.run([sys.executable, "-m", "torch_featureviz.demo", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--quick" in out.stdout and "--out" in out.stdout
