"""Field safety: the package never breaks or corrupts the user's training (issue 9).

Each test reproduces a situation met in real training code (timm, Lightning, torchvision's
reference scripts) and checks the rule: nothing raises inside the user's forward or backward,
outputs are unchanged, and no logged map is other than what it says.
"""

from __future__ import annotations

import copy
import gc
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import warnings
import weakref
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
import torchvision
from torch import nn
from torch.utils.checkpoint import checkpoint

from tests.support.helpers import decode, hook_count, read_events, reference_maps, tiny_net
from torch_featureviz import FeatureCapture, FeatureMonitor, capture_feature_maps
from torch_featureviz.capture.hooks import PassObserver
from torch_featureviz.render.grids import make_feature_grid


def sgd_step(model: nn.Module, x: torch.Tensor, opt: torch.optim.Optimizer) -> torch.Tensor:
    out = model(x)
    out.float().square().mean().backward()
    opt.step()
    opt.zero_grad()
    return out


# -- 1. grad modes ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "order", [("inference", "grad", "no_grad"), ("no_grad", "inference", "grad")]
)
def test_any_order_of_grad_modes_never_raises(
    order: tuple[str, ...], tiny_model: nn.Module
) -> None:
    model = tiny_model
    x = torch.randn(2, 3, 8, 8)
    modes = {
        "inference": torch.inference_mode,
        "no_grad": torch.no_grad,
        "grad": torch.enable_grad,
    }
    with FeatureCapture(model) as cap:
        for _ in range(2):
            for mode in order:
                with modes[mode]():
                    model(x)
                maps = cap.maps
                assert set(maps) >= {"stem.0", "shared", "shared#1"}
                for m in maps.values():  # ordinary tensors, whatever mode made them
                    assert not m.is_inference() and not m.requires_grad
                    m.add_(1.0)  # the user may even modify them in place
        torch.testing.assert_close(cap.maps["stem.0"], reference_maps(model, x)["stem.0"][0] + 1)


def test_monitor_survives_inference_mode_validation(tmp_path: Path, tiny_model: nn.Module) -> None:
    model = tiny_model
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with FeatureMonitor(
        model, tmp_path, every=1, on_full="block", probe=torch.randn(1, 3, 8, 8)
    ) as monitor:
        for _ in range(4):
            sgd_step(model, torch.randn(2, 3, 8, 8), opt)
            monitor.step()
            with torch.inference_mode():  # Lightning's validate/test, many scripts
                model(torch.randn(2, 3, 8, 8))
    assert len(read_events(tmp_path).Images("feature_maps/hook/stem.0")) == 4


# -- 2. only the training forward -----------------------------------------------------------
def test_validation_between_steps_is_not_logged_as_training_maps(
    tmp_path: Path, tiny_model: nn.Module
) -> None:
    model = tiny_model
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # weights fixed: references stay valid
    counter = CountingObserver()
    monitor = FeatureMonitor(model, tmp_path, every=1, on_full="block", max_channels=None)
    monitor_capture_observers(monitor).append(counter)
    train_x = [torch.randn(2, 3, 8, 8) for _ in range(3)]
    for x in train_x:
        sgd_step(model, x, opt)
        counter.calls = 0
        with torch.no_grad():  # validation before step(): must not replace the training maps
            model.eval()
            model(torch.randn(2, 3, 8, 8))
            model.train()
        assert counter.calls == 0, "a no_grad forward did capture work while armed"
        monitor.step()
    monitor.close()
    events = read_events(tmp_path).Images("feature_maps/hook/stem.0")
    for event, x in zip(events, train_x, strict=True):
        expected = reference_maps(model, x)["stem.0"][0]
        assert torch.equal(decode(event), make_feature_grid(expected))


def test_record_all_keeps_the_old_behaviour(tmp_path: Path, tiny_model: nn.Module) -> None:
    model = tiny_model
    val_x = torch.randn(2, 3, 8, 8)
    with FeatureMonitor(
        model, tmp_path, every=1, on_full="block", max_channels=None, record="all"
    ) as monitor:
        model(torch.randn(2, 3, 8, 8)).sum().backward()
        with torch.no_grad():
            model(val_x)
        monitor.step()
    (event,) = read_events(tmp_path).Images("feature_maps/hook/stem.0")
    assert torch.equal(decode(event), make_feature_grid(reference_maps(model, val_x)["stem.0"][0]))


