"""The server's wire codec: an n-D numpy array as a small JSON object.

    {"dtype": "int16", "shape": [I, J, K], "compression": "zlib", "data": "<base64>"}

``data`` is the array's raw little-endian bytes with the FIRST index varying fastest (i, then j,
then k), zlib-compressed (or ``"none"``), then base64; ``shape`` lists the sizes along i, j, k.

The implementation is :mod:`medsam_monai.wire`, a generated copy of the 3D Slicer extension's
``MedSAMLib/wire.py``: both ends of the protocol run the same code. Its chunk sizes
(``TEXT_CHUNK``, ``INFLATE_CHUNK``) are read there, at call time.
"""

from __future__ import annotations

from ..wire import COMPRESSIONS, DTYPES, CodecError, TooLarge, check_declared, declared_nbytes, decode_array, encode_array

__all__ = [
    "COMPRESSIONS",
    "DTYPES",
    "CodecError",
    "TooLarge",
    "check_declared",
    "declared_nbytes",
    "decode_array",
    "encode_array",
]
