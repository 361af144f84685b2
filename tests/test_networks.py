"""The SAM network itself: attention paths, decoder batch semantics, precision."""

from __future__ import annotations

import pytest
import torch

from medsam_monai import autocast, build_sam
from medsam_monai.networks import (
    SamVariant,
    build_sam_from_spec,
    build_sam_variant,
    image_encoder,
    pair_images_with_prompts,
)
from medsam_monai.networks.image_encoder import (
    _sdpa_with_rel_pos,
    attention_with_rel_pos,
    decomposed_rel_pos_terms,
)
from medsam_monai.testing import randomize_


def naive_attention(q, k, v, rel_pos_h, rel_pos_w, size):
    """The original formulation: the whole (L, L) score matrix with the bias added, then softmax."""
    h, w = size
    rel_h, rel_w = decomposed_rel_pos_terms(q, rel_pos_h, rel_pos_w, size)
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    scores = scores.view(-1, h, w, h, w) + rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]
    return scores.view(-1, h * w, h * w).softmax(-1) @ v


@pytest.mark.parametrize("size", [(14, 14), (64, 64), (23, 9)])
def test_chunked_attention_equals_the_original_formula(size):
    gen = torch.Generator().manual_seed(0)
    h, w = size
    q, k, v = (torch.randn(6, h * w, 16, generator=gen) for _ in range(3))
    rel_pos_h = torch.randn(2 * h - 1, 16, generator=gen)
    rel_pos_w = torch.randn(2 * w - 1, 16, generator=gen)
    expected = naive_attention(q, k, v, rel_pos_h, rel_pos_w, size)
    rel_h, rel_w = decomposed_rel_pos_terms(q, rel_pos_h, rel_pos_w, size)
    torch.testing.assert_close(attention_with_rel_pos(q, k, v, rel_h, rel_w), expected, rtol=1e-5, atol=1e-5)
    # The SDPA path (used on CUDA) computes the same thing.
    torch.testing.assert_close(_sdpa_with_rel_pos(q, k, v, rel_h, rel_w), expected, rtol=1e-5, atol=1e-5)


def test_global_attention_is_chunked_across_query_rows(monkeypatch):
    """Force tiny chunks so the row and head loops both run several times."""
    monkeypatch.setattr(image_encoder, "_CPU_CHUNK_ELEMENTS", 3 * 64 * 64)
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(3, 64 * 64, 8, generator=gen) for _ in range(3))
    tables = torch.randn(127, 8, generator=gen), torch.randn(127, 8, generator=gen)
    rel_h, rel_w = decomposed_rel_pos_terms(q, *tables, (64, 64))
    expected = naive_attention(q, k, v, *tables, (64, 64))
    torch.testing.assert_close(attention_with_rel_pos(q, k, v, rel_h, rel_w), expected, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# autograd: the same model trains and infers
# --------------------------------------------------------------------------------------------


def reference_attention(q, k, v, rel_h, rel_w):
    """The plain differentiable formula, all heads at once: the reference for values and gradients."""
    n, h, w, _ = rel_h.shape
    bias = (rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]).reshape(n, h * w, h * w)
    return ((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1) + bias).softmax(-1) @ v


# A small spec with a global-attention block beside windowed ones, and 6x6 windows that do not tile
# its 16x16 token grid (padded windows); 256x256 input keeps it fast.
SMALL_WITH_GLOBAL_BLOCK = SamVariant(
    32,
    3,
    2,
    (1,),
    prompt_embed_dim=32,
    decoder_mlp_dim=64,
    decoder_num_heads=2,
    iou_head_hidden_dim=32,
    image_size=256,
    window_size=6,
)


def _encoder_gradients(encoder, image, weights):
    """Forward with autograd on, backward of a fixed weighted sum: (output, grads of parameters and image)."""
    image = image.clone().requires_grad_(True)
    out = encoder(image)
    (out * weights).sum().backward()
    grads = {name: p.grad.clone() for name, p in encoder.named_parameters()}
    grads["<image>"] = image.grad.clone()
    encoder.zero_grad()
    return out.detach(), grads


