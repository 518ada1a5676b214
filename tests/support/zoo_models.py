"""Model builders for the model-zoo matrix (``tests/test_zoo.py``): random weights, tiny inputs.

Every case builds its model with random weights (nothing is downloaded: ``weights=None``,
``weights_backbone=None``, ``pretrained=False``, Hugging Face models from small configs) and says
how to call it on a tiny input. timm and transformers are test extras; their cases are listed only
when the package imports.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision import models as tvm

__all__ = [
    "Case",
    "TinyUNet",
    "cheap_init",
    "hf_cases",
    "other_cases",
    "quantized_builders",
    "timm_cases",
    "torchvision_cases",
]


@dataclass(frozen=True)
class Case:
    """One model of the matrix: how to build it and how to call it."""

    name: str
    build: Callable[[], nn.Module]
    #: Positional inputs, made fresh for each call.
    inputs: Callable[[], tuple[Any, ...]]
    #: Keyword inputs, made fresh for each call.
    kwargs: Callable[[], dict[str, Any]] = dict

    def __repr__(self) -> str:  # pytest ids
        return self.name


def image(size: int | tuple[int, int] = 32, channels: int = 3) -> Callable[[], tuple[Any, ...]]:
    h, w = (size, size) if isinstance(size, int) else size
    return lambda: (torch.randn(1, channels, h, w),)


# -- cheap random initialisation ---------------------------------------------------------------

_INIT_FUNCTIONS = (
    "uniform_",
    "normal_",
    "trunc_normal_",
    "kaiming_uniform_",
    "kaiming_normal_",
    "xavier_uniform_",
    "xavier_normal_",
    "orthogonal_",
)


@contextlib.contextmanager
def cheap_init(seed: int = 0) -> Iterator[None]:
    """Make ``torch.nn.init``'s random initialisers cheap while models are built.

    Building torchvision's classification zoo with its own initialisation takes over a minute on
    one core (regnet_y_128gf and vit_h_14 alone have 1.3 billion parameters, each drawn twice:
    once by the layer's ``reset_parameters``, once by the model's init loop). The matrix checks
    discovery and capture, which do not depend on the weight distribution, so here each
    initialiser fills its tensor from one small random pattern at the scale it was asked for
    (``std``, bounds, or ``1 / sqrt(fan_in)``): a copy, not a random draw. Restored on exit.
    """
    gen = torch.Generator().manual_seed(seed)
    size = 1 << 16
    doubled = (torch.rand(size, generator=gen) * 2 - 1).repeat(2)  # uniform in [-1, 1)
    offset = [0]

    def fill(tensor: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        n = tensor.numel()
        if n == 0:
            return tensor
        start = offset[0] % size
        offset[0] += 7919  # a prime stride, so tensors of one shape still differ
        # one period, already scaled: the big tensor is then written once, by a copy
        period = doubled[start : start + size] * ((hi - lo) / 2) + (hi + lo) / 2
        with torch.no_grad():
            flat = tensor.view(-1) if tensor.is_contiguous() else torch.empty(n)
            full, rest = divmod(n, size)
            if full:
                flat[: full * size].view(full, size).copy_(period.expand(full, size))
            if rest:
                flat[full * size :].copy_(period[:rest])
            if flat.data_ptr() != tensor.data_ptr():
                tensor.copy_(flat.view(tensor.shape))
        return tensor

    def fan_in(tensor: torch.Tensor) -> int:
        return max(1, tensor[0].numel()) if tensor.dim() > 1 else max(1, tensor.numel())

    def uniform_(tensor: torch.Tensor, a: float = 0.0, b: float = 1.0, *_: Any, **__: Any):
        return fill(tensor, a, b)

    def normal_(tensor: torch.Tensor, mean: float = 0.0, std: float = 1.0, *_: Any, **__: Any):
        half = std * math.sqrt(3.0)  # the same std as the normal asked for
        return fill(tensor, mean - half, mean + half)

    def scaled_(tensor: torch.Tensor, *_: Any, **__: Any) -> torch.Tensor:
        bound = 1.0 / math.sqrt(fan_in(tensor))
        return fill(tensor, -bound, bound)

    replacements = {
        "uniform_": uniform_,
        "normal_": normal_,
        "trunc_normal_": normal_,
        "kaiming_uniform_": scaled_,
        "kaiming_normal_": scaled_,
        "xavier_uniform_": scaled_,
        "xavier_normal_": scaled_,
        "orthogonal_": scaled_,
    }
    saved = {name: getattr(nn.init, name) for name in _INIT_FUNCTIONS}
    try:
        for name, fn in replacements.items():
            setattr(nn.init, name, fn)
        yield
    finally:
        for name, fn in saved.items():
            setattr(nn.init, name, fn)


def _built(builder: Callable[..., nn.Module], **kwargs: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        with cheap_init():
            return builder(**kwargs)

    return build


# -- torchvision ------------------------------------------------------------------------------

#: Classification builders that need more than 32x32 pixels: pooling stacks that reach 0 px
#: earlier, or a size fixed by the architecture.
_CLASSIFICATION_SIZES = {
    "alexnet": 64,
    "inception_v3": 75,  # the smallest input torchvision's InceptionV3 accepts
    "maxvit_t": 224,  # its partition size 7 must divide the map at all four stages
    "vit_h_14": 28,  # its image_size must be a multiple of the 14 px patches
}


def _classification_kwargs(name: str) -> dict[str, Any]:
    if name.startswith("vit_"):
        return {"image_size": 28 if name.endswith("_14") else 32}
    if name in ("googlenet", "inception_v3"):
        return {"init_weights": True}
    return {}


def _detection_kwargs(name: str) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"weights": None, "weights_backbone": None}
    if not name.startswith("ssd"):
        # GeneralizedRCNNTransform resizes to 800 px by default
        kwargs.update(min_size=64, max_size=64)
    if name.startswith(("maskrcnn", "keypointrcnn", "fasterrcnn")):
        # Random weights score every box below the default 0.05 threshold, so the mask and
        # keypoint heads would see no box at all; keep a few so every head runs.
        kwargs.update(box_score_thresh=0.0, box_detections_per_img=4)
    return kwargs


def _detection_inputs(size: int) -> Callable[[], tuple[Any, ...]]:
    return lambda: ([torch.rand(3, size, size)],)


def _mvit_builder(name: str) -> Callable[..., nn.Module]:
    """torchvision's MViT builders fix the input at 16 x 224 x 224, since a positional encoding
    and the final reshape depend on it; this builds the very same blocks for 4 x 32 x 32."""
    from torchvision.models.video import mvit

    original = mvit.MViT

    def small(**kwargs: Any) -> nn.Module:
        return original(**{**kwargs, "spatial_size": (32, 32), "temporal_size": 4})

    def build(**kwargs: Any) -> nn.Module:
        mvit.MViT = small  # type: ignore[misc]
        try:
            return getattr(mvit, name)(**kwargs)
        finally:
            mvit.MViT = original  # type: ignore[misc]

    return build


def _s3d_small(**kwargs: Any) -> nn.Module:
    """S3D ends in ``AvgPool3d((2, 7, 7))``, which needs 16 x 224 x 224 inputs; an adaptive pool
    (no parameters) lets every conv run on 8 x 32 x 32."""
    model = tvm.video.s3d(**kwargs)
    model.avgpool = nn.AdaptiveAvgPool3d(1)
    return model


def torchvision_cases() -> list[Case]:
    """Every torchvision classification, detection, segmentation, video and optical-flow
    builder, and the float (``quantize=False``) twin of every quantization builder."""
    cases: list[Case] = []
    for name in tvm.list_models(module=tvm):
        size = _CLASSIFICATION_SIZES.get(name, 32)
        builder = functools.partial(tvm.get_model, name, weights=None)
        cases.append(
            Case(f"tv-{name}", _built(builder, **_classification_kwargs(name)), image(size))
        )
    for name in tvm.list_models(module=tvm.detection):
        size = 320 if name.startswith("ssdlite") else 300 if name.startswith("ssd") else 64
        builder = functools.partial(tvm.get_model, name)
        cases.append(
            Case(f"tv-{name}", _built(builder, **_detection_kwargs(name)), _detection_inputs(size))
        )
    for name in tvm.list_models(module=tvm.segmentation):
        builder = functools.partial(tvm.get_model, name, weights=None, weights_backbone=None)
        cases.append(Case(f"tv-{name}", _built(builder), image(32)))
    for name in tvm.list_models(module=tvm.video):
        if name.startswith("mvit"):
            builder: Callable[..., nn.Module] = _mvit_builder(name)
            inputs = (1, 3, 4, 32, 32)
        elif name == "s3d":
            builder, inputs = _s3d_small, (1, 3, 8, 32, 32)
        else:
            builder = functools.partial(tvm.get_model, name)
            inputs = (1, 3, 2, 16, 16)
        cases.append(
            Case(
                f"tv-{name}",
                _built(builder, weights=None),
                functools.partial(lambda shape: (torch.randn(shape),), inputs),
            )
        )
    for name in tvm.list_models(module=tvm.optical_flow):
        cases.append(
            Case(
                f"tv-{name}",
                _built(functools.partial(tvm.get_model, name, weights=None)),
                # RAFT's correlation pyramid needs maps of 16 px at 1/8 resolution
                lambda: (torch.rand(1, 3, 128, 128), torch.rand(1, 3, 128, 128)),
                lambda: {"num_flow_updates": 2},
            )
        )
    for name in tvm.list_models(module=tvm.quantization):
        size = 75 if "inception" in name else 32
        builder = functools.partial(tvm.get_model, name, weights=None, quantize=False)
        cases.append(Case(f"tv-{name}-float", _built(builder), image(size)))
    return cases


def quantized_builders() -> list[str]:
    """torchvision's quantization builders (each gets an int8 case with ``quantize=True``)."""
    return list(tvm.list_models(module=tvm.quantization))