class CountingObserver(PassObserver):
    def __init__(self) -> None:
        self.calls = 0
        self.keys: list[str] = []

    def output(self, record: Any, key: str, module: nn.Module, output: torch.Tensor) -> None:
        self.calls += 1
        self.keys.append(key)


def monitor_capture_observers(monitor: FeatureMonitor) -> list[PassObserver]:
    """The observers of a monitor's capture (a documented attribute of FeatureCapture)."""
    capture = monitor.capture
    assert capture is not None
    return capture.observers


# -- 3. activation checkpointing --------------------------------------------------------------
class Checkpointed(nn.Module):
    def __init__(self, reentrant: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 1))
        self.head = nn.Linear(8, 2)
        self.reentrant = reentrant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = checkpoint(self.block, x, use_reentrant=self.reentrant)
        return self.head(x.mean(dim=(2, 3)))


@pytest.mark.parametrize("reentrant", [True, False])
def test_checkpoint_recomputation_is_ignored(tmp_path: Path, reentrant: bool) -> None:
    model = Checkpointed(reentrant)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    ref = reference_maps(model, x)
    counter = CountingObserver()
    with FeatureCapture(model, max_channels=None, record="grad", observers=[counter]) as cap:
        model(x).sum().backward()
        assert sorted(cap.maps) == ["block.0", "block.2", "stem"]  # no "#1" from the recompute
        assert counter.calls == 3, counter.keys  # no statistic reduced twice
        for k, m in cap.maps.items():
            torch.testing.assert_close(m, ref[k][0], rtol=0, atol=0)


def test_timm_grad_checkpointing_with_the_monitor(tmp_path: Path) -> None:
    model = timm.create_model("resnet10t", num_classes=4)
    model.set_grad_checkpointing(True)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    xs = [torch.randn(2, 3, 32, 32) for _ in range(2)]
    with FeatureMonitor(model, tmp_path, every=1, on_full="block", max_channels=None) as monitor:
        for x in xs:
            sgd_step(model, x, opt)
            monitor.step()
    ea = read_events(tmp_path)
    assert not any("_call" in t for t in ea.Tags()["images"])
    name = "layer1.0.conv1"
    for event, x in zip(ea.Images(f"feature_maps/hook/{name}"), xs, strict=True):
        assert torch.equal(decode(event), make_feature_grid(reference_maps(model, x)[name][0]))


# -- 4. copies and saves ------------------------------------------------------------------------
def test_deep_copy_of_an_attached_model_does_no_capture_work(
    tmp_path: Path, tiny_model: nn.Module
) -> None:
    model = tiny_model
    x, y = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    with FeatureCapture(model, max_channels=None) as cap:
        model(x)
        ema = copy.deepcopy(model)  # what timm's ModelEmaV3 and AveragedModel do
        swa = torch.optim.swa_utils.AveragedModel(model)
        passes = cap.passes
        ema(y)
        swa(y)
        assert cap.passes == passes  # the copies' forwards did nothing to the original capture
        torch.testing.assert_close(cap.maps["stem.0"], reference_maps(model, x)["stem.0"][0])
        torch.testing.assert_close(ema(y), model(y), rtol=0, atol=0)
    assert hook_count(model) == 0


def test_ema_with_a_monitor_logs_only_the_trained_model(tmp_path: Path) -> None:
    model = timm.create_model("resnet10t", num_classes=4)
    ema = timm.utils.ModelEmaV3(model, decay=0.9)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with FeatureMonitor(model, tmp_path, every=1, on_full="block") as monitor:
        for _ in range(2):
            sgd_step(model, torch.randn(2, 3, 32, 32), opt)
            ema.update(model)
            with torch.no_grad():
                ema.module(torch.randn(2, 3, 32, 32))
            monitor.step()
    ema_copy = timm.utils.ModelEmaV3(model)  # a copy made while attached... after close: none
    assert hook_count(ema_copy.module) == 0