@pytest.mark.parametrize("variant", ["tiny", "small_with_global_block"])
def test_encoder_trains_with_autograd_and_matches_reference_gradients(variant, monkeypatch):
    if variant == "tiny":
        model = build_sam("tiny")  # the README's snippet, on the variant the tests use
    else:
        model = build_sam_from_spec(SMALL_WITH_GLOBAL_BLOCK)
    encoder = randomize_(model, seed=3).image_encoder
    size = encoder.img_size
    gen = torch.Generator().manual_seed(8)
    image = torch.rand(1, 3, size, size, generator=gen)
    weights = torch.randn(1, encoder.neck[-1].weight.shape[0], size // 16, size // 16, generator=gen)

    out, grads = _encoder_gradients(encoder, image, weights)  # raised "out=... don't support autograd" before
    with torch.no_grad():
        inferred = encoder(image)  # the fast in-buffer CPU path
    torch.testing.assert_close(out, inferred, rtol=1e-5, atol=1e-5)

    monkeypatch.setattr(image_encoder, "attention_with_rel_pos", reference_attention)
    expected_out, expected = _encoder_gradients(encoder, image, weights)
    torch.testing.assert_close(out, expected_out, rtol=1e-5, atol=1e-5)
    assert grads.keys() == expected.keys()
    for name, grad in grads.items():
        assert grad.abs().sum() > 0, name  # every parameter (rel pos tables included) gets a gradient
        torch.testing.assert_close(grad, expected[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("size", [(8, 8), (23, 9)])
def test_attention_gradients_equal_the_plain_formula(size):
    gen = torch.Generator().manual_seed(5)
    h, w = size
    q, k, v = (torch.randn(3, h * w, 8, generator=gen, requires_grad=True) for _ in range(3))
    tables = [torch.randn(2 * n - 1, 8, generator=gen, requires_grad=True) for n in (h, w)]
    weights = torch.randn(3, h * w, 8, generator=gen)
    inputs = [q, k, v, *tables]

    def gradients(attention):
        rel_h, rel_w = decomposed_rel_pos_terms(q, *tables, size)
        out = attention(q, k, v, rel_h, rel_w)
        return out.detach(), torch.autograd.grad((out * weights).sum(), inputs)

    out, grads = gradients(attention_with_rel_pos)
    expected_out, expected = gradients(reference_attention)
    torch.testing.assert_close(out, expected_out, rtol=1e-5, atol=1e-5)
    for grad, reference in zip(grads, expected):
        torch.testing.assert_close(grad, reference, rtol=1e-4, atol=1e-5)


def test_inference_keeps_the_in_buffer_cpu_path(monkeypatch):
    """Without autograd the CPU path is the fast one; with it, the differentiable SDPA one."""
    calls = []
    monkeypatch.setattr(image_encoder, "_sdpa_with_rel_pos", lambda *args: calls.append("sdpa") or reference_attention(*args))
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 64, 8, generator=gen) for _ in range(3))
    rel_h, rel_w = decomposed_rel_pos_terms(q, torch.randn(15, 8, generator=gen), torch.randn(15, 8, generator=gen), (8, 8))
    with torch.no_grad():
        attention_with_rel_pos(q, k, v, rel_h, rel_w)
    attention_with_rel_pos(q, k, v, rel_h, rel_w)  # grad mode on, but nothing requires grad
    assert calls == []
    attention_with_rel_pos(q.requires_grad_(True), k, v, rel_h, rel_w)
    assert calls == ["sdpa"]


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return randomize_(build_sam_variant("tiny"), seed=2).eval()


def test_decoder_pairs_images_with_prompts(tiny_model):
    gen = torch.Generator().manual_seed(4)
    embeddings = torch.randn(2, 64, 64, 64, generator=gen)
    boxes = torch.tensor([[10.0, 20.0, 300.0, 400.0], [500.0, 500.0, 900.0, 950.0]])
    with torch.inference_mode():
        paired, _ = tiny_model.decode(embeddings, boxes=boxes)
        first_alone, _ = tiny_model.decode(embeddings[:1], boxes=boxes[:1])
        second_alone, _ = tiny_model.decode(embeddings[1:], boxes=boxes[1:])
        shared, _ = tiny_model.decode(embeddings[1:], boxes=boxes)
        grouped, _ = tiny_model.decode(embeddings, boxes=torch.cat([boxes, boxes]))
    torch.testing.assert_close(paired[0], first_alone[0])
    torch.testing.assert_close(paired[1], second_alone[0])
    torch.testing.assert_close(shared[1], second_alone[0])  # 1 image x N prompts
    # Two images with two prompts each: prompts 0, 1 on image 0 and prompts 2, 3 on image 1.
    with torch.inference_mode():
        torch.testing.assert_close(grouped[0], paired[0])
        torch.testing.assert_close(grouped[1], tiny_model.decode(embeddings[:1], boxes=boxes[1:])[0][0])
        torch.testing.assert_close(grouped[2], tiny_model.decode(embeddings[1:], boxes=boxes[:1])[0][0])
        torch.testing.assert_close(grouped[3], paired[1])
    with pytest.raises(ValueError, match="cannot pair 2 image embeddings with 3 prompts"):
        tiny_model.decode(embeddings, boxes=torch.cat([boxes, boxes[:1]]))


def test_pair_images_with_prompts_copies_nothing_when_paired():
    images = torch.randn(3, 4)
    assert pair_images_with_prompts(images, 3) is images
    assert pair_images_with_prompts(images[:1], 5).shape == (5, 4)


def test_bf16_embedding_within_two_percent_of_fp32(tiny_model):
    image = torch.rand(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(6))
    with torch.inference_mode():
        with autocast("cpu", "fp32"):
            exact = tiny_model.encode_image(image)
        with autocast("cpu", "bf16"):
            fast = tiny_model.encode_image(image)
    assert fast.dtype == torch.bfloat16  # autocast really ran in bf16
    relative = ((fast.float() - exact).norm() / exact.norm()).item()
    assert relative <= 0.02


def test_fp32_switches_off_an_outer_autocast(tiny_model):
    image = torch.rand(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(6))
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16), autocast("cpu", "fp32"):
        assert tiny_model.encode_image(image).dtype == torch.float32
    with pytest.raises(ValueError, match="unknown precision 'fp8'"), autocast("cpu", "fp8"):
        pass


def test_unknown_variant_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown SAM variant 'vit_x'.*vit_b, vit_l, vit_h, tiny"):
        build_sam_variant("vit_x")
