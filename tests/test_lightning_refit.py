"""Issue 29 case 6: the same FeatureMonitorCallback across fits, resuming from a checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from tests.support.helpers import hook_count
from tests.test_lightning import Module, loader, trainer
from torch_featureviz.integrations.lightning import FeatureMonitorCallback


def steps_per_file(log_dir: Path, tag: str) -> list[list[int]]:
    """Each event file's steps for ``tag``, read without TensorBoard's purge of repeated steps
    (which would hide whether the second fit logged a step the first one had)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found = []
    for f in sorted(log_dir.glob("events.out.tfevents.*")):
        ea = EventAccumulator(str(f), size_guidance={"images": 0}, purge_orphaned_data=False)
        ea.Reload()
        found.append([e.step for e in ea.Images(tag)] if tag in ea.Tags()["images"] else [])
    return found


@pytest.mark.slow
@pytest.mark.parametrize("same_trainer", [True, False], ids=["same-trainer", "new-trainer"])
def test_refit_from_an_earlier_checkpoint_logs_again_at_the_trainers_steps(
    tmp_path: Path, same_trainer: bool
) -> None:
    torch.manual_seed(0)
    callback = FeatureMonitorCallback(every=2, on_full="block", log_dir=tmp_path / "fv")
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=3, save_top_k=-1)
    module = Module()
    t = trainer(
        tmp_path, callback, logger=False, max_steps=6, enable_checkpointing=True,
        callbacks=[callback, ckpt],
    )
    t.fit(module, loader())
    (early,) = (tmp_path / "ckpt").glob("*step=3.ckpt")
    # Second fit with the same callback, resumed from step 3 (the first fit logged step 4):
    # steps 4..8 run again, and the sampled ones are logged at the trainer's global step.
    if same_trainer:
        t.fit_loop.epoch_loop.max_steps = 9
    else:
        t = trainer(tmp_path, callback, logger=False, max_steps=9, callbacks=[callback])
    t.fit(module, loader(), ckpt_path=str(early))
    assert t.global_step == 9
    assert callback.monitor is None and hook_count(module) == 0
    assert steps_per_file(tmp_path / "fv", "filters/net.stem.0") == [[0, 2, 4], [4, 6, 8]]
    assert steps_per_file(tmp_path / "fv", "feature_maps/hook/net.stem.0") == [[0, 2, 4], [4, 6, 8]]
