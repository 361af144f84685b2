"""The main job: a volume and voxel (or RAS) boxes -> a 3D label volume on the input's own grid.

Joins intensity normalisation, display orientation and the predictor: the volume is windowed
(CT) or normalised (MR), reoriented by axis permutation and flips so that each slice along the
chosen axis is in radiological display orientation, segmented by MedSAM's 3D propagation, and the
labels are mapped back to the input's voxel order.
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Real

import numpy as np

from .io import Volume
from .orientation import box_ijk_to_display, display_layout, from_display, parse_axis, to_display
from .predictor import CancelCheck, MedSAMPredictor, ObjectPrompt, ProgressCallback
from .propagation import key_slice
from .transforms import IntensityForModality

# one home of voxel boxes, below the predictor; ras_box_to_voxel_box is re-exported for the faces
from .transforms.boxes import VoxelBox, check_voxel_box, ras_box_to_voxel_box  # noqa: F401

BoxLike = VoxelBox | Sequence[float]


def as_voxel_boxes(boxes: BoxLike | Sequence[BoxLike]) -> list[VoxelBox]:
    """The boxes as :class:`VoxelBox` objects: each item a VoxelBox (kept as it is) or six numbers
    ``(i0, j0, k0, i1, j1, k1)`` (a tuple, list or array), which gets label n for the n-th item
    (1, 2, ... in order). One box alone, not in a list, is taken too. One-line ValueError otherwise.
    """
    if isinstance(boxes, VoxelBox) or _is_six_numbers(boxes):
        boxes = [boxes]  # type: ignore[list-item]
    out = []
    for n, item in enumerate(boxes, start=1):  # type: ignore[arg-type]
        if isinstance(item, VoxelBox):
            out.append(item)
        elif _is_six_numbers(item):
            out.append(VoxelBox(tuple(np.asarray(item).tolist()), label=n))  # Python numbers, as VoxelBox holds
        else:
            raise ValueError(f"box {n} must be a VoxelBox or 6 numbers (i0, j0, k0, i1, j1, k1), got {item!r}")
    return out


def _is_six_numbers(item: object) -> bool:
    if isinstance(item, (str, bytes)) or not isinstance(item, (Sequence, np.ndarray)):
        return False
    values = list(item)  # type: ignore[call-overload]
    return len(values) == 6 and all(isinstance(v, Real) and not isinstance(v, bool) for v in values)


def normalized_volume(volume: Volume, modality: str = "ct", window: object = None) -> np.ndarray:
    """The volume's intensities as MedSAM was trained on them (uint8, same voxel order)."""
    return np.asarray(IntensityForModality(modality=modality, window=window)(volume.array))


def segment_volume(
    predictor: MedSAMPredictor,
    volume: Volume,
    boxes: BoxLike | Sequence[BoxLike],
    axis: str = "axial",
    modality: str = "ct",
    window: object = None,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
    intensities: np.ndarray | None = None,
) -> np.ndarray:
    """Segment every box in 3D along ``axis``.

    Each box's extent along the slicing axis is the slice range (one slice when it is zero);
    its in-plane extent is the box on the key slice. A box is a :class:`VoxelBox` or six numbers
    ``(i0, j0, k0, i1, j1, k1)``, inclusive voxel indices, labelled 1, 2, ... in order (see
    :func:`as_voxel_boxes`). ``intensities`` is the output of
    :func:`normalized_volume` for the same volume, modality and window when the caller already
    has it (a preview needs it too); otherwise it is computed here.

    Returns:
        Labels ``[i, j, k]`` on the input's grid (uint8, or uint16 for labels above 255).
    """
    boxes = as_voxel_boxes(boxes)
    if not boxes:
        raise ValueError("give at least one box")
    if intensities is None:
        intensities = normalized_volume(volume, modality, window)
    elif intensities.shape != volume.shape or intensities.dtype != np.uint8:
        raise ValueError(
            f"intensities must be uint8 of the volume's shape {volume.shape}, got {intensities.dtype} {intensities.shape}"
        )
    layout = display_layout(volume.affine, parse_axis(axis))
    display = np.ascontiguousarray(to_display(intensities, layout))
    objects = []
    for item in boxes:
        ijk = check_voxel_box(item.box, volume.shape)
        s0, r0, c0, s1, r1, c1 = box_ijk_to_display(ijk, volume.shape, layout)
        objects.append(ObjectPrompt((c0, r0, s0, c1, r1, s1), label=item.label))
    labels = predictor.segment_3d(display, objects, progress=progress, cancel=cancel)
    return np.ascontiguousarray(from_display(labels, layout))


def dice(truth: np.ndarray, found: np.ndarray) -> float:
    """Dice overlap of two boolean masks (1.0 when both are empty)."""
    total = int(truth.sum() + found.sum())
    return 1.0 if total == 0 else 2.0 * float((truth & found).sum()) / total


def key_slices_ijk(boxes: BoxLike | Sequence[BoxLike], volume: Volume, axis: str) -> list[int]:
    """The display slice index of each box's key slice (for previews)."""
    layout = display_layout(volume.affine, parse_axis(axis))
    keys = []
    for item in as_voxel_boxes(boxes):
        s0, _, _, s1, _, _ = box_ijk_to_display(check_voxel_box(item.box, volume.shape), volume.shape, layout)
        keys.append(key_slice(s0, s1))
    return keys
