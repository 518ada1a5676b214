"""When the monitor captures: every N steps, and optionally every S seconds."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["CaptureSchedule"]


class CaptureSchedule:
    """Decides which global steps are sampled.

    A step is sampled when ``step % every == 0``, or when ``every_seconds`` have passed since
    the last capture (:meth:`mark`).

    Args:
        every: capture every ``every`` steps.
        every_seconds: also capture when this many seconds passed since the last capture.
        clock: a monotonic clock in seconds; tests pass a fake one.

    Example::

        >>> s = CaptureSchedule(every=10)
        >>> [step for step in range(25) if s.due(step)]
        [0, 10, 20]
    """

    def __init__(
        self,
        every: int,
        every_seconds: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.every = every
        self.every_seconds = every_seconds
        self.clock = clock
        self._last = clock()

    def due(self, step: int) -> bool:
        """Whether ``step`` is a sampled step."""
        if step % self.every == 0:
            return True
        return self.every_seconds is not None and self.clock() - self._last >= self.every_seconds

    def mark(self) -> None:
        """Record that a capture happened now."""
        self._last = self.clock()

    def __repr__(self) -> str:
        return f"CaptureSchedule(every={self.every}, every_seconds={self.every_seconds})"
