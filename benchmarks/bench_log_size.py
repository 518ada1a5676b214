"""Bytes per capture of FeatureMonitor at its defaults, with a breakdown by kind (issue 12).

On a torchvision resnet50 (random weights), batch 4 of 224 px images and a probe, a
``FeatureMonitor`` with nothing but the model, the log folder and the probe (so whatever the
package's defaults are today) captures twice: at step 0 (which also writes one-time records,
such as the probe's input image) and at a later sampled step, the steady state of a long run.
Each capture's bytes are what its event records add on disk; the breakdown sums the serialised
summary values by kind (filters, hook maps, probe maps, scalars, histograms, other), and
"framing" is the rest (event headers and record checksums).

Only the public API is used (``FeatureMonitor``, ``naming.parse_tag``), so the script keeps
measuring whatever the defaults become.

Run from the repository root::

    python -m benchmarks.bench_log_size                 # resnet50, about a minute on a CPU
    python -m benchmarks.bench_log_size --model resnet18 --size 64 --json out.json
    python -m benchmarks.bench_log_size --option log_filters=False --json out.json

Prints a table and writes JSON (default ``benchmarks/results/log_size.json``).
"""

from __future__ import annotations

import ast
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

import torch_featureviz as fv
from benchmarks._harness import RESULTS_DIR, base_parser, machine_info, write_json, write_text

RESULTS = RESULTS_DIR / "log_size.json"
#: The kinds of the breakdown, in table order.
KINDS = ("filters", "hook maps", "probe maps", "input images", "scalars", "histograms", "other")
#: One capture per this many bytes is the issue's budget: 1,000 captures in 500 MB.
BUDGET_BYTES = 500_000


def _kind(tag: str, value: Any) -> str:
    """Which part of the breakdown one summary value belongs to."""
    info = None
    try:
        from torch_featureviz.naming import parse_tag

        info = parse_tag(tag)
    except ImportError:  # an older layout of the package: read the tag itself
        pass
    parts = tag.split("/")
    kind = info.kind if info is not None else (parts[0] if parts else "")
    view = info.view if info is not None else (parts[1] if len(parts) > 2 else None)
    field = value.WhichOneof("value")
    if kind == "filters":
        return "filters"
    if kind == "feature_maps":
        return "probe maps" if view == "probe" else "hook maps"
    if kind == "input":
        return "input images"
    if kind == "histograms" or field == "histo":
        return "histograms"
    if field == "simple_value" or (
        field == "tensor" and value.metadata.plugin_data.plugin_name == "scalars"
    ):
        return "scalars"
    return "other"


def _records(log_dir: Path) -> list[tuple[int, Any]]:
    """Every event of every event file under ``log_dir``: (record bytes on disk, event)."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto import event_pb2

    out = []
    for path in sorted(log_dir.rglob("events.out.tfevents.*")):
        for raw in RawEventFileLoader(os.fspath(path)).Load():
            event = event_pb2.Event.FromString(raw)
            out.append((len(raw) + 16, event))  # TFRecord: length, its CRC, data, its CRC
    return out


def _breakdown(records: list[tuple[int, Any]]) -> dict[str, Any]:
    by_kind: dict[str, int] = defaultdict(int)
    count: dict[str, int] = defaultdict(int)
    images: list[tuple[int, int]] = []
    total = 0
    for size, event in records:
        total += size
        for value in event.summary.value:
            kind = _kind(value.tag, value)
            by_kind[kind] += value.ByteSize()
            count[kind] += 1
            if value.WhichOneof("value") == "image":
                images.append((value.image.width, value.image.height))
    framing = total - sum(by_kind.values())
    return {
        "bytes": total,
        "by_kind": {k: by_kind.get(k, 0) for k in KINDS} | {"framing": framing},
        "values": {k: count.get(k, 0) for k in KINDS},
        "largest_image_px": max(images, key=lambda wh: wh[0] * wh[1]) if images else None,
    }


def _train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor) -> None:
    loss = model(x).logsumexp(dim=1).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def measure(
    *,
    model_name: str = "resnet50",
    batch: int = 4,
    size: int = 224,
    later_step: int | None = None,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Bytes of the first and of a later capture of a FeatureMonitor at its defaults (or with
    ``options`` changed)."""
    options = dict(options or {})
    torch.manual_seed(0)
    model = torchvision.models.get_model(model_name, weights=None).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=g)
    probe = fv.preprocess(fv.load_image(), size=size)
    with tempfile.TemporaryDirectory(prefix="featureviz-logsize-") as d:
        log_dir = Path(d)
        monitor = fv.FeatureMonitor(model, log_dir, probe=probe, **options)
        every = int(getattr(monitor, "every", 100))
        later = every if later_step is None else later_step
        try:
            _train_step(model, opt, x)
            assert monitor.step(), "step 0 was not captured"
            monitor.flush()
            first = _records(log_dir)
            # Jump to the next sampled step (arming its forward), not 100 real steps.
            monitor.prepare(later)
            _train_step(model, opt, x)
            assert monitor.step(later), f"step {later} was not captured"
            monitor.flush()
        finally:
            monitor.close()
        everything = _records(log_dir)
        disk = sum(p.stat().st_size for p in log_dir.rglob("*") if p.is_file())
    second = everything[len(first) :]
    return {
        "model": model_name,
        "batch": batch,
        "size": size,
        "convs": len(fv.find_conv_layers(model)),
        "options": {k: repr(v) for k, v in options.items()},
        "monitor": repr(monitor),
        "every": every,
        "first_capture": _breakdown(first),
        "later_capture": {"step": later, **_breakdown(second)},
        "log_dir_bytes_after_two_captures": disk,
    }


