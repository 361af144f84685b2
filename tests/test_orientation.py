"""Display orientation: one physical phantom stored with different voxel layouts must look the same."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from helpers import relayout_array

from medsam_monai import wire
from medsam_monai.orientation import (
    AXES,
    box_display_to_ijk,
    box_ijk_to_display,
    display_affine,
    display_index_to_ijk,
    display_layout,
    display_shape,
    from_display,
    ijk_to_display_index,
    nearest_voxel,
    parse_axis,
    ras_box_to_ijk,
    slice_to_display,
    slice_to_voxel,
    to_display,
)

RIGHT, ANTERIOR, SUPERIOR = 101, 102, 103
SHAPE_RAS = (6, 7, 8)  # x (R), y (A), z (S): all different so permutations show up


def _phantom() -> tuple[np.ndarray, np.ndarray]:
    """An asymmetric volume in RAS voxel order with marks at the patient's right, front and top."""
    rng = np.random.default_rng(0)
    volume = rng.integers(0, 50, SHAPE_RAS).astype(np.int16)
    nx, ny, nz = SHAPE_RAS
    volume[nx - 1, ny // 2, nz // 2] = RIGHT  # +x is the patient's right in RAS
    volume[nx // 2, ny - 1, nz // 2] = ANTERIOR
    volume[nx // 2, ny // 2, nz - 1] = SUPERIOR
    affine = np.diag([1.0, 1.5, 2.0, 1.0])
    affine[:3, 3] = (-3.0, -4.0, 5.0)
    return volume, affine


def _rotation(degrees: float, axis: int) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    a, b = [n for n in range(3) if n != axis]
    r = np.eye(4)
    r[a, a], r[a, b], r[b, a], r[b, b] = c, -s, s, c
    return r


def _layouts() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    volume, affine = _phantom()
    layouts = {
        "ras": (volume, affine),
        # (permutation, flips of the new axes): relayout's rule, shared with the other tests
        "lps": relayout_array(volume, affine, ((0, 1, 2), (True, True, False))),
        "kij": relayout_array(volume, affine, ((2, 0, 1), (False, False, False))),
        "flip_k": relayout_array(volume, affine, ((0, 1, 2), (False, False, True))),
        "jki_flipped": relayout_array(volume, affine, ((1, 2, 0), (False, True, True))),
    }
    # The scanner tilted by 10 degrees about each world axis: the same voxels, an oblique affine.
    tilt = _rotation(10, 0) @ _rotation(-10, 1) @ _rotation(10, 2)
    for name in ("ras", "kij", "jki_flipped"):
        array, a = layouts[name]
        layouts[f"{name}_oblique"] = (array, tilt @ a)
    return layouts


LAYOUTS = _layouts()


def _expected_display(axis: str) -> np.ndarray:
    """The display array written out by hand from the RAS-ordered phantom [x, y, z]."""
    volume, _ = _phantom()
    if axis == "axial":  # [z up, y from anterior, x from right]
        return volume.transpose(2, 1, 0)[:, ::-1, ::-1]
    if axis == "coronal":  # [y up, z from superior, x from right]
        return volume.transpose(1, 2, 0)[:, ::-1, ::-1]
    return volume.transpose(0, 2, 1)[::-1, ::-1, ::-1]  # sagittal: [x from right, z from top, y from front]


def test_relayout_helper_keeps_physical_positions():
    volume, affine = _phantom()
    for name, (array, a) in LAYOUTS.items():
        if "oblique" in name:
            continue
        # Each voxel's world position must hold the phantom's value at that position.
        for index in itertools.product(*(range(n) for n in array.shape)):
            world = a @ np.array([*index, 1.0])
            old = np.rint(np.linalg.solve(affine, world)[:3]).astype(int)
            assert array[index] == volume[tuple(old)], name


@pytest.mark.parametrize("name", sorted(LAYOUTS))
@pytest.mark.parametrize("axis", AXES)
def test_display_is_the_same_for_every_layout(name, axis):
    array, affine = LAYOUTS[name]
    layout = display_layout(affine, axis)
    np.testing.assert_array_equal(to_display(array, layout), _expected_display(axis))
    assert display_shape(array.shape, layout) == _expected_display(axis).shape


def _where(display: np.ndarray, value: int) -> tuple[int, int, int]:
    (position,) = np.argwhere(display == value)
    return tuple(int(x) for x in position)


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_marks_appear_where_a_radiologist_expects(name):
    array, affine = LAYOUTS[name]
    axial = to_display(array, display_layout(affine, "axial"))
    coronal = to_display(array, display_layout(affine, "coronal"))
    sagittal = to_display(array, display_layout(affine, "sagittal"))
    last = [n - 1 for n in axial.shape]
    # Axial: patient's right on the left of the screen, anterior at the top, slices toward S.
    assert _where(axial, RIGHT)[2] == 0
    assert _where(axial, ANTERIOR)[1] == 0
    assert _where(axial, SUPERIOR)[0] == last[0]
    # Coronal: superior at the top, right on the left, slices toward anterior.
    assert _where(coronal, SUPERIOR)[1] == 0
    assert _where(coronal, RIGHT)[2] == 0
    assert _where(coronal, ANTERIOR)[0] == coronal.shape[0] - 1
    # Sagittal: superior at the top, anterior on the left, slices from right to left.
    assert _where(sagittal, SUPERIOR)[1] == 0
    assert _where(sagittal, ANTERIOR)[2] == 0
    assert _where(sagittal, RIGHT)[0] == 0


@pytest.mark.parametrize("name", sorted(LAYOUTS))
@pytest.mark.parametrize("axis", AXES)
def test_display_affine_points_the_expected_way(name, axis):
    array, affine = LAYOUTS[name]
    columns = display_affine(affine, array.shape, display_layout(affine, axis))[:3, :3]
    # (world axis, sign) of slice, row and col: R=0, A=1, S=2.
    expected = {
        "axial": [(2, 1), (1, -1), (0, -1)],
        "coronal": [(1, 1), (2, -1), (0, -1)],
        "sagittal": [(0, -1), (2, -1), (1, -1)],
    }[axis]
    for d, (world, sign) in enumerate(expected):
        assert int(np.argmax(np.abs(columns[:, d]))) == world
        assert np.sign(columns[world, d]) == sign


@pytest.mark.parametrize("name", sorted(LAYOUTS))
@pytest.mark.parametrize("axis", AXES)
def test_from_display_inverts_to_display(name, axis):
    array, affine = LAYOUTS[name]
    layout = display_layout(affine, axis)
    display = to_display(array, layout)
    assert np.shares_memory(display, array)  # a view, not a copy
    back = from_display(display, layout)
    np.testing.assert_array_equal(back, array)
    assert back.shape == array.shape
    # A copied (contiguous) display array also goes back, and so do trailing channel dims.
    np.testing.assert_array_equal(from_display(np.ascontiguousarray(display), layout), array)
    stacked = np.stack([array, array + 1], axis=-1)
    np.testing.assert_array_equal(from_display(to_display(stacked, layout), layout), stacked)


@pytest.mark.parametrize("name", sorted(LAYOUTS))
@pytest.mark.parametrize("axis", AXES)
def test_index_and_box_conversions(name, axis):
    array, affine = LAYOUTS[name]
    layout = display_layout(affine, axis)
    display = to_display(array, layout)
    rng = np.random.default_rng(1)
    for _ in range(20):
        ijk = tuple(int(rng.integers(0, n)) for n in array.shape)
        srk = ijk_to_display_index(ijk, array.shape, layout)
        assert display[srk] == array[ijk]
        assert display_index_to_ijk(srk, array.shape, layout) == ijk
    for _ in range(20):
        a = [int(rng.integers(0, n)) for n in array.shape]
        b = [int(rng.integers(0, n)) for n in array.shape]
        box = (*np.minimum(a, b).tolist(), *np.maximum(a, b).tolist())
        mask = np.zeros(array.shape, dtype=bool)
        mask[box[0] : box[3] + 1, box[1] : box[4] + 1, box[2] : box[5] + 1] = True
        found = np.argwhere(to_display(mask, layout))
        expected = (*found.min(axis=0).tolist(), *found.max(axis=0).tolist())
        assert box_ijk_to_display(box, array.shape, layout) == expected
        assert box_display_to_ijk(expected, array.shape, layout) == box


def _brute_force_box(lo, hi, affine, shape):
    """The inclusive IJK bounding box of the voxel centres inside [lo, hi], checking every voxel."""
    index = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), axis=-1).reshape(-1, 3)
    world = np.c_[index, np.ones(len(index))] @ affine.T
    inside = np.all((world[:, :3] >= lo) & (world[:, :3] <= hi), axis=1)
    if not inside.any():
        return None
    hits = index[inside]
    return (*hits.min(axis=0).tolist(), *hits.max(axis=0).tolist())


@pytest.mark.parametrize("name", ["ras", "lps", "kij", "flip_k", "jki_flipped", "kij_oblique", "jki_flipped_oblique"])
def test_ras_box_to_ijk_matches_brute_force(name, monkeypatch):
    array, affine = LAYOUTS[name]
    # A tiny search chunk makes the oblique search walk several chunks even on this small volume.
    monkeypatch.setattr(wire, "SEARCH_CHUNK", 7)
    corners = np.array(list(itertools.product(*[(0, n - 1) for n in array.shape])), dtype=float)
    world = np.c_[corners, np.ones(8)] @ affine.T
    low, high = world[:, :3].min(axis=0) - 3, world[:, :3].max(axis=0) + 3
    rng = np.random.default_rng(2)
    found_some = 0
    for _ in range(300):
        a, b = rng.uniform(low, high), rng.uniform(low, high)
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        expected = _brute_force_box(lo, hi, affine, array.shape)
        # Corners in any order: pass them unsorted.
        assert ras_box_to_ijk(a, b, affine, array.shape) == expected
        found_some += expected is not None
    assert found_some > 50


def test_ras_box_to_ijk_edges():
    array, affine = LAYOUTS["lps"]
    shape = array.shape
    # Far outside the volume: no voxel.
    assert ras_box_to_ijk((500, 500, 500), (600, 650, 700), affine, shape) is None
    # A box between two voxel centres holds none either.
    centre = affine @ np.array([2, 3, 4, 1.0])
    assert ras_box_to_ijk(centre[:3] + 0.2, centre[:3] + 0.4, affine, shape) is None
    # Corners exactly on voxel centres include them.
    other = affine @ np.array([4, 1, 6, 1.0])
    assert ras_box_to_ijk(centre[:3], other[:3], affine, shape) == (2, 1, 4, 4, 3, 6)
    # A box around the whole volume is clipped to it.
    assert ras_box_to_ijk((-1e4, -1e4, -1e4), (1e4, 1e4, 1e4), affine, shape) == (0, 0, 0, *(n - 1 for n in shape))
    # The same for an oblique affine.
    oblique, tilted = LAYOUTS["ras_oblique"]
    assert ras_box_to_ijk((-1e4,) * 3, (1e4,) * 3, tilted, oblique.shape) == (0, 0, 0, *(n - 1 for n in oblique.shape))
    assert ras_box_to_ijk((500,) * 3, (600,) * 3, tilted, oblique.shape) is None


def test_parse_axis():
    assert parse_axis("Axial") == "axial"
    assert parse_axis(" transverse ") == "axial"
    assert parse_axis("COR") == "coronal"
    assert parse_axis("sag") == "sagittal"
    with pytest.raises(ValueError, match="unknown slicing axis") as error:
        parse_axis("oblique")
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError):
        display_layout(np.eye(4), "sideways")


