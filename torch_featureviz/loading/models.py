"""Build the model to visualise: by name (torchvision, ``timm:``, ``hf:``) or the user's class.

Model names:

- ``"resnet50"``, ``"fcn_resnet50"``: a torchvision builder. Detection and segmentation builders
  get ``weights_backbone=None``, so without ``weights`` nothing is downloaded at all.
- ``"timm:NAME"``: ``timm.create_model(NAME, pretrained=False)``; needs the ``timm`` extra.
- ``"hf:CLASS"``: a Hugging Face ``transformers`` model class such as ``"hf:ResNetModel"``,
  built from its default config or from ``config`` (a local JSON file, as written by
  ``config.save_pretrained`` or ``config.to_json_file``); needs the ``hf`` extra. ``Auto*``
  classes need a ``config`` that names its ``model_type``.

timm and transformers are imported only when such a name is used; a missing one is a one-line
:class:`ModelLoadError` naming the extra to install.

Weights come from one of three places:

- ``weights``: for torchvision, a weights name such as ``"IMAGENET1K_V2"`` or ``"DEFAULT"``
  (or the full ``"ResNet50_Weights.IMAGENET1K_V2"``), downloaded into
  ``$TORCH_HOME/hub/checkpoints`` the first time; without a network that fails with a plain
  message saying so. For timm, ``"pretrained"`` (or ``"DEFAULT"``) loads timm's default
  pretrained weights, any other value is a pretrained tag (``NAME.TAG``). For transformers, a
  Hub id or a local directory for ``from_pretrained``.
- ``checkpoint``: a file holding a *state dict*, loaded with ``torch.load(weights_only=True)``,
  so it can never run code. A whole pickled model is refused; save ``model.state_dict()``.
- neither: random initial weights.

The preprocessing that goes with a model (:attr:`LoadedModel.transform`) is the torchvision
weights' own ``.transforms()`` when they are given, otherwise the documented default,
:func:`torch_featureviz.loading.images.preprocess` (resize the short side, centre-crop to a square,
normalise), with the mean/std timm's config names for timm models and ImageNet's otherwise.

Every user error, whatever the model form, raises :class:`ModelLoadError` (a ``ValueError``)
with a one-line message; a builder's own exception is chained, never shown raw.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from torch_featureviz.loading.checkpoints import load_state_dict_strictly, read_checkpoint
from torch_featureviz.loading.errors import ModelLoadError
from torch_featureviz.loading.images import IMAGENET_MEAN, IMAGENET_STD, preprocess
from torch_featureviz.loading.sources import (
    build_hf,
    build_timm,
    build_torchvision,
    build_user_model,
    resolve_weights,
)

__all__ = [
    "LoadedModel",
    "ModelLoadError",
    "load_model",
    "load_state_dict_strictly",
    "resolve_weights",
]


@dataclass
class LoadedModel:
    """A model ready to visualise and the preprocessing that goes with it.

    Attributes:
        model: the ``nn.Module`` in eval mode, on the CPU.
        transform: maps a ``(C, H, W)`` float image in [0, 1] to a ``(1, C, H, W)`` batch.
        description: one line saying what was loaded, e.g.
            ``"resnet18 (weights ResNet18_Weights.IMAGENET1K_V1)"``.
        weights: the torchvision weights enum member, or ``None``.
        input_size: the ``H`` (square) or ``(H, W)`` of what :attr:`transform` makes.

    Example::

        >>> import torch
        >>> loaded = load_model("resnet18", input_size=32)
        >>> loaded.transform(torch.rand(3, 40, 50)).shape
        torch.Size([1, 3, 32, 32])
    """

    model: nn.Module
    transform: Callable[[torch.Tensor], torch.Tensor]
    description: str
    weights: Any = None
    input_size: int | tuple[int, int] = 224


def _per_channel(values: tuple[float, ...], c: int) -> list[float]:
    """Mean or std for ``c`` channels made by :func:`~torch_featureviz.load_image`: channel
    ``i`` repeats colour channel ``i % 3``, so it takes that channel's value."""
    return [values[i % len(values)] for i in range(c)]


