"""A PyTorch Lightning callback over :class:`~torch_featureviz.FeatureMonitor`.

Lightning is an optional extra (``pip install torch-featureviz[lightning]``); importing
``torch_featureviz`` never imports it. The callback logs through the trainer's TensorBoard
logger (its ``SummaryWriter``) when there is one, else into ``<default_root_dir>/featureviz``,
and only on global rank zero. Under DDP the other ranks do no work at all; under sharded
training (``FSDPStrategy``, or ``fully_shard`` in ``configure_model``) every rank has a monitor
that takes part in the probe passes and filter gathers before sampled steps, and only global
rank zero writes. The global step is the trainer's; each batch start announces its step to the
monitor (:meth:`~torch_featureviz.FeatureMonitor.prepare`), so a capture's filters and probe
maps are read with the weights that batch trains with.

Example::

    from torch_featureviz.integrations.lightning import FeatureMonitorCallback

    trainer = lightning.Trainer(callbacks=[FeatureMonitorCallback(every=100, probe=image)])
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

try:  # the unified package first, then the standalone one
    from lightning.pytorch import Callback, LightningModule, Trainer
    from lightning.pytorch.loggers import TensorBoardLogger
except ImportError:  # pragma: no cover - exercised only without `lightning`
    try:
        from pytorch_lightning import (  # type: ignore[assignment]
            Callback,
            LightningModule,
            Trainer,
        )
        from pytorch_lightning.loggers import TensorBoardLogger  # type: ignore[assignment]
    except ImportError as e:
        raise ImportError(
            "torch_featureviz.integrations.lightning needs PyTorch Lightning, which is not "
            "installed. "
            "Install the extra: pip install torch-featureviz[lightning]"
        ) from e

from torch import nn

from torch_featureviz._validation import ModelInput, check_model_input
from torch_featureviz.monitor.config import MonitorConfig
from torch_featureviz.monitor.feature_monitor import FeatureMonitor
from torch_featureviz.monitor.sharding import sharding_of

__all__ = ["FeatureMonitorCallback"]


class FeatureMonitorCallback(Callback):
    """Log filters, feature maps and activation statistics every ``every`` training steps.

    Args:
        every: capture every ``every`` global steps (optimizer steps).
        probe: a fixed input (a tensor, a tuple or a dict of inputs), logged under
            ``feature_maps/probe/<layer>``; moved to the module's device and dtype at every
            capture.
        log_dir: where to write when the trainer has no TensorBoard logger; default
            ``<trainer.default_root_dir>/featureviz``.
        **monitor_kwargs: any other :class:`~torch_featureviz.FeatureMonitor` option
            (``layers``, ``max_channels``, ``every_seconds``, ``histograms``, ``name``, ...).

    Lightning runs validation, ``Trainer.validate`` and ``Trainer.test`` under ``no_grad`` or
    ``inference_mode``: those batches are never taken for the training batch's maps.

    Raises:
        TypeError, ValueError: bad options, at construction; a probe that does not fit the
            model or a model without Conv2d layers, at fit start.

    Example:
        >>> from torch_featureviz.integrations import FeatureMonitorCallback
        >>> callback = FeatureMonitorCallback(every=100, layers=["conv1", "layer1.*"])
        >>> # lightning.Trainer(callbacks=[callback]).fit(model)  # logs every 100 steps
    """

    def __init__(
        self,
        every: int = 100,
        *,
        probe: ModelInput | None = None,
        log_dir: str | os.PathLike[str] | None = None,
        layers: str | Iterable[str] | None = None,
        **monitor_kwargs: Any,
    ) -> None:
        super().__init__()
        for reserved in ("rank_zero_only", "start_step"):
            if reserved in monitor_kwargs:
                raise TypeError(
                    f"FeatureMonitorCallback sets {reserved!r} itself (Lightning's rank-zero "
                    "convention and the trainer's global step); remove it."
                )
        # Every option is checked here, at construction, with the monitor's own messages.
        MonitorConfig.from_options(
            {"every": every, "layers": layers, **monitor_kwargs}, what="FeatureMonitorCallback"
        )
        if probe is not None:
            check_model_input(probe, name="probe")
        if log_dir is not None and not isinstance(log_dir, (str, os.PathLike)):
            raise TypeError(f"log_dir must be a path or None, got {type(log_dir).__name__}.")
        if log_dir is not None and not os.fspath(log_dir):
            raise ValueError("log_dir must not be empty; pass a directory or None.")
        self.every = every
        self.probe = probe
        self.log_dir = log_dir
        self.layers = layers
        self.monitor_kwargs = monitor_kwargs
        #: The monitor, on global rank zero between fit start and fit end.
        self.monitor: FeatureMonitor | None = None
        self._batch_step: int | None = None
        self._last_logged: int | None = None

    @property
    def state_key(self) -> str:
        return f"FeatureMonitorCallback[every={self.every}]"

    def _target(self, trainer: Trainer) -> Any:
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                return logger.experiment  # its SummaryWriter; flushed, never closed by us
        if self.log_dir is not None:
            return self.log_dir
        return Path(trainer.default_root_dir) / "featureviz"

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Every fit attaches afresh: a re-fit (often resumed from an earlier checkpoint, so its
        # steps repeat the last fit's) must not inherit the last fit's steps or monitor.
        self._close()
        self._batch_step = self._last_logged = None
        # FSDPStrategy wraps the module (FSDP(pl_module)); that wrapper is what runs a forward.
        trained = trainer.strategy.model
        if not isinstance(trained, nn.Module) or sharding_of(trained) is None:
            trained = None  # not sharded
            if not trainer.is_global_zero:
                return
        sharded = trained is not None
        self.monitor = FeatureMonitor(
            pl_module if trained is None else trained,
            self._target(trainer),
            every=self.every,
            probe=self.probe,
            layers=self.layers,
            # Not sharded: this is global rank zero, the only one with a monitor. Sharded:
            # every rank has one and takes part in probe passes and filter gathers; the
            # monitor's rank (torch.distributed's) is the trainer's global rank.
            rank_zero_only=sharded,
            start_step=trainer.global_step,
            **self.monitor_kwargs,
        )

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.monitor is None:
            return
        step = trainer.global_step
        self._batch_step = step
        if step != self._last_logged:  # gradient accumulation: one capture per global step
            self.monitor.prepare(step)

    def on_train_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        monitor, step = self.monitor, self._batch_step
        if monitor is None or step is None or step == self._last_logged:
            return
        if trainer.global_step == step:
            return  # accumulating gradients: the optimizer has not stepped yet
        if monitor.step(step):
            self._last_logged = step

    def _close(self) -> None:
        monitor, self.monitor = self.monitor, None
        if monitor is not None:
            monitor.close()

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._close()

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        monitor, self.monitor = self.monitor, None
        if monitor is not None:
            try:
                monitor.close()
            except RuntimeError:
                pass  # the training error is the one to report

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._close()
