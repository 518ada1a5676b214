"""Find layers and capture what they compute: discovery, forward hooks (one mechanism for a
pass), the original article's chain mode, and map pooling."""

from torch_featureviz.capture.chain import chain_feature_maps
from torch_featureviz.capture.discovery import (
    CONV_TYPES,
    Extractor,
    find_conv_layers,
    find_linear_layers,
    unwrap_model,
)
from torch_featureviz.capture.hooks import FeatureCapture
from torch_featureviz.capture.passes import PassObserver, PassRecord
from torch_featureviz.capture.probe import capture_feature_maps
from torch_featureviz.capture.state import preserved_state

__all__ = [
    "CONV_TYPES",
    "Extractor",
    "FeatureCapture",
    "PassObserver",
    "PassRecord",
    "capture_feature_maps",
    "chain_feature_maps",
    "find_conv_layers",
    "find_linear_layers",
    "preserved_state",
    "unwrap_model",
]
