"""Points, mask prompts and multimask in `medsam segment` and the library (issue 17 item 3), and every
new option's error path (one line, exit 2, nothing written).

Results are compared with the network module prompted directly (the reference steps below), on a
real 2D image (skimage's camera) and a CT phantom stored in a non-RAS voxel order, with the packaged
tiny demo model; every compared mask is checked to be partial.
"""

from __future__ import annotations

import re

import nibabel as nib
import numpy as np
import pytest
import skimage.data
import skimage.io
import torch
import torch.nn.functional as F
from helpers import assert_partial, relayout
from PIL import Image
from skimage import transform

from medsam_monai.checkpoints import TINY_DEMO_CHECKPOINT, build_sam
from medsam_monai.cli import main
from medsam_monai.io import Volume
from medsam_monai.orientation import display_layout, to_display
from medsam_monai.phantom import ct_phantom
from medsam_monai.propagation import ObjectPrompt
from medsam_monai.segment import (
    PointsOnlyPrompt,
    assign_points,
    ras_point_to_voxel,
    segment_image,
    volume_prompts,
)

BOX = [150, 80, 260, 200]  # around the cameraman's head, in camera()[40:400, 60:500]


@pytest.fixture(scope="module")
def model():
    return build_sam("tiny", TINY_DEMO_CHECKPOINT).eval()


@pytest.fixture(scope="module")
def camera_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("camera") / "camera.png"
    Image.fromarray(skimage.data.camera()[40:400, 60:500]).save(path)
    return path


# ----- the network prompted directly ----------------------------------------------------------------


def embed(model, image_3c: np.ndarray, uint8_after_resize: bool) -> torch.Tensor:
    """MedSAM's image steps: cubic resize to 1024 (preserve_range, anti_aliasing), for 2D images the
    uint8 cast of MedSAM_Inference.py, min-max to [0, 1], the image encoder."""
    resized = transform.resize(image_3c, (1024, 1024), order=3, preserve_range=True, anti_aliasing=True)
    if uint8_after_resize:
        resized = resized.astype(np.uint8)
    scaled = (resized - resized.min()) / np.clip(resized.max() - resized.min(), a_min=1e-8, a_max=None)
    with torch.no_grad():
        return model.image_encoder(torch.tensor(scaled).float().permute(2, 0, 1)[None])


def decode(model, embedding, hw, box=None, points=None, flags=None, mask=None, multimask=False):
    """SAM's prompt encoder and mask decoder on MedSAM's frame (x * 1024 / W, y * 1024 / H), a binary mask
    as the dense prompt (area-weighted resize to 256, 20 * m - 10), sigmoid, one bilinear resize, > 0.5.
    Returns the kept mask (highest predicted IoU) and the IoUs."""
    h, w = hw
    boxes = None if box is None else torch.as_tensor(np.array([box]) / np.array([w, h, w, h]) * 1024, dtype=torch.float)
    prompt_points = None
    if points is not None:
        coords = np.asarray(points, dtype=np.float64) / np.array([w, h]) * 1024
        prompt_points = (torch.as_tensor(coords[None]), torch.as_tensor([flags], dtype=torch.int64))
    dense = None
    if mask is not None:
        fraction = torch.as_tensor(mask, dtype=torch.float32)[None, None]
        dense = F.interpolate(fraction, (256, 256), mode="bilinear", align_corners=False, antialias=True) * 20 - 10
    with torch.no_grad():
        sparse, dense_embedding = model.prompt_encoder(points=prompt_points, boxes=boxes, masks=dense)
        low_res, iou = model.mask_decoder(
            image_embeddings=embedding,
            image_pe=model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense_embedding,
            multimask_output=multimask,
        )
    probabilities = F.interpolate(torch.sigmoid(low_res), size=(h, w), mode="bilinear", align_corners=False)[0]
    best = int(torch.argmax(iou[0]))
    return (probabilities[best].numpy() > 0.5).astype(np.uint8), iou[0].numpy()


def segment(*args: str) -> int:
    return main(["segment", *args, "--variant", "tiny", "--device", "cpu"])


