"""Voxel geometry for the MedSAM Slicer module, in numpy only (no Slicer, no VTK).

Conventions, the same as the ``medsam`` server's (the matrix checks, RAS <-> IJK conversions,
RAS boxes and voxel-axis assignment are the protocol's own, in :mod:`MedSAMLib.wire`, which the
server runs too; this module adds what the Slicer module needs on top of them):

- ``ijk_to_ras`` is the 4x4 matrix from 0-based voxel indices (i, j, k) of voxel *centres* to
  RAS millimetres (3D Slicer's world frame: +x Right, +y Anterior, +z Superior).
- ``shape_ijk`` is the voxel count along i, j, k. Slicer's ``arrayFromVolume`` arrays are indexed
  ``[k, j, i]``; functions that take arrays say so and use that order.
- Boxes are inclusive voxel index boxes ``(i0, j0, k0, i1, j1, k1)``.
- A slicing axis is ``axial``, ``coronal`` or ``sagittal``: the server cuts the volume along the
  voxel axis closest to S, A or R respectively (a voxel axis, never a resampled plane).
"""

from __future__ import annotations

import math

import numpy as np

from .wire import (  # noqa: F401  (re-exported: the module's callers use them from here)
    GeometryError,
    check_matrix,
    check_shape,
    ijk_to_ras_points,
    ras_box_to_ijk,
    ras_to_ijk,
    volume_ras_bounds,
    voxel_axis_codes,
)

AXES = ("axial", "coronal", "sagittal")

# The RAS world axis each slicing axis is perpendicular to: sagittal slices are cut along R-L,
# coronal along A-P, axial along S-I.
WORLD_AXIS_OF_SLICING_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}
SLICING_AXIS_OF_WORLD_AXIS = {world: name for name, world in WORLD_AXIS_OF_SLICING_AXIS.items()}

MERGE_MODES = ("replace", "add")


class ObliqueViewError(GeometryError):
    """The slice view is too far from axial, coronal and sagittal to pick a slicing axis."""


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
