"""The capture benchmark's report: the issues' targets it can check, and its Markdown tables."""

from __future__ import annotations

import math
from typing import Any

from benchmarks._capture_end_to_end import ARTICLE_INCHES
from benchmarks._capture_variants import VARIANT_LABELS


def _target(name: str, value: float, op: str, limit: float) -> dict[str, Any]:
    met = value <= limit if op == "<=" else value >= limit
    return {"name": name, "value": value, "op": op, "limit": limit, "met": met}


#: Hook capture of every conv of resnet50/224 against the bare forward, per device: issue 15 on
#: CUDA (batch 32, with the extra peak memory), issue 14 on CPU (batch 1, one capture reused).
HOOK_LIMIT = {"cuda": 1.02, "cpu": 1.04}
CUDA_EXTRA_MEMORY_LIMIT_PCT = 2.0


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issues' targets that this run can check (none where resnet50/224 was not run)."""
    out: list[dict[str, Any]] = []
    device = results["device"]
    cuda = device.startswith("cuda")
    cases = {(c["model"], c["size"], c["batch"]): c for c in results["cases"]}
    key = ("resnet50", 224, 32) if cuda else ("resnet50", 224, 1)
    case = cases.get(key)
    where = f"resnet50 {key[1]} batch {key[2]} ({device})"
    if case and "hook" in case["variants"]:
        v = case["variants"]
        hook, bare = v["hook"], v["bare"]
        limit = HOOK_LIMIT["cuda" if cuda else "cpu"]
        out.append(
            _target(f"hook capture, one capture reused / bare, {where}",
                    hook["ratio_to_bare"], "<=", limit)
        )
        if "hook_reuse" in v:
            out.append(
                _target(f"hook capture, reuse_buffers=True / bare, {where}",
                        v["hook_reuse"]["ratio_to_bare"], "<=", limit)
            )
        if "naive_clone" in v:
            out.append(
                _target(
                    f"hook capture reused / naive .clone() hooks, {where}",
                    hook["ratio_to_bare"] / v["naive_clone"]["ratio_to_bare"],
                    "<=",
                    1.0,
                )
            )
        if cuda and "peak_mb" in hook and "peak_mb" in bare:
            extra = 100.0 * (hook["peak_mb"] - bare["peak_mb"]) / bare["peak_mb"]
            out.append(
                _target(f"extra peak memory of hook capture, % of bare, {where}",
                        extra, "<=", CUDA_EXTRA_MEMORY_LIMIT_PCT)
            )
    e2e = results.get("end_to_end")
    if e2e and e2e["model"] == "resnet50" and e2e["layers"] == 53:
        for path, limit in (("article_matplotlib", 100.0), ("make_grid_add_image", 10.0)):
            value = e2e["speedup"][path]["total"]
            out.append(
                _target(f"end-to-end speed-up over {path} (resnet50, 53 layers)",
                        value, ">=", limit)
            )
    return out



# ---------------------------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------------------------
def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None or not math.isfinite(value) else format(value, spec)


def _end_to_end_table(e2e: dict[str, Any]) -> list[str]:
    """The end-to-end paths, as Markdown lines."""
    out: list[str] = []
    out.append(
        f"End to end: {e2e['model']} {e2e['size']}px, {e2e['layers']} conv layers, forward + "
        f"capture + one grid per layer written to disk (median ms; speed-up of "
        "torch_featureviz)."
    )
    out.append("")
    out.append("| path | runs | total ms | forward+capture ms | render+write ms | "
                 "ours faster (total) | ours faster (render+write) |")
    out.append("|---|---|---|---|---|---|---|")
    labels = {
        "featureviz": "torch_featureviz TensorBoardWriter",
        "make_grid_add_image": "make_grid + add_image",
        "article_matplotlib": f"article pyplot 8x8 subplots, {ARTICLE_INCHES} in @ "
        f"{e2e['article_dpi']} dpi",
    }
    for p, r in e2e["paths"].items():
        sp = e2e["speedup"].get(p)
        out.append(
            f"| {labels[p]} | {r['runs']} | {r['total_ms']:.0f} | "
            f"{r['forward_capture_ms']:.0f} | {r['render_write_ms']:.0f} | "
            + (f"{sp['total']:.1f}x | {sp['render_write']:.1f}x |" if sp else "1 | 1 |")
        )
    out.append("")
    return out


def format_tables(results: dict[str, Any]) -> str:
    """Markdown tables of every figure, as printed and as pasted into RESULTS.md."""
    names = [n for n in VARIANT_LABELS if any(n in c["variants"] for c in results["cases"])]
    others = [n for n in names if n != "bare"]
    lines: list[str] = []
    m = results["machine"]
    lines.append(
        f"Device: {results['device']}"
        + (f" ({m['gpu']})" if m.get("gpu") else "")
        + f"; CPU: {m['cpu_model']} x{m['cpu_count']} ({m['torch_threads']} torch threads); "
        f"torch {m['torch']}, torchvision {m['torchvision']}"
        + ("; quick mode" if results["quick"] else "")
    )
    lines.append("")
    lines.append("Time: bare forward in ms; every other column is a ratio to it (x).")
    lines.append("")
    head = ["model", "size", "batch", "bare ms"] + [VARIANT_LABELS[n] for n in others]
    head += ["chain cos median", "chain cos min"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for c in results["cases"]:
        v = c["variants"]
        row = [c["model"], str(c["size"]), str(c["batch"]), _fmt(v["bare"]["median_ms"], ".1f")]
        for n in others:
            if n in v:
                row.append(_fmt(v[n]["ratio_to_bare"], ".2f"))
            else:
                row.append("breaks" if n == "chain" and not c["chain"]["runs"] else "n/a")
        fid = c["chain"].get("fidelity", {})
        row += [_fmt(fid.get("median"), ".3f"), _fmt(fid.get("min"), ".3f")]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    if any("peak_mb" in v for c in results["cases"] for v in c["variants"].values()):
        what = "CUDA max allocated" if results["device"].startswith("cuda") else "peak RSS"
        lines.append(
            f"Peak memory ({what}): bare peak in MB; others: extra MB over the memory in use "
            "before the call (bare's own extra in brackets)."
        )
        lines.append("")
        head = ["model", "size", "batch", "bare peak MB"] + [VARIANT_LABELS[n] for n in names]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for c in results["cases"]:
            v = c["variants"]
            peak = _fmt(v["bare"].get("peak_mb"), ".0f")
            row = [c["model"], str(c["size"]), str(c["batch"]), peak]
            for n in names:
                extra = v.get(n, {}).get("extra_mb")
                cell = _fmt(extra, ".1f")
                row.append(f"({cell})" if n == "bare" else cell)
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    e2e = results.get("end_to_end")
    if e2e:
        lines += _end_to_end_table(e2e)
    if results.get("targets"):
        lines.append("| target | measured | limit | |")
        lines.append("|---|---|---|---|")
        for t in results["targets"]:
            lines.append(
                f"| {t['name']} | {t['value']:.3f} | {t.get('op', '')} {t['limit']} | "
                f"{'PASS' if t['met'] else 'MISS'} |"
            )
        lines.append("")
    errors = [
        f"- {c['model']} {c['size']} b{c['batch']} {n}: {e}"
        for c in results["cases"]
        for n, e in c["errors"].items()
    ]
    if errors:
        lines.append("Variants that could not run:")
        lines.extend(errors)
        lines.append("")
    return "\n".join(lines)


