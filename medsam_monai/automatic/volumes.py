"""Automatic masks of a medical image: one plane (a 2D image, or a display slice of a volume), the
medical size filters, one label map, COCO-style records, and each mask carried through the volume.

The one core behind every face that "segments everything" (``medsam everything``, the server's
``/sessions/{id}/everything`` jobs):

- which slice: :func:`display_slice` / :func:`voxel_slice` (a voxel index along the axis' voxel
  axis <-> the display slice index), :func:`display_pixel_spacing` (its (row, col) mm);
- :func:`automatic_masks`: SAM's generator on the plane, then :func:`apply_size_filters`
  (``min_area_mm2``, ``max_area_fraction``), then :func:`~.labels.records_to_label_map`
  (larger masks under smaller ones): an :class:`AutomaticMasks`;
- :func:`json_records`: the records as a JSON-ready list (COCO RLE masks that pycocotools decodes);
- :func:`propagate_masks`: each mask as the key-slice result of MedSAM's 3D propagation
  (:func:`medsam_monai.propagation.propagate` with ``key_mask``), labels 1..N in the display volume.

Records and label maps are in the plane's pixels: a volume's display slice (x: display column,
y: display row, see :mod:`medsam_monai.orientation`) or a 2D image as read. Knows nothing of files.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..masks import mask_box
from ..orientation import DisplayLayout, display_pixel_spacing, slice_to_display, slice_to_voxel
from ..propagation import CancelCheck, ObjectPrompt, ProgressCallback, propagate
from .generator import AutomaticMaskGenerator
from .grids import generate_crop_boxes
from .labels import filter_medical, record_mask, records_to_label_map
from .rle import mask_to_rle, rle_to_coco

if TYPE_CHECKING:
    from ..propagation import SlicePredictor

__all__ = [
    "AutomaticMasks",
    "apply_size_filters",
    "automatic_masks",
    "check_size_filters",
    "check_spacing_for_filters",
    "display_pixel_spacing",
    "display_slice",
    "json_records",
    "point_batches",
    "propagate_masks",
    "record_masks",
    "voxel_slice",
]


# ----- which slice ---------------------------------------------------------------------------------


def slice_count(shape_ijk: Sequence[int], layout: DisplayLayout) -> int:
    """How many display slices a volume of ``shape_ijk`` has along ``layout``'s axis."""
    return int(shape_ijk[layout.permutation[0]])


def display_slice(voxel_index: int, shape_ijk: Sequence[int], layout: DisplayLayout) -> int:
    """The display slice of voxel index ``voxel_index`` along the voxel axis ``layout``'s slices run
    along (``k`` for an axial slice of an RAS volume); one-line ValueError outside the volume."""
    count = slice_count(shape_ijk, layout)
    name = "ijk"[layout.permutation[0]]
    if isinstance(voxel_index, bool) or int(voxel_index) != voxel_index or not 0 <= voxel_index < count:
        raise ValueError(f"slice {voxel_index} is outside the {layout.axis} slices {name} = 0..{count - 1}")
    return slice_to_display(int(voxel_index), shape_ijk, layout)


def voxel_slice(display_index: int, shape_ijk: Sequence[int], layout: DisplayLayout) -> int:
    """The inverse of :func:`display_slice`: the voxel index along the slice axis of a display slice."""
    return slice_to_voxel(display_index, shape_ijk, layout)


def point_batches(generator: AutomaticMaskGenerator, shape_hw: Sequence[int]) -> int:
    """Point batches the generator decodes on a plane of ``shape_hw`` (over all crops): its progress total."""
    hw = (int(shape_hw[0]), int(shape_hw[1]))
    _, layers = generate_crop_boxes(hw, generator.crop_n_layers, generator.crop_overlap_ratio)
    return sum(math.ceil(len(generator.point_grids[layer]) / generator.points_per_batch) for layer in layers)


# ----- the masks of one plane ----------------------------------------------------------------------


def check_size_filters(min_area_mm2: float | None = None, max_area_fraction: float | None = None) -> None:
    """One-line ValueError unless ``min_area_mm2`` is None or >= 0 and ``max_area_fraction`` None or in (0, 1]."""
    filter_medical([], 1.0, min_area_mm2, max_area_fraction)  # its checks, on no records


def check_spacing_for_filters(pixel_spacing: tuple[float, float] | None, min_area_mm2: float | None) -> None:
    """One-line ValueError when ``min_area_mm2`` is asked of an image without a pixel spacing."""
    if min_area_mm2 is not None and pixel_spacing is None:
        raise ValueError("min_area_mm2 needs the pixel spacing, which this image does not record; use max_area_fraction")


def apply_size_filters(
    records: Sequence[dict[str, Any]],
    pixel_spacing: tuple[float, float] | None,
    min_area_mm2: float | None = None,
    max_area_fraction: float | None = None,
) -> list[dict[str, Any]]:
    """The records the medical filters keep, in their order (all of them when both filters are None).

    ``pixel_spacing`` is the plane's (row, col) mm, None where the image records none: then only
    ``max_area_fraction`` can be applied (``min_area_mm2`` is a one-line ValueError).
    """
    check_size_filters(min_area_mm2, max_area_fraction)
    check_spacing_for_filters(pixel_spacing, min_area_mm2)
    if min_area_mm2 is None and max_area_fraction is None:
        return list(records)
    pixel_area = 1.0 if pixel_spacing is None else float(pixel_spacing[0]) * float(pixel_spacing[1])
    return filter_medical(records, pixel_area, min_area_mm2, max_area_fraction)


