"""The benchmarks run (``--quick``) and report a complete, well-formed set of figures.

Timings are never asserted: only that every figure exists, is finite and positive, and that the
JSON has the structure RESULTS.md and ``featureviz bench`` rely on. The benchmarks are imported
as the ``benchmarks`` package (the way ``featureviz bench`` and ``python -m`` run them).
"""

import json
import math
import os
from pathlib import Path

import pytest

from benchmarks import bench_capture, bench_log_size
from benchmarks._capture_variants import VARIANT_LABELS, chain_fidelity

ROOT = Path(__file__).resolve().parents[1]


def _positive(value, where):
    assert isinstance(value, (int, float)) and not isinstance(value, bool), where
    assert math.isfinite(value) and value > 0, f"{where} = {value!r}"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    bench = bench_capture
    json_path, md_path = out / "bench.json", out / "bench.md"
    # A 32 px input: every variant and table at a quarter of the quick run's default cost.
    code = bench.main(
        ["--quick", "--device", "cpu", "--sizes", "32", "--json", str(json_path),
         "--markdown", str(md_path)]
    )
    assert code == 0
    return json.loads(json_path.read_text()), md_path.read_text(), bench


def test_quick_run_structure(quick_run):
    results, _, bench = quick_run
    assert results["schema"] == bench.SCHEMA_VERSION
    assert results["device"] == "cpu" and results["quick"] is True
    assert results["complete"] is True
    machine = results["machine"]
    for key in ("cpu_model", "torch", "torchvision", "platform", "python"):
        assert isinstance(machine[key], str) and machine[key]
    _positive(machine["cpu_count"], "cpu_count")
    assert results["cases"], "no model was measured"
    assert results.get("memory_error") is None


def test_every_case_figure_is_finite_and_positive(quick_run):
    results, _, _ = quick_run
    for case in results["cases"]:
        where = f"{case['model']}/{case['size']}/{case['batch']}"
        _positive(case["convs"], f"{where} convs")
        variants = case["variants"]
        # The package's own modes and the required peers are always measured.
        required = ("bare", "hook", "hook_fresh", "hook_all", "naive_clone", "chain", "fx", "naive")
        for name in required:
            assert name in variants, f"{where}: {name} missing ({case['errors']})"
        assert variants["bare"]["ratio_to_bare"] == pytest.approx(1.0)
        for name, v in variants.items():
            for key in ("median_ms", "ratio_to_bare", "peak_mb", "extra_mb"):
                _positive(v[key], f"{where} {name} {key}")
            assert v["repeats"] == len(v["times_ms"]) >= 1
            for t in v["times_ms"]:
                _positive(t, f"{where} {name} time")
        fidelity = case["chain"]["fidelity"]
        assert fidelity["layers"] == len(fidelity["per_layer"]) > 0
        for key in ("median", "min"):
            assert -1.0 - 1e-9 <= fidelity[key] <= 1.0 + 1e-9
        # The first conv sees the same input in both modes: its maps agree exactly.
        first = next(iter(fidelity["per_layer"]))
        assert fidelity["per_layer"][first] == pytest.approx(1.0, abs=1e-6)


def test_end_to_end_figures(quick_run):
    results, _, _ = quick_run
    e2e = results["end_to_end"]
    _positive(e2e["layers"], "e2e layers")
    assert set(e2e["paths"]) == {"featureviz", "make_grid_add_image", "article_matplotlib"}
    for path, r in e2e["paths"].items():
        for key in ("total_ms", "forward_capture_ms", "render_write_ms", "runs"):
            _positive(r[key], f"e2e {path} {key}")
    for path in ("make_grid_add_image", "article_matplotlib"):
        for key in ("total", "render_write"):
            _positive(e2e["speedup"][path][key], f"e2e speedup {path} {key}")
    for target in results["targets"]:
        assert isinstance(target["met"], bool)
        _positive(target["limit"], target["name"])


def test_table_names_every_variant(quick_run, tmp_path, capsys):
    results, table, bench = quick_run
    for name in results["cases"][0]["variants"]:
        assert VARIANT_LABELS[name] in table
    assert "End to end" in table
    # --from-json re-prints the same tables from the JSON alone.
    saved = tmp_path / "r.json"
    saved.write_text(json.dumps(results))
    assert bench.main(["--from-json", str(saved), "--markdown", str(tmp_path / "r.md")]) == 0
    assert (tmp_path / "r.md").read_text() == table


