"""Logs and a headless browser for the featureviz tab's tests and benchmark.

- :func:`write_monitor_logs`: a tiny model trained a few steps under a real ``FeatureMonitor``
  (filters, training-batch maps, probe maps, statistics) plus the layer-order summary;
- :func:`write_synthetic_logs`: grids written straight with ``TensorBoardWriter`` (fast; any
  number of layers and steps; optional tag prefix);
- :class:`Chromium` (from ``benchmarks/_browser.py``, shared with the tab's benchmark): the
  system Chromium driven over the DevTools protocol through a pipe, one page.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from benchmarks._browser import (  # noqa: F401  (re-exported for the tab's tests)
    CHROMIUM_FLAGS,
    Chromium,
    chromium_executable,
    synthetic_layers,
)
from torch_featureviz import FeatureMonitor, TensorBoardWriter
from torch_featureviz.log.metadata import layers_summary
from torch_featureviz.naming import layer_tag


class SmallNet(nn.Module):
    """conv1 -> layer1.0.conv1 -> layer1.0.conv2 -> layer2.0.conv1 (names like a ResNet's)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.layer1 = nn.Sequential(nn.Module())
        self.layer1[0].conv1 = nn.Conv2d(8, 8, 3, padding=1)
        self.layer1[0].conv2 = nn.Conv2d(8, 12, 3, padding=1)
        self.layer2 = nn.Sequential(nn.Module())
        self.layer2[0].conv1 = nn.Conv2d(12, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.layer1[0].conv1(x))
        x = torch.relu(self.layer1[0].conv2(x))
        x = torch.relu(self.layer2[0].conv1(x))
        return self.fc(x.mean(dim=(2, 3)))


MODEL_ORDER = ["conv1", "layer1.0.conv1", "layer1.0.conv2", "layer2.0.conv1"]


def write_layer_order(tb: TensorBoardWriter, layers: list[str], prefix: str | None = None) -> None:
    """Log the layer-order summary the lead's writers will log (through the SummaryWriter)."""
    tb.add_summary(layers_summary(layers, prefix), 0)
    tb.flush()


def write_monitor_logs(logdir: Path, *, steps: int = 6, every: int = 2, seed: int = 0,
                       order: bool = True) -> list[int]:
    """Train :class:`SmallNet` ``steps`` steps under ``FeatureMonitor``; return the logged steps."""
    torch.manual_seed(seed)
    model = SmallNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = torch.rand(1, 3, 16, 16)
    with FeatureMonitor(model, logdir, every=every, probe=probe, max_channels=8) as monitor:
        for step in range(steps):
            x = torch.rand(4, 3, 16, 16)
            loss = model(x).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            monitor.step(step)
    if order:
        with TensorBoardWriter(logdir) as tb:
            write_layer_order(tb, [layer_tag(n) for n in MODEL_ORDER])
    else:
        strip_layer_order(logdir)
    return list(range(0, steps, every))


def strip_layer_order(logdir: Path) -> None:
    """Make ``logdir`` look like logs from before the layer-order summary: rewrite its event
    files without the ``featureviz/layers`` records (the monitor writes them since 0.2)."""
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.tensorflow_stub import errors
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import PyRecordReader_New

    from torch_featureviz.render.png import tfrecord

    for path in logdir.iterdir():
        if "tfevents" not in path.name:
            continue
        reader, kept = PyRecordReader_New(str(path)), []
        try:
            while True:
                reader.GetNext()
                event = Event.FromString(reader.record())
                if not any(v.tag.endswith("featureviz/layers") for v in event.summary.value):
                    kept.append(tfrecord(event.SerializeToString()))
        except errors.OutOfRangeError:
            pass
        path.write_bytes(b"".join(kept))


def write_synthetic_logs(logdir: Path, *, layers: int = 4, steps: list[int] | None = None,
                         prefix: str | None = None, channels: int = 8, size: int = 6,
                         views: tuple[str, ...] = ("filters", "hook", "probe"),
                         seed: int = 0) -> list[str]:
    """Grids and statistics straight through ``TensorBoardWriter``; returns the layer names.

    Every grid of step ``s`` has its tiles' brightness depend on ``s``, so two steps differ.
    """
    steps = [0, 10, 20] if steps is None else steps
    names = synthetic_layers(layers)
    head = f"{prefix}/" if prefix else ""
    gen = torch.Generator().manual_seed(seed)
    with TensorBoardWriter(logdir, encode_threads=1) as tb:
        write_layer_order(tb, [layer_tag(n) for n in names], prefix)
        for step in steps:
            maps = {n: torch.rand(channels, size, size, generator=gen) for n in names}
            weights = {n: torch.rand(channels, 3, 3, 3, generator=gen) for n in names}
            if "filters" in views:
                for n, w in weights.items():
                    tb.log_grid(f"{head}filters/{layer_tag(n)}", _grid(w.mean(1)), step)
            for view in ("hook", "probe", "chain"):
                if view in views:
                    for n, m in maps.items():
                        tb.log_grid(f"{head}feature_maps/{view}/{layer_tag(n)}", _grid(m), step)
            scalars: dict[str, float] = {}
            for i, n in enumerate(names):
                t = f"{head}activations/{layer_tag(n)}"
                dead = min(1.0, (i % 5) * 0.2 * step / max(1, max(steps)))
                scalars.update({f"{t}/mean": 0.1 * i + step * 1e-3, f"{t}/std": 1.0,
                                f"{t}/near_zero": 0.5, f"{t}/dead_channels": dead})
            tb.log_scalars(scalars, step)
    return names


def _grid(maps: torch.Tensor) -> torch.Tensor:
    from torch_featureviz.render.grids import make_image_grid

    return make_image_grid(maps.unsqueeze(1))


def write_chosen_channel_logs(logdir: Path, *, steps: int = 5) -> list[int]:
    """A one-conv model whose channels 9, 2 and 7 are the most active, logged every step with
    ``channels="top"``: the first capture shows channels 0-2, later ones 2, 7 and 9."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 12, 3, padding=1)
    with torch.no_grad():
        conv.weight.mul_(0.01)
        conv.bias.zero_()
        conv.bias[[9, 2, 7]] = torch.tensor([5.0, 10.0, 15.0])
    model = nn.Sequential(conv)
    with FeatureMonitor(model, logdir, every=1, on_full="block", max_channels=3,
                        channels="top", channel_refresh=None, probe=torch.rand(1, 3, 8, 8)) as m:
        for _ in range(steps):
            model(torch.randn(2, 3, 8, 8)).sum().backward()
            m.step()
    return list(range(steps))
