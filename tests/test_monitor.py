"""FeatureMonitor: scheduling, the two sources, statistics, background writing, errors."""

from __future__ import annotations

import copy
import errno
import io
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from tests.support.helpers import (
    FailingSink,
    GatedSink,
    assert_same_state,
    decode,
    hook_count,
    read_events,
    state_snapshot,
    tiny_net,
)
from torch_featureviz import FeatureMonitor, make_feature_grid, make_filter_grid
from torch_featureviz.monitor.config import MonitorConfig

ROOT = Path(__file__).resolve().parents[1]


def train(model: nn.Module, monitor: FeatureMonitor | None, steps: int, *, seed: int = 0,
          size: int = 16, batch: int = 4) -> list[torch.Tensor]:
    """A few SGD steps; returns the batches used."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(steps):
        x = torch.randn(batch, 3, size, size, generator=g)
        batches.append(x)
        loss = model(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if monitor is not None:
            monitor.step()
    return batches


# -- bad input, in the calling thread -----------------------------------------------------------
@pytest.mark.parametrize("every", [0, -3])
def test_every_below_one_is_rejected(tmp_path: Path, every: int) -> None:
    model = tiny_net()
    with pytest.raises(ValueError, match="every must be >= 1"):
        FeatureMonitor(model, tmp_path, every=every)
    assert hook_count(model) == 0


def test_every_of_wrong_type(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="every must be a positive int"):
        FeatureMonitor(tiny_net(), tmp_path, every=2.5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"every_seconds": 0}, ValueError, "every_seconds must be a finite number > 0"),
        ({"every_seconds": "1"}, TypeError, "every_seconds must be a number"),
        ({"queue_size": 0}, ValueError, "queue_size must be >= 1"),
        ({"dead_window": 0}, ValueError, "dead_window must be >= 1"),
        ({"near_zero": -1.0}, ValueError, "near_zero must be a finite number >= 0"),
        ({"close_timeout": float("nan")}, ValueError, "close_timeout must be a finite"),
        ({"start_step": -1}, ValueError, "start_step must be >= 0"),
        ({"histograms": 1}, TypeError, "histograms must be True or False"),
        ({"max_channels": 0}, ValueError, "max_channels must be >= 1"),
        ({"layers": "nope*"}, ValueError, "matches no conv layer"),
    ],
)
def test_bad_options(tmp_path: Path, kwargs: dict, error: type, match: str) -> None:
    model = tiny_net()
    with pytest.raises(error, match=match):
        FeatureMonitor(model, tmp_path / "logs", **kwargs)
    assert hook_count(model) == 0


def test_model_without_convs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="has no conv layers"):
        FeatureMonitor(nn.Sequential(nn.Linear(3, 3)), tmp_path)


def test_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        FeatureMonitor("resnet18", tmp_path)  # type: ignore[arg-type]


def test_probe_with_wrong_channels(tmp_path: Path) -> None:
    model = tiny_net()
    match = r"probe of shape \(1, 1, 16, 16\) does not fit TinyNet: .*to have 3 channels.*x.expand"
    with pytest.raises(ValueError, match=match):
        FeatureMonitor(model, tmp_path, probe=torch.randn(1, 1, 16, 16))
    assert hook_count(model) == 0


def test_probe_of_wrong_size_for_the_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 14 * 14, 2))
    before = state_snapshot(model)
    with pytest.raises(ValueError, match=r"probe of shape \(1, 3, 20, 20\) does not fit"):
        FeatureMonitor(model, tmp_path, probe=torch.randn(3, 20, 20))
    assert hook_count(model) == 0
    assert_same_state(before, state_snapshot(model))
    assert not list(tmp_path.iterdir())  # nothing written either


def test_probe_not_a_tensor(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="probe must be a torch.Tensor"):
        FeatureMonitor(tiny_net(), tmp_path, probe=[[0.0]])  # type: ignore[arg-type]


def test_unwritable_log_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    model = tiny_net()
    with pytest.raises(OSError, match="cannot write to"):
        FeatureMonitor(model, blocker / "logs")
    assert hook_count(model) == 0


def test_log_dir_of_wrong_type(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="log_dir must be a directory path or a .*SummaryWriter"):
        FeatureMonitor(tiny_net(), 42)


# -- scheduling and the unsampled fast path -------------------------------------------------------
def test_captures_every_n_steps_and_removes_hooks(tmp_path: Path) -> None:
    model = tiny_net()
    with FeatureMonitor(model, tmp_path, every=3, on_full="block") as monitor:
        assert hook_count(model) > 0
        sampled, hooked = [], []
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        for _ in range(10):
            hooked.append(hook_count(model))  # what this step's forward runs with
            model(torch.randn(2, 3, 16, 16)).sum().backward()
            opt.step()
            sampled.append(monitor.step())
    assert sampled == [i % 3 == 0 for i in range(10)]
    # Unsampled forwards run with no hook at all (PyTorch's fast call path); a sampled step's
    # forward has them, added at the step() before it.
    assert [n > 0 for n in hooked] == sampled
    assert hook_count(model) == 0
    assert monitor.captured == 4 and monitor.dropped == 0
    ea = read_events(tmp_path)
    for tag in ("filters/stem.0", "feature_maps/hook/stem.0", "feature_maps/hook/shared_call1"):
        assert [e.step for e in ea.Images(tag)] == [0, 3, 6, 9]
    assert [e.step for e in ea.Scalars("activations/heads.down/mean")] == [0, 3, 6, 9]


@pytest.mark.filterwarnings("ignore:FeatureMonitor captured no conv output:RuntimeWarning")
def test_hooks_stay_until_a_forward_is_seen_and_with_keep_hooks(tmp_path: Path) -> None:
    """Before any training forward the monitor cannot know the model runs eagerly, so the
    hooks stay (a first forward compiled then is traced with them); keep_hooks keeps them."""
    model = tiny_net()
    with FeatureMonitor(model, tmp_path / "a", every=3, start_step=1, on_full="block") as m:
        for _ in range(3):
            m.step()  # steps 1, 2, 3 with no forward at all
        assert hook_count(model) > 0
    model = tiny_net()
    with FeatureMonitor(model, tmp_path / "b", every=3, keep_hooks=True, on_full="block") as m:
        for _ in range(4):
            model(torch.randn(2, 3, 16, 16)).sum().backward()
            m.step()
            assert hook_count(model) > 0
        assert m.captured == 2
    assert hook_count(model) == 0


def test_a_sampled_step_without_a_forward_to_capture_says_why(tmp_path: Path) -> None:
    model = tiny_net().eval()
    with FeatureMonitor(model, tmp_path, every=2, on_full="block") as monitor:
        with torch.no_grad():  # inference with the default record="grad"
            model(torch.randn(2, 3, 16, 16))
        with pytest.warns(RuntimeWarning, match=r"no conv output of TinyNet.*record='all'"):
            monitor.step()
    assert "feature_maps/hook/stem.0" not in read_events(tmp_path).Tags()["images"]


def test_explicit_global_step_and_start_step(tmp_path: Path) -> None:
    model = tiny_net()
    with FeatureMonitor(model, tmp_path, every=5, on_full="block", start_step=8) as monitor:
        train(model, monitor, 4)  # steps 8, 9, 10, 11
        train(model, None, 1)
        monitor.step(global_step=20)  # a jump the hooks were not armed for: no hook maps
        monitor.prepare(25)
        train(model, None, 1)
        monitor.step(global_step=25)
    ea = read_events(tmp_path)
    assert [e.step for e in ea.Images("feature_maps/hook/stem.0")] == [10, 25]
    assert [e.step for e in ea.Images("filters/stem.0")] == [10, 20, 25]


def test_time_interval(tmp_path: Path) -> None:
    model = tiny_net()
    with FeatureMonitor(
        model, tmp_path, every=10**6, on_full="block", every_seconds=0.05
    ) as monitor:
        results = []
        for _ in range(4):
            train(model, None, 1)
            results.append(monitor.step())
            time.sleep(0.06)
    assert results == [True, True, True, True]


class CountOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def test_unsampled_steps_do_no_tensor_work(tmp_path: Path) -> None:
    """An unsampled step runs exactly the ops of a model with no monitor attached."""
    x = torch.randn(2, 3, 16, 16)
    bare = tiny_net()
    bare(x).sum().backward()
    bare.zero_grad(set_to_none=True)
    with CountOps() as plain:
        bare(x).sum().backward()
        bare_step_ops = list(plain.ops)
    model = tiny_net()
    with FeatureMonitor(
        model, tmp_path, every=100, on_full="block", probe=torch.randn(1, 3, 16, 16)
    ) as monitor:
        model(x).sum().backward()
        monitor.step()  # step 0: sampled
        for _ in range(3):
            model.zero_grad(set_to_none=True)
            with CountOps() as counted:
                model(x).sum().backward()
                assert monitor.step() is False
            assert counted.ops == bare_step_ops


def test_outputs_are_unchanged_by_a_capture(tmp_path: Path) -> None:
    x = torch.randn(3, 3, 16, 16)
    ref = tiny_net()(x)
    model = tiny_net()
    with FeatureMonitor(model, tmp_path, every=1, on_full="block"):
        out = model(x)
    assert torch.equal(out, ref)


# -- what is captured ----------------------------------------------------------------------
def test_a_capture_shows_the_weights_its_forward_ran_with(tmp_path: Path) -> None:
    """Training-batch maps, filters and probe maps of a step all come from the weights that
    step's forward used: step 0 shows the initial weights, step 1 those after one update
    (read at step 0's step(), before step 1's forward), and later in-place updates never
    reach what was read."""
    model = tiny_net()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 3, 16, 16, generator=g)
    probe = torch.randn(3, 3, 16, 16, generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    weights, hook, probed = [], [], []
    with FeatureMonitor(
        model, tmp_path, every=1, on_full="block", sample=2, max_channels=5, probe=probe
    ) as monitor:
        for _ in range(2):
            with torch.no_grad():
                weights.append(model.stem[0].weight.detach().clone())
                hook.append(model.stem[0](x)[2, :5].clone())
                probed.append(model.stem[0](probe)[2, :5].clone())
            model(x).square().mean().backward()
            opt.step()
            opt.zero_grad()
            monitor.step()
        opt.step()  # an in-place update after step() must not reach what was queued
        monitor.flush()
    assert not torch.equal(weights[0], weights[1])
    ea = read_events(tmp_path)
    tile = MonitorConfig().filter_tile
    for step in (0, 1):
        assert torch.equal(
            decode(ea.Images("filters/stem.0")[step]),
            make_filter_grid(weights[step], min_tile=tile),
        )
        assert torch.equal(
            decode(ea.Images("feature_maps/hook/stem.0")[step]), make_feature_grid(hook[step])
        )
        assert torch.equal(
            decode(ea.Images("feature_maps/probe/stem.0")[step]), make_feature_grid(probed[step])
        )
    assert [e.step for e in ea.Images("filters/stem.0")] == [0, 1]


def test_weights_loaded_after_the_monitor_are_never_shown_stale(tmp_path: Path) -> None:
    """Step 0's filters and probe maps are read when the monitor is made; a checkpoint loaded
    after that (a resume written in that order, or Lightning strategies that restore after
    on_fit_start) changes the model before step 0's forward, so step 0 reads them again at its
    step(), and nothing logged shows the discarded initial weights."""
    model = tiny_net(seed=0)
    checkpoint = tiny_net(seed=1).state_dict()
    probe = torch.randn(1, 3, 16, 16)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x = torch.randn(4, 3, 16, 16)
    with FeatureMonitor(model, tmp_path, every=1, on_full="block", probe=probe) as monitor:
        initial = model.stem[0].weight.detach().clone()
        model.load_state_dict(checkpoint)
        model(x).square().mean().backward()
        opt.step()
        with torch.no_grad():
            read_at_step = model.stem[0].weight.detach().clone()
            probed = model.stem[0](probe)[0].clone()
        monitor.step()
    ea = read_events(tmp_path)
    tile = MonitorConfig().filter_tile
    (filters,) = ea.Images("filters/stem.0")
    assert torch.equal(decode(filters), make_filter_grid(read_at_step, min_tile=tile))
    assert not torch.equal(decode(filters), make_filter_grid(initial, min_tile=tile))
    (maps,) = ea.Images("feature_maps/probe/stem.0")
    assert torch.equal(decode(maps), make_feature_grid(probed))


def test_probe_maps_and_exact_restore(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.Dropout(0.5), nn.ReLU(),
        nn.Conv2d(6, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.3),
    )
    model.train()
    model[2].eval()  # a mixed mode the restore must keep
    probe = torch.randn(2, 3, 12, 12)
    # Step 0's probe pass sees the model as step 0's forward found it: BatchNorm's running
    # statistics before that forward updated them.
    at_start = copy.deepcopy(model).eval()
    with FeatureMonitor(
        model, tmp_path, every=1, on_full="block", probe=probe, sample=1
    ) as monitor:
        model(torch.randn(4, 3, 12, 12)).sum().backward()
        before = state_snapshot(model)
        rng = torch.get_rng_state()
        monitor.step()  # queues step 0, and runs step 1's probe pass
        assert_same_state(before, state_snapshot(model))
        assert torch.equal(torch.get_rng_state(), rng)
    with torch.no_grad():
        expected = at_start[0](probe)[1].clone()
        expected4 = at_start[4](at_start[3](at_start[2](at_start[1](at_start[0](probe)))))[1]
    ea = read_events(tmp_path)
    assert torch.equal(decode(ea.Images("feature_maps/probe/0")[0]), make_feature_grid(expected))
    assert torch.equal(decode(ea.Images("feature_maps/probe/4")[0]), make_feature_grid(expected4))
    assert len(ea.Images("input/probe")) == 1


def test_statistics_near_zero_and_dead_channels(tmp_path: Path) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    with torch.no_grad():
        conv.weight[1].zero_()  # channel 1: always exactly 0 (near zero, never active)
        conv.bias[1] = 0.0
        conv.weight[2].zero_()  # channel 2: always -1 (never active, not near zero)
        conv.bias[2] = -1.0
    model = nn.Sequential(conv, nn.ReLU())
    x = torch.randn(2, 3, 8, 8)
    with FeatureMonitor(model, tmp_path, every=1, on_full="block", dead_window=3) as monitor:
        for _ in range(4):
            model(x)
            monitor.step()
    out = torch.relu(conv(x)).detach()  # the statistics describe the ReLU after the conv
    ea = read_events(tmp_path)

    def scalar(name: str) -> list[float]:
        return [e.value for e in ea.Scalars(f"activations/0/{name}")]

    assert scalar("mean") == pytest.approx([out.mean().item()] * 4, rel=1e-5)
    assert scalar("std") == pytest.approx([out.std().item()] * 4, rel=1e-5)
    near = (out[0].abs() <= 1e-6).float().mean().item()
    assert near > 0.5  # channels 1 and 2 and the negative half of the others
    assert scalar("near_zero") == pytest.approx([near] * 4)
    assert scalar("dead_channels") == pytest.approx([0.5] * 4)
    assert [e.value for e in ea.Scalars("featureviz/dropped_captures")] == [0.0] * 4


class _Unbatched(nn.Module):
    """Calls its conv on one (C, H, W) sample: the conv's output has no batch dimension."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x[0])).unsqueeze(0)


