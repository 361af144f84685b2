"""SAM's own pipeline (``preprocessing="sam"``) equals transformers' SamProcessor + SamModel +
``post_process_masks`` end to end, with the same random weights, on a real image.

The prompts are the SAM ViT-H model card's usage (a point such as ``[[[450, 600]]]`` on a 2D RGB
image, masks and ``iou_scores``), a box, and points with a box. Masks must be identical except at
pixels whose logit lies within 1e-4 of the threshold; IoU scores agree to 1e-4.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data

from medsam_monai import build_sam
from medsam_monai.predictor import MedSAMPredictor
from medsam_monai.transforms import prepare_sam_image, sam_resized_shape

THRESHOLD_BAND = 1e-4


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return data.hubble_deep_field()  # (872, 1000, 3) uint8: not square, so the padding and crop matter


@pytest.fixture(scope="module")
def processor():
    from transformers import SamProcessor

    try:
        from transformers import SamImageProcessorPil as ImageProcessor  # transformers >= 5 without torchvision
    except ImportError:
        from transformers import SamImageProcessor as ImageProcessor
    return SamProcessor(image_processor=ImageProcessor())


@pytest.fixture(scope="module")
def ours(hf_tiny_dir) -> MedSAMPredictor:
    return MedSAMPredictor(build_sam("tiny", hf_tiny_dir), device="cpu", preprocessing="sam")


def reference(hf_tiny, processor, image, **prompts):
    """transformers' masks (M, H, W) bool, logits (M, H, W) and IoU scores (M,) for one prompt."""
    inputs = processor(image, return_tensors="pt", **prompts)
    with torch.inference_mode():
        outputs = hf_tiny(**inputs, multimask_output=True)
    sizes = (inputs["original_sizes"], inputs["reshaped_input_sizes"])
    masks = processor.image_processor.post_process_masks(outputs.pred_masks, *sizes)[0][0]
    logits = processor.image_processor.post_process_masks(outputs.pred_masks, *sizes, binarize=False)[0][0]
    return masks.numpy(), logits.numpy(), outputs.iou_scores[0, 0].numpy(), inputs


def assert_same_masks(ours_masks: np.ndarray, ref_masks: np.ndarray, ref_logits: np.ndarray) -> None:
    assert ours_masks.shape == ref_masks.shape
    differ = ours_masks != ref_masks
    assert np.all(np.abs(ref_logits[differ]) < THRESHOLD_BAND), f"{differ.sum()} pixels differ away from the threshold"
    assert ref_masks.any() and (~ref_masks).any()  # a real comparison, not two empty masks


def test_pixel_values_equal_the_processor(processor, image):
    inputs = processor(image, return_tensors="pt")
    ours = prepare_sam_image(image)
    assert tuple(inputs["reshaped_input_sizes"][0].tolist()) == sam_resized_shape(image.shape[:2])
    # transformers rescales by 1/255 and normalises by ImageNet mean/std: the same numbers as SAM's
    assert torch.allclose(ours, inputs["pixel_values"][0], atol=1e-5)


@pytest.mark.parametrize(
    "prompt",
    [
        {"input_points": [[[450, 600]]]},
        {"input_boxes": [[[300.0, 200.0, 700.0, 650.0]]]},
        {"input_points": [[[450, 600], [520, 380]]], "input_labels": [[[1, 0]]], "input_boxes": [[[300.0, 200.0, 700.0, 650.0]]]},
    ],
    ids=["model-card-point", "box", "points-and-box"],
)
def test_sam_pipeline_equals_transformers(hf_tiny, processor, ours, image, prompt):
    ref_masks, ref_logits, ref_iou, _ = reference(hf_tiny, processor, image, **prompt)
    points = labels = box = None
    if "input_points" in prompt:
        points = np.asarray(prompt["input_points"][0], dtype=np.float64)
        labels = np.asarray(prompt.get("input_labels", [[[1] * len(points)]])[0][0])
    if "input_boxes" in prompt:
        box = prompt["input_boxes"][0][0]
    found = ours.predict_slice(image[None], 0, box=box, points=points, point_labels=labels, multimask_output=True)
    assert found.masks.shape == (3, *image.shape[:2])
    assert_same_masks(found.masks, ref_masks, ref_logits)
    np.testing.assert_allclose(found.iou, ref_iou, atol=1e-4)


def test_grey_images_are_repeated_to_three_channels(hf_tiny, processor, ours):
    grey = data.camera()[:400]  # (400, 512) uint8, not square
    rgb = np.repeat(grey[..., None], 3, -1)
    ref_masks, ref_logits, ref_iou, _ = reference(hf_tiny, processor, rgb, input_points=[[[250, 120]]])
    found = ours.predict_slice(grey[None], 0, points=[[250, 120]], point_labels=[1], multimask_output=True)
    assert_same_masks(found.masks, ref_masks, ref_logits)
    np.testing.assert_allclose(found.iou, ref_iou, atol=1e-4)


def test_the_medsam_pipeline_is_not_the_sam_pipeline(hf_tiny_dir, image):
    """The two pipelines must differ (a switch that did nothing would pass the tests above for one of them)."""
    model = build_sam("tiny", hf_tiny_dir)
    sam = MedSAMPredictor(model, device="cpu", preprocessing="sam").image_embedding(image)
    medsam = MedSAMPredictor(model, device="cpu", preprocessing="medsam").image_embedding(image)
    assert not torch.allclose(sam, medsam, atol=1e-3)


def test_an_unknown_preprocessing_is_one_line(hf_tiny_dir):
    with pytest.raises(ValueError, match="unknown preprocessing 'clip'; choose one of medsam, sam"):
        MedSAMPredictor(build_sam("tiny", hf_tiny_dir), device="cpu", preprocessing="clip")
