"""Sharded training on 2 CPU processes over gloo: FSDP2 (`fully_shard`) and FSDP1 (with and
without `use_orig_params`), with and without a probe.

Both ranks train on the same batch, so the sharded model's weights are bit-for-bit those of
the unsharded model trained from the same seed on that batch (the averaged gradient of two
equal gradients is exact). Every logged image must therefore equal, pixel for pixel, the
unsharded run's. A collective issued by one rank alone would hang: each rank's collectives
time out after 60 s and the whole run after a deadline, and a `barrier()` after `close()`
proves both ranks are still in step.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from tests.support.dist_helpers import finish_gloo, init_gloo, run_ranks
from tests.support.helpers import Block, decode, read_events, tiny_net

KINDS = ("fsdp2", "fsdp1", "fsdp1_orig_params")
STEPS, EVERY = 5, 2
PROBE_SHAPE = (1, 3, 16, 16)


def _batch(step: int) -> torch.Tensor:
    return torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(100 + step))


def _probe() -> torch.Tensor:
    return torch.randn(*PROBE_SHAPE, generator=torch.Generator().manual_seed(7))


def _shard(model: nn.Module, kind: str) -> nn.Module:
    if kind == "fsdp2":
        try:
            from torch.distributed.fsdp import fully_shard
        except ImportError:  # torch < 2.6
            from torch.distributed._composable.fsdp import fully_shard
        for block in model.blocks:
            fully_shard(block)
        fully_shard(model.stem)
        fully_shard(model)
        return model
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    return FullyShardedDataParallel(
        model,
        device_id=torch.device("cpu"),
        auto_wrap_policy=ModuleWrapPolicy({Block}),
        use_orig_params=kind == "fsdp1_orig_params",
    )


def _train(model: nn.Module, log_dir: str, probe: torch.Tensor | None, **options) -> dict:
    """The same loop sharded and not: 5 steps, a capture every 2, every step's return kept."""
    from torch_featureviz import FeatureMonitor

    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        monitor = FeatureMonitor(
            model, log_dir, every=EVERY, probe=probe, on_full="block", **options
        )
        returned = []
        for step in range(STEPS):
            loss = model(_batch(step)).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            returned.append(monitor.step())
        monitor.close()
    return {
        "returned": returned,
        "captured": monitor.captured,
        "dropped": monitor.dropped,
        "sharding": monitor.sharding,
        "layers": monitor.layers,
        "warnings": [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)
                     and "gather_filters" in str(w.message)],
    }


def _refusal(rank: int, model: nn.Module, **options) -> str:
    from torch_featureviz import FeatureMonitor

    try:
        FeatureMonitor(model, "unused", every=EVERY, **options)
    except ValueError as e:
        return str(e)
    return "no error"


def _worker(rank: int, world: int, port: int, root: str) -> None:
    init_gloo(rank, world, port)
    out: dict = {}
    for kind in KINDS:
        for probe in (True, False):
            name = f"{kind}-{'probe' if probe else 'noprobe'}"
            model = _shard(tiny_net(), kind)
            out[name] = _train(model, os.path.join(root, name), _probe() if probe else None)
            dist.barrier()  # still in step after close()
            out[name]["barrier_after_close"] = True
    # FSDP1 whose first watched conv lives in a unit below the root (the stem is wrapped on
    # its own): the monitor reads step 0's filters at construction, before the first forward,
    # and FSDP1 must still initialise from its root.
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    inner_first = FullyShardedDataParallel(
        tiny_net(), device_id=torch.device("cpu"),
        auto_wrap_policy=ModuleWrapPolicy({Block, nn.Sequential}),
    )
    out["fsdp1-stem-unit"] = _train(inner_first, os.path.join(root, "fsdp1-stem-unit"), None)
    dist.barrier()
    # Every rank writing (rank_zero_only=False): each keeps the gathered filters.
    out["every-rank"] = _train(
        _shard(tiny_net(), "fsdp2"), os.path.join(root, "every-rank"), _probe(),
        rank_zero_only=False,
    )
    dist.barrier()
    # Filter gathering switched off: one warning on the writing rank, maps still logged.
    out["no-gather"] = _train(
        _shard(tiny_net(), "fsdp2"), os.path.join(root, "no-gather"), _probe(),
        gather_filters=False,
    )
    # Refused on every rank, at construction, before any collective of the monitor's own.
    model = _shard(tiny_net(), "fsdp2")
    out["every_seconds"] = _refusal(rank, model, every_seconds=10.0)
    out["probe_on_rank0_only"] = _refusal(rank, model, probe=_probe() if rank == 0 else None)
    # Sharded after the monitor was made: a clear error from step() on the writing rank,
    # never a hang or a read of freed memory.
    from torch_featureviz import FeatureMonitor

    for kind in KINDS:
        net = tiny_net()
        monitor = FeatureMonitor(net, os.path.join(root, f"late-{kind}"), every=1)
        model = _shard(net, kind)
        model(_batch(0)).square().mean().backward()
        try:
            monitor.step()
            out[f"late-{kind}"] = "no error"
        except RuntimeError as e:
            out[f"late-{kind}"] = str(e)
        monitor.close()
        dist.barrier()
    Path(root, f"result{rank}.json").write_text(json.dumps(out))
    finish_gloo()


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("fsdp")
    run_ranks(_worker, str(root), timeout=600)
    return root, [json.loads((root / f"result{r}.json").read_text()) for r in range(2)]


