"""Find a model's conv and linear layers by qualified name, and the original ``Extractor`` view.

Discovery walks ``model.named_modules()``, so it sees every module however deeply it is nested:
``nn.Sequential``, ``nn.ModuleList``, ``nn.ModuleDict`` and user-defined blocks alike. The order is
PyTorch's own: depth-first, in the order submodules were registered (for almost every model, the
order they are assigned in ``__init__``). A module reachable under two names is listed once, under
the first name.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from torch_featureviz._validation import check_module, select_names

__all__ = ["Extractor", "find_conv_layers", "find_linear_layers", "unwrap_model"]


def unwrap_model(model: nn.Module) -> nn.Module:
    """Return the user's model inside DataParallel, DistributedDataParallel or ``torch.compile``.

    Names are then the ones the user wrote (``layer1.0.conv1``, not ``module.layer1.0.conv1``).
    Hooks registered on the unwrapped modules fire through the wrapper, because the wrapper calls
    these very modules (DataParallel replicas share their hook dicts).
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


def _find(
    model: nn.Module,
    kind: type[nn.Module],
    include: str | Iterable[str] | None,
    exclude: str | Iterable[str] | None,
    what: str,
) -> dict[str, nn.Module]:
    model = unwrap_model(check_module(model))
    found = {name: m for name, m in model.named_modules() if isinstance(m, kind)}
    if not found:
        raise ValueError(
            f"{type(model).__name__} has no {kind.__name__} layers (searched "
            f"{sum(1 for _ in model.modules())} modules). torch_featureviz visualises 2-D "
            "convolutions; check that you passed the CNN itself."
        )
    names = select_names(list(found), include=include, exclude=exclude, what=what)
    return {name: found[name] for name in names}


def find_conv_layers(
    model: nn.Module,
    *,
    include: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = None,
) -> dict[str, nn.Conv2d]:
    """Return every ``nn.Conv2d`` (subclasses included) of ``model`` by qualified name.

    Args:
        model: any ``nn.Module``; DataParallel, DDP and ``torch.compile`` wrappers are looked
            through, so names never carry a ``module.`` prefix.
        include: qualified names or ``fnmatch`` globs (``"layer1.*"``) to keep. Each entry must
            match at least one conv.
        exclude: globs to drop after ``include`` is applied.

    Returns:
        An ordered ``dict`` from qualified name to module, in ``named_modules()`` order
        (depth-first, registration order).

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: the model has no Conv2d, or a pattern matches nothing (the message lists the
            closest names).

    Example::

        >>> import torchvision
        >>> convs = find_conv_layers(torchvision.models.resnet50())
        >>> len(convs), next(iter(convs))
        (53, 'conv1')
    """
    return _find(model, nn.Conv2d, include, exclude, "conv layer")  # type: ignore[return-value]


def find_linear_layers(
    model: nn.Module,
    *,
    include: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = None,
) -> dict[str, nn.Linear]:
    """Like :func:`find_conv_layers`, for ``nn.Linear``; raises ``ValueError`` if there is none."""
    return _find(model, nn.Linear, include, exclude, "linear layer")  # type: ignore[return-value]


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
