"""Random CNN architectures and shared helpers for the reliability suite (tests/test_reliability_*).

:func:`arch_specs` is a hypothesis strategy for plain-data architecture specs (nested dicts and
lists, so a failing example prints readably and shrinks); :func:`build_model` turns a spec and a
seed into a seeded ``nn.Module``. The generated models mix:

- nested ``nn.Sequential``, ``nn.ModuleList`` and ``nn.ModuleDict`` (with keys holding spaces and
  unicode), and user-defined block classes;
- residual additions (identity or 1x1 projection) and channel concatenations;
- depthwise and grouped convs, dilation, strides, zero/reflect/replicate/circular padding;
- a user ``nn.Conv2d`` subclass with its own ``forward``;
- ``ReLU(inplace=True)`` right after a conv, BatchNorm and Dropout;
- a conv module called twice in one forward (weight sharing).

:func:`record_figures` prints the measured figures and keeps them in pytest's cache
(``.pytest_cache/v/reliability/...``, never committed), so the README can quote them.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from typing import Any

import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from torch import nn

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
#: ModuleDict keys are user-controlled; '.' is the only character PyTorch forbids in them.
BRANCH_KEYS = ("left", "right branch", "zweig-ü", "b#2")
MAX_CH = 12


# -- the blocks the specs are built from -------------------------------------------------------
class ScaledConv(nn.Conv2d):
    """A user Conv2d subclass with its own forward (weight scaling, as in weight-standardised
    convs); discovery must find it and its hook must see its real output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight * 0.5, self.bias)


class Residual(nn.Module):
    """``x + body(x)``, with an optional 1x1 projection on the shortcut."""

    def __init__(self, body: nn.Module, proj: nn.Module | None) -> None:
        super().__init__()
        self.body = body
        self.proj = proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        short = x if self.proj is None else self.proj(x)
        return short + self.body(x)


class Concat(nn.Module):
    """Branches in an ``nn.ModuleDict``, concatenated along channels."""

    def __init__(self, branches: dict[str, nn.Module]) -> None:
        super().__init__()
        self.branches = nn.ModuleDict(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([b(x) for b in self.branches.values()], dim=1)


class Twice(nn.Module):
    """One conv module called twice in one forward (weight sharing)."""

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.relu(self.conv(x)))


class Stack(nn.Module):
    """An ``nn.ModuleList`` applied in order by a hand-written loop."""

    def __init__(self, items: list[nn.Module]) -> None:
        super().__init__()
        self.items = nn.ModuleList(items)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for m in self.items:
            x = m(x)
        return x


class Net(nn.Module):
    """The generated body, then a global-average-pool linear head."""

    def __init__(self, body: nn.Module, channels: int, classes: int = 3) -> None:
        super().__init__()
        self.body = body
        self.head = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).mean(dim=(2, 3)))


# -- specs ---------------------------------------------------------------------------------------
def _out_size(size: int, k: int, stride: int, dilation: int, padding: int) -> int:
    return (size + 2 * padding - dilation * (k - 1) - 1) // stride + 1


