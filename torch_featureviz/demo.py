"""The built-in demo: train a small ResNet on generated patterns and watch its filters evolve.

Nothing is downloaded. The dataset is drawn procedurally (stripes at four orientations, rings,
checkerboards, discs and squares in random colours, sizes, phases and positions, with noise),
deterministically from a seed. A small ResNet-style CNN (a 5x5 stem, three torchvision
``BasicBlock`` stages with BatchNorm and residuals) learns it in about a minute on 2 CPU cores,
with a :class:`~torch_featureviz.FeatureMonitor` attached. The run writes into ``--out``
(default ``featureviz-demo/``):

- ``tensorboard/``: filters, feature maps (training batch and the probe photo) and activation
  statistics over training;
- ``figures/``: the final filters and the probe photo's feature maps as PNGs, the first-layer
  filters at the first and the last step side by side, and samples of the dataset;
- ``model.pt``: the trained ``state_dict`` (load it into :func:`build_demo_model`);
- ``summary.json``: held-out accuracy and where everything is.

Run it with ``featureviz demo`` or ``python -m torch_featureviz.demo``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "CLASSES",
    "DemoResNet",
    "add_demo_arguments",
    "build_demo_model",
    "main",
    "make_pattern_dataset",
    "run_demo",
]

#: The demo dataset's classes, in label order.
CLASSES = (
    "horizontal stripes",
    "vertical stripes",
    "diagonal stripes /",
    "diagonal stripes \\",
    "rings",
    "checkerboard",
    "disc",
    "square",
)

#: Inputs are scaled from [0, 1] to [-1, 1] with this mean and std (the probe photo too).
MEAN, STD = 0.5, 0.5

DEFAULT_STEPS = 600
QUICK_STEPS = 120


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return torch.rand(n, 1, 1, generator=g) * (hi - lo) + lo


def _patterns(label: int, n: int, size: int, g: torch.Generator) -> torch.Tensor:
    """``(n, size, size)`` values in [0, 1]: the foreground weight of class ``label``."""
    coords = torch.linspace(-1.0, 1.0, size)
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    x, y = x.expand(n, size, size), y.expand(n, size, size)
    freq = _uniform(n, 2.0, 4.5, g) * math.pi  # 2 to 4.5 periods across the image
    phase = _uniform(n, 0.0, 2 * math.pi, g)
    jitter = _uniform(n, -0.15, 0.15, g)  # about +-9 degrees of orientation noise
    cx, cy = _uniform(n, -0.35, 0.35, g), _uniform(n, -0.35, 0.35, g)
    if label < 4:
        # The wave runs along direction `angle` (y points down): stripes of class 0 are
        # horizontal, 1 vertical, 2 like "/", 3 like "\\".
        angle = torch.tensor([0.5, 0.0, 0.25, -0.25])[label] * math.pi + jitter
        u = x * torch.cos(angle) + y * torch.sin(angle)
        wave = torch.sin(freq * u + phase)
    elif label == 4:
        r = torch.sqrt((x - cx) ** 2 + (y - cy) ** 2)
        wave = torch.sin(freq * 1.3 * r + phase)
    elif label == 5:
        wave = torch.sin(freq * x + phase) * torch.sin(freq * y + phase * 0.7)
        wave = wave.sign() * wave.abs().sqrt()
    else:
        radius = _uniform(n, 0.3, 0.6, g)
        if label == 6:
            dist = torch.sqrt((x - cx) ** 2 + (y - cy) ** 2)
        else:
            dist = torch.maximum((x - cx).abs(), (y - cy).abs()) * 1.15
        wave = torch.tanh((radius - dist) * 12.0)
    return (wave + 1.0) / 2.0


def make_pattern_dataset(
    n: int, *, size: int = 32, seed: int = 0, noise: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``n`` labelled pattern images, deterministically from ``seed``.

    Args:
        n: number of images (the classes are balanced to within one image).
        size: image height and width.
        seed: the same seed always gives the same images and labels.
        noise: standard deviation of the added Gaussian pixel noise.

    Returns:
        ``(images, labels)``: ``(n, 3, size, size)`` float32 in [0, 1] and ``(n,)`` int64
        indices into :data:`CLASSES`.

    Example::

        >>> x, y = make_pattern_dataset(16, seed=0)
        >>> x.shape, y.shape, bool(x.min() >= 0) and bool(x.max() <= 1)
        (torch.Size([16, 3, 32, 32]), torch.Size([16]), True)
    """
    for value, name in ((n, "n"), (size, "size")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}.")
    g = torch.Generator().manual_seed(int(seed))
    labels = (torch.arange(n) % len(CLASSES))[torch.randperm(n, generator=g)]
    images = torch.empty(n, 3, size, size)
    for label in range(len(CLASSES)):
        idx = (labels == label).nonzero().flatten()
        if idx.numel() == 0:
            continue
        k = idx.numel()
        alpha = _patterns(label, k, size, g).unsqueeze(1)  # (k, 1, H, W)
        fg = torch.rand(k, 3, 1, 1, generator=g)
        # A background far enough from the foreground that every pattern stays visible.
        bg = (fg + 0.35 + torch.rand(k, 3, 1, 1, generator=g) * 0.3) % 1.0
        images[idx] = bg * (1 - alpha) + fg * alpha
    images += torch.randn(images.shape, generator=g) * noise
    return images.clamp_(0.0, 1.0), labels


