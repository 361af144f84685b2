"""MedSAM v1 pre/post-processing (``medsam_monai.transforms``) against MedSAM's own formulas.

The slice references call scikit-image exactly as ``MedSAM_Inference.py`` does, on real
CT/MR images shipped with nibabel and pydicom.
"""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from monai.data import MetaTensor
from skimage.transform import resize

from medsam_monai.transforms import (
    CT_WINDOW_PRESETS,
    CTWindow,
    CTWindowd,
    IntensityForModality,
    IntensityForModalityd,
    LoadVolume,
    LoadVolumed,
    MRNormalize,
    MRNormalized,
    PrepareSlice,
    PrepareSliced,
    SamNormalize,
    SamNormalized,
    ct_window,
    mask_probabilities,
    mr_normalize,
    parse_window,
    postprocess_logits,
    prepare_slice,
    prepare_slices,
    sam_normalize,
    scale_box_from_model,
    scale_box_to_model,
    upscale_masks,
)

NIB_DATA = os.path.join(os.path.dirname(nib.__file__), "tests", "data")
TOL = 1e-3  # hard bound on the [0, 1] scale; the measured difference is far smaller


# ------------------------------------------------------------------------------------------
# real images
# ------------------------------------------------------------------------------------------


def _dicom(name: str) -> np.ndarray:
    ds = pydicom.dcmread(pydicom.data.get_testdata_file(name))
    slope = float(getattr(ds, "RescaleSlope", 1))
    intercept = float(getattr(ds, "RescaleIntercept", 0))
    return ds.pixel_array.astype(np.float64) * slope + intercept


@pytest.fixture(scope="module")
def ct_hu() -> np.ndarray:
    """pydicom's CT_small.dcm in HU, (128, 128)."""
    return _dicom("CT_small.dcm")


@pytest.fixture(scope="module")
def mr_volume() -> np.ndarray:
    """First volume of nibabel's example4d.nii.gz, int16 (128, 96, 24) with a zero background."""
    return np.asarray(nib.load(os.path.join(NIB_DATA, "example4d.nii.gz")).dataobj)[..., 0]


def medsam_slice_reference(slice_2d: np.ndarray, size: int, three_channel: bool = False) -> np.ndarray:
    """MedSAM_Inference.py's resize + min-max, written out; returns (3, size, size) float64."""
    img = slice_2d
    if three_channel:  # literally as MedSAM: repeat first, resize the (H, W, 3) image
        img = np.repeat(slice_2d[:, :, None], 3, axis=-1)
    out = resize(img, (size, size), order=3, preserve_range=True, anti_aliasing=True)
    out = (out - out.min()) / np.clip(out.max() - out.min(), a_min=1e-8, a_max=None)
    return out.transpose(2, 0, 1) if three_channel else np.repeat(out[None], 3, axis=0)


def _max_diff(ours: torch.Tensor, ref: np.ndarray) -> float:
    assert ours.dtype == torch.float32 and tuple(ours.shape) == ref.shape
    return float(np.abs(ours.numpy().astype(np.float64) - ref).max())


# ------------------------------------------------------------------------------------------
# prepare_slice vs scikit-image
# ------------------------------------------------------------------------------------------


def _ct_slice(ct_hu):
    return ct_window(ct_hu)  # uint8 (128, 128)


def _mr_slice(mr_volume):
    return mr_normalize(mr_volume)[:, :, 12]  # uint8 (128, 96), non-square


def _anat_slice(_):
    return np.asarray(nib.load(os.path.join(NIB_DATA, "anatomical.nii")).dataobj)[:, :, 12].astype(np.float64)


def _mr_small_crop(_):
    return mr_normalize(_dicom("MR_small.dcm"))[5:60, 10:40]  # (55, 30)


def _ct_up_2048x1536(ct_hu):
    """Real CT slice enlarged to (2048, 1536): the model resize then DOWN-samples both sides."""
    return resize(ct_window(ct_hu).astype(np.float64), (2048, 1536), order=1, preserve_range=True)


