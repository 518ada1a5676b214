"""load_model: torchvision names, weights (offline), checkpoints and user classes."""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path

import pytest
import torch
import torchvision

from tests.support.helpers import TinyNet, tiny_net
from torch_featureviz.loading.images import load_image, preprocess
from torch_featureviz.loading.models import LoadedModel, ModelLoadError, load_model, resolve_weights


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty TORCH_HOME, so no cached weights are found."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    assert torch.hub.get_dir().startswith(str(home)), "torch.hub.set_dir() was called elsewhere"
    return home


def test_torchvision_model_with_random_weights() -> None:
    loaded = load_model("resnet18", input_size=40)
    assert isinstance(loaded, LoadedModel)
    assert isinstance(loaded.model, torchvision.models.ResNet)
    assert loaded.model.training is False
    assert loaded.weights is None
    assert loaded.description == "resnet18 (random weights)"
    image = load_image()
    assert torch.equal(loaded.transform(image), preprocess(image, size=40))


def test_rectangular_input_size_resizes_without_crop() -> None:
    loaded = load_model("resnet18", input_size=(32, 48))
    x = loaded.transform(load_image())
    assert x.shape == (1, 3, 32, 48)


def test_unknown_model_name_suggests_close_names() -> None:
    with pytest.raises(ModelLoadError, match=r"unknown torchvision model 'resnt18'; did you mean "
                       r"resnet18"):
        load_model("resnt18")
    with pytest.raises(ModelLoadError, match=r"unknown torchvision model"):
        resolve_weights("resnt18", "DEFAULT")


def test_unknown_weights_name_lists_valid_names_without_network(torch_home: Path) -> None:
    with pytest.raises(
        ModelLoadError,
        match=r"unknown weights 'IMAGENET1K_V9' for resnet18; valid names: IMAGENET1K_V1, DEFAULT",
    ):
        load_model("resnet18", weights="IMAGENET1K_V9")
    assert not torch_home.exists()  # nothing was downloaded or even created


def test_weights_names_resolve() -> None:
    enum = torchvision.models.ResNet18_Weights
    assert resolve_weights("resnet18", "DEFAULT") is enum.DEFAULT
    assert resolve_weights("resnet18", "IMAGENET1K_V1") is enum.IMAGENET1K_V1
    assert resolve_weights("resnet18", "ResNet18_Weights.IMAGENET1K_V1") is enum.IMAGENET1K_V1


