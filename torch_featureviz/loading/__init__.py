"""Load what the user points at: images (capped reads, preprocessing) and models (torchvision
names, ``timm:``, ``hf:``, user classes, checkpoints)."""

from torch_featureviz.loading.images import load_image, preprocess, sample_image_path
from torch_featureviz.loading.models import LoadedModel, ModelLoadError, load_model

__all__ = [
    "LoadedModel",
    "ModelLoadError",
    "load_image",
    "load_model",
    "preprocess",
    "sample_image_path",
]
