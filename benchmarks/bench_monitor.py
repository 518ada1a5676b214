"""Benchmark FeatureMonitor's cost on a training loop, and soak it for resource leaks.

Variants, interleaved round-robin in windows of one capture period (100 steps) in one run (so
load from other processes falls on all of them alike), on two workloads (the demo's training
configuration, batch 64, on which the targets are judged; and batch 16, a small step):

- ``none``: no monitor attached;
- ``unsampled``: a monitor attached that never samples in the measured window (its hooks removed);
- ``every100``: a monitor capturing every 100 steps (probe pass included), end-to-end;
- the steps a capture touches, timed on the training thread (forward, backward, optimizer step
  and ``monitor.step()``) against a normal step of the same model: at ``every=2``, the sampled
  step and the step before it (whose ``step()`` reads the filters and runs the probe pass); at
  ``every=1``, the whole capture on one step (what the peers are measured on), with the wait
  for the background writer to finish it timed on its own, so that step is also reported with
  the writer's work added as if it ran on the training thread (an upper bound).

The throughput figures let the writer run beside training (``--writer overlap``, the default,
as in real use): its CPU time then slows the steps that share the cores with it.
``--writer charged`` makes every capturing step wait for it instead.

Then a soak: a few thousand tiny steps capturing every 10, reporting resident-memory drift,
thread count and open file count before and after.

Run: ``python benchmarks/bench_monitor.py [--quick]``. Prints a table, writes
``benchmarks/results/monitor_cpu.json``. :func:`run_soak` is reusable by tests.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import functools
import gc
import json
import math
import os
import platform
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

if str(Path(__file__).resolve().parent) not in sys.path:  # loaded by path (tests)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import Variant, interleave, timed_call  # noqa: E402  (the one timing harness of the benchmarks)

RESULTS = Path(__file__).resolve().parent / "results" / "monitor_cpu.json"


# -- process resources (Linux /proc; no psutil needed) ----------------------------------------
def rss_mb() -> float:
    """Current resident set size of this process in MB."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # not Linux: peak RSS is the best the stdlib offers
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def open_files() -> int:
    """Open file descriptors of this process (-1 where /proc is missing)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return -1


def thread_count() -> int:
    """Python threads alive in this process."""
    return threading.active_count()


def _tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(inplace=True),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )


def run_soak(
    steps: int = 3000,
    *,
    every: int = 10,
    make_monitor: Callable[[nn.Module, str], Any] | None = None,
    log_dir: str | None = None,
) -> dict[str, float]:
    """Train a tiny CNN for ``steps`` steps with a monitor capturing every ``every`` steps.

    Args:
        steps: training steps.
        every: capture interval.
        make_monitor: ``(model, log_dir) -> monitor`` with ``step()`` and ``close()``; default a
            :class:`torch_featureviz.FeatureMonitor` with a probe.
        log_dir: where the logs go; default a temporary directory, removed afterwards.

    Returns:
        RSS (MB), thread and open-file counts before and after (after ``close()``), the RSS
        drift over the second half of the run (after warm-up), and the seconds taken.
    """
    import shutil

    if make_monitor is None:
        from torch_featureviz import FeatureMonitor

        probe = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))

        def make_monitor(model: nn.Module, d: str) -> Any:
            return FeatureMonitor(model, d, every=every, probe=probe, queue_size=8)

    tmp = log_dir or tempfile.mkdtemp(prefix="featureviz-soak-")
    try:
        # Warm up first, in a throwaway directory: imports, lazily created process-wide pools
        # (the PNG encoder's threads) and allocator caches are not a leak of the soak.
        with tempfile.TemporaryDirectory(prefix="featureviz-soak-warmup-") as warm:
            _train_tiny(2 * every, make_monitor, warm)
        gc.collect()
        before = {"rss_mb": rss_mb(), "threads": thread_count(), "open_files": open_files()}
        start = time.perf_counter()
        half_rss, end_rss, dropped = _train_tiny(steps, make_monitor, tmp)
        seconds = time.perf_counter() - start
        gc.collect()
        after = {"rss_mb": rss_mb(), "threads": thread_count(), "open_files": open_files()}
    finally:
        if log_dir is None:
            shutil.rmtree(tmp, ignore_errors=True)
    return {
        "steps": steps,
        "every": every,
        "dropped": dropped,
        "seconds": round(seconds, 2),
        "rss_before_mb": round(before["rss_mb"], 1),
        "rss_after_mb": round(after["rss_mb"], 1),
        "rss_drift_mb": round(after["rss_mb"] - before["rss_mb"], 1),
        "rss_drift_second_half_mb": round(end_rss - half_rss, 1),
        "threads_before": before["threads"],
        "threads_after": after["threads"],
        "open_files_before": before["open_files"],
        "open_files_after": after["open_files"],
    }


def _train_tiny(
    steps: int, make_monitor: Callable[[nn.Module, str], Any], log_dir: str
) -> tuple[float, float, int]:
    """Train the tiny CNN with a fresh monitor and close it.

    Returns:
        RSS (MB) at half-time and at the end, and the captures the monitor dropped.
    """
    model = _tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 16, 16, generator=g)
    y = torch.randint(0, 4, (8,), generator=g)
    monitor = make_monitor(model, log_dir)
    half_rss = 0.0
    for i in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        monitor.step()
        if i == steps // 2:
            gc.collect()
            half_rss = rss_mb()
    gc.collect()
    end_rss = rss_mb()
    monitor.close()
    return half_rss, end_rss, int(getattr(monitor, "dropped", 0))


# -- throughput ----------------------------------------------------------------------------
#: The capture period the throughput target names (``every=100``).
PERIOD = 100
#: ``every`` of a monitor that never samples within a run.
NEVER = 10**9


# A NamedTuple, not a dataclass: the tests load this file by path, unregistered in sys.modules,
# where dataclasses cannot resolve postponed annotations.
class Workload(NamedTuple):
    """One training step to measure: a model, a batch, a device and a precision.

    ``model`` is ``"demo"`` (the demo's small ResNet on 32 px images, 8 classes), ``"tiny"``
    (a two-conv net with 4 classes, for dry runs of the script) or a torchvision model name
    (random weights, ``classes`` outputs). ``amp="bf16"`` runs the forward and the loss under
    ``torch.autocast(dtype=torch.bfloat16)``.
    """

    model: str = "demo"
    batch: int = 64
    size: int = 32
    classes: int = 8
    device: str = "cpu"
    amp: str | None = None

    def build(self) -> nn.Module:
        torch.manual_seed(0)
        if self.model == "tiny":  # the soak's two-conv net: for dry runs of the script
            return _tiny_model().to(self.device).train()
        if self.model == "demo":
            from torch_featureviz.demo import build_demo_model

            model = build_demo_model(self.classes, seed=0)
        else:
            import torchvision

            model = torchvision.models.get_model(self.model, weights=None, num_classes=self.classes)
        return model.to(self.device).train()

    def probe(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        return torch.randn(1, 3, self.size, self.size, generator=g).to(self.device)


def hook_free_twin(model: nn.Module) -> nn.Module:
    """A copy of ``model`` that shares its parameters' and buffers' storage but none of its hooks.

    Call it before anything registers hooks on ``model``. The twin's parameters are distinct
    ``Parameter`` objects (so hooks on ``model``'s parameters do not fire for it, and it has its
    own ``.grad``) viewing the same memory: a step of the twin trains ``model`` too, and the two
    run on the very same tensors (separate model instances differ by about 0.5% in speed on
    their own, which a ratio to a separate model would mistake for the monitor's cost).
    """
    twin = copy.deepcopy(model)
    for mine, theirs in zip(model.modules(), twin.modules(), strict=True):
        for name, p in mine.named_parameters(recurse=False):
            setattr(theirs, name, nn.Parameter(p.detach(), requires_grad=p.requires_grad))
        for name, b in mine.named_buffers(recurse=False):
            setattr(theirs, name, b)
    return twin


class _Trainer:
    """One model and its hook-free twin, each with its own optimizer, on a pool of batches."""

    def __init__(self, workload: Workload, *, pool: int = 8) -> None:
        self.w = workload
        self.model = workload.build()
        self.twin = hook_free_twin(self.model)
        self.opts = {
            False: torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9),
            True: torch.optim.SGD(self.twin.parameters(), lr=0.01, momentum=0.9),
        }
        g = torch.Generator().manual_seed(1)
        # A pool of random batches (the same for every variant), made once: a model that
        # overfits one fixed batch drifts into denormal numbers, and making a batch per step
        # would time the random number generator too.
        self.batches = [
            (
                torch.randn(workload.batch, 3, workload.size, workload.size, generator=g).to(
                    workload.device
                ),
                torch.randint(0, workload.classes, (workload.batch,), generator=g).to(
                    workload.device
                ),
            )
            for _ in range(pool)
        ]
        self.calls = 0

    def step(self, *, twin: bool) -> None:
        """One forward, backward and optimizer step of the model (or of its twin)."""
        x, y = self.batches[self.calls % len(self.batches)]
        self.calls += 1
        model = self.twin if twin else self.model
        with torch.autocast(
            torch.device(self.w.device).type, dtype=torch.bfloat16, enabled=self.w.amp == "bf16"
        ):
            loss = nn.functional.cross_entropy(model(x), y)
        opt = self.opts[twin]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


# -- the monitors compared: this package's and the peers' ---------------------------------------
class _Subject:
    """A monitor attached to a trainer's model, capturing every ``every`` steps.

    ``after_step`` is what the user's loop calls after ``optimizer.step()``; ``baseline_step``
    what the same loop does without this monitor (the twin's steps call it); ``settle`` waits
    (untimed) for background work; ``close`` detaches and returns extra figures.
    """

    name = ""

    def __init__(self, trainer: _Trainer, log_dir: str, every: int) -> None:
        self.trainer, self.every, self.calls = trainer, every, 0

    def after_step(self) -> None:
        self.calls += 1

    def baseline_step(self) -> None:
        return None

    def settle(self) -> None:
        return None

    def close(self) -> dict[str, Any]:
        return {}

    #: Whether the subject can take its hooks off and put them back between steps: its
    #: baseline is then the *same* model without hooks, not the twin (see :func:`_kinds`).
    toggles = False

    def detach(self) -> None:
        raise NotImplementedError

    def attach(self) -> None:
        raise NotImplementedError


class _FeatureViz(_Subject):
    """torch_featureviz's ``FeatureMonitor`` with a probe (``probe=False``: none), at its
    defaults otherwise.

    ``charge_writer=True``: a capturing step waits for the background writer, so its writing is
    charged to it in full, as if done on the training thread (an upper bound). ``False``: the
    writer overlaps training, as in real use, and is waited for (untimed) between periods.
    """

    name = "featureviz"

    def __init__(
        self,
        trainer: _Trainer,
        log_dir: str,
        every: int,
        *,
        charge_writer: bool = False,
        probe: bool = True,
    ) -> None:
        super().__init__(trainer, log_dir, every)
        from torch_featureviz import FeatureMonitor

        self.charge_writer = charge_writer
        self._had_hooks = True
        # start_step=1 for a monitor that never samples: it does not capture step 0 either.
        self.monitor = FeatureMonitor(
            trainer.model,
            log_dir,
            every=every,
            probe=trainer.w.probe() if probe else None,
            start_step=1 if every >= NEVER else 0,
        )

    def after_step(self) -> None:
        super().after_step()
        if self.monitor.step() and self.charge_writer:
            self.monitor.flush()

    def settle(self) -> None:
        self.monitor.flush(timeout=120)

    toggles = True

    def detach(self) -> None:
        capture = self.monitor.capture
        assert capture is not None
        # Between captures the monitor has removed its hooks already (on an eager model):
        # put back only what was there.
        self._had_hooks = capture.attached
        capture.remove()

    def attach(self) -> None:
        capture = self.monitor.capture
        assert capture is not None
        if self._had_hooks and not capture.attached:
            capture.attach()

    def close(self) -> dict[str, Any]:
        self.monitor.close()
        return {"dropped": self.monitor.dropped, "captured": self.monitor.captured}


class _HandWritten(_Subject):
    """The monitor users write today, on the training thread.

    A forward hook per conv keeps ``output.detach()`` on every forward; every ``every`` steps
    the loop logs, per conv, ``make_grid`` of sample 0's first 16 channels with
    ``SummaryWriter.add_image``, and ``add_histogram`` of the activation and of the weights.
    """

    name = "hand-written hooks + make_grid + add_image + add_histogram"
    channels = 16

    def __init__(self, trainer: _Trainer, log_dir: str, every: int) -> None:
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


class _WandbWatch(_Subject):
    """``wandb.watch(model, log="all", log_freq=every)``, offline, into ``log_dir``.

    wandb's hooks log into the global run, so every watched model shares one offline run
    (started by the first, finished by :func:`_finish_wandb`). The loop calls ``wandb.log``
    every ``every`` steps, with and without the watch (the twin's steps do too), so the ratios
    are the watch's alone.
    """

    name = 'wandb.watch(log="all"), offline'

    def __init__(self, trainer: _Trainer, log_dir: str, every: int) -> None:
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


class _FastaiActivationStats(_Subject):
    """fastai's ``ActivationStats(every=every)`` callback, driven on this loop as fastai's
    ``Learner`` drives it: ``before_fit`` once, then ``before_batch`` and ``after_batch``
    around each step (``training`` and ``train_iter`` as the Learner sets them).

    At its defaults it hooks every module with parameters (convs, norms, the head) on sampled
    steps only, and each hook reads the output's mean, std and near-zero fraction to the host
    (``.item()``), so a sampled step waits for them; no image is made or written.
    """

    name = "fastai ActivationStats"

    def __init__(self, trainer: _Trainer, log_dir: str, every: int) -> None:
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


def _finish_wandb() -> None:
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()


def _importable(name: str) -> bool:
    try:
        __import__(name)
    except Exception:  # a peer that fails to import is simply absent
        return False
    return True


#: Peers measured beside the package when installed (see benchmarks/requirements-peers.txt).
PEERS: dict[str, tuple[type[_Subject], str | None]] = {
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


def available_peers(wanted: str) -> tuple[list[str], dict[str, str]]:
    """The peers to measure for ``--peers`` (``auto``, ``none`` or a comma list), and why others
    are skipped."""
    names = list(PEERS) if wanted == "auto" else [] if wanted == "none" else wanted.split(",")
    chosen, skipped = [], {}
    for n in names:
        if n not in PEERS:
            raise ValueError(f"unknown peer {n!r}; choose from {', '.join(PEERS)}, auto or none")
        module = PEERS[n][1]
        if module is not None and not _importable(module):
            skipped[n] = f"{module} is not installed"
        else:
            chosen.append(n)
    return chosen, skipped


def _make(name: str, trainer: _Trainer, log_dir: str, every: int, charge_writer: bool) -> _Subject:
    if name == "featureviz":
        return _FeatureViz(trainer, log_dir, every, charge_writer=charge_writer)
    return PEERS[name][0](trainer, log_dir, every)


@contextlib.contextmanager
def _flushing_denormals() -> Iterator[None]:
    """Flush denormal numbers to zero (they would make step times drift during the run), and
    put the process-wide setting back afterwards (torch has no getter: a product tells)."""
    was_on = (torch.tensor([1e-39]) * 1.0).item() == 0.0
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(was_on)


def _kinds(subject: _Subject, label: str) -> list[Variant]:
    """The subject's attached step and its baseline, as two timed variants.

    The baseline is the same model with the subject's hooks taken off (untimed, just before the
    step) and put back after it, when the subject can do that (``toggles``): the same module
    objects, tensors and memory, so nothing but the hooks differs. Otherwise (``wandb.watch``,
    and the control) it is the model's hook-free twin, whose own bias the control measures.
    """
    trainer = subject.trainer

    def attached() -> None:
        trainer.step(twin=False)
        subject.after_step()

    if subject.toggles:

        def same_model() -> None:
            trainer.step(twin=False)
            subject.baseline_step()

        bare = Variant(f"none ({label}'s model)", same_model, subject.detach, subject.attach)
    else:

        def twin() -> None:
            trainer.step(twin=True)
            subject.baseline_step()

        bare = Variant(f"none ({label}'s model)", twin)
    return [bare, Variant(label, attached)]


def _ratios(
    steps: dict[str, list[float]], labels: dict[str, str], period: int
) -> dict[str, Any]:
    """Throughput ratios (total none time / total monitored time) and per-period ratios."""
    out: dict[str, Any] = {"block_ratios": {}}
    for label, key in labels.items():
        ref, var = steps[f"none ({label}'s model)"], steps[label]
        out[key] = round(sum(ref) / sum(var), 4)
        out["block_ratios"][label] = [
            round(sum(ref[i : i + period]) / sum(var[i : i + period]), 4)
            for i in range(0, len(var), period)
        ]
    return out


def run_throughput(
    *,
    batch: int | None = None,
    rounds: int = 8,
    capture_samples: int = 40,
    workload: Workload | None = None,
    peers: Sequence[str] = (),
    charge_writer: bool = False,
    on_partial: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Seconds per step of each variant, interleaved step by step; and the capturing step alone.

    For this package and each peer, two models, each with its monitor: ``unsampled`` (``every``
    never reached) and ``every100``. Each is timed against ``none``: the same model with the
    monitor's hooks taken off for that step, or, for a peer that cannot take them off, its
    hook-free twin (same tensors, no hooks, see :func:`hook_free_twin`); a control pair with
    nothing attached reads the twin method's own bias. Every kind of step takes turns one step at
    a time (:func:`_timing.interleave`), in a rotating order, for ``rounds`` capture periods of
    ``PERIOD`` steps, so whatever the machine does over seconds falls on all of them alike.
    Ratios compare total times; ``block_ratios`` gives each period's. The capturing step: a
    third model whose monitor captures every step, against its twin, in adjacent pairs (the
    writer settled between pairs, as between sparse captures); the ratio is the median over
    pairs. ``on_partial`` receives the throughput ratios as soon as they are measured (before
    the capturing steps), so a run stopped by a time limit still leaves them.
    """
    if workload is None:
        workload = Workload(batch=64 if batch is None else batch)
    elif batch is not None:
        raise ValueError("give batch or workload, not both")
    device = workload.device
    torch.manual_seed(0)
    period, every_name = PERIOD, f"every{PERIOD}"
    subjects = ["featureviz", *peers]
    labels = {
        "unsampled": "throughput_unsampled_vs_none",
        every_name: "throughput_every100_vs_none",
    }
    errors: dict[str, str] = {}
    with _flushing_denormals(), tempfile.TemporaryDirectory(prefix="featureviz-bench-") as d:
        made: dict[str, dict[str, _Subject]] = {}
        variants: list[Variant] = []
        for s in subjects:
            mine: list[Variant] = []
            try:
                made[s] = {
                    "unsampled": _make(s, _Trainer(workload), f"{d}/{s}-u", NEVER, charge_writer),
                    every_name: _make(s, _Trainer(workload), f"{d}/{s}-e", period, charge_writer),
                }
                for label, sub in made[s].items():
                    mine += _kinds(sub, label if s == "featureviz" else f"{s}:{label}")
                # Warm-up (allocator, first capture, cuDNN's choice of algorithms): a monitored
                # model a period less the one call interleave makes, so its timed steps start a
                # period; its twin (the same tensors) a few steps.
                for v in mine:
                    for _ in range(3 if v.name.startswith("none (") else period - 1):
                        v.run()
            except Exception as e:  # a peer that cannot run is reported, not fatal
                if s == "featureviz":
                    raise
                errors[s] = f"{type(e).__name__}: {str(e).strip()[:200]}"
                for sub in made.pop(s, {}).values():
                    with contextlib.suppress(Exception):
                        sub.close()
                continue
            variants += mine
        # The control: a model with nothing attached against its twin, the same way. Its ratio
        # is what the method reads when there is no cost at all (its bias and noise).
        control = _Subject(_Trainer(workload), d, NEVER)
        control_variants = _kinds(control, "control")
        for v in control_variants:
            for _ in range(3):
                v.run()
        variants += control_variants
        settle = [sub for subs in made.values() for sub in subs.values()]

        def on_round(r: int) -> None:
            if not charge_writer and r % period == 0:
                for sub in settle:
                    sub.settle()

        steps = interleave(
            variants,
            device=device,
            rounds=rounds * period,
            warmup=1,
            always=[v.name for v in variants],
            errors=errors,
            gc_every=period,
            on_round=on_round,
        )

        if on_partial is not None:
            on_partial(
                {
                    "workload": workload._asdict(),
                    "partial": True,
                    **_ratios(steps, labels, period),
                    "peers": {
                        s: _ratios(steps, {f"{s}:{k}": v for k, v in labels.items()}, period)
                        for s in made
                        if s != "featureviz" and all(f"{s}:{k}" in steps for k in labels)
                    },
                }
            )
        # The capturing step alone: a monitor capturing every step against its twin. Ours
        # spreads a capture over two steps when captures are apart (the step before reads the
        # filters and runs the probe pass): each is measured at every=2, and the whole
        # capture on one step at every=1, which is also what the peers are measured on.
        capture: dict[str, dict[str, Any]] = {}
        for s in made:
            try:
                # Never charged here: the writer's wait is timed on its own, after the step.
                one_step = _capturing_step(
                    _make(s, _Trainer(workload), f"{d}/{s}-c", 1, False), device, capture_samples
                )
                capture[s] = one_step
                if s == "featureviz":
                    capture[s] = {
                        **{k.replace("capture_step", "capture_on_one_step"): v
                           for k, v in one_step.items()},
                        **_split_capture(
                            _FeatureViz(_Trainer(workload), f"{d}/{s}-s", 2), device,
                            capture_samples,
                        ),
                    }
                    # The same without a probe: what the probe pass costs.
                    no_probe = _FeatureViz(_Trainer(workload), f"{d}/{s}-n", 1, probe=False)
                    alone = _capturing_step(no_probe, device, capture_samples)
                    capture[s]["capture_on_one_step_no_probe_vs_normal"] = alone[
                        "capture_step_vs_normal"
                    ]
                    capture[s]["capture_on_one_step_no_probe_vs_normal_quartiles"] = alone[
                        "capture_step_vs_normal_quartiles"
                    ]
            except Exception as e:
                if s == "featureviz":
                    raise
                errors[s] = f"{type(e).__name__}: {str(e).strip()[:200]}"
        extras = {s: {lb: sub.close() for lb, sub in subs.items()} for s, subs in made.items()}
        _finish_wandb()  # before its temporary directory goes

    def result_of(s: str) -> dict[str, Any]:
        prefix = "" if s == "featureviz" else f"{s}:"
        sl = {prefix + label: key for label, key in labels.items()}
        names = [n for label in sl for n in (f"none ({label}'s model)", label)]
        r: dict[str, Any] = {
            "mean_step_ms": {
                n.replace(prefix, ""): round(statistics.fmean(steps[n]) * 1000, 3) for n in names
            },
            **_ratios(steps, sl, period),
            **capture[s],
        }
        r["block_ratios"] = {k.replace(prefix, ""): v for k, v in r["block_ratios"].items()}
        if s != "featureviz":  # a peer does all its work on the capturing step
            for k in ("capture_step_vs_normal", "capture_step_with_writer_vs_normal"):
                if k in r:
                    r[k.replace("capture_step", "capture_on_one_step")] = r[k]
        return r

    ours = result_of("featureviz")
    control_ratios = _ratios(steps, {"control": "throughput_control_vs_none"}, period)
    ours["throughput_control_vs_none"] = control_ratios["throughput_control_vs_none"]
    # Robust to the bursts of a shared machine: the median over rounds of each step's ratio to
    # the baseline step of the same round (adjacent in time). Every unsampled step is alike, so
    # this is the per-step cost; at every=100 it would leave the capturing steps out.
    for label, key in (("unsampled", "unsampled"), ("control", "control")):
        ref, var = steps[f"none ({label}'s model)"], steps[label]
        ours[f"paired_median_{key}_vs_none"] = round(
            statistics.median(a / b for a, b in zip(ref, var, strict=False)), 4
        )
    ours["block_ratios"]["control"] = control_ratios["block_ratios"]["control"]
    # The standard error of each ratio, from its spread over capture periods.
    ours["ratio_stderr"] = {
        label: round(statistics.stdev(r) / math.sqrt(len(r)), 4) if len(r) > 1 else None
        for label, r in ours["block_ratios"].items()
    }
    peers_out = {}
    for s in made:
        if s != "featureviz":
            try:
                peers_out[s] = result_of(s)
            except KeyError:  # one of its variants failed: its error is in `errors`
                errors.setdefault(s, "a variant failed; see the errors of its variants")
    return {
        "workload": workload._asdict(),
        "batch": workload.batch,
        "period_steps": period,
        "steps_per_variant": len(steps[every_name]),
        "captures": rounds,
        "writer": "charged to the capturing step" if charge_writer else "overlapped",
        **ours,
        "dropped": {label: extras["featureviz"][label].get("dropped") for label in labels},
        "peers": peers_out,
        "peer_errors": errors,
    }


def _capturing_step(sub: _Subject, device: str, samples: int) -> dict[str, Any]:
    """A monitor capturing every step against the same model's normal step, in adjacent pairs.

    The normal step is the same model with the subject's hooks taken off (untimed), or its twin
    for a subject that cannot take them off. The writer settles (untimed) before each step, as
    between sparse captures; its wait after a capturing step is timed on its own. Ratios are
    medians over pairs. Closes ``sub``.
    """
    try:
        trainer = sub.trainer

        def normal() -> None:
            trainer.step(twin=not sub.toggles)  # the same model, its hooks off
            sub.baseline_step()

        def unhook() -> None:
            sub.settle()
            if sub.toggles:
                sub.detach()

        def rehook() -> None:
            if sub.toggles:
                sub.attach()

        def capturing() -> None:
            trainer.step(twin=False)
            sub.after_step()

        waits: list[float] = []

        def wait_for_writer() -> None:
            t0 = time.perf_counter()
            sub.settle()
            waits.append(time.perf_counter() - t0)

        pair = [
            Variant("normal", normal, unhook, rehook),
            Variant("capture", capturing, sub.settle, wait_for_writer),
        ]
        for v in pair:
            for _ in range(2):
                v.setup()
                v.run()
                v.teardown()
        t = interleave(
            pair, device=device, rounds=samples, always=("normal", "capture"), gc_every=None
        )
    finally:
        sub.close()
    ratios = [c / n for c, n in zip(t["capture"], t["normal"], strict=True)]
    waits = waits[-len(ratios) :]  # the warm-up's waits are not timed steps
    charged = [(c + w) / n for c, w, n in zip(t["capture"], waits, t["normal"], strict=True)]
    return {
        "writer_ms_per_capture": round(statistics.median(waits) * 1000, 3),
        "capture_step_with_writer_vs_normal": round(statistics.median(charged), 4),
        "capture_step_ms": round(statistics.median(t["capture"]) * 1000, 3),
        "normal_step_ms": round(statistics.median(t["normal"]) * 1000, 3),
        "capture_step_vs_normal": round(statistics.median(ratios), 4),
        "capture_step_vs_normal_quartiles": [round(q, 4) for q in statistics.quantiles(ratios, n=4)]
        if len(ratios) > 1
        else [ratios[0]] * 3,
    }


def _split_capture(sub: _FeatureViz, device: str, samples: int) -> dict[str, Any]:
    """Our monitor's capture at ``every=2``, as it runs when captures are apart: the step
    before a sampled step (its ``step()`` reads the filters and runs the probe pass, with the
    weights the sampled forward will use) and the sampled step (its forward armed, its
    ``step()`` queueing), each against the same model's normal step (its hooks taken off,
    untimed), in the order normal, arming step, sampled step, normal. Ratios are medians over
    rounds, each step against the mean of the two normal steps around it. Closes ``sub``."""
    try:
        trainer = sub.trainer
        assert sub.monitor.every == 2

        def monitored() -> None:
            trainer.step(twin=False)
            sub.after_step()

        def normal() -> None:
            trainer.step(twin=False)

        normal_v = Variant("normal", normal, sub.detach, sub.attach)
        # The monitor counts steps from 0, sampled when even: the next step() is step 0's.
        monitored_v = Variant("monitored", monitored)
        timed_call(monitored_v, device)  # step 0 (prepared at construction)
        sub.settle()
        for _ in range(2):  # warm-up: an arming and a sampled step, then a normal one
            timed_call(monitored_v, device)
            timed_call(monitored_v, device)
            sub.settle()
            timed_call(normal_v, device)
        arming, sampled = [], []
        for _ in range(samples):
            before = timed_call(normal_v, device)
            sub.settle()  # untimed: the writer is idle, as between sparse captures
            a = timed_call(monitored_v, device)  # an odd step: prepares the next
            c = timed_call(monitored_v, device)  # the sampled step
            sub.settle()
            after = timed_call(normal_v, device)
            base = (before + after) / 2
            arming.append(a / base)
            sampled.append(c / base)
    finally:
        sub.close()

    def quartiles(r: list[float]) -> list[float]:
        return [round(q, 4) for q in statistics.quantiles(r, n=4)] if len(r) > 1 else r * 3

    return {
        "capture_step_vs_normal": round(statistics.median(sampled), 4),
        "capture_step_vs_normal_quartiles": quartiles(sampled),
        "arming_step_vs_normal": round(statistics.median(arming), 4),
        "arming_step_vs_normal_quartiles": quartiles(arming),
    }


def run_hook_overhead(
    *, calls: int = 100, repeats: int = 30, model: str = "demo", device: str = "cpu"
) -> dict[str, float]:
    """Cost of the gated-off hooks alone, what a compiled model (or ``keep_hooks=True``) pays
    between captures: a tiny forward with a monitor's hooks registered but not sampling, against
    the same model with them taken off (untimed) for the call, alternating (noise-free where
    whole steps are not). An eager model's unsampled forwards run with no hook at all.
    """
    from torch_featureviz import FeatureMonitor

    trainer = _Trainer(Workload(model=model, batch=1, size=8, device=device), pool=1)
    model = trainer.model.eval()
    x = trainer.batches[0][0]
    with tempfile.TemporaryDirectory(prefix="featureviz-hooks-") as d:
        monitor = FeatureMonitor(model, d, every=NEVER, start_step=1, keep_hooks=True)
        capture = monitor.capture
        assert capture is not None

        def forwards(m: nn.Module) -> Callable[[], None]:
            def run() -> None:
                with torch.no_grad():
                    for _ in range(calls):
                        m(x)

            return run

        t = interleave(
            [
                Variant("hooked", forwards(model)),
                Variant("bare", forwards(model), capture.remove, capture.attach),
            ],
            device=device,
            rounds=repeats,
            always=("hooked", "bare"),
            gc_every=None,
        )
        layers = len(monitor.layers)
        monitor.close()
    hooked = statistics.median(t["hooked"]) / calls * 1e6
    bare = statistics.median(t["bare"]) / calls * 1e6
    return {
        "hooked_layers": layers,
        "forward_us_hooks_gated_off": round(hooked, 1),
        "forward_us_no_hooks": round(bare, 1),
        "overhead_us_per_forward": round(hooked - bare, 1),
    }


def run_unsampled_call(*, calls: int = 2000, repeats: int = 15, device: str = "cpu") -> float:
    """Microseconds of ``monitor.step()`` on an unsampled step of an eager model: on such a step
    the model runs with none of the monitor's hooks, so this call is all the monitor adds (the
    whole-step ratios cannot resolve 0.1%: see their standard errors). The model has run one
    training forward, so the hooks are off, as in a real run between captures."""
    from torch_featureviz import FeatureMonitor

    tiny = Workload(model="tiny", batch=2, size=8, classes=4, device=device)
    trainer = _Trainer(tiny, pool=1)
    with tempfile.TemporaryDirectory(prefix="featureviz-unsampled-") as d:
        monitor = FeatureMonitor(trainer.model, d, every=NEVER, start_step=1)
        trainer.step(twin=False)
        monitor.step()
        assert monitor.capture is not None and not monitor.capture.attached

        def steps() -> None:
            for _ in range(calls):
                monitor.step()

        t = interleave(
            [Variant("step", steps)], device=device, rounds=repeats, always=("step",),
            gc_every=None,
        )
        monitor.close()
    return round(statistics.median(t["step"]) / calls * 1e6, 3)


#: The workloads: the demo's own training configuration (``featureviz demo``: batch 64 of
#: 32x32 images), which the targets are judged on, and the same model at batch 16, a step a
#: quarter the size, where the capture's fixed costs (the probe's batch-1 forward, a few ops
#: per conv) weigh four times as much. ``--model``/``--batch``/... measure one workload instead.
WORKLOADS = {"demo (batch 64)": 64, "small steps (batch 16)": 16}

#: The monitor's targets (issue 12 and 15): no step that a capture touches (the sampled step,
#: and the step before it, which reads the filters and runs the probe pass) above 1.2x.
TARGETS = {
    "throughput_every100_vs_none": (">=", 0.995),
    "throughput_unsampled_vs_none": (">=", 0.999),
    "capture_step_vs_normal": ("<=", 1.2),
    "arming_step_vs_normal": ("<=", 1.2),
}
LABELS = {
    "throughput_every100_vs_none": "throughput at every=100",
    "throughput_unsampled_vs_none": "unsampled steps",
    "capture_step_vs_normal": "capturing step (training thread)",
    "arming_step_vs_normal": "the step before it (filters, probe pass)",
    "capture_on_one_step_vs_normal": "the whole capture on one step (every=1)",
    "capture_on_one_step_with_writer_vs_normal": "the same + the writer's work",
}


# -- sharded training: the cost of a sampled step under FSDP -------------------------------------
FSDP_VARIANTS = (("fsdp2", True), ("fsdp2", False), ("fsdp1", True), ("fsdp1", False))


def _variant_name(kind: str, probe: bool) -> str:
    return f"{kind}{'' if probe else ' no probe'}"


def _shard_demo(model: nn.Module, kind: str) -> nn.Module:
    """The demo model sharded per stage (stem, layer1..3) and at the root."""
    units = [model.stem, model.layer1, model.layer2, model.layer3]
    if kind == "fsdp2":
        try:
            from torch.distributed.fsdp import fully_shard
        except ImportError:  # torch < 2.6
            from torch.distributed._composable.fsdp import fully_shard
        for unit in units:
            fully_shard(unit)
        fully_shard(model)
        return model
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    return FullyShardedDataParallel(
        model, device_id=torch.device("cpu"), auto_wrap_policy=ModuleWrapPolicy({nn.Sequential})
    )


def _fsdp_worker(
    rank: int, world: int, port: int, kind: str, probe: bool, steps: int, every: int, batch: int,
    out: str,
) -> None:
    import torch.distributed as dist

    from torch_featureviz import FeatureMonitor
    from torch_featureviz.demo import build_demo_model

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
        timeout=datetime.timedelta(seconds=120),
    )
    model = _shard_demo(build_demo_model(8, seed=0).train(), kind)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(rank)
    pool = [(torch.randn(batch, 3, 32, 32, generator=g), torch.randint(0, 8, (batch,), generator=g))
            for _ in range(8)]
    with tempfile.TemporaryDirectory() as log_dir:
        # A queue as long as the run: the writer never makes a step wait (it runs beside
        # training, as in real use), and nothing is dropped.
        monitor = FeatureMonitor(
            model, log_dir, every=every, probe=Workload().probe() if probe else None,
            queue_size=steps,
        )
        rows = []
        for i in range(steps):
            x, y = pool[i % len(pool)]
            dist.barrier()  # each step starts together: its time is this rank's own work
            t0 = time.perf_counter()
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            t1 = time.perf_counter()
            sampled = monitor.step()
            t2 = time.perf_counter()
            rows.append((i, sampled, (t2 - t0) * 1e3, (t2 - t1) * 1e3))
        monitor.close()
        dropped = monitor.dropped
    everyone: list[Any] = [None] * world
    dist.all_gather_object(everyone, {"rows": rows, "dropped": dropped})
    if rank == 0:
        Path(out).write_text(json.dumps(everyone))
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)  # gloo's static destructors can abort at exit once all is done


def run_fsdp(*, steps: int, every: int, batch: int, timeout: float = 900) -> dict[str, Any]:
    """2 gloo ranks on CPU, the demo model sharded, a monitor capturing every ``every`` steps:
    the extra time of the two steps a capture touches over a plain step: the step before a
    sampled step (its ``step()`` gathers the filters and runs the probe pass) and the sampled
    step (its forward armed, its ``step()`` queueing).

    Each step starts at a barrier, so its time is one rank's own work plus the collectives it
    waits in. The first capture period is warm-up and not counted.
    """
    import torch.multiprocessing as mp

    result: dict[str, Any] = {"steps": steps, "every": every, "batch": batch, "world": 2}
    for kind, probe in FSDP_VARIANTS:
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "rows.json")
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            ctx = mp.spawn(
                _fsdp_worker, args=(2, port, kind, probe, steps, every, batch, out), nprocs=2,
                join=False,
            )
            deadline = time.monotonic() + timeout
            while not ctx.join(timeout=2.0):
                if time.monotonic() > deadline:
                    for proc in ctx.processes:
                        proc.kill()
                    raise RuntimeError(f"the {kind} run did not finish in {timeout:g} s")
            ranks = json.loads(Path(out).read_text())
        per_rank = []
        for r, data in enumerate(ranks):
            rows = [row for row in data["rows"] if row[0] >= every]  # warm-up period dropped
            sampled = [row[2] for row in rows if row[1]]
            arming = [row[2] for row in rows if not row[1] and (row[0] + 1) % every == 0]
            plain = [row[2] for row in rows if not row[1] and (row[0] + 1) % every != 0]
            in_step = [row[3] for row in rows if row[1]]
            in_arming = [row[3] for row in rows if not row[1] and (row[0] + 1) % every == 0]
            per_rank.append({
                "rank": r,
                "unsampled_step_ms": round(statistics.median(plain), 3),
                "arming_step_ms": round(statistics.median(arming), 3),
                "sampled_step_ms": round(statistics.median(sampled), 3),
                "monitor_step_on_arming_ms": round(statistics.median(in_arming), 3),
                "monitor_step_on_sampled_ms": round(statistics.median(in_step), 3),
                "sampled_steps": len(sampled),
                "dropped": data["dropped"],
            })
        base = max(d["unsampled_step_ms"] for d in per_rank)
        sampled_ms = max(d["sampled_step_ms"] for d in per_rank)
        arming_ms = max(d["arming_step_ms"] for d in per_rank)
        result[_variant_name(kind, probe)] = {
            "ranks": per_rank,
            "unsampled_step_ms": base,
            "arming_step_ms": arming_ms,
            "sampled_step_ms": sampled_ms,
            "arming_extra_ms": round(arming_ms - base, 3),
            "extra_ms": round(sampled_ms - base, 3),
            "capture_extra_ms": round(arming_ms + sampled_ms - 2 * base, 3),
            "arming_over_unsampled": round(arming_ms / base, 3),
            "sampled_over_unsampled": round(sampled_ms / base, 3),
        }
    return result


