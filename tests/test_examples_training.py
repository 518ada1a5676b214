"""The training examples run end to end (short) and log what they promise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_example(name: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), *args],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def images(log_dir: Path) -> dict[str, list[int]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(log_dir), size_guidance={"images": 0})
    ea.Reload()
    return {tag: [e.step for e in ea.Images(tag)] for tag in ea.Tags()["images"]}


@pytest.mark.slow
def test_plain_loop_example(tmp_path: Path) -> None:
    out = run_example("train_plain.py", "--steps", "30", "--every", "10", "--out", str(tmp_path))
    assert "held-out accuracy" in out and "3 captures, 0 dropped" in out
    assert "--samples_per_plugin images=" in out
    logged = images(tmp_path)
    assert logged["filters/stem.conv"] == [0, 10, 20]
    assert logged["feature_maps/probe/layer2.0.conv1"] == [0, 10, 20]
    assert logged["feature_maps/hook/layer2.0.conv1"] == [0, 10, 20]


@pytest.mark.slow
def test_lightning_example(tmp_path: Path) -> None:
    out = run_example("train_lightning.py", "--steps", "30", "--every", "10", "--out",
                      str(tmp_path))
    assert "val/acc" in out
    logged = images(tmp_path / "lightning" / "version_0")
    assert logged["filters/model.stem.conv"] == [0, 10, 20]
    assert logged["feature_maps/hook/model.layer3.0.conv2"] == [0, 10, 20]