def test_saved_attached_model_loads_without_the_package(tmp_path: Path) -> None:
    model = torchvision.models.resnet18(num_classes=4)  # a class importable without us
    path = tmp_path / "model.pt"
    with FeatureCapture(model):
        torch.save(model, path)
        pickle.dumps(model)  # plain pickle too
    code = textwrap.dedent(
        f"""
        import sys
        sys.modules["torch_featureviz"] = None  # importing the package now fails
        import torch
        model = torch.load({str(path)!r}, weights_only=False).eval()
        out = model(torch.randn(1, 3, 32, 32))
        print("ok", tuple(out.shape))
        """
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "ok (1, 4)" in run.stdout


# -- 5. the probe follows the model -----------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_probe_follows_the_models_dtype(
    tmp_path: Path, dtype: torch.dtype, tiny_model: nn.Module
) -> None:
    model = tiny_model
    with FeatureMonitor(
        model, tmp_path, every=1, on_full="block", probe=torch.randn(1, 3, 8, 8)
    ) as monitor:
        model.to(dtype)
        x = torch.randn(2, 3, 8, 8, dtype=dtype)
        model(x).float().sum().backward()
        assert monitor.step()
    assert len(read_events(tmp_path).Images("feature_maps/probe/stem.0")) == 1


# -- 6. short and empty batches -----------------------------------------------------------------
def test_short_and_empty_batches_keep_training_and_statistics(
    tmp_path: Path, tiny_model: nn.Module
) -> None:
    model = tiny_model
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with FeatureMonitor(model, tmp_path, every=1, on_full="block", sample=3) as monitor:
            for batch in (4, 2, 0):
                x = torch.randn(batch, 3, 8, 8)
                out = model(x)
                assert out.shape == (batch, 4)
                if batch:
                    out.sum().backward()
                    opt.step()
                    opt.zero_grad()
                monitor.step()
    ea = read_events(tmp_path)
    assert [e.step for e in ea.Images("feature_maps/hook/stem.0")] == [0]  # only the full batch
    means = ea.Scalars("activations/stem.0/mean")
    assert [e.step for e in means] == [0, 1]  # the short batch still gets whole-batch stats


def test_capture_of_a_short_batch_says_why(tiny_model: nn.Module) -> None:
    model = tiny_model
    with FeatureCapture(model, sample=1) as cap, pytest.warns(RuntimeWarning, match="no sample 1"):
        model(torch.randn(1, 3, 8, 8))
    assert cap.skipped["stem.0"] == "the batch of 1 has no sample 1"


