"""The Slicer module's voxel geometry (MedSAMLib/geometry.py), checked against brute force.

Every voxel centre is tested directly for small volumes under flipped, permuted, oblique and
sheared IJK-to-RAS matrices, and the slicing axis is checked to be the one ``medsam serve``
(medsam_monai.orientation) cuts along. RAS boxes and voxel-axis codes are MedSAMLib/wire.py's,
which the server runs as a byte-identical copy (tests/test_wire.py), so they need no agreement test.
"""

from __future__ import annotations

import itertools
import math
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "slicer_extension" / "MedSAM"))

from MedSAMLib import geometry, wire  # noqa: E402

from medsam_monai import orientation  # noqa: E402

SHAPE = (7, 5, 6)  # I, J, K: small enough to test every centre, uneven to catch swapped axes


def rotation(axis, degrees):
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    a, b = [d for d in range(3) if d != axis]
    r = np.eye(3)
    r[a, a], r[a, b], r[b, a], r[b, b] = c, -s, s, c
    return r


def matrix(linear, origin=(3.0, -7.0, 11.0)):
    m = np.eye(4)
    m[:3, :3] = linear
    m[:3, 3] = origin
    return m


SPACING = np.diag([0.8, 1.5, 2.5])
MATRICES = {
    "ras": matrix(SPACING),
    "lps": matrix(np.diag([-1.0, -1.0, 1.0]) @ SPACING),
    "permuted": matrix(np.eye(3)[:, [2, 0, 1]] @ SPACING),
    "permuted_flipped": matrix(np.diag([1.0, -1.0, -1.0]) @ np.eye(3)[:, [1, 2, 0]] @ SPACING),
    "oblique_10": matrix(rotation(2, 10) @ rotation(0, 7) @ SPACING),
    "oblique_40": matrix(rotation(1, 40) @ rotation(2, 25) @ np.eye(3)[:, [2, 0, 1]] @ SPACING),
    "sheared": matrix(np.array([[1.0, 0.3, 0.0], [0.0, 1.2, 0.2], [0.1, 0.0, 2.0]])),
}


def centres_ras(m, shape=SHAPE):
    ijk = np.array(list(itertools.product(*(range(n) for n in shape))), dtype=float)
    return ijk.astype(int), ijk @ m[:3, :3].T + m[:3, 3]


def brute_force_box(low, high, m, shape=SHAPE, tolerance=1e-6):
    ijk, ras = centres_ras(m, shape)
    lo = np.minimum(low, high) - tolerance
    hi = np.maximum(low, high) + tolerance
    inside = np.all((ras >= lo) & (ras <= hi), axis=1)
    if not inside.any():
        return None
    chosen = ijk[inside]
    return (*chosen.min(axis=0).tolist(), *chosen.max(axis=0).tolist())


def random_boxes(m, rng, count):
    _, ras = centres_ras(m)
    low, high = ras.min(axis=0), ras.max(axis=0)
    span = high - low
    for _ in range(count):
        a = rng.uniform(low - 0.3 * span, high + 0.3 * span)
        b = a + rng.uniform(-0.6, 0.6, 3) * span
        yield a, b


@pytest.mark.parametrize("name", sorted(MATRICES))
def test_ras_box_to_ijk_matches_every_voxel_centre(name):
    m = MATRICES[name]
    rng = np.random.default_rng(zlib.crc32(name.encode()))  # the same boxes on every run
    found_some = found_none = 0
    for a, b in random_boxes(m, rng, 300):
        expected = brute_force_box(a, b, m)
        assert geometry.ras_box_to_ijk(a, b, m, SHAPE) == expected, (name, a, b)
        found_some += expected is not None
        found_none += expected is None
    # Both outcomes were exercised.
    assert found_some > 30 and found_none > 5


@pytest.mark.parametrize("name", sorted(MATRICES))
def test_ras_box_to_ijk_counts_centres_on_the_faces(name):
    m = MATRICES[name]
    _, ras = centres_ras(m)
    rng = np.random.default_rng(1)
    for _ in range(40):
        # A box whose faces pass exactly through voxel centres.
        first, second = ras[rng.integers(len(ras))], ras[rng.integers(len(ras))]
        assert geometry.ras_box_to_ijk(first, second, m, SHAPE) == brute_force_box(first, second, m)
    # A box that is a single centre.
    assert geometry.ras_box_to_ijk(ras[17], ras[17], m, SHAPE) == brute_force_box(ras[17], ras[17], m)


def test_ras_box_to_ijk_searches_large_blocks_in_chunks(monkeypatch):
    monkeypatch.setattr(wire, "SEARCH_CHUNK", 7)  # forces many chunks
    m = MATRICES["oblique_40"]
    rng = np.random.default_rng(3)
    for a, b in random_boxes(m, rng, 40):
        assert geometry.ras_box_to_ijk(a, b, m, SHAPE) == brute_force_box(a, b, m)