def _ct_up_2048x700(ct_hu):
    """(2048, 700): rows shrink (anti-aliasing on), columns grow."""
    return resize(ct_window(ct_hu).astype(np.float64), (2048, 700), order=1, preserve_range=True)


@pytest.mark.parametrize(
    "make, size",
    [
        (_ct_slice, 1024),
        (_mr_slice, 1024),
        (_anat_slice, 1024),
        (_mr_small_crop, 1024),
        (_ct_up_2048x1536, 1024),
        (_ct_up_2048x700, 1024),
        (_mr_slice, 64),  # downsampling a real slice directly
    ],
    ids=["ct128", "mr128x96", "anat33x41", "mr55x30-crop", "ct2048x1536-down", "ct2048x700-mixed", "mr-to-64"],
)
def test_prepare_slice_matches_skimage(make, size, ct_hu, mr_volume):
    slice_2d = make(ct_hu if make is not _mr_slice else mr_volume)
    ours = prepare_slice(slice_2d, size=size)
    diff = _max_diff(ours, medsam_slice_reference(np.asarray(slice_2d), size))
    print(f"max |ours - skimage| = {diff:.3g}")
    assert diff <= TOL
    assert diff <= 1e-6  # float32 rounding only
    assert float(ours.min()) == 0.0 and float(ours.max()) == 1.0
    assert torch.equal(ours[0], ours[1]) and torch.equal(ours[0], ours[2])


def test_prepare_slice_matches_medsam_three_channel_resize(ct_hu):
    """Resizing the grey slice once equals MedSAM's resize of the 3-channel repeat."""
    slice_2d = ct_window(ct_hu)
    ours = prepare_slice(slice_2d)
    diff = _max_diff(ours, medsam_slice_reference(slice_2d, 1024, three_channel=True))
    print(f"max |ours - skimage 3-channel| = {diff:.3g}")
    assert diff <= 1e-6


def test_prepare_slice_options(mr_volume):
    slice_2d = _mr_slice(mr_volume)
    # mode="constant" (MedSAM's older training preprocessing)
    ref = resize(slice_2d.astype(np.float64), (128, 128), order=3, preserve_range=True, anti_aliasing=True, mode="constant")
    ref = (ref - ref.min()) / np.clip(ref.max() - ref.min(), 1e-8, None)
    assert _max_diff(prepare_slice(slice_2d, size=128, mode="constant"), np.repeat(ref[None], 3, 0)) <= 1e-6
    # uint8_after_resize reproduces MedSAM_Inference.py's `.astype(np.uint8)` literally
    img_3c = np.repeat(slice_2d[:, :, None], 3, axis=-1)
    lit = resize(img_3c, (256, 256), order=3, preserve_range=True, anti_aliasing=True).astype(np.uint8)
    lit = (lit - lit.min()) / np.clip(lit.max() - lit.min(), a_min=1e-8, a_max=None)
    ours = prepare_slice(slice_2d, size=256, uint8_after_resize=True)
    assert _max_diff(ours, lit.transpose(2, 0, 1)) <= 1e-6


def test_prepare_slice_inputs(mr_volume):
    slice_2d = _mr_slice(mr_volume)
    ref = prepare_slice(slice_2d, size=64)
    assert torch.equal(prepare_slice(torch.as_tensor(slice_2d), size=64), ref)
    assert torch.equal(prepare_slice(MetaTensor(torch.as_tensor(slice_2d)[None]), size=64), ref)  # (1, H, W)
    assert torch.equal(PrepareSlice(size=64)(slice_2d), ref)
    # a constant slice does not divide by zero
    assert torch.count_nonzero(prepare_slice(np.full((10, 12), 7.0), size=32)) == 0
    with pytest.raises(ValueError, match="2D slice"):
        prepare_slice(np.zeros((2, 4, 4)))


