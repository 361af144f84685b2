"""Numerical equivalence with the reference implementation (transformers SamModel, same weights)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from medsam_monai import build_sam

TOL = 1e-4  # max relative error, fp32


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours.float() - ref.float()).abs().max() / ref.float().abs().max()).item()


@pytest.fixture(scope="module")
def pair(hf_tiny, hf_tiny_dir):
    """(reference, ours, image batch, reference embeddings, our embeddings)."""
    ours = build_sam("tiny", hf_tiny_dir)
    gen = torch.Generator().manual_seed(3)
    images = torch.rand(2, 3, 1024, 1024, generator=gen)
    with torch.inference_mode():
        ref_emb = hf_tiny.get_image_embeddings(images)
        our_emb = ours.encode_image(images)
    return hf_tiny, ours, images, ref_emb, our_emb


def test_image_embeddings_match(pair):
    _, _, _, ref_emb, our_emb = pair
    assert our_emb.shape == ref_emb.shape == (2, 64, 64, 64)
    assert rel_err(our_emb, ref_emb) <= TOL


def test_global_attention_blocks_match_reference(tmp_path):
    """``tiny`` has windowed attention only; SAM's global blocks (here two, beside 14x14 windows
    that need padding) are checked on a small spec that has them."""
    from transformers import SamModel

    from medsam_monai.checkpoints import load_checkpoint_into
    from medsam_monai.networks.registry import SAM_VARIANTS, build_sam_from_spec
    from medsam_monai.testing import hf_config_for, randomize_

    spec = replace(SAM_VARIANTS["tiny"], encoder_global_attn_indexes=(1, 3), window_size=14)
    reference = randomize_(SamModel(hf_config_for(spec)), seed=5).eval()
    reference.save_pretrained(tmp_path)
    ours = load_checkpoint_into(build_sam_from_spec(spec), tmp_path).eval()
    assert ours.image_encoder.blocks[1].window_size == 0 and ours.image_encoder.blocks[0].window_size == 14
    images = torch.rand(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        assert rel_err(ours.encode_image(images), reference.get_image_embeddings(images)) <= TOL


@pytest.mark.parametrize("multimask", [False, True])
def test_box_prompt_per_image(pair, multimask):
    """B images x 1 box each (MedSAM's batches): image b pairs with box b."""
    hf, ours, _, ref_emb, our_emb = pair
    boxes = torch.tensor([[100.0, 150.0, 600.0, 700.0], [10.0, 20.0, 300.0, 400.0]])
    with torch.inference_mode():
        ref = hf(image_embeddings=ref_emb, input_boxes=boxes[:, None], multimask_output=multimask)
        logits, iou = ours.decode(our_emb, boxes=boxes, multimask_output=multimask)
    masks = 3 if multimask else 1
    assert logits.shape == (2, masks, 256, 256) and iou.shape == (2, masks)
    assert rel_err(logits, ref.pred_masks[:, 0]) <= TOL
    assert rel_err(iou, ref.iou_scores[:, 0]) <= TOL


@pytest.mark.parametrize("multimask", [False, True])
def test_points_one_image_many_prompts(pair, multimask):
    """1 image x N prompts (interactive SAM): every prompt sees the same image."""
    hf, ours, _, ref_emb, our_emb = pair
    gen = torch.Generator().manual_seed(5)
    coords = torch.rand(3, 4, 2, generator=gen) * 1024
    labels = torch.tensor([[1, 0, 1, 1], [1, 1, 0, 0], [1, 1, 1, -1]])
    with torch.inference_mode():
        ref = hf(image_embeddings=ref_emb[:1], input_points=coords[None], input_labels=labels[None], multimask_output=multimask)
        logits, iou = ours.decode(our_emb[:1], points=(coords, labels), multimask_output=multimask)
    assert logits.shape[0] == 3
    assert rel_err(logits, ref.pred_masks[0]) <= TOL
    assert rel_err(iou, ref.iou_scores[0]) <= TOL


def test_points_with_box_and_mask_prompt(pair):
    """A box, refining points and a previous low-res mask together."""
    hf, ours, _, ref_emb, our_emb = pair
    box = torch.tensor([[200.0, 220.0, 700.0, 800.0]])
    coords = torch.tensor([[[400.0, 500.0], [650.0, 300.0]]])
    labels = torch.tensor([[1, 0]])
    with torch.inference_mode():
        previous, _ = ours.decode(our_emb[:1], boxes=box)
        ref = hf(
            image_embeddings=ref_emb[:1],
            input_points=coords[None],
            input_labels=labels[None],
            input_boxes=box[None],
            input_masks=previous,
            multimask_output=False,
        )
        logits, iou = ours.decode(our_emb[:1], boxes=box, points=(coords, labels), mask_inputs=previous)
    assert rel_err(logits, ref.pred_masks[0]) <= TOL
    assert rel_err(iou, ref.iou_scores[0]) <= TOL
    # The prompts change the answer: the comparison is not between two constant outputs.
    assert rel_err(logits, previous) > 1e-2


def test_forward_equals_encode_then_decode(pair):
    _, ours, images, _, our_emb = pair
    boxes = torch.tensor([[100.0, 150.0, 600.0, 700.0], [10.0, 20.0, 300.0, 400.0]])
    with torch.inference_mode():
        direct = ours(images, boxes=boxes)
        two_steps, _ = ours.decode(our_emb, boxes=boxes)
    torch.testing.assert_close(direct, two_steps)


@pytest.mark.slow
def test_full_vit_b_at_1024_matches_reference():
    """The real MedSAM architecture once, at full size (random weights: real ones are not available here)."""
    from transformers import SamModel

    from medsam_monai.checkpoints import to_original_keys
    from medsam_monai.testing import hf_config_for, randomize_

    ref = randomize_(SamModel(hf_config_for("vit_b")), seed=7).eval()
    ours = build_sam("vit_b")
    ours.load_state_dict(to_original_keys(ref.state_dict()), strict=True)
    image = torch.rand(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(11))
    box = torch.tensor([[300.0, 280.0, 720.0, 690.0]])
    with torch.inference_mode():
        ref_emb = ref.get_image_embeddings(image)
        our_emb = ours.encode_image(image)
        ref_out = ref(image_embeddings=ref_emb, input_boxes=box[None], multimask_output=False)
        logits, _ = ours.decode(our_emb, boxes=box)
    assert our_emb.shape == (1, 256, 64, 64)
    assert rel_err(our_emb, ref_emb) <= TOL
    assert rel_err(logits, ref_out.pred_masks[0]) <= TOL
