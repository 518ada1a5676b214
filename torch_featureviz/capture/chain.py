"""Chain mode: the original article's procedure, kept for comparison.

The article fed an image through the discovered conv layers one after another, each output into
the next. That skips everything between the convs (BatchNorm, ReLU, pooling, residual additions,
concatenations), so the maps are *not* what the network computes, and without the stem's
max-pool they come out at twice the true resolution. Hook mode (:class:`FeatureCapture`) shows
the real activations; use this mode to reproduce the article or to see where it departs.
"""

from __future__ import annotations

import torch
from torch import nn

from torch_featureviz._validation import (
    check_image_batch,
    check_non_negative_int,
    check_positive_int,
)
from torch_featureviz.capture.discovery import CONV_TYPES, Extractor

__all__ = ["chain_feature_maps"]


def chain_feature_maps(
    model_or_extractor: nn.Module | Extractor,
    image: torch.Tensor,
    *,
    max_channels: int | None = 64,
    sample: int = 0,
) -> dict[str, torch.Tensor]:
    """Feed ``image`` through ``Extractor.CNN_layers`` in order, as the original article did.

    Args:
        model_or_extractor: a model (an :class:`Extractor` is built and activated) or an
            ``Extractor``.
        image: ``(N, C, H, W)`` or ``(C, H, W)`` float tensor on the layers' device.
        max_channels: channels kept per map; ``None`` keeps all.
        sample: batch index kept.

    Returns:
        ``{CNN_names[i]: (C, H, W) float32 tensor}``, the same format as hook mode.

    Chain mode is Conv2d-only, like the article: other conv types (``Conv1d``, ``Conv3d``,
    transposed convs) are not part of the chain, and a model with none but those is refused.

    Raises:
        ValueError: the model has no Conv2d (the message names its conv types), or the chain
            breaks because a layer's ``in_channels`` does not match the previous output
            (DenseNet's concatenations, GoogLeNet's branches, a skipped transposed conv) or the
            map became smaller than a kernel. The message names the layer and suggests hook mode.

    The pass runs under ``torch.no_grad()`` and only calls the convs, so the model is unchanged.

    Example::

        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(4, 2, 3))
        >>> maps = chain_feature_maps(model, torch.rand(3, 9, 9))
        >>> {name: tuple(m.shape) for name, m in maps.items()}
        {'0': (4, 7, 7), '1': (2, 5, 5)}
    """
    max_channels = check_positive_int(max_channels, "max_channels", allow_none=True)
    sample = check_non_negative_int(sample, "sample")
    if isinstance(model_or_extractor, Extractor):
        extractor = model_or_extractor.activate()
    elif isinstance(model_or_extractor, nn.Module):
        extractor = Extractor(model_or_extractor).activate()
    else:
        raise TypeError(
            "chain_feature_maps takes an nn.Module or an Extractor, got "
            f"{type(model_or_extractor).__name__}."
        )
    if not extractor.CNN_layers:
        others = [
            m
            for m in extractor.model.modules()
            if isinstance(m, CONV_TYPES) and not isinstance(m, nn.Conv2d)
        ]
        if others:
            kinds = sorted({t.__name__ for m in others for t in CONV_TYPES if isinstance(m, t)})
            raise ValueError(
                f"chain mode supports only Conv2d (the original article's procedure), and "
                f"{type(extractor.model).__name__} has none outside its "
                f"{extractor.DS_layer_name!r} layers; its {len(others)} convs are "
                f"{', '.join(kinds)}. Use hook mode (FeatureCapture), which covers every conv type."
            )
        raise ValueError(
            f"{type(extractor.model).__name__} has no Conv2d outside its "
            f"{extractor.DS_layer_name!r} layers; there is nothing to chain."
        )
    x = check_image_batch(image, in_channels=extractor.CNN_layers[0].in_channels, sample=sample)
    maps: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, layer in zip(extractor.CNN_names, extractor.CNN_layers, strict=True):
            if x.shape[1] != layer.in_channels:
                raise ValueError(
                    f"the chain breaks at {name!r}: it expects {layer.in_channels} input "
                    f"channels but the previous conv gives {x.shape[1]}. This architecture is "
                    "not a plain sequence of convs (branches or concatenations); use hook mode "
                    "(FeatureCapture) to see its real feature maps."
                )
            try:
                x = layer(x)
            except RuntimeError as e:
                raise ValueError(
                    f"the chain breaks at {name!r} on an input of shape {tuple(x.shape)}: {e}. "
                    "Use a larger image, or hook mode (FeatureCapture)."
                ) from e
            kept = x[sample] if max_channels is None else x[sample, :max_channels]
            maps[name] = kept.to(dtype=torch.float32, copy=True)
    return maps
