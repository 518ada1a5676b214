"""Write what was captured: TensorBoard event files of the package's own, and the metadata the
featureviz tab reads back."""

from torch_featureviz.log.tensorboard import TensorBoardWriter, tensorboard_command

__all__ = ["TensorBoardWriter", "tensorboard_command"]
