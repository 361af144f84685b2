"""Issue 17 in the Slicer module: multimask, refine-from-segment, "Segment everything", the preprocessing choice.

Three parts:

- The Logic and the panel on real MRML nodes (slicer-core) with MedSAMLib.testing.ThresholdClient, a stub: its
  "segment everything" masks are nested intensity classes of the slice and its IoU scores are made up, so every
  test knows which voxels each segment must hold. They check where masks land in every voxel order, their names,
  that one undo removes them all, what a refinement sends and what it writes.
- The client's requests and the decoding of answers, against the protocol (README's protocol table,
  ``medsam_monai/server/models.py``): no server.
- A real ``medsam serve`` (the packaged tiny demo model, CPU), started as the panel starts one: the same
  physical masks from volumes stored in two voxel orders, refinement with multimask, cancelling.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="needs the slicer-core package (Linux, Python 3.11)")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "slicer_extension" / "MedSAM"))

import MedSAM  # noqa: E402
from MedSAMLib import client as medsam_client  # noqa: E402
from MedSAMLib import consent, everything, geometry, server_process, undo, wire  # noqa: E402
from MedSAMLib.testing import ThresholdClient  # noqa: E402
from test_slicer_logic import (  # noqa: E402
    BOX_HIGH,
    BOX_LOW,
    LAYOUTS,
    SPACING,
    THRESHOLD,
    URL,
    VIEWS,
    add_roi,
    add_volume,
    layout_of,
    phantom_ras,
    to_ras_order,
)
from test_slicer_widget import close_panel, finish, make_panel, segments  # noqa: E402


@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


@pytest.fixture
def logic(scene):
    store = consent.ConsentStore.in_memory()
    store.grant(URL)
    return MedSAM.MedSAMLogic(scene, store)


def segment_names(segmentation_node):
    segmentation = segmentation_node.GetSegmentation()
    return [segmentation.GetSegment(segmentation.GetNthSegmentID(n)).GetName() for n in range(segmentation.GetNumberOfSegments())]


def segment_by_name(segmentation_node, name):
    return segmentation_node.GetSegmentation().GetSegmentIdBySegmentName(name)


def slice_ras_index(array_ras, axis, offset_mm):
    """The RAS-ordered phantom's index of the slice a view ``offset_mm`` from RAS 0 shows (RAS 0 is the centre)."""
    world = geometry.WORLD_AXIS_OF_SLICING_AXIS[axis]
    return int(np.floor((array_ras.shape[world] - 1) / 2 + offset_mm / SPACING[world] + 0.5))


def expected_stub_masks(array_ras, axis, index):
    """What the stub's "segment everything" gives on RAS slice ``index`` (RAS order [i, j, k]): mask 1 above -500
    (the larger, painted first), mask 2 above THRESHOLD on top; each segment holds its visible voxels."""
    world = geometry.WORLD_AXIS_OF_SLICING_AXIS[axis]
    on_slice = np.zeros(array_ras.shape, bool)
    region = [slice(None)] * 3
    region[world] = index
    on_slice[tuple(region)] = True
    bright = on_slice & (array_ras > THRESHOLD)
    body = on_slice & (array_ras > -500) & ~bright
    return body.astype(np.uint8), bright.astype(np.uint8)


# -- "Segment everything" with the stub ------------------------------------------------------------------


@pytest.mark.parametrize("axis", ["axial", "coronal", "sagittal"])
def test_everything_makes_one_segment_per_mask_on_the_slice_in_view_in_every_voxel_order(scene, logic, axis):
    array_ras = phantom_ras()
    world = geometry.WORLD_AXIS_OF_SLICING_AXIS[axis]
    view = VIEWS[axis].copy()
    view[world, 3] = 1.2 * SPACING[world]  # a slice off the centre: the nearest voxel slice is centre + 1
    index = slice_ras_index(array_ras, axis, 1.2 * SPACING[world])
    body, bright = expected_stub_masks(array_ras, axis, index)
    assert body.sum() > 0 and bright.sum() > 0  # the slice cuts the organ
    for name, layout in LAYOUTS.items():
        volume = add_volume(scene, *layout_of(array_ras, layout), name)
        segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        client = ThresholdClient(THRESHOLD)
        applied = logic.segmentEverything(client, volume, segmentation, view, server_url=URL)
        assert segment_names(segmentation) == ["Mask 1 (IoU 0.90)", "Mask 2 (IoU 0.80)"], name
        assert applied.segment_names == segment_names(segmentation) and applied.axis == axis
        # The client was asked for the voxel slice the view shows, along the voxel axis the server cuts.
        sent = client.calls[-1]
        voxel_axis = geometry.slicing_voxel_axis(layout_of(array_ras, layout)[1], axis)
        assert sent[0] == "segment_everything" and sent[2] == axis and sent[3][voxel_axis] == applied.slice_index
        for segment_name, expected in zip(applied.segment_names, (body, bright)):
            mask_kji = logic.read_segment(segmentation, segment_by_name(segmentation, segment_name), volume)
            np.testing.assert_array_equal(to_ras_order(mask_kji.transpose(2, 1, 0), layout), expected, err_msg=name)