class DemoResNet(nn.Module):
    """The demo's small ResNet: a 5x5 stem and three ``BasicBlock`` stages (16, 32, 64 ch).

    Conv names: ``stem.conv``, ``layer1.0.conv1``, ..., ``layer3.0.downsample.0``.
    """

    def __init__(self, num_classes: int = len(CLASSES)) -> None:
        from torchvision.models.resnet import BasicBlock

        super().__init__()

        def stage(cin: int, cout: int, stride: int) -> nn.Sequential:
            down = None
            if stride != 1 or cin != cout:
                down = nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
                )
            return nn.Sequential(BasicBlock(cin, cout, stride=stride, downsample=down))

        self.stem = nn.Sequential(
            OrderedDict(
                conv=nn.Conv2d(3, 16, 5, padding=2, bias=False),
                bn=nn.BatchNorm2d(16),
                relu=nn.ReLU(inplace=True),
            )
        )
        self.layer1 = stage(16, 16, 1)
        self.layer2 = stage(16, 32, 2)
        self.layer3 = stage(32, 64, 2)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(x.mean(dim=(2, 3)))


def build_demo_model(num_classes: int = len(CLASSES), *, seed: int = 0) -> DemoResNet:
    """A freshly initialised :class:`DemoResNet`, the same for the same ``seed``.

    Example::

        >>> build_demo_model()(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 8])
    """
    torch.manual_seed(seed)
    return DemoResNet(num_classes)


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return (x - MEAN) / STD


def demo_probe(size: int = 96) -> torch.Tensor:
    """The built-in photo (Grace Hopper), ``(1, 3, size, size)``, scaled like the demo's inputs."""
    from torch_featureviz.loading.images import load_image, preprocess

    return preprocess(load_image(), size=size, mean=(MEAN,) * 3, std=(STD,) * 3)


