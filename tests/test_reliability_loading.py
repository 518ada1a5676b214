"""Safe loading and safe tags: hostile checkpoints and hostile module names (issue 6 part 5).

- Checkpoints are read with ``torch.load(weights_only=True)``. Pickles crafted to run code when
  loaded (``__reduce__`` returning ``os.system``, ``exec``, or a function that writes a marker
  file) are refused with a one-line message, through :func:`load_model` and through the
  ``featureviz`` command (exit code 2, one line on stderr), and the marker never appears. Each
  pickle is first proven live: loading it *unsafely* does create its marker.
- Module names are user-controlled (``nn.ModuleDict`` keys may hold ``/``, spaces, unicode,
  ``#``, newlines); names handed to the writer directly may even hold ``..`` or a leading ``/``.
  Written through :class:`TensorBoardWriter` and :class:`FeatureMonitor` and read back with
  TensorBoard's ``EventAccumulator``, every tag matches ``^[A-Za-z0-9_./-]+$`` with exactly the
  expected number of ``/`` levels, and no two layers share a tag.
"""

from __future__ import annotations

import builtins
import os
import pickle
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.reliability_models import one_thread
from torch_featureviz import FeatureCapture, FeatureMonitor, TensorBoardWriter, find_conv_layers
from torch_featureviz.loading.models import ModelLoadError, load_model

ROOT = Path(__file__).resolve().parents[1]
TAG = re.compile(r"^[A-Za-z0-9_./-]+$")
REFUSED = r"is not a pure state dict: it pickles Python objects .*which weights_only=True refuses"


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


def touch_marker(path: str) -> dict:
    """What a malicious checkpoint would run on load (here: harmlessly create a file)."""
    Path(path).write_text("pwned")
    return {}


class _System:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch '{self.marker}'",))


class _Exec:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


class _Function:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (touch_marker, (str(self.marker),))


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1))


def evil_checkpoint(kind: str, directory: Path) -> tuple[Path, Path]:
    """Write a checkpoint of the given kind; returns (its path, the marker it would create)."""
    marker = directory / f"marker-{kind}"
    path = directory / f"evil-{kind}.pt"
    state = _tiny().state_dict()
    if kind == "system_as_whole_file":  # the pickle *is* the payload
        torch.save(_System(marker), path)
    elif kind == "exec_inside_state_dict":  # a real state dict with one poisoned entry
        torch.save({**state, "extra": _Exec(marker)}, path)
    elif kind == "function_in_lightning_wrapper":
        torch.save({"state_dict": state, "hyper_parameters": _Function(marker)}, path)
    elif kind == "legacy_format":  # torch's pre-1.6 non-zip format
        torch.save({**state, "x": _System(marker)}, path, _use_new_zipfile_serialization=False)
    elif kind == "raw_pickle":  # not a torch file at all, just a pickle
        path.write_bytes(pickle.dumps(_Function(marker), protocol=2))
    elif kind == "zip_with_swapped_data_pkl":  # a valid torch zip whose data.pkl is replaced
        torch.save(state, path)
        with zipfile.ZipFile(path) as z:
            entries = {n: z.read(n) for n in z.namelist()}
        name = next(n for n in entries if n.endswith("data.pkl"))
        entries[name] = pickle.dumps(_System(marker), protocol=2)
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
            for n, data in entries.items():
                z.writestr(n, data)
    else:
        raise ValueError(kind)
    return path, marker


KINDS = ["system_as_whole_file", "exec_inside_state_dict", "function_in_lightning_wrapper",
         "legacy_format", "raw_pickle", "zip_with_swapped_data_pkl"]


@pytest.mark.parametrize("kind", KINDS)
def test_crafted_pickle_is_live_when_loaded_unsafely(kind, tmp_path):
    """The fixtures are real attacks: an unsafe load runs their code."""
    path, marker = evil_checkpoint(kind, tmp_path)
    if kind == "raw_pickle":
        with open(path, "rb") as f:
            pickle.load(f)  # noqa: S301 - on purpose: proves the payload runs
    else:
        torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("kind", KINDS)
def test_crafted_pickle_is_refused_by_load_model(kind, tmp_path):
    path, marker = evil_checkpoint(kind, tmp_path)
    with pytest.raises(ModelLoadError, match=re.escape(path.name)) as info:
        load_model(model_class="tests.test_reliability_loading:_tiny", checkpoint=path)
    assert "\n" not in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("kind", KINDS)
def test_refusal_says_why(kind, tmp_path):
    """The message names the reason (Python objects that weights_only refuses), not 'corrupt'.

    Fails today for payloads built on ``os.system``: torch (2.6+) words a blocked module as
    "Trying to load unsupported GLOBAL posix.system whose module posix is blocked", which
    checkpoints.read_checkpoint's regex ``Unsupported global: GLOBAL ([\\w.]+)`` does not match, so
    the user is told the file "is not a file written by torch.save (or it is corrupt)".
    """
    path, _ = evil_checkpoint(kind, tmp_path)
    with pytest.raises(ModelLoadError, match=REFUSED):
        load_model(model_class="tests.test_reliability_loading:_tiny", checkpoint=path)


def test_checkpoints_are_read_with_weights_only(tmp_path, monkeypatch):
    model = _tiny()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # differs from the seeded initial weights
    path = tmp_path / "good.pt"
    torch.save(model.state_dict(), path)
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    loaded = load_model(model_class="tests.test_reliability_loading:_tiny", checkpoint=path)
    assert calls == [True]
    for (k, a), b in zip(loaded.model.state_dict().items(), model.state_dict().values(),
                         strict=True):
        assert torch.equal(a, b), k


