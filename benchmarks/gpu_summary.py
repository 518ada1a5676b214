"""The summary of ``bash benchmarks/gpu_check.sh``: issue 15's targets next to the measured values.

Run: ``python -m benchmarks.gpu_summary RESULTS_DIR [--dry-run]``. Reads what the check wrote
into ``RESULTS_DIR`` (any of it may be missing: a stopped run still gets its table), prints a
Markdown table with PASS / MISS / not measured per target, and writes ``gpu_check.md`` and
``gpu_check.json`` there.

In a dry run (CPU, tiny sizes) nothing is the targets' workload: the figures are judged on what
ran, and the table says so; they check the script, not the package.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

#: Issue 15's GPU targets: (key, what, op, limit).
TARGETS = [
    ("hook", "hook capture of every conv, resnet50 224 batch 32 / bare forward", "<=", 1.02),
    ("memory", "extra peak memory of the capture, % of bare (resnet50 224 batch 32)", "<=", 2.0),
    ("every100", "monitor throughput at every=100 (resnet50 bf16 step)", ">=", 0.995),
    ("unsampled", "monitor unsampled steps (resnet50 bf16 step)", ">=", 0.999),
]


def _load(path: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


def _featureviz(results: dict[str, Any] | None, dry: bool) -> dict[str, tuple[float, str]]:
    """``{key: (value, where)}`` for the hook and memory targets."""
    if not results or not results.get("cases"):
        return {}
    cases = results["cases"]
    want = [c for c in cases if (c["model"], c["size"], c["batch"]) == ("resnet50", 224, 32)]
    if not want and dry:
        want = [max(cases, key=lambda c: (c["batch"], c["size"]))]
    if not want:
        return {}
    c = want[0]
    where = f"{c['model']} {c['size']} b{c['batch']} on {results['device']}"
    v = c["variants"]
    out: dict[str, tuple[float, str]] = {}
    if "hook" in v:
        out["hook"] = (v["hook"]["ratio_to_bare"], where)
        if "peak_mb" in v["hook"] and "peak_mb" in v["bare"]:
            extra = 100.0 * (v["hook"]["peak_mb"] - v["bare"]["peak_mb"]) / v["bare"]["peak_mb"]
            out["memory"] = (extra, where)
    return out


def _monitor(results: dict[str, Any] | None) -> dict[str, tuple[float, str]]:
    if not results or not results.get("throughput"):
        return {}
    name, run = next(iter(results["throughput"].items()))
    w = run["workload"]
    where = (
        f"{w['model']} {w['size']} b{w['batch']} {w['amp'] or 'fp32'} on {w['device']}, "
        f"writer {run.get('writer', 'n/a')}"
    )
    out = {}
    for key, field in (
        ("every100", "throughput_every100_vs_none"),
        ("unsampled", "throughput_unsampled_vs_none"),
    ):
        if field in run:
            out[key] = (float(run[field]), where)
    return out


def summarize(results_dir: Path, *, dry: bool) -> dict[str, Any]:
    """The targets with their measured values, from what ``gpu_check.sh`` wrote."""
    measured: dict[str, tuple[float, str]] = {}
    measured.update(_featureviz(_load(results_dir / "gpu_featureviz.json"), dry))
    measured.update(_monitor(_load(results_dir / "gpu_monitor.json")))
    rows = []
    for key, what, op, limit in TARGETS:
        if key in measured:
            value, where = measured[key]
            met = value <= limit if op == "<=" else value >= limit
            rows.append(
                {"target": what, "op": op, "limit": limit, "value": value, "where": where,
                 "status": "PASS" if met else "MISS"}
            )
        else:
            rows.append({"target": what, "op": op, "limit": limit, "value": None, "where": None,
                         "status": "not measured"})
    report = _load(results_dir / "gpu_cuda_report.json") or {}
    tests = results_dir / "gpu_cuda_tests.txt"
    lines = tests.read_text().strip().splitlines() if tests.is_file() else []
    # pytest's last line ("3 passed, 1 failed in 9.1s"), else the last line written.
    found = [ln for ln in lines if re.search(r"\d+ (passed|failed|skipped|error)", ln)]
    tail = (found or lines)[-1:]
    return {
        "dry_run": dry,
        "targets": rows,
        "cuda_tests": tail[0] if tail else "not run",
        "cuda_report": report,
    }


def format_summary(s: dict[str, Any]) -> str:
    lines = [
        "GPU check" + (" (DRY RUN on CPU at tiny sizes: checks the script, not the targets)"
                       if s["dry_run"] else ""),
        "",
        "| target | limit | measured | | measured on |",
        "|---|---|---|---|---|",
    ]
    for r in s["targets"]:
        value = "n/a" if r["value"] is None else f"{r['value']:.4f}"
        lines.append(
            f"| {r['target']} | {r['op']} {r['limit']} | {value} | {r['status']} | "
            f"{r['where'] or ''} |"
        )
    lines.append("")
    lines.append(f"CUDA tests (pytest -m cuda): {s['cuda_tests']}")
    for key, value in s["cuda_report"].items():
        lines.append(f"- {key}: {value}")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_summary", description=__doc__.splitlines()[0]
    )
    parser.add_argument("results", type=Path, help="the folder gpu_check.sh wrote into")
    parser.add_argument("--dry-run", action="store_true", help="judge on whatever ran")
    args = parser.parse_args(argv)
    s = summarize(args.results, dry=args.dry_run)
    text = format_summary(s)
    print(text)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "gpu_check.md").write_text(text + "\n")
    (args.results / "gpu_check.json").write_text(json.dumps(s, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
