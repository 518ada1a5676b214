"""Activation statistics: measured after the activation, dead channels where they die."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
import torchvision
from torch import nn

from tests.support.helpers import read_events
from torch_featureviz import FeatureCapture, FeatureMonitor
from torch_featureviz.monitor.statistics import (
    ActivationStatistics,
    DeadChannelWindow,
    finish_stats,
)


class BiasKilled(nn.Module):
    """conv -> BN -> ReLU twice; the first BN's bias drives half its channels below zero, so
    they are dead after the ReLU although the conv output itself is perfectly healthy."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(8, 2)
        with torch.no_grad():
            self.bn1.bias[:4] = -10.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        return self.head(x.mean(dim=(2, 3)))


def test_dead_half_is_flagged_after_the_activation(tmp_path: Path) -> None:
    model = BiasKilled()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with FeatureMonitor(model, tmp_path, every=1, on_full="block", dead_window=3) as monitor:
        for _ in range(3):
            model(torch.randn(4, 3, 8, 8)).square().mean().backward()
            opt.step()
            monitor.step()
        after = "ReLU after the conv"
        assert monitor.stats.source == {"conv1": after, "conv2": after}
    ea = read_events(tmp_path)
    dead1 = ea.Scalars("activations/conv1/dead_channels")[-1].value
    dead2 = ea.Scalars("activations/conv2/dead_channels")[-1].value
    assert dead1 >= 0.4
    assert dead2 <= 0.1
    # The raw conv output would have said nothing was dead:
    with FeatureMonitor(
        model, tmp_path / "raw", every=1, on_full="block", stats_after_activation=False
    ) as raw:
        model(torch.randn(4, 3, 8, 8)).sum().backward()
        raw.step()
    assert read_events(tmp_path / "raw").Scalars("activations/conv1/dead_channels")[0].value == 0


def test_a_conv_whose_activation_a_later_pass_skips_still_gets_statistics() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.act = nn.ReLU()
            self.use_act = True

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return self.act(y) if self.use_act else y

    torch.manual_seed(0)
    model = Branchy().train()
    stats = ActivationStatistics()
    with FeatureCapture(model, record="grad", observers=[stats]):
        model(torch.randn(2, 3, 8, 8))
        assert stats.source == {"conv": "ReLU after the conv"}
        model.use_act = False  # the activation found before is not on this pass's path
        x = torch.randn(2, 3, 8, 8)
        model(x)
    published = stats.published
    assert published is not None and "conv" in published[1]
    assert stats.source == {"conv": "conv output"}
    mean, _, _ = finish_stats(published[1]["conv"])
    with torch.no_grad():
        assert mean == pytest.approx(model.conv(x).mean().item(), rel=1e-5, abs=1e-6)


def test_statistics_equal_the_activation_they_describe() -> None:
    model = BiasKilled().train()
    x = torch.randn(4, 3, 8, 8)
    stats = ActivationStatistics()
    with FeatureCapture(model, record="grad", observers=[stats]):
        model(x)
    published = stats.published
    assert published is not None
    sums = published[1]
    with torch.no_grad():  # the same pass by hand (BN in train mode uses batch statistics)
        ref = BiasKilled().train()
        a1 = torch.relu(ref.bn1(ref.conv1(x)))
        a2 = torch.relu(ref.bn2(ref.conv2(a1)))
    for key, act in (("conv1", a1), ("conv2", a2)):
        mean, std, _ = finish_stats(sums[key])
        assert mean == pytest.approx(act.mean().item(), rel=1e-5, abs=1e-6)
        assert std == pytest.approx(act.std().item(), rel=1e-4)
        torch.testing.assert_close(sums[key].peak, act.amax(dim=(0, 2, 3)))


