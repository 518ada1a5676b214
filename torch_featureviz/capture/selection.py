"""What a hook keeps of one conv output: one sample, some channels, pooled to a pixel cap,
copied (:class:`MapSelector`). The hot path of hook mode: every captured conv call runs it."""

from __future__ import annotations

from collections.abc import Callable

import torch

from torch_featureviz.capture.compat import is_compiling
from torch_featureviz.capture.passes import PassRecord
from torch_featureviz.capture.pooling import pool_factor, pool_map

__all__ = ["MapSelector", "PixelCap", "copy_map"]

#: ``(key, kept map shape) -> the most pixels its grid may have`` (``None``: no limit).
PixelCap = Callable[[str, tuple[int, ...]], "int | None"]


class MapSelector:
    """Select, reduce and copy the kept sample of a conv output; its settings are fixed when it
    is made, except :attr:`channel_index` (the monitor's channel choice, updated per capture).

    Args:
        sample: index in the batch of the sample to keep.
        max_channels: keep the first ``max_channels`` channels; ``None`` keeps all.
        pixel_cap: see :class:`~torch_featureviz.FeatureCapture`.
        track_channel_means: record each kept sample's per-channel means in
            :attr:`PassRecord.channel_means`.
        reuse_buffers: copy into the tensors of the pass before the last one (:meth:`recycle`).

    Example::

        >>> sel = MapSelector(sample=1, max_channels=2)
        >>> record = PassRecord(kind="root", index=0)
        >>> sel.select(torch.ones(2, 3, 4, 4), 2, "conv", record).shape
        torch.Size([2, 4, 4])
        >>> sel.select(torch.ones(1, 3, 4, 4), 2, "conv", record)
        ('the batch of 1 has no sample 1', 'batch')
    """

    def __init__(
        self,
        *,
        sample: int = 0,
        max_channels: int | None = None,
        pixel_cap: PixelCap | None = None,
        track_channel_means: bool = False,
        reuse_buffers: bool = False,
    ) -> None:
        if pixel_cap is not None and not callable(pixel_cap):
            raise TypeError(f"pixel_cap must be callable or None, got {type(pixel_cap).__name__}.")
        self.sample = sample
        self.max_channels = max_channels
        self.pixel_cap = pixel_cap
        self.track_channel_means = track_channel_means
        self.reuse_buffers = reuse_buffers
        #: ``{layer key: channel indices}`` to keep instead of the first ``max_channels``.
        self.channel_index: dict[str, torch.Tensor] = {}
        self._spares: dict[str, torch.Tensor] = {}

    def recycle(self, previous: PassRecord | None) -> None:
        """A new pass was published: with ``reuse_buffers``, the maps of ``previous`` (the pass
        before it) may now be overwritten (the documented contract)."""
        if self.reuse_buffers:
            self._spares = {} if previous is None else dict(previous.maps)

    def select(
        self, output: object, spatial: int, key: str, record: PassRecord
    ) -> torch.Tensor | tuple[str, str]:
        """The kept copy of ``output`` (a conv of ``spatial`` dims), or ``(reason, kind)`` when
        it cannot be kept."""
        # It avoids work that changes nothing (a detach without autograd, a slice that keeps
        # every channel).
        if not isinstance(output, torch.Tensor):
            return f"its output is a {type(output).__name__}, not a tensor", "type"
        out = output.detach() if output.requires_grad else output
        dims = out.dim()
        if dims == spatial + 2:  # batched (N, C, *spatial)
            if self.sample >= out.shape[0]:
                return f"the batch of {out.shape[0]} has no sample {self.sample}", "batch"
            out = out.select(0, self.sample)
        elif dims != spatial + 1:  # an unbatched conv call gives (C, *spatial)
            return f"unexpected output shape {tuple(out.shape)}", "shape"
        if self.track_channel_means:
            record.channel_means[key] = out.detach().float().flatten(1).mean(1)
        chosen = self.channel_index.get(key)
        if chosen is not None and chosen.device == out.device and chosen.numel():
            out = out.index_select(0, chosen)
        elif self.max_channels is not None and out.shape[0] > self.max_channels:
            out = out.narrow(0, 0, self.max_channels)
        factor = 1
        if self.pixel_cap is not None:
            shape = tuple(out.shape)
            factor = pool_factor(shape, self.pixel_cap(key, shape))
        # Always a copy: the conv output may be overwritten in place after the hook returns.
        # Outside inference mode, so the copy is an ordinary tensor users can do anything with.
        if is_compiling():
            return copy_map(out, factor, None)  # buffer reuse is never traced
        spare = self._spares.pop(key, None) if self.reuse_buffers and factor == 1 else None
        if torch.is_inference_mode_enabled():
            with torch.inference_mode(False):
                return copy_map(out, factor, spare)
        return copy_map(out, factor, spare)


def copy_map(out: torch.Tensor, factor: int, spare: torch.Tensor | None = None) -> torch.Tensor:
    """A float32 contiguous copy of ``out``, average-pooled by ``factor``, written into
    ``spare`` when it fits (same shape and device; never an inference tensor).

    Example::

        >>> copy_map(torch.ones(1, 4, 4, dtype=torch.float16), 2).shape
        torch.Size([1, 2, 2])
    """
    if (
        spare is not None
        and spare.shape == out.shape
        and spare.device == out.device
        and not spare.is_inference()
    ):
        return spare.copy_(out)
    if factor > 1:
        return pool_map(out.float(), factor).contiguous()  # pooling makes the copy
    if out.dtype == torch.float32:
        return out.clone(memory_format=torch.contiguous_format)  # cheaper than .to(copy=True)
    return out.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