def test_statistics_of_an_unbatched_conv_output(tmp_path: Path) -> None:
    conv = nn.Conv2d(3, 4, 3, padding=1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.copy_(torch.tensor([1.0, 1.0, -1.0, -1.0]))  # 0, 1 always active; 3 never
        conv.weight[2, 0, 1, 1] = 10.0  # channel 2: active at one pixel only, (0, 0)
    model = _Unbatched(conv)
    x = torch.full((1, 3, 8, 8), -1.0)
    x[0, 0, 0, 0] = 1.0
    with FeatureMonitor(model, tmp_path, every=1, on_full="block") as monitor:
        model(x)
        monitor.step()
    out = conv(x[0]).detach()
    ea = read_events(tmp_path)
    (mean,) = ea.Scalars("activations/conv/mean")
    (std,) = ea.Scalars("activations/conv/std")
    (dead,) = ea.Scalars("activations/conv/dead_channels")
    assert mean.value == pytest.approx(out.mean().item(), rel=1e-5)
    assert std.value == pytest.approx(out.std().item(), rel=1e-5)
    assert dead.value == pytest.approx(0.25)  # per-column activity would give 15/32


def test_dead_channels_use_a_window(tmp_path: Path) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    model = nn.Sequential(conv)
    with FeatureMonitor(model, tmp_path, every=1, on_full="block", dead_window=2) as monitor:
        for sign in (1.0, -1.0, -1.0, -1.0):  # active once, then never
            model(torch.full((1, 1, 4, 4), sign))
            monitor.step()
    dead = [e.value for e in read_events(tmp_path).Scalars("activations/0/dead_channels")]
    assert dead == [0.0, 0.0, 1.0, 1.0]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_training(tmp_path: Path, dtype: torch.dtype) -> None:
    model = tiny_net().to(dtype)
    probe = torch.randn(1, 3, 16, 16)  # float32: cast to the model's dtype once
    with FeatureMonitor(
        model, tmp_path, every=1, on_full="block", probe=probe, histograms=True
    ) as monitor:
        x = torch.randn(2, 3, 16, 16, dtype=dtype)
        model(x).float().sum().backward()
        monitor.step()
    ea = read_events(tmp_path)
    for tag in ("mean", "std", "near_zero", "dead_channels"):
        (event,) = ea.Scalars(f"activations/blocks.0.conv/{tag}")
        assert torch.isfinite(torch.tensor(event.value))
    assert ea.Histograms("histograms/activations/stem.0")
    assert ea.Histograms("histograms/weights/stem.0")
    assert ea.Images("feature_maps/probe/stem.0")


def test_dataparallel_names_have_no_module_prefix(tmp_path: Path) -> None:
    model = nn.DataParallel(tiny_net())
    with FeatureMonitor(model, tmp_path, every=1, on_full="block") as monitor:
        model(torch.randn(2, 3, 16, 16)).sum().backward()
        monitor.step()
    tags = read_events(tmp_path).Tags()["images"]
    assert "feature_maps/hook/stem.0" in tags
    assert not any("module" in t for t in tags)


def test_existing_summary_writer_is_not_closed(tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path))
    model = tiny_net()
    with FeatureMonitor(model, writer, every=1, on_full="block") as monitor:
        train(model, monitor, 1)
    writer.add_scalar("user/after", 1.0, 5)  # still open
    writer.close()
    ea = read_events(tmp_path)
    assert "user/after" in ea.Tags()["scalars"]
    assert "filters/stem.0" in ea.Tags()["images"]