def test_everything_is_undone_in_one_step_and_leaves_the_other_segments(scene, logic):
    array_ras = phantom_ras()
    volume = add_volume(scene, *layout_of(array_ras, LAYOUTS["lps"]))
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    mine = segmentation.GetSegmentation().AddEmptySegment("", "liver")
    painted = np.zeros(array_ras.shape[::-1], np.uint8)
    painted[2:5, 3:9, 4:12] = 1
    logic.write_segment(segmentation, mine, volume, painted)
    client = ThresholdClient(THRESHOLD)
    client.everything_levels = (-900.0, -500.0, 0.0, THRESHOLD)  # four nested masks (mask 3: nothing visible)
    applied = logic.segmentEverything(client, volume, segmentation, axis="axial", slice_index=4, server_url=URL)
    # Mask 3 (above 0) is covered by mask 4 (above THRESHOLD) everywhere: no voxel, no segment.
    assert applied.segment_names == ["Mask 1 (IoU 0.90)", "Mask 2 (IoU 0.80)", "Mask 4 (IoU 0.60)"]
    assert applied.masks == 4 and "1 with no voxel in view, under smaller masks, left out" in applied.summary()
    assert len(segment_names(segmentation)) == 4
    np.testing.assert_array_equal(logic.read_segment(segmentation, mine, volume), painted)
    # All the new segments lie on axial slice 4 of the LPS volume (k = 4) only, and do not overlap.
    masks = [logic.read_segment(segmentation, segment_by_name(segmentation, n), volume) for n in applied.segment_names]
    assert all(m.sum() > 0 and m.sum() == m[4].sum() for m in masks)
    assert int(np.sum(masks, axis=0).max()) == 1
    assert len(logic.undo_stack) == 1 and isinstance(logic.undo_stack.peek(), undo.UndoGroup)
    assert logic.undo() == "MedSAM segment everything on axial slice 4"
    assert segment_names(segmentation) == ["liver"] and not logic.can_undo()
    np.testing.assert_array_equal(logic.read_segment(segmentation, mine, volume), painted)


def test_undoing_everything_after_a_mask_was_deleted_removes_the_rest(scene, logic):
    volume = add_volume(scene, *layout_of(phantom_ras(), LAYOUTS["ras"]))
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    applied = logic.segmentEverything(ThresholdClient(THRESHOLD), volume, segmentation, VIEWS["axial"], server_url=URL)
    segmentation.GetSegmentation().RemoveSegment(applied.segment_ids[0])  # the user deletes one of them
    logic.undo()
    assert segment_names(segmentation) == []


def test_everything_that_finds_nothing_adds_nothing(scene, logic):
    volume = add_volume(scene, *layout_of(phantom_ras(), LAYOUTS["ras"]))
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    client = ThresholdClient(THRESHOLD)
    client.everything_levels = (10000.0,)
    applied = logic.segmentEverything(client, volume, segmentation, VIEWS["axial"], server_url=URL)
    assert applied.segment_ids == [] and "nothing was added" in applied.summary()
    assert segment_names(segmentation) == [] and not logic.can_undo()


def test_an_answer_for_another_slice_is_not_written(scene, logic):
    volume = add_volume(scene, *layout_of(phantom_ras(), LAYOUTS["permuted"]))
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")

    class OffByOne(ThresholdClient):
        def segment_everything(self, session_id, axis="axial", ijk=None, **options):
            moved = list(ijk)
            voxel_axis = geometry.slicing_voxel_axis(self._session(session_id)[1], axis)
            moved[voxel_axis] += 1
            return super().segment_everything(session_id, axis, ijk=moved, **options)

    with pytest.raises(MedSAM.MedSAMError, match="compatible medsam"):
        logic.segmentEverything(OffByOne(THRESHOLD), volume, segmentation, VIEWS["coronal"], server_url=URL)
    assert segment_names(segmentation) == [] and not logic.can_undo()