def format_fsdp(result: dict[str, Any]) -> str:
    lines = [
        f"FSDP on CPU, {result['world']} gloo ranks (1 thread each), the demo model at batch "
        f"{result['batch']}, a capture every {result['every']} steps: the step before a sampled "
        "step gathers the filters (and runs the probe pass where named), the sampled step "
        "captures and queues; each against a plain step (the slower rank's medians):",
        f"{'':<16}{'plain step':>12}{'step before':>20}{'sampled step':>20}{'both, extra':>13}",
    ]
    for kind, probe in FSDP_VARIANTS:
        name = _variant_name(kind, probe)
        r = result[name]
        lines.append(
            f"{name:<16}{r['unsampled_step_ms']:>9.1f} ms"
            f"{r['arming_step_ms']:>9.1f} ms ({r['arming_over_unsampled']:.2f}x)"
            f"{r['sampled_step_ms']:>9.1f} ms ({r['sampled_over_unsampled']:.2f}x)"
            f"{r['capture_extra_ms']:>10.1f} ms"
        )
    return "\n".join(lines)


def _met(key: str, value: float) -> bool:
    op, target = TARGETS[key]
    return value >= target if op == ">=" else value <= target


def format_table(result: dict[str, Any]) -> str:
    """Markdown: per workload, the three ratios of this package (with its targets) and peers."""
    lines = []
    m = result["machine"]
    lines.append(
        f"FeatureMonitor vs peers on {m['device']} ({m.get('gpu') or m['platform']}; "
        f"{m['torch_threads']} torch threads, torch {m['torch']})"
        + ("; quick" if result["quick"] else "")
    )
    lines.append("")
    for wname, run in result["throughput"].items():
        w = run["workload"]
        if run.get("partial"):
            how = "stopped before the capturing steps: throughput only"
        else:
            how = (
                f"{run['steps_per_variant']} timed steps per variant; throughput with the "
                f"writer {run['writer']}; "
                f"step {run['normal_step_ms']:.2f} ms"
            )
        lines.append(
            f"**{wname}**: {w['model']} {w['size']} px batch {w['batch']} on {w['device']}"
            + (f", autocast {w['amp']}" if w["amp"] else "")
            + f"; {how}"
        )
        lines.append("")
        lines.append("| monitor | " + " | ".join(LABELS.values()) + " |")
        lines.append("|---|" + "---|" * len(LABELS))
        row = [
            "n/a"
            if k not in run
            else f"{run[k]:.4f} {'PASS' if _met(k, run[k]) else 'MISS'} (target "
            f"{TARGETS[k][0]} {TARGETS[k][1]})"
            if k in TARGETS
            else f"{run[k]:.4f} (writer {run['writer_ms_per_capture']:.1f} ms)"
            if "writer" in k
            else f"{run[k]:.4f}"
            for k in LABELS
        ]
        lines.append("| torch_featureviz FeatureMonitor | " + " | ".join(row) + " |")
        if "capture_on_one_step_no_probe_vs_normal" in run:
            lines.append(
                "| the same without a probe | | | | | "
                f"{run['capture_on_one_step_no_probe_vs_normal']:.4f} (quartiles "
                f"{run['capture_on_one_step_no_probe_vs_normal_quartiles']}) | |"
            )
        if "throughput_control_vs_none" in run:
            se = run.get("ratio_stderr", {})

            def pm(label: str, se: dict[str, Any] = se) -> str:
                return "" if se.get(label) is None else f" +- {se[label]:.4f}"

            control_row = (
                f"| control: nothing attached, against its twin (the method's own reading) | "
                f"{run['throughput_control_vs_none']:.4f}{pm('control')} | "
                f"median of paired steps {run.get('paired_median_control_vs_none', 'n/a')} "
                "| | | | |"
            )
            paired_row = (
                "| unsampled steps, median of paired steps (robust to bursts) | | "
                f"{run.get('paired_median_unsampled_vs_none', 'n/a')} | | | | |"
            )
            error_row = (
                f"| standard error over capture periods; quartiles of the steps | "
                f"{pm(f'every{PERIOD}')[4:] or 'n/a'} | {pm('unsampled')[4:] or 'n/a'} | "
                f"quartiles {run.get('capture_step_vs_normal_quartiles')} | "
                f"quartiles {run.get('arming_step_vs_normal_quartiles')} | "
                f"quartiles {run.get('capture_on_one_step_vs_normal_quartiles')} | |"
            )
            lines += [paired_row, control_row, error_row]
        for peer, r in run["peers"].items():
            cells = [f"{r[k]:.4f}" if k in r else "n/a" for k in LABELS]
            lines.append(f"| {PEERS[peer][0].name} | " + " | ".join(cells) + " |")
        lines.append("")
        for peer, err in run.get("peer_errors", {}).items():
            lines.append(f"- {peer} could not run: {err}")
    for peer, why in result.get("peers_skipped", {}).items():
        lines.append(f"- {peer}: not measured ({why})")
    lines.append("")
    return "\n".join(lines)


