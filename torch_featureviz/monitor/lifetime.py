"""How a monitor's life begins and ends, apart from its work: one open monitor per model (the
attached registry), a warning when two share a log directory's tags, the closing finaliser,
and the optional SIGTERM handler."""

from __future__ import annotations

import os
import signal
import warnings
import weakref
from typing import Any, Protocol

import torch.utils.data
from torch import nn

from torch_featureviz.capture.hooks import FeatureCapture
from torch_featureviz.monitor.background import BackgroundWriter

__all__ = [
    "Closable",
    "shutdown",
    "check_not_in_worker",
    "claim_log_dir",
    "claim_model",
    "install_sigterm_handler",
]


class Closable(Protocol):
    """What the registries hold: something with ``closed`` and ``close()``."""

    closed: bool

    def close(self) -> None: ...


#: The open monitor of each model: a second monitor on the same model closes the first (a
#: notebook cell run twice must not stack hooks; wandb.watch's pitfall).
ATTACHED: weakref.WeakKeyDictionary[nn.Module, weakref.ref[Any]] = weakref.WeakKeyDictionary()
#: Open monitors by (log directory, name), to warn when two would write the same tags.
LOG_DIRS: dict[tuple[str, str | None], weakref.ref[Any]] = {}


def check_not_in_worker() -> None:
    """Refuse to run inside a DataLoader worker, whose writer thread would die with it."""
    if torch.utils.data.get_worker_info() is not None:
        raise RuntimeError(
            "FeatureMonitor cannot be created inside a DataLoader worker: its writer thread "
            "would die with the worker. Create it in the training process."
        )


def claim_log_dir(monitor: Closable, log_dir: str, name: str | None) -> None:
    """Register ``monitor`` as writing ``name``'s tags into ``log_dir``; warn when another open
    monitor already does (their images and charts would mix)."""
    key = (os.path.realpath(log_dir), name)
    other = LOG_DIRS.get(key)
    other_monitor = other() if other is not None else None
    if other_monitor is not None and not other_monitor.closed:
        warnings.warn(
            f"another open FeatureMonitor writes into {log_dir!r} with the same tags "
            f"(name={name!r}); their images and charts will mix. Give each "
            "monitor its own name=..., e.g. FeatureMonitor(G, logdir, name='G').",
            RuntimeWarning,
            stacklevel=4,
        )
    LOG_DIRS[key] = weakref.ref(monitor)


def claim_model(monitor: Closable, root: nn.Module) -> None:
    """Make ``monitor`` the open monitor of ``root``, closing the previous one (with a
    warning) so hooks do not pile up."""
    previous_ref = ATTACHED.get(root)
    previous = previous_ref() if previous_ref is not None else None
    if previous is not None and not previous.closed:
        warnings.warn(
            f"{type(root).__name__} already had an open FeatureMonitor; closing it so "
            "hooks do not pile up. Call close() (or use `with`) when you are done with one.",
            RuntimeWarning,
            stacklevel=4,
        )
        try:
            previous.close()
        except RuntimeError:
            pass  # its writer's error belongs to the old run
    ATTACHED[root] = weakref.ref(monitor)


def install_sigterm_handler(monitor: Closable) -> None:
    """On SIGTERM, close ``monitor`` (flushing its log), then run the previous handler (or
    the default action: the process ends). Holds only a weak reference to ``monitor``."""
    ref = weakref.ref(monitor)
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: Any) -> None:
        target = ref()
        if target is not None:
            try:
                target.close()
            except Exception:  # noqa: BLE001 - the process is ending; keep chaining
                pass
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_sigterm)


def shutdown(capture: FeatureCapture, background: BackgroundWriter, timeout: float) -> None:
    """Remove the hooks and close the writer: what close() and the finaliser both do. It holds
    no reference to the monitor, so a monitor can be collected and still be closed."""
    capture.enabled = False
    capture.remove()
    background.close(timeout)
