"""Benchmark the featureviz TensorBoard tab on a big log: first view and slider latency.

Generates a 1,000-capture log of 53 ResNet-50-like layers (filters, training-batch and probe
maps of 8 channels at 6x6, plus the four statistics and the layer-order summary; ~160k small
PNGs) with ``TensorBoardWriter``, starts the real ``tensorboard`` (default ``--load_fast``, the
Rust data server, and ``--samples_per_plugin images=2000``), and in headless Chromium:

- **first view**: from the moment the server lists the run to the first layer's panels all
  loaded in the tab (target <= 3 s), measured cold (while the server may still be loading)
  and warm (after every step is loaded);
- **slider**: for random steps, from setting the slider (an ``input`` event) to every panel's
  image of that step loaded, timed in the page with ``performance.now()`` (target <= 300 ms).

Run: ``python -m benchmarks.bench_tab [--quick] [--captures N] [--json PATH]``. Prints a table
and writes ``benchmarks/results/plugin_cpu.json``. Timings on a shared machine are noisy.
"""

from __future__ import annotations

import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._browser import (
    Chromium,
    TensorBoardServer,
    free_port,
    synthetic_layers,
    tensorboard_command,
)
from benchmarks._harness import RESULTS_DIR, base_parser, machine_info, write_json, write_text

RESULTS = RESULTS_DIR / "plugin_cpu.json"
ROUTE = "/data/plugin/featureviz"
ENTRY = "/data/plugin_entry.html?name=featureviz"
LOADED = (
    "(s => { const imgs = [...document.querySelectorAll('img.fv-grid')];"
    " return imgs.length > 0 && imgs.every(i => i.dataset.loadedStep === String(s)"
    " && i.naturalWidth > 0); })"
)
# Set the slider to index i and resolve with the milliseconds until every panel shows step s.
SLIDE = """
(async (i, s) => {
  const t0 = performance.now();
  const slider = document.querySelector('#fv-slider');
  slider.value = i; slider.dispatchEvent(new Event('input'));
  const done = () => [...document.querySelectorAll('img.fv-grid')].every(
      (im) => im.dataset.loadedStep === String(s) && im.complete && im.naturalWidth > 0);
  while (!done()) await new Promise((r) => setTimeout(r, 2));
  return performance.now() - t0;
})"""


def write_log(logdir: Path, captures: int, layers: int, every: int = 10) -> dict[str, float]:
    import torch

    from torch_featureviz import TensorBoardWriter
    from torch_featureviz.log.metadata import layers_summary
    from torch_featureviz.naming import layer_tag

    names = synthetic_layers(layers)
    gen = torch.Generator().manual_seed(0)
    started = time.perf_counter()
    with TensorBoardWriter(logdir, encode_threads=1) as tb:
        tb.add_summary(layers_summary([layer_tag(n) for n in names]), 0)
        for k in range(captures):
            step = k * every
            weights = {n: torch.randn(8, 3, 3, 3, generator=gen) for n in names}
            tb.log_filters(weights, step)
            for mode in ("hook", "probe"):
                tb.log_feature_maps(
                    {n: torch.rand(8, 6, 6, generator=gen) for n in names}, step, mode=mode)
            scalars = {}
            for i, n in enumerate(names):
                t = f"activations/{layer_tag(n)}"
                scalars.update({f"{t}/mean": 0.1 * i, f"{t}/std": 1.0, f"{t}/near_zero": 0.2,
                                f"{t}/dead_channels": (i * k % 97) / 97})
            tb.log_scalars(scalars, step)
    size = sum(p.stat().st_size for p in logdir.rglob("*") if p.is_file())
    return {"write_s": time.perf_counter() - started, "bytes": float(size)}


def start_server(logdir: Path, log_path: Path) -> TensorBoardServer:
    port = free_port()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*tensorboard_command(), "--logdir", str(logdir), "--host", "127.0.0.1", "--port",
             str(port), "--samples_per_plugin", "images=2000,scalars=2000",
             "--reload_interval", "5"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return TensorBoardServer(proc, port, log_path)


def poll(check, timeout: float, what: str) -> float:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return time.monotonic()
        except OSError:
            pass
        time.sleep(0.02)
    raise TimeoutError(f"no {what} within {timeout} s")


