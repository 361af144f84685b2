"""The core of every "segment everything" face (medsam_monai.automatic.volumes): the slice of a volume
by voxel index, its pixel spacing, the size filters, one label map, JSON records and 3D propagation
of each mask.

The model is the tiny mask decoder behind the fast stand-in encoder
(:func:`medsam_monai.server.testing.fast_tiny_predictor`); expected results come from the propagation,
the generator and pycocotools, never stored answers.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import relayout

from medsam_monai.automatic import (
    AutomaticMaskGenerator,
    apply_size_filters,
    automatic_masks,
    display_pixel_spacing,
    display_slice,
    json_records,
    propagate_masks,
    record_mask,
    records_to_label_map,
    voxel_slice,
)
from medsam_monai.orientation import display_layout, display_to_ijk_matrix, to_display
from medsam_monai.phantom import ct_phantom
from medsam_monai.predictor import ObjectPrompt
from medsam_monai.propagation import propagate
from medsam_monai.segment import normalized_volume
from medsam_monai.server.testing import fast_tiny_predictor

mask_utils = pytest.importorskip("pycocotools.mask")

GENERATOR = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}


@pytest.fixture(scope="module")
def predictor():
    return fast_tiny_predictor(seed=5)


@pytest.fixture(scope="module")
def phantom():
    return relayout(ct_phantom(shape=(40, 32, 6), spacing=(3.0, 3.0, 5.0)).volume, (1, 0, 2), (True, False, True))


@pytest.fixture(scope="module")
def display(phantom) -> np.ndarray:
    return np.ascontiguousarray(to_display(normalized_volume(phantom), display_layout(phantom.affine, "axial")))


@pytest.fixture(scope="module")
def found(predictor, display) -> list[dict]:
    return AutomaticMaskGenerator(predictor, **GENERATOR).generate(display[3])


# ----- which slice ---------------------------------------------------------------------------------


@pytest.mark.parametrize("axis", ["axial", "coronal", "sagittal"])
def test_display_slice_is_the_display_index_of_the_voxel_slice(phantom, axis):
    layout = display_layout(phantom.affine, axis)
    matrix = display_to_ijk_matrix(phantom.shape, layout)
    voxel_axis = layout.permutation[0]
    for index in range(phantom.shape[voxel_axis]):
        s = display_slice(index, phantom.shape, layout)
        assert (matrix @ np.array([s, 0, 0, 1]))[voxel_axis] == index  # the display slice holds that voxel index
        assert voxel_slice(s, phantom.shape, layout) == index


@pytest.mark.parametrize("index", [-1, 6, 2.5])
def test_a_slice_outside_the_volume_is_a_one_line_error(phantom, index):
    with pytest.raises(ValueError, match=r"^slice .* is outside the axial slices k = 0\.\.5$"):
        display_slice(index, phantom.shape, display_layout(phantom.affine, "axial"))


def test_the_pixel_spacing_of_each_axis_display(phantom):
    spacing = {axis: display_pixel_spacing(phantom.affine, display_layout(phantom.affine, axis)) for axis in ("axial", "coronal")}
    assert spacing == {"axial": (3.0, 3.0), "coronal": (5.0, 3.0)}  # coronal rows run along the 5 mm slices


# ----- the masks of a plane ------------------------------------------------------------------------


def test_automatic_masks_are_the_generators_through_the_filters_into_one_label_map(predictor, display, found):
    areas = sorted(r["area"] for r in found)
    min_mm2 = 9.0 * (areas[0] + 1)
    generator = AutomaticMaskGenerator(predictor, **GENERATOR, output_mode="uncompressed_rle")
    masks = automatic_masks(generator, display[3], (3.0, 3.0), min_area_mm2=min_mm2, max_area_fraction=0.9)
    kept = [r for r in found if 9.0 * r["area"] >= min_mm2 and r["area"] <= 0.9 * display[3].size]
    assert 0 < len(kept) < len(found) and masks.generated == len(found) and masks.dropped == len(found) - len(kept)
    assert [r["area"] for r in masks.records] == [r["area"] for r in kept]
    np.testing.assert_array_equal(masks.label_map, records_to_label_map(kept, display[3].shape))


def test_the_mm2_filter_needs_a_spacing_and_no_filter_keeps_all(found):
    with pytest.raises(ValueError, match="min_area_mm2 needs the pixel spacing"):
        apply_size_filters(found, None, min_area_mm2=1.0)
    assert apply_size_filters(found, None) == found
    with pytest.raises(ValueError, match=r"max_area_fraction must be in \(0, 1\]"):
        apply_size_filters(found, (1.0, 1.0), max_area_fraction=0)


def test_json_records_hold_coco_rle_that_pycocotools_decodes(found):
    records = json.loads(json.dumps(json_records(found)))  # plain JSON: no numpy numbers or arrays
    assert [r["label"] for r in records] == list(range(1, len(found) + 1))
    for record, want in zip(records, found):
        decoded = mask_utils.decode(record["segmentation"]).astype(bool)
        np.testing.assert_array_equal(decoded, want["segmentation"])
        assert record["area"] == want["area"] and record["bbox"] == want["bbox"]


# ----- through the volume --------------------------------------------------------------------------


def test_propagated_masks_keep_the_label_map_on_the_key_slice_and_stop_where_they_end(predictor, display, found):
    masks = [record_mask(r) for r in found]
    labels = propagate_masks(predictor, display, 3, masks)
    np.testing.assert_array_equal(labels[3], records_to_label_map(found, display.shape[1:3]))  # smaller over larger
    assert labels.shape == display.shape and labels.max() <= len(masks)
    assert (labels[np.arange(len(labels)) != 3] > 0).any()  # the masks reach other slices
    for n in np.unique(labels[labels > 0]):
        slices = np.flatnonzero((labels == n).any(axis=(1, 2)))
        assert slices.min() <= 3 <= slices.max()


def test_one_propagated_mask_is_the_propagation_from_its_key_mask(predictor, display, found):
    """The wiring: key slice, key mask, a box over every slice, stop when the mask vanishes."""
    mask = record_mask(max(found, key=lambda r: r["area"]))
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    box = (float(cols[0]), float(rows[0]), 0, float(cols[-1]), float(rows[-1]), len(display) - 1)
    expected = propagate(predictor, display, [ObjectPrompt(box, key=3, key_mask=mask)], stop_when_empty=True)
    np.testing.assert_array_equal(propagate_masks(predictor, display, 3, [mask]), expected)


def test_an_empty_mask_stays_empty_and_bad_masks_are_refused(predictor, display):
    empty = np.zeros(display.shape[1:3], dtype=bool)
    assert not propagate_masks(predictor, display, 2, [empty]).any()
    assert not propagate_masks(predictor, display, 2, []).any()
    with pytest.raises(ValueError, match="mask 1 is 3x3 but the slices are"):
        propagate_masks(predictor, display, 2, [np.ones((3, 3), dtype=bool)])
    with pytest.raises(ValueError, match="key slice 6 is outside the volume's slices 0..5"):
        propagate_masks(predictor, display, 6, [empty])
