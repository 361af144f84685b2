"""Radiological display orientation of volume slices, by axis permutation and flips only.

A volume is an array indexed ``[i, j, k]`` in the file's own voxel order plus a 4x4 ``affine``
mapping voxel centres (0-based IJK) to RAS millimetres (3D Slicer's world frame: +x toward the
patient's Right, +y Anterior, +z Superior).

MedSAM sees 2D slices as a radiologist does. The *display array* is indexed ``[slice, row, col]``:

- ``axial``: slice index increases toward superior; rows run anterior -> posterior, columns
  run the patient's right -> left.
- ``coronal``: slice index increases toward anterior; rows run superior -> inferior, columns
  right -> left.
- ``sagittal``: slice index increases toward the patient's LEFT (right -> left); rows run
  superior -> inferior, columns anterior -> posterior.

Sagittal slices run right -> left so that the sagittal slice index equals the column index of the
axial and coronal displays (the same voxel keeps the same left-right coordinate in all three).

Oblique acquisitions are not resampled: each voxel axis is assigned the closest world axis, so a
slice of a 10-degree oblique scan is shown as the scan's own slice, merely permuted and flipped.
This module needs numpy only (no nibabel), so that it also runs inside 3D Slicer's Python. The
matrix checks, voxel-axis assignment and RAS boxes are the wire protocol's, the very code the 3D
Slicer client runs: :mod:`medsam_monai.wire`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from . import wire

AXES: tuple[str, str, str] = ("axial", "coronal", "sagittal")

_ALIASES: dict[str, str] = {
    "axial": "axial",
    "ax": "axial",
    "axi": "axial",
    "transverse": "axial",
    "transversal": "axial",
    "tra": "axial",
    "coronal": "coronal",
    "cor": "coronal",
    "frontal": "coronal",
    "sagittal": "sagittal",
    "sag": "sagittal",
}

# For each axis, the display dims (slice, row, col) as (RAS world axis, sign): sign +1 means the
# display index increases toward +world (R, A or S), -1 toward -world (L, P or I).
_TARGETS: dict[str, tuple[tuple[int, int], tuple[int, int], tuple[int, int]]] = {
    "axial": ((2, +1), (1, -1), (0, -1)),
    "coronal": ((1, +1), (2, -1), (0, -1)),
    "sagittal": ((0, -1), (2, -1), (1, -1)),
}

Box = tuple[int, int, int, int, int, int]


@dataclass(frozen=True)
class DisplayLayout:
    """How to get the display array ``[slice, row, col]`` from the volume array ``[i, j, k]``.

    ``display = np.flip(volume.transpose(permutation), axis=[d for d, f in enumerate(flips) if f])``:
    display dim ``d`` is voxel axis ``permutation[d]``, reversed when ``flips[d]``.
    """

    axis: str
    permutation: tuple[int, int, int]
    flips: tuple[bool, bool, bool]


def parse_axis(name: str) -> str:
    """Canonical axis name (``axial``, ``coronal`` or ``sagittal``) for ``name`` or a common alias."""
    key = str(name).strip().lower()
    if key not in _ALIASES:
        raise ValueError(f"unknown slicing axis {name!r}; expected one of {', '.join(AXES)}")
    return _ALIASES[key]


def check_affine(affine: np.ndarray) -> np.ndarray:
    """``affine`` as a float (4, 4) array, refusing non-finite or singular matrices (ValueError)."""
    return wire.check_matrix(affine, "affine")


def voxel_axis_codes(affine: np.ndarray) -> list[tuple[int, int]]:
    """For each voxel axis i, j, k: the closest RAS world axis (0, 1, 2) and its sign (+1/-1).

    The 3x3 part is first replaced by its closest rotation (polar decomposition), so scaling and
    mild shear do not matter; then the largest cosines are assigned greedily, which gives every
    voxel axis a different world axis even for strongly oblique matrices.
    """
    return wire.voxel_axis_codes(check_affine(affine))


def display_layout(affine: np.ndarray, axis: str) -> DisplayLayout:
    """The permutation and flips that show volumes with this ``affine`` along ``axis``."""
    name = parse_axis(axis)
    codes = voxel_axis_codes(affine)
    voxel_of_world = {world: voxel for voxel, (world, _) in enumerate(codes)}
    permutation: list[int] = []
    flips: list[bool] = []
    for world, sign in _TARGETS[name]:
        voxel = voxel_of_world[world]
        permutation.append(voxel)
        flips.append(codes[voxel][1] != sign)
    return DisplayLayout(name, tuple(permutation), tuple(flips))  # type: ignore[arg-type]


def _flip_axes(layout: DisplayLayout) -> tuple[int, ...]:
    return tuple(d for d, flipped in enumerate(layout.flips) if flipped)


def to_display(array: np.ndarray, layout: DisplayLayout) -> np.ndarray:
    """The display array ``[slice, row, col, ...]`` of ``array[i, j, k, ...]`` (a view, no copy).

    Trailing dims beyond the first three (channels, say) are kept in place.
    """
    if array.ndim < 3:
        raise ValueError(f"expected an array with at least 3 dims, got shape {array.shape}")
    out = array.transpose(layout.permutation + tuple(range(3, array.ndim)))
    axes = _flip_axes(layout)
    return np.flip(out, axis=axes) if axes else out


def from_display(display_array: np.ndarray, layout: DisplayLayout) -> np.ndarray:
    """The exact inverse of :func:`to_display`: back to ``[i, j, k, ...]`` order (a view)."""
    if display_array.ndim < 3:
        raise ValueError(f"expected an array with at least 3 dims, got shape {display_array.shape}")
    axes = _flip_axes(layout)
    out = np.flip(display_array, axis=axes) if axes else display_array
    inverse = tuple(int(v) for v in np.argsort(layout.permutation))
    return out.transpose(inverse + tuple(range(3, display_array.ndim)))


def display_shape(shape_ijk: Sequence[int], layout: DisplayLayout) -> tuple[int, int, int]:
    """``(slices, rows, cols)`` of the display array of a volume of shape ``shape_ijk``."""
    return tuple(int(shape_ijk[v]) for v in layout.permutation)  # type: ignore[return-value]


def display_to_ijk_matrix(shape_ijk: Sequence[int], layout: DisplayLayout) -> np.ndarray:
    """The integer 4x4 matrix mapping homogeneous display indices (s, r, c, 1) to (i, j, k, 1)."""
    m = np.zeros((4, 4), dtype=np.int64)
    m[3, 3] = 1
    for d, (voxel, flipped) in enumerate(zip(layout.permutation, layout.flips)):
        m[voxel, d] = -1 if flipped else 1
        m[voxel, 3] = int(shape_ijk[voxel]) - 1 if flipped else 0
    return m


def _apply(matrix: np.ndarray, index: Sequence[int]) -> tuple[int, int, int]:
    point = matrix @ np.array([*map(int, index), 1], dtype=np.int64)
    return int(point[0]), int(point[1]), int(point[2])


def display_index_to_ijk(index: Sequence[int], shape_ijk: Sequence[int], layout: DisplayLayout) -> tuple[int, int, int]:
    """Voxel index ``(i, j, k)`` of the display voxel ``(slice, row, col)``."""
    return _apply(display_to_ijk_matrix(shape_ijk, layout), index)


def ijk_to_display_index(index: Sequence[int], shape_ijk: Sequence[int], layout: DisplayLayout) -> tuple[int, int, int]:
    """Display index ``(slice, row, col)`` of the voxel ``(i, j, k)``."""
    # The matrix is a signed permutation with integer offsets, so its inverse is integer too.
    inverse = np.rint(np.linalg.inv(display_to_ijk_matrix(shape_ijk, layout))).astype(np.int64)
    return _apply(inverse, index)


def nearest_voxel(point_ras: Sequence[float], affine: np.ndarray, shape_ijk: Sequence[int]) -> tuple[int, int, int] | None:
    """The voxel ``(i, j, k)`` whose centre is nearest to a point in RAS mm, or None when that voxel
    lies outside a volume of ``shape_ijk`` (or the point is not finite)."""
    nearest = np.rint(wire.ras_to_ijk(point_ras, check_affine(affine))[0])
    # Checked before turning into integers: a far point must be "outside", not an overflow.
    if not np.all(np.isfinite(nearest)) or np.any(nearest < 0) or np.any(nearest >= np.asarray(shape_ijk[:3])):
        return None
    return int(nearest[0]), int(nearest[1]), int(nearest[2])


def slice_to_display(voxel_index: int, shape_ijk: Sequence[int], layout: DisplayLayout) -> int:
    """The display slice of voxel index ``voxel_index`` along the voxel axis the slices run along
    (``k`` for an axial slice of an RAS volume); no range check."""
    index = [0, 0, 0]
    index[layout.permutation[0]] = int(voxel_index)
    return ijk_to_display_index(index, shape_ijk, layout)[0]


def slice_to_voxel(display_slice: int, shape_ijk: Sequence[int], layout: DisplayLayout) -> int:
    """The inverse of :func:`slice_to_display`: the voxel index along the slicing voxel axis of a display slice."""
    return display_index_to_ijk((int(display_slice), 0, 0), shape_ijk, layout)[layout.permutation[0]]


def display_pixel_spacing(affine: np.ndarray, layout: DisplayLayout) -> tuple[float, float]:
    """(row, col) spacing in mm of the display slices: the lengths of the voxel axes they run along."""
    row, col = (float(np.linalg.norm(np.asarray(affine, dtype=float)[:3, v])) for v in layout.permutation[1:])
    return row, col


def display_affine(affine: np.ndarray, shape_ijk: Sequence[int], layout: DisplayLayout) -> np.ndarray:
    """The affine of the display array: display indices (slice, row, col) to RAS millimetres."""
    return check_affine(affine) @ display_to_ijk_matrix(shape_ijk, layout)


def _sorted_box(a: Sequence[int], b: Sequence[int]) -> Box:
    lo = [min(x, y) for x, y in zip(a, b)]
    hi = [max(x, y) for x, y in zip(a, b)]
    return (lo[0], lo[1], lo[2], hi[0], hi[1], hi[2])


def box_ijk_to_display(box_ijk: Sequence[int], shape_ijk: Sequence[int], layout: DisplayLayout) -> Box:
    """Inclusive voxel box ``(i0, j0, k0, i1, j1, k1)`` as the display box ``(s0, r0, c0, s1, r1, c1)``."""
    return _sorted_box(
        ijk_to_display_index(box_ijk[:3], shape_ijk, layout),
        ijk_to_display_index(box_ijk[3:], shape_ijk, layout),
    )


def box_display_to_ijk(box_display: Sequence[int], shape_ijk: Sequence[int], layout: DisplayLayout) -> Box:
    """Inclusive display box ``(s0, r0, c0, s1, r1, c1)`` as the voxel box ``(i0, j0, k0, i1, j1, k1)``."""
    return _sorted_box(
        display_index_to_ijk(box_display[:3], shape_ijk, layout),
        display_index_to_ijk(box_display[3:], shape_ijk, layout),
    )


def ras_box_to_ijk(
    ras_min: Sequence[float],
    ras_max: Sequence[float],
    affine: np.ndarray,
    shape_ijk: Sequence[int],
    *,
    tol: float = 1e-6,
) -> Box | None:
    """Inclusive voxel box of the voxels whose centres lie in an axis-aligned RAS box.

    The corners may be given in any order; centres on a face (within ``tol`` mm) count as inside.
    The result is clipped to the volume; ``None`` when no voxel centre lies in the box. Oblique
    affines get the exact bounding box of the inside centres.
    """
    return wire.ras_box_to_ijk(ras_min, ras_max, check_affine(affine), shape_ijk, tolerance=tol)