@pytest.fixture(scope="module")
def unsharded(tmp_path_factory: pytest.TempPathFactory) -> dict[bool, Path]:
    """The same training, unsharded, in this process: the reference logs."""
    root = tmp_path_factory.mktemp("unsharded")
    for probe in (True, False):
        _train(tiny_net(), str(root / str(probe)), _probe() if probe else None)
    return {probe: root / str(probe) for probe in (True, False)}


def _images(log_dir: Path) -> dict[tuple[str, int], torch.Tensor]:
    ea = read_events(log_dir)
    return {(tag, e.step): decode(e) for tag in ea.Tags()["images"] for e in ea.Images(tag)}


def _event_dirs(path: Path) -> set[Path]:
    return {p.parent for p in path.rglob("events.out.tfevents.*")}


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("probe", [True, False], ids=["probe", "noprobe"])
def test_sharded_grids_equal_the_unsharded_run_pixel_for_pixel(
    fsdp_run: tuple[Path, list[dict]], unsharded: dict[bool, Path], kind: str, probe: bool
) -> None:
    root, (r0, r1) = fsdp_run
    name = f"{kind}-{'probe' if probe else 'noprobe'}"
    a, b = r0[name], r1[name]
    expected_sharding = "dtensor" if kind == "fsdp2" else "fsdp1"
    assert a["sharding"] == b["sharding"] == expected_sharding
    # Both ranks agree on the sampled steps; only rank 0 captures and writes.
    assert a["returned"] == b["returned"] == [True, False, True, False, True]
    assert (a["captured"], a["dropped"], b["captured"]) == (3, 0, 0)
    assert a["barrier_after_close"] and b["barrier_after_close"]
    assert _event_dirs(root / name) == {root / name}  # rank 1 wrote nothing

    got, want = _images(root / name), _images(unsharded[probe])
    assert got.keys() == want.keys()
    # Names carry no FSDP segment, and every conv has its filters at every capture.
    filter_tags = {tag for tag, _ in got if tag.startswith("filters/")}
    assert filter_tags == {f"filters/{layer}" for layer in a["layers"]}
    assert not any("_fsdp" in tag for tag, _ in got)
    assert any(tag.startswith("feature_maps/probe/") for tag, _ in got) == probe
    assert len(want) >= 30
    for key, image in want.items():
        assert torch.equal(got[key], image), f"{key} differs from the unsharded run"
    # The statistics of rank 0's batch (the same batch) match too.
    got_ea, want_ea = read_events(root / name), read_events(unsharded[probe])
    scalar_tags = [t for t in want_ea.Tags()["scalars"] if t.startswith("activations/")]
    assert scalar_tags and set(scalar_tags) <= set(got_ea.Tags()["scalars"])
    for tag in scalar_tags:
        got_s, want_s = got_ea.Scalars(tag), want_ea.Scalars(tag)
        assert [e.step for e in got_s] == [e.step for e in want_s], tag
        assert [e.value for e in got_s] == pytest.approx([e.value for e in want_s], abs=1e-6), tag


@pytest.mark.slow
def test_fsdp1_read_before_the_first_forward_initialises_from_the_root(
    fsdp_run: tuple[Path, list[dict]], unsharded: dict[bool, Path]
) -> None:
    root, (r0, r1) = fsdp_run
    a, b = r0["fsdp1-stem-unit"], r1["fsdp1-stem-unit"]
    assert a["returned"] == b["returned"] == [True, False, True, False, True]
    assert (a["captured"], a["dropped"]) == (3, 0)
    got, want = _images(root / "fsdp1-stem-unit"), _images(unsharded[False])
    assert got.keys() == want.keys()
    for key, image in want.items():
        assert torch.equal(got[key], image), f"{key} differs from the unsharded run"


@pytest.mark.slow
def test_gather_filters_false_skips_filters_with_one_warning(
    fsdp_run: tuple[Path, list[dict]],
) -> None:
    root, (r0, r1) = fsdp_run
    assert len(r0["no-gather"]["warnings"]) == 1 and r1["no-gather"]["warnings"] == []
    tags = {tag for tag, _ in _images(root / "no-gather")}
    assert not any(t.startswith("filters/") for t in tags)
    assert any(t.startswith("feature_maps/probe/") for t in tags)
    assert any(t.startswith("feature_maps/hook/") for t in tags)


@pytest.mark.slow
def test_what_cannot_work_is_refused_on_every_rank(fsdp_run: tuple[Path, list[dict]]) -> None:
    _, results = fsdp_run
    for r in results:
        assert "every_seconds cannot be used with a sharded model" in r["every_seconds"]
        assert "every=N" in r["every_seconds"]
        assert "probe differs" in r["probe_on_rank0_only"]


