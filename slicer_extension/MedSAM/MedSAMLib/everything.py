"""Segment everything on one slice: SAM's automatic-mask parameters, and what the module makes of the answer.

The server runs SAM's automatic mask generator (segment-anything's ``SamAutomaticMaskGenerator``, with its
parameter names and defaults) on one slice of an uploaded volume and answers a label block (labels 1..N on
that slice, larger masks painted first, smaller ones on top) and one record per label. This module checks the
parameters before anything is sent (the server's own bounds, so the user hears of a bad value at once), names
the segments the module makes of the masks, and turns the answer into what the Logic writes.

Nothing here imports Slicer, Qt or the network; numpy and the standard library only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np

# SAM's parameters as SamAutomaticMaskGenerator names them, with its defaults, and the bounds the server
# accepts (None: no bound on that side). crop_overlap_ratio's default is SAM's 512 / 1500.
PARAMETERS: Dict[str, Tuple[object, Optional[float], Optional[float], type]] = {
    "points_per_side": (32, 1, 128, int),
    "points_per_batch": (64, 1, 256, int),
    "pred_iou_thresh": (0.88, 0.0, 1.0, float),
    "stability_score_thresh": (0.95, 0.0, 1.0, float),
    "stability_score_offset": (1.0, 0.0, 100.0, float),
    "box_nms_thresh": (0.7, 0.0, 1.0, float),
    "crop_n_layers": (0, 0, 3, int),
    "crop_nms_thresh": (0.7, 0.0, 1.0, float),
    "crop_overlap_ratio": (512 / 1500, 0.0, 1.0, float),
    "crop_n_points_downscale_factor": (1, 1, 16, int),
    "min_mask_region_area": (0, 0, None, int),
}
# The server's filters for medical images, applied after SAM's (None: not applied).
MEDICAL_FILTERS: Dict[str, Tuple[Optional[float], Optional[float]]] = {
    "min_area_mm2": (0.0, None),  # drop masks smaller than this many mm^2
    "max_area_fraction": (0.0, 1.0),  # drop masks covering more than this fraction of the slice (> 0)
}

SEGMENT_NAME_FORMAT = "Mask {label} (IoU {iou:.2f})"


def default_parameters() -> Dict[str, object]:
    """SAM's defaults, as the server takes them (no medical filter)."""
    return {name: spec[0] for name, spec in PARAMETERS.items()}


def check_parameters(parameters: Optional[Mapping[str, object]] = None) -> Dict[str, object]:
    """SAM's defaults updated with ``parameters`` (SAM's names, plus ``min_area_mm2`` and ``max_area_fraction``),
    checked against the server's bounds: the request's parameters. A medical filter that is None is left out.

    Raises ValueError with one sentence naming the parameter for an unknown name or a value out of range.
    """
    result = default_parameters()
    for name, value in (parameters or {}).items():
        if name in PARAMETERS:
            result[name] = _checked_number(name, value, *PARAMETERS[name][1:])
        elif name in MEDICAL_FILTERS:
            if value is not None:
                result[name] = _checked_number(name, value, *MEDICAL_FILTERS[name], float)
        else:
            known = ", ".join(list(PARAMETERS) + list(MEDICAL_FILTERS))
            raise ValueError(f"unknown segment-everything parameter {name!r}; use one of {known}")
    if result["crop_overlap_ratio"] >= 1.0:  # type: ignore[operator]
        raise ValueError(f"crop_overlap_ratio must be below 1, got {result['crop_overlap_ratio']}")
    if result.get("max_area_fraction") == 0.0:
        raise ValueError("max_area_fraction must be above 0 (a fraction of the slice in (0, 1])")
    return result


def _checked_number(name: str, value, low: Optional[float], high: Optional[float], kind: type):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if kind is int and number != int(number):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    if (low is not None and number < low) or (high is not None and number > high):
        bounds = f"{low:g}..{high:g}" if high is not None else f">= {low:g}"
        raise ValueError(f"{name} must be in {bounds}, got {value!r}")
    return int(number) if kind is int else number


def segment_name(label: int, predicted_iou: float) -> str:
    """The name of the segment made of mask ``label``: ``Mask 3 (IoU 0.93)``."""
    return SEGMENT_NAME_FORMAT.format(label=int(label), iou=float(predicted_iou))


@dataclass
class EverythingResult:
    """The server's answer to one "segment everything" job, decoded.

    labels - uint16 ``[k, j, i]`` block of the volume's grid, one voxel thick along ``slice_axis``, starting at
        ``offset_ijk``: 0 background, label n is mask ``records[n - 1]``.
    volume_shape_ijk - the whole volume's voxel counts; slice_axis - the voxel axis (0 = i, 1 = j, 2 = k) the
        slice is cut across, slice_index - the slice's index along it; axis - axial, coronal or sagittal.
    records - SAM's records without their masks (label, area, area_mm2, voxels, bbox, bbox_ijk, predicted_iou,
        stability_score, point_coords, point_ijk, crop_box), in SAM's order; generated - masks before the
        medical filters.
    """

    labels: np.ndarray
    offset_ijk: Tuple[int, int, int]
    volume_shape_ijk: Tuple[int, int, int]
    slice_axis: int
    slice_index: int
    axis: str
    records: List[Dict[str, object]] = field(default_factory=list)
    generated: int = 0
    seconds: float = 0.0

    def extent(self) -> Tuple[int, int, int, int, int, int]:
        """The block's VTK extent ``(i0, i1, j0, j1, k0, k1)`` in the volume's voxel indices."""
        nk, nj, ni = self.labels.shape
        i0, j0, k0 = self.offset_ijk
        return (i0, i0 + ni - 1, j0, j0 + nj - 1, k0, k0 + nk - 1)

    def records_by_label(self) -> Dict[int, Dict[str, object]]:
        """``{label: record}``."""
        return {int(record["label"]): record for record in self.records}  # type: ignore[arg-type]

    def visible_labels(self) -> List[int]:
        """The labels with at least one voxel in the block (a mask covered by smaller ones has none), ascending."""
        present = np.unique(self.labels)
        return [int(v) for v in present if v != 0]


def check_result(result: EverythingResult, shape_ijk, voxel_axis: int, slice_index: int) -> None:
    """Raise ValueError (one sentence) when an answer is not the asked slice of the asked volume, or its
    labels and records disagree: nothing of such an answer is written."""
    if tuple(result.volume_shape_ijk) != tuple(int(n) for n in shape_ijk):
        raise ValueError(f"the server answered for a volume of shape {result.volume_shape_ijk}, not {tuple(shape_ijk)}")
    if (result.slice_axis, result.slice_index) != (int(voxel_axis), int(slice_index)):
        raise ValueError(
            f"the server answered slice {result.slice_index} across voxel axis {result.slice_axis}, "
            f"not slice {slice_index} across axis {voxel_axis}"
        )
    size = result.labels.shape[2 - int(voxel_axis)]
    if size != 1 or result.offset_ijk[voxel_axis] != int(slice_index):
        raise ValueError("the server's label block is not the one slice asked for")
    i0, i1, j0, j1, k0, k1 = result.extent()
    if min(i0, j0, k0) < 0 or any(high >= n for high, n in zip((i1, j1, k1), result.volume_shape_ijk)):
        raise ValueError("the server's label block reaches outside the volume")
    known = set(result.records_by_label())
    unknown = [label for label in result.visible_labels() if label not in known]
    if unknown:
        raise ValueError(f"the server's labels {unknown[:5]} have no record")
