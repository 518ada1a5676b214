"""The featureviz command: in-process for behaviour, in subprocesses for exit codes and stderr."""

from __future__ import annotations

import functools
import math
import os
import re
import subprocess
import sys
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from tests.support.helpers import assert_same_state, state_snapshot
from torch_featureviz import cli
from torch_featureviz.cli import app as cli_app
from torch_featureviz.cli import bench as cli_bench
from torch_featureviz.cli import info as cli_info
from torch_featureviz.loading.images import sample_image_path
from torch_featureviz.render.figures import (
    map_similarity,
    save_comparison_figure,
    save_similarity_figure,
)

REPO = Path(__file__).resolve().parents[1]


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


# -- help and usage --------------------------------------------------------------------------------


def test_help_documents_commands_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for word in ("info", "filters", "maps", "demo", "bench", "exit codes:", "130  interrupted"):
        assert word in out
    assert re.search(r"^  2 +bad input", out, re.M)
    assert "Exit codes:" in (cli.__doc__ or "")
    with pytest.raises(SystemExit):
        cli.main(["maps", "--help"])
    out = capsys.readouterr().out
    for option in ("--image", "--mode {hook,chain,both}", "--max-channels", "--weights",
                   "--checkpoint", "--model-class", "--layers", "--out", "--logdir", "--quiet"):
        assert option in out, option


def test_usage_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, pattern in (
        ([], r"choose a command"),
        (["info", "resnet18", "--bogus"], r"unrecognized arguments: --bogus"),
        (["maps", "resnet18", "--mode", "sideways"], r"invalid choice: 'sideways'"),
        (["info", "resnet18", "--input-size", "big"], r"expected a size such as 224"),
        (["maps", "resnet18", "--max-channels", "0"], r"expected a positive integer, got 0"),
    ):
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err
        assert re.search(pattern, err), err
    code, out, err = run_main(["info"], capsys)
    assert code == 2 and "give a model name (e.g. resnet18, timm:resnet18 or hf:" in err
    code, out, err = run_main(
        ["info", "resnet18", "--model-class", "tests.support.helpers:TinyNet"], capsys
    )
    assert code == 2 and "not both" in err


# -- info ------------------------------------------------------------------------------------------


def _table(out: str) -> dict[str, list[str]]:
    rows = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 6 and "->" in parts[1] and parts[0] != "layer":
            rows[parts[0]] = parts[1:]
    return rows


