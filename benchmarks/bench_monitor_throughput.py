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
thread count and open file count before and after; the gated-off hooks of a compiled model; and
one unsampled ``monitor.step()`` call.

Run: ``python -m benchmarks.bench_monitor_throughput [--quick]``. Prints a table, writes
``benchmarks/results/monitor_cpu.json``. The peers on the same loop:
``python -m benchmarks.bench_monitor_peers``; under FSDP: ``python -m benchmarks.bench_sharded``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import sys
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

import torch

from benchmarks._harness import (
    RESULTS_DIR,
    Variant,
    base_parser,
    cuda_missing,
    interleave,
    machine_info,
    write_json,
    write_text,
)
from benchmarks._monitor_report import TARGETS, format_table, met
from benchmarks._monitor_steps import (
    capturing_step,
    run_hook_overhead,
    run_unsampled_call,
    split_capture,
)
from benchmarks._monitor_workload import (
    NEVER,
    PERIOD,
    FeatureVizSubject,
    Subject,
    Trainer,
    Workload,
    flushing_denormals,
    paired_variants,
    run_soak,
    throughput_ratios,
)

__all__ = ["main", "run_throughput"]

#: The workloads: the demo's own training configuration (``featureviz demo``: batch 64 of
#: 32x32 images), which the targets are judged on, and the same model at batch 16, a step a
#: quarter the size, where the capture's fixed costs (the probe's batch-1 forward, a few ops
#: per conv) weigh four times as much. ``--model``/``--batch``/... measure one workload instead.
WORKLOADS = {"demo (batch 64)": 64, "small steps (batch 16)": 16}
LABELS = {
    "unsampled": "throughput_unsampled_vs_none",
    f"every{PERIOD}": "throughput_every100_vs_none",
}
Peers = Mapping[str, type[Subject]]


def _make(
    name: str, peers: Peers, trainer: Trainer, log_dir: str, every: int, charge_writer: bool
) -> Subject:
    if name == "featureviz":
        return FeatureVizSubject(trainer, log_dir, every, charge_writer=charge_writer)
    return peers[name](trainer, log_dir, every)


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).strip()[:200]}"


def _attach_subjects(
    workload: Workload, peers: Peers, d: str, charge_writer: bool, errors: dict[str, str]
) -> tuple[dict[str, dict[str, Subject]], list[Variant]]:
    """Ours and each peer, unsampled and at ``every=PERIOD``, each warmed up; a peer that
    cannot run is reported in ``errors``, not fatal."""
    made: dict[str, dict[str, Subject]] = {}
    variants: list[Variant] = []
    for s in ["featureviz", *peers]:
        mine: list[Variant] = []
        try:
            made[s] = {
                label: _make(s, peers, Trainer(workload), f"{d}/{s}-{label}", every, charge_writer)
                for label, every in (("unsampled", NEVER), (f"every{PERIOD}", PERIOD))
            }
            for label, sub in made[s].items():
                mine += paired_variants(sub, label if s == "featureviz" else f"{s}:{label}")
            # Warm-up (allocator, first capture, cuDNN's choice of algorithms): a monitored
            # model a period less the one call interleave makes, so its timed steps start a
            # period; its twin (the same tensors) a few steps.
            for v in mine:
                for _ in range(3 if v.name.startswith("none (") else PERIOD - 1):
                    v.run()
        except Exception as e:
            if s == "featureviz":
                raise
            errors[s] = _error(e)
            for sub in made.pop(s, {}).values():
                with contextlib.suppress(Exception):
                    sub.close()
            continue
        variants += mine
    return made, variants


def _control_variants(workload: Workload, d: str) -> list[Variant]:
    """A model with nothing attached against its twin, the same way: its ratio is what the
    method reads when there is no cost at all (its bias and noise)."""
    control = paired_variants(Subject(Trainer(workload), d, NEVER), "control")
    for v in control:
        for _ in range(3):
            v.run()
    return control


