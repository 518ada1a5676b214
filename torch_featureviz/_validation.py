"""Boundary checks shared by the public API, with messages that say how to fix the input.

Every public entry point validates its arguments here *before* it registers a hook or touches the
model, so a bad call never leaves anything behind.
"""

from __future__ import annotations

import difflib
import fnmatch
import math
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, overload

import torch
from torch import nn

__all__: list[str] = []

T = TypeVar("T")

#: What a model is called with: one tensor, a tuple of positional inputs, or keyword inputs.
ModelInput = torch.Tensor | tuple[Any, ...] | list[Any] | Mapping[str, Any]

_GLOB_CHARS = frozenset("*?[")


def check_module(model: Any, *, what: str = "model") -> nn.Module:
    """Return ``model`` if it is an ``nn.Module``, else raise a ``TypeError``."""
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"{what} must be a torch.nn.Module, got {type(model).__name__}. "
            "Pass the model itself (for example torchvision.models.resnet18())."
        )
    return model


@overload
def check_positive_int(value: Any, name: str, *, allow_none: Literal[False] = ...) -> int: ...
@overload
def check_positive_int(value: Any, name: str, *, allow_none: bool) -> int | None: ...
def check_positive_int(value: Any, name: str, *, allow_none: bool = False) -> int | None:
    """Check ``value`` is an ``int`` > 0 (or ``None`` when allowed)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        hint = " or None" if allow_none else ""
        raise TypeError(f"{name} must be a positive int{hint}, got {type(value).__name__}.")
    if value <= 0:
        hint = " (or None for no limit)" if allow_none else ""
        raise ValueError(f"{name} must be >= 1, got {value}{hint}.")
    return value


def check_non_negative_int(value: Any, name: str) -> int:
    """Check ``value`` is an ``int`` >= 0."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= 0, got {type(value).__name__}.")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}.")
    return value


@overload
def check_float(
    value: Any,
    name: str,
    *,
    minimum: float | None = ...,
    exclusive: bool = ...,
    maximum: float | None = ...,
    allow_none: Literal[False] = ...,
) -> float: ...
@overload
def check_float(
    value: Any,
    name: str,
    *,
    minimum: float | None = ...,
    exclusive: bool = ...,
    maximum: float | None = ...,
    allow_none: bool,
) -> float | None: ...
def check_float(
    value: Any,
    name: str,
    *,
    minimum: float | None = None,
    exclusive: bool = False,
    maximum: float | None = None,
    allow_none: bool = False,
) -> float | None:
    """Check ``value`` is a finite real number within bounds (``> minimum`` if ``exclusive``)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        hint = " or None" if allow_none else ""
        raise TypeError(f"{name} must be a number{hint}, got {type(value).__name__}.")
    number = float(value)
    low_ok = minimum is None or (number > minimum if exclusive else number >= minimum)
    if not math.isfinite(number) or not low_ok or (maximum is not None and number > maximum):
        bounds = []
        if minimum is not None:
            bounds.append(f"{'>' if exclusive else '>='} {minimum:g}")
        if maximum is not None:
            bounds.append(f"<= {maximum:g}")
        text = " and ".join(bounds)
        raise ValueError(
            f"{name} must be a finite number{' ' + text if text else ''}, got {value!r}."
        )
    return number


def check_timeout(value: Any, name: str) -> float:
    """Seconds to wait: finite, >= 0, and no longer than the platform's wait can express."""
    return check_float(value, name, minimum=0.0, maximum=float(threading.TIMEOUT_MAX))


