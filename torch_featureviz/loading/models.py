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

import difflib
import importlib
import importlib.util
import os
import pickle
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torch_featureviz.loading.images import IMAGENET_MEAN, IMAGENET_STD, preprocess, read_capped

__all__ = ["LoadedModel", "ModelLoadError", "load_model"]

#: Keys listed in a mismatch message, per kind (missing / unexpected).
_SHOWN_KEYS = 4
#: A model config is a small JSON file; anything larger (``/dev/zero``) is refused unread.
_MAX_CONFIG_BYTES = 16 * 2**20


class ModelLoadError(ValueError):
    """The model, its weights or its checkpoint could not be loaded; the message says why."""


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
    """

    model: nn.Module
    transform: Callable[[torch.Tensor], torch.Tensor]
    description: str
    weights: Any = None
    input_size: int | tuple[int, int] = 224


def _list_models() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models())


def _unknown_model(name: str) -> ModelLoadError:
    known = _list_models()
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else f"for example {', '.join(known[:3])}."
    return ModelLoadError(
        f"unknown torchvision model {name!r}; {hint} "
        "(torchvision.models.list_models() lists all; use --model-class module:Class for your own)"
    )


def resolve_weights(model_name: str, weights: str) -> Any:
    """Return the torchvision weights enum member called ``weights`` for ``model_name``.

    Needs no network: only the name is checked.

    Args:
        model_name: a torchvision model name such as ``"resnet18"``.
        weights: ``"DEFAULT"``, a member name such as ``"IMAGENET1K_V1"``, or the full
            ``"ResNet18_Weights.IMAGENET1K_V1"``.

    Returns:
        The weights enum member (it has ``.url`` and ``.transforms()``).

    Raises:
        ModelLoadError: unknown model, or unknown weights name (the message lists valid ones).

    Example::

        >>> resolve_weights("resnet18", "DEFAULT")
        ResNet18_Weights.IMAGENET1K_V1
    """
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(model_name)
    except (ValueError, KeyError):
        raise _unknown_model(model_name) from None
    valid = list(enum.__members__)  # member names plus the DEFAULT alias
    member = weights.rsplit(".", 1)[-1] if weights.startswith(enum.__name__ + ".") else weights
    if member in enum.__members__:
        return enum[member]
    raise ModelLoadError(
        f"unknown weights {weights!r} for {model_name}; valid names: {', '.join(valid)}."
    )


def _download_error(weights: Any, e: BaseException) -> ModelLoadError:
    reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or e
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    return ModelLoadError(
        f"could not download {weights} from {weights.url} ({reason}); this machine seems to have "
        f"no network. Download the file elsewhere into {cache}, or pass --checkpoint FILE."
    )


def _ensure_downloaded(weights: Any, progress: bool) -> None:
    """Fetch the weights file into torch.hub's cache unless it is there already.

    torchvision would do this itself, but it writes a "Downloading: ..." line to stderr before
    trying; downloading here keeps a failed attempt to the one-line error of the caller.
    """
    from urllib.parse import urlparse

    url = weights.url
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    target = cache / os.path.basename(urlparse(url).path)
    if target.exists():
        return
    match = torch.hub.HASH_REGEX.search(target.name)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(
            url, str(target), match.group(1) if match else None, progress=progress
        )
    except (OSError, ConnectionError) as e:  # urllib's URLError is an OSError
        raise _download_error(weights, e) from e
    except RuntimeError as e:  # a hash mismatch: a broken or intercepted download
        raise ModelLoadError(f"downloading {weights} from {url} failed: {e}") from e


def _builder_error(what: str, e: BaseException) -> ModelLoadError:
    return ModelLoadError(f"building {what} failed: {type(e).__name__}: {_first_line(e)}")


def _build_torchvision(name: str, weights: str | None, progress: bool) -> tuple[nn.Module, Any]:
    import inspect

    import torchvision

    if name not in torchvision.models.list_models():
        raise _unknown_model(name)
    member = resolve_weights(name, weights) if weights is not None else None
    if member is not None:
        _ensure_downloaded(member, progress)
    kwargs: dict[str, Any] = {"weights": member, "progress": progress}
    builder = torchvision.models.get_model_builder(name)
    if "weights_backbone" in inspect.signature(builder).parameters:
        # Detection and segmentation builders default to ImageNet backbone weights, which they
        # download; random weights mean random everywhere. (With ``weights`` torchvision sets
        # the backbone's to None itself.)
        kwargs["weights_backbone"] = None
    try:
        model = builder(**kwargs)
    except (OSError, ConnectionError) as e:
        if member is None:
            raise _builder_error(name, e) from e
        raise _download_error(member, e) from e
    except RuntimeError as e:
        # torch.hub raises RuntimeError for a corrupt or partially downloaded file.
        if member is None:
            raise _builder_error(name, e) from e
        raise ModelLoadError(f"could not load {member}: {_first_line(e)}") from e
    except Exception as e:  # a builder may fail in any way; the user gets one line
        raise _builder_error(name, e) from e
    return model, member


def _import_extra(module: str, extra: str, form: str) -> Any:
    """Import an optional dependency, or say in one line which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ModelLoadError(
            f"{form} models need {module}, which is not installed: "
            f"pip install 'torch-featureviz[{extra}]' (or pip install {module})."
        ) from e


