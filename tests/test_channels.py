"""Channel choice: the first, the most active or the most changed channels, stable tiles."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from tests.support.helpers import decode, read_events, reference_maps
from torch_featureviz import FeatureMonitor
from torch_featureviz.monitor.channels import ChannelChooser
from torch_featureviz.render.grids import make_feature_grid


def biased_conv(active: list[int]) -> nn.Sequential:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 12, 3, padding=1)
    with torch.no_grad():
        conv.weight.mul_(0.01)
        conv.bias.zero_()
        conv.bias[active] = torch.arange(1.0, len(active) + 1) * 5  # known most active
    return nn.Sequential(conv)


def choosing_monitor(model: nn.Module, log_dir: Path, mode: str, count: int) -> FeatureMonitor:
    """A monitor capturing every step that shows ``count`` channels chosen by ``mode`` and
    never chooses again (no refresh)."""
    return FeatureMonitor(
        model,
        log_dir,
        every=1,
        on_full="block",
        max_channels=count,
        channels=mode,  # type: ignore[arg-type]
        channel_refresh=None,
    )


def test_top_channels_are_chosen_then_kept(tmp_path: Path) -> None:
    model = biased_conv([9, 2, 7])
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    xs = [torch.randn(2, 3, 8, 8) for _ in range(5)]
    with choosing_monitor(model, tmp_path, "top", 3) as monitor:
        for x in xs:
            model(x).sum().backward()
            opt.step()
            monitor.step()
    ea = read_events(tmp_path)
    texts = [e for e in ea.Tensors("featureviz/channels/text_summary")]
    shown = [t.tensor_proto.string_val[0].decode() for t in texts]
    assert shown[0] == "0: 0, 1, 2"  # the first capture: nothing known yet, the first channels
    assert set(shown[1:]) == {"0: 2, 7, 9"}  # then the three most active, in channel order
    events = ea.Images("feature_maps/hook/0")
    for event, x in zip(events[1:], xs[1:], strict=True):
        expected = reference_maps(model, x)["0"][0][[2, 7, 9]]
        assert torch.equal(decode(event), make_feature_grid(expected))


def test_changed_channels_need_two_captures() -> None:
    chooser = ChannelChooser("changed", count=2, refresh=2)
    first = chooser.update({"a": torch.tensor([0.0, 0.0, 0.0, 0.0])}, {})
    assert first == {}  # nothing to compare with yet
    second = chooser.update({"a": torch.tensor([0.0, 5.0, 0.1, 3.0])}, first)
    assert second["a"].tolist() == [1, 3]
    kept = chooser.update({"a": torch.tensor([9.0, 5.0, 0.1, 3.0])}, second)
    assert kept is second  # kept until the refresh
    again = chooser.update({"a": torch.tensor([9.0, 5.0, 7.0, 3.0])}, kept)
    assert again is kept  # refresh=2: two captures after the choice
    refreshed = chooser.update({"a": torch.tensor([9.0, 5.0, 7.0, 30.0])}, again)
    assert refreshed["a"].tolist() == [0, 3] or refreshed["a"].tolist() == [2, 3]


def test_channel_choice_options_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="channels must be one of 'first', 'top', 'changed'"):
        FeatureMonitor(nn.Conv2d(3, 3, 1), tmp_path, channels="best")
    with pytest.raises(ValueError, match="chooses max_channels channels"):
        FeatureMonitor(nn.Conv2d(3, 3, 1), tmp_path, channels="top", max_channels=None)


def test_changed_channels_through_the_monitor_are_kept_while_scrubbing(tmp_path: Path) -> None:
    model = biased_conv([])
    conv = model[0]
    assert isinstance(conv, nn.Conv2d)
    xs = [torch.randn(2, 3, 8, 8) for _ in range(4)]
    # Between captures: channels 4 and 10 change, then channel 0 changes far more, after the
    # choice was made: the tiles keep showing 4 and 10 (no refresh).
    edits = {1: {4: 3.0, 10: 6.0}, 2: {0: 100.0}, 3: {}}
    with choosing_monitor(model, tmp_path, "changed", 2) as monitor:
        for step, x in enumerate(xs):
            with torch.no_grad():
                for channel, shift in edits.get(step, {}).items():
                    conv.bias[channel] += shift
            model(x).sum().backward()
            monitor.step()
    ea = read_events(tmp_path)
    texts = ea.Tensors("featureviz/channels/text_summary")
    shown = {t.step: t.tensor_proto.string_val[0].decode() for t in texts}
    assert shown[0] == "0: 0, 1" and shown.get(1, "0: 0, 1") == "0: 0, 1"
    assert shown[2] == "0: 4, 10" and shown.get(3, "0: 4, 10") == "0: 4, 10"
    events = {e.step: e for e in ea.Images("feature_maps/hook/0")}
    for step in (2, 3):
        # Channels 4 and 10 compute the same since step 1, so the final model gives them.
        expected = reference_maps(model, xs[step])["0"][0][[4, 10]]
        assert torch.equal(decode(events[step]), make_feature_grid(expected))
