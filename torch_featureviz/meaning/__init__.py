"""What a channel means: receptive fields and dataset examples (the inputs that activate each
channel most)."""

from torch_featureviz.meaning.examples import Example, Examples, TopK, TopKEntry

__all__ = ["Example", "Examples", "TopK", "TopKEntry"]
