"""The monitor benchmarks' close-ups: the capturing step against a normal step (on one step, and
split over two at ``every=2``), the gated-off hooks of a compiled model, and one unsampled
``monitor.step()`` call."""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from benchmarks._harness import (
    Variant,
    interleave,
    timed_call,
)
from benchmarks._monitor_workload import NEVER, FeatureVizSubject, Subject, Trainer, Workload


def capturing_step(sub: Subject, device: str, samples: int) -> dict[str, Any]:
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


def split_capture(sub: FeatureVizSubject, device: str, samples: int) -> dict[str, Any]:
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

    trainer = Trainer(Workload(model=model, batch=1, size=8, device=device), pool=1)
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
    trainer = Trainer(tiny, pool=1)
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


