"""What a channel means: receptive fields and dataset examples (the inputs that activate each
channel most)."""

from torch_featureviz.meaning.collect import ChannelPeaks, collect_examples, crop_example
from torch_featureviz.meaning.examples import Example, Examples, TopK, TopKEntry
from torch_featureviz.meaning.figure import examples_figure_image, save_examples_figure
from torch_featureviz.meaning.receptive import ReceptiveField, receptive_fields

__all__ = [
    "ChannelPeaks",
    "Example",
    "Examples",
    "ReceptiveField",
    "TopK",
    "TopKEntry",
    "collect_examples",
    "crop_example",
    "examples_figure_image",
    "receptive_fields",
    "save_examples_figure",
]
