"""Watch a CNN's filters and feature maps evolve in a plain PyTorch training loop.

    python examples/train_plain.py            # ~30 s on 2 CPU cores
    tensorboard --logdir runs/plain --samples_per_plugin images=0

The monitor is attached once, before the loop (and before torch.compile, if you use it).
``monitor.step()`` after each optimizer step costs nothing on unsampled steps; every ``--every``
steps it captures the training batch's feature maps, a fixed probe image's feature maps, the
filters and activation statistics, and a background thread writes them to TensorBoard.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from torch_featureviz import FeatureMonitor, tensorboard_command
from torch_featureviz.demo import build_demo_model, demo_probe, make_pattern_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--out", default="runs/plain")
    args = parser.parse_args()

    torch.manual_seed(0)
    x_train, y_train = make_pattern_dataset(4096, seed=0)
    x_test, y_test = make_pattern_dataset(800, seed=1)
    model = build_demo_model()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)

    # Attach once. The probe (a photo) is run in eval mode under no_grad at each capture, and
    # the model is restored exactly afterwards.
    monitor = FeatureMonitor(model, args.out, every=args.every, probe=demo_probe(64))
    with monitor:
        model.train()
        for step in range(args.steps):
            idx = torch.randint(0, len(x_train), (64,))
            x, y = (x_train[idx] - 0.5) / 0.5, y_train[idx]
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            monitor.step()  # free unless this step is sampled
            if step % 50 == 0:
                print(f"step {step:4d}  loss {loss.item():.3f}")

    model.eval()
    with torch.no_grad():
        acc = (model((x_test - 0.5) / 0.5).argmax(1) == y_test).float().mean().item()
    print(f"held-out accuracy {acc:.1%}; {monitor.captured} captures, {monitor.dropped} dropped")
    print(f"view: {tensorboard_command(args.out)}")


if __name__ == "__main__":
    main()
