"""The wire format of ``medsam serve``: its arrays and its voxel geometry, in numpy only.

This file is the one implementation that both ends of the protocol run. It lives in the 3D Slicer
extension (``slicer_extension/MedSAM/MedSAMLib/wire.py``), which must stay installable by dropping
its folder into Slicer; ``medsam_monai/wire.py`` is a byte-identical copy (below its first line),
written by ``python slicer_extension/release/sync_wire.py`` and checked by ``tests/test_wire.py``.
So: edit this file only, then run that script. It must run on Slicer's Python 3.9 and import only
the standard library and numpy (no ``medsam_monai``, no torch).

Arrays. An n-D array travels as a small JSON object::

    {"dtype": "int16", "shape": [I, J, K], "compression": "zlib", "data": "<base64>"}

``data`` is the array's raw little-endian bytes with the FIRST index varying fastest (i, then j,
then k: the memory order of NIfTI and NRRD files, and exactly the bytes of 3D Slicer's
``arrayFromVolume`` array, which is indexed [k, j, i] in C order), zlib-compressed (or
``"none"``), then base64. ``shape`` lists the sizes along i, j, k.

Geometry. ``ijk_to_ras`` is the 4x4 matrix from 0-based voxel indices (i, j, k) of voxel *centres*
to RAS millimetres (3D Slicer's world frame: +x Right, +y Anterior, +z Superior); ``shape_ijk`` is
the voxel count along i, j, k; boxes are inclusive voxel index boxes ``(i0, j0, k0, i1, j1, k1)``.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import math
import zlib
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")
COMPRESSIONS = ("zlib", "none")

# Characters of base64 text decoded at a time (a multiple of 4): 4 MB of text, 3 MB of bytes.
TEXT_CHUNK = 4 << 20
# Most bytes one zlib call may produce before its output is copied into the buffer.
INFLATE_CHUNK = 4 << 20
# Voxel centres tested per step when searching oblique boxes (keeps memory to some 50 MB).
SEARCH_CHUNK = 1 << 20


class CodecError(ValueError):
    """An array that cannot be encoded or decoded (the message says why, in one line)."""


class TooLarge(CodecError):
    """An encoded array whose declared size exceeds the allowed number of bytes."""


class GeometryError(ValueError):
    """A geometry problem the user can fix (a box outside the image, a singular matrix...)."""


# ----- arrays -----------------------------------------------------------------------------------


def sendable_dtype(dtype) -> np.dtype:
    """The little-endian wire dtype that holds every value of ``dtype`` exactly: bool -> uint8,
    float16 -> float32, 64-bit integers -> float64 (which holds CT and MR values exactly), any
    byte order -> little-endian. :class:`CodecError` for dtypes the wire has no room for."""
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        dtype = np.dtype(np.uint8)
    elif dtype.kind == "f" and dtype.itemsize < 4:
        dtype = np.dtype(np.float32)
    elif dtype.kind in "iu" and dtype.itemsize == 8:
        dtype = np.dtype(np.float64)
    wire = dtype.newbyteorder("<")
    if wire.name not in DTYPES:
        raise CodecError(f"cannot send an array of dtype {dtype}; use one of {', '.join(DTYPES)}")
    return wire


def encode_array(array: np.ndarray, compression: str = "zlib", level: int = 1) -> dict[str, object]:
    """The JSON object of ``array`` (first index fastest), whose dtype must be one of :data:`DTYPES`
    (see :func:`sendable_dtype` for others). zlib level 1: labels and CT compress nearly as well as
    at level 6, several times faster."""
    dtype = np.dtype(array.dtype).newbyteorder("<")
    if dtype.name not in DTYPES:
        raise CodecError(f"dtype {array.dtype} cannot be sent; use one of {', '.join(DTYPES)}")
    raw = np.asarray(array, dtype=dtype).tobytes(order="F")
    if compression == "zlib":
        raw = zlib.compress(raw, level)
    elif compression != "none":
        raise CodecError(f"unknown compression {compression!r}; use one of {', '.join(COMPRESSIONS)}")
    return {
        "dtype": dtype.name,
        "shape": [int(n) for n in array.shape],
        "compression": compression,
        "data": base64.b64encode(raw).decode("ascii"),
    }


def declared_nbytes(dtype: str, shape: Sequence[int]) -> int:
    """Bytes of the decoded array that ``dtype`` and ``shape`` declare."""
    if dtype not in DTYPES:
        raise CodecError(f"dtype {dtype!r} is not supported; use one of {', '.join(DTYPES)}")
    if any(int(n) < 1 for n in shape):
        raise CodecError(f"shape {list(shape)} must have sizes >= 1")
    return math.prod(int(n) for n in shape) * np.dtype(dtype).itemsize


def check_declared(dtype: str, shape: Sequence[int], max_bytes: int) -> int:
    """The decoded bytes that ``dtype`` and ``shape`` declare, refused (:class:`TooLarge`) when over
    ``max_bytes``: checked before a single byte is allocated or inflated."""
    expected = declared_nbytes(dtype, shape)
    if expected > max_bytes:
        raise TooLarge(
            f"the array declares {expected / 2**20:.1f} MB ({dtype} {list(shape)}); this server accepts at most "
            f"{max_bytes / 2**20:.1f} MB"
        )
    return expected


def decode_array(encoded: Mapping[str, object], max_bytes: int) -> np.ndarray:
    """The array of an encoded object, refusing anything whose declared size exceeds ``max_bytes``
    or whose data does not decode to exactly the declared size (truncated or padded data, bytes
    after the zlib stream, or a decompression bomb: inflation never writes past the declared size).

    The data is decoded in chunks of :data:`TEXT_CHUNK` characters straight into one buffer of the
    declared size, so that decoding needs that buffer plus a few MB, whatever the compression ratio.

    Returns:
        A read-only array of the declared shape (Fortran order: the first index fastest).
    """
    dtype, shape = str(encoded["dtype"]), [int(n) for n in encoded["shape"]]  # type: ignore[union-attr]
    expected = check_declared(dtype, shape, max_bytes)
    compression = encoded.get("compression", "zlib")
    if compression not in COMPRESSIONS:
        raise CodecError(f"unknown compression {compression!r}; use one of {', '.join(COMPRESSIONS)}")
    buffer = np.empty(expected, dtype=np.uint8)
    chunks = _base64_chunks(str(encoded["data"]))
    filled = _inflate_into(buffer, chunks) if compression == "zlib" else _copy_into(buffer, chunks)
    if filled != expected:
        raise CodecError(f"data holds {filled} bytes but dtype {dtype} and shape {shape} declare {expected}")
    array = buffer.view(np.dtype(dtype).newbyteorder("<")).reshape(shape, order="F")
    array.flags.writeable = False
    return array


def _base64_chunks(text: str) -> Iterator[bytes]:
    """The bytes of base64 ``text``, :data:`TEXT_CHUNK` characters at a time (strict: only the
    alphabet, and padding only at the very end, as ``base64.b64decode(validate=True)`` of the whole)."""
    size = TEXT_CHUNK
    if len(text) % 4:
        raise CodecError("data is not valid base64 (its length is not a multiple of 4)")
    for start in range(0, len(text), size):
        piece = text[start : start + size]
        if start + size < len(text) and piece.endswith("="):
            raise CodecError("data is not valid base64 (padding before its end)")
        try:
            yield base64.b64decode(piece, validate=True)
        except (binascii.Error, ValueError):
            raise CodecError("data is not valid base64") from None


def _copy_into(buffer: np.ndarray, chunks: Iterator[bytes]) -> int:
    """Uncompressed data: copy the chunks into ``buffer``; the number of bytes the data holds."""
    filled = 0
    for chunk in chunks:
        if filled + len(chunk) <= buffer.size:
            buffer[filled : filled + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
        filled += len(chunk)  # past the end: only counted, for the message
    return filled


def _inflate_into(buffer: np.ndarray, chunks: Iterator[bytes]) -> int:
    """zlib data inflated into ``buffer`` (never past its end); the number of bytes written.

    Refuses data that inflates to more than the buffer holds, a truncated stream, and bytes after
    the end of the stream (a second stream or padding would otherwise pass unnoticed)."""
    inflater = zlib.decompressobj()
    filled = 0
    for chunk in chunks:
        if inflater.eof:
            if chunk:
                raise CodecError("data has bytes after the end of its zlib stream")
            continue
        pending = chunk
        while not inflater.eof:
            room = buffer.size - filled
            try:
                out = inflater.decompress(pending, min(INFLATE_CHUNK, room + 1))
            except zlib.error as err:
                raise CodecError(f"data is not valid zlib: {err}") from None
            if len(out) > room:
                raise CodecError(f"data inflates to more than the {buffer.size} bytes its dtype and shape declare")
            buffer[filled : filled + len(out)] = np.frombuffer(out, dtype=np.uint8)
            filled += len(out)
            progressed = bool(out) or len(inflater.unconsumed_tail) < len(pending)
            pending = inflater.unconsumed_tail
            # Output can be pending inside zlib once the input is used up: call again until none comes.
            if not progressed:
                break
        if inflater.unused_data:
            raise CodecError("data has bytes after the end of its zlib stream")
    if not inflater.eof:
        raise CodecError(f"zlib data is truncated: {filled} of {buffer.size} bytes")
    return filled


# ----- geometry ---------------------------------------------------------------------------------


def check_matrix(matrix, name: str = "the IJK-to-RAS matrix") -> np.ndarray:
    """``matrix`` as a finite, invertible float (4, 4) array; :class:`GeometryError` naming it
    ``name`` otherwise."""
    m = np.asarray(matrix, dtype=float)
    if m.shape != (4, 4) or not np.all(np.isfinite(m)):
        raise GeometryError(f"{name} must be a finite 4x4 matrix, got shape {m.shape}")
    if abs(np.linalg.det(m[:3, :3])) < 1e-12:
        raise GeometryError(f"{name} is singular: its 3x3 part maps voxels onto a plane")
    return m


def check_shape(shape_ijk) -> tuple[int, int, int]:
    """``shape_ijk`` as three positive ints."""
    shape = tuple(int(n) for n in shape_ijk)
    if len(shape) != 3 or min(shape) < 1:
        raise GeometryError(f"expected three positive voxel counts (I, J, K), got {tuple(shape_ijk)}")
    return shape  # type: ignore[return-value]


def ras_to_ijk(points_ras, ijk_to_ras) -> np.ndarray:
    """Continuous voxel indices (N, 3) of RAS points (N, 3) (or one point (3,))."""
    inverse = np.linalg.inv(check_matrix(ijk_to_ras))
    points = np.atleast_2d(np.asarray(points_ras, dtype=float))
    return points @ inverse[:3, :3].T + inverse[:3, 3]


def ijk_to_ras_points(points_ijk, ijk_to_ras) -> np.ndarray:
    """RAS points (N, 3) of voxel indices (N, 3) (or one index (3,))."""
    m = check_matrix(ijk_to_ras)
    points = np.atleast_2d(np.asarray(points_ijk, dtype=float))
    return points @ m[:3, :3].T + m[:3, 3]


def volume_ras_bounds(ijk_to_ras, shape_ijk) -> tuple[np.ndarray, np.ndarray]:
    """Smallest and largest RAS coordinates (3,) of the volume's voxel centres."""
    shape = check_shape(shape_ijk)
    corners = np.array(list(itertools.product(*[(0, n - 1) for n in shape])), dtype=float)
    ras = ijk_to_ras_points(corners, ijk_to_ras)
    return ras.min(axis=0), ras.max(axis=0)