# -- background writing: queue, errors, shutdown -----------------------------------------------
def gated(tmp_path: Path, model: nn.Module, **kwargs: Any) -> tuple[FeatureMonitor, GatedSink]:
    """A monitor whose background writer waits until the returned sink's event is set."""
    sinks: list[GatedSink] = []

    def wrap(inner: Any) -> GatedSink:
        sinks.append(GatedSink(inner))
        return sinks[0]

    monitor = FeatureMonitor(model, tmp_path, sink_wrapper=wrap, **kwargs)
    return monitor, sinks[0]


def test_full_queue_drops_counts_and_warns(tmp_path: Path) -> None:
    model = tiny_net()
    monitor, gate = gated(tmp_path, model, every=1, queue_size=2)
    with pytest.warns(RuntimeWarning, match=r"dropped the capture of step \d+: the background"):
        train(model, monitor, 8)
    assert monitor.dropped > 0
    assert monitor.captured + monitor.dropped == 8
    assert monitor.captured <= 2 + 1  # the queue plus the one being written
    gate.event.set()
    monitor.close()
    steps = [e.step for e in read_events(tmp_path).Images("filters/stem.0")]
    assert len(steps) == monitor.captured


def test_close_never_hangs(tmp_path: Path) -> None:
    model = tiny_net()
    monitor, gate = gated(tmp_path, model, every=1, close_timeout=0.3)
    train(model, monitor, 2)
    start = time.monotonic()
    with pytest.warns(RuntimeWarning, match="close.. gave up after 0 s with .* captures unwritten"):
        monitor.close()
    assert time.monotonic() - start < 3.0
    assert hook_count(model) == 0
    gate.event.set()  # the disk recovers: the writer finishes alone and closes the log
    assert monitor.writer_thread is not None
    monitor.writer_thread.join(30)
    assert not monitor.writer_thread.is_alive()
    assert gate.closed
    assert len(read_events(tmp_path).Images("filters/stem.0")) == 2