def printed_ious(text: str) -> list[tuple[int, list[float], int, str]]:
    """(object, IoUs, kept mask, rest) of each ``medsam: object N: IoU a b c (kept mask m)...`` line."""
    found = re.findall(r"^medsam: object (\d+): IoU ([\d. -]+) \(kept mask (\d)\)(.*)$", text, flags=re.M)
    return [(int(n), [float(v) for v in ious.split()], int(kept), rest) for n, ious, kept, rest in found]


# ----- 2D: points, points alone, multimask, mask prompts ------------------------------------------------


@pytest.fixture(scope="module")
def camera_embedding(model, camera_png):
    image = skimage.io.imread(camera_png)
    return embed(model, np.repeat(image[:, :, None], 3, axis=-1), uint8_after_resize=True), image.shape


def test_points_join_the_box_prompt(tmp_path, model, camera_png, camera_embedding):
    embedding, hw = camera_embedding
    out = tmp_path / "mask.png"
    args = ["--box", ",".join(map(str, BOX)), "--point", "205,120", "--negative-point", "160,190"]
    assert segment(str(camera_png), *args, "--out", str(out)) == 0
    expected, _ = decode(model, embedding, hw, box=BOX, points=[[205, 120], [160, 190]], flags=[1, 0])
    assert_partial(expected)
    np.testing.assert_array_equal(np.asarray(Image.open(out)), expected)
    assert not np.array_equal(expected, decode(model, embedding, hw, box=BOX)[0])  # the points changed the mask


def test_points_alone_make_one_object(tmp_path, model, camera_png, camera_embedding):
    embedding, hw = camera_embedding
    out = tmp_path / "mask.png"
    assert segment(str(camera_png), "--point", "205,120", "--point", "215,150", "--out", str(out)) == 0
    expected, _ = decode(model, embedding, hw, points=[[205, 120], [215, 150]], flags=[1, 1])
    assert_partial(expected)
    np.testing.assert_array_equal(np.asarray(Image.open(out)), expected)


def test_multimask_keeps_the_mask_of_highest_iou_and_prints_all_three(tmp_path, model, camera_png, camera_embedding, capsys):
    embedding, hw = camera_embedding
    out = tmp_path / "mask.png"
    assert segment(str(camera_png), "--box", ",".join(map(str, BOX)), "--multimask", "--out", str(out)) == 0
    expected, ious = decode(model, embedding, hw, box=BOX, multimask=True)
    assert_partial(expected)
    np.testing.assert_array_equal(np.asarray(Image.open(out)), expected)
    [(number, shown, kept, _)] = printed_ious(capsys.readouterr().out)
    assert number == 1 and kept == int(np.argmax(ious)) + 1
    np.testing.assert_allclose(shown, ious, atol=0.006)  # printed with two decimals


def test_a_mask_prompt_refines_with_the_chosen_label(tmp_path, model, camera_png, camera_embedding):
    """An earlier result holding the object as label 5, chosen with --label-value 5."""
    embedding, hw = camera_embedding
    earlier, _ = decode(model, embedding, hw, box=[140, 70, 280, 230])
    assert_partial(earlier)
    Image.fromarray(earlier * np.uint8(5)).save(tmp_path / "earlier.png")
    out = tmp_path / "refined.png"
    args = ["--box", ",".join(map(str, BOX)), "--mask-prompt", str(tmp_path / "earlier.png"), "--label-value", "5"]
    assert segment(str(camera_png), *args, "--out", str(out)) == 0
    expected, _ = decode(model, embedding, hw, box=BOX, mask=earlier)
    assert_partial(expected)
    np.testing.assert_array_equal(np.asarray(Image.open(out)), expected)
    assert not np.array_equal(expected, decode(model, embedding, hw, box=BOX)[0])  # the mask prompt mattered


def test_segment_image_returns_the_scores_of_each_object():
    """The library face: labels and {label: IoUs}; three IoUs with multimask, one without."""
    from medsam_monai.models import load_predictor

    predictor = load_predictor("tiny", device="cpu", uint8_after_resize=True)
    image = skimage.data.camera()[40:400, 60:500]
    labels, scores = segment_image(predictor, image, boxes=[BOX, [300, 150, 430, 300]], multimask=True)
    assert labels.shape == image.shape and set(scores) == {1, 2}
    assert all(iou.shape == (3,) for iou in scores.values())
    _, single = segment_image(predictor, image, boxes=[BOX])
    assert single[1].shape == (1,)


