"""The featureviz TensorBoard tab (a ``tensorboard_plugins`` entry point) and its metadata.

Installing torch_featureviz registers :class:`FeatureVizPlugin`; ``tensorboard --logdir DIR``
then shows a *featureviz* tab for logs this package wrote. :func:`layers_summary` builds the
layer-order summary the writers log so the tab lists layers in model order.
"""

from torch_featureviz.log.metadata import PLUGIN_NAME, layers_summary, layers_tag

__all__ = ["PLUGIN_NAME", "FeatureVizPlugin", "layers_summary", "layers_tag"]


def __getattr__(name: str) -> object:
    # The plugin class pulls in werkzeug and TensorBoard's backend; writers only need metadata.
    if name == "FeatureVizPlugin":
        from torch_featureviz.viewer.plugin import FeatureVizPlugin

        return FeatureVizPlugin
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
