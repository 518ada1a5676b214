"""Start and stop a real TensorBoard server on 127.0.0.1 (server and browser tests share it).

The server is the ``tensorboard`` binary of this environment, started on a free port and stopped
with its whole process group, so nothing is left running.
"""


from __future__ import annotations

import base64
import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from benchmarks._browser import (  # noqa: F401  (re-exported for the tests)
    DIRECT,
    TensorBoardServer,
    free_port,
    tensorboard_command,
)

START_TIMEOUT_S = 90.0
SAMPLES = 15  # more than TensorBoard's default of 10 images per tag
_DIRECT = DIRECT  # the tests spell it privately


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


