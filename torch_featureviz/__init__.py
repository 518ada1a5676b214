"""torch_featureviz: see what a CNN's conv layers learned (filters) and compute (feature maps).

Hook mode (:class:`FeatureCapture`) captures the true activations of every Conv2d during a real
forward pass; chain mode (:func:`chain_feature_maps`) reproduces the original article's
procedure. Grids render on the tensor's device and go to TensorBoard or image files.
"""

from torch_featureviz.capture import (
    Extractor,
    FeatureCapture,
    capture_feature_maps,
    chain_feature_maps,
    find_conv_layers,
    find_linear_layers,
    preserved_state,
    unwrap_model,
)
from torch_featureviz.loading import (
    LoadedModel,
    ModelLoadError,
    load_image,
    load_model,
    preprocess,
    sample_image_path,
)
from torch_featureviz.log import TensorBoardWriter, tensorboard_command
from torch_featureviz.meaning import (
    Examples,
    collect_examples,
    receptive_fields,
    save_examples_figure,
)
from torch_featureviz.monitor import FeatureMonitor
from torch_featureviz.naming import layer_tag
from torch_featureviz.render import (
    make_feature_grid,
    make_filter_grid,
    make_image_grid,
    map_similarity,
    overlay_map,
    save_comparison_figure,
    save_feature_figures,
    save_filter_figures,
    save_grid_figure,
    save_overview,
    save_similarity_figure,
    to_display_image,
)

__version__ = "0.1.0"

__all__ = [
    "Examples",
    "Extractor",
    "FeatureCapture",
    "FeatureMonitor",
    "LoadedModel",
    "ModelLoadError",
    "TensorBoardWriter",
    "__version__",
    "capture_feature_maps",
    "chain_feature_maps",
    "collect_examples",
    "find_conv_layers",
    "find_linear_layers",
    "layer_tag",
    "load_image",
    "load_model",
    "make_feature_grid",
    "make_filter_grid",
    "make_image_grid",
    "map_similarity",
    "overlay_map",
    "preprocess",
    "preserved_state",
    "receptive_fields",
    "sample_image_path",
    "save_comparison_figure",
    "save_examples_figure",
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
        from torch_featureviz.integrations.lightning import FeatureMonitorCallback

        return FeatureMonitorCallback
    raise AttributeError(f"module 'torch_featureviz' has no attribute {name!r}")