def test_everything_parameters_are_checked_before_anything_is_sent(scene, logic):
    volume = add_volume(scene, *layout_of(phantom_ras(), LAYOUTS["ras"]))
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    client = ThresholdClient(THRESHOLD)
    for parameters, message in (
        ({"points_per_side": 0}, "points_per_side must be in 1..128"),
        ({"pred_iou_thresh": 1.5}, "pred_iou_thresh must be in 0..1"),
        ({"points_per_side": 2.5}, "whole number"),
        ({"crop_overlap_ratio": 1.0}, "below 1"),
        ({"max_area_fraction": 0.0}, "above 0"),
        ({"points_per_grid": 4}, "unknown segment-everything parameter 'points_per_grid'"),
    ):
        with pytest.raises(MedSAM.MedSAMError, match=message):
            logic.segmentEverything(client, volume, segmentation, VIEWS["axial"], parameters=parameters, server_url=URL)
    with pytest.raises(MedSAM.MedSAMError, match="outside"):
        logic.segmentEverything(client, volume, segmentation, axis="axial", slice_index=10, server_url=URL)
    view = VIEWS["axial"].copy()
    view[2, 3] = 500.0  # scrolled far off the image
    with pytest.raises(MedSAM.MedSAMError, match="shows no slice"):
        logic.segmentEverything(client, volume, segmentation, view, server_url=URL)
    assert client.calls == [] and segment_names(segmentation) == []


def test_the_parameter_node_drives_everything(scene, logic):
    parameters = logic.getParameterNode()
    parameters.inputVolume = add_volume(scene, *layout_of(phantom_ras(), LAYOUTS["permuted"]))
    view = slicer.vtkMRMLSliceNode()
    view.SetName("Green")
    view.SetLayoutName("Green")
    view.GetSliceToRAS().DeepCopy(MedSAM._matrix_from_array(VIEWS["coronal"]))
    scene.AddNode(view)
    parameters.sliceView = "Green"
    parameters.everythingPointsPerSide = 16
    parameters.everythingPredIouThresh = 0.5
    parameters.everythingMinAreaMm2 = 25.0
    assert logic.everything_parameters_of(parameters) == {
        "points_per_side": 16,
        "pred_iou_thresh": 0.5,
        "stability_score_thresh": 0.95,
        "box_nms_thresh": 0.7,
        "min_area_mm2": 25.0,
        "max_area_fraction": None,  # 1: no limit
    }
    client = ThresholdClient(THRESHOLD)
    applied = logic.segment_everything_with_parameters(client, parameters, URL)
    assert applied.axis == "coronal" and len(applied.segment_ids) == 2
    assert parameters.segmentation is not None  # made for the masks
    # SAM's defaults, the node's choices, and no filter where the node says none.
    expected = {**everything.default_parameters(), "points_per_side": 16, "pred_iou_thresh": 0.5, "min_area_mm2": 25.0}
    assert client.calls[-1][-1] == expected
    parameters.everythingMinAreaMm2 = 0.0
    parameters.everythingMaxAreaFraction = 0.5
    assert logic.everything_parameters_of(parameters)["min_area_mm2"] is None
    assert everything.check_parameters(logic.everything_parameters_of(parameters))["max_area_fraction"] == 0.5
    assert "min_area_mm2" not in everything.check_parameters(logic.everything_parameters_of(parameters))


# -- refine from a segment, multimask ----------------------------------------------------------------


def painted_segment(scene, logic, layout="lps"):
    array_ras = phantom_ras()
    volume = add_volume(scene, *layout_of(array_ras, LAYOUTS[layout]))
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    mine = segmentation.GetSegmentation().AddEmptySegment("", "liver")
    painted = np.zeros(slicer.util.arrayFromVolume(volume).shape, np.uint8)  # [k, j, i]
    painted[3:7, 4:10, 5:15] = 1
    painted[8, 2:4, 2:4] = 1  # a bit on another slice
    logic.write_segment(segmentation, mine, volume, painted)
    return volume, segmentation, mine, painted


def decoded_prompt(prompt):
    """The voxels a MaskPrompt marks, as a [k, j, i] array of the whole volume, after the wire encoding."""
    encoded = medsam_client.encode_mask_prompt(prompt)
    block = wire.decode_array(encoded["labels"], 1 << 30).T == encoded["label_value"]  # wire (i, j, k) -> [k, j, i]
    return block, encoded["offset"]


