"""The featureviz TensorBoard plugin: JSON and image routes over TensorBoard's data provider.

Every read goes through ``context.data_provider``, so the tab works with the default Rust data
server and with ``--load_fast=false``. Routes (under ``/data/plugin/featureviz``):

- ``/index``: runs, their models (one per tag prefix) and layers in model order;
- ``/layer?run&prefix&layer``: the steps of each of the layer's panels and its statistics;
- ``/image?run&tag&step``: one logged PNG (the step must have been logged for that tag);
- ``/tiles?run&tag&step``: the tile boxes of a grid (:func:`grid_geometry`) and, when the
  monitor chose channels (``channels="top"``/``"changed"``), the channel each tile shows;
- ``/strip?run&tag&channel&max``: one model channel over evenly spaced steps as one PNG, its
  tile found at each step from those labels (the steps in
  the ``X-Featureviz-Steps`` header);
- ``/deadmap?run&prefix``: the ``dead_channels`` fraction of every layer at every step;
- ``/timelapse?run&tag``: the layer's grids over training as a GIF download;
- ``/static/<file>``: the ES-module frontend.
"""

from __future__ import annotations

import io
import threading
import time
from importlib import resources
from typing import Any

import numpy as np
from tensorboard import context as tb_context
from tensorboard import errors, plugin_util
from tensorboard.backend import http_util
from tensorboard.data import provider
from tensorboard.plugins import base_plugin
from werkzeug import wrappers

from torch_featureviz.log.metadata import PLUGIN_NAME, layers_tag, parse_layers
from torch_featureviz.naming import make_tag, parse_channels_text, parse_tag
from torch_featureviz.viewer.layout import build_index, grid_geometry
from torch_featureviz.viewer.timelapse import encode_timelapse

__all__ = ["FeatureVizPlugin"]

_STATIC = {"index.js": "text/javascript", "style.css": "text/css"}
_MANY = 1_000_000  # "every sample the server kept"; --samples_per_plugin decides how many
_BLOB_CACHE_S = 2.0
_STRIP_MAX = 48
# werkzeug types its decorator for plain functions; on methods mypy cannot match it.
_application: Any = wrappers.Request.application


def _arg(request: Any, name: str, *, required: bool = True) -> str:
    value = request.args.get(name)
    if value is None:
        if required:
            raise errors.InvalidArgumentError(f"missing query parameter {name!r}")
        return ""
    return str(value)


def _int_arg(request: Any, name: str, default: int | None = None) -> int:
    raw = request.args.get(name)
    if raw is None:
        if default is None:
            raise errors.InvalidArgumentError(f"missing query parameter {name!r}")
        return default
    try:
        return int(raw)
    except ValueError:
        raise errors.InvalidArgumentError(f"{name} must be an integer, got {raw!r}") from None


def _json(request: Any, payload: Any) -> wrappers.Response:
    return http_util.Respond(request, payload, "application/json")


