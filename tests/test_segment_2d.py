"""`medsam segment` on 2D images (issue 17 item 2): PNG, JPEG and DICOM end to end, equal to MedSAM's own
2D inference (``MedSAM_Inference.py``'s steps, re-implemented here on our network module), SAM's
pipeline with ``--preprocessing sam``, the label outputs and the 2D preview.

The model is the packaged tiny demo model (trained on phantoms, so its masks on these images mean
nothing clinically; every test checks that the masks compared are partial, neither empty nor full).
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pydicom
import pytest
import skimage.data
import skimage.io
import torch
import torch.nn.functional as F
from helpers import assert_partial
from PIL import Image
from pydicom.data import get_testdata_file
from skimage import transform

from medsam_monai.checkpoints import TINY_DEMO_CHECKPOINT, build_sam
from medsam_monai.cli import main
from medsam_monai.preview import MIN_LONG_SIDE

SAM_MEAN = torch.tensor([123.675, 116.28, 103.53]).reshape(3, 1, 1)
SAM_STD = torch.tensor([58.395, 57.12, 57.375]).reshape(3, 1, 1)
POSITIVE_GREEN, NEGATIVE_RED = (40, 220, 60), (235, 40, 40)  # the preview's point colours


@pytest.fixture(scope="module")
def model():
    """Our network with the packaged tiny weights: what `--variant tiny` loads."""
    return build_sam("tiny", TINY_DEMO_CHECKPOINT).eval()


def medsam_inference(model, img_np: np.ndarray, box: list[int]) -> np.ndarray:
    """MedSAM_Inference.py (bowang-lab/MedSAM), step by step, with our network modules in place of
    segment-anything's: grey -> 3 channels, skimage cubic resize to 1024 (preserve_range,
    anti_aliasing), uint8 cast, min-max to [0, 1], box / [W, H, W, H] * 1024, image encoder, prompt
    encoder, mask decoder (one mask), sigmoid, one bilinear resize to (H, W), > 0.5."""
    img_3c = np.repeat(img_np[:, :, None], 3, axis=-1) if img_np.ndim == 2 else img_np
    H, W, _ = img_3c.shape
    img_1024 = transform.resize(img_3c, (1024, 1024), order=3, preserve_range=True, anti_aliasing=True).astype(np.uint8)
    img_1024 = (img_1024 - img_1024.min()) / np.clip(img_1024.max() - img_1024.min(), a_min=1e-8, a_max=None)
    img_1024_tensor = torch.tensor(img_1024).float().permute(2, 0, 1).unsqueeze(0)
    box_1024 = np.array([box]) / np.array([W, H, W, H]) * 1024
    with torch.no_grad():
        image_embedding = model.image_encoder(img_1024_tensor)
        box_torch = torch.as_tensor(box_1024, dtype=torch.float)[:, None, :]
        sparse, dense = model.prompt_encoder(points=None, boxes=box_torch, masks=None)
        low_res_logits, _ = model.mask_decoder(
            image_embeddings=image_embedding,
            image_pe=model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
    low_res_pred = F.interpolate(torch.sigmoid(low_res_logits), size=(H, W), mode="bilinear", align_corners=False)
    return (low_res_pred.squeeze().numpy() > 0.5).astype(np.uint8)


def sam_inference(model, img_np: np.ndarray, box: list[int]) -> np.ndarray:
    """segment-anything's SamPredictor steps: RGB uint8, longest side to 1024 (PIL bilinear), pixel
    mean/std, zero padding, box * new/old, one mask, upscale to 1024, crop, upscale to (H, W), logits > 0."""
    rgb = np.repeat(img_np[:, :, None], 3, axis=-1) if img_np.ndim == 2 else img_np
    H, W, _ = rgb.shape
    scale = 1024 / max(H, W)
    new_h, new_w = int(H * scale + 0.5), int(W * scale + 0.5)
    resized = np.array(Image.fromarray(rgb).resize((new_w, new_h), Image.BILINEAR))
    x = (torch.as_tensor(resized).permute(2, 0, 1).float() - SAM_MEAN) / SAM_STD
    x = F.pad(x, (0, 1024 - new_w, 0, 1024 - new_h))[None]
    box_1024 = np.array([box], dtype=np.float64) * np.array([new_w / W, new_h / H, new_w / W, new_h / H])
    with torch.no_grad():
        sparse, dense = model.prompt_encoder(points=None, boxes=torch.as_tensor(box_1024, dtype=torch.float), masks=None)
        low_res, _ = model.mask_decoder(
            image_embeddings=model.image_encoder(x),
            image_pe=model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
    masks = F.interpolate(low_res, (1024, 1024), mode="bilinear", align_corners=False)[..., :new_h, :new_w]
    return (F.interpolate(masks, (H, W), mode="bilinear", align_corners=False)[0, 0].numpy() > 0).astype(np.uint8)


def pre_grey_rgb_minmax(image: np.ndarray) -> np.ndarray:
    """MedSAM's utils/pre_grey_rgb.py for an image above 255: ``np.uint8((x - min) / (max - min) * 255.0)``."""
    return np.uint8((image - image.min()) / (np.max(image) - np.min(image)) * 255.0)


def segment(*args: str) -> int:
    return main(["segment", *args, "--variant", "tiny", "--device", "cpu"])


def read_labels(path) -> np.ndarray:
    return np.asarray(Image.open(path))


# ----- equal to MedSAM's 2D inference ---------------------------------------------------------------


