#!/usr/bin/env python
"""Benchmark torch_featureviz: hook mode vs chain mode vs peers, and end-to-end logging.

Run from the repository root::

    python benchmarks/bench_featureviz.py            # full run on CUDA if present, else CPU
    python benchmarks/bench_featureviz.py --quick    # < 1 minute on CPU
    python benchmarks/bench_featureviz.py --device cpu --json out.json --markdown out.md

What is measured (see benchmarks/RESULTS.md for the definitions in prose):

* Per model (random weights, eval mode, ``torch.no_grad()``) and input size/batch: the bare
  forward (the floor), then as ratios to it: hook capture of every conv (``FeatureCapture``, the
  package default of the first 64 channels of sample 0, and all channels), chain mode, and peers
  doing the same work: torchvision ``create_feature_extractor`` returning every conv output,
  naive hooks keeping a full ``.detach().cpu()`` copy of every conv output, and, when installed,
  captum ``LayerActivation`` and torchlens. Timings are medians after warm-up; variants run
  interleaved, round-robin, and each ratio is the median of per-round ratios to the bare forward
  of the same round (robust to a machine whose load drifts). On CUDA, CUDA events with
  synchronisation.
* Chain fidelity: per conv layer, the cosine similarity between the chain map and the real (hook)
  map of the same layer, both the first 64 channels of sample 0. Chain maps skip pooling and
  strides between convs, so their spatial size can differ (2x on ResNets): both maps are
  ``adaptive_avg_pool2d``-ed to the smaller height and width, then flattened over channels and
  pixels. Summarised as median and minimum over layers.
* Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` around one call of each variant; on
  CPU the peak resident set size (``VmHWM``) of one call, measured in a separate process whose
  glibc ``malloc`` returns every block >= 64 KiB to the OS on free (``mallopt``), with the peak
  reset through ``/proc/self/clear_refs`` before each variant.
* End to end: the forward pass with capture of every conv layer of resnet50 for one 224 image,
  then a grid per layer written to disk, in three ways: torch_featureviz (``TensorBoardWriter``),
  torchvision ``make_grid`` + ``SummaryWriter.add_image``, and the original article's pyplot
  path (an 8x8 grid of subplots on a 30x30-inch figure per layer, then ``savefig``).

The script is also loaded by ``featureviz bench`` (through importlib/runpy): :func:`main` is the
entry point and the module uses no relative imports.
"""

# No `from __future__ import annotations`: `featureviz bench` loads this file with importlib
# without registering it in sys.modules, and dataclasses then cannot resolve string annotations.

import argparse
import contextlib
import dataclasses
import functools
import gc
import importlib
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

try:
    import torch_featureviz as fv
except ImportError:  # run from a checkout without installing: the package sits next to us
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import torch_featureviz as fv

if str(Path(__file__).resolve().parent) not in sys.path:  # loaded by path (tests, featureviz bench)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import (  # noqa: E402  (the one timing harness of the benchmarks)
    Variant,
    interleave,
    measure_memory,
    paired_ratio,
    prepare_rss_measurement,
    summary,
    synchronize,
)

__all__ = ["main", "run_benchmark"]

SCHEMA_VERSION = 1
BENCH_DIR = Path(__file__).resolve().parent
MODELS = ("resnet18", "resnet50", "vgg16", "mobilenet_v3_large", "convnext_tiny")
#: Channels kept per map by hook capture, chain mode and every end-to-end path (an 8x8 grid).
MAX_CHANNELS = 64
#: dpi of the article path's 30x30-inch figures: 1500x1500 px, so each of the 8x8 panels is
#: ~170 px, above the largest resnet50 map (112 px): nothing is lost, and the baseline is faster
#: than at matplotlib's default of 100 dpi (which gives the same picture at 3000x3000 px).
ARTICLE_DPI = 50
ARTICLE_INCHES = 30
CHILD_MARKER = "@@BENCH-CHILD-RESULT@@"


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
    have_captum = peers and _importable("captum")
    have_torchlens = peers and _importable("torchlens")
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


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except Exception:  # an optional peer that fails to import is simply absent
        return False
    return True


def _version(name: str) -> str | None:
    try:
        return str(importlib.import_module(name).__version__)
    except Exception:
        return None


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