def test_prepare_slices_equals_per_slice(mr_volume):
    stack = mr_normalize(mr_volume)[:, :, 10:13].transpose(2, 0, 1)  # (3, 128, 96)
    batch = prepare_slices(stack, size=128)
    assert batch.shape == (3, 3, 128, 128) and batch.dtype == torch.float32
    for i in range(3):
        assert torch.equal(batch[i], prepare_slice(stack[i], size=128))
    assert torch.equal(prepare_slices(stack, size=128, num_workers=1), batch)
    assert prepare_slices(np.zeros((0, 5, 5)), size=16).shape == (0, 3, 16, 16)
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        prepare_slices(np.zeros((5, 5)))


# ------------------------------------------------------------------------------------------
# CT windowing
# ------------------------------------------------------------------------------------------


def test_ct_window_abdomen_by_hand():
    hu = np.array([-1000, -160, 0, 40, 240, 1000], dtype=np.int16)
    # clip to [-160, 240]; (x + 160) / 400 * 255 -> 0, 0, 102, 127.5, 255, 255; truncated
    np.testing.assert_array_equal(ct_window(hu), [0, 0, 102, 127, 255, 255])
    assert ct_window(hu).dtype == np.uint8
    np.testing.assert_array_equal(ct_window(hu, "40,400"), ct_window(hu))
    np.testing.assert_array_equal(ct_window(hu, (40, 400)), ct_window(hu))


def test_ct_window_lung_by_hand():
    hu = np.array([-2000, -1350, -600, 0, 150, 500], dtype=np.float32)
    # clip to [-1350, 150]; (x + 1350) / 1500 * 255 -> 0, 0, 127.5, 229.5, 255, 255
    np.testing.assert_array_equal(ct_window(hu, "lung"), [0, 0, 127, 229, 255, 255])


def test_ct_window_minmax_of_clipped_volume_not_window():
    # nothing reaches the window ends: MedSAM stretches the clipped volume's own range
    np.testing.assert_array_equal(ct_window(np.array([0.0, 50.0, 100.0])), [0, 127, 255])


def test_ct_window_truncates_and_constant():
    # window [0, 255] and values spanning it: 127.9 stays 127.9, truncated to 127 (not rounded)
    np.testing.assert_array_equal(ct_window(np.array([0.0, 127.9, 255.0]), "127.5,255"), [0, 127, 255])
    np.testing.assert_array_equal(ct_window(np.full((3, 4), 500.0)), np.zeros((3, 4), np.uint8))


def test_ct_window_matches_medsam_formula_and_dtypes(ct_hu):
    hu16 = ct_hu.astype(np.int16)
    image_data_pre = np.clip(hu16, 40 - 400 / 2, 40 + 400 / 2)  # pre_CT_MR.py, verbatim
    image_data_pre = (image_data_pre - np.min(image_data_pre)) / (np.max(image_data_pre) - np.min(image_data_pre)) * 255.0
    expected = np.uint8(image_data_pre)
    np.testing.assert_array_equal(ct_window(hu16), expected)
    # MONAI loaders give float32 (and MetaTensors): same result, type and metadata kept
    np.testing.assert_array_equal(ct_window(hu16.astype(np.float32)), expected)
    meta = MetaTensor(torch.as_tensor(hu16, dtype=torch.float32)[None], affine=torch.eye(4) * 2)
    out = CTWindow("abdomen")(meta)
    assert isinstance(out, MetaTensor) and out.dtype == torch.uint8
    assert torch.equal(out.affine, meta.affine)
    np.testing.assert_array_equal(out[0].numpy(), expected)
    assert isinstance(CTWindow()(hu16), np.ndarray)