def failing(tmp_path: Path, model: nn.Module, **kwargs: Any) -> FeatureMonitor:
    """A monitor whose sink fails every write with ENOSPC (the ``sink_wrapper`` seam)."""
    return FeatureMonitor(model, tmp_path, sink_wrapper=FailingSink, **kwargs)


def test_background_error_reaches_the_next_step(tmp_path: Path) -> None:
    model = tiny_net()
    monitor = failing(tmp_path, model, every=1)
    train(model, None, 1)
    monitor.step()
    _wait_for_error(monitor)
    with pytest.raises(RuntimeError, match="background writer failed: OSError.*No space") as info:
        monitor.step()
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno == errno.ENOSPC
    assert monitor.step() is False  # no further captures, no second raise
    monitor.close()  # already reported: close() does not raise it again
    assert hook_count(model) == 0


def test_background_error_reaches_close(tmp_path: Path) -> None:
    model = tiny_net()
    monitor = failing(tmp_path, model, every=1)
    train(model, monitor, 1)
    with pytest.raises(RuntimeError, match="background writer failed"):
        monitor.close()
    assert hook_count(model) == 0
    monitor.close()  # idempotent


def test_context_manager_keeps_the_training_error(tmp_path: Path) -> None:
    model = tiny_net()
    with pytest.raises(KeyError, match="boom"):
        with failing(tmp_path, model, every=1) as monitor:
            train(model, monitor, 1)
            raise KeyError("boom")
    assert hook_count(model) == 0


