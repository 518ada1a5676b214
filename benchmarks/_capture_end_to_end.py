"""The capture benchmark's end-to-end part: the forward with capture of every conv layer, then a
grid per layer written to disk, by torch_featureviz, by ``make_grid`` + ``add_image`` and by the
original article's pyplot path."""

from __future__ import annotations

import contextlib
import shutil
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

import torch_featureviz as fv
from benchmarks._capture_variants import MAX_CHANNELS, Config, build_input, build_model
from benchmarks._harness import (
    synchronize,
)

#: dpi of the article path's 30x30-inch figures: 1500x1500 px, so each of the 8x8 panels is
#: ~170 px, above the largest resnet50 map (112 px): nothing is lost, and the baseline is faster
#: than at matplotlib's default of 100 dpi (which gives the same picture at 3000x3000 px).
ARTICLE_DPI = 50
ARTICLE_INCHES = 30


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