def _build_timm(name: str, weights: str | None) -> tuple[nn.Module, dict[str, Any]]:
    timm = _import_extra("timm", "timm", "timm:NAME")
    if not name:
        raise ModelLoadError("timm: needs a model name, e.g. timm:resnet18 (timm.list_models()).")
    if not timm.is_model(name):
        known = timm.list_models()
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ModelLoadError(
            f"unknown timm model {name!r}{hint} (timm.list_models() lists all)"
        )
    pretrained = weights is not None
    if weights is not None and weights not in ("pretrained", "DEFAULT", "default"):
        name = f"{name.split('.', 1)[0]}.{weights}"  # a pretrained tag, e.g. a1_in1k
    try:
        model = timm.create_model(name, pretrained=pretrained)
    except Exception as e:
        if pretrained:
            raise ModelLoadError(
                f"could not load pretrained weights for timm:{name} ({type(e).__name__}: "
                f"{_first_line(e)}); without a network, pass --checkpoint FILE instead."
            ) from e
        raise _builder_error(f"timm:{name}", e) from e
    try:
        config = dict(timm.data.resolve_model_data_config(model))
    except Exception:  # a model without a pretrained config: the documented default
        config = {}
    return model, config


def _read_json_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    import json

    p = Path(path)
    if not os.fspath(path):
        raise ModelLoadError("--config must not be empty; give a JSON config file.")
    if not p.exists():
        raise ModelLoadError(f"config not found: {str(p)!r}; check the path.")
    if not p.is_file():
        raise ModelLoadError(f"config {str(p)!r} is not a regular file.")
    try:
        data = read_capped(
            p, _MAX_CONFIG_BYTES, what="config", hint="a model config is a small JSON file."
        )
    except (OSError, ValueError) as e:
        raise ModelLoadError(str(e)) from e
    try:
        config = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ModelLoadError(f"config {str(p)!r} is not valid JSON: {_first_line(e)}.") from e
    if not isinstance(config, dict):
        raise ModelLoadError(
            f"config {str(p)!r} holds a JSON {type(config).__name__}, not an object of settings."
        )
    return config