# ----- volumes: points name their slice ------------------------------------------------------------------


@pytest.fixture(scope="module")
def stored_ct(tmp_path_factory):
    """A CT phantom stored with permuted and flipped voxel axes, so that IJK and the display frame differ."""
    phantom = ct_phantom(shape=(48, 40, 8), spacing=(3.0, 3.0, 5.0))
    volume = relayout(phantom.volume, (2, 0, 1), (False, True, True))
    path = tmp_path_factory.mktemp("ct") / "ct.nii.gz"
    nib.save(nib.Nifti1Image(volume.array, volume.affine), path)
    organ = relayout(Volume(phantom.labels, phantom.volume.affine), (2, 0, 1), (False, True, True)).array
    return path, Volume(np.asarray(nib.load(path).dataobj), nib.load(path).affine), organ


def display_of(volume: Volume, ijk) -> tuple[int, int, int]:
    """(slice, row, column) of a voxel in the axial display, found by marking it (not by index arithmetic)."""
    marker = np.zeros(volume.shape, dtype=np.uint8)
    marker[tuple(ijk)] = 1
    [(s, r, c)] = np.argwhere(to_display(marker, display_layout(volume.affine, "axial")))
    return int(s), int(r), int(c)


def organ_voxel(organ: np.ndarray) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.argwhere(organ)[len(np.argwhere(organ)) // 2])  # type: ignore[return-value]


def ct_window_display(volume: Volume) -> np.ndarray:
    """pre_CT_MR.py's abdomen window (clip to [-160, 240], min-max of the clipped volume, uint8), axial display."""
    clipped = np.clip(volume.array.astype(np.float64), -160, 240)
    windowed = np.uint8((clipped - clipped.min()) / (clipped.max() - clipped.min()) * 255.0)
    return to_display(windowed, display_layout(volume.affine, "axial"))


def test_a_voxel_point_joins_the_prompt_of_its_display_slice(stored_ct):
    _, volume, organ = stored_ct
    ijk = organ_voxel(organ)
    s, r, c = display_of(volume, ijk)
    box_ijk = tuple(np.argwhere(organ).min(axis=0)) + tuple(np.argwhere(organ).max(axis=0))
    [prompt] = volume_prompts(volume, [box_ijk], "axial", points=[ijk], point_labels=[0])
    assert isinstance(prompt, ObjectPrompt)
    assert prompt.points == {s: (((float(c), float(r)),), (0,))}


def test_an_ras_point_is_its_nearest_voxel(stored_ct):
    _, volume, _ = stored_ct
    ijk = (3, 10, 20)
    ras = volume.affine[:3, :3] @ np.array(ijk) + volume.affine[:3, 3] + 0.4  # less than half a voxel off
    assert ras_point_to_voxel(tuple(ras), volume) == ijk


def test_a_point_with_a_one_slice_box_equals_the_network_on_that_slice(tmp_path, model, stored_ct, capsys):
    """The whole volume path with a point and --multimask: the kept mask and the printed IoUs on the key
    slice, and the point in the preview (in its positive green)."""
    path, volume, organ = stored_ct
    ijk = organ_voxel(organ)
    s, r, c = display_of(volume, ijk)
    lo, hi = np.argwhere(organ).min(axis=0), np.argwhere(organ).max(axis=0)
    slice_axis = display_layout(volume.affine, "axial").permutation[0]
    lo[slice_axis] = hi[slice_axis] = ijk[slice_axis]  # the box's one slice is the point's
    box = ",".join(str(int(v)) for v in (*lo, *hi))
    out = tmp_path / "mask.nii.gz"
    preview = tmp_path / "preview.png"
    point = ",".join(map(str, ijk))
    assert segment(str(path), "--box", box, "--point", point, "--multimask", "--out", str(out), "--preview", str(preview)) == 0
    assert np.all(np.asarray(Image.open(preview).convert("RGB")) == (40, 220, 60), axis=-1).sum() > 20  # the point, drawn
    labels = to_display(np.asarray(nib.load(out).dataobj), display_layout(volume.affine, "axial"))
    grey = ct_window_display(volume)[s]
    embedding = embed(model, np.repeat(grey[:, :, None], 3, axis=-1).astype(np.float64), uint8_after_resize=False)
    (_, rb0, cb0), (_, rb1, cb1) = display_of(volume, lo), display_of(volume, hi)
    display_box = [min(cb0, cb1), min(rb0, rb1), max(cb0, cb1), max(rb0, rb1)]
    expected, ious = decode(model, embedding, grey.shape, box=display_box, points=[[c, r]], flags=[1], multimask=True)
    assert_partial(expected)
    np.testing.assert_array_equal(labels[s], expected)
    assert not labels[np.arange(labels.shape[0]) != s].any()
    [(number, shown, kept, rest)] = printed_ious(capsys.readouterr().out)
    assert (
        number == 1 and kept == int(np.argmax(ious)) + 1 and rest == f" on its key slice {'ijk'[slice_axis]} = {ijk[slice_axis]}"
    )
    np.testing.assert_allclose(shown, ious, atol=0.006)


def test_points_alone_in_a_volume_segment_their_slice_only(tmp_path, model, stored_ct):
    path, volume, organ = stored_ct
    ijk = organ_voxel(organ)
    s, r, c = display_of(volume, ijk)
    out = tmp_path / "mask.nii.gz"
    assert segment(str(path), "--point", ",".join(map(str, ijk)), "--out", str(out)) == 0
    labels = to_display(np.asarray(nib.load(out).dataobj), display_layout(volume.affine, "axial"))
    grey = ct_window_display(volume)[s]
    embedding = embed(model, np.repeat(grey[:, :, None], 3, axis=-1).astype(np.float64), uint8_after_resize=False)
    expected, _ = decode(model, embedding, grey.shape, points=[[c, r]], flags=[1])
    assert_partial(expected)
    np.testing.assert_array_equal(labels[s], expected)
    assert not labels[np.arange(labels.shape[0]) != s].any()  # no propagation


def test_a_mask_prompt_volume_becomes_each_slices_dense_prompt(stored_ct):
    """Its display slices (where they hold the object's label), and no prompt on slices without it."""
    _, volume, organ = stored_ct
    box = tuple(np.argwhere(organ).min(axis=0)) + tuple(np.argwhere(organ).max(axis=0))
    earlier = organ.astype(np.uint8) * 3
    [prompt] = volume_prompts(volume, [box], "axial", mask_prompt=Volume(earlier, volume.affine), mask_values=[3])
    shown = to_display(earlier == 3, display_layout(volume.affine, "axial"))
    assert sorted(prompt.mask_prompts) == [z for z in range(shown.shape[0]) if shown[z].any()]
    for z, mask in prompt.mask_prompts.items():
        np.testing.assert_array_equal(mask, shown[z])


# ----- which box a point joins ----------------------------------------------------------------------


def test_with_one_box_every_point_on_its_slices_joins_it():
    assert assign_points([(10, 10, 2, 20, 20, 4)], [(0, 0, 3), (50, 50, 2)], ["a", "b"]) == [0, 0]


def test_with_several_boxes_a_point_joins_the_one_on_its_slice_or_inside():
    boxes = [(10, 10, 0, 20, 20, 2), (30, 30, 1, 40, 40, 5)]
    assert assign_points(boxes, [(0, 0, 0), (35, 35, 2), (12, 12, 1), (0, 0, 5)], list("abcd")) == [0, 1, 0, 1]
    with pytest.raises(ValueError, match="b lies inside none of boxes 1 and 2"):
        assign_points(boxes, [(0, 0, 0), (0, 0, 2)], list("ab"))
    with pytest.raises(ValueError, match="c lies on none of the boxes' slices"):
        assign_points(boxes, [(0, 0, 0), (0, 0, 5), (0, 0, 9)], list("abc"))
    overlapping = [(10, 10, 0, 20, 20, 0), (15, 15, 0, 25, 25, 0)]
    with pytest.raises(ValueError, match="p lies inside boxes 1 and 2"):
        assign_points(overlapping, [(17, 17, 0)], ["p"])


def test_without_a_box_points_make_one_points_only_object():
    [prompt] = volume_prompts(Volume(np.zeros((4, 5, 6)), np.eye(4)), None, "axial", points=[(1, 2, 3), (2, 2, 3)])
    assert isinstance(prompt, PointsOnlyPrompt) and prompt.label == 1 and len(prompt.points) == 1


def test_the_cli_preprocessing_choices_are_the_libraries():
    from medsam_monai.cli.parsing import PREPROCESSING_CHOICES
    from medsam_monai.transforms import PREPROCESSING_MODES

    assert tuple(PREPROCESSING_CHOICES) == tuple(PREPROCESSING_MODES)


# ----- every new option's error path: one line, exit 2, nothing written -------------------------------------


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, camera_png, stored_ct):
    folder = tmp_path_factory.mktemp("inputs")
    Image.fromarray(np.zeros((20, 30), dtype=np.uint8)).save(folder / "small.png")  # another grid than the camera
    Image.fromarray(np.ones((360, 440), dtype=np.uint8)).save(folder / "ones.png")  # the camera's grid, label 1 only
    Image.fromarray(skimage.data.chelsea()).save(folder / "rgb.png")
    ct_path, volume, _ = stored_ct
    nib.save(nib.Nifti1Image(np.zeros((5, 5, 5), np.uint8), np.eye(4)), folder / "other_shape.nii.gz")
    shifted = volume.affine.copy()
    shifted[:3, 3] += 7.0
    nib.save(nib.Nifti1Image(np.ones(volume.shape, np.uint8), shifted), folder / "shifted.nii.gz")
    nib.save(nib.Nifti1Image(np.ones(volume.shape, np.uint8), volume.affine), folder / "ones.nii.gz")
    from pydicom.data import get_testdata_file

    cine = get_testdata_file("examples_ybr_color.dcm")  # 30 ultrasound frames in colour
    return {"png": str(camera_png), "ct": str(ct_path), "cine": cine, "dir": folder}


