"""The monitor's parts on their own: the step cycle with a fake schedule, the pure log plan,
the renamed options and their old spellings, and an optional part registered in PARTS."""

from __future__ import annotations

import dataclasses
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from tests.support.helpers import read_events, reference_maps, tiny_net
from torch_featureviz.capture import FeatureCapture, PassRecord, find_conv_layers
from torch_featureviz.monitor import FeatureMonitor, MonitorConfig, assembly
from torch_featureviz.monitor.cycle import StepCycle
from torch_featureviz.monitor.parts import MonitorPart, build_parts
from torch_featureviz.monitor.plan import plan_log
from torch_featureviz.monitor.weights import WeightReader


class FakeSchedule:
    """Every second step, plus steps listed in ``late`` once time has 'passed'; counts asks."""

    def __init__(self, every_seconds: float | None = None) -> None:
        self.every_seconds = every_seconds
        self.asked: Counter[int] = Counter()
        self.late: set[int] = set()
        self.marks = 0

    def due(self, step: int) -> bool:
        self.asked[step] += 1
        return step % 2 == 0 or step in self.late

    def mark(self) -> None:
        self.marks += 1


class FakeWriter:
    """What the cycle needs of a BackgroundWriter: it keeps what is submitted."""

    error = None
    dropped = 0

    def __init__(self) -> None:
        self.items: list[Any] = []

    def submit(self, item: Any, *, label: str = "") -> bool:
        self.items.append(item)
        return True


def _cycle(schedule: FakeSchedule, probe: torch.Tensor | None = None) -> tuple[
    StepCycle, FeatureCapture, FakeWriter, nn.Module
]:
    model = tiny_net()
    cfg = MonitorConfig(max_channels=None)
    capture = FeatureCapture(model, max_channels=None, record="grad")
    plan = plan_log(capture.layers, cfg, probe=probe is not None, reads_weights=True)
    reader = WeightReader(
        capture, plan, probe=probe, reads_weights=True, sharding=None, sample=0
    )
    writer = FakeWriter()
    cycle = StepCycle(
        capture, reader, schedule, cfg, background=writer, model=model  # type: ignore[arg-type]
    )
    capture.enabled = False
    capture.attach()
    return cycle, capture, writer, model


def test_step_cycle_asks_the_schedule_once_per_step_and_captures_sampled_steps() -> None:
    schedule = FakeSchedule()
    cycle, capture, writer, model = _cycle(schedule)
    cycle.announce(0)
    batches = []
    for step in range(6):
        x = torch.randn(2, 3, 8, 8)
        batches.append(x)
        model(x).sum().backward()
        cycle.step(step, step + 1)
    assert schedule.asked == Counter({s: 1 for s in range(7)})  # arm and prepare share one
    assert [item.step for item in writer.items] == [0, 2, 4] and schedule.marks == 3
    for item in writer.items:  # the sampled forward's own maps, and its filters
        ref = reference_maps(model, batches[item.step])
        assert set(item.hook_maps) == set(ref) and set(item.filters) == set(capture.layers)
    assert cycle.state.announced == (6, True) and cycle.state.prepared_step == 6
    capture.remove()


def test_step_cycle_asks_again_at_the_step_only_when_time_could_have_made_it_due() -> None:
    schedule = FakeSchedule(every_seconds=60.0)
    cycle, capture, writer, model = _cycle(schedule)
    cycle.announce(1)  # not due when announced
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    schedule.late.add(1)  # ... but its interval has passed by its step()
    assert cycle.step(1, 2)
    assert schedule.asked[1] == 2  # once announced, once at the step (time-based only)
    (item,) = writer.items
    assert item.step == 1 and item.hook_maps == {}  # the hooks were not armed for it
    assert set(item.filters) == set(capture.layers)  # filters read at its own step()
    capture.remove()


def test_step_cycle_without_a_writer_does_nothing() -> None:
    schedule = FakeSchedule()
    cycle = StepCycle(None, None, schedule, MonitorConfig())  # type: ignore[arg-type]
    assert cycle.step(0, 1) is False and schedule.asked == Counter()