# ---------------------------------------------------------------------------------------------
# peak memory
# ---------------------------------------------------------------------------------------------
# measure_memory and prepare_rss_measurement live in _timing (one harness for both benchmarks).


# ---------------------------------------------------------------------------------------------
# child processes: CPU memory (clean allocator state) and torchlens (wraps torch globally)
# ---------------------------------------------------------------------------------------------
def _run_child(job: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Run ``job`` in a fresh interpreter running this file; return its JSON result."""
    env = dict(os.environ)
    root = str(BENCH_DIR.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_child", json.dumps(job)]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout_s, env=env, check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": f"child {job['job']} timed out after {timeout_s:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith(CHILD_MARKER):
            return dict(json.loads(line[len(CHILD_MARKER) :]))
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"error": f"child {job['job']} failed (exit {proc.returncode}): {' | '.join(tail)}"}


def _child_main(job: dict[str, Any]) -> int:
    cfg = Config(**job["config"])
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out: dict[str, Any] = {}
    if job["job"] == "memory":
        prepare_rss_measurement()
        with torch.no_grad():
            for model_name, size, batch in job["cases"]:
                model = build_model(model_name, cfg.device)
                x = build_input(size, batch, cfg.device)
                variants = build_variants(model, x, cfg, {})
                out[f"{model_name}/{size}/{batch}"] = measure_memory(variants, cfg.device)
                del model, x, variants
    elif job["job"] == "torchlens":
        out = _torchlens_child(cfg, job["cases"])
    print(CHILD_MARKER + json.dumps(out), flush=True)
    return 0


def _torchlens_child(cfg: Config, cases: list[list[Any]]) -> dict[str, Any]:
    """Time torchlens against a bare forward measured first in the same process."""
    import torchlens
    from torchlens.options import CaptureOptions

    out: dict[str, Any] = {}
    pending_memory: list[tuple[str, list[Variant]]] = []
    with torch.no_grad():
        for model_name, size, batch in cases:
            model = build_model(model_name, cfg.device)
            x = build_input(size, batch, cfg.device)
            bare = Variant("bare", functools.partial(model, x))
            tl = Variant(
                "torchlens",
                functools.partial(
                    torchlens.trace,
                    model,
                    x,
                    save=torchlens.func("conv2d"),
                    capture=CaptureOptions(unwrap_when_done=True),
                ),
            )
            errors: dict[str, str] = {}
            # Bare first, on its own: torchlens may leave torch functions wrapped afterwards.
            bare_times = time_variants([bare], cfg, errors)["bare"]
            tl_times = time_variants([tl], cfg, errors).get("torchlens")
            key = f"{model_name}/{size}/{batch}"
            res: dict[str, Any] = {"bare_times": bare_times, "errors": errors}
            if tl_times:
                res["times"] = tl_times
                res["ratio_to_bare"] = statistics.median(tl_times) / statistics.median(bare_times)
                pending_memory.append((key, [bare, tl]))
            out[key] = res
    if cfg.device.startswith("cuda"):
        for key, variants in pending_memory:
            out[key]["memory"] = measure_memory(variants, cfg.device)
    else:
        prepare_rss_measurement()
        for key, variants in pending_memory:
            out[key]["memory"] = measure_memory(variants, cfg.device)
    return out


# ---------------------------------------------------------------------------------------------
# one case
# ---------------------------------------------------------------------------------------------
def run_case(model_name: str, size: int, batch: int, cfg: Config) -> dict[str, Any]:
    """Time every variant of one (model, size, batch) case; GPU memory in-process."""
    model = build_model(model_name, cfg.device)
    x = build_input(size, batch, cfg.device)
    info: dict[str, Any] = {"errors": {}}
    case: dict[str, Any] = {
        "model": model_name,
        "size": size,
        "batch": batch,
        "convs": len(fv.find_conv_layers(model)),
    }
    with torch.no_grad():
        variants = build_variants(model, x, cfg, info)
        times = time_variants(variants, cfg, info["errors"])
        bare = times["bare"]
        case["variants"] = {
            name: {**summary(ts), "ratio_to_bare": paired_ratio(ts, bare)}
            for name, ts in times.items()
        }
        chain: dict[str, Any] = {"runs": "chain" in times}
        if "chain" in info["errors"]:
            chain["error"] = info["errors"]["chain"]
        if chain["runs"] and batch == 1:  # sample 0 is the same image at every batch size
            hook_maps = fv.capture_feature_maps(model, x, max_channels=MAX_CHANNELS)
            chain_maps = fv.chain_feature_maps(model, x, max_channels=MAX_CHANNELS)
            chain["fidelity"] = chain_fidelity(hook_maps, chain_maps)
        case["chain"] = chain
        if cfg.device.startswith("cuda"):
            for name, mem in measure_memory(variants, cfg.device).items():
                case["variants"][name].update(mem)
    if "fx_build_s" in info:
        case["fx_build_ms"] = info["fx_build_s"] * 1000.0
    case["errors"] = info["errors"]
    del model, x, variants
    gc.collect()
    if cfg.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return case


# ---------------------------------------------------------------------------------------------
# end to end
# ---------------------------------------------------------------------------------------------
def _capture(model: nn.Module, x: torch.Tensor, layers: list[str], device: str) -> dict[str, Any]:
    with fv.FeatureCapture(model, layers, max_channels=MAX_CHANNELS) as cap, torch.no_grad():
        model(x)
    synchronize(device)
    return cap.maps


def _ours(maps: dict[str, torch.Tensor], out: Path) -> None:
    with fv.TensorBoardWriter(out) as tb:
        tb.log_feature_maps(maps, step=0)


def _make_grid_add_image(maps: dict[str, torch.Tensor], out: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter
    from torchvision.utils import make_grid

    writer = SummaryWriter(log_dir=str(out))
    for name, m in maps.items():
        grid = make_grid(m.unsqueeze(1), nrow=8, normalize=True, scale_each=True)
        writer.add_image(f"feature_maps/{fv.layer_tag(name)}", grid, 0)
    writer.close()


def _article(maps: dict[str, torch.Tensor], out: Path) -> None:
    """The article's loop: a 30x30-inch pyplot figure of 8x8 gray subplots per layer."""
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    for num_layer, m in enumerate(maps.values()):
        plt.figure(figsize=(ARTICLE_INCHES, ARTICLE_INCHES))
        layer_viz = m.cpu()
        for i, fmap in enumerate(layer_viz):
            if i == 64:
                break
            plt.subplot(8, 8, i + 1)
            plt.imshow(fmap.numpy(), cmap="gray")
            plt.axis("off")
        plt.savefig(out / f"layer_{num_layer}.png", dpi=ARTICLE_DPI)
        plt.close()


@contextlib.contextmanager
def _agg_backend() -> Iterator[None]:
    import matplotlib
    import matplotlib.pyplot as plt

    previous = matplotlib.get_backend()
    plt.switch_backend("agg")
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            plt.switch_backend(previous)


def run_end_to_end(cfg: Config, workdir: Path) -> dict[str, Any]:
    """Forward + capture + a grid per conv layer written to disk, three ways."""
    model = build_model(cfg.e2e_model, cfg.device)
    x = build_input(cfg.e2e_size, 1, cfg.device)
    layers = list(fv.find_conv_layers(model))
    if cfg.e2e_layers is not None:
        layers = layers[: cfg.e2e_layers]
    paths: dict[str, Callable[[dict[str, torch.Tensor], Path], None]] = {
        "featureviz": _ours,
        "make_grid_add_image": _make_grid_add_image,
        "article_matplotlib": _article,
    }
    counter = iter(range(10**6))

    def one(path: str) -> tuple[float, float]:
        out = workdir / f"{path}-{next(counter)}"
        t0 = time.perf_counter()
        maps = _capture(model, x, layers, cfg.device)
        t1 = time.perf_counter()
        paths[path](maps, out)
        t2 = time.perf_counter()
        shutil.rmtree(out, ignore_errors=True)
        return t1 - t0, t2 - t0

    with _agg_backend():
        # Warm-up: every path once on the first layer (imports, font cache, first figure).
        for fn in paths.values():
            maps = _capture(model, x, layers[:1], cfg.device)
            out = workdir / f"warmup-{next(counter)}"
            fn(maps, out)
            shutil.rmtree(out, ignore_errors=True)
        runs: dict[str, list[tuple[float, float]]] = {p: [] for p in paths}
        for r in range(cfg.e2e_repeats):
            for p in ("featureviz", "make_grid_add_image"):
                runs[p].append(one(p))
            if r < cfg.article_repeats:
                runs["article_matplotlib"].append(one("article_matplotlib"))
    result: dict[str, Any] = {
        "model": cfg.e2e_model,
        "size": cfg.e2e_size,
        "layers": len(layers),
        "channels_per_layer": MAX_CHANNELS,
        "article_dpi": ARTICLE_DPI,
        "article_figure_inches": ARTICLE_INCHES,
        "definition": (
            "each timed run starts from the model and the input tensor: one forward pass with "
            f"FeatureCapture of the {len(layers)} conv layers (first {MAX_CHANNELS} channels), "
            "then one grid per layer written to disk (writer closed / figures saved)"
        ),
        "paths": {},
    }
    for p, rs in runs.items():
        result["paths"][p] = {
            "runs": len(rs),
            "total_ms": statistics.median(t for _, t in rs) * 1000.0,
            "forward_capture_ms": statistics.median(f for f, _ in rs) * 1000.0,
            "render_write_ms": statistics.median(t - f for f, t in rs) * 1000.0,
        }
    ours = result["paths"]["featureviz"]
    result["speedup"] = {
        p: {
            "total": result["paths"][p]["total_ms"] / ours["total_ms"],
            "render_write": result["paths"][p]["render_write_ms"] / ours["render_write_ms"],
        }
        for p in ("article_matplotlib", "make_grid_add_image")
    }
    return result


# ---------------------------------------------------------------------------------------------
# the whole run
# ---------------------------------------------------------------------------------------------
def machine_info(device: str) -> dict[str, Any]:
    """Where the figures come from."""
    cpu_model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "torch_featureviz": fv.__version__,
        "numpy": _version("numpy"),
        "matplotlib": _version("matplotlib"),
        "tensorboard": _version("tensorboard"),
        "captum": _version("captum"),
        "torchlens": _version("torchlens"),
        "gpu": None,
        "cuda": torch.version.cuda,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    with contextlib.suppress(OSError):
        info["load_average_start"] = list(os.getloadavg())
    return info


def _target(name: str, value: float, op: str, limit: float) -> dict[str, Any]:
    met = value <= limit if op == "<=" else value >= limit
    return {"name": name, "value": value, "op": op, "limit": limit, "met": met}


#: Hook capture of every conv of resnet50/224 against the bare forward, per device: issue 15 on
#: CUDA (batch 32, with the extra peak memory), issue 14 on CPU (batch 1, one capture reused).
HOOK_LIMIT = {"cuda": 1.02, "cpu": 1.04}
CUDA_EXTRA_MEMORY_LIMIT_PCT = 2.0


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issues' targets that this run can check (none where resnet50/224 was not run)."""
    out: list[dict[str, Any]] = []
    device = results["device"]
    cuda = device.startswith("cuda")
    cases = {(c["model"], c["size"], c["batch"]): c for c in results["cases"]}
    key = ("resnet50", 224, 32) if cuda else ("resnet50", 224, 1)
    case = cases.get(key)
    where = f"resnet50 {key[1]} batch {key[2]} ({device})"
    if case and "hook" in case["variants"]:
        v = case["variants"]
        hook, bare = v["hook"], v["bare"]
        limit = HOOK_LIMIT["cuda" if cuda else "cpu"]
        out.append(
            _target(f"hook capture, one capture reused / bare, {where}",
                    hook["ratio_to_bare"], "<=", limit)
        )
        if "hook_reuse" in v:
            out.append(
                _target(f"hook capture, reuse_buffers=True / bare, {where}",
                        v["hook_reuse"]["ratio_to_bare"], "<=", limit)
            )
        if "naive_clone" in v:
            out.append(
                _target(
                    f"hook capture reused / naive .clone() hooks, {where}",
                    hook["ratio_to_bare"] / v["naive_clone"]["ratio_to_bare"],
                    "<=",
                    1.0,
                )
            )
        if cuda and "peak_mb" in hook and "peak_mb" in bare:
            extra = 100.0 * (hook["peak_mb"] - bare["peak_mb"]) / bare["peak_mb"]
            out.append(
                _target(f"extra peak memory of hook capture, % of bare, {where}",
                        extra, "<=", CUDA_EXTRA_MEMORY_LIMIT_PCT)
            )
    e2e = results.get("end_to_end")
    if e2e and e2e["model"] == "resnet50" and e2e["layers"] == 53:
        for path, limit in (("article_matplotlib", 100.0), ("make_grid_add_image", 10.0)):
            value = e2e["speedup"][path]["total"]
            out.append(
                _target(f"end-to-end speed-up over {path} (resnet50, 53 layers)",
                        value, ">=", limit)
            )
    return out


def run_benchmark(
    cfg: Config,
    *,
    progress: Callable[[str], None] = print,
    checkpoint: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Measure everything ``cfg`` asks for and return the JSON-ready results.

    ``checkpoint`` receives the partial results (``"complete": False``) after each step, so a
    run stopped by a time limit still leaves its figures behind.
    """
    started = time.perf_counter()
    threads_before = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _run_benchmark(cfg, progress, checkpoint or (lambda r: None), started)
    finally:
        torch.set_num_threads(threads_before)


def _run_benchmark(
    cfg: Config,
    progress: Callable[[str], None],
    checkpoint: Callable[[dict[str, Any]], None],
    started: float,
) -> dict[str, Any]:
    results: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "benchmark": "bench_featureviz",
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": cfg.device,
        "quick": cfg.quick,
        "config": asdict(cfg),
        "machine": machine_info(cfg.device),
        "memory_method": (
            "cuda: torch.cuda.max_memory_allocated during one call (peak includes model and "
            "input; extra = peak - allocated before the call)"
            if cfg.device.startswith("cuda")
            else "cpu: peak RSS (VmHWM) of one call, in a separate process with glibc "
            "M_MMAP_THRESHOLD fixed at 64 KiB (freed tensors leave the RSS) and VmHWM reset via "
            "/proc/self/clear_refs before each call; extra = VmHWM - VmRSS before the call"
        ),
        "timing_method": (
            f"{cfg.warmup} warm-up call(s) per variant, then up to {cfg.repeats} rounds, "
            "variants interleaved round-robin; medians; ratio_to_bare = median of per-round "
            "ratios to the bare forward of the same round"
            + ("; CUDA events + synchronize" if cfg.device.startswith("cuda") else "")
        ),
        "complete": False,
        "cases": [],
    }
    phases: dict[str, float] = {}
    results["phase_s"] = phases
    # End to end first: it carries two of the targets, and a time-limited run keeps it.
    if cfg.e2e:
        progress(f"[bench] end to end: {cfg.e2e_model}, grids of every conv layer to disk ...")
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="featureviz-bench-") as tmp:
            results["end_to_end"] = run_end_to_end(cfg, Path(tmp))
        phases["end_to_end"] = time.perf_counter() - t0
        checkpoint(results)
    grid = [(m, s, b) for m in cfg.models for s in cfg.sizes for b in cfg.batches]
    for model_name, size, batch in grid:
        progress(f"[bench] {model_name} {size}px batch {batch} on {cfg.device} ...")
        t0 = time.perf_counter()
        results["cases"].append(run_case(model_name, size, batch, cfg))
        phases[f"{model_name}/{size}/{batch}"] = time.perf_counter() - t0
        results["targets"] = targets(results)
        checkpoint(results)
    if not cfg.device.startswith("cuda"):
        progress("[bench] peak RSS per variant (separate process) ...")
        t0 = time.perf_counter()
        mem = _run_child(
            {"job": "memory", "config": asdict(cfg), "cases": grid}, timeout_s=1800
        )
        results["memory_error"] = mem.pop("error", None)
        phases["memory"] = time.perf_counter() - t0
        for case in results["cases"]:
            for name, m in mem.get(f"{case['model']}/{case['size']}/{case['batch']}", {}).items():
                if name in case["variants"]:
                    case["variants"][name].update(m)
        checkpoint(results)
    if cfg.torchlens:
        tl_cases = [c for c in grid if c[2] == 1]  # torchlens logs every op: batch 1 only
        progress(f"[bench] torchlens, {len(tl_cases)} cases (separate process) ...")
        t0 = time.perf_counter()
        tl = _run_child({"job": "torchlens", "config": asdict(cfg), "cases": tl_cases}, 3600)
        phases["torchlens"] = time.perf_counter() - t0
        results["torchlens_error"] = tl.pop("error", None)
        for case in results["cases"]:
            res = tl.get(f"{case['model']}/{case['size']}/{case['batch']}")
            if not res:
                continue
            case["errors"].update(res.get("errors", {}))
            if "times" in res:
                case["variants"]["torchlens"] = {
                    **summary(res["times"]),
                    "ratio_to_bare": res["ratio_to_bare"],
                    "bare_median_ms_same_process": statistics.median(res["bare_times"]) * 1e3,
                    **res.get("memory", {}).get("torchlens", {}),
                }
    results["targets"] = targets(results)
    results["complete"] = True
    with contextlib.suppress(OSError):
        results["machine"]["load_average_end"] = list(os.getloadavg())
    results["wall_s"] = time.perf_counter() - started
    return results


# ---------------------------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------------------------
def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None or not math.isfinite(value) else format(value, spec)


def format_tables(results: dict[str, Any]) -> str:
    """Markdown tables of every figure, as printed and as pasted into RESULTS.md."""
    names = [n for n in VARIANT_LABELS if any(n in c["variants"] for c in results["cases"])]
    others = [n for n in names if n != "bare"]
    lines: list[str] = []
    m = results["machine"]
    lines.append(
        f"Device: {results['device']}"
        + (f" ({m['gpu']})" if m.get("gpu") else "")
        + f"; CPU: {m['cpu_model']} x{m['cpu_count']} ({m['torch_threads']} torch threads); "
        f"torch {m['torch']}, torchvision {m['torchvision']}"
        + ("; quick mode" if results["quick"] else "")
    )
    lines.append("")
    lines.append("Time: bare forward in ms; every other column is a ratio to it (x).")
    lines.append("")
    head = ["model", "size", "batch", "bare ms"] + [VARIANT_LABELS[n] for n in others]
    head += ["chain cos median", "chain cos min"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for c in results["cases"]:
        v = c["variants"]
        row = [c["model"], str(c["size"]), str(c["batch"]), _fmt(v["bare"]["median_ms"], ".1f")]
        for n in others:
            if n in v:
                row.append(_fmt(v[n]["ratio_to_bare"], ".2f"))
            else:
                row.append("breaks" if n == "chain" and not c["chain"]["runs"] else "n/a")
        fid = c["chain"].get("fidelity", {})
        row += [_fmt(fid.get("median"), ".3f"), _fmt(fid.get("min"), ".3f")]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    if any("peak_mb" in v for c in results["cases"] for v in c["variants"].values()):
        what = "CUDA max allocated" if results["device"].startswith("cuda") else "peak RSS"
        lines.append(
            f"Peak memory ({what}): bare peak in MB; others: extra MB over the memory in use "
            "before the call (bare's own extra in brackets)."
        )
        lines.append("")
        head = ["model", "size", "batch", "bare peak MB"] + [VARIANT_LABELS[n] for n in names]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for c in results["cases"]:
            v = c["variants"]
            peak = _fmt(v["bare"].get("peak_mb"), ".0f")
            row = [c["model"], str(c["size"]), str(c["batch"]), peak]
            for n in names:
                extra = v.get(n, {}).get("extra_mb")
                cell = _fmt(extra, ".1f")
                row.append(f"({cell})" if n == "bare" else cell)
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    e2e = results.get("end_to_end")
    if e2e:
        lines.append(
            f"End to end: {e2e['model']} {e2e['size']}px, {e2e['layers']} conv layers, forward + "
            f"capture + one grid per layer written to disk (median ms; speed-up of "
            "torch_featureviz)."
        )
        lines.append("")
        lines.append("| path | runs | total ms | forward+capture ms | render+write ms | "
                     "ours faster (total) | ours faster (render+write) |")
        lines.append("|---|---|---|---|---|---|---|")
        labels = {
            "featureviz": "torch_featureviz TensorBoardWriter",
            "make_grid_add_image": "make_grid + add_image",
            "article_matplotlib": f"article pyplot 8x8 subplots, {ARTICLE_INCHES} in @ "
            f"{e2e['article_dpi']} dpi",
        }
        for p, r in e2e["paths"].items():
            sp = e2e["speedup"].get(p)
            lines.append(
                f"| {labels[p]} | {r['runs']} | {r['total_ms']:.0f} | "
                f"{r['forward_capture_ms']:.0f} | {r['render_write_ms']:.0f} | "
                + (f"{sp['total']:.1f}x | {sp['render_write']:.1f}x |" if sp else "1 | 1 |")
            )
        lines.append("")
    if results.get("targets"):
        lines.append("| target | measured | limit | |")
        lines.append("|---|---|---|---|")
        for t in results["targets"]:
            lines.append(
                f"| {t['name']} | {t['value']:.3f} | {t.get('op', '')} {t['limit']} | "
                f"{'PASS' if t['met'] else 'MISS'} |"
            )
        lines.append("")
    errors = [
        f"- {c['model']} {c['size']} b{c['batch']} {n}: {e}"
        for c in results["cases"]
        for n, e in c["errors"].items()
    ]
    if errors:
        lines.append("Variants that could not run:")
        lines.extend(errors)
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench_featureviz",
        description="Benchmark hook capture, chain mode and peers, and end-to-end logging.",
    )
    parser.add_argument("--quick", action="store_true", help="a < 1 minute smoke run on CPU")
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default=None,
        help="default: cuda when available, else cpu",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        help="where to write the results (default benchmarks/results/bench_<device>.json, "
        "bench_<device>_quick.json with --quick)",
    )
    parser.add_argument("--markdown", type=Path, default=None, help="also write the tables here")
    parser.add_argument("--models", nargs="+", default=None, help=f"subset of {', '.join(MODELS)}")
    parser.add_argument("--sizes", nargs="+", type=int, default=None, help="input sizes")
    parser.add_argument(
        "--batches",
        nargs="+",
        type=int,
        default=None,
        help="batch sizes (default: 1 and 32 on CUDA, 1 on CPU)",
    )
    parser.add_argument(
        "--no-end-to-end", action="store_true", help="skip the end-to-end logging paths"
    )
    parser.add_argument(
        "--no-peers", action="store_true", help="skip the optional peers (captum, torchlens)"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed rounds per case (default 31 on CPU, 7 on CUDA; 3 with --quick)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's default; 1 with --quick on CPU)",
    )
    parser.add_argument(
        "--from-json",
        type=Path,
        default=None,
        metavar="PATH",
        help="print (and --markdown) the tables of an earlier run's JSON; measure nothing",
    )
    parser.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the tables; write JSON (and Markdown). Returns an exit code."""
    args = build_parser().parse_args(argv)
    if args._child is not None:
        return _child_main(json.loads(args._child))
    if args.from_json is not None:
        table = format_tables(json.loads(args.from_json.read_text()))
        print(table)
        if args.markdown:
            args.markdown.parent.mkdir(parents=True, exist_ok=True)
            args.markdown.write_text(table + "\n")
        return 0
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print("bench_featureviz: error: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    if args.models:
        unknown = sorted(set(args.models) - set(torchvision.models.list_models()))
        if unknown:
            print(f"bench_featureviz: error: unknown models {unknown}", file=sys.stderr)
            return 2
    if args.batches and min(args.batches) < 1 or args.sizes and min(args.sizes) < 1:
        print("bench_featureviz: error: --batches and --sizes must be >= 1", file=sys.stderr)
        return 2
    if args.threads is not None and args.threads < 1:
        print("bench_featureviz: error: --threads must be >= 1", file=sys.stderr)
        return 2
    if args.repeats is not None and args.repeats < 3:
        print("bench_featureviz: error: --repeats must be >= 3", file=sys.stderr)
        return 2
    cfg = make_config(
        device,
        quick=args.quick,
        models=args.models,
        sizes=args.sizes,
        batches=args.batches,
        peers=not args.no_peers,
        threads=args.threads,
        e2e=not args.no_end_to_end,
    )
    if args.repeats is not None:
        cfg = dataclasses.replace(cfg, repeats=args.repeats)
    suffix = "_quick" if cfg.quick else ""
    path = args.json or BENCH_DIR / "results" / f"bench_{device}{suffix}.json"
    path.parent.mkdir(parents=True, exist_ok=True)

    def save(results: dict[str, Any]) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(results, indent=1) + "\n")
        tmp.replace(path)

    results = run_benchmark(
        cfg, progress=lambda s: print(s, file=sys.stderr, flush=True), checkpoint=save
    )
    save(results)
    table = format_tables(results)
    print(table)
    print(f"\nJSON: {path}", file=sys.stderr)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