def test_ras_box_to_ijk_refuses_bad_input():
    with pytest.raises(geometry.GeometryError, match="singular"):
        geometry.ras_box_to_ijk((0, 0, 0), (1, 1, 1), np.diag([1.0, 0.0, 1.0, 1.0]), SHAPE)
    with pytest.raises(geometry.GeometryError, match="finite"):
        geometry.ras_box_to_ijk((0, 0, np.nan), (1, 1, 1), np.eye(4), SHAPE)
    with pytest.raises(geometry.GeometryError, match="positive"):
        geometry.ras_box_to_ijk((0, 0, 0), (1, 1, 1), np.eye(4), (4, 0, 4))


def random_matrix(rng):
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return matrix(q @ np.diag(rng.uniform(0.3, 4.0, 3)))


def test_slicing_voxel_axis_is_the_axis_the_server_cuts_along():
    rng = np.random.default_rng(4)
    matrices = list(MATRICES.values()) + [random_matrix(rng) for _ in range(300)]
    for m in matrices:
        for axis in geometry.AXES:
            layout = orientation.display_layout(m, axis)
            assert geometry.slicing_voxel_axis(m, axis) == layout.permutation[0]


def test_slicing_voxel_axis_of_simple_layouts():
    assert [geometry.slicing_voxel_axis(MATRICES["ras"], a) for a in geometry.AXES] == [2, 1, 0]
    assert [geometry.slicing_voxel_axis(MATRICES["lps"], a) for a in geometry.AXES] == [2, 1, 0]
    # Columns [2, 0, 1]: i moves along S, j along R, k along A.
    assert [geometry.slicing_voxel_axis(MATRICES["permuted"], a) for a in geometry.AXES] == [0, 2, 1]


