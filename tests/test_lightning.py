"""The Lightning callback: a real Trainer on CPU, its TensorBoard logger, lazy import."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch import nn

from tests.support.helpers import hook_count, tiny_net
from torch_featureviz.integrations.lightning import FeatureMonitorCallback


def read_events(log_dir: str | Path):  # type: ignore[no-untyped-def]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0})
    ea.Reload()
    return ea


class Module(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_net()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        return torch.optim.SGD(self.parameters(), lr=0.05)


def loader(n: int = 24, batch: int = 4) -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(
        torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, 4, (n,), generator=g)
    )
    return torch.utils.data.DataLoader(data, batch_size=batch)


def trainer(tmp_path: Path, callback: FeatureMonitorCallback, **kwargs) -> Trainer:  # type: ignore[no-untyped-def]
    defaults = dict(
        default_root_dir=str(tmp_path),
        accelerator="cpu",
        devices=1,
        max_steps=6,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        log_every_n_steps=1,
        callbacks=[callback],
    )
    defaults.update(kwargs)
    return Trainer(**defaults)


def test_logs_through_the_trainers_tensorboard_logger(tmp_path: Path) -> None:
    logger = TensorBoardLogger(str(tmp_path), name="run")
    callback = FeatureMonitorCallback(
        every=2, on_full="block", probe=torch.randn(1, 3, 16, 16), max_channels=4
    )
    module = Module()
    trainer(tmp_path, callback, logger=logger).fit(module, loader())
    assert callback.monitor is None  # closed at fit end
    assert hook_count(module) == 0
    ea = read_events(logger.log_dir)
    # the callback's tags and Lightning's own scalar land in the same event file
    assert [e.step for e in ea.Images("feature_maps/hook/net.stem.0")] == [0, 2, 4]
    assert [e.step for e in ea.Images("feature_maps/probe/net.stem.0")] == [0, 2, 4]
    assert [e.step for e in ea.Images("filters/net.blocks.0.conv")] == [0, 2, 4]
    assert "train_loss" in ea.Tags()["scalars"]
    assert "activations/net.shared_call1/dead_channels" in ea.Tags()["scalars"]


def test_without_a_tensorboard_logger_writes_under_default_root_dir(tmp_path: Path) -> None:
    callback = FeatureMonitorCallback(every=3)
    trainer(tmp_path, callback, logger=CSVLogger(str(tmp_path))).fit(Module(), loader())
    ea = read_events(tmp_path / "featureviz")
    assert [e.step for e in ea.Images("filters/net.stem.0")] == [0, 3]


def test_gradient_accumulation_captures_once_per_global_step(tmp_path: Path) -> None:
    callback = FeatureMonitorCallback(every=1, on_full="block", log_dir=tmp_path / "fv")
    t = trainer(tmp_path, callback, logger=False, max_steps=3, accumulate_grad_batches=2)
    t.fit(Module(), loader())
    ea = read_events(tmp_path / "fv")
    assert [e.step for e in ea.Images("feature_maps/hook/net.stem.0")] == [0, 1, 2]


def test_bad_probe_fails_at_fit_start(tmp_path: Path) -> None:
    callback = FeatureMonitorCallback(every=1, on_full="block", probe=torch.randn(1, 2, 16, 16))
    module = Module()
    with pytest.raises(ValueError, match=r"probe of shape \(1, 2, 16, 16\) does not fit"):
        trainer(tmp_path, callback, logger=False).fit(module, loader())
    assert hook_count(module) == 0


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"every": 0}, ValueError, "every must be >= 1"),
        ({"every": "10"}, TypeError, "every must be a positive int"),
        ({"probe": [1.0]}, TypeError, "probe must be a torch.Tensor"),
        ({"log_dir": 3}, TypeError, "log_dir must be a path"),
        ({"rank_zero_only": False}, TypeError, "sets 'rank_zero_only' itself"),
        ({"max_chanels": 4}, TypeError, "unknown option 'max_chanels'. Did you mean 'max_chan"),
        ({"cmap": "viridiss"}, ValueError, "cmap 'viridiss' is not a matplotlib colormap"),
        ({"on_full": "wait"}, ValueError, "on_full must be one of 'drop', 'block'"),
        ({"close_timeout": 1e300}, ValueError, "close_timeout must be a finite number >= 0"),
        ({"log_dir": ""}, ValueError, "log_dir must not be empty"),
    ],
)
def test_bad_options(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        FeatureMonitorCallback(**kwargs)


def test_importing_the_package_does_not_import_lightning() -> None:
    code = textwrap.dedent(
        """
        import sys, torch_featureviz
        assert "lightning" not in sys.modules and "pytorch_lightning" not in sys.modules
        cb = torch_featureviz.FeatureMonitorCallback
        assert "lightning" in sys.modules, "lazy attribute did not import the callback"
        print(cb.__name__)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "FeatureMonitorCallback"


