"""The monitor benchmarks' targets and their Markdown table."""

from __future__ import annotations

from typing import Any

from benchmarks._monitor_workload import PERIOD

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



def met(key: str, value: float) -> bool:
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
            else f"{run[k]:.4f} {'PASS' if met(k, run[k]) else 'MISS'} (target "
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
            lines.append(f"| {r.get('name', peer)} | " + " | ".join(cells) + " |")
        lines.append("")
        for peer, err in run.get("peer_errors", {}).items():
            lines.append(f"- {peer} could not run: {err}")
    for peer, why in result.get("peers_skipped", {}).items():
        lines.append(f"- {peer}: not measured ({why})")
    lines.append("")
    return "\n".join(lines)