def _build_hf(
    class_name: str, weights: str | None, config_path: str | os.PathLike[str] | None
) -> nn.Module:
    transformers = _import_extra("transformers", "hf", "hf:CLASS")
    if not class_name:
        raise ModelLoadError("hf: needs a model class, e.g. hf:ResNetModel or hf:ConvNextModel.")
    try:
        cls = getattr(transformers, class_name)
    except (AttributeError, ImportError, RuntimeError):
        names = [n for n in dir(transformers) if n[:1].isupper() and "Model" in n]
        close = difflib.get_close_matches(class_name, names, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ModelLoadError(
            f"transformers has no model class {class_name!r}{hint}"
        ) from None
    auto = class_name.startswith("Auto")
    if not (auto and hasattr(cls, "from_config")) and not (
        isinstance(cls, type) and issubclass(cls, nn.Module)
    ):
        raise ModelLoadError(
            f"transformers.{class_name} is not a model class (a torch.nn.Module); "
            "use one such as ResNetModel or ConvNextForImageClassification."
        )
    if weights is not None:
        try:
            model = cls.from_pretrained(weights)
        except Exception as e:
            raise ModelLoadError(
                f"could not load hf:{class_name} weights {weights!r} ({type(e).__name__}: "
                f"{_first_line(e)}); give a local directory written by save_pretrained, or a "
                "Hub id on a machine with a network."
            ) from e
        return _check_built(model, f"hf:{class_name}")
    settings = _read_json_config(config_path) if config_path is not None else None
    try:
        if auto:
            if settings is None or "model_type" not in settings:
                raise ModelLoadError(
                    f"hf:{class_name} has no default config; give --config FILE.json with a "
                    "'model_type', or name a concrete class such as hf:ResNetModel."
                )
            config = transformers.AutoConfig.for_model(**settings)
            model = cls.from_config(config)
        else:
            config_class = cls.config_class
            config = config_class() if settings is None else config_class.from_dict(settings)
            model = cls(config)
    except ModelLoadError:
        raise
    except Exception as e:
        raise _builder_error(f"hf:{class_name}", e) from e
    return _check_built(model, f"hf:{class_name}")


def _check_built(model: Any, what: str) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"{what} built a {type(model).__name__}, not a torch.nn.Module.")
    return model


