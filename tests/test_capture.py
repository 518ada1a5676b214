import gc
import weakref

import pytest
import torch
import torchvision
from torch import nn

from tests.support.helpers import (
    assert_same_state,
    hook_count,
    reference_maps,
    state_snapshot,
    tiny_net,
)
from torch_featureviz import FeatureCapture, capture_feature_maps, find_conv_layers
from torch_featureviz.capture.hooks import PassObserver


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["resnet50", "vgg16", "mobilenet_v3_small"])
def test_maps_equal_hook_free_reference(arch):
    torch.manual_seed(0)
    model = torchvision.models.get_model(arch).eval()
    x = torch.randn(2, 3, 64, 64)
    ref = reference_maps(model, x)
    with FeatureCapture(model, max_channels=None, sample=1) as cap, torch.no_grad():
        model(x)
    assert list(cap.maps) == list(ref)
    assert len(cap.maps) == len(find_conv_layers(model))
    for name, got in cap.maps.items():
        torch.testing.assert_close(got, ref[name][1], rtol=0, atol=0, msg=name)
    assert hook_count(model) == 0


def test_inplace_relu_does_not_overwrite_the_capture():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 3)
    model = nn.Sequential(conv, nn.ReLU(inplace=True), nn.Conv2d(8, 4, 1))
    x = torch.randn(1, 3, 16, 16)
    expected = conv(x).detach()
    assert (expected < 0).any()
    with FeatureCapture(model) as cap, torch.no_grad():
        model(x)
    torch.testing.assert_close(cap.maps["0"], expected[0], rtol=0, atol=0)
    assert (
        cap.maps["0"] < 0
    ).any()  # the ReLU ran in place after the hook, the copy kept negatives


def test_vgg_inplace_relu_values_are_right():
    torch.manual_seed(1)
    model = torchvision.models.vgg11().eval()
    x = torch.randn(1, 3, 32, 32)
    ref = reference_maps(model, x)
    with FeatureCapture(model, max_channels=None) as cap, torch.no_grad():
        model(x)
    for name in ref:
        torch.testing.assert_close(cap.maps[name], ref[name][0], rtol=0, atol=0)
        assert (cap.maps[name] < 0).any(), name


def test_module_called_twice_keeps_both_calls():
    model = tiny_net().eval()
    x = torch.randn(1, 3, 16, 16)
    ref = reference_maps(model, x)
    with FeatureCapture(model) as cap, torch.no_grad():
        model(x)
    assert "shared" in cap.maps and "shared#1" in cap.maps and "shared#2" not in cap.maps
    assert not torch.equal(cap.maps["shared"], cap.maps["shared#1"])
    torch.testing.assert_close(cap.maps["shared#1"], ref["shared#1"][0], rtol=0, atol=0)


def test_each_pass_replaces_the_previous_one():
    model = tiny_net().eval()
    with FeatureCapture(model) as cap, torch.no_grad():
        model(torch.randn(4, 3, 16, 16))
        first = dict(cap.maps)
        x2 = torch.randn(1, 3, 8, 8)
        model(x2)
    assert cap.passes == 2
    assert list(cap.maps) == list(first)  # same keys, not accumulated (no shared#2, #3)
    assert cap.maps["stem.0"].shape == (8, 8, 8)
    torch.testing.assert_close(cap.maps["stem.0"], model.stem[0](x2)[0].detach())


def test_training_step_any_batch_size_sample_and_channels():
    model = tiny_net().train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(5, 3, 12, 12)
    with FeatureCapture(model, max_channels=4, sample=3) as cap:
        loss = model(x).sum()
        loss.backward()
        opt.step()
    m = cap.maps["stem.0"]
    assert m.shape == (4, 12, 12) and m.dtype == torch.float32
    assert not m.requires_grad and m.grad_fn is None and m._base is None and m.is_contiguous()
    assert cap.maps["heads.down"].shape == (4, 6, 6)


def test_max_channels_none_keeps_all():
    model = tiny_net().eval()
    with FeatureCapture(model, max_channels=None) as cap, torch.no_grad():
        model(torch.randn(1, 3, 8, 8))
    assert cap.maps["heads.down"].shape[0] == 16


def test_maps_keep_no_autograd_graph_alive():
    model = tiny_net().train()
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    refs = []
    spy = model.blocks[0].conv.register_forward_hook(lambda m, a, o: refs.append(weakref.ref(o)))
    with FeatureCapture(model, max_channels=None) as cap:
        out = model(x)
        assert refs[0]() is not None  # the autograd graph keeps the intermediate alive...
        del out
        gc.collect()
    spy.remove()
    assert refs[0]() is None  # ...and once the graph is gone, nothing the capture kept holds it
    assert all(t.grad_fn is None and not t.requires_grad for t in cap.maps.values())