def test_parse_window():
    assert parse_window("abdomen") == (40.0, 400.0)
    assert parse_window(" LUNG ") == (-600.0, 1500.0)
    assert parse_window("-600, 1500") == (-600.0, 1500.0)
    assert parse_window((50, 350)) == (50.0, 350.0)
    for name, lw in CT_WINDOW_PRESETS.items():
        assert parse_window(name) == lw
    with pytest.raises(ValueError, match=r"unknown window preset 'nope'; choose one of abdomen, .* or give LEVEL,WIDTH"):
        parse_window("nope")
    for bad in ["a,b", "40,", "40,0", "40,-5", "nan,400", "40,inf", (40, float("nan")), (1, 2, 3), None]:
        with pytest.raises(ValueError):
            parse_window(bad)
    with pytest.raises(ValueError, match="width must be > 0"):
        CTWindow("40,0")


# ------------------------------------------------------------------------------------------
# MR normalisation
# ------------------------------------------------------------------------------------------


def _mr_reference(image_data: np.ndarray) -> np.ndarray:
    """pre_CT_MR.py's MR branch, verbatim."""
    lower_bound, upper_bound = np.percentile(image_data[image_data > 0], 0.5), np.percentile(image_data[image_data > 0], 99.5)
    image_data_pre = np.clip(image_data, lower_bound, upper_bound)
    image_data_pre = (image_data_pre - np.min(image_data_pre)) / (np.max(image_data_pre) - np.min(image_data_pre)) * 255.0
    image_data_pre[image_data == 0] = 0
    return np.uint8(image_data_pre)


def test_mr_normalize_matches_medsam(mr_volume):
    assert (mr_volume == 0).any() and (mr_volume > 0).any()
    out = mr_normalize(mr_volume)
    np.testing.assert_array_equal(out, _mr_reference(mr_volume))
    assert out.dtype == np.uint8 and out.shape == mr_volume.shape
    assert np.all(out[mr_volume == 0] == 0)  # background stays black
    # the statistics exclude the background: with zeros counted the 0.5th percentile is 0
    assert np.percentile(mr_volume, 0.5) == 0 < np.percentile(mr_volume[mr_volume > 0], 0.5)
    # float32 (MONAI) gives the same bytes as the int16 file
    np.testing.assert_array_equal(mr_normalize(mr_volume.astype(np.float32)), out)
    dicom_mr = _dicom("MR_small.dcm")
    np.testing.assert_array_equal(MRNormalize()(dicom_mr), _mr_reference(dicom_mr))


def test_mr_normalize_edge_cases():
    np.testing.assert_array_equal(mr_normalize(np.zeros((4, 4))), np.zeros((4, 4), np.uint8))
    np.testing.assert_array_equal(mr_normalize(-np.ones((2, 3))), np.zeros((2, 3), np.uint8))
    with pytest.raises(ValueError):
        MRNormalize(99.5, 0.5)


# ------------------------------------------------------------------------------------------
# modality dispatch, NaN/inf
# ------------------------------------------------------------------------------------------


def test_intensity_for_modality(ct_hu, mr_volume):
    np.testing.assert_array_equal(IntensityForModality("CT")(ct_hu), ct_window(ct_hu, "abdomen"))
    np.testing.assert_array_equal(IntensityForModality("ct", "lung")(ct_hu), ct_window(ct_hu, "lung"))
    np.testing.assert_array_equal(IntensityForModality("mri")(mr_volume), mr_normalize(mr_volume))
    np.testing.assert_array_equal(IntensityForModality("MR")(mr_volume), mr_normalize(mr_volume))
    with pytest.raises(ValueError, match="MR"):
        IntensityForModality("mr", window="lung")
    with pytest.raises(ValueError, match="ct, mr, mri"):
        IntensityForModality("pet")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_rejected(bad):
    img = np.zeros((4, 5, 6))
    img[1, 2, 3] = bad
    for transform in [IntensityForModality("ct"), IntensityForModality("mr"), CTWindow(), MRNormalize()]:
        with pytest.raises(ValueError, match="NaN or infinite"):
            transform(img)
    with pytest.raises(ValueError, match="NaN or infinite"):
        prepare_slice(img[1])