def _import_attr(spec: str) -> Any:
    """Import ``module:attr`` or ``path/to/file.py:attr``."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ModelLoadError(
            f"--model-class must look like 'package.module:ClassName' or 'file.py:ClassName', "
            f"got {spec!r}."
        )
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise ModelLoadError(f"model file not found: {module_name!r}.")
        mod_id = f"_featureviz_user_{abs(hash(str(path.resolve())))}"
        loader_spec = importlib.util.spec_from_file_location(mod_id, path)
        if loader_spec is None or loader_spec.loader is None:
            raise ModelLoadError(f"cannot import {module_name!r} as a Python file.")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[mod_id] = module
        try:
            loader_spec.loader.exec_module(module)
        except Exception as e:
            del sys.modules[mod_id]
            raise ModelLoadError(
                f"importing {module_name!r} failed: {type(e).__name__}: {e}"
            ) from e
    else:
        # A console script does not put the working directory on sys.path; user code usually
        # lives there, so look there too.
        cwd = os.getcwd()
        added = cwd not in sys.path
        if added:
            sys.path.insert(0, cwd)
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name and module_name.startswith(e.name):
                raise ModelLoadError(
                    f"cannot import module {module_name!r} (no module named {e.name!r}); run "
                    "from the directory that holds it or add it to PYTHONPATH."
                ) from e
            raise ModelLoadError(f"importing {module_name!r} failed: {e}") from e
        except Exception as e:
            raise ModelLoadError(
                f"importing {module_name!r} failed: {type(e).__name__}: {e}"
            ) from e
        finally:
            if added:
                sys.path.remove(cwd)
    try:
        return getattr(module, attr)
    except AttributeError:
        names = [n for n in dir(module) if not n.startswith("_")]
        close = difflib.get_close_matches(attr, names, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "."
        raise ModelLoadError(f"module {module_name!r} has no attribute {attr!r}{hint}") from None


def _build_user_model(spec: str) -> nn.Module:
    factory = _import_attr(spec)
    if not callable(factory):
        raise ModelLoadError(f"{spec!r} is a {type(factory).__name__}, not a class or function.")
    try:
        model = factory()
    except Exception as e:
        raise ModelLoadError(
            f"{spec}() failed: {type(e).__name__}: {e}. The class must be constructible with no "
            "arguments (wrap it in a function that passes them)."
        ) from e
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"{spec}() returned a {type(model).__name__}, not a torch.nn.Module.")
    return model


def _extract_state_dict(obj: Any, path: str) -> dict[str, torch.Tensor]:
    # Accept the two common wrappers: Lightning's {"state_dict": ...} and {"model": ...}.
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(
                isinstance(v, torch.Tensor) for v in inner.values()
            ):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj:
        raise ModelLoadError(
            f"{path!r} holds a {type(obj).__name__}, not a state dict; save it with "
            "torch.save(model.state_dict(), path)."
        )
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelLoadError(
            f"{path!r} is not a pure state dict: entry {bad[0]!r} is not a tensor; save it with "
            "torch.save(model.state_dict(), path)."
        )
    state = dict(obj)
    # DataParallel / DDP checkpoints prefix every key with "module.".
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _read_checkpoint(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    p = Path(path)
    if not p.exists():
        raise ModelLoadError(f"checkpoint not found: {str(p)!r}; check the path.")
    if p.is_dir():
        raise ModelLoadError(f"checkpoint {str(p)!r} is a directory, not a file.")
    if not p.is_file():  # /dev/zero, a pipe: torch.load could read forever
        raise ModelLoadError(f"checkpoint {str(p)!r} is not a regular file.")
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", str(e))
        if found is None:
            raise ModelLoadError(
                f"cannot read checkpoint {str(p)!r} with weights_only=True: it is corrupt, not "
                "written by torch.save, or pickles Python objects; save it with "
                "torch.save(model.state_dict(), path)."
            ) from e
        raise ModelLoadError(
            f"{str(p)!r} is not a pure state dict: it pickles Python objects (such as "
            f"{found.group(1)}), which weights_only=True refuses to run; save it with "
            "torch.save(model.state_dict(), path) instead."
        ) from e
    except Exception as e:  # a corrupt file can make the unpickler fail in any way
        raise ModelLoadError(
            f"cannot read checkpoint {str(p)!r} ({_first_line(e)}); is it a file written by "
            "torch.save?"
        ) from e
    return _extract_state_dict(obj, str(p))


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _few(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN_KEYS])
    return shown + (f" (+{len(keys) - _SHOWN_KEYS} more)" if len(keys) > _SHOWN_KEYS else "")


def load_state_dict_strictly(
    model: nn.Module, state: Mapping[str, torch.Tensor], source: str
) -> None:
    """Load ``state`` into ``model``; on any key or shape mismatch raise a one-line message.

    Which keys are missing or unexpected is what ``model.load_state_dict(strict=False)`` says,
    so modules that rename or skip keys while loading (their own ``_load_from_state_dict``)
    are judged as torch judges them. On a mismatch the model may hold part of ``state``:
    discard it.

    Raises:
        ModelLoadError: listing a few missing and unexpected keys, or the mismatched shapes.
    """
    expected = model.state_dict()
    differ = [
        k for k, v in state.items() if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in differ]
    # load_state_dict raises for a shape mismatch even with strict=False: load the rest first,
    # so that a checkpoint wrong in both ways is reported by its keys, as before.
    result = model.load_state_dict(
        {k: v for k, v in state.items() if k not in differ}, strict=False
    )
    missing = [k for k in result.missing_keys if k not in differ]
    unexpected = list(result.unexpected_keys)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys: {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys: {_few(unexpected)}")
        raise ModelLoadError(
            f"checkpoint {source!r} does not match {type(model).__name__}: "
            + "; ".join(parts)
            + ". Check that it was saved from the same architecture."
        )
    if shapes:
        raise ModelLoadError(
            f"checkpoint {source!r} does not match {type(model).__name__}: "
            f"{len(shapes)} tensors differ in shape (checkpoint vs model): {_few(shapes)}."
        )


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
    form, bare = _split_name(name) if name is not None else ("", "")
    if config is not None and form != "hf":
        raise ModelLoadError("--config is the config file of an hf:CLASS model; give hf:CLASS.")
    if config is not None and weights is not None:
        raise ModelLoadError(
            "--config and --weights both define an hf: model; from_pretrained brings its own "
            "config, so give only one."
        )
    member = None
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    own_size: int | tuple[int, int] | None = None
    if model_class is not None:
        model = _build_user_model(model_class)
        what = model_class
    elif form == "timm":
        model, data = _build_timm(bare, weights)
        mean = tuple(data.get("mean", mean))
        std = tuple(data.get("std", std))
        shape = data.get("input_size")
        if isinstance(shape, tuple) and len(shape) == 3:
            own_size = shape[1] if shape[1] == shape[2] else (shape[1], shape[2])
        what = str(name)
    elif form == "hf":
        model = _build_hf(bare, weights, config)
        image_size = getattr(getattr(model, "config", None), "image_size", None)
        if isinstance(image_size, int) and not isinstance(image_size, bool) and image_size > 0:
            own_size = image_size
        what = str(name)
    else:
        model, member = _build_torchvision(bare, weights, progress)
        what = bare
    if checkpoint is not None:
        state = _read_checkpoint(checkpoint)
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