def voxel_axis_codes(ijk_to_ras) -> list[tuple[int, int]]:
    """For voxel axes i, j, k: the closest RAS axis (0, 1, 2) and the direction (+1 or -1).

    The 3x3 part is first replaced by its closest rotation (polar decomposition), so spacing and
    mild shear do not matter; then the largest cosines are assigned greedily, which gives every
    voxel axis a different world axis even for strongly oblique matrices. The server cuts
    ``axial``, ``coronal`` and ``sagittal`` slices along the voxel axis assigned to S, A and R.
    """
    m = check_matrix(ijk_to_ras)
    u, _, vt = np.linalg.svd(m[:3, :3])
    cosines = u @ vt  # [world, voxel]
    remaining = np.abs(cosines)
    codes = [(-1, 0)] * 3
    for _ in range(3):
        world, voxel = np.unravel_index(int(np.argmax(remaining)), remaining.shape)
        codes[int(voxel)] = (int(world), 1 if cosines[world, voxel] > 0 else -1)
        remaining[world, :] = -1.0
        remaining[:, voxel] = -1.0
    return codes


def _is_axis_aligned(linear: np.ndarray) -> bool:
    """True when every voxel axis moves along exactly one world axis (flips and permutations)."""
    scale = float(np.abs(linear).max())
    return bool(np.all(np.count_nonzero(np.abs(linear) > 1e-12 * scale, axis=0) == 1))


