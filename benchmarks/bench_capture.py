"""Benchmark torch_featureviz: hook mode vs chain mode vs peers, and end-to-end logging.

Run from the repository root::

    python -m benchmarks.bench_capture            # full run on CUDA if present, else CPU
    python -m benchmarks.bench_capture --quick    # < 1 minute on CPU
    python -m benchmarks.bench_capture --device cpu --json out.json --markdown out.md

What is measured (see benchmarks/RESULTS.md for the definitions in prose):

* Per model (random weights, eval mode, ``torch.no_grad()``) and input size/batch: the bare
  forward (the floor), then as ratios to it: hook capture of every conv (``FeatureCapture``, the
  package default of the first 64 channels of sample 0, and all channels), chain mode, and peers
  doing the same work: torchvision ``create_feature_extractor`` returning every conv output,
  naive hooks keeping a full ``.detach().cpu()`` copy of every conv output, and, when installed,
  captum ``LayerActivation`` and torchlens. Timings are medians after warm-up; variants run
  interleaved, round-robin, and each ratio is the median of per-round ratios to the bare forward
  of the same round (robust to a machine whose load drifts). On CUDA, CUDA events with
  synchronisation.
* Chain fidelity: per conv layer, the cosine similarity between the chain map and the real (hook)
  map of the same layer, both the first 64 channels of sample 0. Chain maps skip pooling and
  strides between convs, so their spatial size can differ (2x on ResNets): both maps are
  ``adaptive_avg_pool2d``-ed to the smaller height and width, then flattened over channels and
  pixels. Summarised as median and minimum over layers.
* Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` around one call of each variant; on
  CPU the peak resident set size (``VmHWM``) of one call, measured in a separate process whose
  glibc ``malloc`` returns every block >= 64 KiB to the OS on free (``mallopt``), with the peak
  reset through ``/proc/self/clear_refs`` before each variant.
* End to end: the forward pass with capture of every conv layer of resnet50 for one 224 image,
  then a grid per layer written to disk, in three ways: torch_featureviz (``TensorBoardWriter``),
  torchvision ``make_grid`` + ``SummaryWriter.add_image``, and the original article's pyplot
  path (an 8x8 grid of subplots on a 30x30-inch figure per layer, then ``savefig``).

``featureviz bench ARGS`` imports this module and calls :func:`main` with ``ARGS``. The parts
live in ``_capture_variants`` (what is timed), ``_capture_end_to_end`` and ``_capture_report``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torchvision

import torch_featureviz as fv
from benchmarks._capture_end_to_end import run_end_to_end
from benchmarks._capture_report import format_tables, targets
from benchmarks._capture_variants import (
    MAX_CHANNELS,
    MODELS,
    Config,
    build_input,
    build_model,
    build_variants,
    chain_fidelity,
    make_config,
    time_variants,
)
from benchmarks._harness import (
    RESULTS_DIR,
    Variant,
    base_parser,
    cuda_missing,
    machine_info,
    measure_memory,
    paired_ratio,
    prepare_rss_measurement,
    summary,
    write_json,
    write_text,
)

__all__ = ["main", "run_benchmark"]

SCHEMA_VERSION = 1
CHILD_MARKER = "@@BENCH-CHILD-RESULT@@"


# ---------------------------------------------------------------------------------------------
# child processes: CPU memory (clean allocator state) and torchlens (wraps torch globally)
# ---------------------------------------------------------------------------------------------
def _run_child(job: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Run ``job`` in a fresh interpreter running this module; return its JSON result."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])  # where `benchmarks` imports from
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-m", "benchmarks.bench_capture", "--_child", json.dumps(job)]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout_s, env=env, check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": f"child {job['job']} timed out after {timeout_s:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith(CHILD_MARKER):
            return dict(json.loads(line[len(CHILD_MARKER) :]))
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"error": f"child {job['job']} failed (exit {proc.returncode}): {' | '.join(tail)}"}


def _child_main(job: dict[str, Any]) -> int:
    cfg = Config(**job["config"])
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out: dict[str, Any] = {}
    if job["job"] == "memory":
        prepare_rss_measurement()
        with torch.no_grad():
            for model_name, size, batch in job["cases"]:
                model = build_model(model_name, cfg.device)
                x = build_input(size, batch, cfg.device)
                variants = build_variants(model, x, cfg, {})
                out[f"{model_name}/{size}/{batch}"] = measure_memory(variants, cfg.device)
                del model, x, variants
    elif job["job"] == "torchlens":
        out = _torchlens_child(cfg, job["cases"])
    print(CHILD_MARKER + json.dumps(out), flush=True)
    return 0


def _torchlens_child(cfg: Config, cases: list[list[Any]]) -> dict[str, Any]:
    """Time torchlens against a bare forward measured first in the same process."""
    import torchlens
    from torchlens.options import CaptureOptions

    out: dict[str, Any] = {}
    pending_memory: list[tuple[str, list[Variant]]] = []
    with torch.no_grad():
        for model_name, size, batch in cases:
            model = build_model(model_name, cfg.device)
            x = build_input(size, batch, cfg.device)
            bare = Variant("bare", functools.partial(model, x))
            tl = Variant(
                "torchlens",
                functools.partial(
                    torchlens.trace,
                    model,
                    x,
                    save=torchlens.func("conv2d"),
                    capture=CaptureOptions(unwrap_when_done=True),
                ),
            )
            errors: dict[str, str] = {}
            # Bare first, on its own: torchlens may leave torch functions wrapped afterwards.
            bare_times = time_variants([bare], cfg, errors)["bare"]
            tl_times = time_variants([tl], cfg, errors).get("torchlens")
            key = f"{model_name}/{size}/{batch}"
            res: dict[str, Any] = {"bare_times": bare_times, "errors": errors}
            if tl_times:
                res["times"] = tl_times
                res["ratio_to_bare"] = statistics.median(tl_times) / statistics.median(bare_times)
                pending_memory.append((key, [bare, tl]))
            out[key] = res
    if cfg.device.startswith("cuda"):
        for key, variants in pending_memory:
            out[key]["memory"] = measure_memory(variants, cfg.device)
    else:
        prepare_rss_measurement()
        for key, variants in pending_memory:
            out[key]["memory"] = measure_memory(variants, cfg.device)
    return out


# ---------------------------------------------------------------------------------------------
# one case
# ---------------------------------------------------------------------------------------------
def run_case(model_name: str, size: int, batch: int, cfg: Config) -> dict[str, Any]:
    """Time every variant of one (model, size, batch) case; GPU memory in-process."""
    model = build_model(model_name, cfg.device)
    x = build_input(size, batch, cfg.device)
    info: dict[str, Any] = {"errors": {}}
    case: dict[str, Any] = {
        "model": model_name,
        "size": size,
        "batch": batch,
        "convs": len(fv.find_conv_layers(model)),
    }
    with torch.no_grad():
        variants = build_variants(model, x, cfg, info)
        times = time_variants(variants, cfg, info["errors"])
        bare = times["bare"]
        case["variants"] = {
            name: {**summary(ts), "ratio_to_bare": paired_ratio(ts, bare)}
            for name, ts in times.items()
        }
        chain: dict[str, Any] = {"runs": "chain" in times}
        if "chain" in info["errors"]:
            chain["error"] = info["errors"]["chain"]
        if chain["runs"] and batch == 1:  # sample 0 is the same image at every batch size
            hook_maps = fv.capture_feature_maps(model, x, max_channels=MAX_CHANNELS)
            chain_maps = fv.chain_feature_maps(model, x, max_channels=MAX_CHANNELS)
            chain["fidelity"] = chain_fidelity(hook_maps, chain_maps)
        case["chain"] = chain
        if cfg.device.startswith("cuda"):
            for name, mem in measure_memory(variants, cfg.device).items():
                case["variants"][name].update(mem)
    if "fx_build_s" in info:
        case["fx_build_ms"] = info["fx_build_s"] * 1000.0
    case["errors"] = info["errors"]
    del model, x, variants
    gc.collect()
    if cfg.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return case



def _merge_torchlens(cases: list[dict[str, Any]], tl: dict[str, Any]) -> None:
    """Add the torchlens child's figures to the cases it measured."""
    for case in cases:
        res = tl.get(f"{case['model']}/{case['size']}/{case['batch']}")
        if not res:
            continue
        case["errors"].update(res.get("errors", {}))
        if "times" in res:
            case["variants"]["torchlens"] = {
                **summary(res["times"]),
                "ratio_to_bare": res["ratio_to_bare"],
                "bare_median_ms_same_process": statistics.median(res["bare_times"]) * 1e3,
                **res.get("memory", {}).get("torchlens", {}),
            }