# ------------------------------------------------------------------------------------------
# boxes and masks
# ------------------------------------------------------------------------------------------


def test_box_scaling_non_square():
    shape_hw = (200, 100)  # H=200 rows, W=100 columns
    box = np.array([10, 20, 50, 100])  # x0, y0, x1, y1
    scaled = scale_box_to_model(box, shape_hw)
    np.testing.assert_allclose(scaled, [102.4, 102.4, 512.0, 512.0])
    np.testing.assert_array_equal(scaled, box / np.array([100, 200, 100, 200]) * 1024)  # MedSAM's exact order
    np.testing.assert_allclose(scale_box_from_model(scaled, shape_hw), box)
    boxes = torch.tensor([[0, 0, 100, 200], [10, 20, 50, 100]])
    assert scale_box_to_model(boxes, shape_hw).shape == (2, 4)
    np.testing.assert_allclose(scale_box_to_model(boxes, shape_hw, size=256)[0], [0, 0, 256, 256])
    with pytest.raises(ValueError):
        scale_box_to_model([1, 2, 3], shape_hw)


def test_postprocess_logits_left_half():
    logits = torch.full((1, 1, 256, 256), -10.0)
    logits[..., :128] = 10.0
    mask = postprocess_logits(logits, (100, 60))
    assert mask.shape == (1, 1, 100, 60) and mask.dtype == torch.bool
    expected = torch.zeros(100, 60, dtype=torch.bool)
    expected[:, :30] = True
    assert torch.equal(mask[0, 0], expected)


def test_postprocess_logits_matches_medsam_and_shapes():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 256, 256) * 4
    mask = postprocess_logits(logits, (77, 131))
    assert mask.shape == (2, 3, 77, 131)
    ref = torch.nn.functional.interpolate(torch.sigmoid(logits), size=(77, 131), mode="bilinear", align_corners=False)
    assert torch.equal(mask, ref > 0.5)
    with pytest.raises(ValueError):
        postprocess_logits(logits[0], (77, 131))


# ------------------------------------------------------------------------------------------
# dictionary twins
# ------------------------------------------------------------------------------------------


def test_dictionary_twins(ct_hu, mr_volume):
    data = {"image": ct_hu, "label": np.ones((2, 2))}
    out = CTWindowd(keys=["image", "other"], window="lung", allow_missing_keys=True)(data)
    np.testing.assert_array_equal(out["image"], ct_window(ct_hu, "lung"))
    assert out["label"] is data["label"] and "other" not in out
    assert data["image"] is ct_hu  # the input dictionary is not modified
    with pytest.raises(KeyError):
        CTWindowd(keys=["image", "other"])(data)

    out = MRNormalized(keys="image")({"image": mr_volume})
    np.testing.assert_array_equal(out["image"], mr_normalize(mr_volume))
    with pytest.raises(KeyError):
        MRNormalized(keys="missing")({"image": mr_volume})

    out = IntensityForModalityd(keys=["image", "missing"], modality="mr", allow_missing_keys=True)({"image": mr_volume})
    np.testing.assert_array_equal(out["image"], mr_normalize(mr_volume))

    slice_2d = ct_window(ct_hu)
    out = PrepareSliced(keys=["image", "missing"], size=64, allow_missing_keys=True)({"image": slice_2d})
    assert torch.equal(out["image"], prepare_slice(slice_2d, size=64))
    with pytest.raises(KeyError):
        PrepareSliced(keys="missing")({"image": slice_2d})


# ------------------------------------------------------------------------------------------
# SAM's own normalisation (for SAM checkpoints): one home, against transformers' SamProcessor
# ------------------------------------------------------------------------------------------