def test_refine_sends_the_segment_on_the_segmented_slices_and_replaces_it_there(scene, logic):
    volume, segmentation, mine, painted = painted_segment(scene, logic)
    client = ThresholdClient(THRESHOLD)
    result = logic.refineSegment(
        client, volume, segmentation, mine, add_roi(scene, BOX_LOW, BOX_HIGH), VIEWS["axial"], MedSAM.ACTION_3D, server_url=URL
    )
    first, last = result.first_slice, result.last_slice
    assert first <= 3 and 6 <= last < 8  # the box's axial slices hold the painted block, not slice 8
    sent = client.options[-1]["mask_prompt"]
    block, offset = decoded_prompt(sent)
    on_slices = np.zeros_like(painted)
    on_slices[first : last + 1] = painted[first : last + 1]
    sent_kji = np.zeros_like(painted, dtype=bool)
    i0, j0, k0 = offset
    sent_kji[k0 : k0 + block.shape[0], j0 : j0 + block.shape[1], i0 : i0 + block.shape[2]] = block
    np.testing.assert_array_equal(sent_kji, on_slices > 0)  # exactly the segment there, cut to its block
    assert block.shape == (4, 6, 10)
    after = logic.read_segment(segmentation, mine, volume)
    np.testing.assert_array_equal(after[8], painted[8])  # outside the segmented slices: kept
    assert not np.array_equal(after[first : last + 1], painted[first : last + 1])  # replaced by the result
    assert result.summary().startswith("Segment 'liver'") and "Predicted IoU 1.00" in result.summary()
    logic.undo()
    np.testing.assert_array_equal(logic.read_segment(segmentation, mine, volume), painted)


def test_refine_without_a_box_takes_the_segments_own_box(scene, logic):
    volume, segmentation, mine, painted = painted_segment(scene, logic)
    client = ThresholdClient(THRESHOLD)
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode")  # not placed yet
    # 3D: the segment's tight box over all its slices (the stray bit on slice 8 included).
    logic.refineSegment(client, volume, segmentation, mine, roi, VIEWS["axial"], MedSAM.ACTION_3D, server_url=URL)
    assert client.calls[-1][2] == (2, 2, 3, 14, 9, 8)
    logic.undo()  # the painted segment again
    # Slice: the segment's box on the slice in view (LPS: axial slice k = 4 is 3 mm above the centre k = 4.5).
    view = VIEWS["axial"].copy()
    view[2, 3] = -0.4 * SPACING[2]
    logic.refineSegment(client, volume, segmentation, mine, None, view, MedSAM.ACTION_SLICE, server_url=URL)
    assert client.calls[-1][2] == (5, 4, 4, 14, 9, 4) and client.calls[-1][4] is False


def test_refine_needs_a_segment_with_voxels_there(scene, logic):
    volume, segmentation, mine, painted = painted_segment(scene, logic)
    client = ThresholdClient(THRESHOLD)
    roi = add_roi(scene, BOX_LOW, BOX_HIGH)
    with pytest.raises(MedSAM.MedSAMError, match="Choose the segment to refine"):
        logic.segment(client, volume, segmentation, roi, VIEWS["axial"], MedSAM.ACTION_3D, refine=True, server_url=URL)
    view = VIEWS["axial"].copy()
    view[2, 3] = -4.4 * SPACING[2]  # axial slice 0: the segment has nothing there
    with pytest.raises(MedSAM.MedSAMError, match="'liver' has no voxels on axial slice 0: there is nothing to refine"):
        logic.refineSegment(client, volume, segmentation, mine, roi, view, MedSAM.ACTION_SLICE, server_url=URL)
    with pytest.raises(MedSAM.MedSAMError, match="Draw a box: 'liver' has no voxels on axial slice 0"):
        logic.refineSegment(client, volume, segmentation, mine, None, view, MedSAM.ACTION_SLICE, server_url=URL)
    assert client.calls == []
    np.testing.assert_array_equal(logic.read_segment(segmentation, mine, volume), painted)