def test_missing_lightning_names_the_extra() -> None:
    code = textwrap.dedent(
        """
        import sys
        sys.modules["lightning"] = None  # makes `import lightning...` raise ImportError
        sys.modules["lightning.pytorch"] = None
        sys.modules["pytorch_lightning"] = None
        try:
            import torch_featureviz.integrations.lightning
        except ImportError as e:
            print(e)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "pip install torch-featureviz[lightning]" in out.stdout


def test_other_ranks_do_nothing(tmp_path: Path) -> None:
    module = Module()

    class NotRankZero:  # the parts of a Trainer the callback reads
        is_global_zero = False
        global_step = 0
        loggers: list = []
        default_root_dir = str(tmp_path)
        strategy = types.SimpleNamespace(model=module)  # a DDP-like, unsharded model

    callback = FeatureMonitorCallback(every=1, on_full="block")
    callback.on_fit_start(NotRankZero(), module)  # type: ignore[arg-type]
    callback.on_train_batch_start(NotRankZero(), module, None, 0)  # type: ignore[arg-type]
    module(torch.randn(2, 3, 16, 16))
    callback.on_train_batch_end(NotRankZero(), module, None, None, 0)  # type: ignore[arg-type]
    assert callback.monitor is None and hook_count(module) == 0
    assert not (tmp_path / "featureviz").exists()


class FrozenModule(Module):
    """Weights that never change (lr 0), so a hook-free reference holds at every step; with
    validation and test steps."""

    def validation_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))

    def test_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        x, y = batch
        self.log("test_loss", nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_validation_accumulation_validate_and_test_log_only_training_batches(
    tmp_path: Path,
) -> None:
    from tests.support.helpers import decode, reference_maps
    from torch_featureviz.render.grids import make_feature_grid

    train = loader(n=24, batch=2)  # 12 micro-batches, 6 optimizer steps
    constant = torch.utils.data.TensorDataset(
        torch.full((4, 3, 16, 16), 7.0), torch.zeros(4, dtype=torch.long)
    )
    val = torch.utils.data.DataLoader(constant, batch_size=2)
    callback = FeatureMonitorCallback(
        every=1, on_full="block", log_dir=tmp_path / "fv", max_channels=None
    )
    module = FrozenModule()
    t = trainer(
        tmp_path,
        callback,
        logger=False,
        max_steps=6,
        accumulate_grad_batches=2,
        val_check_interval=4,  # validation inside the epoch, between optimizer steps
        limit_val_batches=1,
        num_sanity_val_steps=1,
    )
    t.fit(module, train, val)
    t.validate(module, val)  # inference_mode: never a training map
    t.test(module, val)
    assert hook_count(module) == 0
    events = read_events(tmp_path / "fv").Images("feature_maps/hook/net.stem.0")
    assert [e.step for e in events] == [0, 1, 2, 3, 4, 5]
    micro = [x for x, _ in train]
    for event in events:
        last = micro[2 * event.step + 1]  # the step's last micro-batch forward
        expected = reference_maps(module.net, last)["stem.0"][0]
        assert torch.equal(decode(event), make_feature_grid(expected)), event.step
