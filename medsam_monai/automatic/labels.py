"""Automatic masks for medical images: filters by physical size and a label map.

Records are those of :class:`~medsam_monai.automatic.AutomaticMaskGenerator` (any ``output_mode``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from .rle import coco_rle_to_mask, rle_to_mask

#: The most masks a label map holds (its values are uint16; 0 is background).
MAX_LABELS = np.iinfo(np.uint16).max


def record_mask(record: dict[str, Any]) -> np.ndarray:
    """The (H, W) bool mask of a record, whatever its ``output_mode``."""
    segmentation = record["segmentation"]
    if isinstance(segmentation, dict):
        counts = segmentation.get("counts")
        return coco_rle_to_mask(segmentation) if isinstance(counts, (str, bytes)) else rle_to_mask(segmentation)
    return np.asarray(segmentation, dtype=bool)


def records_to_label_map(records: Sequence[dict[str, Any]], shape: Sequence[int]) -> np.ndarray:
    """Paint the masks of ``records`` into one uint16 (H, W) label map, 0 background, record i -> i + 1.

    Larger masks are painted first, so that a smaller mask lying on a larger one stays visible (SAM's
    masks overlap: a part and the whole are both found); ties keep the records' order.
    """
    h, w = (int(v) for v in shape[:2])
    if len(records) > MAX_LABELS:
        raise ValueError(f"{len(records)} masks do not fit a uint16 label map (at most {MAX_LABELS})")
    label_map = np.zeros((h, w), dtype=np.uint16)
    order = sorted(range(len(records)), key=lambda i: -int(records[i]["area"]))  # stable: ties in order
    for i in order:
        mask = record_mask(records[i])
        if mask.shape != (h, w):
            raise ValueError(f"record {i} has a mask of shape {mask.shape}, not the label map's {(h, w)}")
        label_map[mask] = i + 1
    return label_map


def filter_medical(
    records: Sequence[dict[str, Any]],
    pixel_area_mm2: float,
    min_area_mm2: float | None = None,
    max_area_fraction: float | None = None,
) -> list[dict[str, Any]]:
    """The records whose mask is at least ``min_area_mm2`` and covers at most ``max_area_fraction``
    of the image (None: no bound), in their order.

    Args:
        records: the generator's records (their ``area`` in pixels and ``segmentation`` size are read).
        pixel_area_mm2: the area of one pixel (row spacing x column spacing, mm^2), > 0.
        min_area_mm2: drop masks smaller than this, >= 0.
        max_area_fraction: drop masks covering more than this fraction of the image, in (0, 1].
    """
    if not (math.isfinite(pixel_area_mm2) and pixel_area_mm2 > 0):
        raise ValueError(f"pixel_area_mm2 must be a positive number, got {pixel_area_mm2!r}")
    if min_area_mm2 is not None and not (is_finite_number(min_area_mm2) and min_area_mm2 >= 0):
        raise ValueError(f"min_area_mm2 must be a number >= 0, got {min_area_mm2!r}")
    if max_area_fraction is not None and not (is_finite_number(max_area_fraction) and 0 < max_area_fraction <= 1):
        raise ValueError(f"max_area_fraction must be in (0, 1], got {max_area_fraction!r}")
    kept = []
    for record in records:
        area = int(record["area"])
        if min_area_mm2 is not None and area * pixel_area_mm2 < min_area_mm2:
            continue
        if max_area_fraction is not None and area > max_area_fraction * image_pixels(record):
            continue
        kept.append(record)
    return kept


def is_finite_number(value: Any) -> bool:
    """A real, finite number that is not a bool (a config's ``true`` is no area)."""
    return not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)


def image_pixels(record: dict[str, Any]) -> int:
    """H * W of the image a record's mask belongs to."""
    segmentation = record["segmentation"]
    h, w = segmentation["size"] if isinstance(segmentation, dict) else np.shape(segmentation)[:2]
    return int(h) * int(w)
