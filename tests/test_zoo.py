"""The model-zoo matrix (issue 11): every conv found and captured on the models people train.

For each model (every torchvision classification, detection, segmentation, video, optical-flow
and quantization builder; timm models across families; Hugging Face transformers vision models
from small configs; U-Nets, a GAN generator and an audio CNN with transposed convs), random
weights and a tiny input:

- discovery finds exactly the convs an ``isinstance`` walk finds, in ``named_modules`` order;
- one forward with a :class:`FeatureCapture` attached gives one map per conv call, named as
  the hook-free reference (``tests.support.helpers.reference_maps``) names them, with equal values;
- the model's outputs are bit-identical with and without the capture;
- no hook is left afterwards.

Int8 quantized builders get the specific "not supported" message instead.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping
from typing import Any

import pytest
import torch
from torch import nn
from torchvision import models as tvm

from tests.support.helpers import hook_count, reference_maps
from tests.support.zoo_models import (
    TIMM_MODELS,
    Case,
    cheap_init,
    hf_cases,
    other_cases,
    quantized_builders,
    timm_cases,
    torchvision_cases,
)
from torch_featureviz import FeatureCapture, find_conv_layers
from torch_featureviz.capture.discovery import CONV_TYPES
from torch_featureviz.monitor.config import MonitorConfig
from torch_featureviz.naming import split_call_key

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

TORCHVISION = torchvision_cases()
TIMM = timm_cases()
HF = hf_cases()
OTHER = other_cases()
CASES = TORCHVISION + TIMM + HF + OTHER


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny inputs run faster on one thread than on several (less synchronisation)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_same(a: Any, b: Any, path: str = "output") -> None:
    """``a`` and ``b`` are the same nested structure of bit-identical tensors."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), path
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True, msg=path)
    elif isinstance(a, Mapping):
        assert isinstance(b, Mapping) and list(a) == list(b), path
        for k in a:
            assert_same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


def check_case(case: Case) -> dict[str, int]:
    """Run every check of the matrix on one case; return a few counts for the report."""
    torch.manual_seed(0)
    model = case.build().eval()
    args, kwargs = case.inputs(), case.kwargs()
    walk = [n for n, m in model.named_modules() if isinstance(m, CONV_TYPES)]
    convs = find_conv_layers(model)
    assert list(convs) == walk and walk, "discovery differs from an isinstance walk"

    def call(m: nn.Module) -> Any:
        return m(*copy.deepcopy(args), **copy.deepcopy(kwargs))

    with torch.no_grad():
        plain = call(model)
        # after a first forward: transformers installs its own output-capturing hooks lazily
        hooks_before = hook_count(model)
        with FeatureCapture(model, max_channels=None) as cap:
            captured = call(model)
        assert hook_count(model) == hooks_before, "hooks left after the capture"
    assert cap.passes == 1
    assert_same(plain, captured)  # outputs unchanged with the capture attached
    ref = reference_maps(model, run=call, in_place=True)
    assert hook_count(model) == hooks_before
    assert list(cap.maps) == list(ref), "one map per conv call, in call order"
    assert {split_call_key(k)[0] for k in ref} <= set(convs)
    for key, full in ref.items():
        spatial = len(convs[split_call_key(key)[0]].kernel_size)
        expected = full[0] if full.dim() == spatial + 2 else full
        got = cap.maps[key]
        assert got.dtype == torch.float32 and got.shape == expected.shape, key
        torch.testing.assert_close(got, expected.float(), rtol=0, atol=0, equal_nan=True, msg=key)
    return {"convs": len(convs), "calls": len(ref)}


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_zoo_model(case: Case) -> None:
    counts = check_case(case)
    assert counts["calls"] >= 1


def test_the_matrix_covers_every_torchvision_builder_and_enough_of_timm_and_hf() -> None:
    names = {c.name for c in TORCHVISION}
    for module in (tvm, tvm.detection, tvm.segmentation, tvm.video, tvm.optical_flow):
        assert {f"tv-{n}" for n in tvm.list_models(module=module)} <= names
    assert {f"tv-{n}-float" for n in quantized_builders()} <= names
    pytest.importorskip("timm")
    assert len(TIMM) == len(TIMM_MODELS) >= 40
    pytest.importorskip("transformers")
    assert len(HF) >= 8


