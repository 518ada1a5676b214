"""``featureviz info MODEL``: the Extractor summary and a table of every conv layer."""

from __future__ import annotations

import argparse
from typing import Any

import torch_featureviz
from torch_featureviz.cli.common import EXIT_OK, table, wrap
from torch_featureviz.cli.infer import (
    as_clip,
    clip_frames,
    forward_inputs,
    resolve_channels,
    with_channel_retry,
)
from torch_featureviz.cli.loading import Parents, format_size, forward, load, select_layers


def _output_sizes(
    model: Any, args: argparse.Namespace, size: int | tuple[int, int], frames: int | None
) -> tuple[dict[str, tuple[int, ...]], dict[str, int]]:
    """Each conv's output shape from one real forward pass of zeros (the model is unchanged)."""
    import torch

    from torch_featureviz.capture.probe import capture_feature_maps
    from torch_featureviz.naming import split_call_key

    h, w = (size, size) if isinstance(size, int) else size
    device = next(model.parameters()).device
    count = max(forward_inputs(model)[0], 1)

    def probe(channels: int) -> dict[str, torch.Tensor]:
        x = as_clip(torch.zeros(1, channels, h, w, device=device), frames)
        with forward(args):
            return capture_feature_maps(model, x if count == 1 else (x,) * count, max_channels=1)

    maps = with_channel_retry(args, probe)
    shapes: dict[str, tuple[int, ...]] = {}
    calls: dict[str, int] = {}
    for key, m in maps.items():
        name, _ = split_call_key(key)
        calls[name] = calls.get(name, 0) + 1
        shapes.setdefault(name, tuple(int(s) for s in m.shape[1:]))
    return shapes, calls


def run(args: argparse.Namespace) -> int:
    loaded = load(args)
    model = loaded.model
    layers = select_layers(model, args)
    info = torch_featureviz.Extractor(model).info()
    size = loaded.input_size
    resolve_channels(args, model)
    frames = clip_frames(args, model, loaded.weights)
    shapes, calls = _output_sizes(model, args, size, frames)
    clip = f"{frames}x" if frames is not None else ""
    size_label = f"{args.input_channels}x{clip}{format_size(size)}"
    rows = [["layer", "in->out", "kernel", "stride", "groups", f"output @ {size_label}"]]
    for name, conv in layers.items():
        out = "not run"
        if name in shapes:
            out = "x".join(str(n) for n in (conv.out_channels, *shapes[name]))
            if calls[name] > 1:
                out += f" ({calls[name]} calls)"
        rows.append(
            [
                name,
                f"{conv.in_channels}->{conv.out_channels}",
                "x".join(str(k) for k in conv.kernel_size),
                "x".join(str(s) for s in conv.stride),
                str(conv.groups),
                out,
            ]
        )
    if args.quiet:
        return EXIT_OK
    print(f"model: {loaded.description}")
    for key, value in info.items():
        print(f"{key}: {value}")
    print()
    for line in table(rows, right={4}):
        print(line)
    print(f"\n{len(layers)} conv layers (output size from one forward pass of zeros).")
    return EXIT_OK


def register(sub: Any, parents: Parents) -> None:
    p = sub.add_parser(
        "info",
        parents=[parents.model],
        help="the Extractor summary and a table of every conv layer",
        description=wrap(
            "Print the Extractor summary and, for every conv layer, its channels, kernel, "
            "stride, groups and output size (from one forward pass of zeros at --input-size "
            "with --input-channels; the model is left unchanged)."
        ),
        **parents.formatting,
    )
    p.set_defaults(func=run)