def test_outputs_bit_identical_with_and_without_capture():
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        bare = model(x)
        with FeatureCapture(model):
            hooked = model(x)
        again = model(x)
    assert torch.equal(bare, hooked) and torch.equal(bare, again)


def test_hooks_removed_after_success_and_after_exception():
    model = tiny_net()
    before = hook_count(model)
    with FeatureCapture(model) as cap:
        assert hook_count(model) == before + len(cap.layers) + 2
        model(torch.randn(1, 3, 8, 8))
    assert hook_count(model) == before

    with pytest.raises(RuntimeError):
        with FeatureCapture(model):
            model(torch.randn(1, 5, 8, 8))  # wrong channels: the forward raises
    assert hook_count(model) == before


def test_failed_forward_keeps_the_last_complete_pass():
    class Boom(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 4, 1)
            self.b = nn.Conv2d(4, 4, 1)
            self.fail = False

        def forward(self, x):
            x = self.a(x)
            if self.fail:
                raise RuntimeError("boom")
            return self.b(x)

    model = Boom()
    with FeatureCapture(model) as cap:
        x = torch.randn(1, 3, 4, 4)
        model(x)
        complete = {k: v.clone() for k, v in cap.maps.items()}
        model.fail = True
        with pytest.raises(RuntimeError, match="boom"):
            model(torch.randn(1, 3, 4, 4))
    assert cap.maps.keys() == complete.keys() == {"a", "b"}
    assert all(torch.equal(cap.maps[k], complete[k]) for k in complete)
    assert cap.passes == 1 and hook_count(model) == 0


def test_enabled_flag_gates_the_hooks():
    model = tiny_net().eval()
    with FeatureCapture(model) as cap, torch.no_grad():
        cap.enabled = False
        model(torch.randn(1, 3, 8, 8))
        assert cap.maps == {} and cap.passes == 0
        cap.enabled = True
        model(torch.randn(1, 3, 8, 8))
    assert cap.passes == 1 and len(cap.maps) == 6


def test_layer_selection_and_lifecycle():
    model = tiny_net()
    cap = FeatureCapture(model, layers=["blocks.*"])
    assert list(cap.layers) == ["blocks.0.conv", "blocks.1.conv"]
    cap.attach()
    with pytest.raises(RuntimeError, match="already attached"):
        cap.attach()
    model(torch.randn(1, 3, 8, 8))
    cap.remove()
    cap.remove()  # idempotent
    assert not cap.attached and hook_count(model) == 0
    assert list(cap.maps) == ["blocks.0.conv", "blocks.1.conv"]


def test_submodule_called_alone_still_captures():
    model = tiny_net()
    with FeatureCapture(model, layers="stem.0") as cap:
        model.stem(torch.randn(1, 3, 8, 8))
    assert cap.maps["stem.0"].shape == (8, 8, 8)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_and_channels_last(dtype):
    model = tiny_net().eval().to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 8, 8).to(memory_format=torch.channels_last)
    with FeatureCapture(model) as cap, torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        out = model(x)
    assert cap.maps["stem.0"].dtype == torch.float32 and cap.maps["stem.0"].is_contiguous()
    assert torch.isfinite(out).all()


def test_unbatched_input():
    model = nn.Sequential(nn.Conv2d(3, 4, 3))
    with FeatureCapture(model) as cap:
        model(torch.randn(3, 8, 8))
    assert cap.maps["0"].shape == (4, 6, 6)


def test_data_parallel_names_have_no_module_prefix():
    model = tiny_net().eval()
    dp = nn.DataParallel(model)
    with FeatureCapture(dp) as cap, torch.no_grad():
        dp(torch.randn(2, 3, 8, 8))
    assert "stem.0" in cap.maps and not any(k.startswith("module.") for k in cap.maps)


def test_probe_pass_leaves_the_model_bit_for_bit():
    model = tiny_net().train()
    model(torch.randn(4, 3, 8, 8))  # give BN non-trivial running stats
    model.blocks[1].eval()  # a mixed train/eval state must be restored as it was
    before = state_snapshot(model)
    probe = torch.randn(2, 3, 8, 8)
    rng = torch.get_rng_state()
    maps = capture_feature_maps(model, probe, max_channels=2)
    assert_same_state(before, state_snapshot(model))
    assert torch.equal(rng, torch.get_rng_state())
    assert hook_count(model) == 0
    assert maps["stem.0"].shape == (2, 8, 8)