@pytest.mark.parametrize("name", quantized_builders())
def test_int8_quantized_builders_get_the_specific_message(name: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = tvm.get_model(name, weights=None, quantize=True)
    for attempt in (find_conv_layers, FeatureCapture):
        with pytest.raises(ValueError) as info:
            attempt(model)
        message = str(info.value)
        assert "int8 quantized conv layers" in message
        assert "quantized convs are not supported" in message
        assert "before torch.ao.quantization.convert()" in message


# -- each conv type through capture, the monitor and TensorBoard --------------------------------

#: One model per conv type: two convs of that type with an in-place ReLU between, and an input.
CONV_TYPE_MODELS = {
    "Conv1d": (lambda: nn.Sequential(nn.Conv1d(2, 6, 3), nn.ReLU(True), nn.Conv1d(6, 4, 3)),
               (3, 2, 40)),
    "Conv2d": (lambda: nn.Sequential(nn.Conv2d(2, 6, 3), nn.ReLU(True), nn.Conv2d(6, 4, 3)),
               (3, 2, 12, 12)),
    "Conv3d": (lambda: nn.Sequential(nn.Conv3d(2, 6, 3), nn.ReLU(True), nn.Conv3d(6, 4, 3)),
               (3, 2, 5, 10, 10)),
    "ConvTranspose1d": (
        lambda: nn.Sequential(
            nn.ConvTranspose1d(2, 6, 3, stride=2), nn.ReLU(True), nn.ConvTranspose1d(6, 4, 2)
        ),
        (3, 2, 20),
    ),
    "ConvTranspose2d": (
        lambda: nn.Sequential(
            nn.ConvTranspose2d(2, 6, 3, stride=2), nn.ReLU(True), nn.ConvTranspose2d(6, 4, 2)
        ),
        (3, 2, 6, 6),
    ),
    "ConvTranspose3d": (
        lambda: nn.Sequential(
            nn.ConvTranspose3d(2, 6, 3, stride=2), nn.ReLU(True), nn.ConvTranspose3d(6, 4, 2)
        ),
        (3, 2, 3, 5, 5),
    ),
}


@pytest.mark.parametrize("kind", sorted(CONV_TYPE_MODELS))
def test_capture_of_each_conv_type_equals_the_reference(kind: str) -> None:
    build, shape = CONV_TYPE_MODELS[kind]
    torch.manual_seed(0)
    model, x = build(), torch.randn(shape)
    ref = reference_maps(model, x)
    with FeatureCapture(model, max_channels=3, sample=2) as cap, torch.no_grad():
        model(x)
        model(x[1])  # unbatched: (C, *spatial) in, (C, *spatial) out
    assert hook_count(model) == 0
    assert list(cap.maps) == ["0", "2"]
    spatial = len(shape) - 2
    for name in ("0", "2"):
        got = cap.maps[name]
        assert got.dim() == spatial + 1 and got.shape[0] == 3  # (C, L) / (C, H, W) / (C, T, H, W)
        assert got.shape[1:] == ref[name].shape[2:]
    # the last pass was the unbatched one: sample 1 of the batch, computed without a batch dim
    with torch.no_grad():
        unbatched = model[0](x[1])[:3]
    torch.testing.assert_close(cap.maps["0"], unbatched, rtol=0, atol=0)
    with FeatureCapture(model, max_channels=3, sample=2) as cap, torch.no_grad():
        model(x)
    for name in ("0", "2"):
        torch.testing.assert_close(cap.maps[name], ref[name][2, :3], rtol=0, atol=0)


def _read_events(log_dir: Any) -> Any:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0})
    ea.Reload()
    return ea


def _decode(event: Any) -> torch.Tensor:
    import io

    import numpy as np
    from PIL import Image

    pixels = np.array(Image.open(io.BytesIO(event.encoded_image_string)))
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()


def _monitored_run(
    model: nn.Module, batches: list[torch.Tensor], log_dir: Any, loss_fn: Any, **options: Any
) -> tuple[list[dict[str, torch.Tensor]], list[dict[str, torch.Tensor]]]:
    """Train with a FeatureMonitor capturing every step; return, per step, the hook-free
    reference maps of the step's forward and the weights that forward ran with."""
    from torch_featureviz import FeatureMonitor

    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    refs, weights = [], []
    convs = find_conv_layers(model)
    twin = copy.deepcopy(model)  # copied before any hook exists (a copy would keep them)
    with FeatureMonitor(model, log_dir, every=1, on_full="block", **options) as monitor:
        for x in batches:
            twin.load_state_dict(model.state_dict())  # same weights and BN statistics
            refs.append(reference_maps(twin, x, in_place=True))
            weights.append({n: m.weight.detach().clone() for n, m in convs.items()})
            loss = loss_fn(model(x), x)
            loss.backward()
            opt.step()
            opt.zero_grad()
            monitor.step()
    assert hook_count(model) == 0
    return refs, weights