def test_download_without_network_says_so(
    torch_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A proxy that refuses connections stands in for "no network", on any machine, at once.
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    # urllib builds its global opener, proxies included, on first use: drop it before and after
    # so that neither this test nor later ones see another test's proxy settings.
    urllib.request.install_opener(None)
    monkeypatch.setattr(urllib.request, "_opener", None)
    with pytest.raises(
        ModelLoadError,
        match=r"could not download ResNet18_Weights\.IMAGENET1K_V1 from https://\S+resnet18-"
        r"f37072fd\.pth .*no network\. Download the file elsewhere into .*torch_home",
    ) as info:
        load_model("resnet18", weights="DEFAULT")
    assert "\n" not in str(info.value)
    cached = torch_home / "hub" / "checkpoints"
    assert not any(cached.glob("*.pth"))  # no partial file left behind


def test_cached_weights_load_offline_with_their_own_transforms(torch_home: Path) -> None:
    enum = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    cache = torch_home / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.manual_seed(3)
    state = torchvision.models.resnet18().state_dict()
    torch.save(state, cache / enum.url.rsplit("/", 1)[-1])
    loaded = load_model("resnet18", weights="DEFAULT")
    assert loaded.weights is enum
    assert loaded.description == "resnet18 (weights ResNet18_Weights.IMAGENET1K_V1)"
    assert torch.equal(loaded.model.conv1.weight, state["conv1.weight"])
    image = load_image()
    x = loaded.transform(image)
    assert x.shape == (1, 3, 224, 224)
    assert torch.allclose(x[0], enum.transforms()(image))
    assert not torch.allclose(x, preprocess(image, size=224))  # resize 256 + crop, not 224


def test_checkpoint_round_trip_and_wrappers(tmp_path: Path) -> None:
    source = tiny_net(seed=5)
    plain = tmp_path / "plain.pt"
    torch.save(source.state_dict(), plain)
    lightning = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": source.state_dict(), "epoch": 3}, lightning)
    parallel = tmp_path / "ddp.pt"
    torch.save({f"module.{k}": v for k, v in source.state_dict().items()}, parallel)
    for path in (plain, lightning, parallel):
        loaded = load_model(model_class="tests.support.helpers:TinyNet", checkpoint=path)
        assert loaded.description == f"tests.support.helpers:TinyNet (checkpoint {path})"
        for key, value in source.state_dict().items():
            assert torch.equal(loaded.model.state_dict()[key], value), (path, key)


def test_checkpoint_key_mismatch_lists_missing_and_unexpected(tmp_path: Path) -> None:
    path = tmp_path / "r18.pt"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    # What load_state_dict(strict=False) reports: BatchNorm does not count its
    # num_batches_tracked buffers as missing (it fills them in for old checkpoints), so 262 of
    # MobileNetV2's 314 state-dict entries are missing, not all 314.
    with pytest.raises(
        ModelLoadError,
        match=r"does not match MobileNetV2: missing 262 keys: features\.0\.0\.weight, .*\(\+258 "
        r"more\); unexpected 122 keys: conv1\.weight, .*\(\+118 more\)",
    ):
        load_model("mobilenet_v2", checkpoint=path)
    with pytest.raises(ModelLoadError, match=r"missing \d+ keys: layer1\.2\.conv1\.weight"):
        load_model("resnet34", checkpoint=path)


def test_checkpoint_shape_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "five.pt"
    torch.save(TinyNet(classes=5).state_dict(), path)
    with pytest.raises(ModelLoadError, match=r"2 tensors differ in shape .*fc\.weight \(5, 16\) "
                       r"vs \(4, 16\)"):
        load_model(model_class="tests.support.helpers:TinyNet", checkpoint=path)


def test_checkpoint_that_is_not_a_pure_state_dict_is_refused(tmp_path: Path) -> None:
    whole = tmp_path / "whole.pt"
    torch.save(tiny_net(), whole)
    with pytest.raises(ModelLoadError, match=r"not a pure state dict: it pickles Python objects "
                       r"\(such as tests\.support\.helpers\.TinyNet\)"):
        load_model(model_class="tests.support.helpers:TinyNet", checkpoint=whole)
    listed = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(ModelLoadError, match=r"holds a list, not a state dict"):
        load_model("resnet18", checkpoint=listed)
    mixed = tmp_path / "mixed.pt"
    torch.save({"conv1.weight": torch.zeros(1), "lr": 0.1}, mixed)
    with pytest.raises(ModelLoadError, match=r"entry 'lr' is not a tensor"):
        load_model("resnet18", checkpoint=mixed)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ModelLoadError, match=r"cannot read checkpoint .*garbage\.pt'"):
        load_model("resnet18", checkpoint=garbage)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(whole.read_bytes()[:100])
    with pytest.raises(ModelLoadError, match=r"cannot read checkpoint .*cut\.pt"):
        load_model("resnet18", checkpoint=cut)
    with pytest.raises(ModelLoadError, match=r"checkpoint not found: .*nope\.pt"):
        load_model("resnet18", checkpoint=tmp_path / "nope.pt")
    with pytest.raises(ModelLoadError, match=r"is a directory"):
        load_model("resnet18", checkpoint=tmp_path)


def test_model_class_from_module_and_file(tmp_path: Path) -> None:
    loaded = load_model(model_class="tests.support.helpers:TinyNet")
    assert isinstance(loaded.model, TinyNet) and not loaded.model.training
    source = tmp_path / "my_net.py"
    source.write_text(
        "import torch\n"
        "class Net(torch.nn.Sequential):\n"
        "    def __init__(self):\n"
        "        super().__init__(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU())\n"
        "def make():\n"
        "    return Net()\n"
    )
    for attr in ("Net", "make"):
        model = load_model(model_class=f"{source}:{attr}").model
        assert type(model).__name__ == "Net" and model[0].in_channels == 1


def test_model_class_errors(tmp_path: Path) -> None:
    source = tmp_path / "bad_nets.py"
    source.write_text(
        "import torch\n"
        "class NeedsArgs(torch.nn.Module):\n"
        "    def __init__(self, width):\n"
        "        super().__init__()\n"
        "def not_a_module():\n"
        "    return 42\n"
        "VALUE = 3\n"
    )
    cases = {
        "no_colon": r"must look like 'package\.module:ClassName'",
        "definitely_missing_mod:Net": r"cannot import module 'definitely_missing_mod'",
        "tests.support.helpers:TinyNe": r"has no attribute 'TinyNe'; did you mean TinyNet",
        f"{source}:NeedsArgs": r"NeedsArgs\(\) failed: TypeError: .*constructible with no args|"
        r"constructible with no arguments",
        f"{source}:not_a_module": r"returned a int, not a torch\.nn\.Module",
        f"{source}:VALUE": r"is a int, not a class or function",
        f"{tmp_path / 'missing.py'}:Net": r"model file not found",
    }
    for spec, pattern in cases.items():
        with pytest.raises(ModelLoadError, match=pattern):
            load_model(model_class=spec)


