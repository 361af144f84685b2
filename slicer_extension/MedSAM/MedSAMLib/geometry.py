"""Voxel geometry for the MedSAM Slicer module, in numpy only (no Slicer, no VTK).

Conventions, the same as the ``medsam`` server's:

- ``ijk_to_ras`` is the 4x4 matrix from 0-based voxel indices (i, j, k) of voxel *centres* to
  RAS millimetres (3D Slicer's world frame: +x Right, +y Anterior, +z Superior).
- ``shape_ijk`` is the voxel count along i, j, k. Slicer's ``arrayFromVolume`` arrays are indexed
  ``[k, j, i]``; functions that take arrays say so and use that order.
- Boxes are inclusive voxel index boxes ``(i0, j0, k0, i1, j1, k1)``.
- A slicing axis is ``axial``, ``coronal`` or ``sagittal``: the server cuts the volume along the
  voxel axis closest to S, A or R respectively (a voxel axis, never a resampled plane).
"""

from __future__ import annotations

import itertools
import math

import numpy as np

AXES = ("axial", "coronal", "sagittal")

# The RAS world axis each slicing axis is perpendicular to: sagittal slices are cut along R-L,
# coronal along A-P, axial along S-I.
WORLD_AXIS_OF_SLICING_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}
SLICING_AXIS_OF_WORLD_AXIS = {world: name for name, world in WORLD_AXIS_OF_SLICING_AXIS.items()}

MERGE_MODES = ("replace", "add")

# Voxel centres tested per step when searching oblique boxes (bounds memory to some 100 MB).
_CHUNK_POINTS = 1 << 21


class GeometryError(ValueError):
    """A geometry problem the user can fix (a box outside the image, a singular matrix...)."""


class ObliqueViewError(GeometryError):
    """The slice view is too far from axial, coronal and sagittal to pick a slicing axis."""


def check_matrix(matrix) -> np.ndarray:
    """``matrix`` as a finite, invertible float (4, 4) array."""
    m = np.asarray(matrix, dtype=float)
    if m.shape != (4, 4) or not np.all(np.isfinite(m)):
        raise GeometryError(f"expected a finite 4x4 matrix, got shape {m.shape}")
    if abs(np.linalg.det(m[:3, :3])) < 1e-12:
        raise GeometryError("the IJK-to-RAS matrix is singular: its voxels would lie on a plane")
    return m


def check_shape(shape_ijk) -> tuple[int, int, int]:
    """``shape_ijk`` as three positive ints."""
    shape = tuple(int(n) for n in shape_ijk)
    if len(shape) != 3 or min(shape) < 1:
        raise GeometryError(f"expected three positive voxel counts (I, J, K), got {tuple(shape_ijk)}")
    return shape  # type: ignore[return-value]


def ras_to_ijk(points_ras, ijk_to_ras) -> np.ndarray:
    """Continuous voxel indices (N, 3) of RAS points (N, 3)."""
    inverse = np.linalg.inv(check_matrix(ijk_to_ras))
    points = np.atleast_2d(np.asarray(points_ras, dtype=float))
    return points @ inverse[:3, :3].T + inverse[:3, 3]


def ijk_to_ras_points(points_ijk, ijk_to_ras) -> np.ndarray:
    """RAS points (N, 3) of voxel indices (N, 3)."""
    m = check_matrix(ijk_to_ras)
    points = np.atleast_2d(np.asarray(points_ijk, dtype=float))
    return points @ m[:3, :3].T + m[:3, 3]


def volume_ras_bounds(ijk_to_ras, shape_ijk) -> tuple[np.ndarray, np.ndarray]:
    """Smallest and largest RAS coordinates of the volume's voxel centres."""
    shape = check_shape(shape_ijk)
    corners = np.array(list(itertools.product(*[(0, n - 1) for n in shape])), dtype=float)
    ras = ijk_to_ras_points(corners, ijk_to_ras)
    return ras.min(axis=0), ras.max(axis=0)


def _is_axis_aligned(linear: np.ndarray) -> bool:
    """True when every voxel axis moves along exactly one world axis (flips and permutations)."""
    scale = float(np.abs(linear).max())
    return bool(np.all(np.count_nonzero(np.abs(linear) > 1e-12 * scale, axis=0) == 1))


