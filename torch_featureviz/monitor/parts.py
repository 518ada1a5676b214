"""Optional parts of the monitor: a :class:`MonitorPart` observes the capture's passes and
contributes to each capture's log.

How a part travels: the monitor puts it on its capture as a
:class:`~torch_featureviz.PassObserver`; at the end of each complete pass the part stores its
result in ``record.results[part.result_key]``; a sampled step copies that result onto its
:class:`~.sink.CaptureItem` (``item.parts[result_key]``, tensors moved to the host); on the
writer thread the sink calls ``part.log(writer, step, result)``. To add one, write a factory
``(config, root) -> MonitorPart | None`` (``None``: not wanted with these options) and list it in
:data:`torch_featureviz.monitor.feature_monitor.PARTS`, the one place parts are registered.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from torch_featureviz.capture.passes import PassObserver
from torch_featureviz.log.tensorboard import TensorBoardWriter
from torch_featureviz.monitor.config import MonitorConfig

__all__ = ["MonitorPart", "PartFactory", "build_parts"]


class MonitorPart(PassObserver):
    """A pass observer whose per-pass result the monitor logs with each capture.

    Subclass it, set :attr:`~torch_featureviz.PassObserver.result_key`, store the result in
    :meth:`end` (``record.results[self.result_key] = ...``, only when ``complete``) and write it
    in :meth:`log`. Probe passes reach it unless ``observes_probes = False``.

    Example::

        >>> class ConvCount(MonitorPart):
        ...     result_key = "conv_count"
        ...     observes_probes = False
        ...     def start(self, record): self._n = 0
        ...     def output(self, record, key, module, output): self._n += 1
        ...     def end(self, record, complete):
        ...         if complete: record.results[self.result_key] = self._n
        ...     def log(self, writer, step, result):
        ...         writer.log_scalars({writer.tag("featureviz", "convs"): result}, step)
        >>> ConvCount().result_key
        'conv_count'
    """

    def log(self, writer: TensorBoardWriter, step: int, result: Any) -> None:
        """Write ``result`` (this part's result of the capture at ``step``); runs on the
        background writer's thread, so it may encode and write."""


#: ``(config, root module) -> a part, or None when the options do not want it``.
PartFactory = Callable[[MonitorConfig, nn.Module], "MonitorPart | None"]


def build_parts(
    factories: Sequence[PartFactory], config: MonitorConfig, root: nn.Module
) -> list[MonitorPart]:
    """The parts ``factories`` make for ``config`` and ``root``, in order; a result key used
    twice is refused.

    Example::

        >>> build_parts([], MonitorConfig(), nn.Conv2d(1, 1, 1))
        []
    """
    parts: list[MonitorPart] = []
    for factory in factories:
        part = factory(config, root)
        if part is None:
            continue
        if not isinstance(part, MonitorPart) or not part.result_key:
            raise TypeError(
                f"a monitor part factory returned {type(part).__name__}: it must return a "
                "MonitorPart with a result_key, or None."
            )
        if any(p.result_key == part.result_key for p in parts):
            raise ValueError(f"two monitor parts share the result_key {part.result_key!r}.")
        parts.append(part)
    return parts