def test_conflicting_and_bad_arguments(tmp_path: Path) -> None:
    either = r"either a model name \(torchvision, timm:NAME or hf:CLASS\) or --model-class"
    with pytest.raises(ModelLoadError, match=either):
        load_model()
    with pytest.raises(ModelLoadError, match=either):
        load_model("resnet18", model_class="tests.support.helpers:TinyNet")
    with pytest.raises(ModelLoadError, match=r"--weights and --checkpoint both set the weights"):
        load_model("resnet18", weights="DEFAULT", checkpoint=tmp_path / "x.pt")
    with pytest.raises(ModelLoadError, match=r"--weights names torchvision weights"):
        load_model(model_class="tests.support.helpers:TinyNet", weights="DEFAULT")
    with pytest.raises(TypeError, match=r"name must be a str or None, got int"):
        load_model(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"checkpoint must be a path or None, got int"):
        load_model("resnet18", checkpoint=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"input_size must be a positive int or \(H, W\), got 0"):
        load_model("resnet18", input_size=0)
    with pytest.raises(TypeError, match=r"input_size must be an int, \(H, W\) or None, got 2\.5"):
        load_model("resnet18", input_size=2.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"config must be a path or None, got int"):
        load_model("hf:ResNetModel", config=3)  # type: ignore[arg-type]
    for kwargs, pattern in (
        ({"checkpoint": ""}, r"--checkpoint must not be empty"),
        ({"weights": ""}, r"--weights must not be empty"),
        ({"config": "c.json"}, r"--config is the config file of an hf:CLASS model"),
    ):
        with pytest.raises(ModelLoadError, match=pattern):
            load_model("resnet18", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ModelLoadError, match=r"--config and --weights both define"):
        load_model("hf:ResNetModel", config="c.json", weights="some/repo")
    for path in ("/dev/zero", tmp_path):
        with pytest.raises(ModelLoadError, match=r"is not a regular file|is a directory"):
            load_model("resnet18", checkpoint=path)


# -- nothing downloads without --weights -----------------------------------------------------------