def ras_box_to_ijk(ras_min, ras_max, ijk_to_ras, shape_ijk, tolerance: float = 1e-6):
    """Inclusive IJK box ``(i0, j0, k0, i1, j1, k1)`` of the voxels whose centres lie in an RAS box.

    The RAS box is axis-aligned in RAS, given by two opposite corners in any order; centres on a
    face (within ``tolerance`` mm) count as inside. The result is clipped to the volume, and is
    ``None`` when no voxel centre lies inside. For oblique matrices the box is the exact bounding
    box of the inside centres (not of the RAS box's corners).
    """
    m = check_matrix(ijk_to_ras)
    shape = np.asarray(check_shape(shape_ijk), dtype=np.int64)
    a = np.asarray(ras_min, dtype=float)
    b = np.asarray(ras_max, dtype=float)
    if a.shape != (3,) or b.shape != (3,) or not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise GeometryError("an RAS box needs two finite 3D corners")
    low = np.minimum(a, b) - tolerance
    high = np.maximum(a, b) + tolerance
    # The RAS box maps to a parallelepiped in index space; its corners' bounding block holds
    # every inside centre, so only that block needs looking at.
    corners = np.array(list(itertools.product(*zip(low, high))))
    corners_ijk = ras_to_ijk(corners, m)
    start = np.maximum(np.ceil(corners_ijk.min(axis=0) - 1e-9), 0).astype(np.int64)
    stop = np.minimum(np.floor(corners_ijk.max(axis=0) + 1e-9), shape - 1).astype(np.int64)
    if np.any(start > stop):
        return None
    if _is_axis_aligned(m[:3, :3]):
        # No rotation: the parallelepiped is an index-aligned box, so the block is exact.
        return (*(int(v) for v in start), *(int(v) for v in stop))
    return _inside_bounding_box(m, low, high, start, stop)


