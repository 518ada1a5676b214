"""The CUDA proof (issue 15): hook maps, host syncs, images, bf16, compile, DataParallel.

Every test is marked ``cuda`` and skipped where CUDA is not available, so on a CPU machine this
file imports and finishes at once. ``bash benchmarks/gpu_check.sh`` runs it with ``pytest -m
cuda``; with ``FEATUREVIZ_CUDA_REPORT=<path>`` set, the sync counts of sampled steps are written
there as JSON (and always printed).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.support.helpers import reference_maps, tiny_net
from torch_featureviz import FeatureCapture, FeatureMonitor

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture(autouse=True)
def _exact_convs() -> Iterator[None]:
    """No TF32 and deterministic cuDNN, so two computations of a conv agree to the bit."""
    before = (
        torch.backends.cudnn.allow_tf32,
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        (
            torch.backends.cudnn.allow_tf32,
            torch.backends.cuda.matmul.allow_tf32,
            torch.backends.cudnn.deterministic,
            torch.backends.cudnn.benchmark,
        ) = before


@contextlib.contextmanager
def _sync_debug(mode: str) -> Iterator[None]:
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode(mode)
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def _report(key: str, value: object) -> None:
    print(f"[cuda report] {key}: {value}")
    path = os.environ.get("FEATUREVIZ_CUDA_REPORT")
    if path:
        p = Path(path)
        data = json.loads(p.read_text()) if p.is_file() else {}
        data[key] = value
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(data, indent=1) + "\n")


def _batch(n: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g).cuda()


# -- hook maps on CUDA are the true conv outputs --------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("which", ["resnet50", "inplace_relu"])
def test_hook_maps_on_cuda_equal_a_hook_free_reference(which: str) -> None:
    if which == "resnet50":
        import torchvision

        torch.manual_seed(0)
        model = torchvision.models.resnet50().eval().cuda()
        x = _batch(2, 224)
    else:  # Conv2d -> ReLU(inplace=True), a shared conv called twice, a residual block
        model = tiny_net().eval().cuda()
        x = _batch(3, 32)
    ref = reference_maps(model, x)
    with FeatureCapture(model, max_channels=None, sample=1) as cap, torch.no_grad():
        out = model(x)
    assert out.is_cuda
    assert set(cap.maps) == set(ref)
    for name, want in ref.items():
        got = cap.maps[name]
        assert got.is_cuda, name  # selected and copied on the device
        torch.testing.assert_close(got.float(), want[1].float(), msg=name)


# -- no host sync in the hooks or on unsampled steps ---------------------------------------------
def test_monitored_cuda_training_makes_no_host_sync_outside_sampled_steps(tmp_path: Path) -> None:
    model = tiny_net().cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, probe = _batch(4, 32), _batch(1, 32, seed=1)
    every, steps = 3, 10

    def train_step() -> None:
        loss = model(x).square().mean()  # no host sync (class-index losses may check targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    with FeatureMonitor(model, tmp_path, every=every, probe=probe) as monitor:
        train_step()  # warm-up outside the checks: cuDNN and allocator initialisation
        monitor.step()
        monitor.flush()
        syncs: list[int] = []
        for i in range(1, steps + 1):
            sampled = monitor.should_capture(i)
            # The background writer copies to the host on purpose; keep it idle while checking.
            assert monitor.flush(timeout=60)
            with _sync_debug("error"):  # raises on any synchronising call
                train_step()  # on a sampled step, the hooks capture here
                if not sampled:
                    assert monitor.step() is False
            if sampled:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    with _sync_debug("warn"):
                        assert monitor.step() is True
                syncs.append(sum("synchroniz" in str(w.message) for w in caught))
        assert monitor.flush(timeout=60)
        assert monitor.error is None
        assert monitor.captured == 1 + len(syncs) and monitor.dropped == 0
    _report("host syncs per sampled monitor.step()", syncs)
    assert len(syncs) == len([i for i in range(1, steps + 1) if i % every == 0])


# -- the same pictures as on the CPU --------------------------------------------------------------
def _images(log_dir: Path) -> dict[str, list[torch.Tensor]]:
    import numpy as np
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(log_dir), size_guidance={"images": 0})
    ea.Reload()
    out: dict[str, list[torch.Tensor]] = {}
    for tag in ea.Tags()["images"]:
        out[tag] = [
            torch.from_numpy(np.asarray(Image.open(io.BytesIO(e.encoded_image_string))).copy())
            for e in ea.Images(tag)
        ]
    return out


def _train_and_log(device: str, log_dir: Path) -> None:
    model = tiny_net().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(4, 3, 32, 32, generator=g).to(device) for _ in range(3)]
    probe = torch.randn(1, 3, 32, 32, generator=g).to(device)
    with FeatureMonitor(model, log_dir, every=2, probe=probe) as monitor:
        for x in batches:
            loss = model(x).square().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            monitor.step()


@pytest.mark.slow
def test_images_logged_from_cuda_training_equal_those_from_cpu(tmp_path: Path) -> None:
    _train_and_log("cpu", tmp_path / "cpu")
    _train_and_log("cuda", tmp_path / "cuda")
    cpu, cuda = _images(tmp_path / "cpu"), _images(tmp_path / "cuda")
    assert cpu and set(cpu) == set(cuda)
    worst = 0
    for tag, images in cpu.items():
        assert len(images) == len(cuda[tag]) >= 1, tag  # steps 0 and 2 (the probe image once)
        for a, b in zip(images, cuda[tag], strict=True):
            assert a.shape == b.shape, tag
            diff = (a.int() - b.int()).abs()
            worst = max(worst, int(diff.max()))
            assert int(diff.max()) <= 2, f"{tag}: {int(diff.max())} levels apart"
            assert float((diff > 1).float().mean()) < 0.001, tag  # rounding, not a different map
    _report("largest CPU/CUDA pixel difference (levels of 255)", worst)


# -- bf16 autocast, channels_last and torch.compile, without recompiles ---------------------------
class _CountingBackend:
    """A torch.compile backend that runs graphs eagerly and counts compilations (Dynamo's guards
    and graph breaks are what is under test; inductor would only add minutes of codegen)."""

    def __init__(self) -> None:
        self.compiles = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list) -> object:  # type: ignore[type-arg]
        self.compiles += 1
        return gm.forward


@pytest.mark.slow
def test_bf16_channels_last_compiled_training_on_cuda_without_recompiles(tmp_path: Path) -> None:
    torch._dynamo.reset()
    model = tiny_net().cuda().to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = _batch(4, 32).to(memory_format=torch.channels_last)
    backend = _CountingBackend()
    with FeatureMonitor(model, tmp_path, every=2, probe=_batch(1, 32, seed=1)) as monitor:
        compiled = torch.compile(model, backend=backend)
        counts = []
        for _ in range(8):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = compiled(x)
            assert out.dtype == torch.bfloat16
            loss = out.float().square().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            monitor.step()
            counts.append(backend.compiles)
        assert monitor.flush(timeout=60)
        assert monitor.error is None and monitor.captured == 4 and monitor.dropped == 0
    # Sampled and unsampled steps each compiled by step 4; nothing after.
    assert counts[3] == counts[-1], counts
    images = _images(tmp_path)
    hook_tags = [t for t in images if "feature_maps/hook" in t]
    assert hook_tags and all(len(images[t]) == 4 for t in hook_tags)
    torch._dynamo.reset()


# -- DataParallel on one device ------------------------------------------------------------------
def test_dataparallel_on_one_device(tmp_path: Path) -> None:
    inner = tiny_net().cuda()
    dp = nn.DataParallel(copy.deepcopy(inner), device_ids=[0])
    x = _batch(4, 32)
    ref = reference_maps(inner.eval(), x)
    dp.eval()
    with FeatureCapture(dp, max_channels=None) as cap, torch.no_grad():
        dp(x)
    assert set(cap.maps) == set(ref)  # names without the "module." prefix
    for name, want in ref.items():
        torch.testing.assert_close(cap.maps[name].float(), want[0].float(), msg=name)
    dp.train()
    opt = torch.optim.SGD(dp.parameters(), lr=0.01)
    with FeatureMonitor(dp, tmp_path, every=2) as monitor:
        for _ in range(3):
            loss = dp(x).square().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            monitor.step()
        assert monitor.flush(timeout=60)
        assert monitor.error is None and monitor.captured == 2
    assert not any(t.startswith("module.") or "/module." in t for t in _images(tmp_path))