def test_the_parameter_node_passes_multimask_and_refine(scene, logic):
    volume, segmentation, mine, painted = painted_segment(scene, logic, "permuted")
    parameters = logic.getParameterNode()
    parameters.inputVolume, parameters.segmentation = volume, segmentation
    logic.ensure_prompt_nodes(parameters)
    parameters.box.SetCenter(*((np.array(BOX_LOW) + np.array(BOX_HIGH)) / 2))
    parameters.box.SetSize(*(np.array(BOX_HIGH) - np.array(BOX_LOW)))
    view = slicer.vtkMRMLSliceNode()
    view.SetName("Red")
    view.SetLayoutName("Red")
    scene.AddNode(view)
    parameters.sliceView = "Red"
    client = ThresholdClient(THRESHOLD)
    parameters.multimask = True
    first = logic.segment_with_parameters(client, parameters, MedSAM.ACTION_3D, URL)
    assert client.options[-1] == {"multimask": True, "mask_prompt": None} and first.created_segment
    parameters.refineFromSegment = True
    parameters.segmentID = ""
    with pytest.raises(MedSAM.MedSAMError, match="Choose the segment to refine"):
        logic.segment_with_parameters(client, parameters, MedSAM.ACTION_3D, URL)
    parameters.segmentID = mine
    result = logic.segment_with_parameters(client, parameters, MedSAM.ACTION_3D, URL)
    assert result.segment_id == mine and client.options[-1]["multimask"] is True
    assert client.options[-1]["mask_prompt"] is not None and "refine" in logic.undo_stack.peek().description


# -- the client against the protocol (no server) -----------------------------------------------------


def test_segment_requests_carry_multimask_and_the_mask_prompt_as_the_protocol_says():
    plain = medsam_client._segment_body((1, 2, 3, 4, 5, 6), "axial", True, None, 1)
    assert "multimask" not in plain and "mask_prompt" not in plain  # an older server still takes it
    mask = np.zeros((5, 6, 7), np.uint8)  # [k, j, i]
    mask[1:3, 2:5, 3:6] = 1
    prompt = medsam_client.MaskPrompt.cropped(mask, offset_ijk=(10, 20, 30))
    body = medsam_client._segment_body(None, "coronal", False, [((3, 4, 2), False)], 2, multimask=True, mask_prompt=prompt)
    assert "box" not in body and body["multimask"] is True and body["axis"] == "coronal"
    encoded = body["mask_prompt"]
    assert set(encoded) == {"labels", "offset", "label_value"} and encoded["label_value"] == 1
    assert encoded["offset"] == [13, 22, 31] and encoded["labels"]["shape"] == [3, 3, 2]  # I, J, K of the block
    assert encoded["labels"]["dtype"] == "uint8"
    assert wire.decode_array(encoded["labels"], 1 << 20).all()  # the tight block is all mask
    labels = np.zeros((2, 2, 2), np.uint16)
    labels[0, 0, 1] = 7
    other = medsam_client.encode_mask_prompt(medsam_client.MaskPrompt(labels, (0, 0, 0), 7))
    assert other["labels"]["dtype"] == "uint16" and wire.decode_array(other["labels"], 64)[1, 0, 0] == 7
    with pytest.raises(ValueError, match="a box"):
        medsam_client._segment_body(None, "axial", True, None, 1)
    with pytest.raises(ValueError, match="no voxels"):
        medsam_client.MaskPrompt.cropped(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="integer labels"):
        medsam_client.encode_mask_prompt(medsam_client.MaskPrompt(np.zeros((2, 2, 2), np.float32)))


def test_everything_requests_name_one_slice_and_sams_parameters():
    body = medsam_client._everything_body("sagittal", (4, 0, 0), None, None, {"points_per_side": 8, "min_area_mm2": 10})
    assert body["axis"] == "sagittal" and body["ijk"] == [4, 0, 0] and "ras" not in body and "slice" not in body
    assert body["points_per_side"] == 8 and body["min_area_mm2"] == 10.0 and "max_area_fraction" not in body
    assert {k: body[k] for k in everything.PARAMETERS if k != "points_per_side"} == {
        k: v for k, v in everything.default_parameters().items() if k != "points_per_side"
    }
    assert medsam_client._everything_body("axial", None, (1.5, -2.0, 3.0), None, None)["ras"] == [1.5, -2.0, 3.0]
    assert medsam_client._everything_body("axial", None, None, 3, None)["slice"] == 3
    with pytest.raises(ValueError, match="exactly one"):
        medsam_client._everything_body("axial", (0, 0, 1), None, 1, None)
    with pytest.raises(ValueError, match="not one of"):
        medsam_client._everything_body("oblique", (0, 0, 1), None, None, None)


