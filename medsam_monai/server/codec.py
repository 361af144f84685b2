"""The wire codec: an n-D numpy array as a small JSON object.

    {"dtype": "int16", "shape": [I, J, K], "compression": "zlib", "data": "<base64>"}

``data`` is the array's raw little-endian bytes with the FIRST index varying fastest (i, then j,
then k: the memory order of NIfTI and NRRD files, and exactly the bytes of 3D Slicer's
``arrayFromVolume`` array, which is indexed [k, j, i] in C order), zlib-compressed (or
``"none"``), then base64. ``shape`` lists the sizes along i, j, k.

The 3D Slicer client (``MedSAMLib/client.py``) has its own copy of these few lines because it
cannot import this package; the tests check that the two agree.
"""

from __future__ import annotations

import base64
import binascii
import math
import zlib
from collections.abc import Mapping, Sequence

import numpy as np

DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")
COMPRESSIONS = ("zlib", "none")


class CodecError(ValueError):
    """An encoded array that cannot be decoded (the message says why, in one line)."""


class TooLarge(CodecError):
    """An encoded array whose declared size exceeds the allowed number of bytes."""


def encode_array(array: np.ndarray, compression: str = "zlib", level: int = 1) -> dict[str, object]:
    """The JSON object of ``array`` (first index fastest). zlib level 1: labels and CT compress
    nearly as well as at level 6, several times faster."""
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


def decode_array(encoded: Mapping[str, object], max_bytes: int) -> np.ndarray:
    """The array of an encoded object, refusing anything whose declared size exceeds ``max_bytes``
    or whose data does not decode to exactly the declared size (truncated or padded data, or a
    decompression bomb: inflation stops one byte past the declared size).

    Returns:
        A read-only array of the declared shape (a view on the decoded bytes, Fortran order).
    """
    dtype, shape = str(encoded["dtype"]), [int(n) for n in encoded["shape"]]  # type: ignore[union-attr]
    expected = declared_nbytes(dtype, shape)
    if expected > max_bytes:
        raise TooLarge(f"the array declares {expected / 2**20:.1f} MB ({dtype} {shape}); this server accepts at most "
                       f"{max_bytes / 2**20:.1f} MB")
    try:
        raw = base64.b64decode(str(encoded["data"]), validate=True)
    except (binascii.Error, ValueError):
        raise CodecError("data is not valid base64") from None
    compression = encoded.get("compression", "zlib")
    if compression == "zlib":
        raw = _inflate(raw, expected)
    elif compression != "none":
        raise CodecError(f"unknown compression {compression!r}; use one of {', '.join(COMPRESSIONS)}")
    if len(raw) != expected:
        raise CodecError(f"data holds {len(raw)} bytes but dtype {dtype} and shape {shape} declare {expected}")
    return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape, order="F")


def _inflate(compressed: bytes, expected: int) -> bytes:
    """zlib data inflated to at most ``expected + 1`` bytes (enough to tell "too long")."""
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(compressed, expected + 1)
    except zlib.error as err:
        raise CodecError(f"data is not valid zlib: {err}") from None
    if len(out) > expected or inflater.unconsumed_tail:
        raise CodecError(f"data inflates to more than the {expected} bytes its dtype and shape declare")
    if not inflater.eof:
        raise CodecError(f"zlib data is truncated: {len(out)} of {expected} bytes")
    return out