def _inside_bounding_box(m, low, high, start, stop):
    """Exact bounding box of the voxel centres of block ``start..stop`` that lie in [low, high]."""
    # The RAS box is convex: when the block's 8 corner centres are inside, all its centres are.
    block_corners = np.array(list(itertools.product(*zip(start, stop))), dtype=float)
    corner_ras = ijk_to_ras_points(block_corners, m)
    if np.all((corner_ras >= low) & (corner_ras <= high)):
        return (*(int(v) for v in start), *(int(v) for v in stop))
    i_values, j_values, k_values = (np.arange(s, e + 1) for s, e in zip(start, stop))
    used = [np.zeros(len(v), dtype=bool) for v in (i_values, j_values, k_values)]
    jk_ras = j_values[:, None, None] * m[:3, 1] + k_values[None, :, None] * m[:3, 2] + m[:3, 3]
    step = max(1, _CHUNK_POINTS // max(1, len(j_values) * len(k_values)))
    for first in range(0, len(i_values), step):
        chunk = i_values[first : first + step]
        ras = chunk[:, None, None, None] * m[:3, 0] + jk_ras[None]
        inside = np.all((ras >= low) & (ras <= high), axis=-1)
        used[0][first : first + step] |= inside.any(axis=(1, 2))
        used[1] |= inside.any(axis=(0, 2))
        used[2] |= inside.any(axis=(0, 1))
    if not used[0].any():
        return None
    values = (i_values, j_values, k_values)
    lows = [int(v[np.flatnonzero(u)[0]]) for v, u in zip(values, used)]
    highs = [int(v[np.flatnonzero(u)[-1]]) for v, u in zip(values, used)]
    return (*lows, *highs)


def voxel_axis_codes(ijk_to_ras) -> list[tuple[int, int]]:
    """For voxel axes i, j, k: the closest RAS axis (0, 1, 2) and the direction (+1 or -1).

    The same assignment as the server's: the 3x3 part is replaced by its closest rotation (polar
    decomposition, so spacing and mild shear do not matter), then the largest cosines are taken
    greedily, which gives every voxel axis a different world axis even when strongly oblique.
    """
    m = check_matrix(ijk_to_ras)
    u, _, vt = np.linalg.svd(m[:3, :3])
    cosines = u @ vt  # [world, voxel]
    remaining = np.abs(cosines)
    codes = [(-1, 0)] * 3
    for _ in range(3):
        world, voxel = np.unravel_index(int(np.argmax(remaining)), remaining.shape)
        codes[int(voxel)] = (int(world), 1 if cosines[world, voxel] > 0 else -1)
        remaining[world, :] = -1.0
        remaining[:, voxel] = -1.0
    return codes


def parse_axis(name: str) -> str:
    """``axial``, ``coronal`` or ``sagittal`` (case-insensitive), else GeometryError."""
    key = str(name).strip().lower()
    if key not in AXES:
        raise GeometryError(f"unknown slicing axis {name!r}; expected one of {', '.join(AXES)}")
    return key


def slicing_voxel_axis(ijk_to_ras, axis: str) -> int:
    """The voxel axis (0 = i, 1 = j, 2 = k) the server cuts slices along for ``axis``."""
    world = WORLD_AXIS_OF_SLICING_AXIS[parse_axis(axis)]
    for voxel, (code_world, _) in enumerate(voxel_axis_codes(ijk_to_ras)):
        if code_world == world:
            return voxel
    raise AssertionError("voxel_axis_codes assigns every world axis")  # pragma: no cover


def view_axis(slice_to_ras, max_oblique_degrees: float = 20.0, oblique: str = "error") -> tuple[str, float]:
    """The slicing axis shown by a slice view, and how far (degrees) the view is from it.

    ``slice_to_ras`` is the view's 4x4 SliceToRAS matrix; its third column is the view normal.
    The axis is the anatomical axis closest to that normal. A view more than
    ``max_oblique_degrees`` away from it raises :class:`ObliqueViewError` unless ``oblique`` is
    ``"nearest"``, because the mask would then land on voxel slices the view does not show.
    """
    if oblique not in ("error", "nearest"):
        raise ValueError(f"oblique must be 'error' or 'nearest', got {oblique!r}")
    m = np.asarray(slice_to_ras, dtype=float)
    if m.shape != (4, 4) or not np.all(np.isfinite(m)):
        raise GeometryError(f"expected a finite 4x4 SliceToRAS matrix, got shape {m.shape}")
    normal = m[:3, 2]
    length = float(np.linalg.norm(normal))
    if length < 1e-12:
        raise GeometryError("the slice view's normal is zero")
    normal = normal / length
    world = int(np.argmax(np.abs(normal)))
    angle = math.degrees(math.acos(min(1.0, abs(float(normal[world])))))
    name = SLICING_AXIS_OF_WORLD_AXIS[world]
    if angle > max_oblique_degrees and oblique == "error":
        raise ObliqueViewError(
            f"the slice view is {angle:.1f} degrees away from {name}; MedSAM segments whole voxel slices, "
            f"so set the view to Axial, Coronal or Sagittal (or within {max_oblique_degrees:g} degrees of one)"
        )
    return name, angle


def slice_index_at(point_ras, ijk_to_ras, shape_ijk, voxel_axis: int):
    """Index along ``voxel_axis`` of the voxel slice nearest an RAS point; None outside the volume."""
    shape = check_shape(shape_ijk)
    index = int(np.floor(ras_to_ijk(point_ras, ijk_to_ras)[0][voxel_axis] + 0.5))
    return index if 0 <= index < shape[voxel_axis] else None


def one_slice_box(ras_min, ras_max, ijk_to_ras, shape_ijk, voxel_axis: int, index: int, tolerance: float = 1e-6):
    """In-plane box on one voxel slice: the centres of slice ``index`` within the RAS box's footprint.

    The RAS box's extent perpendicular to the slice (along the world axis closest to
    ``voxel_axis``) is ignored, so a flat box drawn on another slice still selects the same
    rows and columns here. Returns an inclusive IJK box with ``index`` as its slice range, or
    None when no centre of that slice lies in the footprint.
    """
    m = check_matrix(ijk_to_ras)
    shape = list(check_shape(shape_ijk))
    if not 0 <= index < shape[voxel_axis]:
        raise GeometryError(f"slice {index} is outside the volume (0..{shape[voxel_axis] - 1})")
    world = voxel_axis_codes(m)[voxel_axis][0]
    low = np.minimum(np.asarray(ras_min, float), np.asarray(ras_max, float))
    high = np.maximum(np.asarray(ras_min, float), np.asarray(ras_max, float))
    volume_low, volume_high = volume_ras_bounds(m, shape)
    low[world] = volume_low[world] - 1.0
    high[world] = volume_high[world] + 1.0
    # The slice as a one-voxel-thick volume of its own: shift the origin to the slice.
    offset = np.eye(4)
    offset[voxel_axis, 3] = index
    shape[voxel_axis] = 1
    box = ras_box_to_ijk(low, high, m @ offset, shape, tolerance)
    if box is None:
        return None
    box = list(box)
    box[voxel_axis] = box[voxel_axis + 3] = index
    return tuple(box)


def box_slice_range(box_ijk, voxel_axis: int) -> tuple[int, int]:
    """First and last slice index of an inclusive IJK box along ``voxel_axis``."""
    return int(box_ijk[voxel_axis]), int(box_ijk[voxel_axis + 3])


def points_to_ijk(points_ras, positive, ijk_to_ras, shape_ijk, slice_range=None, voxel_axis=None):
    """Prompt points as ``[((i, j, k), positive), ...]`` on the nearest voxel centres.

    Points outside the volume are dropped, and so are points off the slices ``slice_range``
    (inclusive) along ``voxel_axis`` when those are given: a point only steers the slices it is on.
    """
    shape = check_shape(shape_ijk)
    points = np.asarray(points_ras, dtype=float).reshape(-1, 3)
    signs = [bool(s) for s in positive]
    if len(signs) != len(points):
        raise GeometryError(f"{len(points)} points but {len(signs)} positive/negative flags")
    if not len(points):
        return []
    result = []
    for index, sign in zip(np.floor(ras_to_ijk(points, ijk_to_ras) + 0.5).astype(np.int64), signs):
        ijk = tuple(int(v) for v in index)
        if any(not 0 <= v < n for v, n in zip(ijk, shape)):
            continue
        if slice_range is not None and not slice_range[0] <= ijk[voxel_axis] <= slice_range[1]:
            continue
        result.append((ijk, sign))
    return result


def slab(voxel_axis: int, first: int, last: int) -> tuple[slice, slice, slice]:
    """Index of slices ``first..last`` (inclusive) along ``voxel_axis`` in a ``[k, j, i]`` array."""
    index = [slice(None)] * 3
    index[2 - voxel_axis] = slice(int(first), int(last) + 1)
    return tuple(index)  # type: ignore[return-value]


def merge_mask(current_kji, result_kji, voxel_axis: int, slice_range, mode: str = "replace") -> np.ndarray:
    """The segment after writing a server result into it (both uint8 ``[k, j, i]``, 0 = outside).

    ``replace``: on slices ``slice_range`` (inclusive, along ``voxel_axis``) the segment becomes the
    result; other slices keep the segment as it was. ``add``: the result's voxels on those slices are
    added to the segment. Nothing changes outside those slices in either mode. Returns a new array.
    """
    if mode not in MERGE_MODES:
        raise ValueError(f"merge mode must be one of {', '.join(MERGE_MODES)}, got {mode!r}")
    current = np.asarray(current_kji)
    result = np.asarray(result_kji)
    if current.shape != result.shape or current.ndim != 3:
        raise GeometryError(f"the result's shape {result.shape} does not match the volume's {current.shape}")
    first, last = (int(v) for v in slice_range)
    count = current.shape[2 - voxel_axis]
    if not 0 <= first <= last < count:
        raise GeometryError(f"slices {first}..{last} are outside the volume (0..{count - 1})")
    merged = (current > 0).astype(np.uint8)
    region = slab(voxel_axis, first, last)
    found = result[region] > 0
    if mode == "replace":
        merged[region] = found
    else:
        merged[region] |= found
    return merged