def test_sam_normalize_matches_transformers_sam_processor(ct_hu):
    from transformers import SamImageProcessor

    grey = ct_window(ct_hu)  # a real CT slice as uint8
    rgb = np.repeat(grey[..., None], 3, axis=-1)  # (H, W, 3), as SAM takes a grey image
    processor = SamImageProcessor(do_resize=False, do_pad=False)  # rescale 1/255, then ImageNet mean/std
    reference = processor(images=rgb, return_tensors="np")["pixel_values"][0]  # (3, H, W)
    chw = np.moveaxis(rgb, -1, 0).astype(np.float32)
    np.testing.assert_allclose(sam_normalize(chw), reference, atol=1e-5)
    batch = torch.from_numpy(chw)[None]
    torch.testing.assert_close(SamNormalize()(batch)[0], torch.from_numpy(reference), atol=1e-5, rtol=0)
    out = SamNormalized(keys=["image", "missing"], allow_missing_keys=True)({"image": torch.from_numpy(chw)})
    torch.testing.assert_close(out["image"], torch.from_numpy(reference), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="expected RGB images"):
        sam_normalize(grey)


def test_network_holds_no_pre_or_post_processing():
    """SAM's normalisation and the mask upscale have one home each, in the transforms (not on ``Sam``)."""
    from medsam_monai.networks import Sam, build_sam_variant

    assert not hasattr(Sam, "normalize") and not hasattr(Sam, "upscale_logits")
    assert not any(name.startswith("pixel_") for name, _ in build_sam_variant("tiny").named_buffers())


def test_one_mask_upscale_for_inference_and_training():
    from medsam_monai.networks import build_sam_variant
    from medsam_monai.training import MedSAMTrainNet

    torch.manual_seed(0)
    logits = torch.randn(2, 1, 256, 256)
    reference = torch.nn.functional.interpolate(logits, size=(77, 131), mode="bilinear", align_corners=False)
    torch.testing.assert_close(upscale_masks(logits, (77, 131)), reference, atol=0, rtol=0)
    torch.testing.assert_close(mask_probabilities(logits, (77, 131)), upscale_masks(torch.sigmoid(logits), (77, 131)))
    net = MedSAMTrainNet(build_sam_variant("tiny")).eval()
    images, boxes = torch.rand(1, 1, 1024, 1024), torch.tensor([[100.0, 100.0, 600.0, 700.0]])
    with torch.inference_mode():
        low_res, _ = net.decode(net.encode_image(images.expand(-1, 3, -1, -1)), boxes=boxes)
        assert torch.equal(net(images, boxes), upscale_masks(low_res, (1024, 1024)))
    with pytest.raises(ValueError, match="expected masks"):
        upscale_masks(logits[0], (10, 10))


# ------------------------------------------------------------------------------------------
# loading: MetaTensors with their affine, DICOM series chosen by a case's series_uid
# ------------------------------------------------------------------------------------------


def _two_series_folder(folder):
    """A DICOM folder holding two 3-slice series built from pydicom's CT_small.dcm (the second 100 mm higher)."""
    from pydicom.uid import generate_uid

    folder.mkdir()
    uids = []
    for series in range(2):
        uids.append(generate_uid())
        for n in range(3):
            ds = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
            ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.InstanceNumber = uids[-1], generate_uid(), n + 1
            position = [float(v) for v in ds.ImagePositionPatient]
            position[2] += n * float(ds.SliceThickness) + 100.0 * series
            ds.ImagePositionPatient = position
            ds.save_as(folder / f"s{series}_{n}.dcm")
    return uids


