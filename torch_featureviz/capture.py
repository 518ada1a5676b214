"""Hook mode: capture the true output of every selected Conv2d during a real forward pass."""

from __future__ import annotations

import functools
import sys
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd
from torch.utils.hooks import RemovableHandle

from torch_featureviz._validation import (
    check_image_batch,
    check_module,
    check_non_negative_int,
    check_positive_int,
)
from torch_featureviz.discovery import find_conv_layers, unwrap_model

__all__ = ["FeatureCapture", "capture_feature_maps", "preserved_state"]


# Private but long-standing; without it buffers are simply never reused.
_storage_use_count = getattr(torch._C, "_storage_Use_Count", None)


def _refcounts(maps: dict[str, torch.Tensor]) -> tuple[int, dict[str, tuple[int, int]]]:
    """Python references to ``maps`` and, per tensor, (Python references, storage users).

    The storage count sees what the Python count cannot: views and ``.numpy()`` arrays that
    share the tensor's memory.
    """
    assert _storage_use_count is not None
    return sys.getrefcount(maps), {
        k: (sys.getrefcount(t), _storage_use_count(t.untyped_storage()._cdata))
        for k, t in maps.items()
    }


def _calibrate() -> tuple[int, tuple[int, int]]:
    """The counts of a dict and a tensor held by nobody but a local, measured through the same
    code path as in ``FeatureCapture._end_pass``, so the baseline is right on any CPython."""
    gil = getattr(sys, "_is_gil_enabled", None)
    if _storage_use_count is None or (gil is not None and not gil()):
        return -1, (-1, -1)  # free-threaded CPython: reference counts are not exact there
    retired = {"probe": torch.empty(1)}
    dict_count, counts = _refcounts(retired)
    return dict_count, counts["probe"]


_DICT_BASE, _TENSOR_BASE = _calibrate()


def _compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and hasattr(compiler, "is_compiling"):
        return bool(compiler.is_compiling())
    return bool(torch._dynamo.is_compiling())  # torch 2.2


def _unreferenced(
    retired: dict[str, torch.Tensor], dict_count: int, counts: dict[str, tuple[int, int]]
) -> dict[str, torch.Tensor]:
    """The tensors of a replaced ``maps`` dict that nobody outside this capture references.

    ``dict_count, counts`` come from ``_refcounts(retired)`` called on a local, as in
    :func:`_calibrate`. Their memory can hold the next pass's copies: allocating ~14 MB of
    fresh buffers every pass (resnet50) costs page faults that show in the forward time. A dict
    or tensor that the user (or a monitor's queue) still holds has a higher reference count and
    is never reused.
    """
    if dict_count > _DICT_BASE:
        return {}
    refs, users = _TENSOR_BASE
    return {k: retired[k] for k, (r, u) in counts.items() if r <= refs and u <= users}



def _spatial_dims(module: nn.Module) -> int:
    """How many spatial dims a conv's output has: one per kernel dim."""
    kernel = getattr(module, "kernel_size", None)
    return len(kernel) if isinstance(kernel, tuple) else 2


