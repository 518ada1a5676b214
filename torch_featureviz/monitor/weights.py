"""What a sampled step reads from the model itself, ahead of its forward: the watched convs'
filters and the probe pass (:class:`WeightReader`), and whether the model changed after they
were read (:class:`UnchangedCheck`)."""

from __future__ import annotations

import itertools

import torch
from torch import nn

from torch_featureviz._validation import ModelInput
from torch_featureviz.capture.compat import is_compiling
from torch_featureviz.capture.hooks import FeatureCapture
from torch_featureviz.capture.passes import PassObserver, PassRecord
from torch_featureviz.capture.pooling import pool_map
from torch_featureviz.monitor.plan import LogPlan
from torch_featureviz.monitor.sharding import Sharding, gather_weights
from torch_featureviz.monitor.sink import CaptureItem, start_host_copies

__all__ = ["UnchangedCheck", "WeightReader", "tensor_versions"]


def tensor_versions(root: nn.Module) -> tuple[int, ...]:
    """The in-place version counters of every parameter and buffer (-1 where a tensor has
    none): any write to the model's tensors (an optimizer step, ``load_state_dict``, a BatchNorm
    update) changes them.

    Example::

        >>> conv = nn.Conv2d(1, 1, 1)
        >>> before = tensor_versions(conv)
        >>> with torch.no_grad():
        ...     _ = conv.weight.mul_(2)
        >>> tensor_versions(conv) != before
        True
    """
    out = []
    for t in itertools.chain(root.parameters(), root.buffers()):
        try:
            out.append(int(t._version))
        except RuntimeError:  # an inference tensor
            out.append(-1)
    return tuple(out)


class UnchangedCheck(PassObserver):
    """Whether the model's tensors changed between :meth:`mark` and the start of the next
    training pass. The monitor marks when it has read a sampled step's filters and run its
    probe pass ahead of that step's forward; a change before that forward (a checkpoint loaded
    after the monitor was made, weights set by hand) means they no longer show the model the
    forward runs with, and the step reads them again at its own ``step()``. Eager, unsharded
    models only (a sharded model's registered tensors are shards; a compiled forward is not
    looked into).

    Example::

        >>> check = UnchangedCheck(nn.Conv2d(1, 1, 1))
        >>> check.mark(); check.start(PassRecord(kind="root", index=0)); check.changed
        False
    """

    observes_probes = False

    def __init__(self, root: nn.Module) -> None:
        self.root = root
        self.changed = False
        self._marked: tuple[int, ...] | None = None

    def mark(self) -> None:
        """The weights were read now."""
        self._marked = tensor_versions(self.root)
        self.changed = False

    def start(self, record: PassRecord) -> None:
        marked, self._marked = self._marked, None  # the first pass after the mark decides
        if marked is not None and not is_compiling() and tensor_versions(self.root) != marked:
            self.changed = True


class WeightReader:
    """Read the watched convs' filters (gathered under sharding), then run the probe pass:
    always in this order, so on a sharded model the ranks' collectives match.

    Args:
        capture: the capture whose layers are read and whose probe pass runs (on every rank
            of a sharded model, including those that do not write).
        plan: the log plan (which filters each grid shows, how the probe image is pooled).
        probe: the checked probe input, or ``None``.
        reads_weights: whether filters are read at all.
        sharding: how the model is sharded, or ``None``.
        sample: the probe sample shown as ``input/probe``.
    """

    def __init__(
        self,
        capture: FeatureCapture,
        plan: LogPlan,
        *,
        probe: ModelInput | None,
        reads_weights: bool,
        sharding: Sharding | None,
        sample: int,
    ) -> None:
        self.capture = capture
        self.plan = plan
        self.probe = probe
        self.reads_weights = reads_weights
        self.sharding = sharding
        self.sample = sample
        self._probe_logged = False

    def read(self, *, keep: bool) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``(filters, probe maps)``, empty when not ``keep`` (then this rank only takes part)."""
        cap = self.capture
        filters: dict[str, torch.Tensor] = {}
        if self.reads_weights:
            weights = gather_weights(cap.root, cap.layers, keep=keep, sharding=self.sharding)
            for name, w in weights.items():
                filters[name] = self.plan.trim_filters(name, cap.layers[name], w)
        maps: dict[str, torch.Tensor] = {}
        if self.probe is not None:
            maps = dict(cap.probe(self.probe, keep=keep))
        return filters, maps

    def view(self, step: int, *, keep: bool) -> CaptureItem | None:
        """The filters and probe maps of ``step`` as a :class:`CaptureItem` with its host
        copies started (``None`` when not ``keep``)."""
        filters, probe_maps = self.read(keep=keep)
        if not keep:
            return None
        view = CaptureItem(step=step, walltime=0.0, filters=filters)
        if self.probe is not None:
            view.probe_maps = probe_maps
            if not self._probe_logged:
                self._probe_logged = True
                first = self.probe if isinstance(self.probe, torch.Tensor) else None
                if first is not None and first.dim() >= 3:
                    image = first[self.sample].detach().float()
                    if image.dim() == 3:
                        image = pool_map(image, self.plan.probe_image_factor(tuple(image.shape)))
                    view.probe_image = image
        start_host_copies(view)
        return view
