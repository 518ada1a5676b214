"""What the monitor benchmarks share: the training step they time (:class:`Workload`, its
:class:`Trainer` with a hook-free twin), the monitor under test (:class:`Subject`, this package's
:class:`FeatureVizSubject`), the pairing of an attached step with its baseline, and the leak
soak (:func:`run_soak`)."""

from __future__ import annotations

import contextlib
import copy
import gc
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch
from torch import nn

from benchmarks._harness import (
    Variant,
)


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


def tiny_model(seed: int = 0) -> nn.Module:
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
    model = tiny_model()
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
            return tiny_model().to(self.device).train()
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


class Trainer:
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
class Subject:
    """A monitor attached to a trainer's model, capturing every ``every`` steps.

    ``after_step`` is what the user's loop calls after ``optimizer.step()``; ``baseline_step``
    what the same loop does without this monitor (the twin's steps call it); ``settle`` waits
    (untimed) for background work; ``close`` detaches and returns extra figures.
    """

    name = ""

    def __init__(self, trainer: Trainer, log_dir: str, every: int) -> None:
        self.trainer, self.every, self.calls = trainer, every, 0

    def after_step(self) -> None:
        self.calls += 1

    def baseline_step(self) -> None:
        return None

    def settle(self) -> None:
        return None

    def close(self) -> dict[str, Any]:
        return {}

    @classmethod
    def finish(cls) -> None:
        """Once every subject of this class is closed: end what they share (a peer's run)."""
        return None

    #: Whether the subject can take its hooks off and put them back between steps: its
    #: baseline is then the *same* model without hooks, not the twin (see :func:`paired_variants`).
    toggles = False

    def detach(self) -> None:
        raise NotImplementedError

    def attach(self) -> None:
        raise NotImplementedError


class FeatureVizSubject(Subject):
    """torch_featureviz's ``FeatureMonitor`` with a probe (``probe=False``: none), at its
    defaults otherwise.

    ``charge_writer=True``: a capturing step waits for the background writer, so its writing is
    charged to it in full, as if done on the training thread (an upper bound). ``False``: the
    writer overlaps training, as in real use, and is waited for (untimed) between periods.
    """

    name = "featureviz"

    def __init__(
        self,
        trainer: Trainer,
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



@contextlib.contextmanager
def flushing_denormals() -> Iterator[None]:
    """Flush denormal numbers to zero (they would make step times drift during the run), and
    put the process-wide setting back afterwards (torch has no getter: a product tells)."""
    was_on = (torch.tensor([1e-39]) * 1.0).item() == 0.0
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(was_on)


def paired_variants(subject: Subject, label: str) -> list[Variant]:
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


def throughput_ratios(
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


