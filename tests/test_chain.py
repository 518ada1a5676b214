import pytest
import torch
import torchvision
from torch import nn

from tests.support.helpers import assert_same_state, hook_count, state_snapshot
from torch_featureviz import Extractor, FeatureCapture, chain_feature_maps


def test_chain_reproduces_the_original_procedure_on_resnet18():
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    x = torch.randn(2, 3, 64, 64)
    ex = Extractor(model).activate()
    # the article's loop, written out
    results = [ex.CNN_layers[0](x)]
    for layer in ex.CNN_layers[1:]:
        results.append(layer(results[-1]))
    maps = chain_feature_maps(model, x, max_channels=None, sample=1)
    assert list(maps) == ex.CNN_names
    for name, expected in zip(ex.CNN_names, results, strict=True):
        torch.testing.assert_close(maps[name], expected[1].detach(), rtol=0, atol=0)
        assert maps[name].dtype == torch.float32 and not maps[name].requires_grad


def test_chain_maps_are_twice_the_true_resolution():
    model = torchvision.models.resnet18().eval()
    x = torch.randn(1, 3, 224, 224)
    chain = chain_feature_maps(Extractor(model), x)
    with FeatureCapture(model) as cap, torch.no_grad():
        model(x)
    assert chain["layer4.1.conv2"].shape == (64, 14, 14)
    assert cap.maps["layer4.1.conv2"].shape == (64, 7, 7)
    assert chain.keys() <= cap.maps.keys()


def test_chain_works_on_vgg_and_leaves_the_model_unchanged():
    model = torchvision.models.vgg11().train()
    before = state_snapshot(model)
    maps = chain_feature_maps(model, torch.randn(1, 3, 32, 32), max_channels=8)
    assert len(maps) == 8 and all(m.shape[0] == 8 for m in maps.values())
    assert_same_state(before, state_snapshot(model))
    assert hook_count(model) == 0


@pytest.mark.parametrize(
    "arch, layer",
    [
        ("densenet121", "features.denseblock1.denselayer2.conv1"),
        ("googlenet", "inception3a.branch2.0.conv"),
    ],
)
def test_chain_breaks_clearly_where_channels_do_not_line_up(arch, layer):
    kwargs = {"init_weights": False, "aux_logits": False} if arch == "googlenet" else {}
    model = torchvision.models.get_model(arch, **kwargs)
    with pytest.raises(ValueError, match=rf"the chain breaks at '{layer}'.*use hook mode"):
        chain_feature_maps(model, torch.randn(1, 3, 64, 64))


def test_chain_breaks_when_the_map_gets_too_small():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 5))
    with pytest.raises(ValueError, match="the chain breaks at '1' on an input of shape"):
        chain_feature_maps(model, torch.randn(1, 3, 6, 6))


def test_chain_bad_input():
    model = torchvision.models.resnet18()
    with pytest.raises(TypeError, match="takes an nn.Module or an Extractor"):
        chain_feature_maps("resnet18", torch.randn(1, 3, 8, 8))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="has 1 channels but the model's first conv expects 3"):
        chain_feature_maps(model, torch.randn(1, 1, 32, 32))
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        chain_feature_maps(model, [1, 2])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sample=1 is outside the batch of 1"):
        chain_feature_maps(model, torch.randn(1, 3, 32, 32), sample=1)
    with pytest.raises(ValueError, match="max_channels must be >= 1"):
        chain_feature_maps(model, torch.randn(1, 3, 32, 32), max_channels=0)
    with pytest.raises(ValueError, match="nothing to chain"):
        only_ds = Extractor(nn.ModuleDict({"downsample": nn.Conv2d(3, 3, 1)}))
        chain_feature_maps(only_ds, torch.randn(1, 3, 4, 4))


@pytest.mark.parametrize(
    "model, kinds",
    [
        (torchvision.models.video.r3d_18(), "Conv3d"),
        (nn.Sequential(nn.Conv1d(3, 4, 3), nn.ConvTranspose1d(4, 4, 3)), "Conv1d, ConvTranspose1d"),
    ],
)
def test_chain_mode_is_conv2d_only_with_a_clear_error(model, kinds):
    with pytest.raises(
        ValueError, match=rf"chain mode supports only Conv2d .* convs are {kinds}\. Use hook mode"
    ):
        chain_feature_maps(model, torch.randn(1, 3, 8, 8))


def test_chain_skips_transposed_convs_and_says_where_it_breaks():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ConvTranspose2d(8, 4, 2, stride=2), nn.Conv2d(4, 2, 3)
    )
    assert Extractor(model).activate().CNN_names == ["0", "2"]
    with pytest.raises(ValueError, match="the chain breaks at '2': it expects 4 input channels"):
        chain_feature_maps(model, torch.randn(1, 3, 8, 8))
