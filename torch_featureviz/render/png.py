"""A minimal, fast PNG encoder for uint8 grids, and a vectorised CRC-32C for event files.

Feature-map grids are large, mostly smooth and written often. PIL's default path (as used by
``SummaryWriter.add_image``) resizes and compresses at level 6 with adaptive filtering; a plain
"Sub"-filtered stream at zlib level 1 is several times faster and only slightly larger. The
output is a standard PNG that any decoder (PIL, TensorBoard's front end, browsers) reads.

TensorBoard frames every event-file record with a masked CRC-32C. Without TensorFlow installed,
``tensorboard`` computes it in pure Python, one byte per loop iteration (~8 MB/s): for a few MB of
PNGs per logging step that checksum costs more than rendering and compressing them.
:func:`crc32c` takes it from the ``google-crc32c`` C extension (a dependency, hardware CRC
instructions where the CPU has them), and falls back to a vectorised numpy version where no
wheel of it installs.
"""

from __future__ import annotations

import functools
import struct
import zlib

import numpy as np
import torch

__all__: list[str] = []

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOR_TYPE = {1: 0, 3: 2, 4: 6}  # grayscale, RGB, RGBA


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)) & 0xFFFFFFFF)
    )


def to_hwc_numpy(grid: torch.Tensor) -> np.ndarray:
    """Move a ``(C, H, W)`` uint8 grid to the host as a contiguous ``(H, W, C)`` array."""
    if grid.dtype != torch.uint8 or grid.dim() != 3 or grid.shape[0] not in _COLOR_TYPE:
        raise ValueError(
            f"expected a (C, H, W) uint8 grid with C in 1, 3, 4; got {tuple(grid.shape)} "
            f"{grid.dtype}."
        )
    return np.ascontiguousarray(grid.detach().permute(1, 2, 0).cpu().numpy())


def _deflate(rows: np.ndarray, level: int) -> bytes:
    """zlib stream of ``rows``. Level 1 uses run-length matching (``Z_RLE``), as fast PNG
    encoders do: on filtered rows it is ~2x faster than level 1's default hash matching and a
    little smaller. Other levels use zlib's default strategy."""
    data = rows.data  # a memoryview of the contiguous rows: no copy
    if level != 1:
        return zlib.compress(data, level)
    z = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    return z.compress(data) + z.flush()


def encode_png(pixels: np.ndarray, *, level: int = 1) -> bytes:
    """Encode an ``(H, W, C)`` uint8 array (C = 1, 3 or 4) as PNG bytes.

    Each image gets one PNG filter for all its rows, chosen by one cheap look at it: "Up"
    (each byte minus the byte above) when at least half the rows repeat the row above, as in
    filter grids, whose tiles are integer upscales (measured on resnet18's filter grids: 7x
    smaller and 2x faster to compress than "Sub" in grayscale, 22% smaller and 1.5x faster in
    RGB); otherwise "Sub" (each byte minus the byte one pixel to its left), which is smaller and
    faster than "Up" on feature maps at native resolution, RGB (colormapped) or grayscale.
    """
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] not in _COLOR_TYPE:
        raise ValueError(f"expected (H, W, C) uint8 pixels, got {pixels.shape} {pixels.dtype}.")
    h, w, c = pixels.shape
    flat = pixels.reshape(h, w * c)
    rows = np.empty((h, 1 + w * c), dtype=np.uint8)
    if level == 0:
        rows[:, 0] = 0  # filter "None": nothing will be compressed anyway
        rows[:, 1:] = flat
    elif h > 1 and 2 * int(np.count_nonzero((flat[1:] == flat[:-1]).all(axis=1))) >= h - 1:
        rows[:, 0] = 2  # "Up": a repeated row becomes zeros, which zlib's RLE all but removes
        rows[0, 1:] = flat[0]
        np.subtract(flat[1:], flat[:-1], out=rows[1:, 1:])
    else:
        # "Sub": one numpy pass that makes smooth maps ~5% smaller and zlib ~1.5x faster.
        rows[:, 0] = 1
        rows[:, 1 : 1 + c] = flat[:, :c]
        np.subtract(flat[:, c:], flat[:, :-c], out=rows[:, 1 + c :])
    header = struct.pack(">IIBBBBB", w, h, 8, _COLOR_TYPE[c], 0, 0, 0)
    return b"".join(
        (
            _SIGNATURE,
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", _deflate(rows, level)),
            _chunk(b"IEND", b""),
        )
    )


# -- CRC-32C (Castagnoli), as TFRecord / TensorBoard event files use it ----------------------
_CRC32C_POLY = 0x82F63B78  # reflected
_U32 = np.uint32


@functools.lru_cache(maxsize=1)
def _crc32c_table8() -> np.ndarray:
    """``T[b]``: the register after feeding byte ``b`` into a zero register."""
    t = np.arange(256, dtype=_U32)
    for _ in range(8):
        t = np.where(t & _U32(1), (t >> _U32(1)) ^ _U32(_CRC32C_POLY), t >> _U32(1)).astype(_U32)
    return t