def test_chain_fidelity_pools_to_the_smaller_map():
    import torch

    real = torch.rand(4, 8, 8)
    # A chain map at twice the resolution whose 2x2 blocks average to the real map.
    chain = real.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)
    got = chain_fidelity({"a": real, "b": real}, {"a": chain, "b": -real})
    assert got["resized_layers"] == 1 and got["layers"] == 2
    assert got["per_layer"]["a"] == pytest.approx(1.0)
    assert got["min"] == pytest.approx(-1.0) and got["min_layer"] == "b"


# -- the prepared GPU check (benchmarks/gpu_check.sh) cannot rot between GPU runs ---------------
@pytest.mark.slow
def test_gpu_check_dry_run_leaves_every_table(tmp_path):
    import subprocess
    import sys

    root = ROOT
    # A generous hard limit (about 2 minutes unloaded): a loaded CI machine must not fail it.
    env = dict(
        os.environ,
        PYTHON=sys.executable,
        GPU_CHECK_RESULTS=str(tmp_path),
        OUT="",
        GPU_CHECK_LIMIT_S="1200",
    )
    proc = subprocess.run(
        ["bash", str(root / "benchmarks" / "gpu_check.sh"), "--dry-run"],
        cwd=root, env=env, capture_output=True, text=True, timeout=1500, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    names = {p.name for p in tmp_path.iterdir()}
    for stem in ("gpu_featureviz", "gpu_monitor", "gpu_monitor_charged", "gpu_check"):
        assert {f"{stem}.json", f"{stem}.md"} <= names, (stem, sorted(names), proc.stdout[-3000:])
    assert "gpu_cuda_tests.txt" in names
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    assert summary["dry_run"] is True
    # Every issue-15 target is printed next to a measured value, PASS or MISS (never judged).
    assert len(summary["targets"]) == 4
    for row in summary["targets"]:
        assert row["status"] in ("PASS", "MISS"), row
        assert math.isfinite(row["value"])
        assert row["target"] in proc.stdout
    featureviz = json.loads((tmp_path / "gpu_featureviz.json").read_text())
    assert featureviz["complete"] and [c["batch"] for c in featureviz["cases"]] == [1, 2]
    monitor = json.loads((tmp_path / "gpu_monitor.json").read_text())
    assert monitor["complete"]
    (run,) = monitor["throughput"].values()
    assert run["workload"]["amp"] == "bf16" and run["writer"] == "overlapped"
    assert "handwritten" in run["peers"]  # the peer that needs nothing beyond torch
    for ratio in ("throughput_every100_vs_none", "throughput_unsampled_vs_none",
                  "capture_step_vs_normal"):
        _positive(run[ratio], ratio)
        for peer in run["peers"].values():
            _positive(peer[ratio], ratio)


@pytest.mark.slow
def test_log_size_breakdown_adds_up(tmp_path, capsys):
    bench = bench_log_size
    out = tmp_path / "size.json"
    args = ["--model", "resnet18", "--size", "64", "--batch", "2", "--json", str(out)]
    assert bench.main(args) == 0
    r = json.loads(out.read_text())
    assert "MB" in capsys.readouterr().out
    for capture in (r["first_capture"], r["later_capture"]):
        assert sum(capture["by_kind"].values()) == capture["bytes"] > 0
        assert capture["by_kind"]["framing"] >= 0
        # Every conv gets its filters and maps logged at the defaults.
        assert capture["values"]["filters"] == r["convs"] == 20
        assert capture["by_kind"]["hook maps"] > 0 and capture["by_kind"]["probe maps"] > 0
        assert capture["by_kind"]["scalars"] > 0
    # What is on disk is the two captures' records, nothing unaccounted for.
    assert r["log_dir_bytes_after_two_captures"] == (
        r["first_capture"]["bytes"] + r["later_capture"]["bytes"]
    )
    # An option changes what is logged: without filter grids, no filter bytes.
    out2 = tmp_path / "nofilters.json"
    assert bench.main([*args[:-1], str(out2), "--option", "log_filters=False"]) == 0
    r2 = json.loads(out2.read_text())
    assert r2["options"] == {"log_filters": "False"}
    assert r2["later_capture"]["values"]["filters"] == 0
    assert r2["later_capture"]["bytes"] < r["later_capture"]["bytes"]
    assert bench.main([*args, "--option", "log_filters"]) == 2
    assert "NAME=VALUE" in capsys.readouterr().err