def _wait_for_error(monitor: FeatureMonitor, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while monitor.error is None and time.monotonic() < deadline:
        time.sleep(0.01)
    if monitor.error is None:  # say where the writer is, to debug rather than guess
        import faulthandler
        import tempfile

        with tempfile.TemporaryFile("w+") as f:
            faulthandler.dump_traceback(f, all_threads=True)
            f.seek(0)
            stacks = f.read()
        pytest.fail(f"the writer did not fail within {timeout} s: {monitor!r}\n{stacks}")


SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, torch
    sys.path.insert(0, {root!r})
    from tests.support.helpers import tiny_net
    from torch_featureviz import FeatureMonitor
    model = tiny_net()
    monitor = FeatureMonitor(model, {log_dir!r}, every=2, on_full="block")
    for _ in range(5):
        model(torch.randn(2, 3, 16, 16)).sum().backward()
        monitor.step()
    if {mode!r} == "crash":
        monitor.flush(timeout=30)
        os.kill(os.getpid(), signal.SIGKILL)
    # mode "exit": no close(); the interpreter's exit must flush everything
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["exit", "crash"])
def test_logs_survive_exit_and_crash(tmp_path: Path, mode: str) -> None:
    script = SCRIPT.format(root=str(ROOT), log_dir=str(tmp_path), mode=mode)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == (0 if mode == "exit" else -9), proc.stderr
    ea = read_events(tmp_path)
    assert [e.step for e in ea.Images("feature_maps/hook/stem.0")] == [0, 2, 4]
    assert [e.step for e in ea.Scalars("activations/stem.0/mean")] == [0, 2, 4]