def _featureviz_command() -> list[str]:
    script = Path(sys.executable).with_name("featureviz")
    return [str(script)] if script.exists() else [sys.executable, "-m", "torch_featureviz.cli"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["system_as_whole_file", "function_in_lightning_wrapper"])
def test_crafted_pickle_is_refused_by_the_cli(kind, tmp_path):
    path, marker = evil_checkpoint(kind, tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [*_featureviz_command(), "maps", "resnet18", "--checkpoint", str(path), "--quiet",
         "--out", str(tmp_path / "out")],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("featureviz: error: ") and path.name in lines[0]
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert not marker.exists()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# -- log tags from hostile module names --------------------------------------------------------
HOSTILE_KEYS = ["a/b", "a_b", "with space", "ünïcødé", "x#1", "new\nline", "/lead", "tab\there",
                "🙂", "a b", "-", "_"]


class Hostile(nn.Module):
    """Convs under ModuleDict keys a user might write, one of them called twice."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.branches = nn.ModuleDict({k: nn.Conv2d(4, 4, 1) for k in HOSTILE_KEYS})
        self.x = nn.Conv2d(4, 4, 1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t = self.stem(t)
        t = sum(b(t) for b in self.branches.values())
        return self.x(self.x(t))  # "x" and "x#1", next to the ModuleDict key "x#1"


def _read(log_dir: Path):  # type: ignore[no-untyped-def]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0})
    ea.Reload()
    return ea.Tags()


def _check_tags(tags: list[str], prefix: str, levels: int) -> list[str]:
    mine = [t for t in tags if t.startswith(prefix + "/")]
    for t in mine:
        assert TAG.match(t), repr(t)
        assert t.count("/") == levels, repr(t)
    return mine


def test_hostile_module_names_make_valid_unique_tags(tmp_path):
    model = Hostile()
    convs = find_conv_layers(model)
    assert len(convs) == len(HOSTILE_KEYS) + 2
    with FeatureCapture(model) as cap, torch.no_grad():
        model(torch.randn(1, 3, 6, 6))
    assert len(cap.maps) == len(convs) + 1  # x is called twice
    names = {"../up": torch.rand(2, 3, 3), "a/../b": torch.rand(2, 3, 3),
             "/abs/path": torch.rand(2, 3, 3), "..": torch.rand(2, 3, 3)}
    with TensorBoardWriter(tmp_path) as tb:
        filter_tags = tb.log_filters(model, step=0)
        map_tags = tb.log_feature_maps(cap.maps, step=0)
        extra_tags = tb.log_feature_maps(names, step=0, mode="direct")
        image_tag = tb.log_image(torch.rand(3, 4, 4), step=0, name="../../etc/passwd")
    images = _read(tmp_path)["images"]
    assert set(images) == {*filter_tags, *map_tags, *extra_tags, image_tag}
    assert sorted(_check_tags(images, "filters", 1)) == sorted(set(filter_tags))
    assert len(set(filter_tags)) == len(convs)
    assert len(set(_check_tags(images, "feature_maps/hook", 2))) == len(cap.maps)
    assert len(set(_check_tags(images, "feature_maps/direct", 2))) == len(names)
    assert _check_tags(images, "input", 1) == [image_tag]


def test_hostile_module_names_make_unique_monitor_tags(tmp_path):
    """The monitor's scalar tags (activations/<layer>/<stat>) must not merge two layers either."""
    model = Hostile()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with FeatureMonitor(
        model, tmp_path, every=1, on_full="block", max_channels=2, max_filters=2
    ) as monitor:
        for _ in range(2):
            model(torch.randn(2, 3, 6, 6)).sum().backward()
            opt.step()
            monitor.step()
    tags = _read(tmp_path)
    n_maps = len(find_conv_layers(model)) + 1
    assert len(set(_check_tags(tags["images"], "feature_maps/hook", 2))) == n_maps
    stats = _check_tags(tags["scalars"], "activations", 2)
    assert len(set(stats)) == 4 * n_maps, "two layers were logged under one scalar tag"


class CallOrder(nn.Module):
    """Two names that sanitise alike ('a b', 'a/b' -> 'a_b'), called in the opposite order to
    the one they are registered in."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.branches = nn.ModuleDict({"a b": nn.Conv2d(3, 2, 1), "a/b": nn.Conv2d(3, 5, 1)})

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        second = self.branches["a/b"](t)
        first = self.branches["a b"](t)
        return second.sum(1, keepdim=True) + first.sum(1, keepdim=True)


def test_a_layer_has_the_same_tag_for_its_filters_and_its_maps(tmp_path):
    """filters/<tag> and feature_maps/hook/<tag> must show the same layer, even when two names
    sanitise alike and the layers are called in another order than they are registered (a
    per-call de-duplication in mapping order would swap them)."""
    model = CallOrder()
    with FeatureCapture(model) as cap, torch.no_grad():
        model(torch.randn(1, 3, 4, 4))
    with TensorBoardWriter(tmp_path) as tb:
        filter_tags = tb.log_filters(model, step=0)
        map_tags = tb.log_feature_maps(cap.maps, step=0)
    by_layer_filters = dict(zip(find_conv_layers(model), filter_tags, strict=True))
    by_layer_maps = dict(zip(cap.maps, map_tags, strict=True))
    for name in by_layer_filters:
        assert by_layer_filters[name].split("/", 1)[1] == by_layer_maps[name].split("/", 2)[2], (
            f"{name!r} is {by_layer_filters[name]!r} but {by_layer_maps[name]!r}"
        )
