"""Time-lapse export: a GIF of one layer over training, read from the event files alone."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from torch_featureviz import TensorBoardWriter, cli
from torch_featureviz.viewer.timelapse import (
    LABEL_HEIGHT,
    _label,
    encode_timelapse,
    read_frames,
    timelapse_tag,
    write_timelapse,
)

STEPS = [0, 5, 10, 20]


def _write(logdir: Path, steps: list[int] = STEPS, prefix: str = "") -> None:
    with TensorBoardWriter(logdir) as tb:
        for i, step in enumerate(steps):
            maps = torch.rand(4, 6, 6, generator=torch.Generator().manual_seed(i))
            tb.log_feature_maps({"layer1.0.conv1": maps}, step)
            grid = torch.full((3, 8, 8), 40 * i, dtype=torch.uint8)
            tb.log_grid(f"{prefix}filters/shared_call1", grid, step)


def _frames(data: bytes) -> list[np.ndarray]:
    out = []
    with Image.open(io.BytesIO(data)) as im:
        for k in range(im.n_frames):
            im.seek(k)
            out.append(np.asarray(im.convert("RGB")))
    return out


def test_gif_has_one_labelled_frame_per_logged_step(tmp_path: Path) -> None:
    _write(tmp_path)
    path = write_timelapse(tmp_path, "layer1.0.conv1", view="hook")
    assert path == tmp_path / "timelapse_hook_layer1.0.conv1.gif"
    data = path.read_bytes()
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "GIF" and im.n_frames == len(STEPS)
        meta = json.loads(im.info["comment"])
    assert meta == {"tag": "feature_maps/hook/layer1.0.conv1", "steps": STEPS}
    frames = _frames(data)
    for step, frame in zip(STEPS, frames, strict=True):
        # The band above each frame is exactly the label "step <N>  <tag>" as drawn.
        label = np.asarray(_label(f"step {step}  {meta['tag']}", frame.shape[1]))  # type: ignore[call-overload]
        band = frame[:LABEL_HEIGHT]
        assert (np.abs(band.astype(int) - label.astype(int)) <= 8).all(), step
    # Frames differ below the label (the maps changed), and are scaled up to >= 256 px.
    assert frames[0].shape[1] >= 256
    assert not np.array_equal(frames[0][LABEL_HEIGHT:], frames[-1][LABEL_HEIGHT:])


def test_layer_key_spelling_prefix_and_resumed_steps(tmp_path: Path) -> None:
    _write(tmp_path / "run", prefix="G/")
    _write(tmp_path / "run", steps=[20, 30])  # a resumed run logs step 20 again
    tag = timelapse_tag("shared#1", "filters", prefix="G")
    assert tag == "G/filters/shared_call1"
    frames = read_frames(tmp_path / "run", tag)
    assert [s for s, _ in frames] == STEPS
    frames = read_frames(tmp_path / "run", "filters/shared_call1")
    assert [s for s, _ in frames] == [20, 30]


def test_errors_say_what_to_do(tmp_path: Path) -> None:
    _write(tmp_path / "a")
    with pytest.raises(ValueError, match=r"layers logged: layer1\.0\.conv1, shared_call1"):
        write_timelapse(tmp_path, "nope", view="hook")
    _write(tmp_path / "b")
    with pytest.raises(ValueError, match="several runs"):
        write_timelapse(tmp_path, "layer1.0.conv1", view="hook")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_frames(tmp_path / "missing", "filters/x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no TensorBoard event files"):
        read_frames(tmp_path / "empty", "filters/x")
    with pytest.raises(ValueError, match="view must be one of"):
        timelapse_tag("conv1", "weights")
    with pytest.raises(TypeError, match="layer must be"):
        timelapse_tag(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one frame"):
        encode_timelapse([])
    with pytest.raises(ValueError, match="duration_ms"):
        encode_timelapse([(0, b"")], duration_ms=0)


def test_cli_writes_the_gif_and_reports_bad_input(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    _write(tmp_path)
    out = tmp_path / "out" / "conv.gif"
    assert cli.main(["timelapse", str(tmp_path), "--layer", "layer1.0.conv1", "--view", "hook",
                     "-o", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    with Image.open(out) as im:
        assert im.n_frames == len(STEPS)
    assert cli.main(["timelapse", str(tmp_path), "--layer", "missing"]) == 2
    assert "no images under tag 'filters/missing'" in capsys.readouterr().err