# -- resources -------------------------------------------------------------------------------
def _load_bench():  # type: ignore[no-untyped-def]
    from benchmarks import bench_monitor_throughput

    return bench_monitor_throughput


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:FeatureMonitor dropped the capture:RuntimeWarning")
def test_monitor_benchmark_quick_run_writes_finite_figures(tmp_path: Path, capsys) -> None:
    """The benchmark cannot rot: its --quick run prints the table and writes the JSON, every
    figure finite and positive (no timing is asserted)."""
    import json
    import math

    bench = _load_bench()
    out = tmp_path / "monitor.json"
    # The soak's two-conv net as the workload: the script's every path, at a fraction of the
    # demo model's cost.
    tiny = ["--model", "tiny", "--size", "16", "--batch", "4", "--classes", "4"]
    assert bench.main(["--quick", *tiny, "--out", str(out)]) == 0
    # It flushes denormals while it times, and must leave the process as it found it.
    assert (torch.tensor([1e-39]) * 1.0).item() != 0.0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    (run,) = result["throughput"].values()
    assert run["steps_per_variant"] == 200 and run["captures"] == 2
    figures = [
        *run["mean_step_ms"].values(),
        run["capture_on_one_step_ms"],
        run["normal_step_ms"],
        run["writer_ms_per_capture"],
        run["capture_on_one_step_no_probe_vs_normal"],
        *(run[k] for k in result["targets"]),
        *(x for ratios in run["block_ratios"].values() for x in ratios),
    ]
    figures.append(run["throughput_control_vs_none"])  # the A/A control
    assert len(run["mean_step_ms"]) == 4 and len(figures) == 4 + 4 + 4 + 3 * 2 + 1
    assert all(math.isfinite(x) and x > 0 for x in figures), figures
    # Two periods in a quick run: their ratios can agree to the 4 decimals kept, so 0 is a
    # reading too.
    errors = [run["ratio_stderr"][k] for k in ("control", "unsampled", "every100")]
    assert all(math.isfinite(x) and x >= 0 for x in errors), errors
    # The writer's wait is added to the same steps: never below the training thread's figure.
    assert run["capture_on_one_step_with_writer_vs_normal"] >= run["capture_on_one_step_vs_normal"]
    assert "the writer's work" in printed and "without a probe" in printed
    # An unsampled step's one part, timed on its own: a few microseconds of Python.
    assert 0 < result["unsampled_step_call_us"] < 1000
    assert 0.99 < run["unsampled_by_its_call_vs_none"] < 1.0
    assert "an unsampled step adds one call of monitor.step()" in printed
    for key in result["targets"]:
        assert key in printed
    assert result["soak"]["threads_after"] == result["soak"]["threads_before"]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:FeatureMonitor dropped the capture:RuntimeWarning")
