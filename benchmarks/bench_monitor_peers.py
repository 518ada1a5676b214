"""Benchmark FeatureMonitor against its peers on the same training loop.

The peers, each attached the way its users attach it, timed step by step beside this package's
monitor in one interleaved run (see :func:`benchmarks.bench_monitor_throughput.run_throughput`
for the method): hand-written hooks with ``make_grid`` + ``add_image`` + ``add_histogram``,
``wandb.watch(log="all")`` (offline) and fastai's ``ActivationStats``, when installed (see
``benchmarks/requirements-peers.txt``). A peer that is not installed, or cannot run, is reported,
not fatal.

Run: ``python -m benchmarks.bench_monitor_peers [--quick] [--peers auto|none|NAME,...]``. Prints
a table, writes ``benchmarks/results/monitor_peers_cpu.json``.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Any

import torch
from torch import nn

from benchmarks._harness import importable
from benchmarks._monitor_workload import Subject, Trainer
from benchmarks.bench_monitor_throughput import (
    build_parser,
    check_args,
    finish,
    measure_workloads,
    new_result,
    saver,
)

__all__ = ["PEERS", "available_peers", "main"]


class _HandWritten(Subject):
    """The monitor users write today, on the training thread.

    A forward hook per conv keeps ``output.detach()`` on every forward; every ``every`` steps
    the loop logs, per conv, ``make_grid`` of sample 0's first 16 channels with
    ``SummaryWriter.add_image``, and ``add_histogram`` of the activation and of the weights.
    """

    name = "hand-written hooks + make_grid + add_image + add_histogram"
    channels = 16

    def __init__(self, trainer: Trainer, log_dir: str, every: int) -> None:
        super().__init__(trainer, log_dir, every)
        from torch.utils.tensorboard import SummaryWriter

        from torch_featureviz import find_conv_layers

        self.writer = SummaryWriter(log_dir)
        self.acts: dict[str, torch.Tensor] = {}
        self.convs = find_conv_layers(trainer.model)
        self.handles: list[Any] = []
        self.attach()

    toggles = True

    def attach(self) -> None:
        self.handles = [
            m.register_forward_hook(functools.partial(self._hook, n)) for n, m in self.convs.items()
        ]

    def detach(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def _hook(self, name: str, module: nn.Module, args: Any, output: torch.Tensor) -> None:
        self.acts[name] = output.detach()

    def after_step(self) -> None:
        from torchvision.utils import make_grid

        step = self.calls
        super().after_step()
        if step % self.every:
            return
        for name, act in self.acts.items():
            maps = act[0, : self.channels].float().unsqueeze(1)
            grid = make_grid(maps, nrow=4, normalize=True, scale_each=True)
            self.writer.add_image(f"feature_maps/{name}", grid, step)
            self.writer.add_histogram(f"activations/{name}", act.float(), step)
            self.writer.add_histogram(f"weights/{name}", self.convs[name].weight.detach(), step)

    def settle(self) -> None:
        self.writer.flush()

    def close(self) -> dict[str, Any]:
        self.detach()
        self.writer.close()
        return {}


class _WandbWatch(Subject):
    """``wandb.watch(model, log="all", log_freq=every)``, offline, into ``log_dir``.

    wandb's hooks log into the global run, so every watched model shares one offline run
    (started by the first, finished by :meth:`finish`). The loop calls ``wandb.log``
    every ``every`` steps, with and without the watch (the twin's steps do too), so the ratios
    are the watch's alone.
    """

    name = 'wandb.watch(log="all"), offline'

    def __init__(self, trainer: Trainer, log_dir: str, every: int) -> None:
        super().__init__(trainer, log_dir, every)
        import wandb

        self.wandb = wandb
        if wandb.run is None:
            os.environ["WANDB_MODE"] = "offline"
            os.environ["WANDB_SILENT"] = "true"
            os.makedirs(log_dir, exist_ok=True)
            wandb.init(mode="offline", dir=log_dir, project="featureviz-bench")
        wandb.watch(trainer.model, log="all", log_freq=min(every, 2**31 - 1))
        self.base_calls = 0

    def _log(self, step: int) -> None:
        if step % self.every == 0:
            self.wandb.log({"step": step})

    def after_step(self) -> None:
        step = self.calls
        super().after_step()
        self._log(step)

    def baseline_step(self) -> None:
        step = self.base_calls
        self.base_calls += 1
        self._log(step)

    def close(self) -> dict[str, Any]:
        self.wandb.unwatch(self.trainer.model)
        return {}

    @classmethod
    def finish(cls) -> None:
        wandb = sys.modules.get("wandb")
        if wandb is not None and wandb.run is not None:
            wandb.finish()


class _FastaiActivationStats(Subject):
    """fastai's ``ActivationStats(every=every)`` callback, driven on this loop as fastai's
    ``Learner`` drives it: ``before_fit`` once, then ``before_batch`` and ``after_batch``
    around each step (``training`` and ``train_iter`` as the Learner sets them).

    At its defaults it hooks every module with parameters (convs, norms, the head) on sampled
    steps only, and each hook reads the output's mean, std and near-zero fraction to the host
    (``.item()``), so a sampled step waits for them; no image is made or written.
    """

    name = "fastai ActivationStats"

    def __init__(self, trainer: Trainer, log_dir: str, every: int) -> None:
        super().__init__(trainer, log_dir, every)
        from types import SimpleNamespace

        from fastai.callback.hook import ActivationStats

        self.learn = SimpleNamespace(model=trainer.model, training=True, train_iter=0)
        self.callback = ActivationStats(every=min(every, 2**31 - 1))
        self.callback.learn = self.learn
        self.callback.before_fit()
        self.callback.before_batch()  # for the first step, as the Learner does

    def after_step(self) -> None:
        super().after_step()
        self.callback.after_batch()
        self.learn.train_iter = self.calls
        self.callback.before_batch()  # for the next step

    def close(self) -> dict[str, Any]:
        self.callback.after_fit()
        return {"stats_recorded": len(self.callback.stats)}



#: Peers measured beside the package when installed (see benchmarks/requirements-peers.txt).
PEERS: dict[str, tuple[type[Subject], str | None]] = {
    "handwritten": (_HandWritten, None),
    "wandb": (_WandbWatch, "wandb"),
    "fastai": (_FastaiActivationStats, "fastai.callback.hook"),
}
#: Peers that cannot share this loop: why they are not measured.
NOT_MEASURED = {
    "Composer ActivationMonitor": "a Composer Trainer callback; mosaicml 0.32 requires "
    "torch < 2.7.1, so it does not install beside torch 2.14",
    "Lightning-Bolts ModuleDataMonitor": "a Lightning Trainer callback; lightning-bolts 0.7 "
    "pulls pytorch-lightning 1.9.5, not lightning 2.x",
}


def available_peers(wanted: str) -> tuple[dict[str, type[Subject]], dict[str, str]]:
    """The peers to measure for ``--peers`` (``auto``, ``none`` or a comma list), and why others
    are skipped."""
    names = list(PEERS) if wanted == "auto" else [] if wanted == "none" else wanted.split(",")
    chosen: dict[str, type[Subject]] = {}
    skipped: dict[str, str] = {}
    for n in names:
        if n not in PEERS:
            raise ValueError(f"unknown peer {n!r}; choose from {', '.join(PEERS)}, auto or none")
        cls, module = PEERS[n]
        if module is not None and not importable(module):
            skipped[n] = f"{module} is not installed"
        else:
            chosen[n] = cls
    return chosen, skipped


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table; write JSON (and Markdown). Returns an exit code."""
    parser = build_parser("bench_monitor_peers", __doc__)
    parser.add_argument(
        "--peers", default="auto",
        help=f"auto (every installed peer, the default), none, or a comma list of "
        f"{', '.join(PEERS)}",
    )
    args = parser.parse_args(argv)
    if not check_args("bench_monitor_peers", args):
        return 2
    try:
        peers, skipped = available_peers(args.peers)
    except ValueError as e:
        print(f"bench_monitor_peers: error: {e}", file=sys.stderr)
        return 2
    skipped.update(NOT_MEASURED)
    result = new_result(args)
    result["peers_skipped"] = skipped
    save = saver(args, result, f"monitor_peers_{args.device}.json")
    measure_workloads(args, result, save, peers)
    finish(result, save)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
