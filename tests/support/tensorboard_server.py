"""Start and stop a real TensorBoard server on 127.0.0.1 (server and browser tests share it).

The server is the ``tensorboard`` binary of this environment, started on a free port and stopped
with its whole process group, so nothing is left running.
"""


from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

START_TIMEOUT_S = 90.0
# Talk to the local server directly, whatever *_proxy variables the environment (or an earlier
# test, through urllib's global opener) has set.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
SAMPLES = 15  # more than TensorBoard's default of 10 images per tag


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
        with _DIRECT.open(f"{self.url}{path}{query}", timeout=30) as response:
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


def wait_for(
    server: TensorBoardServer, check: Callable[[], bool], what: str, timeout: float
) -> None:
    """Poll ``check`` until it is true; fail with the server's log after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            pytest.fail(f"tensorboard exited with {server.proc.returncode}:\n{server.log_tail()}")
        try:
            if check():
                return
        except (urllib.error.URLError, ConnectionError, OSError, ValueError) as e:
            last = e
        time.sleep(0.25)
    pytest.fail(
        f"tensorboard: no {what} within {timeout:.0f} s (last: {last!r}):\n{server.log_tail()}"
    )


def start_tensorboard(logdir: Path, log_path: Path, expected_runs: set[str]) -> TensorBoardServer:
    """Start ``tensorboard`` on a free port and wait until it lists ``expected_runs``."""
    for _attempt in range(3):  # a port taken between free_port() and the bind: try another
        port = free_port()
        log = open(log_path, "wb")  # noqa: SIM115 - closed with the process below
        proc = subprocess.Popen(
            [*tensorboard_command(), "--logdir", str(logdir), "--host", "127.0.0.1",
             "--port", str(port), "--samples_per_plugin", "images=100", "--load_fast", "false",
             "--reload_interval", "1"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        server = TensorBoardServer(proc, port, log_path)

        def runs_listed(server: TensorBoardServer = server) -> bool:
            return set(server.get_json("/data/runs")) >= expected_runs

        try:
            wait_for(server, runs_listed, f"runs {sorted(expected_runs)} listed", START_TIMEOUT_S)
            return server
        except BaseException:
            server.stop()
            if "address already in use" not in server.log_tail().lower():
                raise
    pytest.fail("tensorboard could not bind a free port three times")


def marker_image() -> torch.Tensor:
    """A picture no TensorBoard page contains by itself: pure magenta left, pure cyan right."""
    image = torch.zeros(3, 96, 192)
    image[0, :, :96] = 1.0
    image[2, :, :96] = 1.0
    image[1, :, 96:] = 1.0
    image[2, :, 96:] = 1.0
    return image


def blob_key_tag(query: str) -> tuple[str, str, int]:
    """(run, tag, step) from an ``individualImage`` query's ``blob_key``."""
    key = urllib.parse.parse_qs(query)["blob_key"][0]
    fields = json.loads(base64.urlsafe_b64decode(key + "=" * (-len(key) % 4)))
    return fields[2], fields[3], int(fields[4])