@st.composite
def conv_specs(
    draw: Any, cin: int, size: int, *, keep_size: bool, keep_channels: bool
) -> tuple[dict, int, int]:
    """A conv (and what follows it): returns ``(spec, out_channels, out_size)``."""
    k = draw(st.sampled_from([1, 3, 5] if size >= 5 else [1, 3]))
    dilation = draw(st.sampled_from([1, 2])) if k > 1 else 1
    same = dilation * (k - 1) // 2
    if keep_size:
        stride, padding = 1, same
    else:
        stride = draw(st.sampled_from([1, 2] if size >= 6 else [1]))
        padding = draw(st.sampled_from(sorted({0, same})))
        if _out_size(size, k, stride, dilation, padding) < 2:
            padding = same
        if _out_size(size, k, stride, dilation, padding) < 2:
            stride = 1
    modes = [m for m in PADDING_MODES if padding == 0 or m != "reflect" or padding < size]
    mode = draw(st.sampled_from(modes)) if padding > 0 else "zeros"
    divisors = [g for g in range(2, cin) if cin % g == 0]
    kinds = ["plain", "depthwise"] + (["grouped"] if divisors else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "plain":
        groups = 1
        cout = cin if keep_channels else draw(st.integers(1, MAX_CH))
    elif kind == "depthwise":
        groups = cin
        mult = 1 if keep_channels or cin * 2 > MAX_CH else draw(st.sampled_from([1, 2]))
        cout = cin * mult
    else:
        groups = draw(st.sampled_from(divisors))
        cout = cin if keep_channels else groups * draw(st.integers(1, MAX_CH // groups))
    spec = {
        "kind": "conv",
        "cin": cin,
        "cout": cout,
        "k": k,
        "stride": stride,
        "dilation": dilation,
        "padding": padding,
        "mode": mode,
        "groups": groups,
        "bias": draw(st.booleans()),
        "subclass": draw(st.booleans()),
        # what follows the conv: in-place ReLU right after it is the case that bites hooks
        "after": draw(st.sampled_from(["none", "relu_inplace", "bn_relu_inplace", "dropout"])),
    }
    return spec, cout, _out_size(size, k, stride, dilation, padding)


@st.composite
def block_specs(
    draw: Any, cin: int, size: int, depth: int, *, keep_size: bool = False,
    keep_channels: bool = False,
) -> tuple[dict, int, int]:
    """One block: a conv or a container/user block around more blocks."""
    kinds = ["conv", "twice"]
    if depth > 0:
        kinds += ["seq", "list", "residual", "concat"]
    kind = draw(st.sampled_from(kinds))
    if kind == "conv":
        return draw(conv_specs(cin, size, keep_size=keep_size, keep_channels=keep_channels))
    if kind == "twice":
        conv, _, _ = draw(conv_specs(cin, size, keep_size=True, keep_channels=True))
        return {"kind": "twice", "conv": conv}, cin, size
    if kind == "residual":
        proj = False if keep_channels else draw(st.booleans())
        body, cout, _ = draw(
            sequence_specs(cin, size, depth - 1, keep_size=True, keep_channels=not proj)
        )
        proj_spec = None
        if proj:
            proj_spec = {**_plain_1x1(cin, cout), "subclass": draw(st.booleans())}
        return {"kind": "residual", "body": body, "proj": proj_spec}, cout, size
    if kind == "concat":
        keys = draw(st.lists(st.sampled_from(BRANCH_KEYS), min_size=2, max_size=3, unique=True))
        branches, total = {}, 0
        for key in keys:
            budget = max(1, (MAX_CH - total) // 2)
            spec, cout, _ = draw(sequence_specs(cin, size, depth - 1, keep_size=True))
            if cout > budget:  # keep the concatenation small: squeeze with a 1x1 conv
                spec = {"kind": "seq", "items": [spec, _plain_1x1(cout, budget)]}
                cout = budget
            branches[key] = spec
            total += cout
        return {"kind": "concat", "branches": branches}, total, size
    spec, cout, out_size = draw(
        sequence_specs(cin, size, depth - 1, keep_size=keep_size, keep_channels=keep_channels)
    )
    return {"kind": kind, "items": spec["items"]}, cout, out_size


def _plain_1x1(cin: int, cout: int) -> dict:
    return {
        "kind": "conv", "cin": cin, "cout": cout, "k": 1, "stride": 1, "dilation": 1,
        "padding": 0, "mode": "zeros", "groups": 1, "bias": True, "subclass": False,
        "after": "none",
    }


@st.composite
def sequence_specs(
    draw: Any, cin: int, size: int, depth: int, *, keep_size: bool = False,
    keep_channels: bool = False,
) -> tuple[dict, int, int]:
    """One to three blocks in an ``nn.Sequential``."""
    items, ch = [], cin
    n = draw(st.integers(1, 3))
    for _ in range(n):
        spec, ch, size = draw(block_specs(ch, size, depth, keep_size=keep_size))
        items.append(spec)
    if keep_channels and ch != cin:  # channels may wander inside; a 1x1 conv brings them back
        items.append(_plain_1x1(ch, cin))
        ch = cin
    return {"kind": "seq", "items": items}, ch, size


@st.composite
def arch_specs(draw: Any, max_depth: int = 2) -> dict:
    """A whole model: ``{"in": C, "size": S, "body": spec, "out": C'}``."""
    cin = draw(st.sampled_from([1, 3, 4]))
    size = draw(st.integers(6, 12))
    body, cout, _ = draw(sequence_specs(cin, size, max_depth))
    return {"in": cin, "size": size, "body": body, "out": cout}


# -- building -----------------------------------------------------------------------------------
def _build(spec: dict) -> nn.Module:
    kind = spec["kind"]
    if kind == "conv":
        cls = ScaledConv if spec["subclass"] else nn.Conv2d
        conv = cls(
            spec["cin"], spec["cout"], spec["k"], stride=spec["stride"],
            padding=spec["padding"], dilation=spec["dilation"], groups=spec["groups"],
            bias=spec["bias"], padding_mode=spec["mode"],
        )
        after = spec["after"]
        if after == "none":
            return conv
        if after == "relu_inplace":
            return nn.Sequential(conv, nn.ReLU(inplace=True))
        if after == "bn_relu_inplace":
            return nn.Sequential(conv, nn.BatchNorm2d(spec["cout"]), nn.ReLU(inplace=True))
        return nn.Sequential(conv, nn.Dropout(0.25))
    if kind == "twice":
        return Twice(_build(spec["conv"]))
    if kind == "seq":
        return nn.Sequential(*[_build(s) for s in spec["items"]])
    if kind == "list":
        return Stack([_build(s) for s in spec["items"]])
    if kind == "residual":
        proj = None if spec["proj"] is None else _build(spec["proj"])
        return Residual(_build(spec["body"]), proj)
    if kind == "concat":
        return Concat({k: _build(s) for k, s in spec["branches"].items()})
    raise ValueError(f"unknown block kind {kind!r}")


def build_model(arch: dict, seed: int) -> Net:
    """The seeded model for ``arch`` (same spec and seed give bit-identical weights)."""
    torch.manual_seed(seed)
    return Net(_build(arch["body"]), arch["out"])


def spec_features(arch: dict) -> set[str]:
    """Which features a spec exercises (to prove the generator covers them all)."""
    found: set[str] = set()

    def walk(spec: dict, depth: int) -> None:
        kind = spec["kind"]
        if depth >= 2 and kind in ("seq", "list", "residual", "concat", "twice"):
            found.add("nested")
        if kind == "conv":
            found.add(f"padding_{spec['mode']}")
            if spec["groups"] == spec["cin"] and spec["cin"] > 1:
                found.add("depthwise")
            elif spec["groups"] > 1:
                found.add("grouped")
            if spec["dilation"] > 1:
                found.add("dilation")
            if spec["stride"] > 1:
                found.add("stride")
            if spec["subclass"]:
                found.add("conv_subclass")
            if spec["after"] in ("relu_inplace", "bn_relu_inplace"):
                found.add(spec["after"])
            if spec["after"] == "dropout":
                found.add("dropout")
            return
        found.add(kind)
        if kind == "twice":
            walk(spec["conv"], depth + 1)
        elif kind == "residual":
            if spec["proj"] is not None:
                found.add("residual_projection")
                walk(spec["proj"], depth + 1)
            walk(spec["body"], depth + 1)
        elif kind == "concat":
            if any(not k.isidentifier() for k in spec["branches"]):
                found.add("odd_module_dict_keys")
            for s in spec["branches"].values():
                walk(s, depth + 1)
        else:
            for s in spec["items"]:
                walk(s, depth + 1)

    walk(arch["body"], 0)
    return found


# -- fixtures and figures -----------------------------------------------------------------------
@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread: tiny convs on a shared 2-core machine are ~10x faster that way
    (no oversubscription), and results do not depend on the thread count."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


#: Name prefixes of the library's process-wide worker pools: created once on first use, bounded,
#: reused by every writer; not owned by (and not expected to end with) any one monitor.
SHARED_POOL_PREFIXES = ("featureviz-png",)
#: The most threads those pools may hold together.
SHARED_POOL_MAX = 4


def owned_threads(threads: list[threading.Thread] | None = None) -> list[threading.Thread]:
    """Live threads, less the library's shared pools (whose size is checked separately)."""
    threads = threading.enumerate() if threads is None else threads
    return [t for t in threads if not t.name.startswith(SHARED_POOL_PREFIXES)]


def shared_pool_threads() -> int:
    return sum(t.name.startswith(SHARED_POOL_PREFIXES) for t in threading.enumerate())


# -- hypothesis -------------------------------------------------------------------------------
def reproducible(examples: int) -> Any:
    """hypothesis settings for this suite: ``examples`` cases, the same ones on every run
    (derandomized, no example database), no deadline and no health-check aborts."""
    return settings(
        max_examples=examples,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


# -- figures ----------------------------------------------------------------------------------
def record_figures(request: Any, key: str, figures: dict) -> None:
    """Print ``figures`` (shown even under output capture) and keep them in pytest's cache."""
    line = f"[reliability] {key}: {json.dumps(figures, sort_keys=True)}"
    capman = request.config.pluginmanager.getplugin("capturemanager")
    disabled = getattr(capman, "global_and_fixture_disabled", None)
    if disabled is not None:
        with disabled():
            print("\n" + line)
    else:
        print(line)
    cache = getattr(request.config, "cache", None)
    if cache is not None:
        cache.set(f"reliability/{key}", figures)