def test_short_soak_leaves_no_threads_or_files(tmp_path: Path) -> None:
    bench = _load_bench()
    result = bench.run_soak(200, every=10, log_dir=str(tmp_path))
    assert result["threads_after"] == result["threads_before"]
    assert result["open_files_after"] == result["open_files_before"]
    # 20 captures of a tiny model: anything near this bound would be a leak, not noise.
    assert result["rss_drift_second_half_mb"] < 30 and result["rss_drift_mb"] < 30
    # A tiny model outruns the low-priority writer at times: what was not dropped was written.
    assert result["dropped"] < 20
    written = len(read_events(tmp_path).Images("feature_maps/probe/0"))
    assert written == 20 - result["dropped"]


def test_repr_and_closed_monitor(tmp_path: Path) -> None:
    model = tiny_net()
    monitor = FeatureMonitor(model, tmp_path, every=1, on_full="block")
    assert "every=1" in repr(monitor) and os.fspath(tmp_path) in str(monitor.log_dir)
    monitor.close()
    assert monitor.step() is False
    assert "closed=True" in repr(monitor)


def test_short_last_batch_does_not_break_training(tmp_path: Path) -> None:
    model = tiny_net()
    with FeatureMonitor(model, tmp_path, every=1, on_full="block", sample=3) as monitor:
        model(torch.randn(4, 3, 16, 16)).sum().backward()
        monitor.step()
        model(torch.randn(2, 3, 16, 16)).sum().backward()  # no sample 3 in this batch
        monitor.step()
    ea = read_events(tmp_path)
    assert [e.step for e in ea.Images("feature_maps/hook/stem.0")] == [0]
    assert [e.step for e in ea.Images("filters/stem.0")] == [0, 1]


