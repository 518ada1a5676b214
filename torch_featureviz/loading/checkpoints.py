"""Read a checkpoint as a pure state dict (``weights_only=True``) and load it strictly, with a
one-line message naming a few missing, unexpected or mis-shaped keys.

Example::

    >>> import tempfile, torch
    >>> from torch import nn
    >>> path = tempfile.mkdtemp() + "/conv.pt"
    >>> torch.save({"module.weight": torch.zeros(2, 1, 1, 1)}, path)  # a DDP-style prefix
    >>> sorted(read_checkpoint(path))
    ['weight']
    >>> load_state_dict_strictly(nn.Conv2d(1, 2, 1, bias=False), read_checkpoint(path), path)
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torch_featureviz.loading.errors import ModelLoadError, first_line

__all__ = ["load_state_dict_strictly", "read_checkpoint"]

#: Keys listed in a mismatch message, per kind (missing / unexpected).
_SHOWN_KEYS = 4


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


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
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
            f"cannot read checkpoint {str(p)!r} ({first_line(e)}); is it a file written by "
            "torch.save?"
        ) from e
    return _extract_state_dict(obj, str(p))



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