@pytest.mark.slow
def test_lightning_fsdp_strategy_on_cpu(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    from tests.support.dist_helpers import free_port

    pytest.importorskip("lightning")
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.lightning_fsdp_run", str(tmp_path)],
        cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,  # Lightning's rank 1 is its child: one group to kill
    )
    try:
        output, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"the Lightning FSDP run hung:\n{output[-3000:]}")
    assert proc.returncode == 0, output[-3000:]
    r0, r1 = (json.loads((tmp_path / f"result{r}.json").read_text()) for r in range(2))
    assert r0["sharding"] == r1["sharding"] == "fsdp1"
    assert r0["active"] and not r1["active"]
    assert (r0["captured"], r0["dropped"], r1["captured"]) == (3, 0, 0)
    assert r0["barrier_after_close"] and r1["barrier_after_close"]
    (log_dir,) = _event_dirs(tmp_path)  # rank 0's logger only
    ea = read_events(log_dir)
    tags = ea.Tags()["images"]
    for kind in ("filters", "feature_maps/hook", "feature_maps/probe"):
        assert [e.step for e in ea.Images(f"{kind}/net.stem.0")] == [0, 2, 4], kind
    assert not any("_fsdp" in t for t in tags)


# -- the single-process parts of torch_featureviz.monitor.sharding ---------------------------


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(6, 8, 3),
        nn.Conv2d(6, 8, (3, 5), groups=2),
        nn.ConvTranspose2d(6, 8, 3, groups=2),
        nn.Conv1d(4, 2, 5),
        nn.Conv3d(2, 4, (1, 3, 3)),
    ],
    ids=["conv2d", "grouped", "transposed", "conv1d", "conv3d"],
)
def test_weight_shape_comes_from_attributes_not_the_weight(conv: nn.Module) -> None:
    from torch_featureviz.monitor.sharding import weight_shape

    expected = tuple(conv.weight.shape)
    conv.weight = nn.Parameter(conv.weight.detach().flatten())  # what FSDP1 leaves: a 1-d view
    assert weight_shape(conv) == expected


def test_names_leave_out_fsdp_and_checkpoint_wrapper_segments() -> None:
    from torch_featureviz.naming import strip_wrappers

    assert strip_wrappers("_fsdp_wrapped_module.layer1._fsdp_wrapped_module.0.conv") == (
        "layer1.0.conv"
    )
    assert strip_wrappers("a._checkpoint_wrapped_module.b") == "a.b"
    assert strip_wrappers("my_wrapped_module_x.conv") == "my_wrapped_module_x.conv"


def test_an_unsharded_model_is_read_without_collectives() -> None:
    from torch_featureviz import find_conv_layers
    from torch_featureviz.monitor.sharding import gather_weights, sharding_of

    model = tiny_net()
    convs = find_conv_layers(model)
    assert sharding_of(model) is None
    weights = gather_weights(model, convs, keep=True)
    assert list(weights) == list(convs)
    assert all(torch.equal(weights[n], c.weight) for n, c in convs.items())
    assert gather_weights(model, convs, keep=False) == {}


@pytest.mark.slow
def test_monitor_benchmark_fsdp_run_reports_every_variant(tmp_path: Path) -> None:
    """`python -m benchmarks.bench_sharded` runs (its ranks are spawned from it) and writes
    finite figures for every variant; no timing is asserted."""
    import math
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "fsdp.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_sharded", "--quick", "--batch", "2", "--json",
         str(out)],
        cwd=repo, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    names = ["fsdp2", "fsdp2 no probe", "fsdp1", "fsdp1 no probe"]
    for name in names:
        r = result[name]
        assert name in proc.stdout
        assert [d["dropped"] for d in r["ranks"]] == [0, 0]
        assert all(d["sampled_steps"] == 2 for d in r["ranks"])  # steps 10 and 20 of 30
        for key in ("unsampled_step_ms", "arming_step_ms", "sampled_step_ms",
                    "arming_over_unsampled", "sampled_over_unsampled"):
            assert math.isfinite(r[key]) and r[key] > 0, (name, key)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_a_model_sharded_after_the_monitor_gets_a_clear_error(
    fsdp_run: tuple[Path, list[dict]], kind: str
) -> None:
    _, (r0, r1) = fsdp_run
    assert "Create the monitor after fully_shard" in r0[f"late-{kind}"]
    assert r1[f"late-{kind}"] == "no error"  # rank 1 does nothing under rank_zero_only


@pytest.mark.slow
def test_every_rank_can_write_its_own_log(fsdp_run: tuple[Path, list[dict]]) -> None:
    root, (r0, r1) = fsdp_run
    assert r0["every-rank"]["captured"] == r1["every-rank"]["captured"] == 3
    assert _event_dirs(root / "every-rank") == {root / "every-rank", root / "every-rank" / "rank1"}
    mine, theirs = _images(root / "every-rank"), _images(root / "every-rank" / "rank1")
    filters = [key for key in mine if key[0].startswith("filters/")]
    assert filters and all(torch.equal(mine[k], theirs[k]) for k in filters)  # one model