def machine_info(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "device": device,
        "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    return info


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench_monitor", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="fewer steps (a smoke run)")
    parser.add_argument(
        "--out", "--json", dest="out", type=Path, default=None,
        help="JSON path (default benchmarks/results/monitor_<device>.json)",
    )
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table here")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--model", default=None,
        help="one workload: 'demo', 'tiny' or a torchvision model name (default: the demo at "
        "batch 64 and 16)",
    )
    parser.add_argument("--batch", type=int, default=None, help="batch size of --model")
    parser.add_argument("--size", type=int, default=None, help="input size of --model (px)")
    parser.add_argument("--classes", type=int, default=8, help="outputs of --model")
    parser.add_argument("--amp", choices=("bf16",), default=None, help="autocast the forward")
    parser.add_argument("--rounds", type=int, default=None, help="capture periods timed")
    parser.add_argument("--capture-samples", type=int, default=None, help="capturing-step pairs")
    parser.add_argument(
        "--peers", default=None,
        help=f"auto (every installed peer), none, or a comma list of {', '.join(PEERS)} "
        "(default: auto; none with --quick)",
    )
    parser.add_argument(
        "--writer", choices=("charged", "overlap"), default="overlap",
        help="for the throughput figures: overlap (default) lets the background writer run "
        "beside training, as in real use, so its CPU time slows the steps it shares cores "
        "with; charged makes a capturing step wait for it (an upper bound). The capturing "
        "step is always reported both ways",
    )
    parser.add_argument("--no-soak", action="store_true", help="skip the leak soak")
    parser.add_argument(
        "--fsdp", action="store_true",
        help="only the sharded-training run: 2 gloo ranks, FSDP2 and FSDP1, sampled against "
        "unsampled steps (writes monitor_fsdp_cpu.json)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_monitor: error: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    for name in ("batch", "size", "rounds", "capture_samples", "classes"):
        value = getattr(args, name)
        if value is not None and value < 1:
            print(f"bench_monitor: error: --{name.replace('_', '-')} must be >= 1", file=sys.stderr)
            return 2
    try:
        peers, skipped = available_peers(args.peers or ("none" if args.quick else "auto"))
    except ValueError as e:
        print(f"bench_monitor: error: {e}", file=sys.stderr)
        return 2
    skipped.update(NOT_MEASURED)
    if args.fsdp:
        fsdp_out = args.out or RESULTS.with_name("monitor_fsdp_cpu.json")
        fsdp = run_fsdp(
            steps=30 if args.quick else 200, every=10 if args.quick else 20,
            batch=args.batch or (16 if args.quick else 64),
        )
        fsdp["machine"] = machine_info("cpu")
        fsdp_out.parent.mkdir(parents=True, exist_ok=True)
        fsdp_out.write_text(json.dumps(fsdp, indent=2) + "\n")
        print(format_fsdp(fsdp))
        print(f"wrote {fsdp_out}")
        return 0
    rounds = args.rounds or (2 if args.quick else 8)
    samples = args.capture_samples or (6 if args.quick else 40)
    charge = args.writer == "charged"
    if args.model is not None or args.device != "cpu" or args.amp:
        w = Workload(
            model=args.model or "demo",
            batch=args.batch or (8 if args.quick else 64),
            size=args.size or (32 if (args.model or "demo") == "demo" else 224),
            classes=args.classes,
            device=args.device,
            amp=args.amp,
        )
        workloads = {f"{w.model} (batch {w.batch})": w}
    elif args.quick:
        workloads = {"small steps (batch 8)": Workload(batch=args.batch or 8)}
    else:
        workloads = {name: Workload(batch=b) for name, b in WORKLOADS.items()}
    out = args.out or RESULTS.with_name(f"monitor_{args.device}.json")
    result: dict[str, Any] = {
        "machine": machine_info(args.device),
        "quick": args.quick,
        "targets": {k: f"{op} {t}" for k, (op, t) in TARGETS.items()},
        "peers_skipped": skipped,
        "throughput": {},
        "complete": False,
    }

    def save() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        if args.markdown:
            args.markdown.parent.mkdir(parents=True, exist_ok=True)
            args.markdown.write_text(format_table(result) + "\n")

    # The soak first: the peers' own threads (wandb's) must not count as the soak's.
    if not args.no_soak:
        result["soak"] = run_soak(300 if args.quick else 3000)
        save()
    for name, w in workloads.items():
        print(f"[bench_monitor] {name} ...", file=sys.stderr, flush=True)

        def partial(r: dict[str, Any], name: str = name) -> None:
            result["throughput"][name] = r
            save()

        result["throughput"][name] = run_throughput(
            workload=w,
            rounds=rounds,
            capture_samples=samples,
            peers=peers,
            charge_writer=charge,
            on_partial=partial,
        )
        save()
    result["targets_judged_on"] = next(iter(workloads))
    first = next(iter(workloads.values()))
    result["hook_overhead"] = run_hook_overhead(
        repeats=6 if args.quick else 30,
        calls=20 if first.model == "tiny" else 100,
        model="demo" if first.model not in ("demo", "tiny") else first.model,
        device=first.device,
    )
    call_us = run_unsampled_call(calls=200 if args.quick else 2000, device=first.device)
    result["unsampled_step_call_us"] = call_us
    for run in result["throughput"].values():
        # What an unsampled step costs by its one part, against that workload's normal step.
        run["unsampled_by_its_call_vs_none"] = round(
            run["normal_step_ms"] / (run["normal_step_ms"] + call_us / 1000), 5
        )
    result["machine"]["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    result["complete"] = True
    save()

    print(format_table(result))
    names = list(result["throughput"])
    print(f"{'ratio':<30}" + "".join(f"{n:>26}" for n in names) + f"{'target':>10}")
    for k, (op, target) in TARGETS.items():
        cells = "".join(
            f"{f'{r[k]:.4f} ' + ('PASS' if _met(k, r[k]) else 'MISS'):>26}"
            for r in result["throughput"].values()
        )
        print(f"{k:<30}{cells}{op + str(target):>10}")
    hooks = result["hook_overhead"]
    first = next(iter(result["throughput"].values()))
    per_step = hooks["overhead_us_per_forward"] / (first["normal_step_ms"] * 1000)
    print(
        f"gated-off hooks, kept only on compiled models ({hooks['hooked_layers']} layers): "
        f"{hooks['overhead_us_per_forward']} us per forward "
        f"({hooks['forward_us_no_hooks']} -> {hooks['forward_us_hooks_gated_off']} us on a tiny "
        f"input), {per_step:.2%} of a normal training step of {names[0]}"
    )
    print(
        f"an unsampled step adds one call of monitor.step() and nothing else (no hook runs): "
        f"{result['unsampled_step_call_us']} us, so unsampled steps run at "
        + " / ".join(
            f"{r['unsampled_by_its_call_vs_none']:.5f}x" for r in result["throughput"].values()
        )
        + f" of a normal step ({', '.join(names)})"
    )
    soak = result.get("soak")
    if soak:
        print(
            f"soak: {soak['steps']} steps, capture every {soak['every']} "
            f"({soak['dropped']} dropped), {soak['seconds']} s; "
            f"RSS {soak['rss_before_mb']} -> {soak['rss_after_mb']} MB "
            f"(drift {soak['rss_drift_mb']} MB, second half "
            f"{soak['rss_drift_second_half_mb']} MB); "
            f"threads {soak['threads_before']} -> {soak['threads_after']}; "
            f"open files {soak['open_files_before']} -> {soak['open_files_after']}"
        )
    load = os.getloadavg()
    print(f"load average (1, 5, 15 min): {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
