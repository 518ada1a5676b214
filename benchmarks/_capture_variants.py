"""The capture benchmark's configuration, models, inputs and variants: the ways of capturing
every conv output of one forward that :mod:`benchmarks.bench_capture` times against each other,
and chain mode's fidelity to hook mode."""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torchvision
from torch import nn

import torch_featureviz as fv
from benchmarks._harness import (
    Variant,
    importable,
    interleave,
)

MODELS = ("resnet18", "resnet50", "vgg16", "mobilenet_v3_large", "convnext_tiny")
#: Channels kept per map by hook capture, chain mode and every end-to-end path (an 8x8 grid).
MAX_CHANNELS = 64


# ---------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Config:
    """What one run measures."""

    device: str
    quick: bool
    models: tuple[str, ...]
    sizes: tuple[int, ...]
    batches: tuple[int, ...]
    warmup: int
    repeats: int
    min_repeats: int
    #: Seconds of timed calls spent at most on one variant of one case (slow peers get fewer
    #: repeats, never fewer than ``min_repeats``).
    budget_s: float
    captum: bool
    torchlens: bool
    e2e_model: str
    e2e_size: int
    #: Conv layers logged end to end; ``None`` means every conv layer.
    e2e_layers: int | None
    e2e_repeats: int
    article_repeats: int
    #: torch intra-op threads; ``None`` keeps torch's default (all cores).
    threads: int | None = None
    #: Measure the end-to-end paths (forward + capture + grids written to disk).
    e2e: bool = True


def make_config(
    device: str,
    *,
    quick: bool,
    models: Sequence[str] | None = None,
    sizes: Sequence[int] | None = None,
    batches: Sequence[int] | None = None,
    peers: bool = True,
    threads: int | None = None,
    e2e: bool = True,
) -> Config:
    """The full or quick configuration for ``device``.

    Quick mode runs one intra-op thread unless told otherwise: on a shared CI machine two
    threads that wait for each other make CPU timings swing 10x, one thread does not.
    """
    cuda = device.startswith("cuda")
    have_captum = peers and importable("captum")
    have_torchlens = peers and importable("torchlens")
    if quick:
        return Config(
            device=device,
            quick=True,
            models=tuple(models or ("resnet18",)),
            sizes=tuple(sizes or (128,)),
            batches=tuple(batches or (1,)),
            warmup=1,
            repeats=3,
            min_repeats=3,
            budget_s=2.0,
            captum=have_captum,
            torchlens=False,
            e2e_model="resnet18",
            e2e_size=224,
            e2e_layers=3,
            e2e_repeats=3,
            article_repeats=1,
            threads=threads or (None if cuda else 1),
            e2e=e2e,
        )
    return Config(
        device=device,
        quick=False,
        models=tuple(models or MODELS),
        sizes=tuple(sizes or (128, 224)),
        batches=tuple(batches or ((1, 32) if cuda else (1,))),
        warmup=2,
        repeats=7 if cuda else 31,
        min_repeats=3,
        budget_s=3.0 if cuda else 8.0,
        captum=have_captum,
        torchlens=have_torchlens,
        e2e_model="resnet50",
        e2e_size=224,
        e2e_layers=None,
        e2e_repeats=5,
        article_repeats=1,
        threads=threads,
        e2e=e2e,
    )


# ---------------------------------------------------------------------------------------------
# models, inputs, timing
# ---------------------------------------------------------------------------------------------
def build_model(name: str, device: str) -> nn.Module:
    """A torchvision model with seeded random weights, in eval mode, on ``device``."""
    torch.manual_seed(0)
    return torchvision.models.get_model(name, weights=None).eval().to(device)


def build_input(size: int, batch: int, device: str) -> torch.Tensor:
    """The built-in photo, preprocessed to ``size``, repeated ``batch`` times."""
    x = fv.preprocess(fv.load_image(), size=size)
    return x.expand(batch, -1, -1, -1).contiguous().to(device)


def time_variants(
    variants: list[Variant], cfg: Config, errors: dict[str, str]
) -> dict[str, list[float]]:
    """Warm up each variant, then time them round-robin (:func:`_timing.interleave`)."""
    return interleave(
        variants,
        device=cfg.device,
        rounds=cfg.repeats,
        warmup=cfg.warmup,
        min_repeats=cfg.min_repeats,
        budget_s=cfg.budget_s,
        always=("bare",),  # every round, so each variant has a same-round floor to divide by
        errors=errors,
    )


# ---------------------------------------------------------------------------------------------
# the variants
# ---------------------------------------------------------------------------------------------
class _HookCapture:
    """torch_featureviz hook mode, as a loop uses it: one ``FeatureCapture`` for every call.

    Its hooks are attached before each timed call and removed after it (the other variants
    share the model), outside the timing; the capture object lives on across the timed calls,
    as in a training or inference loop that looks at ``maps`` and lets them go. With
    ``fresh=True`` a new ``FeatureCapture`` is made (untimed) before every call instead.
    """

    def __init__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        max_channels: int | None,
        *,
        fresh: bool = False,
        reuse: bool = False,
    ) -> None:
        self.model, self.x, self.max_channels, self.fresh = model, x, max_channels, fresh
        self.cap = fv.FeatureCapture(model, max_channels=max_channels, reuse_buffers=reuse)

    def setup(self) -> None:
        if self.fresh:
            self.cap = fv.FeatureCapture(self.model, max_channels=self.max_channels)
        self.cap.attach()

    def run(self) -> dict[str, torch.Tensor]:
        self.model(self.x)
        return self.cap.maps

    def teardown(self) -> None:
        self.cap.remove()


