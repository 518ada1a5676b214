"""What the featureviz TensorBoard plugin reads besides images and scalars: the model's layer order.

The writers log, once per run and monitor prefix, a tensor summary at tag
``[<prefix>/]featureviz/layers`` whose ``SummaryMetadata.plugin_data.plugin_name`` is
:data:`PLUGIN_NAME` and whose value is a 0-d string tensor holding UTF-8 JSON
``{"version": 1, "layers": [<layer tag>, ...]}``: the layer tags in model order. This module is
pure (TensorBoard protos only, no torch) so both the writers and the plugin can import it.
"""

from __future__ import annotations

import json
from typing import Any

from tensorboard.compat.proto.summary_pb2 import DATA_CLASS_TENSOR, Summary, SummaryMetadata
from tensorboard.compat.proto.tensor_pb2 import TensorProto
from tensorboard.compat.proto.types_pb2 import DT_STRING

from torch_featureviz.naming import make_tag

__all__ = ["LAYERS_VERSION", "PLUGIN_NAME", "layers_summary", "layers_tag", "parse_layers"]

#: ``SummaryMetadata.plugin_data.plugin_name`` of the featureviz tensors, and the plugin's name.
PLUGIN_NAME = "featureviz"
#: The version of the layer-order JSON written by :func:`layers_summary`.
LAYERS_VERSION = 1


def layers_tag(prefix: str | None = None) -> str:
    """The tag of the layer-order summary: ``[<prefix>/]featureviz/layers``.

    Example::

        >>> layers_tag(), layers_tag("G")
        ('featureviz/layers', 'G/featureviz/layers')
    """
    return make_tag("featureviz", "layers", prefix=prefix)


def layers_summary(layer_tags: list[str], prefix: str | None = None) -> Summary:
    """A ``Summary`` holding the layer tags of one model in model order.

    Args:
        layer_tags: the layers' tag spellings (:func:`torch_featureviz.naming.layer_tag`), in
            the order the model runs them.
        prefix: the monitor's ``name``, or ``None``.

    Returns:
        A ``Summary`` with one value at :func:`layers_tag` (``prefix``), plugin
        :data:`PLUGIN_NAME`, holding a 0-d ``DT_STRING`` tensor of UTF-8 JSON.

    Raises:
        TypeError: ``layer_tags`` is not a list of strings.

    Example::

        >>> s = layers_summary(["conv1", "layer1.0.conv1"], prefix="G")
        >>> s.value[0].tag, parse_layers(s.value[0].tensor.string_val[0])
        ('G/featureviz/layers', ['conv1', 'layer1.0.conv1'])
    """
    if not isinstance(layer_tags, (list, tuple)) or not all(
        isinstance(t, str) for t in layer_tags
    ):
        raise TypeError(
            f"layer_tags must be a list of layer tag strings, got {type(layer_tags).__name__}."
        )
    payload = json.dumps({"version": LAYERS_VERSION, "layers": list(layer_tags)})
    tensor = TensorProto(dtype=DT_STRING, string_val=[payload.encode("utf-8")])
    metadata = SummaryMetadata(
        plugin_data=SummaryMetadata.PluginData(plugin_name=PLUGIN_NAME),
        summary_description="torch_featureviz: the model's layers in model order",
        # Without a data class TensorBoard's data providers do not list the tensor.
        data_class=DATA_CLASS_TENSOR,
    )
    return Summary(value=[Summary.Value(tag=layers_tag(prefix), tensor=tensor, metadata=metadata)])


def parse_layers(payload: bytes | str | Any) -> list[str] | None:
    """The layer tags in a layer-order payload, or ``None`` if it is not one this reads.

    Args:
        payload: the UTF-8 JSON bytes (or a numpy 0-d bytes array) of the summary's tensor.

    Returns:
        The layer tags, or ``None`` for malformed JSON or an unknown version.
    """
    if hasattr(payload, "item") and not isinstance(payload, (bytes, str)):
        payload = payload.item()
    try:
        text = payload.decode("utf-8") if isinstance(payload, bytes) else str(payload)
        data = json.loads(text)
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("version") != LAYERS_VERSION:
        return None
    layers = data.get("layers")
    if not isinstance(layers, list) or not all(isinstance(t, str) for t in layers):
        return None
    return list(layers)
