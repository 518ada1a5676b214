"""DDP with 2 CPU processes on gloo: rank 0 writes, names carry no `module.`, no collectives."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from tests.support.dist_helpers import finish_gloo, init_gloo, run_ranks
from tests.support.helpers import tiny_net

COLLECTIVES = ("all_reduce", "broadcast", "all_gather", "barrier", "reduce", "gather", "scatter",
               "all_gather_object", "broadcast_object_list", "all_to_all", "reduce_scatter")


def _worker(rank: int, world: int, port: int, root: str) -> None:
    init_gloo(rank, world, port)
    for rank_zero_only in (True, False):
        log_dir = os.path.join(root, f"rank_zero_only={rank_zero_only}")
        _train(rank, world, log_dir, rank_zero_only)
    finish_gloo()


def _train(rank: int, world: int, log_dir: str, rank_zero_only: bool) -> None:
    from torch_featureviz import FeatureMonitor

    model = DistributedDataParallel(tiny_net())  # BatchNorm: DDP broadcasts buffers
    monitor = FeatureMonitor(
        model,
        log_dir,
        every=2,
        on_full="block",
        probe=torch.randn(1, 3, 16, 16),
        rank_zero_only=rank_zero_only,
    )
    # Count Python-level collectives issued from inside the monitor's step().
    calls: list[str] = []
    originals = {name: getattr(dist, name) for name in COLLECTIVES}

    def counting(name: str):  # type: ignore[no-untyped-def]
        def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
            calls.append(name)
            return originals[name](*args, **kwargs)

        return wrapper

    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(rank)
    for _ in range(5):
        loss = model(torch.randn(4, 3, 16, 16, generator=g)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        for name in COLLECTIVES:
            setattr(dist, name, counting(name))
        try:
            monitor.step()
        finally:
            for name, fn in originals.items():
                setattr(dist, name, fn)
    monitor.close()
    # Ranks still agree after the probe passes (DDP would fail on diverged buffers).
    params = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = [torch.zeros_like(params) for _ in range(world)]
    dist.all_gather(gathered, params)
    result = {
        "active": monitor.active,
        "captured": monitor.captured,
        "log_dir": monitor.log_dir,
        "collectives": calls,
        "layers": getattr(monitor, "layers", []),
        "in_sync": all(torch.equal(gathered[0], t) for t in gathered),
    }
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    Path(log_dir, f"result{rank}.json").write_text(json.dumps(result))


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One 2-process gloo run (both settings of rank_zero_only), shared by the tests below."""
    root = tmp_path_factory.mktemp("ddp")
    run_ranks(_worker, str(root))
    return root


def results(root: Path, rank_zero_only: bool) -> tuple[Path, list[dict]]:
    log_dir = root / f"rank_zero_only={rank_zero_only}"
    return log_dir, [json.loads((log_dir / f"result{r}.json").read_text()) for r in range(2)]


def event_files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("events.out.tfevents.*"))


@pytest.mark.slow
def test_ddp_two_processes_rank_zero_writes(ddp_run: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logs, (r0, r1) = results(ddp_run, rank_zero_only=True)
    assert r0["active"] and r0["captured"] == 3
    assert not r1["active"] and r1["captured"] == 0 and r1["log_dir"] is None
    assert r0["collectives"] == [] and r1["collectives"] == []
    assert r0["in_sync"] and r1["in_sync"]
    assert r0["layers"][0] == "stem.0"
    files = event_files(logs)
    assert len(files) == 1 and files[0].parent == logs
    ea = EventAccumulator(str(files[0].parent), size_guidance={"images": 0})
    ea.Reload()
    tags = ea.Tags()["images"]
    assert [e.step for e in ea.Images("feature_maps/hook/stem.0")] == [0, 2, 4]
    assert "feature_maps/probe/stem.0" in tags
    assert not any("module" in t for t in tags)


@pytest.mark.slow
def test_ddp_every_rank_writes_when_asked(ddp_run: Path) -> None:
    logs, (r0, r1) = results(ddp_run, rank_zero_only=False)
    assert r0["captured"] == r1["captured"] == 3
    assert r0["collectives"] == [] and r1["collectives"] == []
    assert r0["in_sync"] and r1["in_sync"]
    assert r1["log_dir"] == os.path.join(str(logs), "rank1")
    files = event_files(logs)
    assert {f.parent for f in files} == {logs, logs / "rank1"}
