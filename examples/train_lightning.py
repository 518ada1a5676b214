"""The same, with PyTorch Lightning: one callback (``pip install torch-featureviz[lightning]``).

    python examples/train_lightning.py        # ~30 s on 2 CPU cores
    tensorboard --logdir runs/lightning --samples_per_plugin images=0

The callback logs through the trainer's TensorBoard logger, next to your own metrics, on global
rank zero only.
"""

from __future__ import annotations

import argparse

import torch
from lightning.pytorch import LightningModule, Trainer, seed_everything
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from torch_featureviz import tensorboard_command
from torch_featureviz.demo import build_demo_model, demo_probe, make_pattern_dataset
from torch_featureviz.integrations.lightning import FeatureMonitorCallback


class PatternClassifier(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.model = build_demo_model()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = nn.functional.cross_entropy(logits, y)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc", (logits.argmax(1) == y).float().mean(), prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        x, y = batch
        self.log("val/acc", (self(x).argmax(1) == y).float().mean(), prog_bar=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=2e-3)


def loader(n: int, seed: int, shuffle: bool) -> DataLoader:
    x, y = make_pattern_dataset(n, seed=seed)
    return DataLoader(TensorDataset((x - 0.5) / 0.5, y), batch_size=64, shuffle=shuffle)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--out", default="runs")
    args = parser.parse_args()

    seed_everything(0, verbose=False)
    logger = TensorBoardLogger(args.out, name="lightning", version=0)
    trainer = Trainer(
        accelerator="cpu",
        max_steps=args.steps,
        logger=logger,
        callbacks=[FeatureMonitorCallback(every=args.every, probe=demo_probe(64))],
        log_every_n_steps=10,
        val_check_interval=min(args.steps, 64),
        check_val_every_n_epoch=None,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(PatternClassifier(), loader(4096, 0, True), loader(800, 1, False))
    print(f"val/acc {trainer.callback_metrics['val/acc'].item():.1%}")
    print(f"view: {tensorboard_command(logger.log_dir)}")


if __name__ == "__main__":
    main()