def first_view(
    server: TensorBoardServer, profile: Path, listed_at: float
) -> tuple[float, Chromium]:
    browser = Chromium(profile, window=(1400, 1000))
    started = time.monotonic()
    browser.navigate(server.url + ENTRY)
    browser.wait_for("document.body && document.body.dataset.ready === 'true'", timeout=120)
    step = browser.evaluate("document.body.dataset.step")
    browser.wait_for(f"{LOADED}({json.dumps(step)})", timeout=120)
    return time.monotonic() - max(listed_at, started), browser


def measure(captures: int, layers: int, slides: int, root: Path) -> dict[str, Any]:
    """Write the log under ``root``, serve it, and time the tab's first views and its slider."""
    results: dict[str, Any] = {"captures": captures, "layers": layers}
    logdir = root / "logs"
    results.update(write_log(logdir / "resnet50", captures, layers))
    server = start_server(logdir, root / "tensorboard.log")
    browsers: list[Chromium] = []
    try:
        started = time.monotonic()
        listed = poll(lambda: "resnet50" in server.get_json("/data/runs"), 300, "run listed")
        results["server_lists_run_s"] = listed - started
        cold, browser = first_view(server, root / "profile_cold", listed)
        browsers.append(browser)
        results["first_view_cold_s"] = cold
        last = f"{synthetic_layers(layers)[-1]}"

        def fully_loaded() -> bool:
            layer = server.get_json(f"{ROUTE}/layer", run="resnet50", prefix="", layer=last)
            return all(len(v["steps"]) == captures for v in layer["views"].values())

        results["all_steps_loaded_s"] = poll(fully_loaded, 600, "every step") - started
        browser.close()
        warm_started = time.monotonic()
        warm, browser = first_view(server, root / "profile_warm", warm_started)
        browsers.append(browser)
        results["first_view_warm_s"] = warm
        steps = browser.evaluate("(() => { const s = document.querySelector('#fv-slider');"
                                 " return +s.max; })()")
        rng = random.Random(0)
        wanted = [rng.randrange(0, steps + 1) for _ in range(slides)]
        values = browser.evaluate("[...new Set([...document.querySelectorAll('img.fv-grid')]"
                                  ".flatMap(i => JSON.parse(i.dataset.steps)))]"
                                  ".sort((a, b) => a - b)")
        times = [browser.evaluate(f"{SLIDE}({i}, {values[i]})") for i in wanted]
        results["slider_ms"] = {"median": statistics.median(times), "max": max(times),
                                "samples": times}
    finally:
        for b in browsers:
            b.close()
        server.stop()
    return results


def format_table(results: dict[str, Any], slides: int) -> str:
    """The figures, one per line, with their targets."""
    slider = results["slider_ms"]
    rows = [
        ("log written (s)", f"{results['write_s']:.1f}",
         f"{results['bytes'] / 1e6:.0f} MB, {results['captures']} captures x "
         f"{results['layers']} layers"),
        ("server lists the run (s)", f"{results['server_lists_run_s']:.1f}", ""),
        ("first view, cold (s)", f"{results['first_view_cold_s']:.2f}", "target <= 3"),
        ("every step loaded (s)", f"{results['all_steps_loaded_s']:.1f}", ""),
        ("first view, warm (s)", f"{results['first_view_warm_s']:.2f}", "target <= 3"),
        ("slider, median (ms)", f"{slider['median']:.0f}", "target <= 300"),
        ("slider, max (ms)", f"{slider['max']:.0f}", f"{slides} random steps"),
    ]
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name:<{width}}  {value:>8}  {note}" for name, value, note in rows)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table; write JSON (and Markdown). Returns an exit code."""
    parser = base_parser(
        "bench_tab", (__doc__ or "").split("\n\n")[0],
        json_default="benchmarks/results/plugin_cpu.json", quick_help="50 captures, 5 slides",
        devices=("cpu",),
    )
    parser.add_argument("--captures", type=int, default=1000)
    parser.add_argument("--layers", type=int, default=53)
    parser.add_argument("--slides", type=int, default=20)
    args = parser.parse_args(argv)
    if args.quick:
        args.captures, args.slides = 50, 5
    if min(args.captures, args.layers, args.slides) < 1:
        print("bench_tab: error: --captures, --layers and --slides must be >= 1", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench_tab_") as tmp:
        results = measure(args.captures, args.layers, args.slides, Path(tmp))
    results["machine"] = machine_info("cpu")
    table = format_table(results, args.slides)
    print(table)
    out = args.json or RESULTS
    write_json(out, results, indent=2)
    if args.markdown:
        write_text(args.markdown, table + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