class FeatureCapture:
    """Forward hooks on a model's Conv2d layers that keep one sample's activations.

    Inside the ``with`` block, every forward pass of ``model`` (yours, in training or inference,
    at any batch size) fills :attr:`maps` with the output of each selected conv for sample
    ``sample``: a detached ``float32`` tensor of shape ``(C, H, W)`` with
    ``C <= max_channels``. Each complete pass replaces the previous one, so ``maps`` always holds
    the latest pass; a module called twice in one pass is kept twice, as ``name`` and ``name#1``.
    If a forward raises, ``maps`` keeps the last *complete* pass and the partial one is dropped.

    The hooks only select and copy (on the tensor's own device, no host sync), so the copy is
    taken before any in-place op downstream (``ReLU(inplace=True)``) can overwrite it, and the
    model's outputs are bit-identical with and without a capture.

    Args:
        model: any ``nn.Module`` with at least one Conv2d; DataParallel, DDP and
            ``torch.compile`` wrappers are looked through. Register before ``torch.compile`` and
            gate with :attr:`enabled` rather than re-entering every step.
        layers: qualified conv names or ``fnmatch`` globs; ``None`` selects every Conv2d.
        max_channels: keep the first ``max_channels`` channels; ``None`` keeps all.
        sample: index in the batch of the sample to keep.

    Raises:
        TypeError, ValueError: bad arguments, before any hook is registered.

    Example::

        >>> import torch, torchvision
        >>> model = torchvision.models.resnet18().eval()
        >>> with FeatureCapture(model, max_channels=8) as cap:
        ...     _ = model(torch.randn(2, 3, 64, 64))
        >>> cap.maps["layer1.0.conv1"].shape
        torch.Size([8, 16, 16])
    """

    def __init__(
        self,
        model: nn.Module,
        layers: str | Iterable[str] | None = None,
        *,
        max_channels: int | None = 64,
        sample: int = 0,
    ) -> None:
        check_module(model)
        self.max_channels = check_positive_int(max_channels, "max_channels", allow_none=True)
        self.sample = check_non_negative_int(sample, "sample")
        self.model = model
        self.root = unwrap_model(model)
        self.layers: dict[str, _ConvNd] = find_conv_layers(self.root, include=layers)
        self.maps: dict[str, torch.Tensor] = {}
        #: When False the hooks return at once; toggle it instead of removing hooks (keeps
        #: compiled graphs valid and makes unsampled steps free).
        self.enabled = True
        #: Number of complete forward passes captured since the capture was attached.
        self.passes = 0
        self._handles: dict[str, RemovableHandle] = {}
        self._pending: dict[str, torch.Tensor] | None = None
        #: Buffers of the pass before the published one that nobody else holds (see
        #: _unreferenced); the next pass copies into them instead of allocating.
        self._spares: dict[str, torch.Tensor] = {}
        self._device: torch.device | None = None
        if isinstance(model, nn.DataParallel) and model.device_ids:
            # Replicas share hook dicts and run in threads; keep only the first replica's chunk
            # so they cannot overwrite each other (sample indexes that chunk).
            self._device = torch.device("cuda", model.device_ids[0])

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def attached(self) -> bool:
        """Whether the hooks are currently registered."""
        return bool(self._handles)

    def attach(self) -> FeatureCapture:
        """Register the hooks (what ``__enter__`` does) and return ``self``."""
        if self._handles:
            raise RuntimeError("This FeatureCapture is already attached; use it once at a time.")
        try:
            self._handles["<root-pre>"] = self.root.register_forward_pre_hook(self._start_pass)
            for name, module in self.layers.items():
                self._handles[name] = module.register_forward_hook(
                    functools.partial(self._hook, name)
                )
            self._handles["<root-post>"] = self.root.register_forward_hook(
                self._end_pass, always_call=True
            )
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        """Remove every hook. Idempotent; ``maps`` is kept."""
        handles, self._handles = self._handles, {}
        for handle in handles.values():
            handle.remove()
        self._pending = None

    def __enter__(self) -> FeatureCapture:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __del__(self) -> None:  # safety net only; use the context manager
        try:
            self.remove()
        except Exception:
            pass

    def __repr__(self) -> str:
        return (
            f"FeatureCapture({type(self.root).__name__}, {len(self.layers)} layers, "
            f"max_channels={self.max_channels}, sample={self.sample}, "
            f"attached={self.attached}, enabled={self.enabled})"
        )

    # -- hooks -------------------------------------------------------------------------------
    def _start_pass(self, module: nn.Module, args: Any) -> None:
        if self.enabled:
            self._pending = {}

    def _end_pass(self, module: nn.Module, args: Any, output: Any) -> None:
        # Registered with always_call=True, so it also runs when the forward raised; then
        # output is None and the partial pass is dropped (maps keeps the last complete one).
        pending, self._pending = self._pending, None
        if output is None and sys.exc_info()[0] is not None:
            return
        if self.enabled and pending is not None:
            retired, self.maps = self.maps, pending
            self.passes += 1
            if _DICT_BASE < 0 or _compiling():
                self._spares = {}
            else:
                dict_count, counts = _refcounts(retired)  # same call depth as _calibrate()
                self._spares = _unreferenced(retired, dict_count, counts)

    def _hook(self, name: str, module: nn.Module, args: Any, output: Any) -> None:
        if not self.enabled or not isinstance(output, torch.Tensor):
            return
        if self._device is not None and output.device != self._device:
            return
        target = self._pending
        if target is None:
            # A submodule was called on its own (no root pass in flight): publish directly.
            self.maps[name] = self._select(output, spatial=_spatial_dims(module))
            return
        key = name
        if key in target:
            calls = 1
            while f"{name}#{calls}" in target:
                calls += 1
            key = f"{name}#{calls}"
        target[key] = self._select(
            output, self._spares.pop(key, None), spatial=_spatial_dims(module)
        )

    def _select(
        self, output: torch.Tensor, spare: torch.Tensor | None = None, *, spatial: int = 2
    ) -> torch.Tensor:
        out = output.detach()
        if out.dim() == spatial + 2:
            if self.sample >= out.shape[0]:
                raise ValueError(
                    f"FeatureCapture(sample={self.sample}) is outside the batch of "
                    f"{out.shape[0]}; choose 0 <= sample < {out.shape[0]}."
                )
            out = out[self.sample]
        elif out.dim() != spatial + 1:  # an unbatched conv gives (C, *spatial)
            raise ValueError(
                f"expected a conv output of {spatial + 1} or {spatial + 2} dims, got "
                f"{tuple(out.shape)}."
            )
        if self.max_channels is not None:
            out = out[: self.max_channels]
        # Always a copy: the conv output may be overwritten in place after the hook returns.
        if spare is not None and spare.shape == out.shape and spare.device == out.device:
            return spare.copy_(out)
        return out.to(dtype=torch.float32, memory_format=torch.contiguous_format, copy=True)


