"""The model-zoo matrix (issue 11): every conv found and captured on the models people train.

For each model (every torchvision classification, detection, segmentation, video, optical-flow
and quantization builder; timm models across families; Hugging Face transformers vision models
from small configs; U-Nets, a GAN generator and an audio CNN with transposed convs), random
weights and a tiny input:

- discovery finds exactly the convs an ``isinstance`` walk finds, in ``named_modules`` order;
- one forward with a :class:`FeatureCapture` attached gives one map per conv call, named as
  the hook-free reference (``tests.helpers.reference_maps``) names them, with equal values;
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

from tests.helpers import hook_count, reference_maps
from tests.zoo_models import (
    TIMM_MODELS,
    Case,
    hf_cases,
    other_cases,
    quantized_builders,
    timm_cases,
    torchvision_cases,
)
from torch_featureviz import FeatureCapture, find_conv_layers
from torch_featureviz.discovery import CONV_TYPES
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