def test_load_volumed_reads_the_series_a_case_names(tmp_path):
    from medsam_monai.io import read_volume

    folder = tmp_path / "study"
    uids = _two_series_folder(folder)
    for uid in uids:
        out = LoadVolumed(keys="image")({"image": str(folder), "series_uid": uid})
        expected = read_volume(folder, series_uid=uid)
        assert isinstance(out["image"], MetaTensor) and out["image"].shape == expected.shape
        np.testing.assert_array_equal(out["image"].affine.numpy(), expected.affine)
        np.testing.assert_array_equal(out["image"].numpy(), expected.array)
    assert (
        LoadVolumed(keys="image")({"image": str(folder), "series_uid": uids[0]})["image"].affine[2, 3]
        != LoadVolumed(keys="image")({"image": str(folder), "series_uid": uids[1]})["image"].affine[2, 3]
    )
    with pytest.raises(ValueError, match="holds 2 DICOM series"):
        LoadVolumed(keys="image")({"image": str(folder)})
    with pytest.raises(ValueError, match="'series_uid' must be a DICOM series UID"):
        LoadVolumed(keys="image")({"image": str(folder), "series_uid": 7})
    np.testing.assert_array_equal(LoadVolume(series_uid=uids[1])(folder).affine.numpy(), read_volume(folder, uids[1]).affine)


def test_load_volumed_names_a_missing_path_and_allows_missing_keys():
    image = os.path.join(NIB_DATA, "anatomical.nii")
    with pytest.raises(ValueError, match="no 'label' given; this run reads 'image' and 'label'"):
        LoadVolumed(keys=["image", "label"])({"image": image})
    out = LoadVolumed(keys=["image", "label"], allow_missing_keys=True)({"image": image})
    assert "label" not in out and out["image"].meta["filename_or_obj"] == image


# ------------------------------------------------------------------------------------------
# one transforms package: every transform in it, old homes re-export the same objects
# ------------------------------------------------------------------------------------------


def test_bundle_and_training_transforms_live_in_the_transforms_package():
    import medsam_monai.bundle as bundle
    import medsam_monai.training as training
    import medsam_monai.transforms as transforms
    from medsam_monai.segment import VoxelBox as SegmentVoxelBox
    from medsam_monai.transforms import array, dictionary

    for name in ("LoadVolume", "BoxesFromLabel", "CTWindow", "MRNormalize", "IntensityForModality", "PrepareSlice"):
        assert getattr(transforms, name) is getattr(array, name)
    for name in ("LoadVolumed", "PromptBoxesd", "BoxesFromLabeld", "SaveLabelVolumed", "LoadSliced", "RandBoxPromptd"):
        assert getattr(transforms, name) is getattr(dictionary, name)
    for name in (
        "LoadVolume",
        "LoadVolumed",
        "PromptBoxesd",
        "BoxesFromLabel",
        "BoxesFromLabeld",
        "SaveLabelVolumed",
        "boxes_from_prompts",
        "case_name",
    ):
        assert getattr(bundle, name) is getattr(transforms, name)  # the configs' first _target_ paths still work
    for name in ("LoadSliced", "RandBoxPromptd", "present_labels", "resize_label", "tight_boxes", "display_volumes"):
        assert getattr(training, name) is getattr(transforms, name)
    assert SegmentVoxelBox is transforms.VoxelBox


def test_transforms_know_nothing_of_the_network():
    import subprocess
    import sys

    code = "import sys, medsam_monai.transforms; print(sorted(m for m in sys.modules if m.startswith('medsam_monai.')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for module in (
        "medsam_monai.networks",
        "medsam_monai.predictor",
        "medsam_monai.segment",
        "medsam_monai.checkpoints",
        "medsam_monai.bundle",
        "medsam_monai.training",
    ):
        assert f"'{module}'" not in loaded, loaded


def test_no_module_imports_a_private_name_from_another():
    import ast
    from pathlib import Path

    import medsam_monai

    package = Path(medsam_monai.__file__).parent
    checked = [
        *package.glob("transforms/*.py"),
        *package.glob("bundle/*.py"),
        package / "training" / "data.py",
        package / "training" / "network.py",
        package / "segment.py",
    ]
    offenders = []
    for path in checked:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                offenders += [
                    f"{path.relative_to(package)}: {alias.name}"
                    for alias in node.names
                    if alias.name.startswith("_") and not alias.name.startswith("__")
                ]
    assert len(checked) > 10 and offenders == []