def ras_box_to_ijk(ras_min, ras_max, ijk_to_ras, shape_ijk, tolerance: float = 1e-6):
    """Inclusive IJK box ``(i0, j0, k0, i1, j1, k1)`` of the voxels whose centres lie in an RAS box.

    The RAS box is axis-aligned in RAS, given by two opposite corners (3,) in any order; centres on
    a face (within ``tolerance`` mm) count as inside. The result is clipped to the volume, and is
    ``None`` when no voxel centre lies inside. For oblique matrices the box is the exact bounding
    box of the inside centres (not of the RAS box's corners).
    """
    m = check_matrix(ijk_to_ras)
    shape = np.asarray(check_shape(shape_ijk), dtype=np.int64)
    a = np.asarray(ras_min, dtype=float)
    b = np.asarray(ras_max, dtype=float)
    if a.shape != (3,) or b.shape != (3,) or not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise GeometryError("an RAS box needs two finite 3D corners")
    low = np.minimum(a, b) - tolerance
    high = np.maximum(a, b) + tolerance
    # The RAS box maps to a parallelepiped in index space; its corners' bounding block holds
    # every inside centre, so only that block needs looking at.
    corners = np.array(list(itertools.product(*zip(low, high))))
    corners_ijk = ras_to_ijk(corners, m)
    start = np.maximum(np.ceil(corners_ijk.min(axis=0) - 1e-9), 0).astype(np.int64)
    stop = np.minimum(np.floor(corners_ijk.max(axis=0) + 1e-9), shape - 1).astype(np.int64)
    if np.any(start > stop):
        return None
    if _is_axis_aligned(m[:3, :3]):
        # No rotation: the parallelepiped is an index-aligned box, so the block is exact.
        return (*(int(v) for v in start), *(int(v) for v in stop))
    return _inside_bounding_box(m, low, high, start, stop)