def _save_first_vs_last(first: torch.Tensor, last: torch.Tensor, steps: int, path: Path) -> Path:
    """The first-layer filters at step 0 and after training, side by side, as RGB tiles."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from torch_featureviz._validation import check_writable_dir
    from torch_featureviz.render.grids import make_filter_grid

    check_writable_dir(path.parent)
    change = float((last - first).norm() / first.norm())
    fig = Figure(figsize=(10, 5.6), dpi=100)
    FigureCanvasAgg(fig)
    panels = ((first, "step 0 (random init)"), (last, f"step {steps} (trained)"))
    for i, (w, title) in enumerate(panels):
        ax = fig.add_subplot(1, 2, i + 1)
        grid = make_filter_grid(w, channel="rgb", upscale=8, padding=2)
        ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(title, fontsize=12)
        ax.set_axis_off()
    fig.suptitle(
        f"First-layer filters ({last.shape[0]} x {last.shape[1]}x{last.shape[2]}x{last.shape[3]}, "
        f"shown as RGB, each tile scaled to its own range)\n"
        f"relative change over training: {change:.0%} of the initial L2 norm",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path)
    fig.clear()
    return path


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the demo's options to ``parser`` (used by ``featureviz demo``)."""
    parser.add_argument(
        "--out", default="featureviz-demo", help="output directory (default: %(default)s)"
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"training steps (default: {DEFAULT_STEPS}, about a minute on 2 CPU cores)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a short run of {QUICK_STEPS} steps (for tests and a first look)",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="default: %(default)s")
    parser.add_argument(
        "--every", type=int, default=None, help="capture every N steps (default: steps / 40)"
    )
    parser.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    parser.add_argument(
        "--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _check_args(args: argparse.Namespace) -> tuple[int, int, torch.device]:
    steps = args.steps if args.steps is not None else (QUICK_STEPS if args.quick else DEFAULT_STEPS)
    if steps < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}.")
    if args.batch_size < 2:
        raise ValueError(f"--batch-size must be >= 2, got {args.batch_size}.")
    every = args.every if args.every is not None else max(1, steps // 40)
    if every < 1:
        raise ValueError(f"--every must be >= 1, got {every}.")
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(args.device)
        except RuntimeError as e:
            raise ValueError(f"--device {args.device!r} is not a device: {e}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {args.device!r}: CUDA is not available here; use cpu.")
    return steps, every, device


def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 512) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            pred = model(_normalize(x[i : i + batch])).argmax(1)
            correct += int((pred == y[i : i + batch]).sum())
    return correct / len(x)


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo with parsed ``args`` (see :func:`add_demo_arguments`); returns an exit code.

    Prints the held-out accuracy, where every output is, and the ``tensorboard`` command.

    Raises:
        ValueError: a bad option value (the CLI turns it into a one-line error).
        OSError: the output directory cannot be written.
    """
    from tqdm import tqdm

    from torch_featureviz._validation import check_writable_dir
    from torch_featureviz.capture.probe import capture_feature_maps
    from torch_featureviz.log.tensorboard import tensorboard_command
    from torch_featureviz.monitor.feature_monitor import FeatureMonitor
    from torch_featureviz.render.figures import (
        save_feature_figures,
        save_filter_figures,
        save_grid_figure,
    )
    from torch_featureviz.render.grids import make_image_grid
    from torch_featureviz.viewer.timelapse import write_timelapse

    steps, every, device = _check_args(args)
    out = Path(args.out)
    check_writable_dir(out)
    figures = out / "figures"
    log_dir = out / "tensorboard"
    started = time.perf_counter()

    n_train = max(4096, min(steps * args.batch_size, 12288))
    train_x, train_y = make_pattern_dataset(n_train, seed=args.seed)
    test_x, test_y = make_pattern_dataset(1600, seed=args.seed + 10_000)
    train_x, train_y = train_x.to(device), train_y.to(device)
    test_x, test_y = test_x.to(device), test_y.to(device)
    model = build_demo_model(seed=args.seed).to(device)
    probe = demo_probe().to(device)
    first_conv: nn.Conv2d = model.stem.conv  # type: ignore[assignment]
    first_filters = first_conv.weight.detach().clone()

    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps, pct_start=0.2)
    loss_fn = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(args.seed + 1)
    order = torch.randperm(len(train_x), generator=g)
    cursor = 0
    recent_loss: deque[float] = deque(maxlen=20)
    recent_acc: deque[float] = deque(maxlen=20)

    # "block": the demo is where a user expects every step in the scrub, so a slow writer
    # (a loaded machine) makes a sampled step wait instead of leaving a hole.
    monitor = FeatureMonitor(
        model, log_dir, every=every, probe=probe, max_channels=16, on_full="block"
    )
    with monitor:
        model.train()
        bar = tqdm(range(steps), desc="training", unit="step", disable=args.no_progress,
                   file=sys.stderr, dynamic_ncols=True)
        for step in bar:
            if cursor + args.batch_size > len(order):
                order = torch.randperm(len(train_x), generator=g)
                cursor = 0
            idx = order[cursor : cursor + args.batch_size].to(device)
            cursor += args.batch_size
            x, y = _normalize(train_x[idx]), train_y[idx]
            logits = model(x)
            loss = loss_fn(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            monitor.step(step)
            if step % 10 == 0 or step == steps - 1:  # a host sync, so not every step
                recent_loss.append(loss.item())
                recent_acc.append((logits.argmax(1) == y).float().mean().item())
                bar.set_postfix(
                    loss=f"{sum(recent_loss) / len(recent_loss):.3f}",
                    acc=f"{sum(recent_acc) / len(recent_acc):.1%}",
                )
        bar.close()
    train_seconds = time.perf_counter() - started

    accuracy = _evaluate(model, test_x, test_y)
    model.cpu().eval()
    torch.save(model.state_dict(), out / "model.pt")

    last_filters = first_conv.weight.detach().clone()
    change = float((last_filters - first_filters.cpu()).norm() / first_filters.norm())
    side_by_side = _save_first_vs_last(
        first_filters.cpu(), last_filters, steps, figures / "first_layer_filters_first_vs_last.png"
    )
    timelapse = write_timelapse(log_dir, "stem.conv", figures / "first_layer_filters_timelapse.gif")
    filter_paths = save_filter_figures(model, figures)
    maps = capture_feature_maps(model, probe.cpu(), max_channels=32)
    map_paths = save_feature_figures(maps, figures, mode="probe", cmap="viridis")
    show = torch.cat([test_x[test_y == c][:6].cpu() for c in range(len(CLASSES))])
    samples = save_grid_figure(
        make_image_grid(show, nrow=6, padding=2, upscale=3),
        figures / "dataset_samples.png",
        title="Held-out samples, one row per class: horizontal, vertical,\n"
        "/ and \\ stripes, rings, checkerboard, disc, square",
    )
    summary = {
        "held_out_accuracy": accuracy,
        "chance": 1 / len(CLASSES),
        "steps": steps,
        "every": every,
        "captures_logged": monitor.captured,
        "captures_dropped": monitor.dropped,
        "first_layer_relative_change": change,
        "seconds": round(time.perf_counter() - started, 1),
        "train_seconds": round(train_seconds, 1),
        "tensorboard": str(log_dir),
        "checkpoint": str(out / "model.pt"),
        "figures": str(figures),
        "first_vs_last": str(side_by_side),
        "timelapse": str(timelapse),
        "tensorboard_command": tensorboard_command(log_dir),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    print(
        f"\nHeld-out accuracy: {accuracy:.1%} on {len(test_x)} images "
        f"({len(CLASSES)} classes, chance {1 / len(CLASSES):.1%}); trained {steps} steps "
        f"in {train_seconds:.0f} s on {device}."
    )
    print(f"First-layer filters changed by {change:.0%} (relative L2 norm).")
    print("\nOutputs:")
    print(
        f"  TensorBoard logs     {log_dir}{os.sep}  "
        f"({monitor.captured} captures, every {every} steps)"
    )
    print(f"  first vs last        {side_by_side}")
    print(f"  time-lapse           {timelapse}")
    print(f"  final filters        {filter_paths[-1]} (+{len(filter_paths) - 1} per-layer)")
    print(f"  probe feature maps   {map_paths[-1]} (+{len(map_paths) - 1} per-layer)")
    print(f"  dataset samples      {samples}")
    print(f"  checkpoint           {out / 'model.pt'}  (build_demo_model().load_state_dict(...))")
    print(f"  summary              {out / 'summary.json'}")
    print("\nView the run in TensorBoard:")
    print(f"  {tensorboard_command(log_dir)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m torch_featureviz.demo``: parse ``argv`` and run the demo."""
    parser = argparse.ArgumentParser(
        prog="python -m torch_featureviz.demo",
        description="Train a small ResNet on generated patterns and watch its filters evolve.",
    )
    add_demo_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_demo(args)
    except (ValueError, OSError) as e:
        print(f"featureviz demo: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("featureviz demo: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
