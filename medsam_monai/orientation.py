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
This module needs numpy only (no nibabel), so that it also runs inside 3D Slicer's Python.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

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

# Voxel centres tested per step when searching oblique boxes (keeps memory to some 50 MB).
_SEARCH_CHUNK = 1 << 20


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
    """``affine`` as a float (4, 4) array, refusing non-finite or singular matrices."""
    a = np.asarray(affine, dtype=float)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)):
        raise ValueError(f"affine must be a finite 4x4 matrix, got shape {a.shape}")
    if abs(np.linalg.det(a[:3, :3])) < 1e-12:
        raise ValueError("affine is singular: its 3x3 part maps voxels onto a plane")
    return a


def voxel_axis_codes(affine: np.ndarray) -> list[tuple[int, int]]:
    """For each voxel axis i, j, k: the closest RAS world axis (0, 1, 2) and its sign (+1/-1).

    The 3x3 part is first replaced by its closest rotation (polar decomposition), so scaling and
    mild shear do not matter; then the largest cosines are assigned greedily, which gives every
    voxel axis a different world axis even for strongly oblique matrices.
    """
    a = check_affine(affine)
    u, _, vt = np.linalg.svd(a[:3, :3])
    cosines = u @ vt  # [world, voxel]
    codes: list[tuple[int, int]] = [(-1, 0)] * 3
    remaining = np.abs(cosines)
    for _ in range(3):
        world, voxel = np.unravel_index(int(np.argmax(remaining)), remaining.shape)
        codes[voxel] = (int(world), 1 if cosines[world, voxel] > 0 else -1)
        remaining[world, :] = -1.0
        remaining[:, voxel] = -1.0
    return codes


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


def _is_axis_aligned(matrix: np.ndarray) -> bool:
    """True when each voxel axis moves along exactly one world axis (no rotation or shear)."""
    scale = np.abs(matrix).max()
    return bool(np.all(np.count_nonzero(np.abs(matrix) > 1e-12 * scale, axis=0) == 1))


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
    The result is clipped to the volume; ``None`` when no voxel centre lies in the box.
    """
    a = check_affine(affine)
    lo = np.minimum(np.asarray(ras_min, float), np.asarray(ras_max, float)) - tol
    hi = np.maximum(np.asarray(ras_min, float), np.asarray(ras_max, float)) + tol
    shape = np.asarray(shape_ijk, dtype=np.int64)
    # The box's 8 corners in voxel coordinates bound every centre inside it (the box maps to a
    # parallelepiped), so only that sub-block needs testing.
    inverse = np.linalg.inv(a)
    corners = np.array(list(itertools.product(*zip(lo, hi))))
    corners_ijk = corners @ inverse[:3, :3].T + inverse[:3, 3]
    start = np.maximum(np.ceil(corners_ijk.min(axis=0) - 1e-9), 0).astype(np.int64)
    stop = np.minimum(np.floor(corners_ijk.max(axis=0) + 1e-9), shape - 1).astype(np.int64)
    if np.any(start > stop):
        return None
    if _is_axis_aligned(a[:3, :3]):
        # The parallelepiped is itself an IJK-aligned box: the sub-block is the answer.
        return (*map(int, start), *map(int, stop))  # type: ignore[return-value]
    return _search_block(a, lo, hi, start, stop)


def _search_block(a: np.ndarray, lo: np.ndarray, hi: np.ndarray, start: np.ndarray, stop: np.ndarray) -> Box | None:
    """Exact bounding box of the inside centres of the voxel block ``start..stop`` (oblique affines)."""
    # The RAS box is convex: if the block's 8 corner centres are inside, every centre is.
    block_corners = np.array(list(itertools.product(*zip(start, stop))), dtype=float)
    corner_ras = block_corners @ a[:3, :3].T + a[:3, 3]
    if np.all((corner_ras >= lo) & (corner_ras <= hi)):
        return (*map(int, start), *map(int, stop))  # type: ignore[return-value]
    ranges = [np.arange(s, e + 1) for s, e in zip(start, stop)]
    occupied = [np.zeros(len(r), dtype=bool) for r in ranges]
    # RAS of j and k offsets once; i planes are added in chunks to bound memory (~4M points).
    jk = (ranges[1][:, None, None] * a[:3, 1] + ranges[2][None, :, None] * a[:3, 2]) + a[:3, 3]
    chunk = max(1, _SEARCH_CHUNK // max(1, jk.shape[0] * jk.shape[1]))
    for first in range(0, len(ranges[0]), chunk):
        i_values = ranges[0][first : first + chunk]
        points = i_values[:, None, None, None] * a[:3, 0] + jk[None]
        inside = np.all((points >= lo) & (points <= hi), axis=-1)
        occupied[0][first : first + chunk] |= inside.any(axis=(1, 2))
        occupied[1] |= inside.any(axis=(0, 2))
        occupied[2] |= inside.any(axis=(0, 1))
    if not occupied[0].any():
        return None
    first_last = [(r[np.flatnonzero(o)[0]], r[np.flatnonzero(o)[-1]]) for r, o in zip(ranges, occupied)]
    return (
        int(first_last[0][0]),
        int(first_last[1][0]),
        int(first_last[2][0]),
        int(first_last[0][1]),
        int(first_last[1][1]),
        int(first_last[2][1]),
    )
