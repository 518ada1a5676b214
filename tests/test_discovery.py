import pytest
import torch
import torchvision
from torch import nn

from tests.support.helpers import TinyNet, tiny_net
from torch_featureviz import Extractor, find_conv_layers, find_linear_layers, unwrap_model
from torch_featureviz.capture.discovery import CONV_TYPES

ZOO = {
    "resnet18": lambda: torchvision.models.resnet18(),
    "resnet50": lambda: torchvision.models.resnet50(),
    "vgg16": lambda: torchvision.models.vgg16(),
    "mobilenet_v2": lambda: torchvision.models.mobilenet_v2(),
    "mobilenet_v3_small": lambda: torchvision.models.mobilenet_v3_small(),
    "densenet121": lambda: torchvision.models.densenet121(),
    "efficientnet_b0": lambda: torchvision.models.efficientnet_b0(),
    "convnext_tiny": lambda: torchvision.models.convnext_tiny(),
    "googlenet": lambda: torchvision.models.googlenet(init_weights=False, aux_logits=False),
    "inception_v3": lambda: torchvision.models.inception_v3(init_weights=False, aux_logits=False),
    "regnet_y_400mf": lambda: torchvision.models.regnet_y_400mf(),
    "squeezenet1_0": lambda: torchvision.models.squeezenet1_0(),
    "tiny_custom": lambda: tiny_net(),
}


@pytest.fixture(scope="module", params=sorted(ZOO))
def zoo_model(request):
    torch.manual_seed(0)
    return request.param, ZOO[request.param]()


def test_discovery_finds_every_conv_across_architectures(zoo_model):
    _, model = zoo_model
    expected = sum(isinstance(m, CONV_TYPES) for m in model.modules())
    convs = find_conv_layers(model)
    assert len(convs) == expected > 0
    assert all(isinstance(m, nn.Conv2d) for m in convs.values())
    # names are real qualified names, in named_modules() order
    by_name = dict(model.named_modules())
    assert all(by_name[n] is m for n, m in convs.items())
    order = [n for n, m in model.named_modules() if isinstance(m, CONV_TYPES)]
    assert list(convs) == order


def test_extractor_covers_every_conv_on_any_architecture(zoo_model):
    _, model = zoo_model
    ex = Extractor(model).activate()
    total = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    assert len(ex.CNN_layers) + len(ex.DS_layers) == total
    assert len(ex.CNN_names) == len(ex.CNN_layers) == len(ex.CNN_weights)
    assert all(w is m.weight for w, m in zip(ex.CNN_weights, ex.CNN_layers, strict=True))
    assert ex.info()["Total Linear Layers"] == sum(
        isinstance(m, nn.Linear) for m in model.modules()
    )


@pytest.mark.parametrize(
    "name, cnn, seq, ds, linear, blocks",
    [("resnet50", 49, 4, 4, 1, 16), ("resnet18", 17, 4, 3, 1, 8)],
)
def test_extractor_counts_match_the_original_on_resnets(name, cnn, seq, ds, linear, blocks):
    model = torchvision.models.get_model(name)
    for source in (model, list(model.children())):
        info = Extractor(source).info()
        assert info["Total CNN Layers"] == cnn
        assert info["Total Sequential Layers"] == seq
        assert info["Total Downsampling Layers"] == ds
        assert info["Total Linear Layers"] == linear
        assert info["Total number of Bottleneck and Basicblock"] == blocks
        assert info["Down-sample layers name"] == "downsample"
        assert info["Total Execution time"].endswith(" sec")


def test_extractor_down_sample_layers_are_the_downsample_convs():
    model = torchvision.models.resnet18()
    ex = Extractor(model).activate()
    assert ex.DS_names == [
        "layer2.0.downsample.0",
        "layer3.0.downsample.0",
        "layer4.0.downsample.0",
    ]
    assert all(isinstance(m, nn.Conv2d) for m in ex.DS_layers)
    assert ex.CNN_names[0] == "conv1" and "downsample" not in " ".join(ex.CNN_names)
    assert ex.Linear_layers == [model.fc] and ex.Linear_weights[0] is model.fc.weight


def test_activate_is_idempotent_and_returns_self():
    ex = Extractor(torchvision.models.resnet18())
    assert ex.activate() is ex
    layers = list(ex.CNN_layers)
    assert ex.activate() is ex
    assert ex.CNN_layers == layers and len(ex.CNN_layers) == 17


def test_info_before_activate_activates():
    ex = Extractor(torchvision.models.resnet18())
    assert "not activated" in repr(ex)
    assert ex.info()["Total CNN Layers"] == 17
    assert len(ex.CNN_layers) == 17


def test_custom_ds_layer_name():
    model = torchvision.models.resnet18()
    ex = Extractor(model, DS_layer_name="nothing_here").activate()
    assert len(ex.CNN_layers) == 20 and ex.DS_layers == []


def test_conv_subclasses_count():
    class MyConv(nn.Conv2d):
        pass

    model = nn.Sequential(MyConv(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 1))
    assert list(find_conv_layers(model)) == ["0", "2"]
    assert len(Extractor(model).activate().CNN_layers) == 2


