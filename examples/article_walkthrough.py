"""The original article's walkthrough, redone with torch_featureviz.

The article ("Visualizing filters and feature maps of a CNN in PyTorch") did four things with a
ResNet-50:

1. listed its layers with an ``Extractor`` built from ``list(model.children())``;
2. plotted the 64 filters of the first conv layer (input channel 0 of each, in grey);
3. fed an image through the conv layers one after another, each output into the next, and
   plotted up to 64 feature maps of every layer;
4. (implicitly) took those chained maps for what the network computes.

Here the same steps use the library's API, and step 4 is checked: hook mode captures what the
network really computes, and the two are compared layer by layer. Every figure goes to disk.

Run it::

    python examples/article_walkthrough.py --out walkthrough          # random-weight resnet50
    python examples/article_walkthrough.py --weights DEFAULT          # ImageNet weights (download)
    python examples/article_walkthrough.py --model resnet18 --input-size 112   # quicker
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from torch_featureviz import (
    Extractor,
    capture_feature_maps,
    chain_feature_maps,
    load_image,
    load_model,
    make_filter_grid,
    map_similarity,
    save_comparison_figure,
    save_feature_figures,
    save_grid_figure,
    save_similarity_figure,
    to_display_image,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("article_walkthrough"),
                        help="output directory (default: %(default)s)")
    parser.add_argument("--model", default="resnet50", help="torchvision model (resnet50)")
    parser.add_argument("--weights", default=None,
                        help="torchvision weights such as DEFAULT (default: random weights)")
    parser.add_argument("--image", default=None,
                        help="a PNG or JPEG (default: the built-in photo of Grace Hopper)")
    parser.add_argument("--input-size", type=int, default=224, help="without --weights (224)")
    parser.add_argument("--max-channels", type=int, default=64,
                        help="feature maps shown per layer, as in the article (64)")
    parser.add_argument("--quiet", action="store_true", help="print nothing")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    say = (lambda *a: None) if args.quiet else print
    out: Path = args.out
    loaded = load_model(args.model, weights=args.weights, input_size=args.input_size)
    model = loaded.model
    say(f"model: {loaded.description}")

    # 1. The article's Extractor, on the list of the model's children, as it was called there.
    extractor = Extractor(list(model.children())).activate()
    for key, value in extractor.info().items():
        say(f"  {key}: {value}")

    # 2. The filters of the first conv layer: the article's view (input channel 0, grey) and
    #    the whole RGB filter, which is what a first layer actually responds to.
    first = extractor.CNN_layers[0]
    first_name = next(n for n, m in model.named_modules() if m is first)
    weight_shape = tuple(first.weight.shape)
    for channel, name in ((0, "article_channel0"), ("rgb", "rgb")):
        grid = make_filter_grid(first, channel=channel, max_filters=64)
        path = save_grid_figure(
            grid, out / f"step2_first_layer_filters_{name}.png",
            title=f"{first_name}: filters {weight_shape}, {name.replace('_', ' ')}",
        )
        say(f"step 2: {path}")

    # 3. Feature maps of every conv layer, the article's way (chain) and the real way (hook).
    image = load_image(args.image)
    x = loaded.transform(image)
    save_grid_figure(to_display_image(x), out / "step3_input.png", title="input (normalised)")
    # Chain mode on the model itself (not its children list) so that layer names are the
    # qualified ones hook mode uses ("layer1.0.conv1", not "4.0.conv1").
    chain = chain_feature_maps(model, x, max_channels=args.max_channels)
    hook = capture_feature_maps(model, x, max_channels=args.max_channels)
    chain_files = save_feature_figures(chain, out / "step3_chain", mode="chain")
    hook_files = save_feature_figures(hook, out / "step3_hook", mode="hook")
    say(f"step 3: {len(chain_files)} chain figures in {out / 'step3_chain'}, "
        f"{len(hook_files)} hook figures in {out / 'step3_hook'}")

    # 4. Chain against hook: per-layer similarity (the larger map is average-pooled to the
    #    smaller size first: chain maps come out at twice the resolution after the stem).
    names = [n for n in chain if n in hook]
    similarity = {n: map_similarity(chain[n], hook[n]) for n in names}
    path = save_similarity_figure(similarity, out / "step4_similarity.png")
    for name in names[:3] + names[-1:]:
        save_comparison_figure(
            name, chain[name], hook[name], out / "step4_compare" / f"{name}.png",
            similarity=similarity[name],
        )
    say(f"step 4: {path}")
    for name, value in similarity.items():
        say(f"  {name:<24} chain {tuple(chain[name].shape)!s:<16} hook "
            f"{tuple(hook[name].shape)!s:<16} cosine {value:+.3f}")
    departs = next((n for n, v in similarity.items() if not v > 0.99), None)
    say(f"chain mode departs from the real network at {departs!r}" if departs
        else "chain mode matches the real network at every layer")
    return 0


if __name__ == "__main__":
    with torch.no_grad():
        sys.exit(main())