@pytest.fixture
def no_downloads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """Every way torch and torchvision fetch a file fails loudly and records the attempt; the
    Hugging Face Hub (timm's and transformers' weights) is offline, with an empty cache."""
    attempts: list[str] = []
    try:
        from huggingface_hub import constants
    except ImportError:
        pass
    else:
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))

    def refuse(url: object, *args: object, **kwargs: object) -> None:
        attempts.append(str(getattr(url, "full_url", url)))
        raise AssertionError(f"a download was attempted: {url}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    return attempts


@pytest.mark.parametrize("name", ["lraspp_mobilenet_v3_large", "ssdlite320_mobilenet_v3_large"])
def test_detection_and_segmentation_build_with_random_backbones_offline(
    name: str, no_downloads: list[str], torch_home: Path
) -> None:
    loaded = load_model(name, input_size=32)
    assert loaded.description == f"{name} (random weights)"
    assert no_downloads == [] and not torch_home.exists()


def test_a_failing_builder_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(**kwargs: object) -> None:
        raise AttributeError("'NoneType' object has no attribute 'url'")

    monkeypatch.setattr(torchvision.models, "get_model_builder", lambda name: broken)
    with pytest.raises(ModelLoadError, match=r"^building resnet18 failed: AttributeError: "
                       r"'NoneType' object has no attribute 'url'$"):
        load_model("resnet18")


# -- timm:NAME -------------------------------------------------------------------------------------


def test_timm_model_with_random_weights_and_its_own_preprocessing(
    no_downloads: list[str],
) -> None:
    timm = pytest.importorskip("timm")
    loaded = load_model("timm:resnet18")
    assert isinstance(loaded.model, timm.models.ResNet) and not loaded.model.training
    assert loaded.description == "timm:resnet18 (random weights)"
    assert loaded.input_size == 224  # from timm's pretrained config
    config = timm.data.resolve_model_data_config(loaded.model)
    image = load_image()
    expected = preprocess(image, size=224, mean=config["mean"], std=config["std"])
    assert torch.equal(loaded.transform(image), expected)
    assert load_model("timm:resnet18", input_size=48).transform(image).shape == (1, 3, 48, 48)
    assert no_downloads == []


def test_timm_errors_are_one_line(
    monkeypatch: pytest.MonkeyPatch, no_downloads: list[str]
) -> None:
    pytest.importorskip("timm")
    with pytest.raises(ModelLoadError, match=r"unknown timm model 'resnt18'; did you mean"):
        load_model("timm:resnt18")
    with pytest.raises(ModelLoadError, match=r"timm: needs a model name"):
        load_model("timm:")
    with pytest.raises(ModelLoadError, match=r"could not load pretrained weights for "
                       r"timm:resnet18 \(.*\); without a network, pass --checkpoint") as info:
        load_model("timm:resnet18", weights="pretrained")
    assert "\n" not in str(info.value)
    monkeypatch.setitem(sys.modules, "timm", None)  # as if the extra were not installed
    with pytest.raises(ModelLoadError, match=r"^timm:NAME models need timm, which is not "
                       r"installed: pip install 'torch-featureviz\[timm\]'"):
        load_model("timm:resnet18")


# -- hf:CLASS --------------------------------------------------------------------------------------


def _tiny_resnet_config(path: Path) -> Path:
    path.write_text(json.dumps({"model_type": "resnet", "embedding_size": 8,
                                "hidden_sizes": [8, 16], "depths": [1, 1],
                                "layer_type": "basic"}))
    return path


@pytest.mark.slow
def test_hf_model_from_a_local_config_and_from_save_pretrained(
    tmp_path: Path, no_downloads: list[str]
) -> None:
    transformers = pytest.importorskip("transformers")
    config = _tiny_resnet_config(tmp_path / "tiny.json")
    loaded = load_model("hf:ResNetModel", config=config, input_size=32)
    assert isinstance(loaded.model, transformers.ResNetModel) and not loaded.model.training
    assert loaded.model.config.hidden_sizes == [8, 16]
    assert loaded.description == "hf:ResNetModel (random weights)"
    auto = load_model("hf:AutoModel", config=config).model
    assert isinstance(auto, transformers.ResNetModel)
    saved = tmp_path / "saved"
    loaded.model.save_pretrained(saved)
    again = load_model("hf:ResNetModel", weights=str(saved)).model
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
    assert no_downloads == []


@pytest.mark.slow
def test_hf_default_config_and_image_size(no_downloads: list[str]) -> None:
    pytest.importorskip("transformers")
    loaded = load_model("hf:MobileNetV2Model")  # the class's default config, random weights
    assert loaded.input_size == loaded.model.config.image_size == 224
    assert no_downloads == []


@pytest.mark.slow
def test_hf_errors_are_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_downloads: list[str]
) -> None:
    pytest.importorskip("transformers")
    not_json = tmp_path / "bad.json"
    not_json.write_text("{not json")
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    no_type = tmp_path / "no_type.json"
    no_type.write_text("{}")
    huge = tmp_path / "huge.json"
    with huge.open("wb") as f:
        f.truncate(17 * 2**20)  # sparse: costs no disk
    cases = {
        ("hf:ResNetModle", None): r"transformers has no model class 'ResNetModle'; did you mean "
                                  r".*ResNetModel",
        ("hf:ResNetConfig", None): r"transformers\.ResNetConfig is not a model class",
        ("hf:", None): r"hf: needs a model class",
        ("hf:AutoModel", None): r"hf:AutoModel has no default config; give --config",
        ("hf:AutoModel", no_type): r"hf:AutoModel has no default config",
        ("hf:ResNetModel", not_json): r"config .*bad\.json' is not valid JSON",
        ("hf:ResNetModel", listed): r"holds a JSON list, not an object",
        ("hf:ResNetModel", tmp_path / "nope.json"): r"config not found: .*nope\.json",
        ("hf:ResNetModel", "/dev/zero"): r"config '/dev/zero' is not a regular file",
        ("hf:ResNetModel", huge): r"config .*huge\.json' is larger than 16777216 bytes, the most "
                                  r"that is read; a model config is a small JSON file\.$",
    }
    for (name, config), pattern in cases.items():
        with pytest.raises(ModelLoadError, match=pattern) as info:
            load_model(name, config=config)
        assert "\n" not in str(info.value)
    bad_value = tmp_path / "bad_value.json"
    bad_value.write_text(json.dumps({"hidden_sizes": "wide"}))
    with pytest.raises(ModelLoadError, match=r"^building hf:ResNetModel failed: \w+Error"):
        load_model("hf:ResNetModel", config=bad_value)
    with pytest.raises(ModelLoadError, match=r"could not load hf:ResNetModel weights"):
        load_model("hf:ResNetModel", weights=str(tmp_path / "no_such_dir"))
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ModelLoadError, match=r"^hf:CLASS models need transformers, which is not "
                       r"installed: pip install 'torch-featureviz\[hf\]'"):
        load_model("hf:ResNetModel")