def test_a_grey_png_equals_medsam_inference(tmp_path, model):
    """skimage's camera, cropped so that it is not square (rows and columns cannot swap unseen)."""
    source = tmp_path / "camera.png"
    Image.fromarray(skimage.data.camera()[40:400, 60:500]).save(source)
    box = [150, 80, 260, 200]
    assert segment(str(source), "--box", ",".join(map(str, box)), "--out", str(tmp_path / "mask.png")) == 0
    found = read_labels(tmp_path / "mask.png")
    expected = medsam_inference(model, skimage.io.imread(source), box)
    assert found.shape == (360, 440) and found.dtype == np.uint8
    assert_partial(expected)
    np.testing.assert_array_equal(found, expected)


def test_an_rgb_jpeg_equals_medsam_inference(tmp_path, model):
    source = tmp_path / "chelsea.jpg"
    Image.fromarray(skimage.data.chelsea()).save(source, quality=90)
    box = [120, 40, 330, 260]
    assert segment(str(source), "--box", ",".join(map(str, box)), "--out", str(tmp_path / "mask.tif")) == 0
    expected = medsam_inference(model, skimage.io.imread(source), box)
    assert_partial(expected)
    np.testing.assert_array_equal(read_labels(tmp_path / "mask.tif"), expected)


def test_a_ct_dicom_slice_equals_medsam_inference_after_its_2d_rule(tmp_path, model):
    """pydicom's CT_small.dcm (HU -896..1167): MedSAM's 2D rule min-maxes it to [0, 255] first; the
    NIfTI output is the same mask as a one-slice volume with the DICOM's pixel spacing."""
    source = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(source)
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    box = [50, 50, 80, 90]
    out = tmp_path / "mask.nii.gz"
    assert segment(source, "--box", ",".join(map(str, box)), "--out", str(out)) == 0
    expected = medsam_inference(model, pre_grey_rgb_minmax(hu), box)
    assert_partial(expected)
    image = nib.load(out)
    assert image.shape == (128, 128, 1)
    np.testing.assert_array_equal(np.asarray(image.dataobj)[:, :, 0].T, expected)  # [i, j] = [column, row]
    spacing = float(ds.PixelSpacing[1]), float(ds.PixelSpacing[0])
    np.testing.assert_allclose(np.diag(image.affine)[:3], [-spacing[0], -spacing[1], 1.0], rtol=1e-6)


def test_modality_ct_windows_a_ct_slice_as_medsam_pre_ct_mr(tmp_path, model):
    """``--modality ct --window 40,400``: pre_CT_MR.py's clip to [-160, 240] and min-max of the clipped slice."""
    source = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(source)
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    clipped = np.clip(hu, -160, 240)
    windowed = np.uint8((clipped - clipped.min()) / (clipped.max() - clipped.min()) * 255.0)
    box = [30, 40, 100, 100]
    out = tmp_path / "mask.png"
    assert segment(source, "--box", ",".join(map(str, box)), "--modality", "ct", "--window", "40,400", "--out", str(out)) == 0
    expected = medsam_inference(model, windowed, box)
    assert_partial(expected)
    np.testing.assert_array_equal(read_labels(out), expected)
    assert np.abs(windowed.astype(int) - pre_grey_rgb_minmax(hu)).max() > 50  # not the default rule's input


def test_preprocessing_sam_runs_sams_pipeline(tmp_path, model):
    source = tmp_path / "camera.png"
    Image.fromarray(skimage.data.camera()[40:400, 60:500]).save(source)
    box = [100, 50, 300, 300]
    out = tmp_path / "mask.bmp"
    assert segment(str(source), "--box", ",".join(map(str, box)), "--preprocessing", "sam", "--out", str(out)) == 0
    expected = sam_inference(model, skimage.io.imread(source), box)
    assert_partial(expected)
    np.testing.assert_array_equal(read_labels(out), expected)


# ----- outputs and preview --------------------------------------------------------------------------


def test_two_boxes_give_labels_1_and_2_and_a_seg_nrrd_names_them(tmp_path):
    source = tmp_path / "camera.png"
    Image.fromarray(skimage.data.camera()[40:400, 60:500]).save(source)
    out = tmp_path / "mask.seg.nrrd"
    boxes = ["--box", "150,80,260,200", "--box", "300,150,430,300"]
    assert segment(str(source), *boxes, "--label", "man", "--label", "grass", "--out", str(out)) == 0
    header = out.read_bytes()[:4000].decode("latin-1")
    assert "Segment0_Name:=man" in header and "Segment1_Name:=grass" in header
    from medsam_monai.io import read_volume

    labels = read_volume(out).array
    assert labels.shape == (440, 360, 1) and set(np.unique(labels)) == {0, 1, 2}
    # the second object lies in its box (x columns = i, y rows = j); SAM's mask may cross its edge a little
    i, j = np.nonzero(labels[:, :, 0] == 2)
    assert 300 <= i.mean() <= 430 and 150 <= j.mean() <= 300


def test_preview_of_a_2d_image_shows_its_colours_box_and_points(tmp_path):
    source = tmp_path / "chelsea.png"
    Image.fromarray(skimage.data.chelsea()).save(source)
    preview = tmp_path / "preview.png"
    args = [str(source), "--box", "120,40,330,260", "--point", "200,150", "--negative-point", "140,60"]
    assert segment(*args, "--out", str(tmp_path / "mask.png"), "--preview", str(preview)) == 0
    picture = np.asarray(Image.open(preview).convert("RGB"))
    assert max(picture.shape[:2]) >= MIN_LONG_SIDE
    assert np.all(picture == POSITIVE_GREEN, axis=-1).sum() > 20
    assert np.all(picture == NEGATIVE_RED, axis=-1).sum() > 20
    # the cat's orange survives: an RGB image is shown in colour, not as grey
    assert np.mean(picture[..., 0].astype(int) - picture[..., 2].astype(int)) > 10