def _check_logged(
    ea: Any,
    refs: list[dict[str, torch.Tensor]],
    weights: list[dict[str, torch.Tensor]],
    model: nn.Module,
    *,
    max_channels: int,
) -> None:
    from torch_featureviz import layer_tag, make_feature_grid, make_filter_grid
    from torch_featureviz.naming import make_tag, parse_tag

    tags = set(ea.Tags()["images"])
    steps = list(range(len(refs)))
    convs = find_conv_layers(model)
    for key in refs[0]:
        hook_tag = make_tag("feature_maps", "hook", layer_tag(key))
        assert hook_tag in tags, (hook_tag, sorted(tags))
        info = parse_tag(hook_tag)
        assert info is not None
        events = ea.Images(hook_tag)
        assert [e.step for e in events] == steps
        for event, ref in zip(events, refs, strict=True):
            expected = make_feature_grid(ref[key][0, :max_channels])
            assert torch.equal(_decode(event), expected), (hook_tag, event.step)
    for name, module in convs.items():
        filter_tag = make_tag("filters", layer_tag(name))
        events = ea.Images(filter_tag)
        assert [e.step for e in events] == steps
        for event, w in zip(events, weights, strict=True):
            transposed = isinstance(module, nn.modules.conv._ConvTransposeNd)
            grid = make_filter_grid(
                w[name], transposed=transposed, groups=module.groups, min_tile=FILTER_TILE
            )
            assert torch.equal(_decode(event), grid), (filter_tag, event.step)
        scalars = set(ea.Tags()["scalars"])
        assert make_tag("activations", layer_tag(name), "mean") in scalars


FILTER_TILE = MonitorConfig().filter_tile


@pytest.mark.parametrize(
    "kind",
    [
        k for k in sorted(CONV_TYPE_MODELS)
    ],
)
def test_tensorboard_tags_of_each_conv_type_read_back(kind: str, tmp_path: Any) -> None:
    build, shape = CONV_TYPE_MODELS[kind]
    torch.manual_seed(0)
    model = build()
    batches = [torch.randn(shape) for _ in range(2)]
    refs, weights = _monitored_run(
        model, batches, tmp_path, lambda out, x: out.square().mean(), max_channels=4
    )
    _check_logged(_read_events(tmp_path), refs, weights, model, max_channels=4)


def test_monitored_training_run_of_r3d_18(tmp_path: Any) -> None:
    torch.manual_seed(0)
    model = tvm.video.r3d_18(num_classes=3).train()
    batches = [torch.randn(2, 3, 2, 16, 16) for _ in range(2)]
    target = torch.tensor([0, 2])
    refs, weights = _monitored_run(
        model,
        batches,
        tmp_path,
        lambda out, x: nn.functional.cross_entropy(out, target),
        max_channels=4,
    )
    assert len(refs[0]) == 20 and all(t.dim() == 5 for t in refs[0].values())
    _check_logged(_read_events(tmp_path), refs, weights, model, max_channels=4)


def test_monitored_training_run_of_a_conv1d_audio_cnn(tmp_path: Any) -> None:
    from tests.support.zoo_models import AudioCNN

    torch.manual_seed(0)
    model = AudioCNN().train()
    batches = [torch.randn(4, 1, 256) for _ in range(3)]
    refs, weights = _monitored_run(
        model,
        batches,
        tmp_path,
        lambda out, x: nn.functional.mse_loss(out, x),
        max_channels=8,
    )
    assert "mix#1" in refs[0]  # the shared conv is called twice
    _check_logged(_read_events(tmp_path), refs, weights, model, max_channels=8)


def test_a_detection_head_that_sees_no_box_does_not_break_the_forward() -> None:
    # Random weights score every box below maskrcnn's default 0.05 threshold, so its mask head
    # runs on a batch of 0 boxes; a capture must skip that call, not raise inside the forward
    # (PITFALLS 19).
    with cheap_init():
        model = tvm.detection.maskrcnn_resnet50_fpn(
            weights=None, weights_backbone=None, min_size=64, max_size=64
        ).eval()
    with FeatureCapture(model) as cap, torch.no_grad():
        model([torch.rand(3, 64, 64)])
    assert "backbone.body.conv1" in cap.maps