def _close_ups(
    made: Mapping[str, Any], workload: Workload, peers: Peers, d: str, samples: int,
    errors: dict[str, str],
) -> dict[str, dict[str, Any]]:
    """The capturing step alone: a monitor capturing every step against its twin. Ours spreads
    a capture over two steps when captures are apart (the step before reads the filters and
    runs the probe pass): each is measured at every=2, and the whole capture on one step at
    every=1, which is also what the peers are measured on. The writer's wait is timed on its
    own, after the step (never charged here)."""
    device = workload.device
    capture: dict[str, dict[str, Any]] = {}
    for s in made:
        try:
            sub = _make(s, peers, Trainer(workload), f"{d}/{s}-c", 1, False)
            one_step = capturing_step(sub, device, samples)
            capture[s] = one_step
            if s != "featureviz":
                continue
            capture[s] = {
                **{k.replace("capture_step", "capture_on_one_step"): v
                   for k, v in one_step.items()},
                **split_capture(FeatureVizSubject(Trainer(workload), f"{d}/{s}-s", 2), device,
                                samples),
            }
            # The same without a probe: what the probe pass costs.
            no_probe = FeatureVizSubject(Trainer(workload), f"{d}/{s}-n", 1, probe=False)
            alone = capturing_step(no_probe, device, samples)
            for key in ("capture_step_vs_normal", "capture_step_vs_normal_quartiles"):
                new = key.replace("capture_step", "capture_on_one_step_no_probe")
                capture[s][new] = alone[key]
        except Exception as e:
            if s == "featureviz":
                raise
            errors[s] = _error(e)
    return capture


