"""A headless browser and a TensorBoard server for the tab's benchmark (and the tab's tests).

- :class:`Chromium`: the system Chromium driven over the DevTools protocol through a pipe
  (``--remote-debugging-pipe``), standard library only, stopped with its process group;
- :class:`TensorBoardServer`: a running ``tensorboard`` on 127.0.0.1, stopped with its whole
  process group; :func:`free_port` and :func:`tensorboard_command` to start one;
- :func:`synthetic_layers`: ResNet-50-like layer names for logs of any size.

The tests' support package (``tests/support/``) re-exports these; nothing here imports the tests.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "CHROMIUM_FLAGS",
    "DIRECT",
    "Chromium",
    "TensorBoardServer",
    "chromium_executable",
    "free_port",
    "synthetic_layers",
    "tensorboard_command",
]

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-quic", "--no-proxy-server", "--hide-scrollbars", "--force-device-scale-factor=1",
]



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



# -- TensorBoard -------------------------------------------------------------------------------
# Talk to the local server directly, whatever *_proxy variables the environment (or an earlier
# test, through urllib's global opener) has set.
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class TensorBoardServer:
    """A running ``tensorboard`` process and how to ask it things."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str, **params: Any) -> bytes:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with DIRECT.open(f"{self.url}{path}{query}", timeout=30) as response:
            return response.read()

    def get_json(self, path: str, **params: Any) -> Any:
        return json.loads(self.get(path, **params))

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return "<no log>"

    def stop(self) -> None:
        """Stop the server and anything it started; idempotent."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tensorboard_command() -> list[str]:
    exe = Path(sys.executable).parent / "tensorboard"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "tensorboard.main"]


# -- browser -----------------------------------------------------------------------------------
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

