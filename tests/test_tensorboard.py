import io
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import IMAGES, SCALARS, EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from tests.support.helpers import tiny_net
from torch_featureviz import (
    FeatureCapture,
    TensorBoardWriter,
    chain_feature_maps,
    find_conv_layers,
    layer_tag,
    make_feature_grid,
    make_filter_grid,
    tensorboard_command,
)


def read_images(log_dir) -> dict[str, list]:
    acc = EventAccumulator(str(log_dir), size_guidance={IMAGES: 0, SCALARS: 0})
    acc.Reload()
    return {tag: acc.Images(tag) for tag in acc.Tags()["images"]}


def decode(event) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(event.encoded_image_string)))


def test_every_tag_and_image_size_read_back(tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    x = torch.randn(1, 3, 64, 64)
    with FeatureCapture(model, max_channels=16) as cap, torch.no_grad():
        model(x)
    chain = chain_feature_maps(model, x, max_channels=16)
    with TensorBoardWriter(tmp_path) as tb:
        f_tags = tb.log_filters(model, step=3)
        h_tags = tb.log_feature_maps(cap.maps, step=3)
        c_tags = tb.log_feature_maps(chain, step=3, mode="chain")
        i_tag = tb.log_image(x, step=3)
    images = read_images(tmp_path)
    convs = find_conv_layers(model)
    assert set(f_tags) == {f"filters/{n}" for n in convs}
    assert set(h_tags) == {f"feature_maps/hook/{n}" for n in cap.maps}
    assert set(c_tags) == {f"feature_maps/chain/{n}" for n in chain}
    assert set(images) == set(f_tags) | set(h_tags) | set(c_tags) | {i_tag}
    for name, conv in convs.items():
        (ev,) = images[f"filters/{name}"]
        grid = make_filter_grid(conv)
        assert ev.step == 3 and (ev.height, ev.width) == tuple(grid.shape[1:])
        assert np.array_equal(
            decode(ev).reshape(grid.shape[1], grid.shape[2], -1), grid.permute(1, 2, 0).numpy()
        )
    for name, m in cap.maps.items():
        (ev,) = images[f"feature_maps/hook/{name}"]
        grid = make_feature_grid(m)
        pixels = decode(ev)
        assert pixels.ndim == 2  # grayscale grids are single-channel PNGs
        assert np.array_equal(pixels, grid[0].numpy())
    (ev,) = images["input/image"]
    assert decode(ev).shape == (64, 64, 3)


def test_accepts_an_existing_summary_writer_and_does_not_close_it(tmp_path):
    sw = SummaryWriter(str(tmp_path))
    with TensorBoardWriter(sw) as tb:
        tb.log_filters(tiny_net(), step=1)
        tb.log_scalar("loss", 0.5, step=1)
    sw.add_scalar("after", 1.0, 2)  # still usable
    sw.close()
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    assert "filters/stem.0" in acc.Tags()["images"]
    assert {"loss", "after"} <= set(acc.Tags()["scalars"])


def test_steps_accumulate_for_scrubbing(tmp_path):
    model = tiny_net()
    with TensorBoardWriter(tmp_path) as tb:
        for step in range(3):
            tb.log_filters(model, step=step * 10, layers="stem.0")
    (events,) = read_images(tmp_path).values()
    assert [e.step for e in events] == [0, 10, 20]


def test_tags_are_sanitised_stably_and_unique():
    assert layer_tag("layer1.0.conv1") == "layer1.0.conv1"
    assert layer_tag("shared#1") == "shared_call1"
    assert layer_tag("") == "model"
    for hostile in ("a b/c\nd", "ünï", "/lead", "x#y"):
        tag = layer_tag(hostile)
        assert re.fullmatch(r"[A-Za-z0-9_.-]+", tag), tag
        assert layer_tag(hostile) == tag  # stable
    assert layer_tag("a b").startswith("a_b-") and layer_tag("a b") != layer_tag("a/b")
    assert layer_tag("a b#2") == layer_tag("a b") + "_call2"


def test_user_controlled_names_cannot_break_tags(tmp_path):
    model = torch.nn.ModuleDict(
        {"my conv/α": torch.nn.Conv2d(3, 2, 1), "my_conv__": torch.nn.Conv2d(3, 2, 1)}
    )
    with TensorBoardWriter(tmp_path) as tb:
        tags = tb.log_filters(model, step=0)
    assert tags[1] == "filters/my_conv__" and tags[0].startswith("filters/my_conv__-")
    assert set(read_images(tmp_path)) == set(tags)


def test_writer_errors(tmp_path):
    with pytest.raises(TypeError, match="log_dir must be a directory path or a"):
        TensorBoardWriter(123)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError, match="cannot write to"):
        TensorBoardWriter(blocker / "sub")
    with pytest.raises(ValueError, match="png_level must be an int in 0..9"):
        TensorBoardWriter(tmp_path, png_level=11)
    tb = TensorBoardWriter(tmp_path / "ok")
    tb.close()
    tb.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        tb.log_filters(tiny_net(), step=0)
    with TensorBoardWriter(tmp_path / "ok2") as tb2:
        with pytest.raises(ValueError, match="mode must be a simple word"):
            tb2.log_feature_maps({"a": torch.randn(2, 3, 3)}, step=0, mode="a/b")
        with pytest.raises(TypeError, match="maps must be a"):
            tb2.log_feature_maps([torch.randn(2, 3, 3)], step=0)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="model_or_layers must be a model or a"):
            tb2.log_filters([1], step=0)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="values must be a {tag: number} mapping, got list"):
            tb2.log_scalars([("a", 1.0)], step=0)  # type: ignore[arg-type]
    for bad, kind in ((0, ValueError), (2.0, TypeError), (True, TypeError)):
        with pytest.raises(kind, match="encode_threads must be"):
            TensorBoardWriter(tmp_path / "ok3", encode_threads=bad)  # type: ignore[arg-type]