def test_plan_log_is_pure() -> None:
    model = tiny_net()
    layers = find_conv_layers(model)
    weights = {n: m.weight.clone() for n, m in layers.items()}
    cfg = MonitorConfig(log_budget=20_000, max_filters=64)
    first = plan_log(layers, cfg, probe=True, reads_weights=True)
    second = plan_log(layers, cfg, probe=True, reads_weights=True)
    assert first.filter_shown == second.filter_shown and first.filter_tile == second.filter_tile
    assert first.map_cap is not second.map_cap  # a fresh budget each time
    assert first.map_cap.budget == second.map_cap.budget
    assert cfg == MonitorConfig(log_budget=20_000, max_filters=64)  # the inputs are untouched
    assert all(torch.equal(layers[n].weight, w) for n, w in weights.items())
    # the budget is shared: a probe view halves each view's map pixels
    alone = plan_log(layers, cfg, probe=False, reads_weights=True)
    assert alone.map_cap.budget is not None and first.map_cap.budget is not None
    assert first.map_cap.budget == alone.map_cap.budget // 2
    unbounded = plan_log(layers, dataclasses.replace(cfg, log_budget=None), probe=True,
                         reads_weights=True)
    assert unbounded.map_cap.budget is None and unbounded.filter_tile == cfg.filter_tile


def test_log_plan_trims_filters_as_planned() -> None:
    conv = nn.Conv2d(3, 10, 3)
    cfg = MonitorConfig(max_filters=4)
    plan = plan_log({"c": conv}, cfg, probe=False, reads_weights=True)
    assert plan.trim_filters("c", conv, conv.weight).shape[0] == 4
    plan.filter_shown["c"] = (2, 1)
    assert tuple(plan.trim_filters("c", conv, conv.weight).shape) == (2, 1, 3, 3)


def test_old_record_spelling_warns_and_still_works(tmp_path: Path) -> None:
    with pytest.warns(FutureWarning, match="record= option is now spelled passes="):
        cfg = MonitorConfig(record="all")  # type: ignore[call-arg]
    assert cfg.passes == "all" and "record" not in cfg.as_dict()
    with pytest.warns(FutureWarning, match="passes="):
        assert cfg.record == "all"  # type: ignore[attr-defined]
    with pytest.warns(FutureWarning, match="passes="):
        assert MonitorConfig.from_options({"record": "all"}).passes == "all"
    model = tiny_net()
    with pytest.warns(FutureWarning, match="passes="):
        monitor = FeatureMonitor(model, tmp_path, every=1, on_full="block", record="all")
    with monitor, torch.no_grad():  # "all" captures a forward without gradients
        x = torch.randn(2, 3, 8, 8)
        model(x)
        monitor.step()
    assert monitor.config.passes == "all" and monitor.captured == 1
    assert len(read_events(tmp_path).Images("feature_maps/hook/stem.0")) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        MonitorConfig(passes="grad")  # the new spelling warns nothing


class ConvCount(MonitorPart):
    """A planted part: counts the conv calls of each training pass and logs the count."""

    result_key = "conv_count"
    observes_probes = False

    def start(self, record: PassRecord) -> None:
        self._n = 0

    def output(self, record: PassRecord, key: str, module: nn.Module, output: torch.Tensor) -> None:
        self._n += 1

    def end(self, record: PassRecord, complete: bool) -> None:
        if complete:
            record.results[self.result_key] = torch.tensor(float(self._n))

    def log(self, writer: Any, step: int, result: Any) -> None:
        writer.log_scalars({writer.tag("featureviz", "conv_count"): float(result)}, step)


def test_a_registered_part_contributes_to_each_capture(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(assembly, "PARTS", [lambda cfg, root: ConvCount(), lambda c, r: None])
    model = tiny_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with FeatureMonitor(model, tmp_path / "b", every=2, on_full="block") as monitor:
        assert [type(p) for p in monitor.parts] == [ConvCount]
        for _ in range(3):
            model(torch.randn(2, 3, 8, 8)).sum().backward()
            opt.step()
            opt.zero_grad()
            monitor.step()
    events = read_events(tmp_path / "b").Scalars("featureviz/conv_count")
    # tiny_net runs stem, two blocks, the down conv and the shared conv twice: 6 conv calls
    assert [(e.step, e.value) for e in events] == [(0, 6.0), (2, 6.0)]


def test_build_parts_refuses_what_is_not_a_part() -> None:
    root = nn.Conv2d(1, 1, 1)
    with pytest.raises(TypeError, match="must return a MonitorPart"):
        build_parts([lambda cfg, r: object()], MonitorConfig(), root)  # type: ignore[list-item,return-value]
    with pytest.raises(ValueError, match="share the result_key"):
        build_parts([lambda c, r: ConvCount(), lambda c, r: ConvCount()], MonitorConfig(), root)
