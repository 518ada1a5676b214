"""The one harness every benchmark under ``benchmarks/`` shares.

- :func:`machine_info`: where the figures come from (one shape for every benchmark's JSON).
- :class:`Variant`: one way of doing the work; ``setup``/``teardown`` are not timed, ``run`` is.
- :func:`timed_call`: seconds of one ``run()``; CUDA events (with synchronisation) on a GPU,
  ``time.perf_counter`` on the CPU.
- :func:`interleave`: warm each variant up, then time them round-robin in a rotating order, so
  whatever the machine does over seconds falls on all of them alike. Slow variants get fewer
  repeats within a time budget; a variant that raises is reported, not fatal.
- :func:`summary` and :func:`paired_ratio`: medians, means and same-round ratios.
- :func:`measure_memory`: the peak memory of one call of each variant (CUDA: max allocated;
  CPU: peak RSS, see :func:`prepare_rss_measurement`).
- :func:`write_json` and :func:`write_text`: results written whole or not at all (a run stopped
  by a time limit leaves its last complete checkpoint).
- :func:`base_parser`: ``--quick``, ``--json``, ``--markdown`` and ``--device``, alike everywhere.

Benchmarks import it as ``benchmarks._harness`` (run them as ``python -m benchmarks.NAME`` from
the repository root).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import importlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "RESULTS_DIR",
    "Variant",
    "base_parser",
    "cuda_device",
    "cuda_missing",
    "importable",
    "interleave",
    "machine_info",
    "measure_memory",
    "package_version",
    "paired_ratio",
    "prepare_rss_measurement",
    "summary",
    "synchronize",
    "timed_call",
    "write_json",
    "write_text",
]

#: Where the benchmarks write their results by default.
RESULTS_DIR = Path(__file__).resolve().parent / "results"
MB = 1024.0 * 1024.0


def _noop() -> None:
    return None


@dataclass
class Variant:
    """One way of doing the work: ``setup`` and ``teardown`` are not timed, ``run`` is."""

    name: str
    run: Callable[[], Any]
    setup: Callable[[], None] = field(default=_noop)
    teardown: Callable[[], None] = field(default=_noop)


def cuda_device(device: str | torch.device) -> bool:
    """Whether ``device`` names a CUDA device."""
    return torch.device(device).type == "cuda"


def synchronize(device: str | torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if cuda_device(device):
        torch.cuda.synchronize(torch.device(device))


def timed_call(v: Variant, device: str | torch.device) -> float:
    """Seconds one ``v.run()`` takes, ``setup`` and ``teardown`` excluded.

    On CUDA the time is read from CUDA events recorded around the call, after a synchronisation
    before it (so earlier work is not charged to it) and after it (so all of its work is).
    """
    v.setup()
    try:
        if cuda_device(device):
            torch.cuda.synchronize()
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            out = v.run()
            end.record()
            torch.cuda.synchronize()
            seconds = start.elapsed_time(end) / 1000.0
        else:
            t0 = time.perf_counter()
            out = v.run()
            seconds = time.perf_counter() - t0
        del out
    finally:
        v.teardown()
    return seconds


def _error_text(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:200] if lines else ''}"


def interleave(
    variants: Sequence[Variant],
    *,
    device: str | torch.device,
    rounds: int,
    warmup: int = 1,
    min_repeats: int = 1,
    budget_s: float | None = None,
    always: Iterable[str] = ("bare",),
    errors: dict[str, str] | None = None,
    gc_every: int | None = 1,
    on_round: Callable[[int], None] | None = None,
) -> dict[str, list[float]]:
    """Warm each variant up, then time them round-robin for up to ``rounds`` rounds.

    Round ``r`` runs the variants in the order rotated by ``r``, so none always runs first (or
    right after a given other). A variant whose warm-up raises is left out, its error in
    ``errors``; a variant whose warm-up is slow stops warming after one call.

    Args:
        variants: the variants, in table order.
        device: where they run (CUDA events there).
        rounds: the most rounds timed.
        warmup: untimed calls per variant before the first round.
        min_repeats: the fewest timed calls of any variant when ``budget_s`` is set.
        budget_s: seconds of timed calls to spend at most on one variant; ``None``: every
            variant runs every round.
        always: variants that run every round whatever the budget (the floor every other
            variant is divided by, round by round).
        errors: receives ``{name: "Type: message"}`` of the variants that failed.
        gc_every: collect garbage (untimed) every this many rounds; ``None`` never.
        on_round: called (untimed) with the round's index before each timed round.

    Returns:
        ``{name: [seconds, ...]}`` for every variant that ran, in the order of ``variants``.
    """
    errors = {} if errors is None else errors
    always = set(always)
    last: dict[str, float] = {}
    alive: list[Variant] = []
    for v in variants:
        try:
            for i in range(max(1, warmup)):
                last[v.name] = timed_call(v, device)
                remaining = warmup - i - 1 + min_repeats
                if budget_s is not None and last[v.name] * remaining > budget_s:
                    break  # a slow variant is warm after one call; spend the time on repeats
            alive.append(v)
        except Exception as e:  # a peer that cannot do this work is reported, not fatal
            errors[v.name] = _error_text(e)
    if budget_s is None:
        want = {v.name: rounds for v in alive}
    else:
        want = {
            v.name: max(min_repeats, min(rounds, int(budget_s / max(last[v.name], 1e-9))))
            for v in alive
        }
    times: dict[str, list[float]] = {v.name: [] for v in alive}
    for r in range(rounds):
        if gc_every and r % gc_every == 0:
            gc.collect()
        if on_round is not None:
            on_round(r)
        k = r % len(alive) if alive else 0
        for v in alive[k:] + alive[:k]:
            if v.name in always or len(times[v.name]) < want[v.name]:
                times[v.name].append(timed_call(v, device))
        if all(len(times[n]) >= want[n] for n in times):
            break
    return times


def summary(seconds: Sequence[float]) -> dict[str, Any]:
    """Median, mean, count and every time of one variant, in milliseconds."""
    return {
        "median_ms": statistics.median(seconds) * 1000.0,
        "mean_ms": statistics.fmean(seconds) * 1000.0,
        "repeats": len(seconds),
        "times_ms": [t * 1000.0 for t in seconds],
    }


def paired_ratio(times: Sequence[float], base: Sequence[float]) -> float:
    """Median over rounds of ``times[r] / base[r]`` (the two were timed in the same round)."""
    return statistics.median(t / b for t, b in zip(times, base, strict=False))


# -- peak memory ---------------------------------------------------------------------------------
def _proc_status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def prepare_rss_measurement() -> None:
    """Make freed tensors leave the resident set, so peaks of successive variants separate.

    Sets glibc's ``M_MMAP_THRESHOLD`` to 64 KiB (every larger block is mapped, and unmapped on
    free) and checks that ``/proc/self/clear_refs`` may reset the peak. Call it once, in a
    process of its own (it changes the allocator for the whole process).
    """
    libc = ctypes.CDLL("libc.so.6")
    m_mmap_threshold = -3
    if libc.mallopt(m_mmap_threshold, 64 * 1024) != 1:
        raise RuntimeError("mallopt(M_MMAP_THRESHOLD) failed")
    with open("/proc/self/clear_refs", "w") as f:  # fail now, not halfway, if not permitted
        f.write("5")


def measure_memory(
    variants: Sequence[Variant], device: str | torch.device, *, warm: Iterable[str] = ("bare",)
) -> dict[str, dict[str, float]]:
    """Peak memory of one call of each variant.

    A warm-up call first: of the variants in ``warm`` on the CPU (the first forward initialises
    the backends' caches), of every variant on CUDA (cuDNN picks and caches its workspaces on a
    first call). On the CPU call :func:`prepare_rss_measurement` first, in this process.

    Returns:
        ``{name: {"peak_mb": ..., "extra_mb": ...}}``: the peak during the call (model and
        input included) and how far it rose above the memory in use just before the call.
        Variants that raise are left out (the timing pass reports their error).
    """
    cuda = cuda_device(device)
    warm = set(warm)
    libc = None if cuda else ctypes.CDLL("libc.so.6")
    ok: list[Variant] = []
    for v in variants:
        try:
            if v.name in warm or cuda:
                timed_call(v, device)
            ok.append(v)
        except Exception:
            continue
    result: dict[str, dict[str, float]] = {}
    for v in ok:
        v.setup()
        try:
            gc.collect()
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                out = v.run()
                torch.cuda.synchronize()
                peak = torch.cuda.max_memory_allocated()
            else:
                assert libc is not None
                libc.malloc_trim(0)
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # resets VmHWM to the current RSS
                base = _proc_status_kb("VmRSS") * 1024
                out = v.run()
                peak = _proc_status_kb("VmHWM") * 1024
            del out
        except Exception:
            continue
        finally:
            v.teardown()
        result[v.name] = {"peak_mb": peak / MB, "extra_mb": max(peak - base, 0) / MB}
    return result


# -- where the figures come from -------------------------------------------------------------------
def importable(name: str) -> bool:
    """Whether ``name`` imports (an optional peer that fails to import is simply absent)."""
    try:
        importlib.import_module(name)
    except Exception:
        return False
    return True


def package_version(name: str) -> str | None:
    """``name.__version__``, or ``None`` when it is not installed."""
    try:
        return str(importlib.import_module(name).__version__)
    except Exception:
        return None


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info(device: str, packages: Iterable[str] = ()) -> dict[str, Any]:
    """The machine, the versions and the load, in the one shape every benchmark writes.

    Args:
        device: where the benchmark runs (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
        packages: further packages whose version to record (``None`` when not installed).
    """
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "device": device,
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchvision": package_version("torchvision"),
        "torch_featureviz": package_version("torch_featureviz"),
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(torch.device(device)) if cuda_device(device) else None,
    }
    for name in packages:
        info[name] = package_version(name)
    with contextlib.suppress(OSError):
        info["load_average_start"] = [round(v, 2) for v in os.getloadavg()]
    return info


# -- writing results ---------------------------------------------------------------------------
def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole (through a temporary file), making its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_json(path: Path, results: Any, *, indent: int = 1) -> None:
    """Write ``results`` as JSON to ``path`` whole (see :func:`write_text`)."""
    write_text(path, json.dumps(results, indent=indent) + "\n")


# -- the command line ----------------------------------------------------------------------------
def base_parser(
    prog: str,
    description: str,
    *,
    json_default: str,
    quick_help: str = "fewer repeats and smaller sizes (a smoke run)",
    device_default: str | None = "cpu",
    devices: Sequence[str] = ("cpu", "cuda"),
) -> argparse.ArgumentParser:
    """The options every benchmark has: ``--quick``, ``--json`` (alias ``--out``),
    ``--markdown`` and ``--device`` (``None`` as default: CUDA when available)."""
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{prog}", description=description)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument(
        "--json", "--out", dest="json", type=Path, default=None,
        help=f"where to write the results (default {json_default})",
    )
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table here")
    parser.add_argument(
        "--device", choices=tuple(devices), default=device_default,
        help="default: " + (device_default or "cuda when available, else cpu"),
    )
    return parser


def cuda_missing(prog: str, device: str) -> bool:
    """Say so on stderr and return ``True`` when ``device`` is CUDA but none is available."""
    if device == "cuda" and not torch.cuda.is_available():
        print(f"{prog}: error: --device cuda but CUDA is not available", file=sys.stderr)
        return True
    return False
