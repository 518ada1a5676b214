"""Sharded training: what is sharded, and reading whole filters with every rank taking part.

Under FSDP2 (``torch.distributed.fsdp.fully_shard``) a parameter is a ``DTensor`` holding one
shard; under FSDP1 (``FullyShardedDataParallel``) the convs' weights live in flat parameters
that are freed outside forward (``use_orig_params=False``) or are 1-d slices of them
(``use_orig_params=True``). Reading a whole filter bank therefore needs a collective, and a
collective must be issued by every rank at the same point, never by one rank alone (that hangs).

So the hooks and the background writer never touch a sharded weight. The monitor calls
:func:`gather_weights` before sampled steps only, from its constructor, ``step()`` or
``prepare()``, which every rank calls at the same points, with the same convs in the same order
on every rank; only the rank that writes keeps the result.

The public APIs used: DTensor's ``full_tensor()`` and FSDP1's ``summon_full_params``, one FSDP
unit at a time (``recurse=False``), so at most one unit's parameters are whole at once.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import nn

__all__ = ["Sharding", "gather_weights", "sharding_of", "weight_shape"]

#: ``"dtensor"``: parameters are DTensors (FSDP2's ``fully_shard``, tensor parallel);
#: ``"fsdp1"``: the model holds ``FullyShardedDataParallel`` units.
Sharding = Literal["dtensor", "fsdp1"]


@functools.cache  # a sampled step asks once per conv
def _dtensor_type() -> type | None:
    if not torch.distributed.is_available():
        return None
    try:
        from torch.distributed.tensor import DTensor  # torch >= 2.4
    except ImportError:  # pragma: no cover - torch 2.2 / 2.3
        try:
            from torch.distributed._tensor import DTensor
        except ImportError:
            return None
    return DTensor


@functools.cache
def _fsdp1_type() -> type | None:
    if not torch.distributed.is_available():
        return None
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
    except ImportError:  # pragma: no cover - builds without FSDP
        return None
    return FullyShardedDataParallel


def sharding_of(model: nn.Module) -> Sharding | None:
    """How ``model``'s parameters are sharded: ``"fsdp1"``, ``"dtensor"`` or ``None``."""
    fsdp1 = _fsdp1_type()
    if fsdp1 is not None and any(isinstance(m, fsdp1) for m in model.modules()):
        return "fsdp1"
    dtensor = _dtensor_type()
    if dtensor is not None and any(isinstance(p, dtensor) for p in model.parameters()):
        return "dtensor"
    return None


def weight_shape(module: nn.Module) -> tuple[int, ...] | None:
    """The shape of a conv's whole ``weight``, read from its attributes, so a sharded weight (a
    DTensor shard, FSDP1's freed or flattened view) is never touched; ``None`` if unknown."""
    attrs: Any = module  # a conv's attributes are ints and tuples, not modules
    try:
        out, inp, groups = int(attrs.out_channels), int(attrs.in_channels), int(attrs.groups)
        kernel = tuple(int(k) for k in attrs.kernel_size)
    except (AttributeError, TypeError):
        w = getattr(module, "weight", None)
        return tuple(w.shape) if isinstance(w, torch.Tensor) else None
    if getattr(module, "transposed", False):
        return (inp, out // groups, *kernel)
    return (out, inp // groups, *kernel)


def _check_unsharded(name: str, conv: nn.Module, w: torch.Tensor) -> None:
    """A model sharded after the monitor was made would be read without the collectives it
    needs (and, under FSDP1, from freed memory): say so instead."""
    dtensor = _dtensor_type()
    sharded = dtensor is not None and isinstance(w, dtensor)
    if not sharded and w.numel():
        shape = weight_shape(conv)
        flattened = shape is not None and w.dim() == 1 and len(shape) > 1  # FSDP1's 1-d view
        sharded = flattened or w.untyped_storage().nbytes() == 0  # FSDP1's freed storage
    if sharded:
        raise RuntimeError(
            f"the weight of conv {name!r} is sharded now, but the model was not sharded when "
            "the FeatureMonitor was created. Create the monitor after fully_shard(...) or "
            "FullyShardedDataParallel(...), on every rank."
        )


def _fsdp1_owners(root: nn.Module, fsdp1: type) -> dict[int, nn.Module]:
    """``id(module) -> `` the innermost FSDP1 unit that holds it, for every module of ``root``."""
    owners: dict[int, nn.Module] = {}
    for unit in root.modules():  # pre-order: inner units come later and win
        if isinstance(unit, fsdp1):
            for m in unit.modules():
                owners[id(m)] = unit
    return owners


@torch.no_grad()
def gather_weights(
    root: nn.Module,
    convs: Mapping[str, nn.Module],
    *,
    keep: bool,
    sharding: Sharding | None | Literal["auto"] = "auto",
) -> dict[str, torch.Tensor]:
    """The whole ``weight`` of each conv in ``convs``, in its own layout, detached.

    **Every rank must call this at the same point with the same ``convs`` in the same order**:
    sharded weights are gathered with collectives. Weights that are not sharded are read as
    they are, with no collective.

    Args:
        root: the model as trained (the FSDP1 root wrapper, or the ``fully_shard``-ed model).
        convs: the convs to read, by name.
        keep: whether this rank keeps the result; the others take part and return ``{}``.
        sharding: what :func:`sharding_of` says of ``root``, when the caller knows it already
            (``None``: nothing is sharded, so no collective and no module walk).

    Returns:
        ``{name: weight}`` on this rank's device (FSDP1 weights are copied out of the
        temporarily whole flat parameter), or ``{}`` when ``keep`` is false.
    """
    if sharding == "auto":
        sharding = sharding_of(root)
    out: dict[str, torch.Tensor] = {}
    fsdp1 = _fsdp1_type() if sharding == "fsdp1" else None
    owners = _fsdp1_owners(root, fsdp1) if fsdp1 is not None else {}
    dtensor = _dtensor_type() if sharding == "dtensor" else None

    def read(name: str, conv: nn.Module) -> None:
        w = getattr(conv, "weight", None)
        if sharding is None and isinstance(w, torch.Tensor):
            _check_unsharded(name, conv, w)
        if dtensor is not None and isinstance(w, dtensor):
            w = w.full_tensor()  # type: ignore[attr-defined]  # a collective: all ranks
        elif keep and isinstance(w, torch.Tensor) and id(conv) in owners:
            w = w.clone()  # the whole flat parameter is freed when the unit reshards
        if keep and isinstance(w, torch.Tensor) and w.numel():
            out[name] = w.detach()

    # FSDP1: one unit at a time, in the order the units are first met (the same on every rank).
    # The root unit comes first, watched convs or not: FSDP1 initialises itself lazily from
    # the first unit it meets, which must be the root (a monitor reads the filters of its
    # first sampled step before the first forward).
    units: dict[int, tuple[nn.Module, list[tuple[str, nn.Module]]]] = {}
    if fsdp1 is not None and isinstance(root, fsdp1):
        units[id(root)] = (root, [])
    for name, conv in convs.items():
        owner = owners.get(id(conv))
        if owner is None:
            read(name, conv)
        else:
            units.setdefault(id(owner), (owner, []))[1].append((name, conv))
    assert fsdp1 is not None or not units
    for unit, members in units.values():
        with fsdp1.summon_full_params(unit, recurse=False, writeback=False):  # type: ignore[union-attr]
            for name, conv in members:
                read(name, conv)
    return {name: out[name] for name in convs if name in out}