ERRORS = [
    # 2D images: options of volumes
    ("png", ["--box", "1,1,9,9", "--axis", "coronal"], "--axis does not apply to a 2D image"),
    ("png", ["--box-ras", "1,1,1,9,9,9"], "--box-ras (RAS millimetres) does not apply to a 2D image"),
    ("png", ["--point-ras", "1,1,1"], "--point-ras (RAS millimetres) does not apply to a 2D image"),
    ("png", ["--box", "1,1,9,9", "--negative-point-ras", "1,1,1"], "--negative-point-ras (RAS millimetres) does not apply"),
    ("png", ["--box", "1,1,9,9", "--series-uid", "1.2.3"], "--series-uid chooses a DICOM series of a folder"),
    ("png", ["--box", "1,1,1,9,9,9"], "--box '1,1,1,9,9,9' must be 4 comma-separated numbers X0,Y0,X1,Y1"),
    ("png", ["--box", "9,1,1,9"], "is reversed"),
    ("png", ["--box", "1,1,440,9"], "outside the image (x 0..439, y 0..359)"),
    ("png", ["--box", "1,1,9,9", "--percentile-clip", "--modality", "ct"], "percentile cut-off is MedSAM's 2D rule"),
    # points
    ("png", ["--point", "1,x"], "--point '1,x' must be 2 comma-separated numbers X,Y"),
    ("png", ["--point", "1,2,3"], "--point '1,2,3' must be 2 comma-separated numbers"),
    ("png", ["--point", "440,10"], "point (440, 10) is outside the image (x 0..439, y 0..359)"),
    ("png", ["--point", "10,-1"], "point (10, -1) is outside the image"),
    ("png", ["--point", "nan,3"], "non-finite"),
    ("png", ["--negative-point", "5,5"], "negative points alone select nothing"),
    ("png", ["--box", "1,1,50,50", "--box", "30,30,90,90", "--point", "40,40"], "--point 40,40 lies inside boxes 1 and 2"),
    ("png", ["--box", "1,1,50,50", "--box", "60,60,90,90", "--point", "55,55"], "lies inside none of boxes 1 and 2"),
    ("ct", ["--point", "1,2,3", "--negative-point", "2,2,3"], "--negative-point 2,2,3 has no positive point on its slice"),
    ("ct", ["--point", "1,2"], "--point '1,2' must be 3 comma-separated numbers I,J,K"),
    ("ct", ["--point", "1.5,2,3"], "voxel indices must be whole numbers"),
    ("ct", ["--point", "0,0,99"], "point (0, 0, 99) is outside the image"),
    ("ct", ["--point-ras", "1e4,0,0"], "RAS point (10000, 0, 0) mm is outside the image"),
    ("ct", ["--box", "0,0,0,3,3,3", "--point", "7,1,1"], "--point 7,1,1 lies on none of the boxes' slices"),
    ("ct", ["--box", "1,1,9,9"], "--box '1,1,9,9' must be 6 comma-separated numbers I0,J0,K0,I1,J1,K1"),
    ("ct", ["--box", "0,0,0,3,3,3", "--percentile-clip"], "--percentile-clip is MedSAM's rule for 2D images"),
    # mask prompts
    ("png", ["--box", "1,1,9,9", "--mask-prompt", "{dir}/small.png"], "is on another grid: 20 x 30 pixels, the image 360 x 440"),
    ("png", ["--box", "1,1,9,9", "--mask-prompt", "{dir}/ones.png", "--label-value", "2"], "holds no label 2 (it holds 1)"),
    ("png", ["--box", "1,1,9,9", "--box", "20,20,29,29", "--mask-prompt", "{dir}/ones.png"], "holds no label 2 (it holds 1)"),
    ("png", ["--box", "1,1,9,9", "--mask-prompt", "{dir}/rgb.png"], "a colour image; a label image is grey"),
    ("png", ["--box", "1,1,9,9", "--mask-prompt", "{dir}/missing.png"], "no such file"),
    ("png", ["--box", "1,1,9,9", "--label-value", "1"], "give --mask-prompt too"),
    (
        "png",
        ["--box", "1,1,9,9", "--mask-prompt", "{dir}/ones.png", "--label-value", "1", "--label-value", "1"],
        "2 --label-value values for 1 objects",
    ),
    ("ct", ["--box", "0,0,0,3,3,3", "--mask-prompt", "{dir}/other_shape.nii.gz"], "is on another grid: 5 x 5 x 5 voxels"),
    ("ct", ["--box", "0,0,0,3,3,3", "--mask-prompt", "{dir}/shifted.nii.gz"], "lies on another grid than the image"),
    ("ct", ["--box", "0,0,0,3,3,3", "--mask-prompt", "{dir}/ones.nii.gz", "--label-value", "4"], "holds no label 4"),
    # bad parameter values (argparse)
    ("png", ["--box", "1,1,9,9", "--preprocessing", "foo"], "argument --preprocessing: invalid choice: 'foo'"),
    ("png", ["--box", "1,1,9,9", "--mask-prompt", "{dir}/ones.png", "--label-value", "0"], "0 is not a label value"),
    ("png", ["--box", "1,1,9,9", "--mask-prompt", "{dir}/ones.png", "--label-value", "x"], "'x' is not a whole number"),
    ("png", ["--box", "1,1,9,9", "--modality", "pet"], "argument --modality: invalid choice: 'pet'"),
    ("cine", ["--box", "1,1,9,9"], "a multi-frame colour DICOM (a cine) holds no volume"),
    # outputs of 2D images
    ("png", ["--box", "1,1,9,9", "--out", "{dir}/out/mask.jpg"], "a lossy format would change label values"),
    ("png", ["--box", "1,1,9,9", "--out", "{dir}/out/mask.xyz"], "unsupported output type for a 2D image"),
    ("png", ["--box", "1,1,9,9", "--window", "lung", "--modality", "mr"], "--window applies to CT only"),
]


@pytest.mark.parametrize("source, args, message", ERRORS, ids=[f"{n}-{e[2][:30]}" for n, e in enumerate(ERRORS)])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(inputs, source, args, message, capsys):
    if inputs[source] is None:
        pytest.skip(f"pydicom's test file for {source} is not installed")
    out_dir = inputs["dir"] / "out"
    args = [a.format(dir=inputs["dir"]) for a in args]
    if "--out" not in args:
        args += ["--out", str(out_dir / ("mask.png" if source == "png" else "mask.nii.gz"))]
    try:
        code = main(
            ["segment", inputs[source], *args, "--variant", "tiny", "--device", "cpu", "--preview", str(out_dir / "p.png")]
        )
    except SystemExit as stop:  # argparse's usage errors
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("medsam: error: ") and err.count("\n") == 1, err
    assert message in err
    assert not out_dir.exists() or not list(out_dir.iterdir())
