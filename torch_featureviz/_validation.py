"""Boundary checks shared by the public API, with messages that say how to fix the input.

Every public entry point validates its arguments here *before* it registers a hook or touches the
model, so a bad call never leaves anything behind.
"""

from __future__ import annotations

import difflib
import fnmatch
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__: list[str] = []

_GLOB_CHARS = frozenset("*?[")


def check_module(model: Any, *, what: str = "model") -> nn.Module:
    """Return ``model`` if it is an ``nn.Module``, else raise a ``TypeError``."""
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"{what} must be a torch.nn.Module, got {type(model).__name__}. "
            "Pass the model itself (for example torchvision.models.resnet18())."
        )
    return model


def check_positive_int(value: Any, name: str, *, allow_none: bool = False) -> int | None:
    """Check ``value`` is an ``int`` > 0 (or ``None`` when allowed)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        hint = " or None" if allow_none else ""
        raise TypeError(f"{name} must be a positive int{hint}, got {type(value).__name__}.")
    if value <= 0:
        hint = " (use None to keep every channel)" if allow_none else ""
        raise ValueError(f"{name} must be >= 1, got {value}{hint}.")
    return value


def check_non_negative_int(value: Any, name: str) -> int:
    """Check ``value`` is an ``int`` >= 0."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= 0, got {type(value).__name__}.")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}.")
    return value


def check_image_batch(
    x: Any,
    *,
    in_channels: int | None,
    sample: int = 0,
    name: str = "input",
) -> torch.Tensor:
    """Validate an image input and return it as a 4-D ``(N, C, H, W)`` tensor.

    A 3-D ``(C, H, W)`` tensor is accepted and given a batch dimension (a view, not a copy).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor of shape (N, C, H, W) or (C, H, W), got "
            f"{type(x).__name__}. Convert images with torchvision.transforms.functional.to_tensor "
            "or torch_featureviz.load_image."
        )
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4:
        raise ValueError(
            f"{name} must have shape (N, C, H, W) or (C, H, W), got a {x.dim()}-D tensor of shape "
            f"{tuple(x.shape)}."
        )
    if not (x.is_floating_point() or x.is_complex()):
        raise TypeError(
            f"{name} must be a floating-point tensor, got dtype {x.dtype}. "
            "Scale uint8 images with x.float() / 255."
        )
    if in_channels is not None and x.shape[1] != in_channels:
        raise ValueError(
            f"{name} has {x.shape[1]} channels but the model's first conv expects {in_channels}. "
            + (
                "Repeat a grayscale image to 3 channels with x.expand(-1, 3, -1, -1)."
                if x.shape[1] == 1 and in_channels == 3
                else "Check the (N, C, H, W) layout of the input."
            )
        )
    if sample >= x.shape[0]:
        raise ValueError(
            f"sample={sample} is outside the batch of {x.shape[0]}; "
            f"choose 0 <= sample < {x.shape[0]}."
        )
    return x


def _as_patterns(value: str | Iterable[str] | None, name: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    try:
        items = list(value)
    except TypeError:
        raise TypeError(
            f"{name} must be a string or a sequence of strings, got {type(value).__name__}."
        ) from None
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"{name} entries must be strings, got {type(item).__name__}.")
    return items


def select_names(
    names: Sequence[str],
    *,
    include: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = None,
    what: str = "conv layer",
) -> list[str]:
    """Filter ``names`` with glob patterns, keeping their order.

    Each ``include`` entry is an exact qualified name or an ``fnmatch`` glob such as
    ``"layer1.*"``. An entry that matches nothing raises ``ValueError`` listing the closest names,
    because a silently empty selection is always a typo.
    """
    inc = _as_patterns(include, "include")
    exc = _as_patterns(exclude, "exclude")
    selected: list[str]
    if inc is None:
        selected = list(names)
    else:
        wanted: set[str] = set()
        for pattern in inc:
            if pattern in names:
                wanted.add(pattern)
                continue
            hits = fnmatch.filter(names, pattern)
            if not hits:
                raise ValueError(no_match_message(pattern, names, what=what))
            wanted.update(hits)
        selected = [n for n in names if n in wanted]
    if exc:
        selected = [n for n in selected if not any(fnmatch.fnmatchcase(n, p) for p in exc)]
    if not selected:
        raise ValueError(
            f"include={inc!r} and exclude={exc!r} leave no {what}s selected out of {len(names)}."
        )
    return selected


def no_match_message(pattern: str, names: Sequence[str], *, what: str = "conv layer") -> str:
    """Message for a layer name or pattern that matches nothing, naming the closest names."""
    kind = "pattern" if _GLOB_CHARS & set(pattern) else "name"
    close = difflib.get_close_matches(pattern, list(names), n=5, cutoff=0.4)
    if not close:
        close = list(names[:5])
        lead = "The first ones are"
    else:
        lead = "Closest"
    return (
        f"{kind} {pattern!r} matches no {what}; {lead}: {', '.join(close)}. "
        "Use torch_featureviz.find_conv_layers(model) to list every name."
    )


def check_writable_dir(path: Path) -> None:
    """Create ``path`` if needed and prove it is writable, or raise a one-line ``OSError``."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".featureviz-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise OSError(
            f"cannot write to {str(path)!r}: {e.strerror or e}. Choose a writable directory."
        ) from e