def test_custom_containers_are_walked():
    names = list(find_conv_layers(TinyNet()))
    assert names == ["stem.0", "blocks.0.conv", "blocks.1.conv", "heads.down", "shared"]


def test_include_exclude_patterns():
    model = torchvision.models.resnet50()
    assert len(find_conv_layers(model)) == 53
    layer1 = find_conv_layers(model, include="layer1.*")
    assert len(layer1) == 10 and all(n.startswith("layer1.") for n in layer1)
    no_ds = find_conv_layers(model, exclude="*downsample*")
    assert len(no_ds) == 49
    exact = find_conv_layers(model, include=["layer4.2.conv3", "conv1"])
    assert list(exact) == ["conv1", "layer4.2.conv3"]  # model order, not argument order


def test_unknown_name_lists_closest():
    with pytest.raises(
        ValueError, match=r"'layer1.0.conv9' matches no conv layer; Closest: layer1"
    ):
        find_conv_layers(torchvision.models.resnet18(), include="layer1.0.conv9")
    with pytest.raises(ValueError, match="pattern 'nothing.*' matches no conv layer"):
        find_conv_layers(torchvision.models.resnet18(), include="nothing.*")


def test_exclude_everything_is_an_error():
    with pytest.raises(ValueError, match="leave no conv layers selected"):
        find_conv_layers(tiny_net(), exclude="*")


def test_model_without_convs():
    with pytest.raises(ValueError, match=r"has no conv layers \(searched 2 modules for Conv1d, "):
        find_conv_layers(nn.Sequential(nn.Linear(3, 3)))
    with pytest.raises(ValueError, match="has no Linear layers"):
        find_linear_layers(nn.Sequential(nn.Conv2d(3, 3, 1)))