class _NaiveHooks:
    """Hand-written forward hooks, the way users write them: a new dict per forward and one
    hook per conv keeping a copy of the whole output.

    ``to_cpu=False`` keeps ``output.detach().clone()`` on the output's device (the common
    ``activation[name] = output.detach().clone()`` recipe); ``to_cpu=True`` keeps
    ``output.detach().cpu()`` (a real copy: on the CPU a bare ``.cpu()`` returns the same
    tensor, which an in-place ReLU would then overwrite).
    """

    def __init__(
        self, model: nn.Module, x: torch.Tensor, convs: dict[str, nn.Conv2d], *, to_cpu: bool
    ) -> None:
        self.model, self.x, self.convs, self.to_cpu = model, x, convs, to_cpu
        self.store: dict[str, torch.Tensor] = {}
        self.handles: list[Any] = []

    def _hook(self, name: str, module: nn.Module, args: Any, output: torch.Tensor) -> None:
        if self.to_cpu:
            self.store[name] = output.detach().to("cpu", copy=True)
        else:
            self.store[name] = output.detach().clone()

    def setup(self) -> None:
        self.handles = [
            m.register_forward_hook(functools.partial(self._hook, n)) for n, m in self.convs.items()
        ]

    def run(self) -> dict[str, torch.Tensor]:
        self.store = {}  # a new dict per forward, as hand-written loops do
        self.model(self.x)
        return self.store

    def teardown(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles, self.store = [], {}


def build_variants(
    model: nn.Module, x: torch.Tensor, cfg: Config, info: dict[str, Any]
) -> list[Variant]:
    """Every variant for one case, in table order (torchlens runs in its own process)."""
    convs = fv.find_conv_layers(model)
    hook64 = _HookCapture(model, x, MAX_CHANNELS)
    hook_fresh = _HookCapture(model, x, MAX_CHANNELS, fresh=True)
    hook_reuse = _HookCapture(model, x, MAX_CHANNELS, reuse=True)
    hook_all = _HookCapture(model, x, None)
    naive = _NaiveHooks(model, x, convs, to_cpu=True)
    naive_clone = _NaiveHooks(model, x, convs, to_cpu=False)
    variants = [
        Variant("bare", lambda: model(x)),
        Variant("hook", hook64.run, hook64.setup, hook64.teardown),
        Variant("hook_fresh", hook_fresh.run, hook_fresh.setup, hook_fresh.teardown),
        Variant("hook_reuse", hook_reuse.run, hook_reuse.setup, hook_reuse.teardown),
        Variant("hook_all", hook_all.run, hook_all.setup, hook_all.teardown),
        Variant("naive_clone", naive_clone.run, naive_clone.setup, naive_clone.teardown),
        Variant("chain", lambda: fv.chain_feature_maps(model, x, max_channels=MAX_CHANNELS)),
    ]
    try:
        from torchvision.models.feature_extraction import create_feature_extractor

        t0 = time.perf_counter()
        fx = create_feature_extractor(model, return_nodes=list(convs))
        info["fx_build_s"] = time.perf_counter() - t0
        variants.append(Variant("fx", lambda: fx(x)))
    except Exception as e:  # FX cannot trace some models: that is a result, not a crash
        msg = f"{type(e).__name__}: {str(e).splitlines()[0].split('. Hint')[0][:120]}"
        if "is not present in model" in msg:
            msg += (
                " (convs inside torchvision.ops blocks such as Conv2dNormActivation are FX leaf "
                "modules, so create_feature_extractor cannot return them)"
            )
        info.setdefault("errors", {})["fx"] = msg
    variants.append(Variant("naive", naive.run, naive.setup, naive.teardown))
    if cfg.captum:
        from captum.attr import LayerActivation

        holder: dict[str, Any] = {}

        def captum_setup() -> None:
            holder["la"] = LayerActivation(model, list(convs.values()))

        variants.append(
            Variant("captum", lambda: holder["la"].attribute(x), captum_setup, holder.clear)
        )
    return variants


VARIANT_LABELS = {
    "bare": "bare forward",
    "hook": f"hook, {MAX_CHANNELS} ch (one capture reused)",
    "hook_fresh": f"hook, {MAX_CHANNELS} ch (new capture per call)",
    "hook_reuse": f"hook, {MAX_CHANNELS} ch (reuse_buffers=True)",
    "hook_all": "hook, all ch",
    "naive_clone": "naive .clone() hooks",
    "chain": "chain",
    "fx": "fx extractor",
    "naive": "naive .cpu() hooks",
    "captum": "captum",
    "torchlens": "torchlens",
}


# ---------------------------------------------------------------------------------------------
# chain fidelity
# ---------------------------------------------------------------------------------------------
def chain_fidelity(
    hook_maps: dict[str, torch.Tensor], chain_maps: dict[str, torch.Tensor]
) -> dict[str, Any]:
    """Per-layer cosine similarity of chain maps against real maps, pooled to a common size."""
    sims: dict[str, float] = {}
    resized = 0
    for name, c in chain_maps.items():
        h = hook_maps.get(name)
        if h is None or h.shape[0] != c.shape[0]:
            continue
        size = (min(h.shape[1], c.shape[1]), min(h.shape[2], c.shape[2]))
        if h.shape[1:] != c.shape[1:]:
            resized += 1
        a = torch.nn.functional.adaptive_avg_pool2d(h.double().unsqueeze(0), size).flatten()
        b = torch.nn.functional.adaptive_avg_pool2d(c.double().unsqueeze(0), size).flatten()
        sims[name] = float(torch.nn.functional.cosine_similarity(a, b, dim=0))
    if not sims:
        return {"layers": 0}
    worst = min(sims, key=sims.__getitem__)
    return {
        "layers": len(sims),
        "resized_layers": resized,
        "median": statistics.median(sims.values()),
        "min": sims[worst],
        "min_layer": worst,
        "per_layer": sims,
    }