def _default_transform(
    size: int | tuple[int, int],
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
) -> Callable[[torch.Tensor], torch.Tensor]:
    if isinstance(size, tuple):
        h, w = size

        def transform(image: torch.Tensor) -> torch.Tensor:
            from torchvision.transforms import functional as tvf

            c = image.shape[0]
            x = tvf.resize(image.float(), [h, w], antialias=True)
            x = tvf.normalize(x, _per_channel(mean, c), _per_channel(std, c))
            return x.unsqueeze(0)

        return transform

    def square(image: torch.Tensor) -> torch.Tensor:
        c = image.shape[0]
        return preprocess(
            image, size=size, mean=tuple(_per_channel(mean, c)), std=tuple(_per_channel(std, c))
        )

    return square


def _weights_transform(weights: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    tf = weights.transforms()

    def transform(image: torch.Tensor) -> torch.Tensor:
        return tf(image).unsqueeze(0)

    return transform


def _split_name(name: str) -> tuple[str, str]:
    """``"timm:resnet18"`` -> ``("timm", "resnet18")``; a torchvision name -> ``("", name)``."""
    for form in ("timm", "hf"):
        if name.startswith(form + ":"):
            return form, name[len(form) + 1 :]
    return "", name


def _check_size(size: Any) -> None:
    sizes = size if isinstance(size, tuple) else (size,)
    if not sizes or len(sizes) > 2 or any(
        isinstance(s, bool) or not isinstance(s, int) for s in sizes
    ):
        raise TypeError(f"input_size must be an int, (H, W) or None, got {size!r}.")
    if any(s < 1 for s in sizes):
        raise ValueError(f"input_size must be a positive int or (H, W), got {size!r}.")


def _check_arguments(
    name: str | None,
    weights: str | None,
    checkpoint: str | os.PathLike[str] | None,
    model_class: str | None,
    config: str | os.PathLike[str] | None,
    input_size: int | tuple[int, int] | None,
) -> None:
    """The checks :func:`load_model` makes before building anything."""
    for value, label in ((name, "name"), (weights, "weights"), (model_class, "model_class")):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{label} must be a str or None, got {type(value).__name__}.")
    for path, label in ((checkpoint, "checkpoint"), (config, "config")):
        if path is not None and not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"{label} must be a path or None, got {type(path).__name__}.")
        if path is not None and not os.fspath(path):
            raise ModelLoadError(f"--{label} must not be empty; give a file.")
    if input_size is not None:
        _check_size(input_size)
    if weights is not None and not weights:
        raise ModelLoadError("--weights must not be empty; give a weights name such as DEFAULT.")
    if (name is None) == (model_class is None):
        raise ModelLoadError(
            "give either a model name (torchvision, timm:NAME or hf:CLASS) or --model-class "
            "module:Class (exactly one)."
        )
    if weights is not None and checkpoint is not None:
        raise ModelLoadError("--weights and --checkpoint both set the weights; give only one.")
    if weights is not None and model_class is not None:
        raise ModelLoadError(
            "--weights names torchvision weights and needs a torchvision model name; for your "
            "own class use --checkpoint FILE."
        )
    form = _split_name(name)[0] if name is not None else ""
    if config is not None and form != "hf":
        raise ModelLoadError("--config is the config file of an hf:CLASS model; give hf:CLASS.")
    if config is not None and weights is not None:
        raise ModelLoadError(
            "--config and --weights both define an hf: model; from_pretrained brings its own "
            "config, so give only one."
        )


class _Built(NamedTuple):
    model: nn.Module
    what: str
    member: Any
    mean: tuple[float, ...]
    std: tuple[float, ...]
    own_size: int | tuple[int, int] | None