@dataclass
class AutomaticMasks:
    """The masks of one plane after the medical filters."""

    records: list[dict[str, Any]]  # SAM's records in SAM's order; label n is records[n - 1]
    label_map: np.ndarray  # (H, W) uint16: 0 background, n on the visible pixels of records[n - 1]
    generated: int  # masks the generator found, before the medical filters

    @property
    def dropped(self) -> int:
        """Masks the medical filters dropped."""
        return self.generated - len(self.records)


def automatic_masks(
    generator: AutomaticMaskGenerator,
    image: np.ndarray,
    pixel_spacing: tuple[float, float] | None = None,
    min_area_mm2: float | None = None,
    max_area_fraction: float | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
) -> AutomaticMasks:
    """SAM's masks of ``image`` ((H, W) or (H, W, 3), values in [0, 255]; records in the generator's
    ``output_mode``) through the medical filters (:func:`apply_size_filters`) into one label map.

    ``progress(point batches done, in all)`` and ``cancel`` are the generator's.
    """
    check_size_filters(min_area_mm2, max_area_fraction)  # refused before the generator runs
    check_spacing_for_filters(pixel_spacing, min_area_mm2)
    found = generator.generate(image, progress=progress, cancel=cancel)
    kept = apply_size_filters(found, pixel_spacing, min_area_mm2, max_area_fraction)
    return AutomaticMasks(kept, records_to_label_map(kept, np.shape(image)[:2]), len(found))


def json_record(record: dict[str, Any], label: int | None = None) -> dict[str, Any]:
    """One record with plain Python numbers (JSON-ready) and its mask as an RLE: a binary mask becomes
    a COCO RLE, an RLE (COCO or uncompressed) stays as it is. ``label``, when given, comes first."""
    segmentation = record["segmentation"]
    if not isinstance(segmentation, dict):
        segmentation = rle_to_coco(mask_to_rle(np.asarray(segmentation, dtype=bool)))
    counts = segmentation["counts"]
    out: dict[str, Any] = {} if label is None else {"label": int(label)}
    out.update(
        {
            "segmentation": {
                "size": [int(v) for v in segmentation["size"]],
                "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
            },
            "area": int(record["area"]),
            "bbox": [int(v) for v in record["bbox"]],
            "predicted_iou": float(record["predicted_iou"]),
            "point_coords": [[float(x), float(y)] for x, y in record["point_coords"]],
            "stability_score": float(record["stability_score"]),
            "crop_box": [int(v) for v in record["crop_box"]],
        }
    )
    return out


def json_records(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records as SAM's ``amg.py`` writes them (a list, masks as RLE), each with its ``label``
    (record n is label n of :func:`~.labels.records_to_label_map`)."""
    return [json_record(record, n) for n, record in enumerate(records, start=1)]


# ----- through the volume --------------------------------------------------------------------------


def propagate_masks(
    predictor: SlicePredictor,
    display: np.ndarray,
    key: int,
    masks: Sequence[np.ndarray],
    volume_key: Hashable | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
) -> np.ndarray:
    """Each mask of display slice ``key`` carried through the volume by MedSAM's 3D propagation.

    Mask n (1-based) is object n: its key slice is ``key``, where the mask is the result as given
    (``key_mask``); each neighbour gets the box of the slice before's mask, up and down the whole
    volume, until a slice's mask is empty (``stop_when_empty``). Where masks overlap the voxel goes
    to the more probable object; on the key slice, where every mask is certain, to the smaller mask
    (as :func:`~.labels.records_to_label_map` paints them; equal areas: the later one).

    Args:
        predictor: a :class:`~medsam_monai.predictor.MedSAMPredictor`.
        display: (S, H, W) or (S, H, W, 3) display volume, uint8 intensities.
        key: the display slice the masks belong to.
        masks: (H, W) bool masks of slice ``key`` (an empty one stays empty).
        volume_key: the embedding cache key of ``display`` (default: its content fingerprint).
        progress: called with (slices done, slices in all objects).

    Returns:
        (S, H, W) labels (uint8, or uint16 above 255 masks): 0 background, n where mask n reaches.
    """
    s, h, w = (int(v) for v in display.shape[:3])
    if not 0 <= int(key) < s:
        raise ValueError(f"key slice {key} is outside the volume's slices 0..{s - 1}")
    if not masks:
        return np.zeros((s, h, w), dtype=np.uint8)
    objects = []
    for n, mask in enumerate(masks, start=1):
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (h, w):
            raise ValueError(f"mask {n} is {mask.shape[0]}x{mask.shape[1]} but the slices are {h}x{w}")
        objects.append(ObjectPrompt(_whole_volume_box(mask, s), label=n, key=int(key), key_mask=mask))
    # propagate gives a tie to the first object: smaller masks first, equal areas the later first
    order = sorted(range(len(objects)), key=lambda i: (int(objects[i].key_mask.sum()), -i))  # type: ignore[union-attr]
    return propagate(predictor, display, [objects[i] for i in order], volume_key, progress, cancel, stop_when_empty=True)


def _whole_volume_box(mask: np.ndarray, slices: int) -> tuple[float, float, int, float, float, int]:
    """``(x0, y0, 0, x1, y1, slices - 1)``: the mask's tight box (the whole slice for an empty mask)
    over every slice of the volume; the propagation stops where the object ends."""
    if mask.any():
        (y0, x0), (y1, x1) = mask_box(mask)
    else:
        x0, y0, x1, y1 = 0, 0, mask.shape[1] - 1, mask.shape[0] - 1
    return float(x0), float(y0), 0, float(x1), float(y1), slices - 1


def record_masks(records: Sequence[dict[str, Any]]) -> list[np.ndarray]:
    """The (H, W) bool mask of each record, whatever its ``output_mode``."""
    return [record_mask(record) for record in records]