def test_bad_affines_are_refused():
    with pytest.raises(ValueError, match="singular"):
        display_layout(np.diag([1.0, 0.0, 1.0, 1.0]), "axial")
    with pytest.raises(ValueError, match="4x4"):
        display_layout(np.eye(3), "axial")


def test_a_strongly_oblique_affine_still_gets_a_permutation():
    # 45 degrees is a tie for the closest axis; every voxel axis must still get its own world axis.
    affine = _rotation(45, 2) @ _rotation(45, 0)
    for axis in AXES:
        layout = display_layout(affine, axis)
        assert sorted(layout.permutation) == [0, 1, 2]


@pytest.mark.parametrize("name", sorted(LAYOUTS))
@pytest.mark.parametrize("axis", AXES)
def test_a_voxel_slice_index_and_its_display_slice_are_the_same_plane(name, axis):
    array, affine = LAYOUTS[name]
    layout = display_layout(affine, axis)
    display = to_display(array, layout)
    voxel_axis = layout.permutation[0]
    for index in range(array.shape[voxel_axis]):
        shown = slice_to_display(index, array.shape, layout)
        assert slice_to_voxel(shown, array.shape, layout) == index
        plane = np.take(array, index, axis=voxel_axis)  # the file's own slice, in its voxel order
        assert np.array_equal(np.sort(plane, axis=None), np.sort(display[shown], axis=None))


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_the_nearest_voxel_of_an_ras_point_is_the_one_whose_centre_is_closest(name):
    array, affine = LAYOUTS[name]
    centres = {index: (affine @ np.array([*index, 1.0]))[:3] for index in itertools.product(*(range(n) for n in array.shape))}
    rng = np.random.default_rng(1)
    for index in rng.choice(len(centres), 20, replace=False):
        voxel = list(centres)[index]
        point = centres[voxel] + rng.uniform(-0.2, 0.2, 3)  # well inside its voxel (spacing >= 1 mm)
        assert nearest_voxel(point, affine, array.shape) == voxel
    far = affine @ np.array([-2.0, 0.0, 0.0, 1.0])  # two voxels before the first one along i
    assert nearest_voxel(far[:3], affine, array.shape) is None
    assert nearest_voxel([np.nan, 0.0, 0.0], affine, array.shape) is None
    assert nearest_voxel([1e300, 0.0, 0.0], affine, array.shape) is None