def _gf2_apply(columns: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Apply the GF(2)-linear map whose images of bits 0..31 are ``columns`` to each value."""
    bits = (values[:, None] >> np.arange(32, dtype=_U32)) & _U32(1)
    return np.bitwise_xor.reduce(bits * columns[None, :], axis=1).astype(_U32)


@functools.lru_cache(maxsize=8)
def _crc32c_zeros(nbytes: int) -> np.ndarray:
    """The linear map 'feed ``nbytes`` zero bytes' on the CRC register, as 32 column images."""
    unit = _U32(1) << np.arange(32, dtype=_U32)
    power = _crc32c_table8()[unit & _U32(0xFF)] ^ (unit >> _U32(8))  # one zero byte
    result = unit  # the identity
    n = nbytes
    while n:  # square and multiply
        if n & 1:
            result = _gf2_apply(power, result)
        n >>= 1
        if n:
            power = _gf2_apply(power, power)
    return result


#: Bytes per lane, and registers merged into one per step, in :func:`crc32c`'s large-input path.
_LANE = 64
_FAN_IN = 64


@functools.lru_cache(maxsize=1)
def _crc32c_lane_tables() -> tuple[np.ndarray, np.ndarray]:
    """``T[j * 256 + b]``: a zero register after byte ``b`` at offset ``j`` of a lane (byte
    ``b``, then ``_LANE - 1 - j`` zero bytes); and the offsets ``j * 256``."""
    t8 = _crc32c_table8()
    out = np.empty((_LANE, 256), dtype=_U32)
    reg = t8.copy()  # each byte fed into a zero register
    for j in range(_LANE - 1, -1, -1):
        out[j] = reg
        reg = t8[reg & _U32(0xFF)] ^ (reg >> _U32(8))  # one more zero byte after it
    return out.reshape(-1), np.arange(_LANE, dtype=np.intp) * 256


@functools.lru_cache(maxsize=4)
def _crc32c_merge_tables(distance: int) -> tuple[np.ndarray, np.ndarray]:
    """Tables that merge ``_FAN_IN`` consecutive registers, each covering ``distance`` bytes:
    ``T[(m * 4 + k) * 256 + b]`` is byte ``k`` (value ``b``) of register ``m`` advanced over the
    ``(_FAN_IN - 1 - m) * distance`` bytes after it; and the offsets ``(m * 4 + k) * 256``."""
    step = _crc32c_zeros(distance)
    values = np.arange(256, dtype=_U32)
    out = np.empty((_FAN_IN, 4, 256), dtype=_U32)
    columns = _U32(1) << np.arange(32, dtype=_U32)  # the identity: the last register stays
    for m in range(_FAN_IN - 1, -1, -1):
        for k in range(4):
            out[m, k] = _gf2_apply(columns, values << _U32(8 * k))
        columns = _gf2_apply(step, columns)  # one more `distance` of zero bytes after it
    return out.reshape(-1), np.arange(_FAN_IN * 4, dtype=np.intp) * 256


try:
    from google_crc32c import value as _c_crc32c
except ImportError:  # pragma: no cover - platforms without a google-crc32c wheel
    _c_crc32c = None


def crc32c(data: bytes) -> int:
    """CRC-32C of ``data``, equal to ``tensorboard``'s ``crc32c`` (and to ``crc32c.crc32c``)."""
    if _c_crc32c is not None:
        return int(_c_crc32c(data))
    return numpy_crc32c(data)


def numpy_crc32c(data: bytes) -> int:
    """The fallback CRC-32C of ``data`` in numpy (used where ``google-crc32c`` is missing).

    Without TensorFlow, ``tensorboard`` computes it in pure Python, one step per byte (~8 MB/s).
    Here small inputs use that byte loop; large ones use that the register is linear over
    GF(2). The data is cut into 64-byte lanes (zero bytes in front, which leave a zero register
    at zero); a lane's register is the XOR of one table entry per byte (the byte at its offset,
    followed by the rest of the lane as zeros); registers are then merged 64 at a time the same
    way, each advanced over the bytes after it, until one is left. That is a few numpy passes
    in all. The register's 0xFFFFFFFF start is folded into the data: starting from ``R`` equals
    starting from zero with ``R`` XORed into the first four bytes.
    """
    n = len(data)
    if n < 128:
        table = _crc32c_table8().tolist()
        reg = 0xFFFFFFFF
        for byte in data:
            reg = table[(reg ^ byte) & 0xFF] ^ (reg >> 8)
        return reg ^ 0xFFFFFFFF
    pad = -n % _LANE
    buf = np.zeros(pad + n, dtype=np.uint8)
    buf[pad:] = np.frombuffer(data, dtype=np.uint8)
    buf[pad : pad + 4] ^= np.uint8(0xFF)  # the register's 0xFFFFFFFF start
    table, offsets = _crc32c_lane_tables()
    regs = np.bitwise_xor.reduce(table[buf.reshape(-1, _LANE) + offsets], axis=1)
    distance = _LANE
    while regs.size > 1:
        missing = -regs.size % _FAN_IN  # zero registers in front change nothing
        if missing:
            regs = np.concatenate((np.zeros(missing, dtype=_U32), regs))
        table, offsets = _crc32c_merge_tables(distance)
        octets = regs.astype("<u4").view(np.uint8).reshape(-1, _FAN_IN * 4)
        regs = np.bitwise_xor.reduce(table[octets + offsets], axis=1)
        distance *= _FAN_IN
    return int(regs[0]) ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """The masked CRC-32C of a TFRecord (event file) header or payload."""
    x = crc32c(data)
    return (((x >> 15) | (x << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(data: bytes) -> bytes:
    """``data`` framed as one TFRecord: length, masked CRC of it, data, masked CRC of data."""
    header = struct.pack("<Q", len(data))
    return b"".join(
        (
            header,
            struct.pack("<I", masked_crc32c(header)),
            data,
            struct.pack("<I", masked_crc32c(data)),
        )
    )
