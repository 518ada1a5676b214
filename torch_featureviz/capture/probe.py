"""One probe pass of a :class:`~torch_featureviz.FeatureCapture` as a function:
:func:`capture_feature_maps`."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from torch_featureviz._validation import ModelInput, check_model_input, unbatched_dims
from torch_featureviz.capture.discovery import ConvTypes
from torch_featureviz.capture.hooks import FeatureCapture

__all__ = ["capture_feature_maps"]


def capture_feature_maps(
    model: nn.Module,
    image: ModelInput,
    layers: str | Iterable[str] | None = None,
    *,
    max_channels: int | None = 64,
    sample: int = 0,
    max_calls: int | None = None,
    types: ConvTypes | None = None,
) -> dict[str, torch.Tensor]:
    """Run one probe forward pass and return hook-mode maps, leaving the model unchanged.

    The pass runs under ``torch.no_grad()`` in eval mode; the train/eval flags and RNG state are
    restored afterwards, so BatchNorm statistics and parameters are bit-for-bit as before.

    Args:
        model: the CNN.
        image: the model's input: an ``(N, C, H, W)`` tensor (or ``(C, H, W)``, given a batch
            dimension), a tuple of positional inputs (RAFT's two images) or a dict of keyword
            inputs (Hugging Face's ``pixel_values=``). Moved to the model's device and dtype.
        layers, max_channels, sample, max_calls, types: as for :class:`FeatureCapture`.

    Returns:
        ``{layer key: (C, *spatial) float32 tensor}`` in call order.

    Raises:
        TypeError, ValueError: bad arguments.
        RuntimeError: the model's forward failed on the input.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3))
        >>> maps = capture_feature_maps(net, torch.rand(1, 3, 8, 8))
        >>> {name: tuple(m.shape) for name, m in maps.items()}
        {'0': (4, 6, 6), '2': (2, 4, 4)}
    """
    cap = FeatureCapture(
        model, layers, max_channels=max_channels, sample=sample, max_calls=max_calls, types=types
    )
    x = check_model_input(image, sample=sample, unbatched_dims=unbatched_dims(cap.layers))
    return cap.probe(x)
