"""Issue 29 case 9: log directories given as fsspec URLs, read back with TensorBoard's loader."""

from __future__ import annotations

import io
import subprocess
import sys
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch
from PIL import Image

from tests.support.helpers import tiny_net
from torch_featureviz import FeatureMonitor, TensorBoardWriter, cli


def load_events(directory: Path):  # type: ignore[no-untyped-def]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(directory), size_guidance={"images": 0, "scalars": 0})
    ea.Reload()
    return ea


def load_remote(url: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Read a URL's event files back through fsspec, then parse them with TensorBoard."""
    fs, root = fsspec.core.url_to_fs(url)
    names = fs.ls(root, detail=False)
    assert names and all("events.out.tfevents." in n for n in names), names
    local = tmp_path / f"copy-{uuid.uuid4().hex[:6]}"
    local.mkdir()
    for name in names:
        (local / name.rsplit("/", 1)[-1]).write_bytes(fs.cat_file(name))
    return load_events(local)


def memory_url() -> str:
    return f"memory://featureviz-tests/{uuid.uuid4().hex}"


def planted_grid() -> torch.Tensor:
    grid = torch.zeros(1, 8, 8, dtype=torch.uint8)
    grid[0, torch.arange(8), torch.arange(8)] = 255  # a diagonal
    grid[0, 0, 7] = 128
    return grid


def decoded(event) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.asarray(Image.open(io.BytesIO(event.encoded_image_string)))


@pytest.mark.parametrize("scheme", ["memory", "file"])
def test_writer_writes_to_a_url_and_tensorboard_reads_it(scheme: str, tmp_path: Path) -> None:
    url = memory_url() if scheme == "memory" else f"file://{tmp_path / 'run'}"
    with TensorBoardWriter(url) as tb:
        assert tb.log_dir == url
        tb.log_grid("planted", planted_grid(), step=3)
        tb.log_scalar("loss", 0.25, step=3)
    ea = load_remote(url, tmp_path) if scheme == "memory" else load_events(tmp_path / "run")
    (image,) = ea.Images("planted")
    assert image.step == 3
    assert np.array_equal(decoded(image), planted_grid()[0].numpy())
    assert [(e.step, e.value) for e in ea.Scalars("loss")] == [(3, 0.25)]


def test_monitor_logs_to_a_memory_url(tmp_path: Path) -> None:
    url = memory_url()
    model = tiny_net()
    monitor = FeatureMonitor(model, url, every=2, on_full="block", probe=torch.randn(1, 3, 16, 16))
    for _ in range(4):
        model(torch.randn(2, 3, 16, 16))
        monitor.step()
    monitor.close()
    assert monitor.log_dir == url
    ea = load_remote(url, tmp_path)
    assert [e.step for e in ea.Images("filters/stem.0")] == [0, 2]
    assert [e.step for e in ea.Images("feature_maps/probe/stem.0")] == [0, 2]
    assert "activations/stem.0/dead_channels" in ea.Tags()["scalars"]


def test_cli_logdir_url(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = memory_url()
    model = "tests.support.helpers:TinyNet"
    code = cli.main(["filters", "--model-class", model, "--logdir", url, "-q"])
    assert code == 0, capsys.readouterr().err
    ea = load_remote(url, tmp_path)
    assert [e.step for e in ea.Images("filters/stem.0")] == [0]


@pytest.mark.slow
def test_lightning_callback_logs_to_a_url(tmp_path: Path) -> None:
    from tests.test_lightning import Module, loader, trainer
    from torch_featureviz.integrations.lightning import FeatureMonitorCallback

    url = memory_url()
    callback = FeatureMonitorCallback(every=2, on_full="block", log_dir=url)
    trainer(tmp_path, callback, logger=False, max_steps=4).fit(Module(), loader())
    ea = load_remote(url, tmp_path)
    assert [e.step for e in ea.Images("filters/net.stem.0")] == [0, 2]


def test_a_url_without_its_filesystem_names_the_package(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    if _installed("s3fs"):
        pytest.skip("s3fs is installed here")
    with pytest.raises(ImportError, match=r"pip install s3fs"):
        TensorBoardWriter("s3://bucket/runs")
    with pytest.raises(ImportError, match=r"pip install s3fs"):
        FeatureMonitor(tiny_net(), "s3://bucket/runs")
    code = cli.main(["filters", "--model-class", "tests.support.helpers:TinyNet", "--logdir", "s3://b/r"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "pip install s3fs" in err, err
    with pytest.raises(ValueError, match=r"no filesystem for nosuchfs://"):
        TensorBoardWriter("nosuchfs://bucket/runs")
    # Without fsspec itself: the extra to install.
    monkeypatch.setitem(sys.modules, "fsspec", None)
    with pytest.raises(ImportError, match=r"pip install torch-featureviz\[remote\]"):
        TensorBoardWriter(memory_url())


def _installed(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def test_local_paths_never_import_fsspec(tmp_path: Path) -> None:
    code = (
        "import sys, torch_featureviz\n"
        f"torch_featureviz.TensorBoardWriter({str(tmp_path)!r}).close()\n"
        "assert 'fsspec' not in sys.modules, 'fsspec imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