def test_scalars_of_one_call_are_separate_tags_at_one_step(tmp_path):
    values = {"activations/a/mean": 0.25, "activations/a/std": torch.tensor(1.5), "x": 3}
    with TensorBoardWriter(tmp_path) as tb:
        tb.log_scalars(values, step=7)
        tb.log_scalar("x", 4.0, step=8)
    acc = EventAccumulator(str(tmp_path), size_guidance={SCALARS: 0})
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == set(values)
    assert [(e.step, e.value) for e in acc.Scalars("activations/a/mean")] == [(7, 0.25)]
    assert [(e.step, e.value) for e in acc.Scalars("activations/a/std")] == [(7, 1.5)]
    assert [(e.step, e.value) for e in acc.Scalars("x")] == [(7, 3.0), (8, 4.0)]


@pytest.mark.parametrize("threads", [1, 3])
def test_parallel_and_serial_encoding_write_the_same_images(tmp_path, threads):
    torch.manual_seed(0)
    maps = {f"l{i}": torch.randn(8, 6 + i, 5) for i in range(5)}
    with TensorBoardWriter(tmp_path, encode_threads=threads) as tb:
        tags = tb.log_feature_maps(maps, step=2)
    images = read_images(tmp_path)
    assert tags == [f"feature_maps/hook/l{i}" for i in range(5)]  # in the maps' order
    for name, m in maps.items():
        (ev,) = images[f"feature_maps/hook/{name}"]
        assert ev.step == 2 and np.array_equal(decode(ev), make_feature_grid(m)[0].numpy())


def test_tensorboard_command_keeps_every_image():
    cmd = tensorboard_command(Path("runs/x"))
    assert cmd.startswith("tensorboard --logdir runs/x") and "--samples_per_plugin images=" in cmd


def test_own_event_file_records_read_back_with_checksums(tmp_path):
    import torch
    from tensorboard.compat.tensorflow_stub import errors
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import PyRecordReader_New

    from torch_featureviz import TensorBoardWriter

    with TensorBoardWriter(tmp_path) as tb:
        tb.log_feature_maps({"a": torch.randn(64, 40, 40), "b": torch.randn(2, 3, 3)}, step=0)
    (event_file,) = [p for p in tmp_path.iterdir() if p.name.startswith("events")]
    reader = PyRecordReader_New(os.fspath(event_file))  # verifies both CRCs of every record
    records = 0
    with pytest.raises(errors.OutOfRangeError):
        while True:
            reader.GetNext()
            records += 1
    assert records == 2  # file version + one event holding both images (one record per call)
