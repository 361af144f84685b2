"""Boxes as prompts: voxel boxes of a volume, their validation, and boxes derived from label images.

A user's 3D box is a :class:`VoxelBox`: inclusive voxel indices ``(i0, j0, k0, i1, j1, k1)`` in the
volume's own order and the label its object gets. These are the types and checks every face shares
(the CLI, the bundle, the server and training); :mod:`medsam_monai.segment` takes them to the predictor.
Nothing here knows about the network.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..io import Volume
from ..masks import mask_box
from ..orientation import ras_box_to_ijk
from .functional import MODEL_INPUT_SIZE, scale_box_to_model

Box6 = tuple[int, int, int, int, int, int]


@dataclass(frozen=True)
class VoxelBox:
    """An inclusive box ``(i0, j0, k0, i1, j1, k1)`` in the volume's own voxel indices, and its label."""

    box: Box6
    label: int = 1


def check_voxel_box(box: Sequence[float], shape: Sequence[int]) -> Box6:
    """Validate an IJK box against a volume shape; one-line ValueError otherwise."""
    if len(box) != 6:
        raise ValueError(f"a box has 6 numbers I0,J0,K0,I1,J1,K1, got {len(box)}")
    if not all(np.isfinite(v) and float(v) == int(v) for v in box):
        raise ValueError(f"box {tuple(box)}: voxel indices must be whole numbers")
    lo, hi = [int(v) for v in box[:3]], [int(v) for v in box[3:]]
    if any(a > b for a, b in zip(lo, hi, strict=True)):
        raise ValueError(f"box {tuple(box)} is reversed: give I0,J0,K0 (the lower corner) first")
    if any(a < 0 for a in lo) or any(b >= n for b, n in zip(hi, shape, strict=False)):  # shape may name more axes than the box
        raise ValueError(f"box {tuple(box)} is outside the image (voxel indices 0..{tuple(n - 1 for n in shape)})")
    return (*lo, *hi)  # type: ignore[return-value]


def ras_box_to_voxel_box(ras_box: Sequence[float], volume: Volume) -> Box6:
    """The inclusive IJK box of the voxels whose centres lie in an RAS box ``(x0, y0, z0, x1, y1, z1)`` mm."""
    if len(ras_box) != 6 or not all(np.isfinite(ras_box)):
        raise ValueError(f"an RAS box has 6 finite numbers X0,Y0,Z0,X1,Y1,Z1 (mm), got {tuple(ras_box)}")
    box = ras_box_to_ijk(ras_box[:3], ras_box[3:], volume.affine, volume.shape)
    if box is None:
        raise ValueError(f"RAS box {tuple(ras_box)} mm contains no voxel centre of the image")
    return tuple(int(v) for v in box)  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# boxes from label images
# --------------------------------------------------------------------------------------------


def label_values_of(array: np.ndarray) -> list[int]:
    """The label values > 0 of a label image; one-line ValueError when it holds other than whole numbers >= 0."""
    present = np.unique(array)
    if present.size and (not np.all(np.mod(present, 1) == 0) or present.min() < 0):
        raise ValueError("the label image holds values that are not whole numbers >= 0")
    return [int(v) for v in present if v > 0]


def present_labels(label_slice: np.ndarray, min_pixels: int = 1) -> list[int]:
    """Label values (> 0) covering at least ``min_pixels`` pixels of a slice."""
    values, counts = np.unique(label_slice[label_slice > 0], return_counts=True)
    return [int(v) for v, c in zip(values, counts, strict=True) if c >= min_pixels]


def jittered_voxel_box(mask: np.ndarray, jitter: int, rng: np.random.Generator) -> Box6:
    """A 3D mask's tight box with each of its six faces moved outward by a random 0..``jitter`` voxels, clipped."""
    lo, hi = mask_box(mask)
    grow = rng.integers(0, jitter + 1, size=6) if jitter else np.zeros(6, dtype=int)
    lo = [max(0, v - int(g)) for v, g in zip(lo, grow[:3], strict=True)]
    hi = [min(n - 1, v + int(g)) for v, g, n in zip(hi, grow[3:], mask.shape, strict=True)]
    return (*lo, *hi)  # type: ignore[return-value]


def tight_boxes(label_slice: np.ndarray, values: Sequence[int], size: int = MODEL_INPUT_SIZE) -> np.ndarray:
    """Rows ``[value, x0, y0, x1, y1]``: each value's tight box on a (H, W) slice, scaled to the model frame.

    The scaling is inference's own (:func:`~.functional.scale_box_to_model`), so a training box and a
    user's box around the same pixels are the same numbers.
    """
    rows = []
    for value in values:
        (y0, x0), (y1, x1) = mask_box(label_slice == value)
        box = np.array([x0, y0, x1, y1], dtype=np.float64)
        rows.append([value, *scale_box_to_model(box, label_slice.shape, size)])
    return np.array(rows, dtype=np.float64).reshape(-1, 5)
