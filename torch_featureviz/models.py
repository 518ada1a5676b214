"""Build the model to visualise: a torchvision model by name, or the user's own class.

Weights come from one of three places:

- ``weights``: a torchvision weights name such as ``"IMAGENET1K_V2"`` or ``"DEFAULT"`` (or the
  full ``"ResNet50_Weights.IMAGENET1K_V2"``). torchvision downloads the file into
  ``$TORCH_HOME/hub/checkpoints`` the first time; without a network that fails with a plain
  message saying so.
- ``checkpoint``: a file holding a *state dict*, loaded with ``torch.load(weights_only=True)``,
  so it can never run code. A whole pickled model is refused; save ``model.state_dict()``.
- neither: random initial weights (what torchvision builds with ``weights=None``).

The preprocessing that goes with a model (:attr:`LoadedModel.transform`) is the weights' own
``.transforms()`` when weights are given, otherwise the documented default,
:func:`torch_featureviz.images.preprocess` (resize the short side, centre-crop to a square,
ImageNet mean/std).

Every user error raises :class:`ModelLoadError` (a ``ValueError``) with a one-line message.
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

from torch_featureviz.images import preprocess

__all__ = ["LoadedModel", "ModelLoadError", "load_model"]

#: Keys listed in a mismatch message, per kind (missing / unexpected).
_SHOWN_KEYS = 4


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
    """

    model: nn.Module
    transform: Callable[[torch.Tensor], torch.Tensor]
    description: str
    weights: Any = None


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


def _build_torchvision(name: str, weights: str | None, progress: bool) -> tuple[nn.Module, Any]:
    import torchvision

    if name not in torchvision.models.list_models():
        raise _unknown_model(name)
    member = resolve_weights(name, weights) if weights is not None else None
    if member is not None:
        _ensure_downloaded(member, progress)
    try:
        model = torchvision.models.get_model(name, weights=member, progress=progress)
    except (OSError, ConnectionError) as e:
        raise _download_error(member, e) from e
    except RuntimeError as e:
        # torch.hub raises RuntimeError for a corrupt or partially downloaded file.
        if member is None:
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"could not load {member}: {first}") from e
    return model, member


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

    Raises:
        ModelLoadError: listing a few missing and unexpected keys, or the mismatched shapes.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
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
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if tuple(state[k].shape) != tuple(v.shape)
    ]
    if shapes:
        raise ModelLoadError(
            f"checkpoint {source!r} does not match {type(model).__name__}: "
            f"{len(shapes)} tensors differ in shape (checkpoint vs model): {_few(shapes)}."
        )
    model.load_state_dict(state, strict=True)


def _default_transform(size: int | tuple[int, int]) -> Callable[[torch.Tensor], torch.Tensor]:
    if isinstance(size, tuple):
        h, w = size

        def transform(image: torch.Tensor) -> torch.Tensor:
            from torchvision.transforms import functional as tvf

            from torch_featureviz.images import IMAGENET_MEAN, IMAGENET_STD

            c = image.shape[0]
            x = tvf.resize(image.float(), [h, w], antialias=True)
            x = tvf.normalize(x, list(IMAGENET_MEAN)[:c], list(IMAGENET_STD)[:c])
            return x.unsqueeze(0)

        return transform

    def square(image: torch.Tensor) -> torch.Tensor:
        return preprocess(image, size=size)

    return square


def _weights_transform(weights: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    tf = weights.transforms()

    def transform(image: torch.Tensor) -> torch.Tensor:
        return tf(image).unsqueeze(0)

    return transform


def load_model(
    name: str | None = None,
    *,
    weights: str | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    model_class: str | None = None,
    input_size: int | tuple[int, int] = 224,
    progress: bool = False,
) -> LoadedModel:
    """Build a model by torchvision name or from the user's class, with optional weights.

    Args:
        name: a torchvision model name (``"resnet50"``); omit it when ``model_class`` is given.
        weights: a torchvision weights name (``"IMAGENET1K_V2"``, ``"DEFAULT"``); downloaded by
            torchvision if not cached. Only with ``name``.
        checkpoint: a state-dict file, loaded with ``weights_only=True``; keys must match.
        model_class: ``"package.module:Class"`` or ``"file.py:Class"``: the user's own
            ``nn.Module`` class (or a function returning one), called with no arguments.
        input_size: side of the square crop (or ``(H, W)``, resized without crop) of the default
            preprocessing; ignored when ``weights`` bring their own transforms.
        progress: show a download progress bar on stderr when weights are fetched.

    Returns:
        A :class:`LoadedModel`: the model in eval mode and its preprocessing.

    Raises:
        TypeError: an argument has the wrong type.
        ModelLoadError: unknown model or weights name (listing valid ones), failed download,
            missing or unreadable checkpoint, a pickle that is not a pure state dict, or keys that
            do not match (listing a few missing and unexpected ones).

    Example::

        >>> loaded = load_model("resnet18", input_size=64)
        >>> loaded.description, loaded.model.training
        ('resnet18 (random weights)', False)
    """
    for value, label in ((name, "name"), (weights, "weights"), (model_class, "model_class")):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{label} must be a str or None, got {type(value).__name__}.")
    if checkpoint is not None and not isinstance(checkpoint, (str, os.PathLike)):
        raise TypeError(f"checkpoint must be a path or None, got {type(checkpoint).__name__}.")
    sizes = input_size if isinstance(input_size, tuple) else (input_size,)
    if not sizes or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes):
        raise ValueError(f"input_size must be a positive int or (H, W), got {input_size!r}.")
    if (name is None) == (model_class is None):
        raise ModelLoadError(
            "give either a torchvision model name or --model-class module:Class (exactly one)."
        )
    if weights is not None and checkpoint is not None:
        raise ModelLoadError("--weights and --checkpoint both set the weights; give only one.")
    if weights is not None and model_class is not None:
        raise ModelLoadError(
            "--weights names torchvision weights and needs a torchvision model name; for your "
            "own class use --checkpoint FILE."
        )
    member = None
    if model_class is not None:
        model = _build_user_model(model_class)
        what = model_class
    else:
        assert name is not None
        model, member = _build_torchvision(name, weights, progress)
        what = name
    if checkpoint is not None:
        state = _read_checkpoint(checkpoint)
        load_state_dict_strictly(model, state, os.fspath(checkpoint))
        source = f"checkpoint {os.fspath(checkpoint)}"
    elif member is not None:
        source = f"weights {member}"
    else:
        source = "random weights"
    model.eval()
    transform = _weights_transform(member) if member is not None else _default_transform(input_size)
    return LoadedModel(model, transform, f"{what} ({source})", member)
