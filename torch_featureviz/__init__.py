"""torch_featureviz: see what a CNN's conv layers learned (filters) and compute (feature maps).

Hook mode (:class:`FeatureCapture`) captures the true activations of every Conv2d during a real
forward pass; chain mode (:func:`chain_feature_maps`) reproduces the original article's
procedure. Grids render on the tensor's device and go to TensorBoard or image files.
"""

from torch_featureviz.capture import FeatureCapture, capture_feature_maps, preserved_state
from torch_featureviz.chain import chain_feature_maps
from torch_featureviz.discovery import Extractor, find_conv_layers, find_linear_layers, unwrap_model
from torch_featureviz.figures import (
    map_similarity,
    save_comparison_figure,
    save_feature_figures,
    save_filter_figures,
    save_grid_figure,
    save_overview,
    save_similarity_figure,
)
from torch_featureviz.images import load_image, preprocess, sample_image_path
from torch_featureviz.models import LoadedModel, ModelLoadError, load_model
from torch_featureviz.monitor import FeatureMonitor
from torch_featureviz.render import (
    make_feature_grid,
    make_filter_grid,
    make_image_grid,
    to_display_image,
)
from torch_featureviz.tensorboard import TensorBoardWriter, layer_tag, tensorboard_command

__version__ = "0.1.0"

__all__ = [
    "Extractor",
    "FeatureCapture",
    "FeatureMonitor",
    "LoadedModel",
    "ModelLoadError",
    "TensorBoardWriter",
    "__version__",
    "capture_feature_maps",
    "chain_feature_maps",
    "find_conv_layers",
    "find_linear_layers",
    "layer_tag",
    "load_image",
    "load_model",
    "make_feature_grid",
    "make_filter_grid",
    "make_image_grid",
    "map_similarity",
    "preprocess",
    "preserved_state",
    "sample_image_path",
    "save_comparison_figure",
    "save_feature_figures",
    "save_filter_figures",
    "save_grid_figure",
    "save_overview",
    "save_similarity_figure",
    "tensorboard_command",
    "to_display_image",
    "unwrap_model",
]


def __getattr__(name: str) -> object:
    # Lightning is an optional extra: import it only when the callback is asked for (it is
    # not in __all__, so `from torch_featureviz import *` never imports Lightning).
    if name == "FeatureMonitorCallback":
        from torch_featureviz.lightning import FeatureMonitorCallback

        return FeatureMonitorCallback
    raise AttributeError(f"module 'torch_featureviz' has no attribute {name!r}")