def format_table(r: dict[str, Any]) -> str:
    first, later = r["first_capture"], r["later_capture"]
    changed = ", ".join(f"{k}={v}" for k, v in r.get("options", {}).items())
    lines = [
        f"FeatureMonitor {'defaults' if not changed else changed} on {r['model']} "
        f"({r['convs']} convs), batch {r['batch']}, "
        f"{r['size']} px, with a probe; every={r['every']}",
        "",
        "| kind | values | first capture (step 0) | later capture (step "
        f"{later['step']}) |",
        "|---|---|---|---|",
    ]
    for kind in (*KINDS, "framing"):
        n = "" if kind == "framing" else str(later["values"][kind])
        lines.append(
            f"| {kind} | {n} | {first['by_kind'][kind] / 1e6:.3f} MB | "
            f"{later['by_kind'][kind] / 1e6:.3f} MB |"
        )
    lines.append(
        f"| **total** | | **{first['bytes'] / 1e6:.3f} MB** | **{later['bytes'] / 1e6:.3f} MB** |"
    )
    lines.append("")
    per_1000 = later["bytes"] * 1000 / 1e9
    ok = max(first["bytes"], later["bytes"]) <= BUDGET_BYTES
    lines.append(
        f"1,000 captures (a {1000 * r['every']:,}-step run at every={r['every']}): about "
        f"{per_1000:.2f} GB. Target <= {BUDGET_BYTES / 1e6:.1f} MB per capture: "
        f"{'PASS' if ok else 'MISS'} ({later['bytes'] / 1e6:.3f} MB; the first, with its "
        f"one-time records, {first['bytes'] / 1e6:.3f} MB). Largest image: "
        f"{later['largest_image_px']} px."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(
        "bench_log_size", (__doc__ or "").splitlines()[0],
        json_default="benchmarks/results/log_size.json",
        quick_help="resnet18 at 64 px unless --model/--size say otherwise (a smoke run)",
        devices=("cpu",),
    )
    parser.add_argument("--model", default=None, help="a torchvision model name (resnet50)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=None, help="input and probe size (224 px)")
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a FeatureMonitor option to change, as a Python literal (log_budget=250_000)",
    )
    args = parser.parse_args(argv)
    args.model = args.model or ("resnet18" if args.quick else "resnet50")
    args.size = args.size or (64 if args.quick else 224)
    args.json = args.json or RESULTS
    options: dict[str, Any] = {}
    for item in args.option:
        name, sep, value = item.partition("=")
        try:
            if not sep or not name.isidentifier():
                raise ValueError
            options[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            message = f"bench_log_size: error: --option wants NAME=VALUE, not {item!r}"
            print(message, file=sys.stderr)
            return 2
    if args.batch < 1 or args.size < 1:
        print("bench_log_size: error: --batch and --size must be >= 1", file=sys.stderr)
        return 2
    if args.model not in torchvision.models.list_models():
        print(f"bench_log_size: error: unknown model {args.model!r}", file=sys.stderr)
        return 2
    result = measure(model_name=args.model, batch=args.batch, size=args.size, options=options)
    result["machine"] = machine_info("cpu")
    table = format_table(result)
    print(table)
    write_json(args.json, result)
    if args.markdown:
        write_text(args.markdown, table + "\n")
    print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
