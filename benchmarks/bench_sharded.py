"""Benchmark FeatureMonitor under sharded training: the cost of a capture under FSDP.

Two gloo ranks on CPU (one thread each), the demo model sharded per stage and at the root with
FSDP2 (``fully_shard``) and FSDP1 (``FullyShardedDataParallel``), each with and without a probe;
a monitor capturing every ``every`` steps. Reported: the step before a sampled step (it gathers
the filters and runs the probe pass where named) and the sampled step (it captures and queues),
each against a plain step, the slower rank's medians.

Run: ``python -m benchmarks.bench_sharded [--quick]`` (as a module: its ranks are spawned from
it). Prints a table, writes ``benchmarks/results/monitor_fsdp_cpu.json``.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks._harness import RESULTS_DIR, base_parser, machine_info, write_json, write_text
from benchmarks._monitor_workload import Workload

__all__ = ["FSDP_VARIANTS", "main", "run_fsdp"]

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
    rank: int, world: int, port: int, steps: int, every: int, batch: int, out: str
) -> None:
    """One rank: every variant of :data:`FSDP_VARIANTS` in turn, each on a fresh model, in one
    process group (one start of the ranks for the whole run)."""
    import torch.distributed as dist

    from torch_featureviz import FeatureMonitor
    from torch_featureviz.demo import build_demo_model

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
        timeout=datetime.timedelta(seconds=120),
    )
    results: dict[str, Any] = {}
    for kind, probe in FSDP_VARIANTS:
        model = _shard_demo(build_demo_model(8, seed=0).train(), kind)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        g = torch.Generator().manual_seed(rank)
        pool = [
            (torch.randn(batch, 3, 32, 32, generator=g), torch.randint(0, 8, (batch,), generator=g))
            for _ in range(8)
        ]
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
        results[_variant_name(kind, probe)] = {"rows": rows, "dropped": dropped}
    everyone: list[Any] = [None] * world
    dist.all_gather_object(everyone, results)
    if rank == 0:
        Path(out).write_text(json.dumps(everyone))
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)  # gloo's static destructors can abort at exit once all is done


def _spawn_ranks(steps: int, every: int, batch: int, timeout: float) -> list[dict[str, Any]]:
    """Start the 2 ranks once for every variant; each rank's rows per variant."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rows.json")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        ctx = mp.spawn(
            _fsdp_worker, args=(2, port, steps, every, batch, out), nprocs=2, join=False
        )
        deadline = time.monotonic() + timeout
        while not ctx.join(timeout=2.0):
            if time.monotonic() > deadline:
                for proc in ctx.processes:
                    proc.kill()
                raise RuntimeError(f"the FSDP run did not finish in {timeout:g} s")
        return list(json.loads(Path(out).read_text()))


def _per_rank(r: int, data: dict[str, Any], every: int) -> dict[str, Any]:
    """One rank's medians of one variant, the first capture period (warm-up) dropped."""
    rows = [row for row in data["rows"] if row[0] >= every]
    sampled = [row[2] for row in rows if row[1]]
    arming = [row[2] for row in rows if not row[1] and (row[0] + 1) % every == 0]
    plain = [row[2] for row in rows if not row[1] and (row[0] + 1) % every != 0]
    in_step = [row[3] for row in rows if row[1]]
    in_arming = [row[3] for row in rows if not row[1] and (row[0] + 1) % every == 0]
    return {
        "rank": r,
        "unsampled_step_ms": round(statistics.median(plain), 3),
        "arming_step_ms": round(statistics.median(arming), 3),
        "sampled_step_ms": round(statistics.median(sampled), 3),
        "monitor_step_on_arming_ms": round(statistics.median(in_arming), 3),
        "monitor_step_on_sampled_ms": round(statistics.median(in_step), 3),
        "sampled_steps": len(sampled),
        "dropped": data["dropped"],
    }


def run_fsdp(*, steps: int, every: int, batch: int, timeout: float = 900) -> dict[str, Any]:
    """2 gloo ranks on CPU, the demo model sharded, a monitor capturing every ``every`` steps:
    the extra time of the two steps a capture touches over a plain step: the step before a
    sampled step (its ``step()`` gathers the filters and runs the probe pass) and the sampled
    step (its forward armed, its ``step()`` queueing).

    Each step starts at a barrier, so its time is one rank's own work plus the collectives it
    waits in. The variants run one after the other in the same two processes, each on a fresh
    model; the first capture period of each is warm-up and not counted.
    """
    result: dict[str, Any] = {"steps": steps, "every": every, "batch": batch, "world": 2}
    ranks = _spawn_ranks(steps, every, batch, timeout)
    for kind, probe in FSDP_VARIANTS:
        name = _variant_name(kind, probe)
        per_rank = [_per_rank(r, data[name], every) for r, data in enumerate(ranks)]
        base = max(d["unsampled_step_ms"] for d in per_rank)
        sampled_ms = max(d["sampled_step_ms"] for d in per_rank)
        arming_ms = max(d["arming_step_ms"] for d in per_rank)
        result[name] = {
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


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table; write JSON (and Markdown). Returns an exit code."""
    parser = base_parser(
        "bench_sharded", (__doc__ or "").splitlines()[0],
        json_default="benchmarks/results/monitor_fsdp_cpu.json",
        quick_help="30 steps, a capture every 10, batch 16 (a smoke run)",
    )
    parser.set_defaults(device="cpu")
    parser.add_argument("--batch", type=int, default=None, help="batch per rank")
    args = parser.parse_args(argv)
    if args.device != "cpu":
        print("bench_sharded: error: gloo on CPU only (--device cpu)", file=sys.stderr)
        return 2
    if args.batch is not None and args.batch < 1:
        print("bench_sharded: error: --batch must be >= 1", file=sys.stderr)
        return 2
    out = args.json or RESULTS_DIR / "monitor_fsdp_cpu.json"
    result = run_fsdp(
        steps=30 if args.quick else 200, every=10 if args.quick else 20,
        batch=args.batch or (16 if args.quick else 64),
    )
    result["machine"] = machine_info("cpu")
    write_json(out, result, indent=2)
    table = format_fsdp(result)
    if args.markdown:
        write_text(args.markdown, table + "\n")
    print(table)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
