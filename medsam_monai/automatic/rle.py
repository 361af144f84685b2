"""Run-length encodings of masks: SAM's uncompressed RLE and COCO's compressed string.

- Uncompressed RLE (segment-anything's ``mask_to_rle_pytorch`` / ``rle_to_mask``):
  ``{"size": [H, W], "counts": [n0, n1, ...]}``, run lengths of the mask read column by column
  (Fortran order), alternating background / foreground and starting with background (a mask whose
  first pixel is set starts with a 0 count).
- COCO RLE (pycocotools' ``rleToString`` / ``rleFrString``): the same counts as an ASCII string,
  each count (after the first two, as the difference from the count two places back) in 5-bit
  groups, least significant first, a continuation bit 0x20, offset by 48. pycocotools decodes ours
  and ``pycocotools.mask.encode`` gives the same string; nothing here needs pycocotools.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

RLE = dict[str, Any]  # {"size": [H, W], "counts": list[int] (uncompressed) or str (COCO)}


def transition_indices(mask: np.ndarray) -> np.ndarray:
    """Where the Fortran-order pixel sequence of ``mask`` (H, W) changes value, a virtual background
    pixel before the first: sorted int64 flat indices (the index of the pixel after the change).

    Only the columns holding foreground are read: the rest of the sequence is background.
    """
    h, w = mask.shape
    columns = np.flatnonzero(mask.any(axis=0))
    if columns.size == 0:
        return np.empty(0, dtype=np.int64)
    first, last = int(columns[0]), int(columns[-1])
    # columns first..last in Fortran order: a contiguous stretch of the whole sequence from first * h
    stretch = np.empty((last - first + 1) * h + 2, dtype=bool)
    stretch[0] = stretch[-1] = False  # background on both sides of the stretch
    stretch[1:-1] = mask[:, first : last + 1].T.ravel()
    changes = np.flatnonzero(stretch[1:] != stretch[:-1]).astype(np.int64) + first * h
    return changes[changes < h * w]  # a change after the last pixel is no run


def mask_to_rle(mask: np.ndarray | torch.Tensor) -> RLE:
    """(H, W) bool mask -> uncompressed RLE, as segment-anything's ``mask_to_rle_pytorch`` for one mask."""
    array = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask, dtype=bool)
    if array.ndim != 2:
        raise ValueError(f"expected a mask (H, W), got shape {tuple(array.shape)}")
    h, w = array.shape
    bounds = np.concatenate(([0], transition_indices(array), [h * w]))
    return {"size": [h, w], "counts": np.diff(bounds).tolist()}


def masks_to_rle(masks: np.ndarray | torch.Tensor) -> list[RLE]:
    """(B, H, W) bool masks -> one uncompressed RLE each."""
    return [mask_to_rle(mask) for mask in masks]


def check_rle(rle: RLE) -> tuple[int, int]:
    """(H, W) of an uncompressed RLE whose counts add up to H * W; one-line ValueError otherwise."""
    try:
        h, w = (int(v) for v in rle["size"])
        total = sum(rle["counts"])
    except (KeyError, TypeError, ValueError):
        raise ValueError("an uncompressed RLE is {'size': [H, W], 'counts': [int, ...]}") from None
    if total != h * w:
        raise ValueError(f"RLE counts add up to {total}, not H * W = {h * w}")
    return h, w


def rle_to_mask(rle: RLE) -> np.ndarray:
    """Uncompressed RLE -> (H, W) bool mask (C-contiguous), as segment-anything's ``rle_to_mask``."""
    h, w = check_rle(rle)
    counts = np.asarray(rle["counts"], dtype=np.int64)
    runs = np.arange(counts.size) % 2 == 1  # odd runs are foreground
    return np.ascontiguousarray(np.repeat(runs, counts).reshape(w, h).T)


def area_from_rle(rle: RLE) -> int:
    """Foreground pixels of an uncompressed RLE (the sum of its odd counts)."""
    return int(sum(rle["counts"][1::2]))


def encode_coco_counts(counts: list[int]) -> str:
    """Run lengths -> pycocotools' compressed string (``rleToString``)."""
    out = bytearray()
    for i, count in enumerate(counts):
        x = int(count) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            c = x & 0x1F
            x >>= 5  # arithmetic shift, as C's on a signed long
            more = x != -1 if c & 0x10 else x != 0
            out.append((c | 0x20 if more else c) + 48)
    return out.decode("ascii")


def decode_coco_counts(text: str | bytes) -> list[int]:
    """pycocotools' compressed string -> run lengths (``rleFrString``)."""
    data = text.encode("ascii") if isinstance(text, str) else bytes(text)
    counts: list[int] = []
    p = 0
    while p < len(data):
        x = k = 0
        more = True
        while more:
            if p >= len(data):
                raise ValueError("truncated COCO RLE string")
            c = data[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)  # sign extension
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def rle_to_coco(rle: RLE) -> RLE:
    """Uncompressed RLE -> COCO RLE ``{"size": [H, W], "counts": str}`` (segment-anything's
    ``coco_encode_rle``: the string is decoded text, so the record is JSON-serialisable)."""
    h, w = check_rle(rle)
    return {"size": [h, w], "counts": encode_coco_counts(rle["counts"])}


def coco_to_rle(coco: RLE) -> RLE:
    """COCO RLE (``counts`` a str or bytes) -> uncompressed RLE."""
    rle = {"size": [int(v) for v in coco["size"]], "counts": decode_coco_counts(coco["counts"])}
    check_rle(rle)
    return rle


def coco_rle_to_mask(coco: RLE) -> np.ndarray:
    """COCO RLE -> (H, W) bool mask."""
    return rle_to_mask(coco_to_rle(coco))