# -- our own U-Net, and others with transposed convs ---------------------------------------------


class TinyUNet(nn.Module):
    """A two-level U-Net: ConvTranspose2d upsampling, skip concatenations, a 1x1 head."""

    def __init__(self, channels: int = 3, classes: int = 2, width: int = 8) -> None:
        super().__init__()

        def double(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            )

        w = width
        self.down1 = double(channels, w)
        self.down2 = double(w, 2 * w)
        self.bottom = double(2 * w, 4 * w)
        self.pool = nn.MaxPool2d(2)
        self.up2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, stride=2)
        self.dec2 = double(4 * w, 2 * w)
        self.up1 = nn.ConvTranspose2d(2 * w, w, 2, stride=2)
        self.dec1 = double(2 * w, w)
        self.head = nn.Conv2d(w, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d1 = self.down1(x)
        d2 = self.down2(self.pool(d1))
        b = self.bottom(self.pool(d2))
        u2 = self.dec2(torch.cat([self.up2(b), d2], dim=1))
        u1 = self.dec1(torch.cat([self.up1(u2), d1], dim=1))
        return self.head(u1)


class TinyUNet3d(nn.Module):
    """A one-level 3-d U-Net (volumetric segmentation): Conv3d and ConvTranspose3d."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(inplace=True))
        self.down = nn.Conv3d(4, 8, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose3d(8, 4, 2, stride=2)
        self.head = nn.Conv3d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.enc(x)
        return self.head(torch.cat([self.up(torch.relu(self.down(e))), e], dim=1))


class AudioCNN(nn.Module):
    """A 1-d CNN over raw audio with a ConvTranspose1d decoder branch (an autoencoder-style
    denoiser): Conv1d and ConvTranspose1d, weight sharing included."""

    def __init__(self) -> None:
        super().__init__()
        self.enc1 = nn.Conv1d(1, 8, 9, stride=2, padding=4)
        self.enc2 = nn.Conv1d(8, 16, 9, stride=2, padding=4)
        self.mix = nn.Conv1d(16, 16, 1)
        self.dec = nn.ConvTranspose1d(16, 8, 4, stride=2, padding=1)
        self.out = nn.ConvTranspose1d(8, 1, 4, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.enc2(torch.relu(self.enc1(x))))
        h = self.mix(torch.relu(self.mix(h)))  # called twice
        return self.out(torch.relu(self.dec(h)))


class GanGenerator(nn.Module):
    """A DCGAN-style generator: a latent (N, z, 1, 1) up to an image through ConvTranspose2d."""

    def __init__(self, z: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.ConvTranspose2d(z, 32, 4, 1, 0, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(True),
            nn.ConvTranspose2d(32, 16, 4, 2, 1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(True),
            nn.ConvTranspose2d(16, 3, 4, 2, 1, bias=False, groups=1),
            nn.Tanh(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _lazy_net() -> nn.Module:
    model = nn.Sequential(nn.LazyConv2d(8, 3), nn.ReLU(), nn.LazyConvTranspose2d(4, 2, stride=2))
    with torch.no_grad():
        model(torch.randn(1, 3, 16, 16))  # materialise
    return model


def _fpn() -> nn.Module:
    from torchvision.ops import FeaturePyramidNetwork

    class Fpn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fpn = FeaturePyramidNetwork([8, 16], 8)

        def forward(self, a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
            return self.fpn({"c3": a, "c4": b})

    return Fpn()


def other_cases() -> list[Case]:
    """Hand-written models: U-Nets with transposed convs, an audio CNN, a GAN generator, an FPN,
    materialised lazy convs."""
    seeded = lambda cls: lambda: (torch.manual_seed(0), cls())[1]  # noqa: E731
    return [
        Case("unet-2d", seeded(TinyUNet), image(32)),
        Case("unet-3d", seeded(TinyUNet3d), lambda: (torch.randn(1, 1, 4, 8, 8),)),
        Case("audio-cnn-1d", seeded(AudioCNN), lambda: (torch.randn(1, 1, 256),)),
        Case("gan-generator", seeded(GanGenerator), lambda: (torch.randn(1, 16, 1, 1),)),
        Case(
            "torchvision-fpn",
            seeded(_fpn),
            lambda: (torch.randn(1, 8, 16, 16), torch.randn(1, 16, 8, 8)),
        ),
        Case("lazy-convs", seeded(_lazy_net), image(16)),
    ]


# -- timm ---------------------------------------------------------------------------------------

#: timm models, one or more per family; all with ``pretrained=False``. The comment says what
#: each adds to the matrix.
TIMM_MODELS: dict[str, dict[str, Any]] = {
    "resnet18": {},
    "resnet18d": {},  # ResNet-D: deep stem, avg-pool down-sample
    "resnet26t": {},
    "seresnext26d_32x4d": {},
    "resnetrs50": {},
    "resnetv2_50x1_bit": {},  # StdConv2d (weight standardisation)
    "tf_efficientnet_b0": {},  # Conv2dSame ("SAME" padding)
    "tf_mobilenetv3_small_minimal_100": {},  # Conv2dSame
    "tf_efficientnetv2_b0": {},
    "efficientnet_b0": {},
    "mobilenetv3_small_050": {},
    "mobilenetv2_050": {},
    "mobilenetv4_conv_small": {},
    "mobilenetv4_hybrid_medium": {},
    "nfnet_f0": {},  # ScaledStdConv2d
    "nf_resnet26": {},  # ScaledStdConv2d
    "eca_nfnet_l0": {},
    "repvgg_a0": {},
    "regnetx_002": {},
    "regnety_002": {},
    "convnext_atto": {},
    "convnextv2_atto": {},
    "ghostnet_050": {},
    "ghostnetv2_100": {},
    "mixnet_s": {},  # MixedConv2d: convs in a ModuleDict-like split
    "mnasnet_small": {},
    "lcnet_050": {},
    "hrnet_w18_small": {},  # parallel branches, fuse layers
    "dla34": {},
    "dpn48b": {},
    "cspdarknet53": {},
    "darknet17": {},
    "densenet121": {},
    "inception_v3": {},
    "xception41": {},
    "res2net50_14w_8s": {},
    "rexnet_100": {},
    "hardcorenas_a": {},
    "tresnet_m": {},  # space-to-depth stem: the first conv takes 48 channels
    "vovnet39a": {},
    "selecsls42b": {},
    "mobilevit_xxs": {},  # hybrid: convs around transformer blocks
    "mobilevitv2_050": {},
    "fastvit_t8": {},  # reparameterisable conv/attention hybrid
    "efficientformerv2_s0": {"img_size": 64},  # attention biases sized for the input
    "levit_128s": {"img_size": 64},  # conv stem, attention stages
    "coatnet_nano_rw_224": {"img_size": 64},
    "maxvit_nano_rw_256": {"img_size": 64},
    "vit_tiny_patch16_224": {"img_size": 32},  # a patch-embedding Conv2d
    "deit_tiny_patch16_224": {"img_size": 32},
    "swin_tiny_patch4_window7_224": {"img_size": 56},
    "poolformer_s12": {},
    "edgenext_xx_small": {},
    "resnet18.features_only": {"features_only": True},
    "efficientnet_b0.features_only": {"features_only": True, "out_indices": (1, 3, 4)},
    "convnext_atto.features_only": {"features_only": True},
    "mobilenetv3_small_050.features_only": {"features_only": True},
}

#: Models whose architecture needs more than the default 32 px input.
_TIMM_SIZES = {
    "coatnet_nano_rw_224": 64,
    "maxvit_nano_rw_256": 64,
    "levit_128s": 64,
    "swin_tiny_patch4_window7_224": 56,
    "inception_v3": 75,
    "hrnet_w18_small": 64,
    "tresnet_m": 64,
    "efficientformerv2_s0": 64,
    "ghostnetv2_100": 64,
    "edgenext_xx_small": 64,
}


def timm_cases() -> list[Case]:
    try:
        import timm
    except ImportError:
        return []
    cases = []
    for key, kwargs in TIMM_MODELS.items():
        arch = key.split(".")[0]
        build = _built(functools.partial(timm.create_model, arch, pretrained=False), **kwargs)
        cases.append(Case(f"timm-{key}", build, image(_TIMM_SIZES.get(arch, 32))))
    return cases


# -- Hugging Face transformers ----------------------------------------------------------------


def _hf(model_cls: str, config_cls: str, **config: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import transformers

        torch.manual_seed(0)
        cfg = getattr(transformers, config_cls)(**config)
        return getattr(transformers, model_cls)(cfg)

    return build


#: (case name, model class, config class, config, image size)
HF_MODELS: list[tuple[str, str, str, dict[str, Any], int]] = [
    (
        "convnext",
        "ConvNextModel",
        "ConvNextConfig",
        {"hidden_sizes": [8, 16, 32, 64], "depths": [1, 1, 1, 1]},
        32,
    ),
    (
        "convnextv2",
        "ConvNextV2Model",
        "ConvNextV2Config",
        {"hidden_sizes": [8, 16, 32, 64], "depths": [1, 1, 1, 1]},
        32,
    ),
    (
        "resnet",
        "ResNetModel",
        "ResNetConfig",
        {"embedding_size": 8, "hidden_sizes": [8, 16, 32, 64], "depths": [1, 1, 1, 1]},
        32,
    ),
    (
        "resnet-bottleneck",
        "ResNetForImageClassification",
        "ResNetConfig",
        {
            "embedding_size": 8,
            "hidden_sizes": [16, 32, 64, 128],
            "depths": [1, 1, 1, 1],
            "layer_type": "bottleneck",
            "num_labels": 3,
        },
        32,
    ),
    (
        "regnet",
        "RegNetModel",
        "RegNetConfig",
        {"embedding_size": 8, "hidden_sizes": [8, 16, 32, 64], "depths": [1, 1, 1, 1],
         "groups_width": 8},
        32,
    ),
    (
        "mobilenet_v2",
        "MobileNetV2Model",
        "MobileNetV2Config",
        {"depth_multiplier": 0.35, "image_size": 32},
        32,
    ),
    (
        "mobilevit",
        "MobileViTModel",
        "MobileViTConfig",
        {
            "image_size": 64,
            "hidden_sizes": [16, 24, 32],
            "neck_hidden_sizes": [8, 8, 16, 16, 24, 32, 64],
            "num_attention_heads": 2,
        },
        64,
    ),
    (
        "swin",
        "SwinModel",
        "SwinConfig",
        {"image_size": 32, "embed_dim": 8, "depths": [1, 1], "num_heads": [1, 2],
         "window_size": 4},
        32,
    ),
    (
        "vit",
        "ViTModel",
        "ViTConfig",
        {"image_size": 32, "patch_size": 8, "hidden_size": 16, "num_hidden_layers": 1,
         "num_attention_heads": 2, "intermediate_size": 32},
        32,
    ),
    (
        "dinov2",
        "Dinov2Model",
        "Dinov2Config",
        {"image_size": 32, "patch_size": 8, "hidden_size": 16, "num_hidden_layers": 1,
         "num_attention_heads": 2},
        32,
    ),
    (
        "segformer",
        "SegformerForSemanticSegmentation",
        "SegformerConfig",
        {
            "hidden_sizes": [8, 16, 24, 32],
            "decoder_hidden_size": 16,
            "num_attention_heads": [1, 1, 1, 1],
            "depths": [1, 1, 1, 1],
            "num_labels": 3,
        },
        32,
    ),
    (
        "efficientnet",
        "EfficientNetModel",
        "EfficientNetConfig",
        # hidden_dim must equal the top conv's round_filters(1280) = 320 at this width
        {"width_coefficient": 0.25, "depth_coefficient": 0.25, "image_size": 32, "hidden_dim": 320},
        32,
    ),
]


def hf_cases() -> list[Case]:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return []
    cases = []
    for name, model_cls, config_cls, config, size in HF_MODELS:
        cases.append(
            Case(
                f"hf-{name}",
                _hf(model_cls, config_cls, **config),
                tuple,
                functools.partial(lambda s: {"pixel_values": torch.randn(1, 3, s, s)}, size),
            )
        )
    return cases


# torchvision is imported for its side effect of registering the models above
_ = torchvision
