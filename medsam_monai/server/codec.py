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
from collections.abc import Iterator, Mapping, Sequence

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


# Characters of base64 text decoded at a time (a multiple of 4): 4 MB of text, 3 MB of bytes.
TEXT_CHUNK = 4 << 20
# Most bytes one zlib call may produce before its output is copied into the buffer.
INFLATE_CHUNK = 4 << 20


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
