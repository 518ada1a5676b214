"""One spelling for every name the package makes: repeated calls, tags and file stems.

Every other module builds and reads names through these functions, so a layer has the same
name in :attr:`FeatureCapture.maps <torch_featureviz.FeatureCapture.maps>`, in TensorBoard and
in file names, and the TensorBoard tab and the time-lapse export can parse what the writers wrote.

- A module called more than once in one pass is kept once per call: the first call under its
  qualified name, later ones as ``"<name>#<k>"`` (:func:`call_key`, :func:`split_call_key`).
- In tags and file stems ``#<k>`` is spelled ``_call<k>`` (:func:`layer_tag`).
- Tags are ``[<prefix>/]<kind>/...`` (:func:`make_tag`, :func:`parse_tag`), ``kind`` being one
  of :data:`KINDS`; the optional prefix is a monitor's ``name``.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = [
    "KINDS",
    "CallCounter",
    "TagInfo",
    "call_key",
    "channels_text",
    "layer_tag",
    "make_tag",
    "parse_channels_text",
    "parse_tag",
    "split_call_key",
    "strip_wrappers",
    "unique_stems",
    "unique_tags",
]

_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]")
_CALL_KEY = re.compile(r"(.*)#(\d+)", flags=re.S)
_CALL_TAG = re.compile(r"(.*)_call(\d+)", flags=re.S)

#: The first component of every tag the package writes (after an optional prefix).
KINDS = ("filters", "feature_maps", "activations", "summary", "input", "histograms", "featureviz")


#: Path segments that wrappers insert between a model's own modules: FSDP1's units and
#: ``checkpoint_wrapper``. Names drop them, so a layer has the same name sharded or not.
WRAPPER_SEGMENTS = frozenset({"_fsdp_wrapped_module", "_checkpoint_wrapped_module"})


def strip_wrappers(name: str) -> str:
    """``"_fsdp_wrapped_module.layer1._fsdp_wrapped_module.0"`` -> ``"layer1.0"``."""
    if "_wrapped_module" not in name:
        return name
    return ".".join(part for part in name.split(".") if part not in WRAPPER_SEGMENTS)


def call_key(name: str, index: int) -> str:
    """The key of call ``index`` (0-based) of module ``name`` within one pass."""
    return name if index == 0 else f"{name}#{index}"


def split_call_key(key: str) -> tuple[str, int]:
    """Invert :func:`call_key`: ``"conv#2"`` -> ``("conv", 2)``, ``"conv"`` -> ``("conv", 0)``."""
    match = _CALL_KEY.fullmatch(key)
    if match:
        return match.group(1), int(match.group(2))
    return key, 0


class CallCounter:
    """Numbers the calls of each module within one pass (see :func:`call_key`)."""

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def next_key(self, name: str) -> tuple[str, int]:
        """The key and 0-based index of the next call of ``name``."""
        index = self._counts.get(name, 0)
        self._counts[name] = index + 1
        return call_key(name, index), index


def layer_tag(name: str) -> str:
    """Make a layer key safe inside a TensorBoard tag or a file name, the same way every time.

    Module names are user-controlled (``nn.ModuleDict`` keys may hold spaces, slashes or
    unicode). Anything outside ``[A-Za-z0-9_.-]`` becomes ``_`` so a name can neither add tag
    levels nor break TensorBoard's URLs; when that changes the name, a digest of the original is
    appended (``"a b"`` -> ``"a_b-<crc32>"``) so two names that sanitise alike still get different
    tags, and a layer gets the same tag for its filters and for its maps. A later call of a
    module (``conv#1``) becomes ``conv_call1``; the empty name (the model itself) becomes
    ``model``.

    Example::

        >>> layer_tag("layer1.0.conv1"), layer_tag("shared#1"), layer_tag("a b")
        ('layer1.0.conv1', 'shared_call1', 'a_b-806c5cd3')
    """
    base, index = split_call_key(name)
    call = f"_call{index}" if index else ""
    if not base:
        return "model" + call
    safe = _UNSAFE.sub("_", base)
    if safe != base:
        safe = f"{safe}-{zlib.crc32(base.encode('utf-8', 'surrogatepass')):08x}"
    return safe + call


def make_tag(kind: str, *parts: str, prefix: str | None = None) -> str:
    """``[<prefix>/]<kind>/<parts...>``; layer keys among ``parts`` must be :func:`layer_tag`'d.

    Example::

        >>> make_tag("feature_maps", "hook", layer_tag("conv1"), prefix="G")
        'G/feature_maps/hook/conv1'
    """
    if kind not in KINDS:
        raise ValueError(f"unknown tag kind {kind!r}; expected one of {', '.join(KINDS)}.")
    head = f"{prefix}/" if prefix else ""
    return head + "/".join((kind, *parts))


@dataclass(frozen=True)
class TagInfo:
    """A tag written by this package, taken apart (see :func:`parse_tag`)."""

    prefix: str | None
    kind: str
    #: ``hook``/``probe``/``chain`` for feature maps, the statistic for activations, else None.
    view: str | None
    #: The layer's tag spelling (:func:`layer_tag`), or the image's name for ``input``.
    layer: str | None
    #: The call index parsed from ``_call<k>`` (0 for the first call).
    call: int = 0


def channels_text(channels: Mapping[str, Iterable[int]]) -> str:
    """The ``featureviz/channels`` text: one line per layer, ``<layer tag>: c0, c1, ...``, the
    channel each tile of that layer's map grid shows, in tile order."""
    return "  \n".join(f"{layer_tag(k)}: {', '.join(map(str, v))}" for k, v in channels.items())


def parse_channels_text(text: str) -> dict[str, list[int]]:
    """Invert :func:`channels_text`: ``{layer tag: [channel of each tile]}``.

    Example::

        >>> parse_channels_text(channels_text({"conv#1": [5, 2]}))
        {'conv_call1': [5, 2]}
    """
    out: dict[str, list[int]] = {}
    for line in text.splitlines():
        layer, sep, rest = line.strip().partition(": ")
        if not sep:
            continue
        try:
            out[layer] = [int(c) for c in rest.split(",") if c.strip()]
        except ValueError:
            continue  # not a line this package wrote
    return out


def parse_tag(tag: str) -> TagInfo | None:
    """Take apart a tag written by this package, or return ``None`` for any other tag.

    Example::

        >>> parse_tag("G/feature_maps/probe/layer1.0.conv1_call1")
        TagInfo(prefix='G', kind='feature_maps', view='probe', layer='layer1.0.conv1_call1', call=1)
        >>> parse_tag("activations/conv1/dead_channels").view
        'dead_channels'
        >>> parse_tag("loss") is None
        True
    """
    parts = tag.split("/")
    prefix = None
    if len(parts) > 1 and parts[0] not in KINDS and parts[1] in KINDS:
        prefix, parts = parts[0], parts[1:]
    if len(parts) < 2 or parts[0] not in KINDS:
        return None
    kind = parts[0]
    view: str | None = None
    layer: str | None
    if kind == "feature_maps" and len(parts) == 3:
        view, layer = parts[1], parts[2]
    elif kind == "activations" and len(parts) == 3:
        layer, view = parts[1], parts[2]
    elif kind == "histograms" and len(parts) == 3:
        view, layer = parts[1], parts[2]
    elif len(parts) == 2:
        layer = parts[1]
    else:
        return None
    call = 0
    match = _CALL_TAG.fullmatch(layer)
    if match:
        call = int(match.group(2))
    return TagInfo(prefix=prefix, kind=kind, view=view, layer=layer, call=call)


def _dedupe(items: Iterable[str]) -> list[str]:
    out: list[str] = []
    used: set[str] = set()
    for item in items:
        candidate, k = item, 2
        while candidate in used:  # two names that sanitise alike must not share a spelling
            candidate, k = f"{item}_{k}", k + 1
        used.add(candidate)
        out.append(candidate)
    return out


def unique_tags(
    kind: str, names: Iterable[str], *parts: str, prefix: str | None = None
) -> list[str]:
    """One distinct tag per layer key: ``make_tag(kind, *parts, layer_tag(name))``."""
    return _dedupe(make_tag(kind, *parts, layer_tag(n), prefix=prefix) for n in names)


def unique_stems(names: Iterable[str] | Mapping[str, object]) -> dict[str, str]:
    """One distinct file stem per layer key, ``{key: stem}``, in order."""
    keys = list(names)
    return dict(zip(keys, _dedupe(layer_tag(k) for k in keys), strict=True))