def check_bool(value: Any, name: str) -> bool:
    """Check ``value`` is ``True`` or ``False``."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__}.")
    return value


def check_choice(value: Any, name: str, choices: Sequence[T]) -> T:
    """Check ``value`` is one of ``choices`` (strings compared exactly)."""
    if isinstance(value, str) and value in choices:
        return value  # type: ignore[return-value]
    expected = ", ".join(repr(c) for c in choices)
    if not isinstance(value, str):
        raise TypeError(f"{name} must be one of {expected}, got {type(value).__name__}.")
    raise ValueError(f"{name} must be one of {expected}, got {value!r}.")


def check_prefix(prefix: Any, name: str = "name") -> str | None:
    """A tag prefix (a monitor's ``name``): one word of ``[A-Za-z0-9_.-]``, or ``None``."""
    from torch_featureviz.naming import KINDS

    if prefix is None:
        return None
    if not isinstance(prefix, str):
        raise TypeError(f"{name} must be a str or None, got {type(prefix).__name__}.")
    if not prefix or any(not (c.isascii() and (c.isalnum() or c in "_.-")) for c in prefix):
        raise ValueError(
            f"{name} must be one word of letters, digits, '_', '.' or '-', got {prefix!r} "
            "(it prefixes every TensorBoard tag, like 'G' or 'discriminator')."
        )
    if prefix in KINDS:
        raise ValueError(
            f"{name} {prefix!r} is reserved for the package's own tags; choose another."
        )
    return prefix


def check_cmap(cmap: Any) -> str | None:
    """A matplotlib colormap name, or ``None`` (grayscale)."""
    if cmap is None:
        return None
    if not isinstance(cmap, str):
        raise TypeError(
            f"cmap must be a matplotlib colormap name or None, got {type(cmap).__name__}."
        )
    import matplotlib

    if cmap not in matplotlib.colormaps:
        close = difflib.get_close_matches(cmap, list(matplotlib.colormaps), n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"cmap {cmap!r} is not a matplotlib colormap.{hint}")
    return cmap


def forward_args(inputs: ModelInput) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The positional and keyword arguments of a model call on ``inputs``."""
    if isinstance(inputs, Mapping):
        return (), dict(inputs)
    if isinstance(inputs, (tuple, list)):
        return tuple(inputs), {}
    return (inputs,), {}


def _first_tensor(inputs: Any) -> torch.Tensor | None:
    args, kwargs = forward_args(inputs)
    for v in (*args, *kwargs.values()):
        if isinstance(v, torch.Tensor):
            return v
    return None


def check_model_input(
    inputs: Any,
    *,
    sample: int = 0,
    unbatched_dims: int | None = None,
    name: str = "input",
) -> ModelInput:
    """Validate a model input: a float tensor, or a tuple/list/dict holding at least one tensor.

    Only the input's own shape is checked; whether it fits is the model's forward's business. A
    single tensor with ``unbatched_dims`` dims (``(C, H, W)`` for a 2-D CNN) gets a batch
    dimension (a view). The first tensor's batch must hold sample ``sample``.
    """
    if isinstance(inputs, torch.Tensor):
        if not (inputs.is_floating_point() or inputs.is_complex()):
            raise TypeError(
                f"{name} must be a floating-point tensor, got dtype {inputs.dtype}. "
                "Scale uint8 images with x.float() / 255."
            )
        if inputs.dim() == 0:
            raise ValueError(f"{name} must have a batch dimension, got a 0-D tensor.")
        if unbatched_dims is not None and inputs.dim() == unbatched_dims:
            inputs = inputs.unsqueeze(0)
        first: torch.Tensor = inputs
    elif isinstance(inputs, (tuple, list, Mapping)):
        if isinstance(inputs, Mapping) and not all(isinstance(k, str) for k in inputs):
            raise TypeError(f"{name} as a dict must have str keys (the forward's argument names).")
        found = _first_tensor(inputs)
        if found is None:
            raise TypeError(
                f"{name} must be a torch.Tensor, or a tuple or dict holding the model's input "
                f"tensors, got a {type(inputs).__name__} with no tensor in it."
            )
        first = found
    else:
        raise TypeError(
            f"{name} must be a torch.Tensor, a tuple of inputs or a dict of keyword inputs, got "
            f"{type(inputs).__name__}. Convert images with torch_featureviz.load_image."
        )
    if first.dim() and sample >= first.shape[0]:
        raise ValueError(
            f"sample={sample} is outside the batch of {first.shape[0]} ({name}); "
            f"choose 0 <= sample < {first.shape[0]}."
        )
    return inputs


def match_model(inputs: ModelInput, model: nn.Module) -> ModelInput:
    """``inputs`` on the model's current device, floating tensors in its floating dtype.

    Follows the model after ``model.half()``, ``.to(torch.bfloat16)`` or ``.to(device)``.
    """
    ref: torch.Tensor | None = next((p for p in model.parameters() if p.is_floating_point()), None)
    if ref is None:
        ref = next((b for b in model.buffers() if b.is_floating_point()), None)
    if ref is None:
        return inputs

    def move(v: Any) -> Any:
        if not isinstance(v, torch.Tensor):
            return v
        if v.is_floating_point():
            return v.to(device=ref.device, dtype=ref.dtype)
        return v.to(device=ref.device)

    if isinstance(inputs, Mapping):
        return {k: move(v) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return tuple(move(v) for v in inputs)
    return move(inputs)


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


def unknown_option_message(what: str, key: str, known: Sequence[str]) -> str:
    """``what`` got an option it does not have: name it, and the closest known ones."""
    close = difflib.get_close_matches(key, list(known), n=3)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    return f"{what} got an unknown option {key!r}.{hint} Known options: {', '.join(known)}."


def input_hint(error: Exception) -> str:
    """A hint for the commonest probe mistakes, read from the forward's own error."""
    text = str(error)
    if "channels, but got 1 channels" in text:
        return " (repeat a grayscale image to 3 channels with x.expand(-1, 3, -1, -1))"
    if "channels" in text:
        return " (check the (N, C, ...) layout and the channel count of the input)"
    return ""


def describe_input(inputs: ModelInput) -> str:
    """``"shape (1, 3, 20, 20)"``, or each input's shape for tuples and dicts."""
    args, kwargs = forward_args(inputs)

    def one(v: Any) -> str:
        return f"shape {tuple(v.shape)}" if isinstance(v, torch.Tensor) else type(v).__name__

    parts = [one(a) for a in args] + [f"{k}={one(v)}" for k, v in kwargs.items()]
    return ", ".join(parts) if parts else "no input"


def unbatched_dims(layers: Mapping[str, nn.Module]) -> int | None:
    """How many dims an unbatched input of these convs has (3 for Conv2d's ``(C, H, W)``)."""
    first = next(iter(layers.values()), None)
    size = getattr(first, "kernel_size", None)
    return None if size is None else len(size) + 1