def test_everything_answers_decode_to_the_slice_block_and_its_records():
    labels_kji = np.zeros((1, 4, 5), np.uint16)  # an axial slice (k = 2) of a 5 x 4 x 3 volume
    labels_kji[0, 1:3, 1:4] = 1
    labels_kji[0, 2, 2] = 2
    answer = {
        "labels": wire.encode_array(labels_kji.T),
        "offset": [0, 0, 2],
        "volume_shape": [5, 4, 3],
        "slice_axis": 2,
        "slice_range": [2, 2],
        "axis": "axial",
        "masks": 2,
        "generated": 5,
        "pixel_spacing_mm": [1.0, 1.0],
        "seconds": 0.1,
        "records": [{"label": 1, "predicted_iou": 0.93}, {"label": 2, "predicted_iou": 0.81}],
    }
    result = medsam_client.decode_everything(answer)
    np.testing.assert_array_equal(result.labels, labels_kji)
    assert result.extent() == (0, 4, 0, 3, 2, 2) and result.visible_labels() == [1, 2] and result.generated == 5
    everything.check_result(result, (5, 4, 3), 2, 2)
    with pytest.raises(ValueError, match="not slice 1"):
        everything.check_result(result, (5, 4, 3), 2, 1)
    answer["records"] = answer["records"][:1]
    with pytest.raises(ValueError, match=r"labels \[2\] have no record"):
        everything.check_result(medsam_client.decode_everything(answer), (5, 4, 3), 2, 2)
    with pytest.raises(medsam_client.MedSAMClientError, match="not one slice"):
        medsam_client.decode_everything({**answer, "slice_range": [1, 2]})
    assert everything.segment_name(3, 0.934) == "Mask 3 (IoU 0.93)"


def test_segment_answers_decode_their_scores():
    labels = np.zeros((3, 2, 2), np.uint8)
    labels[1] = 1
    answer = {
        "labels": wire.encode_array(labels[1:2].T),
        "offset": [0, 0, 1],
        "volume_shape": [2, 2, 3],
        "key_index": 1,
        "scores": [{"index": 1, "iou": [0.6, 0.9, 0.7], "kept": 1}],
    }
    decoded = medsam_client.decode_segment_result(answer)
    np.testing.assert_array_equal(decoded.labels, labels)
    assert decoded.kept_iou() == pytest.approx(0.9) and decoded.kept_iou(0) is None
    older = medsam_client.decode_segment_result({k: v for k, v in answer.items() if k not in ("scores", "key_index")})
    assert older.scores == [] and older.kept_iou() is None


# -- the preprocessing choice of the local server ------------------------------------------------------


def test_the_preprocessing_choice_is_passed_only_when_made():
    base = {"python": sys.executable, "variant": "vit_b"}
    assert "--preprocessing" not in server_process.serve_command(server_process.ServerSettings(**base))
    command = server_process.serve_command(server_process.ServerSettings(**base, preprocessing="sam"))
    assert command[command.index("--preprocessing") + 1] == "sam"
    with pytest.raises(server_process.ServerProcessError, match="preprocessing 'clip' is not one of medsam, sam"):
        server_process.check_settings(server_process.ServerSettings(**base, preprocessing="clip"))
    # The option and its choices are those of the real command line.
    help_text = subprocess.run(
        [sys.executable, "-m", "medsam_monai.cli", "serve", "--help"], capture_output=True, text=True, timeout=120
    ).stdout
    assert "--preprocessing" in help_text and all(name in help_text for name in server_process.PREPROCESSINGS)


# -- the panel ------------------------------------------------------------------------------------------


@pytest.fixture
def panel(monkeypatch):
    made = make_panel(monkeypatch)
    yield made
    close_panel(made)


def test_the_panels_segment_everything_adds_masks_and_one_undo_removes_them(panel):
    ui = panel.ui
    assert ui.segmentEverythingButton.enabled
    ui.everythingPointsPerSideSpinBox.value = 12
    ui.segmentEverythingButton.emit("clicked(bool)", True)
    assert len(panel.dialogs.questions) == 1  # the image goes nowhere without consent
    finish(panel)
    assert panel.dialogs.errors == []
    assert segments(panel) == ["Mask 1 (IoU 0.90)", "Mask 2 (IoU 0.80)"]
    assert ui.statusLabel.text.startswith("2 segments from SAM's masks on axial slice") and "Ctrl+Z" in ui.statusLabel.text
    assert panel.client.calls[-1][0] == "segment_everything" and panel.client.calls[-1][-1]["points_per_side"] == 12
    assert [item[0] for item in ui.segmentComboBox.items] == segments(panel) + ["New segment"]
    undo_shortcut = next(s for s in MedSAM.qt.QShortcut.made if s.name == "Ctrl+Z" and s._slots)
    undo_shortcut.emit("activated()")
    assert segments(panel) == [] and ui.statusLabel.text.startswith("Undone: MedSAM segment everything on axial slice ")
    assert not ui.undoButton.enabled