# -- 7. no first-conv assumption ----------------------------------------------------------------
class SpaceToDepth(nn.Module):
    """A YOLO "Focus"/TResNet-style stem: the first conv sees 4x the input's channels."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.unshuffle = nn.PixelUnshuffle(2)
        self.conv = nn.Conv2d(12, 8, 3, padding=1)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(self.unshuffle(x)).mean(dim=(2, 3)))


def test_space_to_depth_stems_work(tmp_path: Path) -> None:
    model = SpaceToDepth()
    x = torch.randn(1, 3, 16, 16)
    assert capture_feature_maps(model, x)["conv"].shape == (8, 8, 8)
    with FeatureMonitor(model, tmp_path, every=1, on_full="block", probe=x) as monitor:
        model(torch.randn(2, 3, 16, 16)).sum().backward()
        monitor.step()
    assert "feature_maps/probe/conv" in read_events(tmp_path).Tags()["images"]


@pytest.mark.slow
def test_timm_tresnet_probe(tmp_path: Path) -> None:
    model = timm.create_model("tresnet_m", num_classes=4)
    maps = capture_feature_maps(model, torch.randn(1, 3, 64, 64), max_channels=2)
    assert len(maps) >= 50


# -- 8. loops that bypass the root forward --------------------------------------------------------
def test_forward_features_forward_head_loop_is_captured(tmp_path: Path) -> None:
    model = timm.create_model("resnet10t", num_classes=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    xs = [torch.randn(2, 3, 32, 32) for _ in range(3)]
    with FeatureMonitor(model, tmp_path, every=1, on_full="block", max_channels=None) as monitor:
        for x in xs:
            out = model.forward_head(model.forward_features(x))  # never calls model.forward
            out.square().mean().backward()
            opt.step()
            opt.zero_grad()
            monitor.step()
    ea = read_events(tmp_path)
    events = ea.Images("feature_maps/hook/conv1.0")
    assert len(events) == 3
    for event, x in zip(events, xs, strict=True):
        assert torch.equal(decode(event), make_feature_grid(reference_maps(model, x)["conv1.0"][0]))
    assert [e.step for e in ea.Scalars("activations/conv1.0/mean")] == [0, 1, 2]


def test_capture_of_a_backbone_called_directly() -> None:
    model = torchvision.models.resnet18()
    x = torch.randn(1, 3, 32, 32)
    with FeatureCapture(model, max_channels=None) as cap, torch.no_grad():
        model.layer1(model.maxpool(model.relu(model.bn1(model.conv1(x)))))
        assert set(cap.maps) == {"conv1", *[n for n in cap.layers if n.startswith("layer1.")]}
        model.conv1(x)  # the opener again: a new pass, not conv1#1
        assert set(cap.maps) == {"conv1"}


# -- 9. interrupts ------------------------------------------------------------------------------
class InterruptOnce(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.armed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.armed:
            self.armed = False
            raise KeyboardInterrupt
        return x


def test_keyboard_interrupt_in_forward_and_in_step(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), InterruptOnce(), nn.Conv2d(4, 4, 1))
    trap: InterruptOnce = model[1]  # type: ignore[assignment]
    probe = torch.randn(1, 3, 8, 8)
    with FeatureMonitor(model, tmp_path, every=2, probe=probe) as monitor:
        trap.armed = True
        with pytest.raises(KeyboardInterrupt):
            model(torch.randn(2, 3, 8, 8))  # step 0, interrupted mid-forward
        model(torch.randn(2, 3, 8, 8)).sum().backward()
        assert monitor.step()  # step 0 still logs the complete pass after the interrupt
        model(torch.randn(2, 3, 8, 8)).sum().backward()
        trap.armed = True  # step 1's step() runs step 2's probe pass: it is interrupted
        with pytest.raises(KeyboardInterrupt):
            monitor.step()  # step 1
        for _ in range(3):  # steps 2 to 4: 2 runs its probe pass at its own step()
            model(torch.randn(2, 3, 8, 8)).sum().backward()
            monitor.step()
    ea = read_events(tmp_path)
    assert [e.step for e in ea.Images("feature_maps/hook/0")] == [0, 2, 4]
    assert [e.step for e in ea.Images("feature_maps/probe/0")] == [0, 2, 4]


# -- 10. lifetime -------------------------------------------------------------------------------
def test_monitor_dropped_without_close_is_freed_and_flushed(
    tmp_path: Path, tiny_model: nn.Module
) -> None:
    model = tiny_model
    monitor = FeatureMonitor(model, tmp_path, every=1, on_full="block")
    thread = monitor.writer_thread
    assert thread is not None
    for _ in range(3):
        model(torch.randn(2, 3, 8, 8)).sum().backward()
        monitor.step()
    ref = weakref.ref(monitor)
    del monitor
    gc.collect()
    assert ref() is None, "something still holds the monitor"
    thread.join(30)
    assert not thread.is_alive()
    assert hook_count(model) == 0
    assert len(read_events(tmp_path).Images("filters/stem.0")) == 3


def test_notebook_rebuilding_the_model_keeps_no_old_monitors(tmp_path: Path) -> None:
    refs = []
    for k in range(5):
        model = tiny_net(seed=k)
        monitor = FeatureMonitor(model, tmp_path / str(k), every=1, on_full="block")
        refs.append(weakref.ref(monitor))
    del model, monitor
    gc.collect()
    assert all(r() is None for r in refs)
    assert not [t for t in threading.enumerate() if t.name == "featureviz-monitor-writer"]


# -- 11. shared log directories -------------------------------------------------------------------
def test_two_monitors_in_one_directory(tmp_path: Path) -> None:
    g, d = tiny_net(seed=1), tiny_net(seed=2)
    first = FeatureMonitor(g, tmp_path, every=1, on_full="block")
    with pytest.warns(RuntimeWarning, match="give each monitor its own name|Give each monitor"):
        second = FeatureMonitor(d, tmp_path, every=1, on_full="block")
    second.close()
    first.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with (
            FeatureMonitor(g, tmp_path / "gan", every=1, on_full="block", name="G") as mg,
            FeatureMonitor(d, tmp_path / "gan", every=1, on_full="block", name="D") as md,
        ):
            for model, monitor in ((g, mg), (d, md)):
                model(torch.randn(2, 3, 8, 8)).sum().backward()
                monitor.step()
    tags = read_events(tmp_path / "gan").Tags()
    assert {"G/filters/stem.0", "D/filters/stem.0", "G/feature_maps/hook/stem.0"} <= set(
        tags["images"]
    )
    assert "D/activations/stem.0/dead_channels" in tags["scalars"]


# -- 12. ends of processes ----------------------------------------------------------------
def test_sigterm_handler_flushes_then_chains(tmp_path: Path) -> None:
    marker = tmp_path / "previous-handler-ran"
    code = textwrap.dedent(
        f"""
        import os, signal, sys, time
        sys.path.insert(0, {str(Path(__file__).parent.parent)!r})
        import torch
        from tests.support.helpers import tiny_net
        from torch_featureviz import FeatureMonitor

        def previous(signum, frame):
            open({str(marker)!r}, "w").close()
            sys.exit(143)

        signal.signal(signal.SIGTERM, previous)
        model = tiny_net()
        monitor = FeatureMonitor(model, {str(tmp_path / "logs")!r}, every=1, handle_sigterm=True,
                                 queue_size=8, on_full="block")
        for _ in range(5):
            model(torch.randn(2, 3, 8, 8)).sum().backward()
            monitor.step()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
        """
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 143, run.stderr
    assert marker.exists()
    assert len(read_events(tmp_path / "logs").Images("filters/stem.0")) == 5


class _MakesAMonitor(torch.utils.data.Dataset):
    def __init__(self, log_dir: str) -> None:
        self.log_dir = log_dir

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> str:
        try:
            FeatureMonitor(nn.Conv2d(1, 1, 1), self.log_dir)
        except RuntimeError as e:
            return str(e)
        return "created"


def test_monitor_refuses_to_start_in_a_dataloader_worker(tmp_path: Path) -> None:
    loader = torch.utils.data.DataLoader(_MakesAMonitor(str(tmp_path)), num_workers=1)
    (message,) = list(loader)
    assert "cannot be created inside a DataLoader worker" in message[0]


def test_sigterm_option_needs_the_main_thread(tmp_path: Path) -> None:
    errors: list[BaseException] = []

    def make() -> None:
        try:
            FeatureMonitor(tiny_net(), tmp_path, handle_sigterm=True)
        except ValueError as e:
            errors.append(e)

    t = threading.Thread(target=make)
    t.start()
    t.join(30)
    assert errors and "main thread" in str(errors[0])
    assert signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, signal.default_int_handler) or (
        os.name == "nt"
    )


# -- all of it at once: random sequences of what training code does ------------------------------
class FieldNet(nn.Module):
    """Convs with an optionally checkpointed block and a trap that raises KeyboardInterrupt."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.trap = InterruptOnce()
        self.block = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(inplace=True))
        self.head = nn.Linear(4, 2)
        self.checkpointed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.trap(torch.relu(self.stem(x)))
        if self.checkpointed:
            x = checkpoint(self.block, x, use_reentrant=False)
        else:
            x = self.block(x)
        return self.head(x.mean(dim=(2, 3)))


