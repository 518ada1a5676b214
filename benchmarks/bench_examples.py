"""collect_examples against the bare forwards over the same batches (issue 25's offline target:
collection over 1,000 images at 224 px on resnet18 in <= 1.3x the bare forwards).

Variants, timed round-robin in the same rounds (``_timing.interleave``), so machine noise falls on
all alike; the ratio is the median of same-round ratios:

- ``bare``: ``model(x)`` under ``no_grad`` in eval mode for every batch;
- ``collect``: ``collect_examples(model, batches, k)``, receptive-field probe included;
- ``fields``: ``receptive_fields`` alone (the probe's share of ``collect``).

Standalone: ``python benchmarks/bench_examples.py [--images 1000 --size 224 ...]`` prints a table
and writes JSON (``--json``). Random weights and random images; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import Variant, interleave, paired_ratio, summary  # noqa: E402

from torch_featureviz.meaning import collect_examples, receptive_fields  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("-k", type=int, default=9)
    p.add_argument("--max-channels", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", type=Path, default=Path("benchmarks/results/examples.json"))
    args = p.parse_args(argv)

    torch.manual_seed(0)
    model = getattr(torchvision.models, args.model)().eval().to(args.device)
    batches = [
        torch.rand(min(args.batch, args.images - i), 3, args.size, args.size, device=args.device)
        for i in range(0, args.images, args.batch)
    ]

    def bare() -> None:
        with torch.no_grad():
            for x in batches:
                model(x)

    def collect() -> None:
        collect_examples(model, batches, k=args.k, max_channels=args.max_channels)

    def fields() -> None:
        receptive_fields(model, (3, args.size, args.size))

    variants = [Variant("bare", bare), Variant("collect", collect), Variant("fields", fields)]
    errors: dict[str, str] = {}
    times = interleave(variants, device=args.device, rounds=args.rounds, errors=errors)
    rows = []
    result: dict[str, object] = {
        "config": vars(args) | {"json": str(args.json)},
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "variants": {},
        "errors": errors,
    }
    for name, ts in times.items():
        s = summary(ts)
        ratio = paired_ratio(ts, times["bare"]) if "bare" in times and ts else float("nan")
        result["variants"][name] = s | {"ratio_to_bare": ratio}  # type: ignore[index]
        rows.append((name, s["median_ms"] / 1000.0, ratio, s["repeats"]))
    print(f"{args.model}, {args.images} images at {args.size} px, batch {args.batch}, "
          f"k={args.k}, max_channels={args.max_channels}, {torch.get_num_threads()} threads")
    print(f"{'variant':<10} {'median s':>10} {'x bare':>8} {'rounds':>7}")
    for name, med, ratio, n in rows:
        print(f"{name:<10} {med:>10.2f} {ratio:>8.3f} {n:>7}")
    for name, err in errors.items():
        print(f"{name}: failed: {err}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