def test_the_panels_multimask_and_refine_boxes_reach_the_request(panel):
    ui = panel.ui
    ui.multimaskCheckBox.checked = True
    ui.segment3DButton.emit("clicked(bool)", True)
    finish(panel)
    assert panel.client.options[-1] == {"multimask": True, "mask_prompt": None}
    assert "Predicted IoU 1.00" in ui.statusLabel.text
    ui.refineCheckBox.checked = True  # the segment just made is the chosen one
    ui.segmentSliceButton.emit("clicked(bool)", True)
    finish(panel)
    assert panel.dialogs.errors == [] and panel.client.options[-1]["mask_prompt"] is not None
    assert ui.statusLabel.text.startswith("Segment 'MedSAM':")
    ui.segmentComboBox.setCurrentIndex(ui.segmentComboBox.findData(""))  # "New segment": nothing to refine
    ui.segmentSliceButton.emit("clicked(bool)", True)
    assert "Choose the segment to refine" in panel.dialogs.errors[-1] and panel.widget._task is None


def test_the_panel_offers_the_preprocessing_and_shows_the_servers(panel):
    ui = panel.ui
    assert [data for _, data in ui.preprocessingComboBox.items] == ["", "medsam", "sam"]
    assert panel.widget._local_server_settings().preprocessing is None  # follow the checkpoint
    ui.preprocessingComboBox.setCurrentIndex(ui.preprocessingComboBox.findData("sam"))
    assert panel.widget._local_server_settings().preprocessing == "sam"
    panel.widget._save_settings()
    assert panel.settings["MedSAM/ServerPreprocessing"] == "sam"
    health = panel.client.health
    panel.client.health = lambda: {**health(), "preprocessing": "sam"}
    ui.testConnectionButton.emit("clicked(bool)", True)
    finish(panel)
    assert ui.connectionStatusLabel.text == "Connected: version test, variant threshold, preprocessing sam, device none"


# -- a real server -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pytest.importorskip("fastapi", reason="needs medsam-monai[serve]")
    pytest.importorskip("uvicorn", reason="needs medsam-monai[serve]")
    from medsam_monai.checkpoints import TINY_DEMO_CHECKPOINT

    settings = server_process.ServerSettings(
        python=sys.executable,
        port=server_process.free_port(),
        variant="tiny",
        checkpoint=str(TINY_DEMO_CHECKPOINT),
        preprocessing="medsam",  # the tiny demo's own: the same masks, and the option reaches the real server
        extra_arguments=("--prefetch-slices", "0"),
    )
    local = server_process.LocalServer(settings, log_path=str(tmp_path_factory.mktemp("log") / "server.log"))
    local.start()
    try:
        health = local.wait_until_ready(timeout=180, interval=0.2)
        assert health["variant"] == "tiny" and health.get("preprocessing") == "medsam"
        yield local
    finally:
        local.stop()


@pytest.fixture(scope="module")
def ct():
    """An abdomen-like CT phantom [i, j, k] in RAS order and its organ's box."""
    from medsam_monai.phantom import ct_phantom

    made = ct_phantom(shape=(40, 36, 9), spacing=(3.0, 3.0, 5.0))
    return made.volume.array, made.organ_box


LIVE_SPACING = (3.0, 3.0, 5.0)
# Low thresholds: the tiny demo model rates its masks low, and the test needs several.
LIVE_EVERYTHING = {"points_per_side": 8, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}


def live_logic(server):
    store = consent.ConsentStore.in_memory()
    store.grant(server.url)
    return MedSAM.MedSAMLogic(slicer.vtkMRMLScene(), store)


