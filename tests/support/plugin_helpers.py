"""Logs and a headless browser for the featureviz tab's tests and benchmark.

- :func:`write_monitor_logs`: a tiny model trained a few steps under a real ``FeatureMonitor``
  (filters, training-batch maps, probe maps, statistics) plus the layer-order summary;
- :func:`write_synthetic_logs`: grids written straight with ``TensorBoardWriter`` (fast; any
  number of layers and steps; optional tag prefix);
- :class:`Chromium`: the system Chromium driven over the DevTools protocol through a pipe
  (``--remote-debugging-pipe``), standard library only, stopped with its process group.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from torch_featureviz import FeatureMonitor, TensorBoardWriter
from torch_featureviz.log.metadata import layers_summary
from torch_featureviz.naming import layer_tag

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-quic", "--no-proxy-server", "--hide-scrollbars", "--force-device-scale-factor=1",
]


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


def synthetic_layers(n: int) -> list[str]:
    """``n`` ResNet-50-like layer names (conv1, then layer<s>.<b>.conv<k> and downsamples)."""
    names = ["conv1"]
    blocks = [3, 4, 6, 3]
    while len(names) < n:
        for stage, count in enumerate(blocks, start=1):
            for block in range(count):
                for k in (1, 2, 3):
                    names.append(f"layer{stage}.{block}.conv{k}")
                if block == 0:
                    names.append(f"layer{stage}.{block}.downsample.0")
        if len(names) < n:
            blocks = [b * 2 for b in blocks]
    return names[:n]


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


# ------------------------------------------------------------------------------------- browser
def chromium_executable() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _high(fd: int) -> int:
    import fcntl

    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


class Chromium:
    """Headless Chromium over the DevTools protocol (a pipe on fds 3 and 4), one page."""

    def __init__(self, profile: Path, *, window: tuple[int, int] = (1400, 1000)) -> None:
        exe = chromium_executable()
        if exe is None:
            raise RuntimeError("headless Chromium is not installed: apt-get install -y chromium")
        profile.mkdir(parents=True, exist_ok=True)
        # Pipe ends above fd 10, so moving them onto fds 3 and 4 in the child cannot collide.
        to_child_r, self._to_child, self._from_child, from_child_w = (
            _high(fd) for fd in (*os.pipe(), *os.pipe())
        )
        self._log = open(profile.parent / "chromium.log", "wb")  # noqa: SIM115
        # The child reads commands on fd 3 and writes replies on fd 4.
        self.proc = subprocess.Popen(
            [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
             f"--window-size={window[0]},{window[1]}", "--remote-debugging-pipe", "about:blank"],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
            pass_fds=(3, 4), preexec_fn=lambda: (os.dup2(to_child_r, 3), os.dup2(from_child_w, 4)),
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self._next = 0
        self._buffer = b""
        self.events: list[dict[str, Any]] = []
        self.session = ""
        targets = self.call("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        self.session = self.call("Target.attachToTarget", targetId=page["targetId"],
                                 flatten=True, _session=False)["sessionId"]
        self.call("Page.enable")
        self.call("Runtime.enable")
        self.call("Network.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=window[0], height=window[1],
                  deviceScaleFactor=1, mobile=False)

    def _read_message(self, timeout: float) -> dict[str, Any]:
        import select

        deadline = time.monotonic() + timeout
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_child], [], [], left)[0]:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self._from_child, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)  # type: ignore[no-any-return]

    def call(self, method: str, _session: bool = True, _timeout: float = 60, **params: Any) -> Any:
        self._next += 1
        message: dict[str, Any] = {"id": self._next, "method": method, "params": params}
        if _session and self.session:
            message["sessionId"] = self.session
        os.write(self._to_child, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read_message(_timeout)
            if reply.get("id") == self._next:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def evaluate(self, expression: str, timeout: float = 60) -> Any:
        """Evaluate JavaScript in the page (promises awaited) and return its JSON value."""
        result = self.call("Runtime.evaluate", expression=expression, awaitPromise=True,
                           returnByValue=True, _timeout=timeout)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page error: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30) -> Any:
        """Poll ``expression`` until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"not true within {timeout} s: {expression}")
            time.sleep(0.05)

    def click(self, selector: str, fx: float = 0.5, fy: float = 0.5) -> None:
        """Click like a user: scroll ``selector`` into view and press the mouse at
        ``(fx, fy)`` of its box (fractions of its width and height)."""
        box = self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            " if (!e) return null; e.scrollIntoView({block: 'center'});"
            " const r = e.getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; })()"
        )
        if box is None:
            raise LookupError(f"nothing matches {selector!r}")
        x, y = box[0] + box[2] * fx, box[1] + box[3] * fy
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left",
                      clickCount=1)

    def key(self, key: str, code: int) -> None:
        """Press and release one key (``"ArrowLeft"``, 37) on the focused element."""
        for kind in ("keyDown", "keyUp"):
            self.call("Input.dispatchKeyEvent", type=kind, key=key, code=key,
                      windowsVirtualKeyCode=code)

    def navigate(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def requested_urls(self) -> list[str]:
        """Every URL the page requested so far (from Network.requestWillBeSent events)."""
        self.evaluate("1")  # drain pending events
        return [e["params"]["request"]["url"] for e in self.events
                if e.get("method") == "Network.requestWillBeSent"]

    def screenshot(self, path: Path) -> None:
        import base64

        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(data["data"]))

    def close(self) -> None:
        """Stop the browser and all its helper processes; idempotent."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=30)
        for fd in (self._to_child, self._from_child):
            try:
                os.close(fd)
            except OSError:
                pass
        self._log.close()

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
