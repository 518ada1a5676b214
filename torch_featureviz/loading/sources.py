"""Build a model from its name or the user's class: torchvision builders and weights, ``timm:``,
``hf:`` (with an optional JSON config) and ``module:Class`` / ``file.py:Class``.

Each builder raises :class:`~torch_featureviz.loading.errors.ModelLoadError` with a one-line
message; :mod:`torch_featureviz.loading.models` picks the builder and adds checkpoints and
preprocessing.

Example::

    >>> model, member = build_torchvision("resnet18", None, progress=False)
    >>> type(model).__name__, member
    ('ResNet', None)
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torch_featureviz.loading.errors import ModelLoadError, first_line
from torch_featureviz.loading.images import read_capped

__all__ = ["build_hf", "build_timm", "build_torchvision", "build_user_model", "resolve_weights"]

#: A model config is a small JSON file; anything larger (``/dev/zero``) is refused unread.
_MAX_CONFIG_BYTES = 16 * 2**20


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
    return ModelLoadError(f"building {what} failed: {type(e).__name__}: {first_line(e)}")


def build_torchvision(name: str, weights: str | None, progress: bool) -> tuple[nn.Module, Any]:
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
        raise ModelLoadError(f"could not load {member}: {first_line(e)}") from e
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


def build_timm(name: str, weights: str | None) -> tuple[nn.Module, dict[str, Any]]:
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
                f"{first_line(e)}); without a network, pass --checkpoint FILE instead."
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
        raise ModelLoadError(f"config {str(p)!r} is not valid JSON: {first_line(e)}.") from e
    if not isinstance(config, dict):
        raise ModelLoadError(
            f"config {str(p)!r} holds a JSON {type(config).__name__}, not an object of settings."
        )
    return config


def build_hf(
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
                f"{first_line(e)}); give a local directory written by save_pretrained, or a "
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


def build_user_model(spec: str) -> nn.Module:
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
