"""Which channels a feature-map grid shows: the first ones, the most active, or the most changed.

:class:`ChannelChooser` picks, per layer, ``max_channels`` channels from the per-channel means of
the shown sample (recorded in the hook, all channels, on device: no host sync), and keeps the
choice until the next refresh so that a tile means the same channel while a user scrubs. The
choice made at one capture applies from the next one on.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

__all__ = ["ChannelChooser"]


class ChannelChooser:
    """Choose the channels each layer's grid shows.

    Args:
        mode: ``"first"``, ``"top"`` (largest mean activation) or ``"changed"`` (largest change
            of the mean since the capture before).
        count: channels per layer.
        refresh: choose again every ``refresh`` captures (``None``: once).
    """

    def __init__(self, mode: str, count: int | None, refresh: int | None) -> None:
        self.mode = mode
        self.count = count
        self.refresh = refresh
        self._previous: dict[str, torch.Tensor] = {}
        self._since: int | None = None  # captures since the last choice (None: not chosen yet)

    def update(
        self, means: Mapping[str, torch.Tensor], current: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Take one capture's per-channel means; return the channel indices for the next."""
        if self.mode == "first" or self.count is None:
            return current
        due = self._since is None or (self.refresh is not None and self._since >= self.refresh)
        ready = self.mode == "top" or bool(self._previous)
        chosen = current
        if due and ready:
            chosen = {}
            for key, mean in means.items():
                if self.mode == "top":
                    score = mean
                else:
                    before = self._previous.get(key)
                    if before is None or before.shape != mean.shape:
                        continue
                    score = (mean - before).abs()
                k = min(self.count, score.numel())
                chosen[key] = torch.topk(score, k).indices.sort().values
            self._since = 0
        if self._since is not None and chosen is current:
            self._since += 1
        self._previous = dict(means)
        return chosen

    def shown(
        self, index: Mapping[str, torch.Tensor], maps: Mapping[str, torch.Tensor]
    ) -> dict[str, list[int]]:
        """The channel of each tile of ``maps`` (a host copy of the small index tensors)."""
        out: dict[str, list[int]] = {}
        for key, m in maps.items():
            chosen = index.get(key)
            out[key] = chosen.tolist() if chosen is not None else list(range(m.shape[0]))
        return out
