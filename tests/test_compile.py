"""torch.compile: hooks registered before compiling, gated by a flag, no recompiles per step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from tests.support.helpers import tiny_net
from torch_featureviz import FeatureMonitor, make_feature_grid


class CountingBackend:
    """A torch.compile backend that runs graphs eagerly and counts compilations.

    Eager execution keeps the test fast on 2 CPU cores (inductor would spend most of a minute
    generating C++); what is under test is Dynamo's tracing of the hooks and its guards, which
    do not depend on the backend.
    """

    def __init__(self) -> None:
        self.compiles = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list) -> object:
        self.compiles += 1
        return gm.forward


def read_images(log_dir: Path, tag: str) -> list:  # type: ignore[type-arg]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(log_dir), size_guidance={"images": 0})
    ea.Reload()
    return ea.Images(tag)


def decode(event) -> torch.Tensor:  # type: ignore[no-untyped-def]
    import io

    import numpy as np
    from PIL import Image

    pixels = np.array(Image.open(io.BytesIO(event.encoded_image_string)))
    return torch.from_numpy(pixels).unsqueeze(0)


@pytest.mark.slow
def test_compiled_model_trains_captures_and_does_not_recompile(tmp_path: Path) -> None:
    torch._dynamo.reset()
    model = tiny_net()
    probe = torch.randn(1, 3, 16, 16)
    # Register first, compile second (hooks added after compiling were ignored: pytorch#117758).
    monitor = FeatureMonitor(model, tmp_path, every=3, on_full="block", probe=probe, max_channels=4)
    backend = CountingBackend()
    compiled = torch.compile(model, backend=backend)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(0)
    expected: dict[int, torch.Tensor] = {}
    compiles_after_warmup = None
    hooked = []
    for step in range(12):
        hooked.append(sum(len(m._forward_hooks) for m in model.modules()))
        x = torch.randn(2, 3, 16, 16, generator=g)
        if step % 3 == 0:
            with torch.no_grad():
                expected[step] = model.stem[0](x)[0, :4].clone()
        loss = compiled(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert monitor.step() == (step % 3 == 0)
        if step == 5:  # both the sampled and the unsampled variant have been seen twice
            compiles_after_warmup = backend.compiles
    monitor.close()

    assert backend.compiles > 0, "the model was not compiled"
    # Traced with the hooks at step 0: they stay registered, switched off, between captures.
    assert min(hooked) > 0 and monitor._capture is not None and monitor._capture.compiled
    # Toggling `enabled` may give one graph per value, never one per step.
    assert compiles_after_warmup is not None and compiles_after_warmup <= 4
    assert backend.compiles == compiles_after_warmup, "recompiled after warm-up"
    events = read_images(tmp_path, "feature_maps/hook/stem.0")
    assert [e.step for e in events] == [0, 3, 6, 9]
    for event in events:
        assert torch.equal(decode(event), make_feature_grid(expected[event.step]))
    assert [e.step for e in read_images(tmp_path, "feature_maps/probe/stem.0")] == [0, 3, 6, 9]


def test_monitor_on_an_already_compiled_model_looks_through_it(tmp_path: Path) -> None:
    torch._dynamo.reset()
    model = tiny_net()
    compiled = torch.compile(model, backend=CountingBackend())
    with FeatureMonitor(compiled, tmp_path, every=1, on_full="block") as monitor:
        assert monitor.root is model
        assert "stem.0" in monitor.layers and not any("_orig_mod" in n for n in monitor.layers)


def test_compile_then_bad_every_still_fails_fast(tmp_path: Path) -> None:
    compiled = torch.compile(nn.Sequential(nn.Conv2d(3, 3, 1)), backend=CountingBackend())
    with pytest.raises(ValueError, match="every must be >= 1"):
        FeatureMonitor(compiled, tmp_path, every=0)


@pytest.mark.slow
@pytest.mark.parametrize("keep_hooks", [False, True])
def test_compiling_after_the_first_steps_warns_or_keeps_its_hooks(
    tmp_path: Path, keep_hooks: bool
) -> None:
    """Hooks are removed between captures on a model seen to run eagerly. Compiled after that,
    its graph is traced without them and Dynamo never sees them again: the monitor says so
    once; with keep_hooks=True the graph is traced with them and every capture is logged."""
    import warnings

    torch._dynamo.reset()
    model = tiny_net()
    monitor = FeatureMonitor(model, tmp_path, every=3, keep_hooks=keep_hooks, on_full="block")
    run: nn.Module = model
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(7):
            if step == 2:  # traced at an unsampled step
                run = torch.compile(model, backend=CountingBackend())
            run(torch.randn(2, 3, 16, 16)).sum().backward()
            monitor.step()
    monitor.close()
    said = [str(w.message) for w in caught if "captured no conv output" in str(w.message)]
    steps = [e.step for e in read_images(tmp_path, "feature_maps/hook/stem.0")]
    if keep_hooks:
        assert said == [] and steps == [0, 3, 6]
    else:
        assert len(said) == 1 and "keep_hooks=True" in said[0] and "step 3" in said[0]
        assert steps == [0]  # nothing wrong is logged: no map at all


def test_is_compiled_sees_wrappers_in_place_and_inner_compiles() -> None:
    from torch_featureviz.capture.discovery import is_compiled

    backend = CountingBackend()
    model = tiny_net()
    assert not is_compiled(model)
    assert is_compiled(torch.compile(model, backend=backend))
    assert is_compiled(nn.DataParallel(torch.compile(model, backend=backend)))
    inner = tiny_net()
    inner.stem = torch.compile(inner.stem, backend=backend)
    assert is_compiled(inner)
    in_place = tiny_net()
    in_place.compile(backend=backend)
    assert is_compiled(in_place)


def test_a_monitor_on_a_compiled_wrapper_keeps_its_hooks(tmp_path: Path) -> None:
    torch._dynamo.reset()
    model = tiny_net()
    compiled = torch.compile(model, backend=CountingBackend())
    with FeatureMonitor(compiled, tmp_path, every=3, on_full="block") as monitor:
        for _ in range(4):
            compiled(torch.randn(2, 3, 16, 16)).sum().backward()
            monitor.step()
            assert sum(len(m._forward_hooks) for m in model.modules()) > 0
        assert monitor.captured == 2