@pytest.mark.parametrize(
    "conv, shape, channels_last",
    [
        (nn.Conv2d(3, 5, 3, padding=1), (4, 3, 9, 7), False),
        (nn.Conv2d(3, 5, 3, padding=1), (4, 3, 9, 7), True),  # a strided reduction
        (nn.Conv2d(3, 5, 3, padding=1), (3, 9, 7), False),  # an unbatched call
        (nn.Conv1d(3, 5, 3), (4, 3, 11), False),
        (nn.Conv3d(3, 5, 3), (2, 3, 5, 6, 7), False),
        (nn.ConvTranspose2d(3, 5, 3, stride=2), (4, 3, 5, 5), False),
        (nn.Conv2d(3, 5, 1), (4, 3, 1, 1), False),  # (C, 1, 1) outputs (an SE block's)
    ],
)
def test_every_statistic_matches_torch_on_any_layout(
    conv: nn.Module, shape: tuple[int, ...], channels_last: bool
) -> None:
    """Channel maxima (reduced per sample first on contiguous outputs), sums and near-zero
    counts equal torch's own reductions, whatever the conv rank, layout or batching."""
    torch.manual_seed(0)
    model = nn.Sequential(conv)  # no activation: the conv output is described
    x = torch.randn(shape)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    stats = ActivationStatistics(near_zero=0.05)
    with FeatureCapture(model, observers=[stats]):
        out = model(x).detach()
    assert stats.published is not None
    layer = stats.published[1]["0"]
    batched = out.dim() == len(conv.kernel_size) + 2
    assert out.is_contiguous() != channels_last
    dims = (0, *range(2, out.dim())) if batched else tuple(range(1, out.dim()))
    torch.testing.assert_close(layer.peak, out.amax(dim=dims))
    mean, std, near = finish_stats(layer)
    assert mean == pytest.approx(out.mean().item(), rel=1e-4, abs=1e-6)
    assert std == pytest.approx(out.std().item(), rel=1e-4)
    one = out[0] if batched else out
    assert near == pytest.approx((one.abs() <= 0.05).float().mean().item())
    assert (layer.numel, layer.sample_numel) == (out.numel(), one.numel())


def test_shared_relu_and_residual_convs() -> None:
    """torchvision's BasicBlock calls one ReLU twice: after bn1, and after the residual sum."""
    model = torchvision.models.resnet18()
    stats = ActivationStatistics()
    with FeatureCapture(model, observers=[stats]):
        model(torch.randn(2, 3, 32, 32))
    src = stats.source
    assert src["conv1"] == "ReLU after the conv"
    assert src["layer1.0.conv1"] == "ReLU after the conv"
    assert src["layer1.0.conv2"] == "conv output"  # bn2 then the addition, then relu
    assert src["layer2.0.downsample.0"] == "conv output"


def test_timm_norm_act_layers_count_as_the_activation() -> None:
    model = timm.create_model("efficientnet_b0", num_classes=4)
    stats = ActivationStatistics()
    with FeatureCapture(model, observers=[stats]), torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    assert stats.source["conv_stem"] == "SiLU after the conv"  # BatchNormAct2d(act=SiLU)


def test_inplace_activation_straight_after_the_conv() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True), nn.Conv2d(4, 2, 1))
    x = torch.randn(2, 3, 8, 8)
    expected = torch.relu(model[0](x)).detach()
    stats = ActivationStatistics()
    with FeatureCapture(model, observers=[stats]):
        model(x)
    assert stats.published is not None
    torch.testing.assert_close(stats.published[1]["0"].peak, expected.amax(dim=(0, 2, 3)))
    assert stats.source == {"0": "ReLU after the conv", "2": "conv output"}


def test_dead_channel_window() -> None:
    window = DeadChannelWindow(size=2)
    assert window.update("a", torch.tensor([1.0, -1.0])) == 0.5
    assert window.update("a", torch.tensor([-1.0, 1.0])) == 0.0  # each active once in window
    assert window.update("a", torch.tensor([-1.0, -1.0])) == 0.5  # the first capture left


@pytest.mark.slow
def test_custom_scalars_layout_and_model_summaries_read_back_through_tensorboard(
    tmp_path: Path,
) -> None:
    from tests.support.tensorboard_server import start_tensorboard

    torch.manual_seed(0)
    model = torchvision.models.resnet50()
    run = tmp_path / "logs" / "resnet50"
    with FeatureMonitor(model, run, every=1, on_full="block") as monitor:
        model(torch.randn(2, 3, 64, 64)).sum().backward()
        monitor.step()
    assert monitor.charts <= 25  # resnet50's 212 per-layer scalars in 21 charts
    ea = read_events(run)
    scalars = set(ea.Tags()["scalars"])
    assert {
        "summary/dead_channels_mean",
        "summary/dead_channels_max",
        "summary/layers_with_dead_channels",
    } <= scalars
    assert "activations/layer1.0.conv1/dead_channels" in scalars  # per-layer scalars stay
    server = start_tensorboard(tmp_path / "logs", tmp_path / "tb.log", {"resnet50"})
    try:
        layout = server.get_json("/data/plugin/custom_scalars/layout")
    finally:
        server.stop()
    titles = [c["title"] for c in layout["category"]]
    assert titles == ["featureviz summary", "conv1", "layer1", "layer2", "layer3", "layer4"]
    charts = [chart for c in layout["category"] for chart in c["chart"]]
    assert len(charts) == monitor.charts == 21
    layer1_mean = next(ch for ch in charts if ch["title"] == "layer1 mean")
    patterns = layer1_mean["multiline"]["tag"]
    assert len(patterns) == 10
    import re

    assert all(any(re.fullmatch(p, t) or re.match(p, t) for t in scalars) for p in patterns)