def run_benchmark(
    cfg: Config,
    *,
    progress: Callable[[str], None] = print,
    checkpoint: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Measure everything ``cfg`` asks for and return the JSON-ready results.

    ``checkpoint`` receives the partial results (``"complete": False``) after each step, so a
    run stopped by a time limit still leaves its figures behind.
    """
    started = time.perf_counter()
    threads_before = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _run_benchmark(cfg, progress, checkpoint or (lambda r: None), started)
    finally:
        torch.set_num_threads(threads_before)


def _run_benchmark(
    cfg: Config,
    progress: Callable[[str], None],
    checkpoint: Callable[[dict[str, Any]], None],
    started: float,
) -> dict[str, Any]:
    results: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "benchmark": "bench_capture",
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": cfg.device,
        "quick": cfg.quick,
        "config": asdict(cfg),
        "machine": machine_info(
            cfg.device, ("numpy", "matplotlib", "tensorboard", "captum", "torchlens")
        ),
        "memory_method": (
            "cuda: torch.cuda.max_memory_allocated during one call (peak includes model and "
            "input; extra = peak - allocated before the call)"
            if cfg.device.startswith("cuda")
            else "cpu: peak RSS (VmHWM) of one call, in a separate process with glibc "
            "M_MMAP_THRESHOLD fixed at 64 KiB (freed tensors leave the RSS) and VmHWM reset via "
            "/proc/self/clear_refs before each call; extra = VmHWM - VmRSS before the call"
        ),
        "timing_method": (
            f"{cfg.warmup} warm-up call(s) per variant, then up to {cfg.repeats} rounds, "
            "variants interleaved round-robin; medians; ratio_to_bare = median of per-round "
            "ratios to the bare forward of the same round"
            + ("; CUDA events + synchronize" if cfg.device.startswith("cuda") else "")
        ),
        "complete": False,
        "cases": [],
    }
    phases: dict[str, float] = {}
    results["phase_s"] = phases
    # End to end first: it carries two of the targets, and a time-limited run keeps it.
    if cfg.e2e:
        progress(f"[bench] end to end: {cfg.e2e_model}, grids of every conv layer to disk ...")
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="featureviz-bench-") as tmp:
            results["end_to_end"] = run_end_to_end(cfg, Path(tmp))
        phases["end_to_end"] = time.perf_counter() - t0
        checkpoint(results)
    grid = [(m, s, b) for m in cfg.models for s in cfg.sizes for b in cfg.batches]
    for model_name, size, batch in grid:
        progress(f"[bench] {model_name} {size}px batch {batch} on {cfg.device} ...")
        t0 = time.perf_counter()
        results["cases"].append(run_case(model_name, size, batch, cfg))
        phases[f"{model_name}/{size}/{batch}"] = time.perf_counter() - t0
        results["targets"] = targets(results)
        checkpoint(results)
    if not cfg.device.startswith("cuda"):
        progress("[bench] peak RSS per variant (separate process) ...")
        t0 = time.perf_counter()
        mem = _run_child(
            {"job": "memory", "config": asdict(cfg), "cases": grid}, timeout_s=1800
        )
        results["memory_error"] = mem.pop("error", None)
        phases["memory"] = time.perf_counter() - t0
        for case in results["cases"]:
            for name, m in mem.get(f"{case['model']}/{case['size']}/{case['batch']}", {}).items():
                if name in case["variants"]:
                    case["variants"][name].update(m)
        checkpoint(results)
    if cfg.torchlens:
        tl_cases = [c for c in grid if c[2] == 1]  # torchlens logs every op: batch 1 only
        progress(f"[bench] torchlens, {len(tl_cases)} cases (separate process) ...")
        t0 = time.perf_counter()
        tl = _run_child({"job": "torchlens", "config": asdict(cfg), "cases": tl_cases}, 3600)
        phases["torchlens"] = time.perf_counter() - t0
        results["torchlens_error"] = tl.pop("error", None)
        _merge_torchlens(results["cases"], tl)
    results["targets"] = targets(results)
    results["complete"] = True
    with contextlib.suppress(OSError):
        results["machine"]["load_average_end"] = list(os.getloadavg())
    results["wall_s"] = time.perf_counter() - started
    return results



# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = base_parser(
        "bench_capture",
        "Benchmark hook capture, chain mode and peers, and end-to-end logging.",
        json_default="benchmarks/results/bench_<device>.json, bench_<device>_quick.json with "
        "--quick",
        quick_help="a < 1 minute smoke run on CPU",
        device_default=None,
    )
    parser.add_argument("--models", nargs="+", default=None, help=f"subset of {', '.join(MODELS)}")
    parser.add_argument("--sizes", nargs="+", type=int, default=None, help="input sizes")
    parser.add_argument(
        "--batches",
        nargs="+",
        type=int,
        default=None,
        help="batch sizes (default: 1 and 32 on CUDA, 1 on CPU)",
    )
    parser.add_argument(
        "--no-end-to-end", action="store_true", help="skip the end-to-end logging paths"
    )
    parser.add_argument(
        "--no-peers", action="store_true", help="skip the optional peers (captum, torchlens)"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed rounds per case (default 31 on CPU, 7 on CUDA; 3 with --quick)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's default; 1 with --quick on CPU)",
    )
    parser.add_argument(
        "--from-json",
        type=Path,
        default=None,
        metavar="PATH",
        help="print (and --markdown) the tables of an earlier run's JSON; measure nothing",
    )
    parser.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the tables; write JSON (and Markdown). Returns an exit code."""
    args = build_parser().parse_args(argv)
    if args._child is not None:
        return _child_main(json.loads(args._child))
    if args.from_json is not None:
        table = format_tables(json.loads(args.from_json.read_text()))
        print(table)
        if args.markdown:
            args.markdown.parent.mkdir(parents=True, exist_ok=True)
            args.markdown.write_text(table + "\n")
        return 0
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if cuda_missing("bench_capture", device):
        return 2
    if args.models:
        unknown = sorted(set(args.models) - set(torchvision.models.list_models()))
        if unknown:
            print(f"bench_capture: error: unknown models {unknown}", file=sys.stderr)
            return 2
    if args.batches and min(args.batches) < 1 or args.sizes and min(args.sizes) < 1:
        print("bench_capture: error: --batches and --sizes must be >= 1", file=sys.stderr)
        return 2
    if args.threads is not None and args.threads < 1:
        print("bench_capture: error: --threads must be >= 1", file=sys.stderr)
        return 2
    if args.repeats is not None and args.repeats < 3:
        print("bench_capture: error: --repeats must be >= 3", file=sys.stderr)
        return 2
    cfg = make_config(
        device,
        quick=args.quick,
        models=args.models,
        sizes=args.sizes,
        batches=args.batches,
        peers=not args.no_peers,
        threads=args.threads,
        e2e=not args.no_end_to_end,
    )
    if args.repeats is not None:
        cfg = dataclasses.replace(cfg, repeats=args.repeats)
    suffix = "_quick" if cfg.quick else ""
    path = args.json or RESULTS_DIR / f"bench_{device}{suffix}.json"

    def save(results: dict[str, Any]) -> None:
        write_json(path, results)

    results = run_benchmark(
        cfg, progress=lambda s: print(s, file=sys.stderr, flush=True), checkpoint=save
    )
    save(results)
    table = format_tables(results)
    print(table)
    print(f"\nJSON: {path}", file=sys.stderr)
    if args.markdown:
        write_text(args.markdown, table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
