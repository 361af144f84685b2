"""The registry of SAM variants and ``build_sam``."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .sam import Sam
from .transformer import TwoWayTransformer


@dataclass(frozen=True)
class SamVariant:
    """Every number that fixes a SAM architecture (and so the shapes of its checkpoint)."""

    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    prompt_embed_dim: int = 256
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_hidden_dim: int = 256
    mask_in_chans: int = 16
    image_size: int = 1024
    patch_size: int = 16
    window_size: int = 14


SAM_VARIANTS: dict[str, SamVariant] = {
    "vit_b": SamVariant(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": SamVariant(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": SamVariant(1280, 32, 16, (7, 15, 23, 31)),
    # Same 1024 input and 64x64 token grid as SAM, a few hundred thousand parameters: for tests,
    # demos and CPU training on synthetic data. Windowed attention only, in 16x16 windows that tile
    # the grid without padding: a global block over 4096 tokens would cost more than all the rest
    # of the encoder (a CPU training step 3.2x slower: benchmarks/train_step_speed.py); the mask decoder still attends globally.
    "tiny": SamVariant(
        64,
        4,
        4,
        (),
        prompt_embed_dim=64,
        decoder_mlp_dim=256,
        decoder_num_heads=4,
        iou_head_hidden_dim=64,
        window_size=16,
    ),
}


def build_sam_variant(name: str) -> Sam:
    """An untrained model of the registered variant ``name``."""
    if name not in SAM_VARIANTS:
        raise ValueError(f"unknown SAM variant {name!r}; choose one of {', '.join(SAM_VARIANTS)}")
    return build_sam_from_spec(SAM_VARIANTS[name], name)


def build_sam_from_spec(spec: SamVariant, name: str = "") -> Sam:
    """An untrained model with the architecture ``spec``."""
    grid = spec.image_size // spec.patch_size
    image_encoder = ImageEncoderViT(
        img_size=spec.image_size,
        patch_size=spec.patch_size,
        embed_dim=spec.encoder_embed_dim,
        depth=spec.encoder_depth,
        num_heads=spec.encoder_num_heads,
        mlp_ratio=4.0,
        out_chans=spec.prompt_embed_dim,
        qkv_bias=True,
        use_rel_pos=True,
        window_size=spec.window_size,
        global_attn_indexes=spec.encoder_global_attn_indexes,
    )
    prompt_encoder = PromptEncoder(
        embed_dim=spec.prompt_embed_dim,
        image_embedding_size=(grid, grid),
        input_image_size=(spec.image_size, spec.image_size),
        mask_in_chans=spec.mask_in_chans,
    )
    mask_decoder = MaskDecoder(
        transformer_dim=spec.prompt_embed_dim,
        transformer=TwoWayTransformer(
            depth=2,
            embedding_dim=spec.prompt_embed_dim,
            mlp_dim=spec.decoder_mlp_dim,
            num_heads=spec.decoder_num_heads,
        ),
        num_multimask_outputs=3,
        iou_head_depth=3,
        iou_head_hidden_dim=spec.iou_head_hidden_dim,
    )
    return Sam(image_encoder, prompt_encoder, mask_decoder, variant=name)


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (buffers excluded)."""
    return sum(p.numel() for p in module.parameters())
