"""Dataset examples: the inputs that activate each channel most.

:class:`TopK` is the running top-k per channel that both the offline collector
(:func:`~torch_featureviz.meaning.collect_examples`) and the live monitor feed; :class:`Example` is
one winner and :class:`Examples` the result, ``examples[layer][channel] -> [Example, ...]``, best
first. See docs/examples.md.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from torch_featureviz._validation import check_positive_int

__all__ = ["Example", "Examples", "TopK", "TopKEntry"]

#: What :meth:`Examples.save` writes, so :meth:`Examples.load` can refuse other files.
_FORMAT = "torch_featureviz.examples"
_VERSION = 1

#: Step stored for an entry without one (offline collection).
_NO_STEP = -(2**62)


@dataclass(frozen=True, eq=False)
class Example:
    """One dataset example of a channel: where it fired most in one input.

    Attributes:
        value: the channel's peak activation (spatial max of its map) for this input.
        index: position of the input in the stream (0-based over every sample seen).
        step: the training step it was seen at (``None`` offline).
        location: ``(y, x)`` of the peak in the layer's map.
        box: ``(top, left, bottom, right)`` of the unit's receptive field in input pixels,
            bottom and right exclusive, clipped to the input.
        crop: ``(C, h, w)`` float32 input pixels as the model saw them: the patch inside
            ``box``, or the whole input when the field covers more than about half of it.
        whole: True when ``crop`` is the whole input and ``box`` marks the region in it.

    Example::

        >>> import torch
        >>> ex = Example(2.5, 7, None, (3, 4), (8, 10, 19, 21), torch.zeros(3, 11, 11))
        >>> ex.crop.shape, ex.whole
        (torch.Size([3, 11, 11]), False)
    """

    value: float
    index: int
    step: int | None
    location: tuple[int, int]
    box: tuple[int, int, int, int]
    crop: torch.Tensor
    whole: bool = False

    def patch(self) -> torch.Tensor:
        """The pixels inside :attr:`box` (the crop itself, or the box cut from a whole image)."""
        if not self.whole:
            return self.crop
        top, left, bottom, right = self.box
        return self.crop[:, top:bottom, left:right]

    def __repr__(self) -> str:
        shape = "x".join(str(s) for s in self.crop.shape)
        whole = ", whole" if self.whole else ""
        return (
            f"Example(value={self.value:.4g}, index={self.index}, step={self.step}, "
            f"location={self.location}, box={self.box}, crop={shape}{whole})"
        )


@dataclass(frozen=True)
class TopKEntry:
    """One kept entry of a :class:`TopK`: its value, stream index, step, map location and the
    payload the crop callback returned for it.

    Example::

        >>> TopKEntry(2.0, 5, None, (1, 3), "crop").index
        5
    """

    value: float
    index: int
    step: int | None
    location: tuple[int, int]
    payload: Any


#: ``crop(sample, y, x) -> payload``: called once per new winner, with the winner's position in
#: the batch and its map location; whatever it returns is kept with the entry.
CropFn = Callable[[int, int, int], Any]


class TopK:
    """The best ``k`` entries per channel, over a stream of batches, optionally windowed.

    Each :meth:`update` takes one batch's per-channel spatial maxima ``values`` ``(N, C)`` and
    their map ``locations`` ``(N, C, 2)``. Selection is vectorised on the values' device: a
    ``torch.topk`` over the batch per channel, then a stable merge with the kept ``(C, k)``
    entries (ties keep the older entry first). Only entries that enter the top-k get a
    ``crop`` callback, so candidate crops are never copied for losers. Knowing which entries are
    new takes one host sync per update (a ``(C, k)`` index tensor read), not one per sample.

    With ``window=N``, entries are tagged with their step and :meth:`advance` (called by
    :meth:`update` itself when a step is given) drops those older than the last ``N`` steps.
    The window is approximate in one way: an entry evicted earlier by a better one that has
    since expired does not come back, so right after expiry a channel may hold fewer than ``k``
    entries until new batches refill it.

    Args:
        k: entries kept per channel (>= 1).
        window: keep entries from the last ``window`` steps only; ``None`` keeps everything.

    Example::

        >>> import torch
        >>> top = TopK(2)
        >>> values = torch.tensor([[1.0, 5.0], [3.0, 4.0], [2.0, 6.0]])  # (N=3, C=2)
        >>> locs = torch.zeros(3, 2, 2, dtype=torch.long)
        >>> top.update(values, locs, index=10, crop=lambda n, y, x: f"sample {n}")
        4
        >>> [(e.value, e.index, e.payload) for e in top.entries(0)]
        [(3.0, 11, 'sample 1'), (2.0, 12, 'sample 2')]
    """

    def __init__(self, k: int, *, window: int | None = None) -> None:
        self.k = check_positive_int(k, "k")
        self.window = check_positive_int(window, "window", allow_none=True)
        #: Channels per update (set by the first one).
        self.channels: int | None = None
        #: The latest step seen by :meth:`update` or :meth:`advance`.
        self.step: int | None = None
        self._values = torch.empty(0)
        self._index = torch.empty(0, dtype=torch.long)
        self._step = torch.empty(0, dtype=torch.long)
        self._loc = torch.empty(0, 2, dtype=torch.long)
        self._payload: list[list[Any]] = []

    def __repr__(self) -> str:
        return f"TopK(k={self.k}, window={self.window}, channels={self.channels}, step={self.step})"

    def _init(self, channels: int, device: torch.device) -> None:
        self.channels = channels
        self._values = torch.full((channels, self.k), float("-inf"), device=device)
        self._index = torch.full((channels, self.k), -1, dtype=torch.long, device=device)
        self._step = torch.full((channels, self.k), _NO_STEP, dtype=torch.long, device=device)
        self._loc = torch.zeros((channels, self.k, 2), dtype=torch.long, device=device)
        self._payload = [[None] * self.k for _ in range(channels)]

    def update(
        self,
        values: torch.Tensor,
        locations: torch.Tensor,
        *,
        index: int | torch.Tensor = 0,
        step: int | None = None,
        crop: CropFn | None = None,
    ) -> int:
        """Merge one batch; return how many entries entered the top-k.

        Args:
            values: ``(N, C)`` per-channel peak activations (NaN counts as -inf).
            locations: ``(N, C, 2)`` long ``(y, x)`` of each peak.
            index: the stream position of the batch's first sample, or an ``(N,)`` tensor of
                positions.
            step: the step of this batch (required with a ``window``).
            crop: ``crop(sample, y, x) -> payload`` for each new winner (sample is its position
                in the batch); ``None`` keeps no payload.

        Raises:
            ValueError: shapes that do not match, a channel count that changed, or no ``step``
                with a ``window``.
        """
        if values.dim() != 2:
            raise ValueError(f"values must be (N, C), got shape {tuple(values.shape)}.")
        n, c = values.shape
        if tuple(locations.shape) != (n, c, 2):
            raise ValueError(
                f"locations must be (N, C, 2) = ({n}, {c}, 2), got {tuple(locations.shape)}."
            )
        if self.window is not None and step is None:
            raise ValueError("this TopK has a window, so update() needs the batch's step.")
        if self.channels is None:
            self._init(c, values.device)
        elif c != self.channels:
            raise ValueError(f"values has {c} channels, but earlier batches had {self.channels}.")
        if step is not None:
            self.advance(step)
        if n == 0:
            return 0
        device = self._values.device
        v = torch.nan_to_num(values.detach().to(device, torch.float32), nan=float("-inf"))
        if isinstance(index, torch.Tensor):
            idx = index.to(device, torch.long).reshape(n)
        else:
            idx = torch.arange(index, index + n, device=device)
        kk = min(self.k, n)
        best_v, best_n = v.t().topk(kk, dim=1)  # (C, kk): the batch's best samples per channel
        cand_v = torch.cat([self._values, best_v], 1)
        # A stable sort keeps kept entries ahead of new ones of equal value.
        top_v, pos = cand_v.sort(dim=1, descending=True, stable=True)
        top_v, pos = top_v[:, : self.k], pos[:, : self.k]
        locs = locations.detach().to(device, torch.long)
        best_loc = locs.permute(1, 0, 2).gather(1, best_n.unsqueeze(2).expand(c, kk, 2))
        cand_idx = torch.cat([self._index, idx[best_n]], 1)
        cand_step = torch.cat(
            [self._step, torch.full((c, kk), _NO_STEP if step is None else step, device=device)],
            1,
        )
        cand_loc = torch.cat([self._loc, best_loc], 1)
        self._values = top_v
        self._index = cand_idx.gather(1, pos)
        self._step = cand_step.gather(1, pos)
        self._loc = cand_loc.gather(1, pos.unsqueeze(2).expand(c, self.k, 2))
        return self._rebuild_payloads(pos, best_n, best_loc, crop)

    def _rebuild_payloads(
        self, pos: torch.Tensor, best_n: torch.Tensor, best_loc: torch.Tensor, crop: CropFn | None
    ) -> int:
        k = self.k
        changed = (pos != torch.arange(k, device=pos.device)).any(1)
        rows = changed.nonzero().flatten().tolist()  # the one host sync of an update
        if not rows:
            return 0
        pos_h = pos[rows].tolist()
        n_h = best_n[rows].tolist()
        loc_h = best_loc[rows].tolist()
        valid = torch.isfinite(self._values[rows]).tolist()
        new = 0
        for r, c in enumerate(rows):
            old = self._payload[c]
            row: list[Any] = []
            for j, p in enumerate(pos_h[r]):
                if p < k:
                    row.append(old[p])
                elif not valid[r][j]:
                    row.append(None)
                else:
                    new += 1
                    y, x = loc_h[r][p - k]
                    row.append(None if crop is None else crop(n_h[r][p - k], y, x))
            self._payload[c] = row
        return new

    def advance(self, step: int) -> None:
        """Set the current step; with a window, drop entries from ``step - window`` or older.

        Raises:
            TypeError: ``step`` is not an int.
        """
        if isinstance(step, bool) or not isinstance(step, int):
            raise TypeError(f"step must be an int, got {type(step).__name__}.")
        self.step = step
        if self.window is None or self.channels is None:
            return
        stale = (self._step <= step - self.window) & (self._index >= 0)
        if not bool(stale.any()):
            return
        self._values = self._values.masked_fill(stale, float("-inf"))
        self._index = self._index.masked_fill(stale, -1)
        self._step = self._step.masked_fill(stale, _NO_STEP)
        stale_h = stale.tolist()
        for c, row in enumerate(stale_h):
            for j, gone in enumerate(row):
                if gone:
                    self._payload[c][j] = None
        # Move what is left to the front, best first.
        self._values, pos = self._values.sort(dim=1, descending=True, stable=True)
        self._index = self._index.gather(1, pos)
        self._step = self._step.gather(1, pos)
        self._loc = self._loc.gather(1, pos.unsqueeze(2).expand(-1, -1, 2))
        for c, order in enumerate(pos.tolist()):
            old = self._payload[c]
            self._payload[c] = [old[p] for p in order]

    def entries(self, channel: int) -> list[TopKEntry]:
        """The kept entries of ``channel``, best first (fewer than ``k`` before enough data)."""
        if self.channels is None:
            return []
        values = self._values[channel].tolist()
        index = self._index[channel].tolist()
        steps = self._step[channel].tolist()
        locs = self._loc[channel].tolist()
        return [
            TopKEntry(
                values[j],
                index[j],
                None if steps[j] == _NO_STEP else steps[j],
                (locs[j][0], locs[j][1]),
                self._payload[channel][j],
            )
            for j in range(self.k)
            if index[j] >= 0
        ]


class Examples(Mapping[str, Mapping[int, list[Example]]]):
    """Dataset examples of some layers: ``examples[layer][channel]`` is a list of
    :class:`Example`, best first, at most :attr:`k` long.

    Args:
        layers: ``{layer: {channel: [Example, ...]}}``.
        k: the number of examples asked for per channel.
        step: the training step the examples describe (``None`` offline).

    Example::

        >>> import torch
        >>> ex = Example(1.0, 0, None, (0, 0), (0, 0, 3, 3), torch.zeros(3, 3, 3))
        >>> examples = Examples({"conv1": {0: [ex]}}, k=9)
        >>> examples
        Examples(1 layer, 1 channel, k=9, step=None)
        >>> examples["conv1"][0][0].index
        0
    """

    def __init__(
        self,
        layers: Mapping[str, Mapping[int, Sequence[Example]]],
        *,
        k: int,
        step: int | None = None,
    ) -> None:
        self.k = check_positive_int(k, "k")
        self.step = step
        self._layers: dict[str, dict[int, list[Example]]] = {
            str(name): {int(c): list(exs) for c, exs in channels.items()}
            for name, channels in layers.items()
        }

    @property
    def layers(self) -> list[str]:
        """The layer names, in collection order."""
        return list(self._layers)

    def __getitem__(self, layer: str) -> dict[int, list[Example]]:
        try:
            return self._layers[layer]
        except KeyError:
            raise KeyError(
                f"no examples for layer {layer!r}; layers with examples: {self.layers}"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._layers)

    def __len__(self) -> int:
        return len(self._layers)

    def __repr__(self) -> str:
        n = len(self._layers)
        c = sum(len(ch) for ch in self._layers.values())
        return (
            f"Examples({n} layer{'s' * (n != 1)}, {c} channel{'s' * (c != 1)}, k={self.k}, "
            f"step={self.step})"
        )

    # -- files ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain containers and tensors only (what :meth:`save` writes). Crops shared between
        examples (one whole image for several channels) stay one tensor."""
        return {
            "format": _FORMAT,
            "version": _VERSION,
            "k": self.k,
            "step": self.step,
            "layers": {
                name: {
                    c: [
                        {
                            "value": float(e.value),
                            "index": int(e.index),
                            "step": e.step,
                            "location": list(e.location),
                            "box": list(e.box),
                            "crop": e.crop,
                            "whole": bool(e.whole),
                        }
                        for e in exs
                    ]
                    for c, exs in channels.items()
                }
                for name, channels in self._layers.items()
            },
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the examples with ``torch.save`` as plain containers (loadable with
        ``weights_only=True``)."""
        torch.save(self.to_dict(), str(path))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Examples:
        """Read a file written by :meth:`save`, with ``torch.load(weights_only=True)`` (no
        pickled code runs).

        Raises:
            ValueError: the file is missing, not a torch file, or not examples.
        """
        p = Path(path)
        if not p.is_file():
            raise ValueError(f"examples file not found (or not a file): {str(p)!r}.")
        try:
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
        except Exception as e:  # a corrupt file can fail the unpickler in any way
            raise ValueError(
                f"cannot read examples from {str(p)!r} with weights_only=True ({e}); "
                "write it with Examples.save."
            ) from e
        return cls.from_dict(obj, source=str(p))

    @classmethod
    def from_dict(cls, obj: Any, *, source: str = "the dict") -> Examples:
        """The inverse of :meth:`to_dict`.

        Raises:
            ValueError: ``obj`` is not what :meth:`to_dict` returns.
        """
        if not isinstance(obj, dict) or obj.get("format") != _FORMAT:
            raise ValueError(f"{source} does not hold examples written by Examples.save.")
        if obj.get("version") != _VERSION:
            raise ValueError(f"{source} holds examples of version {obj.get('version')!r}, "
                             f"this package reads version {_VERSION}.")
        try:
            layers = {
                name: {
                    int(c): [
                        Example(
                            float(d["value"]),
                            int(d["index"]),
                            None if d["step"] is None else int(d["step"]),
                            (int(d["location"][0]), int(d["location"][1])),
                            tuple(int(b) for b in d["box"]),  # type: ignore[arg-type]
                            d["crop"],
                            bool(d["whole"]),
                        )
                        for d in exs
                    ]
                    for c, exs in channels.items()
                }
                for name, channels in obj["layers"].items()
            }
            return cls(layers, k=int(obj["k"]), step=obj["step"])
        except (KeyError, TypeError, IndexError, AttributeError) as e:
            raise ValueError(f"{source} holds malformed examples ({e!r}).") from e
