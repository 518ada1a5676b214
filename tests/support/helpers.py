"""Tiny seeded models and assertions shared by the tests."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from torch_featureviz import find_conv_layers
from torch_featureviz.naming import call_key, split_call_key


def hook_count(model: nn.Module) -> int:
    """Forward (pre-)hooks registered anywhere in ``model``."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def state_snapshot(model: nn.Module) -> dict[str, torch.Tensor | bool]:
    """Parameters, buffers and train flags, copied, for bit-for-bit comparison."""
    snap: dict[str, torch.Tensor | bool] = {
        f"p:{k}": v.detach().clone() for k, v in model.named_parameters()
    }
    snap.update({f"b:{k}": v.detach().clone() for k, v in model.named_buffers()})
    snap.update({f"t:{k}": m.training for k, m in model.named_modules()})
    return snap


def assert_same_state(before: dict, after: dict) -> None:
    assert before.keys() == after.keys()
    for k, v in before.items():
        w = after[k]
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, w), f"{k} changed"
        else:
            assert v == w, f"{k} changed"


class Block(nn.Module):
    """A user-defined residual block (not Sequential) with an in-place ReLU."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(ch)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x))) + x


class TinyNet(nn.Module):
    """A small CNN with nested containers, a shared conv called twice and a linear head."""

    def __init__(self, in_ch: int = 3, classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_ch, 8, 3, padding=1), nn.ReLU(inplace=True))
        self.blocks = nn.ModuleList([Block(8), Block(8)])
        self.heads = nn.ModuleDict({"down": nn.Conv2d(8, 16, 3, stride=2, padding=1)})
        self.shared = nn.Conv2d(16, 16, 1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for b in self.blocks:
            x = b(x)
        x = self.heads["down"](x)
        x = self.shared(torch.relu(self.shared(x)))  # weight sharing: called twice
        return self.fc(x.mean(dim=(2, 3)))


def tiny_net(seed: int = 0, **kwargs: int) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet(**kwargs)


class _Recorder(nn.Module):
    """Stands in for a conv and records a clone of each of its outputs (no hooks involved).

    Attribute reads it does not know go to the conv, so a parent that reads
    ``self.proj.weight.dtype`` (Hugging Face patch embeddings) still works.
    """

    def __init__(self, conv: nn.Module, name: str, store: dict) -> None:
        super().__init__()
        self.conv, self.name, self.store = conv, name, store

    def forward(self, *args, **kwargs):
        out = self.conv(*args, **kwargs)
        index = sum(1 for k in self.store if split_call_key(k)[0] == self.name)
        self.store[call_key(self.name, index)] = out.detach().clone()
        return out

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["conv"], name)


def _our_hooks(model: nn.Module) -> list:
    """Forward (pre-)hooks of ``model`` that torch_featureviz registered. (Other libraries may
    have their own: transformers installs output-capturing hooks on a first forward.)"""
    found = []
    for m in model.modules():
        for hook in [*m._forward_hooks.values(), *m._forward_pre_hooks.values()]:
            fn = getattr(hook, "func", hook)  # functools.partial
            owner = getattr(fn, "__self__", fn)
            if type(owner).__module__.startswith("torch_featureviz") or getattr(
                fn, "__module__", ""
            ).startswith("torch_featureviz"):
                found.append(hook)
    return found


def reference_maps(
    model: nn.Module,
    *inputs,
    run=None,
    in_place: bool = False,
    **kwargs,
) -> dict[str, torch.Tensor]:
    """Every conv output (every conv type) for one forward, computed without forward hooks.

    Each conv is swapped for a recorder, in a deep copy of ``model`` or, with ``in_place``
    (for models too big to copy twice), in ``model`` itself and swapped back afterwards. The
    forward is ``model(*inputs, **kwargs)``, or ``run(model)`` when given. Keys are call keys
    (``name``, ``name#1``, ...), values the full batched outputs.
    """
    twin = model if in_place else copy.deepcopy(model)
    store: dict[str, torch.Tensor] = {}
    swapped = []
    try:
        for name in list(find_conv_layers(twin)):
            parent_name, _, attr = name.rpartition(".")
            parent = twin.get_submodule(parent_name) if parent_name else twin
            swapped.append((parent, attr, parent._modules[attr]))
            parent._modules[attr] = _Recorder(parent._modules[attr], name, store)
        assert not _our_hooks(twin), "reference_maps must run without torch_featureviz hooks"
        with torch.no_grad():
            run(twin) if run is not None else twin(*inputs, **kwargs)
    finally:
        for parent, attr, conv in reversed(swapped):
            parent._modules[attr] = conv
    return store


class GatedSink:
    """Wraps a monitor's sink (the ``sink_wrapper`` seam) and holds every write until opened."""

    def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
        import threading

        self.inner = inner
        self.event = threading.Event()
        self.closed = False

    def write(self, item) -> None:  # type: ignore[no-untyped-def]
        self.event.wait()
        self.inner.write(item)

    def flush(self) -> None:
        self.inner.flush()

    def close(self) -> None:
        self.inner.close()
        self.closed = True


class FailingSink(GatedSink):
    """A sink whose writes fail like a full disk."""

    def __init__(self, inner, error: BaseException | None = None) -> None:  # type: ignore[no-untyped-def]
        super().__init__(inner)
        import errno

        self.error = error or OSError(errno.ENOSPC, "No space left on device")
        self.event.set()

    def write(self, item) -> None:  # type: ignore[no-untyped-def]
        raise self.error


def read_events(log_dir: str | Path):  # type: ignore[no-untyped-def]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0, "histograms": 0})
    ea.Reload()
    return ea


def decode(image_event) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """A logged PNG as a (C, H, W) uint8 tensor."""
    import io

    import numpy as np
    from PIL import Image

    pixels = np.array(Image.open(io.BytesIO(image_event.encoded_image_string)))
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()
