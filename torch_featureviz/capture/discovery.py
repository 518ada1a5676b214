"""Find a model's conv and linear layers by qualified name, and the original ``Extractor`` view.

Discovery walks ``model.named_modules()``, so it sees every module however deeply it is nested:
``nn.Sequential``, ``nn.ModuleList``, ``nn.ModuleDict`` and user-defined blocks alike. The order is
PyTorch's own: depth-first, in the order submodules were registered (for almost every model, the
order they are assigned in ``__init__``). A module reachable under two names is listed once, under
the first name.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.lazy import LazyModuleMixin

from torch_featureviz._validation import check_module, select_names
from torch_featureviz.naming import strip_wrappers

__all__ = ["CONV_TYPES", "Extractor", "find_conv_layers", "find_linear_layers", "unwrap_model"]


def unwrap_model(model: nn.Module) -> nn.Module:
    """Return the user's model inside DataParallel, DistributedDataParallel or ``torch.compile``.

    Names are then the ones the user wrote (``layer1.0.conv1``, not ``module.layer1.0.conv1``).
    Hooks registered on the unwrapped modules fire through the wrapper, because the wrapper calls
    these very modules (DataParallel replicas share their hook dicts).

    Example::

        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(3, 4, 3))
        >>> unwrap_model(nn.DataParallel(model)) is model
        True
    """
    seen = 0
    while seen < 8:  # wrappers can nest (a compiled DDP model); 8 is far more than any real stack
        seen += 1
        inner = getattr(model, "_orig_mod", None)  # torch.compile's OptimizedModule
        if isinstance(inner, nn.Module):
            model = inner
            continue
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
            continue
        break
    return model


def is_compiled(model: nn.Module) -> bool:
    """Whether ``torch.compile`` wraps ``model`` or any module inside it, or compiled one in
    place (``module.compile()``). A wrapper is among its own ``modules()``, and so is a
    compiled module inside DataParallel or DDP."""
    return any(
        isinstance(getattr(m, "_orig_mod", None), nn.Module)
        or getattr(m, "_compiled_call_impl", None) is not None
        for m in model.modules()
    )


#: The convolution classes discovery covers; their subclasses (timm's ``Conv2dSame`` and
#: ``ScaledStdConv2d``, QAT convs, ...) are included.
CONV_TYPES: tuple[type[nn.Module], ...] = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)

#: The spelling ``types=`` accepts for each class (case and underscores are ignored).
_TYPE_NAMES: dict[str, type[nn.Module]] = {cls.__name__.lower(): cls for cls in CONV_TYPES}

ConvTypes = type[nn.Module] | str | Iterable[type[nn.Module] | str]


def _check_types(types: ConvTypes | None) -> tuple[type[nn.Module], ...]:
    """``types=`` as a tuple of conv classes, or the reason it is wrong."""
    if types is None:
        return CONV_TYPES
    items: list[object]
    if isinstance(types, (str, type)):
        items = [types]
    else:
        try:
            items = list(types)
        except TypeError:
            raise TypeError(
                "types must be a conv class, a name such as 'conv2d', or a tuple of them, "
                f"got {type(types).__name__}."
            ) from None
        if not items:
            raise ValueError("types is empty; pass None to keep every conv type.")
    known = ", ".join(repr(n) for n in _TYPE_NAMES)
    out: list[type[nn.Module]] = []
    for item in items:
        if isinstance(item, str):
            cls = _TYPE_NAMES.get(item.lower().replace("_", ""))
            if cls is None:
                raise ValueError(
                    f"types: unknown conv type name {item!r}; expected one of {known}."
                )
        elif isinstance(item, type):
            if not issubclass(item, CONV_TYPES):
                raise ValueError(
                    f"types: {item.__name__} is not a convolution class; expected nn.Conv1d, "
                    "nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d/2d/3d or a subclass."
                )
            cls = item
        else:
            raise TypeError(
                f"types entries must be conv classes or names such as 'conv2d', got "
                f"{type(item).__name__}."
            )
        out.append(cls)
    return tuple(out)


def _quantized_conv_types() -> tuple[type[nn.Module], ...]:
    # Int8 convs (torch.ao.nn.quantized, and the intrinsic/dynamic ones that subclass them) are
    # not nn.Conv subclasses: their weights are packed and their outputs quantized tensors.
    from torch.ao.nn import quantized as nnq

    return (
        nnq.Conv1d,
        nnq.Conv2d,
        nnq.Conv3d,
        nnq.ConvTranspose1d,
        nnq.ConvTranspose2d,
        nnq.ConvTranspose3d,
    )


def _count_by_type(modules: Iterable[nn.Module]) -> str:
    counts: dict[str, int] = {}
    for m in modules:
        counts[type(m).__name__] = counts.get(type(m).__name__, 0) + 1
    return ", ".join(f"{n} {k}" for k, n in counts.items())


def _no_conv_message(model: nn.Module, types: tuple[type[nn.Module], ...]) -> str:
    name = type(model).__name__
    quantized = [
        (n, m) for n, m in model.named_modules() if isinstance(m, _quantized_conv_types())
    ]
    if quantized:
        return (
            f"{name} has {len(quantized)} int8 quantized conv layers (first: "
            f"{quantized[0][0]!r}, {type(quantized[0][1]).__module__}."
            f"{type(quantized[0][1]).__name__}) and no float conv: quantized convs are not "
            "supported. Visualise the float model, or the QAT model before "
            "torch.ao.quantization.convert() (QAT convs are float conv subclasses and work)."
        )
    others = [m for m in model.modules() if isinstance(m, CONV_TYPES)]
    if others:
        wanted = ", ".join(t.__name__ for t in types)
        return (
            f"{name} has no conv layers of the types asked for ({wanted}); it has "
            f"{_count_by_type(others)}. Pass types=None to keep every conv type."
        )
    return (
        f"{name} has no conv layers (searched {sum(1 for _ in model.modules())} modules for "
        "Conv1d, Conv2d, Conv3d and ConvTranspose1d/2d/3d). torch_featureviz visualises "
        "convolutions; check that you passed the CNN itself."
    )


def _find(
    model: nn.Module,
    kind: tuple[type[nn.Module], ...],
    include: str | Iterable[str] | None,
    exclude: str | Iterable[str] | None,
    what: str,
) -> dict[str, nn.Module]:
    model = unwrap_model(check_module(model))
    found = {strip_wrappers(n): m for n, m in model.named_modules() if isinstance(m, kind)}
    if not found:
        if what == "conv layer":
            raise ValueError(_no_conv_message(model, kind))
        raise ValueError(
            f"{type(model).__name__} has no {kind[0].__name__} layers (searched "
            f"{sum(1 for _ in model.modules())} modules)."
        )
    names = select_names(list(found), include=include, exclude=exclude, what=what)
    return {name: found[name] for name in names}


def find_conv_layers(
    model: nn.Module,
    *,
    include: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = None,
    types: ConvTypes | None = None,
) -> dict[str, _ConvNd]:
    """Return every convolution of ``model`` by qualified name.

    By default that is every ``nn.Conv1d``, ``nn.Conv2d``, ``nn.Conv3d`` and
    ``nn.ConvTranspose1d/2d/3d``, subclasses included (timm's ``Conv2dSame`` and
    ``ScaledStdConv2d``, QAT convs, ...). Lazy convs count once materialised.

    Note that a transposed conv's ``weight`` is laid out ``(in, out / groups, *k)``, not
    ``(out, in / groups, *k)`` as for a conv; :func:`~torch_featureviz.make_filter_grid` knows
    both.

    Args:
        model: any ``nn.Module``; DataParallel, DDP and ``torch.compile`` wrappers are looked
            through, so names never carry a ``module.`` prefix, and FSDP1's and
            ``checkpoint_wrapper``'s segments (``_fsdp_wrapped_module.``) are left out.
        include: qualified names or ``fnmatch`` globs (``"layer1.*"``) to keep. Each entry must
            match at least one conv.
        exclude: globs to drop after ``include`` is applied.
        types: keep only these conv types (subclasses included): a class such as
            ``nn.Conv2d``, a name such as ``"conv2d"`` or ``"conv_transpose2d"`` (case and
            underscores ignored), or a tuple of them. ``None`` keeps every type.

    Returns:
        An ordered ``dict`` from qualified name to module, in ``named_modules()`` order
        (depth-first, registration order).

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, or ``types`` is not a class, a name or a
            sequence of them.
        ValueError: the model has no conv of the requested types (int8 quantized models get
            their own message), a pattern matches nothing (the message lists the closest
            names), ``types`` names something that is not a conv, or a selected lazy conv has
            not been materialised yet.

    Example::

        >>> import torchvision
        >>> convs = find_conv_layers(torchvision.models.resnet50())
        >>> len(convs), next(iter(convs))
        (53, 'conv1')
        >>> len(find_conv_layers(torchvision.models.video.r3d_18(), types="conv3d"))
        20
    """
    kinds = _check_types(types)
    found = _find(model, kinds, include, exclude, "conv layer")
    for name, module in found.items():
        if isinstance(module, LazyModuleMixin) and module.has_uninitialized_params():
            raise ValueError(
                f"conv layer {name!r} is a {type(module).__name__} whose weights are not "
                "materialised yet, so its shape is unknown. Run one forward pass first "
                "(model(example_input)), then discover or attach."
            )
    quantized = [m for m in unwrap_model(model).modules() if isinstance(m, _quantized_conv_types())]
    if quantized:
        warnings.warn(
            f"{len(quantized)} int8 quantized conv layers are skipped: quantized convs are not "
            "supported (only the float convs of this partly quantized model are returned).",
            stacklevel=2,
        )
    return found  # type: ignore[return-value]


def find_linear_layers(
    model: nn.Module,
    *,
    include: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = None,
) -> dict[str, nn.Linear]:
    """Like :func:`find_conv_layers`, for ``nn.Linear``; raises ``ValueError`` if there is none.

    Example::

        >>> from torch import nn
        >>> list(find_linear_layers(nn.Sequential(nn.Flatten(), nn.Linear(4, 2), nn.Linear(2, 1))))
        ['1', '2']
    """
    return _find(model, (nn.Linear,), include, exclude, "linear layer")  # type: ignore[return-value]


def conv_weights(model_or_layers: Any, layers: Any = None, *, what: str = "model_or_layers") -> Any:
    """A model's convs (filtered by ``layers`` globs), or a ``{name: conv or weight}`` mapping
    as given; anything else is a TypeError."""
    if isinstance(model_or_layers, nn.Module):
        return find_conv_layers(model_or_layers, include=layers)
    if isinstance(model_or_layers, Mapping):
        return model_or_layers
    raise TypeError(
        f"{what} must be a model or a {{name: conv or weight}} mapping, got "
        f"{type(model_or_layers).__name__}."
    )


def _resnet_block_types() -> tuple[type[nn.Module], ...]:
    from torchvision.models import resnet

    return (resnet.Bottleneck, resnet.BasicBlock)


class Extractor:
    """The original article's layer extractor, repaired to work on any architecture.

    It keeps the article's attributes and ``info()`` keys. Unlike the original, which recursed
    only into ``nn.Sequential`` and torchvision's ``Bottleneck``/``BasicBlock``, it walks every
    module, so MobileNet, DenseNet, EfficientNet, ConvNeXt and custom blocks are complete.

    A conv whose qualified name has a component equal to ``DS_layer_name`` (ResNet's
    ``layer2.0.downsample.0``) goes to ``DS_layers``; every other conv to ``CNN_layers``. On
    torchvision ResNets the counts equal the original's (resnet50: 49 CNN, 4 down-sample).

    Args:
        model: the model, or (as in the article) a list of its children,
            ``list(model.children())``. With a list, names are ``"<index>.<rest>"``.
        DS_layer_name: the name of down-sample submodules.

    Example::

        >>> import torchvision
        >>> ex = Extractor(torchvision.models.resnet18()).activate()
        >>> ex.info()["Total CNN Layers"], ex.CNN_names[:2]
        (17, ['conv1', 'layer1.0.conv1'])
    """

    def __init__(
        self,
        model: nn.Module | Sequence[nn.Module],
        DS_layer_name: str = "downsample",  # noqa: N803
    ) -> None:
        if isinstance(model, nn.Module):
            root = unwrap_model(model)
        elif isinstance(model, (list, tuple)) and model:
            for i, child in enumerate(model):
                check_module(child, what=f"model_children[{i}]")
            # A ModuleList only names the children "0", "1", ...; the children themselves are
            # not modified (PyTorch modules do not know their parents).
            root = nn.ModuleList(model)
        else:
            raise TypeError(
                "Extractor takes an nn.Module or a non-empty list of modules "
                f"(list(model.children())), got {type(model).__name__}"
                + (" (empty)" if isinstance(model, (list, tuple)) else "")
                + "."
            )
        if not isinstance(DS_layer_name, str) or not DS_layer_name:
            raise TypeError(f"DS_layer_name must be a non-empty str, got {DS_layer_name!r}.")
        self.model: nn.Module = root
        self.model_children: list[nn.Module] = list(root.children())
        self.DS_layer_name = DS_layer_name
        self._reset()
        self._activated = False
        self._ex_time = "0.0 sec"

    def _reset(self) -> None:
        self.CNN_layers: list[nn.Conv2d] = []
        self.CNN_weights: list[torch.Tensor] = []
        self.CNN_names: list[str] = []
        self.Linear_layers: list[nn.Linear] = []
        self.Linear_weights: list[torch.Tensor] = []
        self.Linear_names: list[str] = []
        self.DS_layers: list[nn.Conv2d] = []
        self.DS_names: list[str] = []
        self._n_sequential = 0
        self._n_blocks = 0

    def activate(self) -> Extractor:
        """Discover the layers (idempotent) and return ``self``."""
        if self._activated:
            return self
        start = time.perf_counter()
        self._reset()
        blocks = _resnet_block_types()
        for name, module in self.model.named_modules():
            in_ds = self.DS_layer_name in name.split(".")
            if isinstance(module, nn.Conv2d):
                if in_ds:
                    self.DS_layers.append(module)
                    self.DS_names.append(name)
                else:
                    self.CNN_layers.append(module)
                    self.CNN_weights.append(module.weight)
                    self.CNN_names.append(name)
            elif isinstance(module, nn.Linear):
                self.Linear_layers.append(module)
                self.Linear_weights.append(module.weight)
                self.Linear_names.append(name)
            elif isinstance(module, nn.Sequential) and not in_ds and module is not self.model:
                self._n_sequential += 1
            if isinstance(module, blocks):
                self._n_blocks += 1
        self._ex_time = f"{round(time.perf_counter() - start, 5)} sec"
        self._activated = True
        return self

    def info(self) -> dict[str, Any]:
        """The article's summary dict (activates first if needed), plus a few extra keys."""
        self.activate()
        return {
            "Down-sample layers name": self.DS_layer_name,
            "Total CNN Layers": len(self.CNN_layers),
            "Total Sequential Layers": self._n_sequential,
            "Total Downsampling Layers": len(self.DS_layers),
            "Total Linear Layers": len(self.Linear_layers),
            "Total number of Bottleneck and Basicblock": self._n_blocks,
            "Total Execution time": self._ex_time,
            "Total Conv2d (all)": len(self.CNN_layers) + len(self.DS_layers),
        }

    def __repr__(self) -> str:
        state = (
            f"{len(self.CNN_layers)} CNN, {len(self.DS_layers)} down-sample, "
            f"{len(self.Linear_layers)} linear"
            if self._activated
            else "not activated"
        )
        return f"Extractor({type(self.model).__name__}, {state})"