# -- bad input: clear errors before any hook is registered --------------------------------------
@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"max_channels": 0}, ValueError, "max_channels must be >= 1"),
        ({"max_channels": -3}, ValueError, "max_channels must be >= 1"),
        ({"max_channels": 2.5}, TypeError, "max_channels must be a positive int or None"),
        ({"sample": -1}, ValueError, "sample must be >= 0"),
        ({"sample": "0"}, TypeError, "sample must be an int"),
        ({"layers": "stem.9"}, ValueError, r"'stem.9' matches no conv layer; Closest: stem.0"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    model = tiny_net()
    before = state_snapshot(model)
    with pytest.raises(exc, match=match):
        FeatureCapture(model, **kwargs)
    assert hook_count(model) == 0
    assert_same_state(before, state_snapshot(model))


def test_bad_model():
    with pytest.raises(ValueError, match="has no conv layers"):
        FeatureCapture(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        FeatureCapture(torch.randn(3))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "image, kwargs, exc, match",
    [
        ([[1.0]], {}, TypeError, "input must be a torch.Tensor"),
        ("x.png", {}, TypeError, "input must be a torch.Tensor"),
        (torch.randn(2, 3, 8, 8), {"sample": 2}, ValueError, "sample=2 is outside the batch of 2"),
        (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), {}, TypeError, "floating-point"),
        # Only the model's forward decides whether an input fits (no first-conv assumption):
        (torch.randn(8, 8), {}, RuntimeError, r"failed on an input of shape \(8, 8\)"),
        (torch.randn(1, 1, 3, 8, 8), {}, RuntimeError, "failed on an input of shape"),
        (torch.randn(1, 4, 8, 8), {}, RuntimeError, "to have 3 channels, but got 4"),
        (torch.randn(1, 1, 8, 8), {}, RuntimeError, r"x.expand\(-1, 3, -1, -1\)"),
    ],
)
def test_capture_feature_maps_bad_input(image, kwargs, exc, match):
    model = tiny_net()
    before = state_snapshot(model)
    with pytest.raises(exc, match=match):
        capture_feature_maps(model, image, **kwargs)
    assert hook_count(model) == 0
    assert_same_state(before, state_snapshot(model))


def test_sample_outside_batch_during_users_forward_skips_and_says_why():
    model = tiny_net()
    x = torch.randn(2, 3, 8, 8)
    expected = model(x)
    with FeatureCapture(model, sample=3) as cap:
        with pytest.warns(RuntimeWarning, match="the batch of 2 has no sample 3"):
            out = model(x)
        torch.testing.assert_close(out, expected, rtol=0, atol=0)
        assert cap.maps == {}
        assert set(cap.skipped) == set(find_conv_layers(model)) | {"shared#1"}
        assert cap.skipped["stem.0"] == "the batch of 2 has no sample 3"
        model(torch.randn(4, 3, 8, 8))  # a full batch again: captured, nothing skipped
        assert cap.skipped == {} and cap.maps["stem.0"].shape == (8, 8, 8)
        model(torch.randn(0, 3, 8, 8))  # an empty batch never fails the forward either
        assert cap.maps == {}
    assert hook_count(model) == 0


def test_forward_failure_in_probe_names_the_model():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(10, 2))
    with pytest.raises(
        RuntimeError,
        match=r"the forward pass of Sequential failed on an input of shape \(1, 3, 8, 8\)",
    ):
        capture_feature_maps(model, torch.randn(1, 3, 8, 8))
    assert hook_count(model) == 0


def test_probe_pass_restores_rng_for_models_that_sample_in_eval():
    class Noisy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 1)

        def forward(self, x):
            return self.conv(x + torch.rand_like(x))  # samples even in eval mode

    model, probe = Noisy(), torch.randn(1, 3, 4, 4)
    rng = torch.get_rng_state()
    capture_feature_maps(model, probe)
    assert torch.equal(rng, torch.get_rng_state())


class _SeenPasses(PassObserver):
    def __init__(self, probes: bool) -> None:
        self.observes_probes = probes
        self.kinds: list[str] = []
        self.outputs = 0
        self.modules = 0

    def start(self, record):
        self.kinds.append(record.kind)

    def output(self, record, key, module, output):
        self.outputs += 1

    def watch(self, root):
        return {"1": root[1]}  # the ReLU after the conv

    def module_output(self, record, name, module, args, output):
        self.modules += 1


def test_observers_that_ignore_probe_passes_are_never_called_in_them():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    every, training_only = _SeenPasses(True), _SeenPasses(False)
    cap = FeatureCapture(model, observers=[every, training_only])
    with cap:
        model(torch.randn(1, 3, 8, 8))
        cap.probe(torch.randn(1, 3, 8, 8))
    assert (every.kinds, every.outputs, every.modules) == (["root", "probe"], 2, 2)
    assert (training_only.kinds, training_only.outputs, training_only.modules) == (["root"], 1, 1)
    assert "probe" in cap.last.kind  # the probe pass itself is still captured