OPS = ("train", "no_grad", "inference", "copy", "short", "checkpointed", "interrupt")


@pytest.mark.slow
def test_random_sequences_of_training_code(tmp_path_factory: pytest.TempPathFactory) -> None:
    from hypothesis import given
    from hypothesis import strategies as st

    from tests.support.reliability_models import reproducible

    @reproducible(25)
    @given(st.lists(st.sampled_from(OPS), min_size=1, max_size=10))
    def run(ops: list[str]) -> None:
        log_dir = tmp_path_factory.mktemp("field")
        model = FieldNet()
        opt = torch.optim.SGD(model.parameters(), lr=0.0)  # fixed weights: references hold
        g = torch.Generator().manual_seed(len(ops))
        expected: dict[int, torch.Tensor] = {}
        monitor = FeatureMonitor(
            model, log_dir, every=1, sample=1, max_channels=None, on_full="block"
        )
        capture = monitor.capture
        assert capture is not None
        step = 0
        for op in ops:
            x = torch.randn(1 if op == "short" else 2, 3, 6, 6, generator=g)
            if op in ("train", "short", "checkpointed"):
                model.checkpointed = op == "checkpointed"
                sgd_step(model, x, opt)  # never raises, whatever came before
                model.checkpointed = False
                if op != "short":
                    expected[step] = reference_maps(model, x)["stem"][1]
                monitor.step()
                step += 1
            elif op == "no_grad":
                with torch.no_grad():
                    model(x)
            elif op == "inference":
                with torch.inference_mode():
                    model(x)
            elif op == "copy":
                passes = capture.passes
                copy.deepcopy(model)(x)
                assert capture.passes == passes  # the copy did no capture work
            else:
                model.trap.armed = True
                with pytest.raises(KeyboardInterrupt):
                    model(x)
        thread = monitor.writer_thread
        monitor.close()
        assert hook_count(model) == 0
        assert thread is not None and not thread.is_alive()
        assert not [f for f in os.listdir("/proc/self/fd") if "tfevents" in _fd_target(f)]
        ea = read_events(log_dir)
        tag = "feature_maps/hook/stem"
        events = ea.Images(tag) if tag in ea.Tags()["images"] else []
        assert [e.step for e in events] == sorted(expected)
        for event in events:
            assert torch.equal(decode(event), make_feature_grid(expected[event.step]))

    run()