def test_inactive_rank_has_no_hooks_and_writes_nothing(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import torch_featureviz.monitor.feature_monitor as monitor_module

    monkeypatch.setattr(monitor_module, "_distributed_rank", lambda: 1)
    model = tiny_net()
    monitor = FeatureMonitor(model, tmp_path / "logs", every=1, on_full="block")
    assert not monitor.active and monitor.layers == [] and monitor.log_dir is None
    assert hook_count(model) == 0
    train(model, monitor, 2)
    assert monitor.captured == 0
    monitor.close()
    assert not (tmp_path / "logs").exists()


def test_second_monitor_on_the_same_model_closes_the_first(tmp_path: Path) -> None:
    model = tiny_net()
    first = FeatureMonitor(model, tmp_path / "a", every=1, on_full="block")
    hooks = hook_count(model)
    with pytest.warns(RuntimeWarning, match="already had an open FeatureMonitor; closing it"):
        second = FeatureMonitor(model, tmp_path / "b", every=1, on_full="block")
    assert first.closed and not second.closed
    assert hook_count(model) == hooks  # not doubled
    train(model, second, 1)
    second.close()
    assert hook_count(model) == 0


def test_one_by_one_kernels_get_a_shared_scale_filter_grid(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 1))
    with FeatureMonitor(model, tmp_path, every=1, on_full="block", histograms=True) as monitor:
        model(torch.randn(1, 3, 8, 8))
        monitor.step()
    ea = read_events(tmp_path)
    assert "filters/0" in ea.Tags()["images"] and "filters/1" in ea.Tags()["images"]
    (event,) = ea.Images("filters/1")
    pixels = np.asarray(Image.open(io.BytesIO(event.encoded_image_string)))
    assert len(np.unique(pixels)) > 2  # one shared scale: not every 1x1 tile black
    assert "feature_maps/hook/1" in ea.Tags()["images"]
    assert "histograms/weights/1" in ea.Tags()["histograms"]


def test_writer_thread_runs_at_lower_priority_on_linux(tmp_path: Path) -> None:
    monitor = FeatureMonitor(tiny_net(), tmp_path, every=1, on_full="block")
    try:
        thread = monitor.writer_thread
        assert thread is not None
        deadline = time.monotonic() + 10
        while thread.native_id is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)  # the thread lowers its own priority first thing
        mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        writer = os.getpriority(os.PRIO_PROCESS, thread.native_id)
        if sys.platform.startswith("linux"):
            assert writer == min(19, mine + 10)
        else:  # elsewhere the priority is left alone
            assert writer == mine
    finally:
        monitor.close()
