"""The pass mechanism's parts: reading a capture changes nothing, settings are fixed at
construction, observers' results come back on the PassRecord, and probe(keep=) with its old
spelling."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from tests.support.helpers import reference_maps, tiny_net
from torch_featureviz.capture import FeatureCapture, PassObserver, PassRecord
from torch_featureviz.capture.pooling import map_pixels
from torch_featureviz.capture.selection import MapSelector
from torch_featureviz.capture.tracker import PassTracker
from torch_featureviz.monitor.statistics import ActivationStatistics


class Ends(PassObserver):
    """Counts the passes that ended, and stores each complete pass's conv count."""

    result_key = "convs"

    def __init__(self) -> None:
        self.ended: list[tuple[str, bool]] = []
        self._n = 0

    def start(self, record: PassRecord) -> None:
        self._n = 0

    def output(self, record: PassRecord, key: str, module: nn.Module, output: torch.Tensor) -> None:
        self._n += 1

    def end(self, record: PassRecord, complete: bool) -> None:
        self.ended.append((record.kind, complete))
        if complete:
            record.results[self.result_key] = self._n


def test_reading_maps_of_an_implicit_pass_changes_nothing() -> None:
    model = tiny_net().eval()
    x = torch.randn(2, 3, 8, 8)
    ends = Ends()
    with FeatureCapture(model, max_channels=None, observers=[ends]) as cap, torch.no_grad():
        model.stem(x)  # a backbone part called directly: an implicit pass opens
        for _ in range(3):  # reading, again and again, publishes nothing
            assert set(cap.maps) == {"stem.0"} and cap.skipped == {}
        assert cap.passes == 0 and cap.last is None and ends.ended == []
        torch.testing.assert_close(cap.maps["stem.0"], reference_maps(model, x)["stem.0"][0])
        model.blocks[0](model.stem(x))  # the opener runs again: the first pass is published
        assert cap.passes == 1 and ends.ended == [("implicit", True)]
        assert cap.last is not None and cap.last.results == {"convs": 1}
        assert set(cap.maps) == {"stem.0", "blocks.0.conv"}  # the new pass, in flight
        assert cap.passes == 1
        assert cap.end_pass()  # publishing belongs to the end of the pass
    assert cap.passes == 2 and set(cap.maps) == {"stem.0", "blocks.0.conv"}
    assert cap.last is not None and cap.last.results == {"convs": 2}


def test_reading_maps_after_a_root_pass_changes_nothing() -> None:
    model = tiny_net().eval()
    with FeatureCapture(model) as cap, torch.no_grad():
        model(torch.randn(1, 3, 8, 8))
        last = cap.last
        for _ in range(2):
            assert cap.maps is cap.maps and cap.skipped == {}
        assert cap.passes == 1 and cap.last is last


def test_settings_are_given_at_construction() -> None:
    model = tiny_net().eval()
    x = torch.randn(2, 3, 8, 8)
    with (
        FeatureCapture(
            model,
            max_channels=2,
            track_channel_means=True,
            pixel_cap=lambda key, shape: map_pixels((2, 4, 4)),
        ) as cap,
        torch.no_grad(),
    ):
        model(x)
    ref = reference_maps(model, x)["stem.0"][0]  # (8, 8, 8)
    assert cap.maps["stem.0"].shape == (2, 4, 4)  # pooled by 2 to fit the cap
    torch.testing.assert_close(
        cap.maps["stem.0"], nn.functional.avg_pool2d(ref[:2], 2), rtol=1e-6, atol=1e-6
    )
    assert cap.last is not None
    torch.testing.assert_close(cap.last.channel_means["stem.0"], ref.flatten(1).mean(1))
    with pytest.raises(TypeError, match="track_channel_means"):
        FeatureCapture(model, track_channel_means="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="pixel_cap must be callable"):
        FeatureCapture(model, pixel_cap=3)  # type: ignore[arg-type]


def test_statistics_come_back_on_the_pass_record() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([1.0, -2.0]).view(2, 1, 1, 1))  # planted channels
    stats = ActivationStatistics()
    x = torch.ones(3, 1, 4, 4)
    with FeatureCapture(model, observers=[stats]) as cap:
        model(x)
    assert cap.last is not None and stats.published is not None
    sums = cap.last.results["stats"]
    assert sums is stats.published[1] and stats.published[0] == cap.last.index
    torch.testing.assert_close(sums["0"].peak, torch.tensor([1.0, -2.0]))


def test_probe_keep_and_its_old_spelling() -> None:
    model = tiny_net()
    x = torch.randn(1, 3, 8, 8)
    cap = FeatureCapture(model)
    assert cap.probe(x, keep=False) == {} and cap.passes == 0
    kept = cap.probe(x)
    assert set(kept) == set(reference_maps(model, x)) and cap.passes == 1
    with pytest.warns(FutureWarning, match=r"probe\(record=\.\.\.\) is deprecated; use keep="):
        assert cap.probe(x, record=False) == {}
    assert cap.passes == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cap.probe(x, keep=True)  # the new spelling warns nothing
    assert cap.passes == 2


def test_map_selector_keeps_the_planted_sample_and_reports_skips() -> None:
    batch = torch.zeros(3, 4, 2, 2)
    batch[1, 2] = 7.0  # planted: sample 1, channel 2
    record = PassRecord(kind="root", index=0)
    sel = MapSelector(sample=1, max_channels=None)
    kept = sel.select(batch, 2, "conv", record)
    assert isinstance(kept, torch.Tensor) and kept[2].eq(7).all() and kept.sum() == 28
    assert sel.select(batch[:1], 2, "conv", record) == ("the batch of 1 has no sample 1", "batch")
    assert sel.select("x", 2, "conv", record) == ("its output is a str, not a tensor", "type")
    assert sel.select(torch.zeros(2, 2), 2, "conv", record)[1] == "shape"


def test_tracker_drops_a_failed_root_pass_and_keeps_the_last() -> None:
    ends = Ends()
    tracker = PassTracker([ends], "all")
    tracker.start_root_pass()
    tracker.end_root_pass(failed=False)
    first = tracker.last
    tracker.start_root_pass()
    tracker.end_root_pass(failed=True)
    assert tracker.last is first and tracker.passes == 1
    assert ends.ended == [("root", True), ("root", False)]
    with torch.no_grad():
        assert PassTracker([], "grad").records() is False
        assert PassTracker([], "all").records() is True