def test_info_table_matches_a_real_forward(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(["info", "resnet18", "--input-size", "64x48"], capsys)
    assert code == 0, err
    assert "Total CNN Layers: 17" in out and "Total Downsampling Layers: 3" in out
    rows = _table(out)
    model = torchvision.models.resnet18().eval()
    assert list(rows) == [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    shapes: dict[str, tuple[int, ...]] = {}

    def keep(name: str, module: torch.nn.Module, args: object, output: torch.Tensor) -> None:
        shapes.setdefault(name, tuple(output.shape[1:]))

    hooks = [
        m.register_forward_hook(functools.partial(keep, n))
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Conv2d)
    ]
    with torch.no_grad():
        model(torch.zeros(1, 3, 64, 48))
    for h in hooks:
        h.remove()
    convs = dict(model.named_modules())
    for name, (inout, kernel, stride, groups, output) in ((n, r[:5]) for n, r in rows.items()):
        conv = convs[name]
        assert inout == f"{conv.in_channels}->{conv.out_channels}"
        assert kernel == "x".join(map(str, conv.kernel_size))
        assert stride == "x".join(map(str, conv.stride))
        assert groups == str(conv.groups)
        assert output == "x".join(map(str, shapes[name])), name
    assert rows["layer4.1.conv2"][4] == "512x2x2"


def test_info_reports_shared_convs_groups_and_leaves_model_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "cli_user_models.py").write_text(
        "from tests.support.helpers import TinyNet\n"
        "import torch\n"
        "MADE = []\n"
        "def make():\n"
        "    torch.manual_seed(0)\n"
        "    net = TinyNet().train()\n"
        "    MADE.append(net)\n"
        "    return net\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import cli_user_models  # type: ignore[import-not-found]

    code, out, err = run_main(
        ["info", "--model-class", "cli_user_models:make", "--input-size", "16"], capsys
    )
    assert code == 0, err
    rows = _table(out)
    assert rows["shared"][4:] == ["16x8x8", "(2", "calls)"]
    assert rows["stem.0"][4] == "8x16x16"
    # load_model puts the model in eval mode; the probe pass must change nothing else.
    model = cli_user_models.MADE[-1]
    torch.manual_seed(0)
    fresh = type(model)().eval()
    assert_same_state(state_snapshot(fresh), state_snapshot(model))
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == 0


def test_info_quiet_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(["info", "resnet18", "--input-size", "32", "-q"], capsys)
    assert (code, out, err) == (0, "", "")


def test_info_input_too_small_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(["info", "alexnet", "--input-size", "8"], capsys)
    assert code == 2
    assert re.fullmatch(r"featureviz: error: .*try another --input-size.*\n", err)


# -- filters ---------------------------------------------------------------------------------------


def test_filters_writes_figures_and_tensorboard(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir, log_dir = tmp_path / "figs", tmp_path / "logs"
    code, out, err = run_main(
        ["filters", "resnet18", "--layers", "conv1", "--layers", "layer4.1.*",
         "--out", str(out_dir), "--logdir", str(log_dir), "--max-filters", "16"],
        capsys,
    )
    assert code == 0, err
    names = sorted(p.name for p in out_dir.iterdir())
    assert names == ["filters_conv1.png", "filters_layer4.1.conv1.png",
                     "filters_layer4.1.conv2.png", "filters_overview.png"]
    for p in out_dir.iterdir():
        with Image.open(p) as im:
            assert im.size[0] > 100 and im.size[1] > 100
    assert any(log_dir.glob("events.out.tfevents.*"))
    assert "wrote 4 figures" in out and "tensorboard --logdir" in out
    assert "filters" in err and "layer" in err  # the progress bar, on stderr


def test_filters_default_output_dir_and_quiet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run_main(["filters", "resnet18", "--layers", "conv1", "-q"], capsys)
    assert (code, out, err) == (0, "", "")
    assert (tmp_path / "featureviz-out" / "filters_conv1.png").is_file()


def test_filters_rgb_channel_on_deep_layer_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_main(
        ["filters", "resnet18", "--layers", "layer1.0.conv1", "--channel", "rgb",
         "--out", str(tmp_path)], capsys,
    )
    assert code == 2 and "channel='rgb' needs filters with 3 input channels" in err


# -- maps ------------------------------------------------------------------------------------------


def test_maps_both_writes_side_by_side_and_similarity(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir, log_dir = tmp_path / "figs", tmp_path / "logs"
    code, out, err = run_main(
        ["maps", "resnet18", "--mode", "both", "--layers", "conv1,layer1.0.conv1",
         "--input-size", "64", "--max-channels", "8", "--out", str(out_dir),
         "--logdir", str(log_dir)],
        capsys,
    )
    assert code == 0, err
    names = {p.name for p in out_dir.iterdir()}
    assert {"input.png", "similarity.png", "compare_conv1.png", "compare_layer1.0.conv1.png",
            "maps_hook_conv1.png", "maps_chain_layer1.0.conv1.png", "maps_hook_overview.png",
            "maps_chain_overview.png"} <= names
    # The first conv sees the same input in both modes: identical maps. After it, chain mode
    # skips BatchNorm, ReLU and max-pool: twice the resolution and a different pattern.
    rows = {ln.split()[0]: ln.split()[1:] for ln in out.splitlines() if ln.startswith(("conv1 ",
                                                                                      "layer1"))}
    assert rows["conv1"] == ["8x32x32", "8x32x32", "1.000"]
    assert rows["layer1.0.conv1"][:2] == ["8x32x32", "8x16x16"]
    assert float(rows["layer1.0.conv1"][2]) < 0.99
    assert "hook maps" in err and "chain vs hook" in err
    assert any(log_dir.glob("events.out.tfevents.*"))


def test_maps_with_weights_uses_their_transforms(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Weights already in the (empty, temporary) torch.hub cache: no network needed.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(torchvision.models.resnet18().state_dict(), cache / weights.url.rsplit("/", 1)[1])
    code, out, err = run_main(
        ["maps", "resnet18", "--weights", "DEFAULT", "--layers", "conv1", "--input-size", "64",
         "--out", str(tmp_path / "o")], capsys,
    )
    assert code == 0, err
    assert "model: resnet18 (weights ResNet18_Weights.IMAGENET1K_V1)" in out
    assert "input (1, 3, 224, 224)" in out  # resize 256, crop 224: not --input-size 64
    assert "featureviz: warning: --input-size is ignored with --weights" in err


def test_maps_accepts_grayscale_and_rgba_images(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(1)
    gray, rgba = tmp_path / "g.png", tmp_path / "a.png"
    Image.fromarray(rng.integers(0, 256, (50, 70), dtype=np.uint8), "L").save(gray)
    Image.fromarray(rng.integers(0, 256, (30, 30, 4), dtype=np.uint8), "RGBA").save(rgba)
    for image in (gray, rgba):
        out_dir = tmp_path / image.stem
        code, out, err = run_main(
            ["maps", "resnet18", "--image", str(image), "--layers", "conv1", "--input-size", "32",
             "--out", str(out_dir), "-q"], capsys,
        )
        assert (code, err) == (0, "")
        assert (out_dir / "maps_hook_conv1.png").is_file()


def test_maps_chain_mode_rejects_only_downsample_layers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_main(
        ["maps", "resnet18", "--mode", "chain", "--layers", "*downsample*", "--out",
         str(tmp_path)], capsys,
    )
    assert code == 2
    assert "chain mode skips down-sample convs" in err and len(err.splitlines()) == 1


def test_maps_chain_that_breaks_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_main(
        ["maps", "densenet121", "--mode", "chain", "--input-size", "32", "--out",
         str(tmp_path)], capsys,
    )
    assert code == 2
    assert re.match(r"featureviz: error: chain mode: the chain breaks at ", err)


# -- the input comes from the image; only the model's forward decides whether it fits ------------

_USER_NETS = """
import torch
from torch import nn


class SpaceToDepth(nn.Module):
    # A TResNet / YOLO-Focus style stem: the model takes 3 channels, its first conv 12.
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.PixelUnshuffle(2)
        self.conv = nn.Conv2d(12, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(torch.relu(self.conv(self.stem(x))))


class Takes(nn.Module):
    def __init__(self, channels):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(channels, 4, 3)

    def forward(self, x):
        return self.conv(x)


def gray():
    return Takes(1)


def four():
    return Takes(4)


class LinearHead(nn.Module):
    # Flatten + Linear: only a 16x16 input fits.
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)
        self.fc = nn.Linear(2 * 16 * 16, 2)

    def forward(self, x):
        return self.fc(self.conv(x).flatten(1))


class Broken(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3)

    def forward(self, x):
        raise RuntimeError("this model cannot run today")
"""


@pytest.fixture
def user_nets(tmp_path: Path) -> Path:
    path = tmp_path / "user_nets.py"
    path.write_text(_USER_NETS)
    return path


def test_space_to_depth_stem_runs_info_and_maps(
    user_nets: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_main(
        ["info", "--model-class", f"{user_nets}:SpaceToDepth", "--input-size", "16"], capsys
    )
    assert code == 0, err
    assert _table(out)["conv"][0] == "12->8" and _table(out)["conv"][4] == "8x8x8"
    code, out, err = run_main(
        ["maps", "--model-class", f"{user_nets}:SpaceToDepth", "--input-size", "16",
         "--out", str(tmp_path / "o"), "-q"], capsys,
    )
    assert (code, err) == (0, "")
    assert (tmp_path / "o" / "maps_hook_conv.png").is_file()


def test_input_channels_builds_the_input_from_the_image(
    user_nets: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for factory, channels in (("gray", "1"), ("four", "4")):
        code, out, err = run_main(
            ["maps", "--model-class", f"{user_nets}:{factory}", "--input-channels", channels,
             "--input-size", "16", "--out", str(tmp_path / factory), "--cmap", "viridis"],
            capsys,
        )
        assert code == 0, err
        assert f"input (1, {channels}, 16, 16)" in out
        code, out, err = run_main(
            ["info", "--model-class", f"{user_nets}:{factory}", "--input-channels", channels,
             "--input-size", "16"], capsys,
        )
        assert code == 0 and _table(out)["conv"][4] == "4x14x14", err


def test_forward_errors_say_what_failed_and_hint_only_at_the_cause(
    user_nets: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Channels: the model takes 1, the input has 3 (given: left alone, the CLI infers 1). The
    # hint names --input-channels only.
    code, out, err = run_main(
        ["info", "--model-class", f"{user_nets}:gray", "--input-channels", "3"], capsys
    )
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "channels" in err and "try another --input-channels" in err
    assert "--input-size" not in err
    # Size: a linear head that takes 16x16 only. The hint names --input-size only.
    code, out, err = run_main(
        ["info", "--model-class", f"{user_nets}:LinearHead", "--input-size", "20"], capsys
    )
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "mat1 and mat2 shapes cannot be multiplied" in err and "try another --input-size" in err
    assert "--input-channels" not in err
    code, out, err = run_main(
        ["info", "--model-class", f"{user_nets}:LinearHead", "--input-size", "16"], capsys
    )
    assert code == 0, err
    # Anything else: what failed, and no hint about options that would not help.
    code, out, err = run_main(["maps", "--model-class", f"{user_nets}:Broken", "-q"], capsys)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert re.fullmatch(r"featureviz: error: the forward pass of Broken failed on .*: this model "
                        r"cannot run today\.\n", err), err


def test_filter_channel_out_of_range_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "never"
    code, out, err = run_main(
        ["filters", "resnet18", "--filter-channel", "3", "--layers", "conv1", "--out",
         str(out_dir)], capsys,
    )
    assert code == 2 and err == (
        "featureviz: error: channel=3 is out of range for 3 input channels.\n"
    )
    assert list(out_dir.iterdir()) == []  # checked writable up front, and nothing written
    code, out, err = run_main(
        ["filters", "resnet18", "--channel", "2", "--layers", "conv1", "--out", str(out_dir),
         "-q"], capsys,
    )
    assert (code, err) == (0, "") and (out_dir / "filters_conv1.png").is_file()


def test_a_new_command_is_one_registration(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def add_hello(sub, parents):  # type: ignore[no-untyped-def]
        p = sub.add_parser("hello", parents=[parents.model], help="say hello")
        p.set_defaults(func=lambda args: print(f"hello {args.model}") or 0)

    monkeypatch.setattr(cli_app, "COMMANDS", [*cli.COMMANDS, add_hello])
    code, out, err = run_main(["hello", "resnet18"], capsys)
    assert (code, out) == (0, "hello resnet18\n")
    with pytest.raises(SystemExit):
        cli.main([])
    expected = "choose a command: info, filters, maps, examples, timelapse, demo, bench or hello"
    assert expected in capsys.readouterr().err


# -- demo and bench --------------------------------------------------------------------------------


def test_demo_is_wired_to_the_demo_module(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen = {}
    fake = types.ModuleType("torch_featureviz.demo")

    def add_demo_arguments(parser):  # type: ignore[no-untyped-def]
        parser.add_argument("--steps", type=int, default=5)
        parser.add_argument("--out")

    def run_demo(args):  # type: ignore[no-untyped-def]
        seen["args"] = args
        if args.steps == 0:
            raise ValueError("--steps must be >= 1, got 0.")
        return 0

    fake.add_demo_arguments, fake.run_demo = add_demo_arguments, run_demo  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch_featureviz.demo", fake)
    monkeypatch.setattr(sys.modules["torch_featureviz"], "demo", fake, raising=False)
    assert cli.main(["demo", "--steps", "3", "--out", "x"]) == 0
    assert (seen["args"].steps, seen["args"].out) == (3, "x")
    code, out, err = run_main(["demo", "--steps", "0"], capsys)
    assert code == 2 and err == "featureviz: error: --steps must be >= 1, got 0.\n"
    with pytest.raises(SystemExit) as info:
        cli.main(["demo", "--nope"])
    assert info.value.code == 2
    assert "featureviz demo: error: unrecognized arguments: --nope" in capsys.readouterr().err


def test_demo_missing_module_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "torch_featureviz.demo", None)
    monkeypatch.delattr(sys.modules["torch_featureviz"], "demo", raising=False)
    code, out, err = run_main(["demo"], capsys)
    assert code == 2 and "the demo is not part of this installation" in err


def test_real_demo_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["demo", "--help"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("usage: featureviz demo")


def test_bench_runs_the_benchmark_module_with_the_remaining_arguments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # In a checkout the real module imports by name (no file is run by its path).
    real = cli.load_benchmark()
    assert real.__name__ == "benchmarks.bench_capture"
    assert Path(real.__file__).resolve() == REPO / "benchmarks" / "bench_capture.py"
    package = tmp_path / "fakebench"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "sibling.py").write_text("VALUE = 42\n")
    (package / "bench_capture.py").write_text(
        "from fakebench import sibling\n"
        "def main(argv=None):\n"
        "    print('bench got', argv, sibling.VALUE)\n"
        "    return 3 if '--fail' in argv else 0\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli_bench, "BENCH_MODULE", "fakebench.bench_capture")
    code, out, err = run_main(["bench", "--quick", "--sizes", "64"], capsys)
    assert code == 0 and "bench got ['--quick', '--sizes', '64'] 42" in out
    assert cli.main(["bench", "--fail"]) == 3
    monkeypatch.setattr(cli_bench, "BENCH_MODULE", "no_such_benchmarks.bench_capture")
    code, out, err = run_main(["bench"], capsys)
    assert code == 2 and "not part of the installed package" in err and "source checkout" in err
    assert "python -m benchmarks.bench_capture" in err


def test_internal_errors_are_one_line_exit_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def boom(args):  # type: ignore[no-untyped-def]
        raise RuntimeError("something\nunexpected")

    monkeypatch.setattr(cli_info, "run", boom)
    code, out, err = run_main(["info", "resnet18"], capsys)
    assert code == 1
    assert err == (
        "featureviz: internal error: RuntimeError: something unexpected "
        "(rerun with --traceback for details)\n"
    )
    with pytest.raises(RuntimeError, match="something"):
        cli.main(["--traceback", "info", "resnet18"])


# -- the similarity and comparison figures (figures.py additions used by maps --mode both) ---------


def test_map_similarity_definition() -> None:
    torch.manual_seed(0)
    m = torch.rand(4, 8, 8)
    up = m.repeat_interleave(2, 1).repeat_interleave(2, 2)  # chain maps: twice the resolution
    assert map_similarity(up, m) == pytest.approx(1.0)
    assert map_similarity(m, up) == pytest.approx(1.0)
    assert map_similarity(m, -m) == pytest.approx(-1.0)
    assert map_similarity(m * 7.0, m) == pytest.approx(1.0)  # scale does not matter
    assert map_similarity(m, torch.cat([m, torch.rand(2, 8, 8)])) == pytest.approx(1.0)
    a, b = torch.zeros(1, 2, 2), torch.zeros(1, 2, 2)
    a[0, 0, 0], b[0, 1, 1] = 1.0, 1.0
    assert map_similarity(a, b) == pytest.approx(0.0)
    assert math.isnan(map_similarity(torch.zeros(2, 4, 4), m[:2, :4, :4]))
    assert map_similarity(m[0], m[0]) == pytest.approx(1.0)  # (H, W) accepted
    with pytest.raises(TypeError, match=r"chain_map must be a \(C, H, W\) tensor, got list"):
        map_similarity([1.0], m)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"hook_map must be a non-empty \(C, H, W\) tensor"):
        map_similarity(m, torch.zeros(1, 1, 2, 2))


def test_comparison_and_similarity_figures(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = save_comparison_figure(
        "layer1.0.conv1", torch.rand(4, 16, 16), torch.rand(4, 8, 8), tmp_path / "c.png",
        similarity=0.25,
    )
    with Image.open(path) as im:
        assert im.size[0] > im.size[1] > 100
    path = save_similarity_figure(
        {"conv1": 1.0, "layer1.0.conv1": 0.4, "dead": math.nan}, tmp_path / "s.png"
    )
    with Image.open(path) as im:
        pixels = np.asarray(im.convert("RGB"))
    # tab:green (44, 160, 44) for the >= 0.9 bar and tab:red (214, 39, 40) for the low one.
    assert (np.abs(pixels.astype(int) - (44, 160, 44)).sum(-1) < 10).sum() > 100
    assert (np.abs(pixels.astype(int) - (214, 39, 40)).sum(-1) < 10).sum() > 50
    with pytest.raises(ValueError, match=r"similarity is empty"):
        save_similarity_figure({}, tmp_path / "e.png")
    with pytest.raises(ValueError, match=r"unsupported figure format '\.gif'"):
        save_comparison_figure("x", torch.rand(1, 2, 2), torch.rand(1, 2, 2), tmp_path / "x.gif")


# -- every bad input in a real subprocess: exit code 2, one line on stderr, no traceback -----------


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[list[str], str]]:
    d = tmp_path_factory.mktemp("bad_inputs")
    (d / "notes.txt").write_text("not an image")
    data = sample_image_path().read_bytes()
    (d / "cut.jpg").write_bytes(data[: len(data) // 2])
    torch.manual_seed(0)
    state = torchvision.models.resnet18().state_dict()
    state["extra.weight"] = state.pop("fc.bias")
    torch.save(state, d / "mismatch.pt")
    torch.save(torch.nn.Conv2d(3, 4, 3), d / "whole.pt")
    (d / "a_file").write_text("a regular file cannot hold a directory")
    (d / "user_nets.py").write_text(_USER_NETS)
    return {
        "missing image": (["maps", "resnet18", "--image", str(d / "nope.png")],
                          r"image not found: .*nope\.png"),
        "non-image file": (["maps", "resnet18", "--image", str(d / "notes.txt")],
                           r"notes\.txt' is not a PNG or JPEG image"),
        "truncated jpeg": (["maps", "resnet18", "--image", str(d / "cut.jpg")],
                           r"cut\.jpg' is truncated or corrupt: .*(truncated|incomplete)"),
        "unknown model": (["info", "resnt18"],
                          r"unknown torchvision model 'resnt18'; did you mean resnet18"),
        "unknown weights": (["info", "resnet18", "--weights", "IMAGENET1K_V9"],
                            r"unknown weights 'IMAGENET1K_V9' for resnet18; valid names: "
                            r"IMAGENET1K_V1, DEFAULT"),
        "no network": (["info", "resnet18", "--weights", "DEFAULT"],
                       r"could not download ResNet18_Weights\.IMAGENET1K_V1 .*no network"),
        "checkpoint keys": (["info", "resnet18", "--checkpoint", str(d / "mismatch.pt")],
                            r"does not match ResNet: missing 1 keys: fc\.bias; unexpected 1 "
                            r"keys: extra\.weight"),
        "not a state dict": (["info", "resnet18", "--checkpoint", str(d / "whole.pt")],
                             r"is not a pure state dict: it pickles Python objects"),
        "layer pattern": (["filters", "resnet18", "--layers", "layer9.*", "--out", str(d / "o")],
                          r"--layers: pattern 'layer9\.\*' matches no conv layer; Closest"),
        "unwritable out": (["filters", "resnet18", "--layers", "conv1", "--out",
                            str(d / "a_file" / "sub")], r"--out: cannot write to .*a_file/sub"),
        "unwritable logdir": (["maps", "resnet18", "--layers", "conv1", "--logdir",
                               "/proc/featureviz"],
                              r"--logdir: cannot write to '/proc/featureviz'"),
        "usage": (["maps", "resnet18", "--mode", "sideways"], r"invalid choice: 'sideways'"),
        "image /dev/zero": (["maps", "resnet18", "--image", "/dev/zero"],
                            r"'/dev/zero' is not a PNG or JPEG image \(it starts with b'\\x00"),
        "checkpoint /dev/zero": (["info", "resnet18", "--checkpoint", "/dev/zero"],
                                 r"checkpoint '/dev/zero' is not a regular file"),
        "empty path": (["maps", "resnet18", "--image", ""], r"--image: expected a path"),
        "bad cmap": (["maps", "resnet18", "--cmap", "virdis"],
                     r"--cmap: cmap 'virdis' is not a matplotlib colormap"),
        "filter channel": (["filters", "resnet18", "--layers", "conv1", "--filter-channel", "7",
                            "--out", str(d / "fc")],
                           r"error: channel=7 is out of range for 3 input channels"),
        "forward: channels": (["info", "--model-class", f"{d / 'user_nets.py'}:gray",
                               "--input-channels", "3"],
                              r"channels.*; the input has 3 channels: try another "
                              r"--input-channels\.$"),
        "forward: size": (["info", "alexnet", "--input-size", "8"],
                          r"failed on .*; try another --input-size"),
        "unknown timm model": (["info", "timm:resnt18"],
                               r"error: unknown timm model 'resnt18'; did you mean"),
        "timm weights offline": (["info", "timm:resnet18", "--weights", "pretrained"],
                                 r"could not load pretrained weights for timm:resnet18"),
        "unknown hf class": (["info", "hf:ResNetModle"],
                             r"transformers has no model class 'ResNetModle'; did you mean"),
        "hf config not json": (["info", "hf:ResNetModel", "--config", str(d / "notes.txt")],
                               r"notes\.txt' is not valid JSON"),
        "hf auto without config": (["info", "hf:AutoModel"],
                                   r"hf:AutoModel has no default config; give --config"),
    }


def _run_cli(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "torch_featureviz.cli", *argv],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=120,
    )


# Importing torch costs seconds per process, so one driver process imports the CLI once and
# forks a child per case. Each child is a real process with its own stdout/stderr file
# descriptors (so output written by C/C++ code would show too), exit code and exception
# handling; the driver runs no torch op before forking, which keeps fork safe.
_FORK_DRIVER = r"""
import json, os, sys, tempfile
import torchvision.models  # the slow imports, once, before forking
from torch_featureviz import cli
from torch_featureviz.loading import models
exec(os.environ.get("FEATUREVIZ_TEST_PREAMBLE", ""))
results = {}
for case, argv in json.loads(sys.argv[1]).items():
    out_fd, out_path = tempfile.mkstemp()
    err_fd, err_path = tempfile.mkstemp()
    pid = os.fork()
    if pid == 0:
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        try:
            code = cli.main(argv)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    results[case] = {
        "returncode": os.waitstatus_to_exitcode(status),
        "stdout": open(out_path).read(),
        "stderr": open(err_path).read(),
    }
    for fd, path in ((out_fd, out_path), (err_fd, err_path)):
        os.close(fd)
        os.unlink(path)
print(json.dumps(results))
"""


_PREIMPORT_EXTRAS = """
import importlib.util
if importlib.util.find_spec("timm"):
    import timm
if importlib.util.find_spec("transformers"):
    import transformers
    transformers.ResNetModel
"""

# What a process without a network sees, made loud: every connection attempt, and torch's and
# torchvision's download functions wherever they are bound, print NETWORK ATTEMPT and fail.
_NO_NETWORK = """
import socket, sys, torch.hub, torchvision.models._api as _api
def _refuse(*args, **kwargs):
    sys.stderr.write("NETWORK ATTEMPT\\n")
    sys.stderr.flush()
    raise OSError("network access is forbidden in this test")
socket.socket.connect = _refuse
socket.create_connection = _refuse
for _mod in (torch.hub, _api, sys.modules.get("torchvision._internally_replaced_utils")):
    for _name in ("load_state_dict_from_url", "download_url_to_file"):
        if _mod is not None and hasattr(_mod, _name):
            setattr(_mod, _name, _refuse)
"""


def _offline_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    env = dict(os.environ)
    env["TORCH_HOME"] = str(tmp_path_factory.mktemp("empty_torch_home"))  # no cached weights
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        env[var] = "http://127.0.0.1:9"  # a proxy that refuses: "no network", at once
    env.pop("no_proxy", None)
    env.pop("NO_PROXY", None)
    env["HF_HUB_OFFLINE"] = "1"  # the Hugging Face Hub (timm's weights): no retries
    env["HF_HOME"] = str(tmp_path_factory.mktemp("empty_hf_home"))
    # The optional extras, imported once before forking (when installed), as torch is.
    env["FEATUREVIZ_TEST_PREAMBLE"] = _PREIMPORT_EXTRAS
    return env


def _fork_results(
    cases: dict[str, list[str]], env: dict[str, str]
) -> dict[str, subprocess.CompletedProcess[str]]:
    """Run each case's argv through cli.main in a forked child of one driver process."""
    import json

    driver = subprocess.run(
        [sys.executable, "-c", _FORK_DRIVER, json.dumps(cases)],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=300,
    )
    assert driver.returncode == 0, driver.stderr
    return {
        case: subprocess.CompletedProcess(cases[case], r["returncode"], r["stdout"], r["stderr"])
        for case, r in json.loads(driver.stdout).items()
    }


@pytest.fixture(scope="module")
def bad_input_results(
    bad_inputs: dict[str, tuple[list[str], str]], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, subprocess.CompletedProcess[str]]:
    env = _offline_env(tmp_path_factory)
    cases = {case: argv for case, (argv, _) in bad_inputs.items()}
    with ThreadPoolExecutor(max_workers=2) as pool:
        # The console entry point itself, in a fresh interpreter, for one case...
        direct = pool.submit(_run_cli, cases["truncated jpeg"], env)
        # ...and every case in a forked child of one interpreter.
        forked = pool.submit(_fork_results, cases, env)
        results, first = forked.result(), direct.result()
    results["truncated jpeg (python -m)"] = first
    return results


CASES = ["missing image", "non-image file", "truncated jpeg", "unknown model", "unknown weights",
         "no network", "checkpoint keys", "not a state dict", "layer pattern", "unwritable out",
         "unwritable logdir", "usage", "image /dev/zero", "checkpoint /dev/zero", "empty path",
         "bad cmap", "filter channel", "forward: channels", "forward: size",
         "unknown timm model", "timm weights offline", "unknown hf class", "hf config not json",
         "hf auto without config"]


@pytest.mark.slow
@pytest.mark.parametrize("case", [*CASES, "truncated jpeg (python -m)"])
def test_bad_input_exits_2_with_one_line(
    case: str,
    bad_inputs: dict[str, tuple[list[str], str]],
    bad_input_results: dict[str, subprocess.CompletedProcess[str]],
) -> None:
    assert set(CASES) == set(bad_inputs)
    result = bad_input_results[case]
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("featureviz"), lines[0]
    assert re.search(bad_inputs[case.replace(" (python -m)", "")][1], lines[0]), lines[0]
    assert result.stdout == ""


@pytest.mark.slow
def test_module_entry_point_succeeds(tmp_path: Path) -> None:
    result = _run_cli(
        ["maps", "resnet18", "--layers", "conv1", "--input-size", "32", "--out", str(tmp_path),
         "--quiet"], dict(os.environ),
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert (tmp_path / "maps_hook_conv1.png").is_file()


@pytest.mark.slow
def test_missing_extras_get_an_install_hint(tmp_path_factory: pytest.TempPathFactory) -> None:
    env = _offline_env(tmp_path_factory)
    # As if neither extra were installed: importing either raises ImportError.
    env["FEATUREVIZ_TEST_PREAMBLE"] = "sys.modules['timm'] = sys.modules['transformers'] = None"
    results = _fork_results({"timm": ["info", "timm:resnet18"],
                             "hf": ["maps", "hf:ResNetModel"]}, env)
    for extra, name in (("timm", "timm"), ("hf", "transformers")):
        result = results[extra]
        assert (result.returncode, result.stdout) == (2, ""), result.stderr
        assert result.stderr == (
            f"featureviz: error: {'timm:NAME' if extra == 'timm' else 'hf:CLASS'} models need "
            f"{name}, which is not installed: pip install 'torch-featureviz[{extra}]' (or pip "
            f"install {name}).\n"
        )


@pytest.mark.slow
def test_every_model_form_builds_offline_without_a_download(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    d = tmp_path_factory.mktemp("forms")
    (d / "tiny.json").write_text(
        '{"model_type": "resnet", "embedding_size": 8, "hidden_sizes": [8, 16], '
        '"depths": [1, 1], "layer_type": "basic"}'
    )
    env = dict(os.environ)
    env["TORCH_HOME"] = str(d / "torch_home")
    env["HF_HOME"] = str(d / "hf_home")
    env["FEATUREVIZ_TEST_PREAMBLE"] = _PREIMPORT_EXTRAS + _NO_NETWORK
    cases = {
        "torchvision segmentation": ["info", "fcn_resnet50"],
        "torchvision detection": ["info", "ssdlite320_mobilenet_v3_large", "--input-size", "64"],
        "timm": ["info", "timm:resnet18", "--input-size", "32"],
        "hf": ["info", "hf:ResNetModel", "--config", str(d / "tiny.json"), "--input-size", "32"],
        # The guard is live: asking for weights does try the network, and fails in one line.
        "control": ["info", "resnet18", "--weights", "DEFAULT"],
    }
    results = _fork_results(cases, env)
    control = results.pop("control")
    assert control.returncode == 2 and "NETWORK ATTEMPT" in control.stderr
    assert "could not download ResNet18_Weights.IMAGENET1K_V1" in control.stderr
    for case, result in results.items():
        assert result.returncode == 0, (case, result.stderr)
        assert "NETWORK ATTEMPT" not in result.stderr, case
        assert "(random weights)" in result.stdout and "conv layers" in result.stdout, case
    # Nothing cached either (the control made the cache folder, and left it empty).
    assert [f for f in d.rglob("*") if f.is_file()] == [d / "tiny.json"]
    assert "output @ 3x224x224" in results["torchvision segmentation"].stdout
