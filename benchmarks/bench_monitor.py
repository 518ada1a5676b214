"""Benchmark FeatureMonitor's cost on a training loop, and soak it for resource leaks.

Variants, interleaved round-robin in windows of one capture period (100 steps) in one run (so
load from other processes falls on all of them alike), on two workloads (the demo's training
configuration, batch 64, on which the targets are judged; and batch 16, a small step):

- ``none``: no monitor attached;
- ``unsampled``: a monitor attached that never samples in the measured window (hooks gated off);
- ``every100``: a monitor capturing every 100 steps (probe pass included), end-to-end;
- the capturing step alone, timed on the training thread (forward, backward, optimizer step and
  ``monitor.step()``), against a normal step.

Then a soak: a few thousand tiny steps capturing every 10, reporting resident-memory drift,
thread count and open file count before and after.

Run: ``python benchmarks/bench_monitor.py [--quick]``. Prints a table, writes
``benchmarks/results/monitor_cpu.json``. :func:`run_soak` is reusable by tests.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

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
def _bench_model(seed: int = 0) -> nn.Module:
    """A small ResNet-ish CNN (the demo's), big enough that a step is a few ms."""
    from torch_featureviz.demo import build_demo_model

    return build_demo_model(seed=seed)


class _Variant:
    def __init__(
        self, name: str, every: int | None, log_dir: str, batch: int, *, start_step: int = 0
    ) -> None:
        from torch_featureviz import FeatureMonitor

        self.name = name
        self.model = _bench_model()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        g = torch.Generator().manual_seed(0)
        # A fresh random batch every step (the same stream for every variant): a model that
        # overfits one fixed batch drifts into denormal numbers and slows down over the run.
        self.g = torch.Generator().manual_seed(1)
        self.batch = batch
        self.monitor = None
        if every is not None:
            probe = torch.randn(1, 3, 32, 32, generator=g)
            self.monitor = FeatureMonitor(
                self.model,
                os.path.join(log_dir, name),
                every=every,
                probe=probe,
                start_step=start_step,
            )

    def train_step(self) -> None:
        x = torch.randn(self.batch, 3, 32, 32, generator=self.g)
        y = torch.randint(0, 8, (self.batch,), generator=self.g)
        loss = nn.functional.cross_entropy(self.model(x), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def run(self, steps: int) -> float:
        """Seconds for ``steps`` steps, each as timed by :meth:`timed_step`."""
        return sum(self.timed_step() for _ in range(steps))

    def timed_step(self, *, attached: bool = True) -> float:
        """Seconds for one training step and ``monitor.step()``.

        ``attached=False`` times the same model with the monitor's hooks removed and no
        ``monitor.step()``: a step with no monitor, on the very same tensors (separate model
        instances differ by about 0.5% in speed on their own). On a capturing step the time
        includes waiting for the background writer to finish it: the writing is charged to the
        step that caused it, in full, as if it ran on the training thread.
        """
        cap = None if self.monitor is None else self.monitor._capture
        if cap is not None and cap.attached != attached:  # outside the timing
            if attached:
                cap.attach()
            else:
                cap.remove()
        start = time.perf_counter()
        self.train_step()
        if attached and self.monitor is not None and self.monitor.step():
            self.monitor.flush()
        return time.perf_counter() - start


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


#: The capture period the throughput target names (``every=100``).
PERIOD = 100


def run_throughput(*, batch: int, rounds: int = 8, capture_samples: int = 40) -> dict[str, Any]:
    """Seconds per step of each variant, interleaved step by step; and the capturing step alone.

    Two models, each with a monitor: ``unsampled`` (``every`` never reached) and ``every100``.
    Each is timed against itself with the monitor's hooks removed and no ``monitor.step()``
    (``none``), so a ratio never compares two model instances. The four kinds of step take turns
    one step at a time, in a rotating order, for ``rounds`` capture periods of ``PERIOD`` steps,
    so whatever the machine does over seconds (other processes, clock changes) falls on all of
    them alike: whole periods measured one after another differed by up to 10% between
    identical variants on this machine. To keep the background writer's work from landing on
    other steps, ``every100`` waits for it at the end of each capturing step: its writing is
    charged to it in full, as if done on the training thread (an upper bound; overlapped with
    training on spare cores it costs less). Ratios compare total times; ``block_ratios`` gives
    each period's. The capturing step is compared with a normal step of the same model in
    adjacent pairs; the ratio is the median over pairs.
    """
    torch.manual_seed(0)
    period, every_name = PERIOD, f"every{PERIOD}"
    with _flushing_denormals(), tempfile.TemporaryDirectory(prefix="featureviz-bench-") as d:
        # start_step=1: the never-sampling monitor does not capture step 0 either.
        unsampled = _Variant("unsampled", 10**9, d, batch, start_step=1)
        every = _Variant(every_name, period, d, batch)
        kinds: dict[str, tuple[_Variant, bool]] = {
            "none (unsampled's model)": (unsampled, False),
            "unsampled": (unsampled, True),
            f"none ({every_name}'s model)": (every, False),
            every_name: (every, True),
        }
        for v in (unsampled, every):  # warm-up: one period each (allocator, first capture)
            v.run(period)
        steps: dict[str, list[float]] = {k: [] for k in kinds}
        order = list(kinds.items())
        for i in range(rounds * period):
            k = i % len(order)
            for name, (v, attached) in order[k:] + order[:k]:
                steps[name].append(v.timed_step(attached=attached))

        # The capturing step alone, on the training thread, against a normal step of the same
        # model (alternating, so both see the same machine state).
        cap = _Variant("capture", 1, d, batch)
        assert cap.monitor is not None
        cap.run(3)
        normal: list[float] = []
        capturing: list[float] = []
        for i in range(capture_samples):
            cap.monitor.flush(timeout=30)  # the writer idle, as it is between sparse captures
            # Alternate which of the pair runs first, so drift in machine load cancels out.
            for kind in ("normal", "capture") if i % 2 == 0 else ("capture", "normal"):
                if kind == "normal":
                    cap.monitor._capture.enabled = False  # type: ignore[union-attr]
                    t0 = time.perf_counter()
                    cap.train_step()
                    normal.append(time.perf_counter() - t0)
                else:
                    cap.monitor.prepare(0)  # arm: this step is sampled
                    t0 = time.perf_counter()
                    cap.train_step()
                    cap.monitor.step(0)
                    capturing.append(time.perf_counter() - t0)
                    cap.monitor.flush(timeout=30)
        for v in (unsampled, every, cap):
            assert v.monitor is not None
            v.monitor.close()
        dropped = {v.name: v.monitor.dropped for v in (unsampled, every)}  # type: ignore[union-attr]

    total = {k: sum(v) for k, v in steps.items()}
    mean = {k: t / len(steps[k]) for k, t in total.items()}
    base = {"unsampled": "none (unsampled's model)", every_name: f"none ({every_name}'s model)"}

    def blocks(name: str) -> list[float]:
        ref, var = steps[base[name]], steps[name]
        return [
            sum(ref[i : i + period]) / sum(var[i : i + period])
            for i in range(0, rounds * period, period)
        ]

    pair_ratios = [c / n for c, n in zip(capturing, normal, strict=True)]
    return {
        "batch": batch,
        "period_steps": period,
        "steps_per_variant": period * rounds,
        "captures": rounds,
        "mean_step_ms": {k: round(v * 1000, 3) for k, v in mean.items()},
        "throughput_every100_vs_none": round(total[base[every_name]] / total[every_name], 4),
        "throughput_unsampled_vs_none": round(total[base["unsampled"]] / total["unsampled"], 4),
        "block_ratios": {k: [round(x, 4) for x in blocks(k)] for k in base},
        "capture_step_ms": round(statistics.median(capturing) * 1000, 3),
        "normal_step_ms": round(statistics.median(normal) * 1000, 3),
        "capture_step_vs_normal": round(statistics.median(pair_ratios), 4),
        "capture_step_vs_normal_quartiles": [
            round(q, 4) for q in statistics.quantiles(pair_ratios, n=4)
        ],
        "dropped": dropped,
    }


def run_hook_overhead(*, calls: int = 100, repeats: int = 30) -> dict[str, float]:
    """Cost of the gated-off hooks alone: a tiny forward with a monitor attached but not sampling,
    against the same model with no hooks, alternating (noise-free where whole steps are not).
    """
    from torch_featureviz import FeatureMonitor

    model = _bench_model().eval()
    x = torch.randn(1, 3, 8, 8)
    with tempfile.TemporaryDirectory(prefix="featureviz-hooks-") as d:
        monitor = FeatureMonitor(model, d, every=10**9, start_step=1)
        cap = monitor._capture
        assert cap is not None and not cap.enabled
        cap.remove()  # toggled below: attached (gated off) vs no hooks at all

        def forward_us() -> float:
            start = time.perf_counter()
            with torch.no_grad():
                for _ in range(calls):
                    model(x)
            return (time.perf_counter() - start) / calls * 1e6

        forward_us()
        hooked: list[float] = []
        bare: list[float] = []
        for i in range(repeats):
            for attached in (True, False) if i % 2 == 0 else (False, True):
                if attached:
                    cap.attach()
                    hooked.append(forward_us())
                    cap.remove()
                else:
                    bare.append(forward_us())
        cap.attach()
        monitor.close()
    return {
        "hooked_layers": len(cap.layers),
        "forward_us_hooks_gated_off": round(statistics.median(hooked), 1),
        "forward_us_no_hooks": round(statistics.median(bare), 1),
        "overhead_us_per_forward": round(statistics.median(hooked) - statistics.median(bare), 1),
    }


#: The workloads: the demo's own training configuration (``featureviz demo``: batch 64 of
#: 32x32 images), which the targets are judged on, and the same model at batch 16, a step a
#: quarter the size, where the capture's fixed costs (the probe's batch-1 forward, a few ops
#: per conv) weigh four times as much.
WORKLOADS = {"demo (batch 64)": 64, "small steps (batch 16)": 16}

TARGETS = {
    "throughput_every100_vs_none": (">=", 0.99),
    "throughput_unsampled_vs_none": (">=", 0.995),
    "capture_step_vs_normal": ("<=", 1.2),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps (a smoke run)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON path")
    args = parser.parse_args(argv)
    if args.quick:
        runs = {"small steps (batch 8)": run_throughput(batch=8, rounds=2, capture_samples=6)}
        hooks = run_hook_overhead(repeats=6)
        soak = run_soak(300)
    else:
        runs = {name: run_throughput(batch=batch) for name, batch in WORKLOADS.items()}
        hooks = run_hook_overhead()
        soak = run_soak(3000)

    print(f"FeatureMonitor on CPU ({torch.get_num_threads()} threads, torch {torch.__version__})")
    names = list(runs)
    width = max(24, *(len(n) + 2 for n in names))
    print(f"{'ms per step (mean)':<30}" + "".join(f"{n:>{width}}" for n in names))
    for k in next(iter(runs.values()))["mean_step_ms"]:
        print(f"{k:<30}" + "".join(f"{r['mean_step_ms'][k]:>{width}.3f}" for r in runs.values()))
    for key, label in (
        ("capture_step_ms", "capturing step (median)"),
        ("normal_step_ms", "normal step (median)"),
    ):
        print(f"{label:<30}" + "".join(f"{r[key]:>{width}.3f}" for r in runs.values()))
    print()
    print(f"{'ratio':<30}" + "".join(f"{n:>{width}}" for n in names) + f"{'target':>10}")
    for k, (op, target) in TARGETS.items():
        cells = ""
        for r in runs.values():
            value = r[k]
            ok = value >= target if op == ">=" else value <= target
            cells += f"{f'{value:.4f} ' + ('ok' if ok else 'MISSED'):>{width}}"
        print(f"{k:<30}{cells}{op + str(target):>10}")
    print()
    first = next(iter(runs.values()))
    per_step = hooks["overhead_us_per_forward"] / (first["normal_step_ms"] * 1000)
    print(
        f"gated-off hooks ({hooks['hooked_layers']} layers): "
        f"{hooks['overhead_us_per_forward']} us per forward "
        f"({hooks['forward_us_no_hooks']} -> {hooks['forward_us_hooks_gated_off']} us on a tiny "
        f"input), {per_step:.2%} of a mean training step of {names[0]}"
    )
    print(
        f"soak: {soak['steps']} steps, capture every {soak['every']} "
        f"({soak['dropped']} dropped), {soak['seconds']} s; "
        f"RSS {soak['rss_before_mb']} -> {soak['rss_after_mb']} MB "
        f"(drift {soak['rss_drift_mb']} MB, second half {soak['rss_drift_second_half_mb']} MB); "
        f"threads {soak['threads_before']} -> {soak['threads_after']}; "
        f"open files {soak['open_files_before']} -> {soak['open_files_after']}"
    )
    load = os.getloadavg()
    print(f"load average (1, 5, 15 min): {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    result = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            # Other processes' load skews every ratio; read the figures with it in mind.
            "load_average_after": [round(v, 2) for v in os.getloadavg()],
        },
        "quick": args.quick,
        "targets_judged_on": names[0],
        "throughput": runs,
        "hook_overhead": hooks,
        "targets": {k: f"{op} {t}" for k, (op, t) in TARGETS.items()},
        "soak": soak,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