def _build(
    name: str | None,
    weights: str | None,
    model_class: str | None,
    config: str | os.PathLike[str] | None,
    progress: bool,
) -> _Built:
    """Build the model of one form, with what its form says about preprocessing."""
    form, bare = _split_name(name) if name is not None else ("", "")
    member = None
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    own_size: int | tuple[int, int] | None = None
    if model_class is not None:
        model = build_user_model(model_class)
        what = model_class
    elif form == "timm":
        model, data = build_timm(bare, weights)
        mean = tuple(data.get("mean", mean))
        std = tuple(data.get("std", std))
        shape = data.get("input_size")
        if isinstance(shape, tuple) and len(shape) == 3:
            own_size = shape[1] if shape[1] == shape[2] else (shape[1], shape[2])
        what = str(name)
    elif form == "hf":
        model = build_hf(bare, weights, config)
        image_size = getattr(getattr(model, "config", None), "image_size", None)
        if isinstance(image_size, int) and not isinstance(image_size, bool) and image_size > 0:
            own_size = image_size
        what = str(name)
    else:
        model, member = build_torchvision(bare, weights, progress)
        what = bare
    return _Built(model, what, member, mean, std, own_size)


def load_model(
    name: str | None = None,
    *,
    weights: str | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    model_class: str | None = None,
    config: str | os.PathLike[str] | None = None,
    input_size: int | tuple[int, int] | None = None,
    progress: bool = False,
) -> LoadedModel:
    """Build a model by name (torchvision, ``timm:NAME``, ``hf:CLASS``) or from the user's class.

    Args:
        name: a torchvision model name (``"resnet50"``), ``"timm:NAME"`` or ``"hf:CLASS"`` (see
            the module docstring); omit it when ``model_class`` is given.
        weights: pretrained weights (see the module docstring); nothing is downloaded without
            them. Not with ``model_class``.
        checkpoint: a state-dict file, loaded with ``weights_only=True``; keys must match.
        model_class: ``"package.module:Class"`` or ``"file.py:Class"``: the user's own
            ``nn.Module`` class (or a function returning one), called with no arguments.
        config: a local JSON config file for an ``hf:`` model (default: the class's own
            default config).
        input_size: side of the square crop (or ``(H, W)``, resized without crop) of the default
            preprocessing; ``None``: the model's own (timm's config, an ``hf:`` config's
            ``image_size``), else 224. Ignored when torchvision ``weights`` bring their own
            transforms.
        progress: show a download progress bar on stderr when weights are fetched.

    Returns:
        A :class:`LoadedModel`: the model in eval mode and its preprocessing.

    Raises:
        TypeError: an argument has the wrong type.
        ModelLoadError: unknown model, class or weights name (listing close ones), a missing
            optional extra, a builder that fails, a failed download, a missing or unreadable
            checkpoint or config, a pickle that is not a pure state dict, or keys that do not
            match (listing a few missing and unexpected ones).

    Example::

        >>> loaded = load_model("resnet18", input_size=64)
        >>> loaded.description, loaded.model.training, loaded.input_size
        ('resnet18 (random weights)', False, 64)
    """
    _check_arguments(name, weights, checkpoint, model_class, config, input_size)
    model, what, member, mean, std, own_size = _build(name, weights, model_class, config, progress)
    if checkpoint is not None:
        state = read_checkpoint(checkpoint)
        load_state_dict_strictly(model, state, os.fspath(checkpoint))
        source = f"checkpoint {os.fspath(checkpoint)}"
    elif member is not None:
        source = f"weights {member}"
    elif weights is not None:
        source = f"pretrained weights {weights}"
    else:
        source = "random weights"
    model.eval()
    size = input_size if input_size is not None else own_size if own_size is not None else 224
    if member is not None:
        transform = _weights_transform(member)
        crop = getattr(member.transforms(), "crop_size", None)
        if isinstance(crop, (list, tuple)) and len(crop) == 1:
            size = int(crop[0])
    else:
        transform = _default_transform(size, mean, std)
    return LoadedModel(model, transform, f"{what} ({source})", member, size)
