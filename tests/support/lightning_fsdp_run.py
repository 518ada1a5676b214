"""A Lightning FSDPStrategy run on 2 CPU processes, with FeatureMonitorCallback.

Run as a script (``python -m tests.support.lightning_fsdp_run OUT_DIR``): Lightning's launcher
starts rank 1 by running this script again. Two things Lightning needs on CPU, neither of which
touches the monitor:

- ``FSDPStrategy`` refuses ``accelerator="cpu"`` by name, so the run uses a subclass that
  changes nothing else (Lightning's check compares the exact type);
- Lightning passes FSDP no ``device_id`` on CPU, which FSDP1 refuses there, so the module
  wraps its own blocks in ``configure_model`` (Lightning's documented manual wrapping),
  passing ``device_id=cpu``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def main(out: Path) -> None:
    import lightning
    import torch.distributed as dist
    from lightning.pytorch.loggers import TensorBoardLogger
    from lightning.pytorch.strategies import FSDPStrategy
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    from tests.support.helpers import Block, tiny_net
    from torch_featureviz.integrations.lightning import FeatureMonitorCallback

    class CPUFSDPStrategy(FSDPStrategy):
        """Lightning's FSDPStrategy, unchanged, past its GPU-only accelerator check."""

    class Module(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = tiny_net()

        def configure_model(self) -> None:
            if not isinstance(self.net, FullyShardedDataParallel):
                self.net = FullyShardedDataParallel(
                    self.net, device_id=torch.device("cpu"),
                    auto_wrap_policy=ModuleWrapPolicy({Block}),
                )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
            return self(batch[0]).square().mean()

        def configure_optimizers(self):  # type: ignore[no-untyped-def]
            return torch.optim.SGD(self.parameters(), lr=0.05)

    torch.set_num_threads(1)
    data = torch.utils.data.TensorDataset(
        torch.randn(16, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    )
    callback = FeatureMonitorCallback(
        every=2, probe=torch.randn(1, 3, 16, 16), on_full="block", max_channels=4
    )
    trainer = lightning.Trainer(
        accelerator="cpu", devices=2, strategy=CPUFSDPStrategy(), max_steps=5,
        logger=TensorBoardLogger(str(out), name="lightning"), callbacks=[callback],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    seen: dict = {}
    original = callback.on_fit_end

    def on_fit_end(trainer, pl_module):  # type: ignore[no-untyped-def]
        monitor = callback.monitor
        seen.update(
            sharding=monitor.sharding, active=monitor.active, captured=monitor.captured,
            dropped=monitor.dropped,
        )
        original(trainer, pl_module)

    callback.on_fit_end = on_fit_end  # type: ignore[method-assign]
    trainer.fit(Module(), torch.utils.data.DataLoader(data, batch_size=2))
    dist.barrier()  # both ranks still in step after the monitor closed
    seen["barrier_after_close"] = True
    (out / f"result{trainer.global_rank}.json").write_text(json.dumps(seen))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