def _inside_bounding_box(m, low, high, start, stop):
    """Exact bounding box of the voxel centres of block ``start..stop`` that lie in [low, high]."""
    # The RAS box is convex: when the block's 8 corner centres are inside, all its centres are.
    block_corners = np.array(list(itertools.product(*zip(start, stop))), dtype=float)
    corner_ras = ijk_to_ras_points(block_corners, m)
    if np.all((corner_ras >= low) & (corner_ras <= high)):
        return (*(int(v) for v in start), *(int(v) for v in stop))
    i_values, j_values, k_values = (np.arange(s, e + 1) for s, e in zip(start, stop))
    used = [np.zeros(len(v), dtype=bool) for v in (i_values, j_values, k_values)]
    # RAS of the j and k offsets once; i planes are added in chunks to bound memory.
    jk_ras = j_values[:, None, None] * m[:3, 1] + k_values[None, :, None] * m[:3, 2] + m[:3, 3]
    step = max(1, SEARCH_CHUNK // max(1, len(j_values) * len(k_values)))
    for first in range(0, len(i_values), step):
        chunk = i_values[first : first + step]
        ras = chunk[:, None, None, None] * m[:3, 0] + jk_ras[None]
        inside = np.all((ras >= low) & (ras <= high), axis=-1)
        used[0][first : first + step] |= inside.any(axis=(1, 2))
        used[1] |= inside.any(axis=(0, 2))
        used[2] |= inside.any(axis=(0, 1))
    if not used[0].any():
        return None
    values = (i_values, j_values, k_values)
    lows = [int(v[np.flatnonzero(u)[0]]) for v, u in zip(values, used)]
    highs = [int(v[np.flatnonzero(u)[-1]]) for v, u in zip(values, used)]
    return (*lows, *highs)