def test_hooks_work_where_fx_tracing_breaks():
    """PITFALLS 4: data-dependent control flow defeats FX tracing, not module hooks."""
    from torchvision.models.feature_extraction import create_feature_extractor

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 4, 3, padding=1)
            self.b = nn.Conv2d(4, 4, 3, padding=1)
            self.c = nn.Conv2d(4, 4, 1)

        def forward(self, x):
            x = self.a(x)
            if x.mean() > 0:  # data-dependent: FX cannot trace this
                return self.b(x)
            return self.c(x)

    model = Branchy()
    with pytest.raises(Exception):  # noqa: B017 - torch.fx raises TraceError
        create_feature_extractor(model, return_nodes=["a"])
    x = torch.randn(1, 3, 6, 6)
    with FeatureCapture(model) as cap, torch.no_grad():
        model(x)
    taken = "b" if model.a(x).mean() > 0 else "c"
    assert set(cap.maps) == {"a", taken}


def test_maps_of_earlier_passes_are_never_overwritten():
    """Each pass copies into fresh tensors (no buffer reuse): whatever the user kept of an
    earlier pass (the dict, a tensor, a view, a numpy array) stays as it was."""
    model = tiny_net().eval()
    xs = [torch.randn(1, 3, 8, 8) for _ in range(6)]
    refs = [reference_maps(model, x) for x in xs]  # before any hook exists
    with FeatureCapture(model) as cap, torch.no_grad():
        model(xs[0])
        model(xs[1])
        model(xs[2])
        assert all(torch.equal(cap.maps[k], refs[2][k][0]) for k in cap.maps)

        held_tensor = cap.maps["stem.0"]
        held_dict = cap.maps
        tensor_copy = held_tensor.clone()
        dict_copy = {k: v.clone() for k, v in held_dict.items()}
        model(xs[3])
        held_view = cap.maps["heads.down"][0]  # shares memory without a Python reference
        held_array = cap.maps["shared"].numpy()  # likewise
        view_copy, array_copy = held_view.clone(), held_array.copy()
        for x in xs[4:]:
            model(x)
        assert torch.equal(held_tensor, tensor_copy)  # never overwritten while the user holds it
        assert all(torch.equal(held_dict[k], dict_copy[k]) for k in dict_copy)
        assert torch.equal(held_view, view_copy)
        assert (held_array == array_copy).all()
        assert all(torch.equal(cap.maps[k], refs[-1][k][0]) for k in cap.maps)


def test_reuse_buffers_contract():
    """Opt-in reuse: each pass copies into the tensors of the pass before the last one. The
    latest maps are always right and stay valid until the next pass; older ones are reused."""
    model = tiny_net().eval()
    xs = [torch.randn(1, 3, 8, 8) for _ in range(6)]
    refs = [reference_maps(model, x) for x in xs]
    modes = [torch.no_grad, torch.inference_mode, torch.enable_grad] * 2
    with FeatureCapture(model, reuse_buffers=True) as cap:
        kept = []
        for x, ref, mode in zip(xs, refs, modes, strict=True):
            with mode():
                model(x)  # inference_mode passes in between never raise
            maps = cap.maps
            kept.append(maps)
            for k, m in maps.items():
                torch.testing.assert_close(m, ref[k][0], rtol=0, atol=0)
                assert not m.is_inference() and not m.requires_grad
        # pass 0's tensors were reused by pass 2 (the documented contract): same storage
        assert kept[2]["stem.0"].data_ptr() == kept[0]["stem.0"].data_ptr()
        assert kept[1]["stem.0"].data_ptr() != kept[2]["stem.0"].data_ptr()
    with FeatureCapture(model) as cap:  # the default never reuses
        model(xs[0])
        first = cap.maps["stem.0"]
        model(xs[1])
        model(xs[2])
        torch.testing.assert_close(first, refs[0]["stem.0"][0], rtol=0, atol=0)


def test_max_calls_keeps_the_first_calls_of_a_head_run_per_level():
    """A detection head runs once per FPN level: max_calls=1 keeps one map per conv."""
    torch.manual_seed(0)
    head = nn.Conv2d(4, 4, 3, padding=1)

    class FPNHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = head

        def forward(self, x):
            return [self.head(nn.functional.avg_pool2d(x, 2**k)) for k in range(4)]

    model = FPNHead()
    x = torch.randn(1, 4, 16, 16)
    with FeatureCapture(model) as every, torch.no_grad():
        model(x)
    assert list(every.maps) == ["head", "head#1", "head#2", "head#3"]  # the default: every call
    with FeatureCapture(model, max_calls=1) as first, torch.no_grad():
        model(x)
    assert list(first.maps) == ["head"]
    torch.testing.assert_close(first.maps["head"], every.maps["head"])
    with FeatureCapture(model, max_calls=2) as two, torch.no_grad():
        model(x)
    assert list(two.maps) == ["head", "head#1"]