def test_everything_on_a_real_server_gives_the_same_physical_segments_in_two_voxel_orders(server, ct):
    from MedSAMLib.testing import stored_in_layout

    array_ras, _ = ct
    logic = live_logic(server)
    client = logic.client_for(server.url)
    physical = {}
    for name in ("ras", "permuted"):
        volume = add_volume(logic.scene, *stored_in_layout(array_ras, LAYOUTS[name], LIVE_SPACING), name)
        segmentation = logic.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        view = VIEWS["axial"].copy()
        view[2, 3] = 5.0  # axial slice 5 of the RAS phantom (its centre 4 is at 0 mm)
        applied = logic.segmentEverything(client, volume, segmentation, view, parameters=LIVE_EVERYTHING, server_url=server.url)
        assert len(applied.segment_ids) >= 2, applied.summary()
        assert segment_names(segmentation) == applied.segment_names
        assert all(name.startswith("Mask ") and "(IoU " in name for name in applied.segment_names)
        masks = {}
        for segment_id, segment_name in zip(applied.segment_ids, applied.segment_names):
            mask_kji = logic.read_segment(segmentation, segment_id, volume)
            masks[segment_name] = to_ras_order(mask_kji.transpose(2, 1, 0), LAYOUTS[name])
            assert masks[segment_name].sum() == masks[segment_name][:, :, 5].sum() > 0  # on that slice only
        assert int(np.sum(list(masks.values()), axis=0).max()) == 1  # one label per voxel
        physical[name] = masks
        logic.undo()
        assert segment_names(segmentation) == []
    assert physical["ras"].keys() == physical["permuted"].keys()
    for segment_name, mask in physical["ras"].items():
        np.testing.assert_array_equal(physical["permuted"][segment_name], mask, err_msg=segment_name)


def test_refining_on_a_real_server_sends_the_segment_and_keeps_the_best_candidate(server, ct):
    from MedSAMLib.testing import stored_in_layout

    array_ras, (i0, j0, _, i1, j1, _) = ct
    logic = live_logic(server)
    client = logic.client_for(server.url)
    volume = add_volume(logic.scene, *stored_in_layout(array_ras, LAYOUTS["ras"], LIVE_SPACING))
    segmentation = logic.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    centre = (np.array(array_ras.shape) - 1) / 2 * LIVE_SPACING
    low = np.array([i0, j0, 3]) * LIVE_SPACING - centre - 1.0
    high = np.array([i1, j1, 5]) * LIVE_SPACING - centre + 1.0
    roi = add_roi(logic.scene, low, high)
    first = logic.segment(client, volume, segmentation, roi, VIEWS["axial"], MedSAM.ACTION_3D, server_url=server.url)
    assert first.key_iou is not None and (first.first_slice, first.last_slice) == (3, 5)
    before = logic.read_segment(segmentation, first.segment_id, volume)
    assert before.sum() > 0

    request = logic.prepare(
        volume,
        segmentation,
        roi,
        VIEWS["axial"],
        MedSAM.ACTION_3D,
        segment_id=first.segment_id,
        multimask=True,
        refine=True,
        server_url=server.url,
    )
    answer = logic.run_result(client, request)
    assert [score["index"] for score in answer.scores] == [3, 4, 5] and answer.key_index == 4
    for score in answer.scores:  # three candidates, the best one kept
        assert len(score["iou"]) == 3 and score["kept"] == int(np.argmax(score["iou"]))
    # The same request straight from the client, with the same mask prompt: the same voxels.
    session = logic._session_for(client, request)
    direct = client.segment(
        session, request.box_ijk, "axial", True, multimask=True, mask_prompt=medsam_client.MaskPrompt.cropped(before)
    )
    np.testing.assert_array_equal(answer.labels, direct)
    refined = logic.apply(request, answer)
    assert refined.segment_id == first.segment_id and refined.key_iou == pytest.approx(max(answer.scores[1]["iou"]))
    np.testing.assert_array_equal(logic.read_segment(segmentation, first.segment_id, volume), direct)
    logic.undo()
    np.testing.assert_array_equal(logic.read_segment(segmentation, first.segment_id, volume), before)


def test_cancelling_everything_on_a_real_server_adds_nothing(server, ct):
    from MedSAMLib.testing import stored_in_layout

    array_ras, _ = ct
    logic = live_logic(server)
    volume = add_volume(logic.scene, *stored_in_layout(array_ras, LAYOUTS["lps"], LIVE_SPACING))
    segmentation = logic.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    with pytest.raises(medsam_client.Cancelled):
        logic.segmentEverything(
            logic.client_for(server.url),
            volume,
            segmentation,
            axis="axial",
            slice_index=4,
            parameters=LIVE_EVERYTHING,
            server_url=server.url,
            cancel=lambda: True,
        )
    assert segment_names(segmentation) == [] and not logic.can_undo()