def _result_of(
    s: str, steps: dict[str, list[float]], capture: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """One subject's figures: mean step times, throughput ratios and its close-ups."""
    prefix = "" if s == "featureviz" else f"{s}:"
    sl = {prefix + label: key for label, key in LABELS.items()}
    names = [n for label in sl for n in (f"none ({label}'s model)", label)]
    r: dict[str, Any] = {
        "mean_step_ms": {
            n.replace(prefix, ""): round(statistics.fmean(steps[n]) * 1000, 3) for n in names
        },
        **throughput_ratios(steps, sl, PERIOD),
        **capture[s],
    }
    r["block_ratios"] = {k.replace(prefix, ""): v for k, v in r["block_ratios"].items()}
    if s != "featureviz":  # a peer does all its work on the capturing step
        for k in ("capture_step_vs_normal", "capture_step_with_writer_vs_normal"):
            if k in r:
                r[k.replace("capture_step", "capture_on_one_step")] = r[k]
    return r


def _add_control(ours: dict[str, Any], steps: dict[str, list[float]]) -> None:
    """The control's ratio, the paired-step medians and each ratio's standard error."""
    control = throughput_ratios(steps, {"control": "throughput_control_vs_none"}, PERIOD)
    ours["throughput_control_vs_none"] = control["throughput_control_vs_none"]
    # Robust to the bursts of a shared machine: the median over rounds of each step's ratio to
    # the baseline step of the same round (adjacent in time). Every unsampled step is alike, so
    # this is the per-step cost; at every=100 it would leave the capturing steps out.
    for label in ("unsampled", "control"):
        ref, var = steps[f"none ({label}'s model)"], steps[label]
        ours[f"paired_median_{label}_vs_none"] = round(
            statistics.median(a / b for a, b in zip(ref, var, strict=False)), 4
        )
    ours["block_ratios"]["control"] = control["block_ratios"]["control"]
    # The standard error of each ratio, from its spread over capture periods.
    ours["ratio_stderr"] = {
        label: round(statistics.stdev(r) / math.sqrt(len(r)), 4) if len(r) > 1 else None
        for label, r in ours["block_ratios"].items()
    }


def _partial(
    workload: Workload, steps: dict[str, list[float]], made: Mapping[str, Any]
) -> dict[str, Any]:
    return {
        "workload": workload._asdict(),
        "partial": True,
        **throughput_ratios(steps, LABELS, PERIOD),
        "peers": {
            s: throughput_ratios(steps, {f"{s}:{k}": v for k, v in LABELS.items()}, PERIOD)
            for s in made
            if s != "featureviz" and all(f"{s}:{k}" in steps for k in LABELS)
        },
    }


def run_throughput(
    *,
    batch: int | None = None,
    rounds: int = 8,
    capture_samples: int = 40,
    workload: Workload | None = None,
    peers: Peers | None = None,
    charge_writer: bool = False,
    on_partial: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Seconds per step of each variant, interleaved step by step; and the capturing step alone.

    For this package and each peer (``{name: Subject class}``), two models, each with its
    monitor: ``unsampled`` (``every`` never reached) and ``every100``. Each is timed against
    ``none``: the same model with the monitor's hooks taken off for that step, or, for a peer
    that cannot take them off, its hook-free twin (same tensors, no hooks, see
    :func:`benchmarks._monitor_workload.hook_free_twin`); a control pair with nothing attached
    reads the twin method's own bias. Every kind of step takes turns one step at a time
    (:func:`benchmarks._harness.interleave`), in a rotating order, for ``rounds`` capture
    periods of ``PERIOD`` steps, so whatever the machine does over seconds falls on all of them
    alike. Ratios compare total times; ``block_ratios`` gives each period's. The capturing step:
    a third model whose monitor captures every step, against its twin, in adjacent pairs (the
    writer settled between pairs, as between sparse captures); the ratio is the median over
    pairs. ``on_partial`` receives the throughput ratios as soon as they are measured (before
    the capturing steps), so a run stopped by a time limit still leaves them.
    """
    if workload is None:
        workload = Workload(batch=64 if batch is None else batch)
    elif batch is not None:
        raise ValueError("give batch or workload, not both")
    peers = dict(peers or {})
    torch.manual_seed(0)
    errors: dict[str, str] = {}
    with flushing_denormals(), tempfile.TemporaryDirectory(prefix="featureviz-bench-") as d:
        made, variants = _attach_subjects(workload, peers, d, charge_writer, errors)
        variants += _control_variants(workload, d)
        settle = [sub for subs in made.values() for sub in subs.values()]

        def on_round(r: int) -> None:
            if not charge_writer and r % PERIOD == 0:
                for sub in settle:
                    sub.settle()

        steps = interleave(
            variants, device=workload.device, rounds=rounds * PERIOD, warmup=1,
            always=[v.name for v in variants], errors=errors, gc_every=PERIOD, on_round=on_round,
        )
        if on_partial is not None:
            on_partial(_partial(workload, steps, made))
        capture = _close_ups(made, workload, peers, d, capture_samples, errors)
        extras = {s: {lb: sub.close() for lb, sub in subs.items()} for s, subs in made.items()}
        for cls in peers.values():
            cls.finish()  # before its temporary directory goes
    ours = _result_of("featureviz", steps, capture)
    _add_control(ours, steps)
    peers_out = {}
    for s in made:
        if s != "featureviz":
            try:
                peers_out[s] = {"name": peers[s].name, **_result_of(s, steps, capture)}
            except KeyError:  # one of its variants failed: its error is in `errors`
                errors.setdefault(s, "a variant failed; see the errors of its variants")
    return {
        "workload": workload._asdict(),
        "batch": workload.batch,
        "period_steps": PERIOD,
        "steps_per_variant": len(steps[f"every{PERIOD}"]),
        "captures": rounds,
        "writer": "charged to the capturing step" if charge_writer else "overlapped",
        **ours,
        "dropped": {label: extras["featureviz"][label].get("dropped") for label in LABELS},
        "peers": peers_out,
        "peer_errors": errors,
    }


# -- the command line (shared with bench_monitor_peers) -----------------------------------------
def build_parser(
    prog: str = "bench_monitor_throughput", doc: str | None = None
) -> argparse.ArgumentParser:
    """The options of the monitor benchmarks: the workload, the rounds and the writer."""
    parser = base_parser(
        prog, (doc or __doc__ or "").splitlines()[0],
        json_default=f"benchmarks/results/{'monitor_peers' if 'peers' in prog else 'monitor'}"
        "_<device>.json",
        quick_help="fewer steps (a smoke run)",
    )
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
        "--writer", choices=("charged", "overlap"), default="overlap",
        help="for the throughput figures: overlap (default) lets the background writer run "
        "beside training, as in real use, so its CPU time slows the steps it shares cores "
        "with; charged makes a capturing step wait for it (an upper bound). The capturing "
        "step is always reported both ways",
    )
    return parser


def check_args(prog: str, args: argparse.Namespace) -> bool:
    """Whether the options make sense (else say why on stderr)."""
    if cuda_missing(prog, args.device):
        return False
    for name in ("batch", "size", "rounds", "capture_samples", "classes"):
        value = getattr(args, name)
        if value is not None and value < 1:
            print(f"{prog}: error: --{name.replace('_', '-')} must be >= 1", file=sys.stderr)
            return False
    return True


def workloads_of(args: argparse.Namespace) -> dict[str, Workload]:
    """The workloads the options name (the two default ones, a quick one, or ``--model``)."""
    if args.model is not None or args.device != "cpu" or args.amp:
        model = args.model or "demo"
        w = Workload(
            model=model,
            batch=args.batch or (8 if args.quick else 64),
            size=args.size or (32 if model == "demo" else 224),
            classes=args.classes,
            device=args.device,
            amp=args.amp,
        )
        return {f"{w.model} (batch {w.batch})": w}
    if args.quick:
        return {"small steps (batch 8)": Workload(batch=args.batch or 8)}
    return {name: Workload(batch=b) for name, b in WORKLOADS.items()}


def new_result(args: argparse.Namespace) -> dict[str, Any]:
    """The JSON every monitor benchmark writes, before anything is measured."""
    return {
        "machine": machine_info(args.device),
        "quick": args.quick,
        "targets": {k: f"{op} {t}" for k, (op, t) in TARGETS.items()},
        "throughput": {},
        "complete": False,
    }


def saver(args: argparse.Namespace, result: dict[str, Any], default: str) -> Callable[[], None]:
    """A function writing ``result`` (and its table) where the options say, whole each time."""
    out = args.json or RESULTS_DIR / default

    def save() -> None:
        write_json(out, result, indent=2)
        if args.markdown:
            write_text(args.markdown, format_table(result) + "\n")

    return save


def measure_workloads(
    args: argparse.Namespace, result: dict[str, Any], save: Callable[[], None], peers: Peers
) -> None:
    """:func:`run_throughput` on each workload of the options, saved as each one ends."""
    workloads = workloads_of(args)
    for name, w in workloads.items():
        print(f"[bench_monitor] {name} ...", file=sys.stderr, flush=True)

        def partial(r: dict[str, Any], name: str = name) -> None:
            result["throughput"][name] = r
            save()

        result["throughput"][name] = run_throughput(
            workload=w,
            rounds=args.rounds or (2 if args.quick else 8),
            capture_samples=args.capture_samples or (6 if args.quick else 40),
            peers=peers,
            charge_writer=args.writer == "charged",
            on_partial=partial,
        )
        save()
    result["targets_judged_on"] = next(iter(workloads))


def print_targets(result: dict[str, Any]) -> None:
    """Each target's ratio per workload, PASS or MISS."""
    names = list(result["throughput"])
    print(f"{'ratio':<30}" + "".join(f"{n:>26}" for n in names) + f"{'target':>10}")
    for k, (op, target) in TARGETS.items():
        cells = "".join(
            f"{f'{r[k]:.4f} ' + ('PASS' if met(k, r[k]) else 'MISS'):>26}"
            for r in result["throughput"].values()
        )
        print(f"{k:<30}{cells}{op + str(target):>10}")


def _close_ups_of_one_call(result: dict[str, Any], args: argparse.Namespace) -> None:
    """The gated-off hooks and one unsampled ``monitor.step()``, against each workload."""
    first = next(iter(workloads_of(args).values()))
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


def _print_close_ups(result: dict[str, Any]) -> None:
    names = list(result["throughput"])
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


def finish(result: dict[str, Any], save: Callable[[], None]) -> None:
    """Mark the run complete, save it and print its table."""
    with contextlib.suppress(OSError):
        result["machine"]["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    result["complete"] = True
    save()
    print(format_table(result))
    print_targets(result)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the tables; write JSON (and Markdown). Returns an exit code."""
    parser = build_parser()
    parser.add_argument("--no-soak", action="store_true", help="skip the leak soak")
    args = parser.parse_args(argv)
    if not check_args("bench_monitor_throughput", args):
        return 2
    result = new_result(args)
    save = saver(args, result, f"monitor_{args.device}.json")
    if not args.no_soak:
        result["soak"] = run_soak(300 if args.quick else 3000)
        save()
    measure_workloads(args, result, save, {})
    _close_ups_of_one_call(result, args)
    finish(result, save)
    _print_close_ups(result)
    load = os.getloadavg()
    print(f"load average (1, 5, 15 min): {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