def _pixels(data: bytes) -> np.ndarray:
    """A PNG's pixels as an ``(H, W, 3)`` uint8 array."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def _parse_history(datums: list[Any], layer: str) -> list[tuple[int, list[int]]] | None:
    """``[(step, channel of each tile)]`` of ``layer`` from ``featureviz/channels`` text datums,
    by step; ``None`` when none names the layer."""
    history = []
    for d in sorted(datums, key=lambda d: d.step):
        raw = d.numpy.reshape(-1)
        value = raw[0] if raw.size else b""
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        labels = parse_channels_text(text).get(layer)
        if labels is not None:
            history.append((int(d.step), labels))
    return history or None


def _channels_at(history: list[tuple[int, list[int]]] | None, step: int) -> list[int] | None:
    """The tiles' channels at ``step``: those logged then, or the latest before it (a choice
    holds until the next refresh)."""
    if history is None:
        return None
    before = [labels for s, labels in history if s <= step]
    return before[-1] if before else None


def _even_steps(steps: list[int], most: int) -> list[int]:
    """At most ``most`` of the sorted ``steps``, evenly spaced, first and last included."""
    if len(steps) > most:
        steps = [steps[round(i * (len(steps) - 1) / (most - 1))] for i in range(most)] \
            if most > 1 else steps[-1:]
        steps = sorted(set(steps))
    return steps


def _strip_png(tiles: list[np.ndarray]) -> bytes:
    """The ``(h, w, 3)`` tiles side by side, 1 px of white between them, as one PNG."""
    from PIL import Image

    height = max(t.shape[0] for t in tiles)
    strip = np.full((height, sum(t.shape[1] + 1 for t in tiles) - 1, 3), 255, np.uint8)
    x = 0
    for t in tiles:
        strip[: t.shape[0], x : x + t.shape[1]] = t
        x += t.shape[1] + 1
    buffer = io.BytesIO()
    Image.fromarray(strip).save(buffer, "PNG")
    return buffer.getvalue()


class FeatureVizPlugin(base_plugin.TBPlugin):
    """The featureviz tab: one layer's views at one step, statistics and a dead-channel map.

    Args:
        context: TensorBoard's ``TBContext``; only its ``data_provider`` is used.

    Example::

        >>> from tensorboard.plugins import base_plugin
        >>> plugin = FeatureVizPlugin(base_plugin.TBContext(data_provider=None))
        >>> plugin.plugin_name, plugin.is_active(), sorted(plugin.get_plugin_apps())[:3]
        ('featureviz', False, ['/deadmap', '/image', '/index'])
    """

    plugin_name = PLUGIN_NAME

    def __init__(self, context: base_plugin.TBContext) -> None:
        self._provider = context.data_provider
        self._lock = threading.Lock()
        self._blob_cache: dict[tuple[str, str, str], tuple[float, dict[int, str]]] = {}

    # -- TBPlugin -------------------------------------------------------------------------------
    def get_plugin_apps(self) -> dict[str, Any]:
        return {
            "/index": self._serve_index,
            "/layer": self._serve_layer,
            "/image": self._serve_image,
            "/tiles": self._serve_tiles,
            "/strip": self._serve_strip,
            "/deadmap": self._serve_deadmap,
            "/timelapse": self._serve_timelapse,
            "/static/*": self._serve_static,
        }

    def is_active(self) -> bool:
        """Active when some run has an image tag written by this package (featureviz tensors
        activate the plugin through :meth:`data_plugin_names` already)."""
        if self._provider is None:
            return False
        listing = self._provider.list_blob_sequences(
            tb_context.RequestContext(), experiment_id="", plugin_name="images"
        )
        return any(parse_tag(tag) is not None for tags in listing.values() for tag in tags)

    def frontend_metadata(self) -> base_plugin.FrontendMetadata:
        return base_plugin.FrontendMetadata(
            es_module_path="/static/index.js", tab_name=PLUGIN_NAME
        )

    # -- data access ----------------------------------------------------------------------------
    @staticmethod
    def _where(request: Any) -> tuple[Any, str]:
        return plugin_util.context(request.environ), plugin_util.experiment_id(request.environ)

    def _run_listings(self, ctx: Any, eid: str, run: str) -> tuple[Any, Any]:
        """The image and scalar listings of one run, through the data provider."""
        run_filter = provider.RunTagFilter(runs=[run])
        images = self._provider.list_blob_sequences(
            ctx, experiment_id=eid, plugin_name="images", run_tag_filter=run_filter
        )
        scalars = self._provider.list_scalars(
            ctx, experiment_id=eid, plugin_name="scalars", run_tag_filter=run_filter
        )
        return images, scalars

    def _orders(self, ctx: Any, eid: str) -> dict[str, dict[str, list[str]]]:
        """``{run: {prefix: [layer tags]}}`` from the layer-order summaries."""
        listing = self._provider.list_tensors(ctx, experiment_id=eid, plugin_name=PLUGIN_NAME)
        wanted = {
            run: [t for t in tags if (i := parse_tag(t)) and i.kind == "featureviz"
                  and i.layer == "layers"]
            for run, tags in listing.items()
        }
        wanted = {run: tags for run, tags in wanted.items() if tags}
        if not wanted:
            return {}
        data = self._provider.read_tensors(
            ctx, experiment_id=eid, plugin_name=PLUGIN_NAME, downsample=1,
            run_tag_filter=provider.RunTagFilter(
                runs=list(wanted), tags=sorted({t for ts in wanted.values() for t in ts})
            ),
        )
        out: dict[str, dict[str, list[str]]] = {}
        for run, by_tag in data.items():
            for tag, datums in by_tag.items():
                info = parse_tag(tag)
                if not datums or info is None or tag != layers_tag(info.prefix):
                    continue
                layers = parse_layers(datums[-1].numpy)
                if layers is not None:
                    out.setdefault(run, {})[info.prefix or ""] = layers
        return out

    def _blob_keys(self, ctx: Any, eid: str, run: str, tag: str) -> dict[int, str]:
        """``{step: blob key}`` of one image tag, cached a moment (a slider move asks often)."""
        key = (eid, run, tag)
        now = time.monotonic()
        with self._lock:
            hit = self._blob_cache.get(key)
        if hit is not None and now - hit[0] < _BLOB_CACHE_S:
            return hit[1]
        data = self._provider.read_blob_sequences(
            ctx, experiment_id=eid, plugin_name="images", downsample=_MANY,
            run_tag_filter=provider.RunTagFilter(runs=[run], tags=[tag]),
        )
        datums = data.get(run, {}).get(tag)
        if datums is None:
            raise errors.NotFoundError(f"no images for run {run!r}, tag {tag!r}")
        # images plugin layout: values = (width, height, image, ...)
        keys = {int(d.step): d.values[2].blob_key for d in datums if len(d.values) > 2}
        with self._lock:
            if len(self._blob_cache) > 512:
                self._blob_cache.clear()
            self._blob_cache[key] = (now, keys)
        return keys

    def _png(self, ctx: Any, eid: str, run: str, tag: str, step: int) -> bytes:
        keys = self._blob_keys(ctx, eid, run, tag)
        if step not in keys:
            raise errors.NotFoundError(f"run {run!r}, tag {tag!r} has no image at step {step}")
        return bytes(self._provider.read_blob(ctx, blob_key=keys[step]))

    # -- routes ---------------------------------------------------------------------------------
    @_application
    def _serve_index(self, request: Any) -> wrappers.Response:
        ctx, eid = self._where(request)
        images = self._provider.list_blob_sequences(ctx, experiment_id=eid, plugin_name="images")
        scalars = self._provider.list_scalars(ctx, experiment_id=eid, plugin_name="scalars")
        orders = self._orders(ctx, eid)
        runs = {}
        for run in sorted(set(images) | set(scalars) | set(orders)):
            models = build_index(images.get(run, {}), scalars.get(run, {}), orders.get(run))
            models = [m for m in models if m["layers"]]
            if models:
                runs[run] = {"models": models}
        return _json(request, {"runs": runs})

    @_application
    def _serve_layer(self, request: Any) -> wrappers.Response:
        ctx, eid = self._where(request)
        run, prefix, name = _arg(request, "run"), _arg(request, "prefix", required=False), _arg(
            request, "layer"
        )
        images, scalars = self._run_listings(ctx, eid, run)
        entry = None
        for m in build_index(images.get(run, {}), scalars.get(run, {})):
            if m["prefix"] == prefix:
                entry = next((x for x in m["layers"] if x["layer"] == name), None)
        if entry is None:
            raise errors.NotFoundError(f"run {run!r} has no layer {name!r} (prefix {prefix!r})")
        views: dict[str, Any] = {}
        tags = list(entry["views"].values())
        if tags:
            blobs = self._provider.read_blob_sequences(
                ctx, experiment_id=eid, plugin_name="images", downsample=_MANY,
                run_tag_filter=provider.RunTagFilter(runs=[run], tags=tags),
            ).get(run, {})
            for view, tag in entry["views"].items():
                datums = blobs.get(tag, [])
                views[view] = {"tag": tag, "steps": sorted({int(d.step) for d in datums})}
        stats: dict[str, Any] = {}
        if entry["stats"]:
            data = self._provider.read_scalars(
                ctx, experiment_id=eid, plugin_name="scalars", downsample=_MANY,
                run_tag_filter=provider.RunTagFilter(
                    runs=[run], tags=list(entry["stats"].values())
                ),
            ).get(run, {})
            for stat, tag in entry["stats"].items():
                stats[stat] = [[int(d.step), float(d.value)] for d in data.get(tag, [])]
        return _json(request, {"run": run, "prefix": prefix, "layer": name, "group": entry["group"],
                               "views": views, "stats": stats})

    @_application
    def _serve_image(self, request: Any) -> wrappers.Response:
        ctx, eid = self._where(request)
        data = self._png(ctx, eid, _arg(request, "run"), _arg(request, "tag"),
                         _int_arg(request, "step"))
        return http_util.Respond(request, data, "image/png", expires=3600)

    @_application
    def _serve_tiles(self, request: Any) -> wrappers.Response:
        ctx, eid = self._where(request)
        data = self._png(ctx, eid, _arg(request, "run"), _arg(request, "tag"),
                         _int_arg(request, "step"))
        pixels = _pixels(data)
        try:
            geometry = grid_geometry(pixels)
        except ValueError as e:
            raise errors.InvalidArgumentError(str(e)) from None
        history = self._channel_history(ctx, eid, _arg(request, "run"), _arg(request, "tag"))
        channels = _channels_at(history, _int_arg(request, "step"))
        return _json(request, {"width": int(pixels.shape[1]), "height": int(pixels.shape[0]),
                               **geometry.as_dict(), "channels": channels})

    def _channel_history(
        self, ctx: Any, eid: str, run: str, tag: str
    ) -> list[tuple[int, list[int]]] | None:
        """``[(step, channel of each tile)]`` of a feature-map tag's layer, by step, from the
        ``featureviz/channels`` text; ``None`` when the monitor did not choose channels (tile
        ``i`` is then channel ``i``)."""
        info = parse_tag(tag)
        if info is None or info.kind != "feature_maps" or info.layer is None:
            return None
        # torch's text summary appends "/text_summary" to the tag it is given.
        base = make_tag("featureviz", "channels", prefix=info.prefix)
        tags = [f"{base}/text_summary", base]
        data = self._provider.read_tensors(
            ctx, experiment_id=eid, plugin_name="text", downsample=_MANY,
            run_tag_filter=provider.RunTagFilter(runs=[run], tags=tags),
        ).get(run, {})
        datums: list[Any] = next((data[t] for t in tags if data.get(t)), [])
        return _parse_history(datums, info.layer)

    @_application
    def _serve_strip(self, request: Any) -> wrappers.Response:
        ctx, eid = self._where(request)
        run, tag = _arg(request, "run"), _arg(request, "tag")
        channel = _int_arg(request, "channel")
        most = min(max(_int_arg(request, "max", 16), 1), _STRIP_MAX)
        keys = self._blob_keys(ctx, eid, run, tag)
        steps = sorted(keys)
        if not steps:
            raise errors.NotFoundError(f"no images for run {run!r}, tag {tag!r}")
        steps = _even_steps(steps, most)
        # ``channel`` is a model channel: under channels="top"/"changed" its tile moves (or is
        # not shown) from one refresh to the next, so each step's labels say where it is.
        history = self._channel_history(ctx, eid, run, tag)
        placed = []
        for step in steps:
            labels = _channels_at(history, step)
            if labels is None:
                placed.append((step, channel))
            elif channel in labels:
                placed.append((step, labels.index(channel)))
        if not placed:
            raise errors.NotFoundError(f"channel {channel} of {tag!r} is not shown at any step")
        steps = [step for step, _ in placed]
        tiles = []
        for step, index in placed:
            pixels = _pixels(bytes(self._provider.read_blob(ctx, blob_key=keys[step])))
            try:
                box = grid_geometry(pixels).box(index)
            except (ValueError, IndexError) as e:
                raise errors.InvalidArgumentError(str(e)) from None
            left, top, right, bottom = box
            tiles.append(pixels[top:bottom, left:right])
        response = http_util.Respond(request, _strip_png(tiles), "image/png")
        response.headers["X-Featureviz-Steps"] = ",".join(str(s) for s in steps)
        return response

    @_application
    def _serve_deadmap(self, request: Any) -> wrappers.Response:
        ctx, eid = self._where(request)
        run, prefix = _arg(request, "run"), _arg(request, "prefix", required=False)
        images, scalars = self._run_listings(ctx, eid, run)
        orders = self._orders(ctx, eid).get(run)
        model = next((m for m in build_index(images.get(run, {}), scalars.get(run, {}), orders)
                      if m["prefix"] == prefix), None)
        layers = [x for x in (model or {}).get("layers", []) if "dead_channels" in x["stats"]]
        if not layers:
            return _json(request, {"layers": [], "steps": [], "values": []})
        data = self._provider.read_scalars(
            ctx, experiment_id=eid, plugin_name="scalars", downsample=_MANY,
            run_tag_filter=provider.RunTagFilter(
                runs=[run], tags=[x["stats"]["dead_channels"] for x in layers]
            ),
        ).get(run, {})
        series = [{int(d.step): float(d.value) for d in data.get(x["stats"]["dead_channels"], [])}
                  for x in layers]
        steps = sorted({s for row in series for s in row})
        values = [[row.get(s) for s in steps] for row in series]
        return _json(request, {"layers": [x["layer"] for x in layers], "steps": steps,
                               "values": values})

    @_application
    def _serve_timelapse(self, request: Any) -> wrappers.Response:
        ctx, eid = self._where(request)
        run, tag = _arg(request, "run"), _arg(request, "tag")
        keys = self._blob_keys(ctx, eid, run, tag)
        frames = [(s, bytes(self._provider.read_blob(ctx, blob_key=keys[s]))) for s in sorted(keys)]
        if not frames:
            raise errors.NotFoundError(f"no images for run {run!r}, tag {tag!r}")
        data = encode_timelapse(frames, title=tag)
        response = http_util.Respond(request, data, "image/gif")
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in f"{run}_{tag}")
        response.headers["Content-Disposition"] = f'attachment; filename="timelapse_{safe}.gif"'
        return response

    @_application
    def _serve_static(self, request: Any) -> wrappers.Response:
        name = request.path.rsplit("/", 1)[-1]
        if name not in _STATIC:
            raise errors.NotFoundError(f"no static file {name!r}")
        body = (resources.files("torch_featureviz.viewer") / "static" / name).read_bytes()
        return http_util.Respond(request, body, _STATIC[name], expires=60)