def test_bad_types():
    with pytest.raises(TypeError, match="must be a torch.nn.Module"):
        find_conv_layers("resnet18")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="include must be a string or a sequence"):
        find_conv_layers(tiny_net(), include=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Extractor takes an nn.Module"):
        Extractor(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"\(empty\)"):
        Extractor([])
    with pytest.raises(TypeError, match=r"model_children\[1\] must be a torch.nn.Module"):
        Extractor([nn.Conv2d(3, 3, 1), "x"])  # type: ignore[list-item]


def test_wrappers_are_looked_through():
    model = tiny_net()
    dp = nn.DataParallel(model)
    assert unwrap_model(dp) is model
    assert list(find_conv_layers(dp)) == list(find_conv_layers(model))
    assert not any(n.startswith("module.") for n in Extractor(dp).activate().CNN_names)


class MixedNet(nn.Module):
    """One conv of every type, in registration order."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(2, 3, 3)
        self.c2 = nn.Conv2d(2, 3, 3)
        self.c3 = nn.Conv3d(2, 3, 3)
        self.t1 = nn.ConvTranspose1d(2, 3, 3)
        self.t2 = nn.ConvTranspose2d(2, 3, 3)
        self.t3 = nn.ConvTranspose3d(2, 3, 3)
        self.fc = nn.Linear(3, 1)


def test_every_conv_type_is_found_by_default():
    model = MixedNet()
    assert list(find_conv_layers(model)) == ["c1", "c2", "c3", "t1", "t2", "t3"]
    assert set(CONV_TYPES) == {type(m) for m in find_conv_layers(model).values()}


@pytest.mark.parametrize(
    "types, expected",
    [
        (nn.Conv2d, ["c2"]),
        ("conv3d", ["c3"]),
        ("Conv_Transpose2d", ["t2"]),
        (("conv1d", nn.ConvTranspose1d), ["c1", "t1"]),
        (["conv2d", "convtranspose2d"], ["c2", "t2"]),
        (CONV_TYPES, ["c1", "c2", "c3", "t1", "t2", "t3"]),
    ],
)
def test_types_restricts_discovery(types, expected):
    assert list(find_conv_layers(MixedNet(), types=types)) == expected


def test_types_works_with_include_and_keeps_subclasses():
    class Same(nn.Conv2d):
        pass

    model = nn.Sequential(nn.Conv1d(1, 1, 1), Same(1, 1, 1), nn.Conv2d(1, 1, 1))
    assert list(find_conv_layers(model, types="conv2d")) == ["1", "2"]
    assert list(find_conv_layers(model, types=Same)) == ["1"]
    assert list(find_conv_layers(model, types=nn.Conv2d, include="2")) == ["2"]
    with pytest.raises(ValueError, match="'0' matches no conv layer"):
        find_conv_layers(model, types=nn.Conv2d, include="0")


@pytest.mark.parametrize(
    "types, exc, match",
    [
        ("conv4d", ValueError, r"unknown conv type name 'conv4d'; expected one of 'conv1d'"),
        (nn.Linear, ValueError, "Linear is not a convolution class"),
        ((), ValueError, "types is empty; pass None"),
        (3, TypeError, "types must be a conv class, a name such as 'conv2d'"),
        ((nn.Conv2d, 3.0), TypeError, "types entries must be conv classes or names"),
    ],
)
def test_bad_types_argument(types, exc, match):
    with pytest.raises(exc, match=match):
        find_conv_layers(MixedNet(), types=types)


def test_no_conv_of_the_requested_type_names_what_there_is():
    model = nn.Sequential(nn.Conv1d(2, 2, 1), nn.Conv1d(2, 2, 1), nn.Conv3d(2, 2, 1))
    with pytest.raises(
        ValueError, match=r"no conv layers of the types asked for \(Conv2d\); it has 2 Conv1d, "
        r"1 Conv3d\. Pass types=None"
    ):
        find_conv_layers(model, types="conv2d")


def test_timm_conv_subclasses_are_convs():
    timm_layers = pytest.importorskip("timm.layers")
    model = nn.Sequential(
        timm_layers.Conv2dSame(3, 4, 3, stride=2),
        timm_layers.ScaledStdConv2d(4, 4, 3),
        timm_layers.StdConv2dSame(4, 4, 3),
    )
    assert list(find_conv_layers(model)) == ["0", "1", "2"]
    assert len(Extractor(model).activate().CNN_layers) == 3  # all are Conv2d subclasses


def test_lazy_convs_need_one_forward_first():
    torch.manual_seed(0)
    model = nn.Sequential(nn.LazyConv2d(4, 3), nn.ReLU(), nn.LazyConv1d(2, 1))
    with pytest.raises(ValueError, match=r"'0' is a LazyConv2d whose weights are not materialised"):
        find_conv_layers(model)
    with pytest.raises(ValueError, match=r"Run one forward pass first \(model\(example_input\)\)"):
        find_conv_layers(model, types="conv1d")
    # A lazy conv that is not selected does not matter.
    assert list(find_conv_layers(nn.Sequential(nn.LazyConv2d(4, 3), nn.Conv1d(1, 1, 1)),
                                 types="conv1d")) == ["1"]
    lazy = nn.Sequential(nn.LazyConv2d(4, 3), nn.ReLU(), nn.LazyConvTranspose2d(2, 3))
    lazy(torch.randn(1, 3, 8, 8))
    convs = find_conv_layers(lazy)
    assert list(convs) == ["0", "2"]
    assert type(convs["0"]) is nn.Conv2d and type(convs["2"]) is nn.ConvTranspose2d


def _quantizable() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        torch.ao.quantization.QuantStub(),
        nn.Conv2d(3, 4, 3),
        nn.ReLU(),
        nn.Conv2d(4, 4, 1),
        torch.ao.quantization.DeQuantStub(),
    )


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_int8_quantized_models_get_their_own_message():
    model = _quantizable().eval()
    model.qconfig = torch.ao.quantization.get_default_qconfig("fbgemm")
    prepared = torch.ao.quantization.prepare(model)
    prepared(torch.randn(1, 3, 8, 8))
    quantized = torch.ao.quantization.convert(prepared)
    with pytest.raises(ValueError) as info:
        find_conv_layers(quantized)
    message = str(info.value)
    assert "2 int8 quantized conv layers (first: '1', torch.ao.nn.quantized" in message
    assert "quantized convs are not supported" in message
    assert "before torch.ao.quantization.convert()" in message
    assert "Conv2d layers" not in message


def test_torchvision_quantized_model_message_and_its_float_twin():
    tvq = torchvision.models.quantization
    with pytest.warns(UserWarning):  # torch's deprecation of quantize_per_tensor
        quantized = tvq.mobilenet_v2(quantize=True)
    with pytest.raises(ValueError, match="int8 quantized conv layers .* are not supported"):
        find_conv_layers(quantized)
    float_model = tvq.mobilenet_v2(quantize=False)
    assert len(find_conv_layers(float_model)) == 52


def test_qat_convs_are_float_subclasses_and_work():
    model = _quantizable().train()
    model.qconfig = torch.ao.quantization.get_default_qat_qconfig("fbgemm")
    qat = torch.ao.quantization.prepare_qat(model)
    convs = find_conv_layers(qat)
    assert list(convs) == ["1", "3"]
    assert all(type(m).__module__.startswith("torch.ao.nn.qat") for m in convs.values())


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor")
def test_partly_quantized_model_warns_and_keeps_its_float_convs():
    model = _quantizable().eval()
    model.qconfig = torch.ao.quantization.get_default_qconfig("fbgemm")
    prepared = torch.ao.quantization.prepare(model)
    prepared(torch.randn(1, 3, 8, 8))
    partly = nn.Sequential(torch.ao.quantization.convert(prepared), nn.Conv2d(4, 4, 1))
    with pytest.warns(UserWarning, match="2 int8 quantized conv layers are skipped"):
        assert list(find_conv_layers(partly)) == ["1"]


def test_extractor_keeps_the_articles_conv2d_only_view():
    model = MixedNet()
    ex = Extractor(model).activate()
    assert ex.CNN_names == ["c2"] and ex.DS_names == []
    assert ex.info()["Total Conv2d (all)"] == 1
    video = torchvision.models.video.r3d_18()
    assert Extractor(video).activate().CNN_layers == []
    assert len(find_conv_layers(video)) == 20
