"""The main job: a volume and voxel (or RAS) boxes -> a 3D label volume on the input's own grid.

Joins intensity normalisation, display orientation and the predictor: the volume is windowed
(CT) or normalised (MR), reoriented by axis permutation and flips so that each slice along the
chosen axis is in radiological display orientation, segmented by MedSAM's 3D propagation, and the
labels are mapped back to the input's voxel order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .io import Volume
from .orientation import box_ijk_to_display, display_layout, from_display, parse_axis, ras_box_to_ijk, to_display
from .predictor import CancelCheck, MedSAMPredictor, ObjectPrompt, ProgressCallback
from .transforms import IntensityForModality


@dataclass(frozen=True)
class VoxelBox:
    """An inclusive box ``(i0, j0, k0, i1, j1, k1)`` in the volume's own voxel indices, and its label."""

    box: tuple[int, int, int, int, int, int]
    label: int = 1


def check_voxel_box(box: Sequence[float], shape: Sequence[int]) -> tuple[int, int, int, int, int, int]:
    """Validate an IJK box against a volume shape; one-line ValueError otherwise."""
    if len(box) != 6:
        raise ValueError(f"a box has 6 numbers I0,J0,K0,I1,J1,K1, got {len(box)}")
    if not all(np.isfinite(v) and float(v) == int(v) for v in box):
        raise ValueError(f"box {tuple(box)}: voxel indices must be whole numbers")
    lo, hi = [int(v) for v in box[:3]], [int(v) for v in box[3:]]
    if any(a > b for a, b in zip(lo, hi)):
        raise ValueError(f"box {tuple(box)} is reversed: give I0,J0,K0 (the lower corner) first")
    if any(a < 0 for a in lo) or any(b >= n for b, n in zip(hi, shape)):
        raise ValueError(f"box {tuple(box)} is outside the image (voxel indices 0..{tuple(n - 1 for n in shape)})")
    return (*lo, *hi)  # type: ignore[return-value]


def ras_box_to_voxel_box(ras_box: Sequence[float], volume: Volume) -> tuple[int, int, int, int, int, int]:
    """The inclusive IJK box of the voxels whose centres lie in an RAS box ``(x0, y0, z0, x1, y1, z1)`` mm."""
    if len(ras_box) != 6 or not all(np.isfinite(ras_box)):
        raise ValueError(f"an RAS box has 6 finite numbers X0,Y0,Z0,X1,Y1,Z1 (mm), got {tuple(ras_box)}")
    box = ras_box_to_ijk(ras_box[:3], ras_box[3:], volume.affine, volume.shape)
    if box is None:
        raise ValueError(f"RAS box {tuple(ras_box)} mm contains no voxel centre of the image")
    return tuple(int(v) for v in box)  # type: ignore[return-value]


def normalized_volume(volume: Volume, modality: str = "ct", window: object = None) -> np.ndarray:
    """The volume's intensities as MedSAM was trained on them (uint8, same voxel order)."""
    return np.asarray(IntensityForModality(modality=modality, window=window)(volume.array))


def segment_volume(
    predictor: MedSAMPredictor,
    volume: Volume,
    boxes: Sequence[VoxelBox],
    axis: str = "axial",
    modality: str = "ct",
    window: object = None,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
    intensities: np.ndarray | None = None,
) -> np.ndarray:
    """Segment every box in 3D along ``axis``.

    Each box's extent along the slicing axis is the slice range (one slice when it is zero);
    its in-plane extent is the box on the key slice. ``intensities`` is the output of
    :func:`normalized_volume` for the same volume, modality and window when the caller already
    has it (a preview needs it too); otherwise it is computed here.

    Returns:
        Labels ``[i, j, k]`` on the input's grid (uint8, or uint16 for labels above 255).
    """
    if not boxes:
        raise ValueError("give at least one box")
    if intensities is None:
        intensities = normalized_volume(volume, modality, window)
    elif intensities.shape != volume.shape or intensities.dtype != np.uint8:
        raise ValueError(f"intensities must be uint8 of the volume's shape {volume.shape}, got {intensities.dtype} {intensities.shape}")
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


def key_slices_ijk(boxes: Sequence[VoxelBox], volume: Volume, axis: str) -> list[int]:
    """The display slice index of each box's key slice (for previews)."""
    layout = display_layout(volume.affine, parse_axis(axis))
    keys = []
    for item in boxes:
        s0, _, _, s1, _, _ = box_ijk_to_display(check_voxel_box(item.box, volume.shape), volume.shape, layout)
        keys.append(int((s1 - s0) / 2 + s0))
    return keys