def _fd_target(fd: str) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


# -- 9. everything a timm train.py loop does, at once ----------------------------------------------
def _timm_style_run(log_dir: Path | None, steps: int = 12) -> tuple[list[float], dict[str, Any]]:
    """A training loop written the way timm's train.py writes it: channels_last, bf16 autocast,
    gradient accumulation over 2 micro-batches, AdamW with clipping and a cosine schedule, a
    ModelEmaV3 copy, inference_mode validation of the model and of the EMA every 4 steps, and a
    checkpoint (state dicts and the whole pickled model) every 6 steps. Returns the losses and
    the final state; with ``log_dir`` a FeatureMonitor (a probe, every=3) rides along."""
    torch.manual_seed(0)
    model = timm.create_model("efficientnet_b0", num_classes=4, drop_path_rate=0.1)
    model = model.to(memory_format=torch.channels_last).train()
    g = torch.Generator().manual_seed(1)
    data = [
        (torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 4, (4,), generator=g))
        for _ in range(2 * steps)
    ]
    val = torch.randn(4, 3, 32, 32, generator=g)
    monitor = None
    if log_dir is not None:
        probe = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
        monitor = FeatureMonitor(model, log_dir, every=3, probe=probe, on_full="block")
    ema = timm.utils.ModelEmaV3(model, decay=0.9)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    losses: list[float] = []
    for step in range(steps):
        for micro in range(2):
            x, y = data[2 * step + micro]
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = nn.functional.cross_entropy(model(x), y) / 2
            loss.backward()
            losses.append(loss.item())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        ema.update(model, step=step)
        if monitor is not None:
            monitor.step()
        if step % 4 == 3:
            model.eval()
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                losses.append(model(val).float().sum().item())
                losses.append(ema.module(val).float().sum().item())
            model.train()
        if step % 6 == 5 and log_dir is not None:
            torch.save(
                {"model": model.state_dict(), "ema": ema.module.state_dict(),
                 "opt": opt.state_dict()},
                log_dir / "checkpoint.pth",
            )  # fmt: skip
            torch.save(model, log_dir / "model.pth")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state.update({f"ema.{k}": v.clone() for k, v in ema.module.state_dict().items()})
    if monitor is not None:
        monitor.close()
        assert (monitor.captured, monitor.dropped) == (4, 0)  # steps 0, 3, 6, 9
        assert hook_count(model) == 0
        # The EMA was copied while the hooks were on (step 0 is sampled): its copies are inert.
        assert hook_count(ema.module) > 0 and _only_inert_hooks(ema.module)
    return losses, state


def _only_inert_hooks(model: nn.Module) -> bool:
    return all(
        h == None.__init__  # a new method-wrapper object at each lookup
        for m in model.modules()
        for hooks in (m._forward_hooks, m._forward_pre_hooks)
        for h in hooks.values()
    )


@pytest.mark.slow
def test_a_timm_train_py_loop_is_unchanged_bit_for_bit(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the monitor has nothing to warn about in this loop
        monitored, state = _timm_style_run(tmp_path)
    plain, plain_state = _timm_style_run(None)
    assert monitored == plain  # every loss and validation output, bit for bit
    assert state.keys() == plain_state.keys()
    for k, v in state.items():
        assert torch.equal(v, plain_state[k]), k
    events = read_events(tmp_path)
    tags = events.Tags()
    steps = [e.step for e in events.Images("feature_maps/hook/conv_stem")]
    assert steps == [0, 3, 6, 9]  # validation (inference_mode) and the EMA never logged
    assert [e.step for e in events.Images("feature_maps/probe/conv_stem")] == [0, 3, 6, 9]
    assert [e.step for e in events.Scalars("activations/conv_stem/dead_channels")] == [0, 3, 6, 9]
    assert "filters/blocks.0.0.conv_dw" in tags["images"]
    ckpt = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    assert set(ckpt["model"]) == {k for k in state if not k.startswith("ema.")}
    whole = torch.load(tmp_path / "model.pth", weights_only=False)  # saved while armed
    assert hook_count(whole) > 0 and _only_inert_hooks(whole)