# Slicer's default SliceToRAS matrices: columns are the view's x, y and normal directions.
AXIAL = np.array([[-1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
CORONAL = np.array([[-1.0, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1]])
SAGITTAL = np.array([[0.0, 0, 1, 0], [-1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]])


def rotated_view(view, axis, degrees):
    out = view.copy()
    out[:3, :3] = rotation(axis, degrees) @ view[:3, :3]
    return out


def test_view_axis_of_slicers_views():
    assert geometry.view_axis(AXIAL) == ("axial", 0.0)
    assert geometry.view_axis(CORONAL) == ("coronal", 0.0)
    assert geometry.view_axis(SAGITTAL) == ("sagittal", 0.0)
    flipped = AXIAL.copy()
    flipped[:3, 2] *= -1  # a normal pointing down is still axial
    assert geometry.view_axis(flipped)[0] == "axial"


def test_view_axis_of_rotated_views():
    name, angle = geometry.view_axis(rotated_view(CORONAL, 2, 12))  # rotated about S: still coronal
    assert name == "coronal" and angle == pytest.approx(12.0)
    with pytest.raises(geometry.ObliqueViewError, match="35.0 degrees away from sagittal"):
        geometry.view_axis(rotated_view(SAGITTAL, 1, 35))
    assert geometry.view_axis(rotated_view(SAGITTAL, 1, 35), oblique="nearest")[0] == "sagittal"
    assert geometry.view_axis(rotated_view(AXIAL, 0, 30), max_oblique_degrees=31)[0] == "axial"
    # 50 degrees from S about R: closer to A than to S.
    assert geometry.view_axis(rotated_view(AXIAL, 0, 50), oblique="nearest")[0] == "coronal"


def brute_force_slice_box(low, high, m, voxel_axis, index, shape=SHAPE):
    ijk, ras = centres_ras(m, shape)
    world = geometry.voxel_axis_codes(m)[voxel_axis][0]
    others = [w for w in range(3) if w != world]
    lo, hi = np.minimum(low, high) - 1e-6, np.maximum(low, high) + 1e-6
    inside = (ijk[:, voxel_axis] == index) & np.all((ras[:, others] >= lo[others]) & (ras[:, others] <= hi[others]), axis=1)
    if not inside.any():
        return None
    chosen = ijk[inside]
    return (*chosen.min(axis=0).tolist(), *chosen.max(axis=0).tolist())


@pytest.mark.parametrize("name", sorted(MATRICES))
def test_one_slice_box_uses_the_boxs_footprint_on_that_slice(name):
    m = MATRICES[name]
    rng = np.random.default_rng(5)
    for a, b in random_boxes(m, rng, 60):
        for axis in geometry.AXES:
            voxel_axis = geometry.slicing_voxel_axis(m, axis)
            index = int(rng.integers(SHAPE[voxel_axis]))
            expected = brute_force_slice_box(a, b, m, voxel_axis, index)
            assert geometry.one_slice_box(a, b, m, SHAPE, voxel_axis, index) == expected, (name, axis, index)


def test_one_slice_box_of_a_flat_box_drawn_on_another_slice():
    m = MATRICES["permuted"]
    voxel_axis = geometry.slicing_voxel_axis(m, "axial")
    _, ras = centres_ras(m)
    low, high = ras.min(axis=0), ras.max(axis=0)
    flat_low, flat_high = low.copy(), high.copy()
    flat_high[2] = flat_low[2]  # zero thickness along S, on the lowest slice
    box = geometry.one_slice_box(flat_low, flat_high, m, SHAPE, voxel_axis, SHAPE[voxel_axis] - 1)
    assert box[voxel_axis] == box[voxel_axis + 3] == SHAPE[voxel_axis] - 1
    full = [0, 0, 0, *(n - 1 for n in SHAPE)]
    full[voxel_axis] = full[voxel_axis + 3] = SHAPE[voxel_axis] - 1
    assert box == tuple(full)


@pytest.mark.parametrize("name", sorted(MATRICES))
def test_slice_index_at_finds_the_nearest_voxel_slice(name):
    m = MATRICES[name]
    for axis in geometry.AXES:
        voxel_axis = geometry.slicing_voxel_axis(m, axis)
        for index in range(SHAPE[voxel_axis]):
            centre = np.array([3.0, 2.0, 2.0])
            centre[voxel_axis] = index + 0.3  # within half a voxel of slice `index`
            point = centre @ m[:3, :3].T + m[:3, 3]
            assert geometry.slice_index_at(point, m, SHAPE, voxel_axis) == index
        outside = np.array([3.0, 2.0, 2.0])
        outside[voxel_axis] = SHAPE[voxel_axis] + 0.7
        assert geometry.slice_index_at(outside @ m[:3, :3].T + m[:3, 3], m, SHAPE, voxel_axis) is None


def test_points_to_ijk_rounds_to_voxels_and_keeps_those_on_the_slices():
    m = MATRICES["lps"]
    ijk = np.array([[1.2, 2.4, 3.0], [4.0, 1.0, 0.6], [6.6, 0.0, 2.0], [9.0, 0.0, 0.0]])
    ras = ijk @ m[:3, :3].T + m[:3, 3]
    points = geometry.points_to_ijk(ras, [True, False, True, True], m, SHAPE)
    assert points == [((1, 2, 3), True), ((4, 1, 1), False)]  # 6.6 -> 7 and 9 are outside
    on_slices = geometry.points_to_ijk(ras, [True, False, True, True], m, SHAPE, slice_range=(2, 5), voxel_axis=2)
    assert on_slices == [((1, 2, 3), True)]
    assert geometry.points_to_ijk(np.zeros((0, 3)), [], m, SHAPE) == []
    with pytest.raises(geometry.GeometryError, match="2 points but 1"):
        geometry.points_to_ijk(ras[:2], [True], m, SHAPE)


@pytest.mark.parametrize("voxel_axis", [0, 1, 2])
def test_merge_mask_replace_and_add(voxel_axis):
    rng = np.random.default_rng(6 + voxel_axis)
    shape_kji = SHAPE[::-1]
    current = (rng.random(shape_kji) > 0.5).astype(np.uint8)
    result = (rng.random(shape_kji) > 0.7).astype(np.uint8) * 3  # any nonzero label counts
    first, last = 1, 3
    region = geometry.slab(voxel_axis, first, last)
    outside = np.ones(shape_kji, dtype=bool)
    outside[region] = False

    replaced = geometry.merge_mask(current, result, voxel_axis, (first, last), "replace")
    np.testing.assert_array_equal(replaced[region], result[region] > 0)
    np.testing.assert_array_equal(replaced[outside], current[outside])

    added = geometry.merge_mask(current, result, voxel_axis, (first, last), "add")
    np.testing.assert_array_equal(added[region], (current[region] > 0) | (result[region] > 0))
    np.testing.assert_array_equal(added[outside], current[outside])
    assert replaced.dtype == added.dtype == np.uint8
    assert current.max() == 1  # the input is not modified

    # The slab is along the right array axis: [k, j, i] order, voxel axis 0 = i = array axis 2.
    assert np.zeros(shape_kji)[region].shape[2 - voxel_axis] == last - first + 1


def test_merge_mask_refuses_mismatches():
    with pytest.raises(geometry.GeometryError, match="does not match"):
        geometry.merge_mask(np.zeros((2, 3, 4)), np.zeros((2, 3, 5)), 0, (0, 0))
    with pytest.raises(geometry.GeometryError, match="outside the volume"):
        geometry.merge_mask(np.zeros((2, 3, 4)), np.zeros((2, 3, 4)), 2, (1, 2))
    with pytest.raises(ValueError, match="merge mode"):
        geometry.merge_mask(np.zeros((2, 3, 4)), np.zeros((2, 3, 4)), 0, (0, 0), "union")