@contextmanager
def preserved_state(model: nn.Module, *, eval_mode: bool = True) -> Iterator[None]:
    """Run a probe pass without changing ``model``: restores every module's train flag.

    With ``eval_mode`` the model is put in eval mode, so BatchNorm running statistics are not
    updated and dropout draws no random numbers. The CPU and CUDA RNG states are restored too,
    for models whose eval mode still samples.
    """
    flags = [(m, m.training) for m in model.modules()]
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        if eval_mode:
            model.eval()
        yield
    finally:
        for m, flag in flags:
            m.training = flag
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)


def first_conv_in_channels(layers: Mapping[str, _ConvNd]) -> int:
    """The input channels expected by the first discovered conv."""
    return next(iter(layers.values())).in_channels


def capture_feature_maps(
    model: nn.Module,
    image: torch.Tensor,
    layers: str | Iterable[str] | None = None,
    *,
    max_channels: int | None = 64,
    sample: int = 0,
) -> dict[str, torch.Tensor]:
    """Run one probe forward pass and return hook-mode maps, leaving the model unchanged.

    The pass runs under ``torch.no_grad()`` in eval mode; the train/eval flags and RNG state are
    restored afterwards, so BatchNorm statistics and parameters are bit-for-bit as before.

    Args:
        model: the CNN.
        image: ``(N, C, H, W)`` or ``(C, H, W)`` float tensor on the model's device.
        layers, max_channels, sample: as for :class:`FeatureCapture`.

    Returns:
        ``{layer name: (C, H, W) float32 tensor}`` in call order.
    """
    cap = FeatureCapture(model, layers, max_channels=max_channels, sample=sample)
    x = check_image_batch(
        image, in_channels=first_conv_in_channels(find_conv_layers(cap.root)), sample=sample
    )
    with preserved_state(cap.root), torch.no_grad(), cap:
        try:
            model(x)
        except Exception as e:
            raise RuntimeError(
                f"the forward pass of {type(cap.root).__name__} failed on an input of shape "
                f"{tuple(x.shape)}: {e}"
            ) from e
    return cap.maps
