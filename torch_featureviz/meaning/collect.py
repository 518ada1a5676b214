"""Offline dataset examples: one probe forward per batch, a spatial max per channel in the
package's hooks, a running top-k, and crops copied only for the winners."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from torch_featureviz._validation import (
    check_float,
    check_image_batch,
    check_module,
    check_positive_int,
    match_model,
)
from torch_featureviz.capture import (
    FeatureCapture,
    PassObserver,
    PassRecord,
    find_conv_layers,
    unwrap_model,
)
from torch_featureviz.meaning.examples import Example, Examples, TopK
from torch_featureviz.meaning.receptive import ReceptiveField, receptive_fields
from torch_featureviz.naming import split_call_key

__all__ = ["ChannelPeaks", "collect_examples", "crop_example", "cut"]


class ChannelPeaks(PassObserver):
    """A :class:`~torch_featureviz.capture.PassObserver` that keeps, per conv call of a pass,
    each sample's per-channel spatial max and its location: ``peaks[key] = (values (N, C),
    locations (N, C, 2))``, on the output's device, with no host sync.

    Args:
        max_channels: reduce only the first ``max_channels`` channels (``None``: all).

    Example::

        >>> import torch
        >>> from torch import nn
        >>> from torch_featureviz.capture import FeatureCapture
        >>> net, peaks = nn.Conv2d(3, 2, 3), ChannelPeaks()
        >>> with FeatureCapture(net, observers=[peaks]):
        ...     _ = net(torch.rand(4, 3, 8, 8))
        >>> [tuple(t.shape) for t in peaks.peaks[""]]
        [(4, 2), (4, 2, 2)]
    """

    def __init__(self, max_channels: int | None = None) -> None:
        self.max_channels = max_channels
        self.peaks: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def start(self, record: PassRecord) -> None:
        self.peaks = {}

    def output(self, record: PassRecord, key: str, module: nn.Module, output: torch.Tensor) -> None:
        if output.dim() != 4:
            return
        out = output.detach()
        if self.max_channels is not None and out.shape[1] > self.max_channels:
            out = out.narrow(1, 0, self.max_channels)
        width = out.shape[3]
        values, flat = out.flatten(2).max(2)  # (N, C): the reduce happens before any in-place op
        locations = torch.stack([flat // width, flat % width], 2)
        self.peaks[key] = (values.float(), locations)


def crop_example(
    image: torch.Tensor,
    rf: ReceptiveField,
    y: int,
    x: int,
    *,
    value: float,
    index: int,
    step: int | None = None,
    whole_fraction: float = 0.5,
) -> Example:
    """The :class:`Example` of map location ``(y, x)`` in ``image`` ``(C, H, W)``: a copy of the
    patch in its field's box, or, when the field covers more than ``whole_fraction`` of the
    input, ``image`` itself (not a copy) with the box marking the region.

    Example::

        >>> import torch
        >>> rf = ReceptiveField((3, 3), (1, 1), (-1, -1), (8, 8))
        >>> crop_example(torch.rand(3, 8, 8), rf, 4, 0, value=1.0, index=0).box
        (3, 0, 6, 2)
    """
    box, crop, whole = cut(lambda: image, rf, y, x, whole_fraction)
    return Example(value, index, step, (y, x), box, crop, whole)


Cut = tuple[tuple[int, int, int, int], torch.Tensor, bool]


def cut(
    image: Callable[[], torch.Tensor], rf: ReceptiveField, y: int, x: int, whole_fraction: float
) -> Cut:
    """``(box, crop, whole)`` of location ``(y, x)``; ``image()`` gives the ``(C, H, W)`` input
    (called only when needed, so a caller can share one copy of a whole image)."""
    box = rf.box(y, x)
    if rf.covers(whole_fraction):
        return box, image(), True
    top, left, bottom, right = box
    return box, image()[:, top:bottom, left:right].clone(), False


def _batch_input(batch: Any, number: int) -> torch.Tensor:
    if isinstance(batch, tuple | list):
        if not batch:
            raise ValueError(f"data batch {number} is an empty {type(batch).__name__}.")
        batch = batch[0]  # (input, target, ...)
    if not isinstance(batch, torch.Tensor):
        raise TypeError(
            f"data must yield image tensors (N, C, H, W) or (input, target, ...) tuples; batch "
            f"{number} is a {type(batch).__name__}."
        )
    if batch.dim() == 4 and batch.shape[0] == 0:
        return batch  # an empty batch (the end of a stream): nothing to rank
    return check_image_batch(batch, in_channels=None, name=f"data batch {number}")


def collect_examples(
    model: nn.Module,
    data: Iterable[Any],
    k: int = 9,
    layers: str | Iterable[str] | None = None,
    *,
    max_channels: int | None = 64,
    whole_fraction: float = 0.5,
) -> Examples:
    """Collect each channel's top-``k`` dataset examples over a stream of batches.

    One forward per batch, under ``torch.no_grad()`` in eval mode through the package's own
    hooks (a :class:`~torch_featureviz.FeatureCapture` probe pass, so the model, its BatchNorm
    statistics and RNG state are left as they were). Each selected conv's output is reduced
    in its hook to a spatial max per channel; a :class:`TopK` per layer keeps the best ``k``
    samples per channel; only winners have their input crop copied (to the CPU, float32, as the
    model saw it). Receptive fields (for the boxes) are measured once per input size with
    :func:`receptive_fields`.

    Args:
        model: the CNN (any graph of 2-d convs).
        data: an iterable of batches: ``(N, C, H, W)`` tensors, ``(input, target, ...)`` tuples
            or lists (a ``DataLoader``), in the model's input space (normalised as it expects).
        k: examples per channel.
        layers: qualified conv names or globs; ``None`` selects every 2-d conv.
        max_channels: the first ``max_channels`` channels of each layer; ``None``: all.
        whole_fraction: a field covering more than this share of the input keeps the whole
            image with the box marking the region instead of a crop.

    Returns:
        :class:`Examples`, ``examples[layer][channel]`` best first, ``index`` counting samples
        over the stream from 0, ``step`` None.

    Raises:
        TypeError, ValueError: bad arguments, a layer that is not a 2-d conv, an empty stream,
            a batch that is not an image tensor, or images whose channel count the model does
            not take.
        RuntimeError: the model's forward failed on a batch.

    Example::

        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3))
        >>> data = [torch.rand(5, 3, 16, 16) for _ in range(3)]
        >>> examples = collect_examples(net, data, k=4)
        >>> examples
        Examples(2 layers, 6 channels, k=4, step=None)
        >>> best = examples["2"][0]
        >>> len(best), best[0].value >= best[-1].value, best[0].crop.shape
        (4, True, torch.Size([3, 5, 5]))
    """
    check_module(model)
    k = check_positive_int(k, "k")
    max_channels = check_positive_int(max_channels, "max_channels", allow_none=True)
    whole_fraction = check_float(whole_fraction, "whole_fraction", minimum=0.0, maximum=1.0)
    if isinstance(data, torch.Tensor) or not isinstance(data, Iterable):
        raise TypeError(
            "data must be an iterable of batches (a list of tensors, a DataLoader), got "
            f"{type(data).__name__}; wrap a single batch in a list: [batch]."
        )
    root = unwrap_model(model)
    convs = find_conv_layers(root, include=layers, types=nn.Conv2d)
    first_conv = next(iter(find_conv_layers(root, types=nn.Conv2d).values()))
    peaks = ChannelPeaks(max_channels)
    capture = FeatureCapture(root, list(convs), max_channels=1, observers=[peaks])
    tops: dict[str, TopK] = {}
    fields: dict[tuple[int, int, int], dict[str, ReceptiveField]] = {}
    seen = batches = 0
    with capture:
        for number, batch in enumerate(data):
            x = _batch_input(batch, number)
            batches += 1
            if x.shape[0] == 0:
                continue
            x = match_model(x, root)  # type: ignore[assignment]
            size = (x.shape[1], x.shape[2], x.shape[3])
            _forward(capture, x, number, first_conv)
            if size not in fields:
                fields[size] = receptive_fields(root, size, list(convs))
            _update(tops, peaks.peaks, fields[size], x, seen, k, whole_fraction)
            seen += x.shape[0]
    if batches == 0:
        raise ValueError("data is empty: it yielded no batch, so there is nothing to rank.")
    return Examples(
        {
            key: {
                c: [Example(e.value, e.index, None, e.location, *e.payload)
                    for e in top.entries(c)]
                for c in range(top.channels or 0)
            }
            for key, top in tops.items()
        },
        k=k,
    )


def _forward(capture: FeatureCapture, x: torch.Tensor, number: int, first: nn.Module) -> None:
    try:
        capture.probe(x)
    except RuntimeError as e:
        expected = getattr(first, "in_channels", None)
        if expected is not None and x.shape[1] != expected:
            raise ValueError(
                f"data batch {number} has {x.shape[1]} channels but the model's first conv "
                f"takes {expected}; check the (N, C, H, W) layout and the image mode (RGB)."
            ) from e
        raise


def _update(
    tops: dict[str, TopK],
    peaks: dict[str, tuple[torch.Tensor, torch.Tensor]],
    fields: dict[str, ReceptiveField],
    x: torch.Tensor,
    seen: int,
    k: int,
    whole_fraction: float,
) -> None:
    """Merge one batch's peaks into the per-layer top-k, cutting winners' crops from ``x``.

    A crop depends on the sample and the map location only, so channels that win at the same
    place share it; a whole image is copied once per sample for every layer."""
    host: list[torch.Tensor] = []  # the batch on the CPU in float32, made at the first winner
    whole: dict[int, torch.Tensor] = {}

    def batch() -> torch.Tensor:
        if not host:
            host.append(x.detach().to("cpu", torch.float32))
        return host[0]

    def whole_image(n: int) -> torch.Tensor:
        if n not in whole:
            whole[n] = batch()[n].clone()
        return whole[n]

    for key, (values, locations) in peaks.items():
        rf = fields[split_call_key(key)[0]]
        top = tops.setdefault(key, TopK(k))
        cuts: dict[tuple[int, int, int], Cut] = {}

        def crop(n: int, y: int, xx: int, rf: ReceptiveField = rf, cuts: Any = cuts) -> Cut:
            if (n, y, xx) not in cuts:
                big = rf.covers(whole_fraction)
                cuts[n, y, xx] = cut(
                    (lambda: whole_image(n)) if big else (lambda: batch()[n]),
                    rf, y, xx, whole_fraction,
                )
            return cuts[n, y, xx]  # type: ignore[no-any-return]

        top.update(values, locations, index=seen, crop=crop)
