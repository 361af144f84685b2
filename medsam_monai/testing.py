"""Checking this package against the reference implementation (tests and benchmarks).

The reference is transformers' ``SamModel`` (an optional, test-only dependency).
"""

from __future__ import annotations

import torch

from .networks import SAM_VARIANTS
from .networks.registry import SamVariant


def hf_config_for(variant: str | SamVariant):  # -> transformers.SamConfig
    """A transformers ``SamConfig`` with the architecture of our ``variant`` (a name or a spec)."""
    from transformers import SamConfig

    spec = SAM_VARIANTS[variant] if isinstance(variant, str) else variant
    return SamConfig(
        vision_config=dict(
            hidden_size=spec.encoder_embed_dim,
            num_hidden_layers=spec.encoder_depth,
            num_attention_heads=spec.encoder_num_heads,
            global_attn_indexes=list(spec.encoder_global_attn_indexes),
            output_channels=spec.prompt_embed_dim,
            num_pos_feats=spec.prompt_embed_dim // 2,
            image_size=spec.image_size,
            patch_size=spec.patch_size,
            window_size=spec.window_size,
        ),
        prompt_encoder_config=dict(
            hidden_size=spec.prompt_embed_dim,
            image_size=spec.image_size,
            patch_size=spec.patch_size,
            mask_input_channels=spec.mask_in_chans,
        ),
        mask_decoder_config=dict(
            hidden_size=spec.prompt_embed_dim,
            mlp_dim=spec.decoder_mlp_dim,
            num_attention_heads=spec.decoder_num_heads,
            iou_head_hidden_dim=spec.iou_head_hidden_dim,
            # The original SAM's two-way blocks use nn.LayerNorm's default eps (1e-5); transformers
            # defaults to 1e-6 there. Mirror the original so the comparison is exact.
            layer_norm_eps=1e-5,
        ),
    )


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter and buffer non-trivial random values (default inits hide mistakes:
    zero biases, unit norms, zero relative position tables)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=gen)
            if name.endswith(("norm.weight", "norm1.weight", "norm2.weight", "norm3.weight", "norm4.weight")) or (
                "layer_norm" in name and name.endswith("weight")
            ):
                tensor.copy_(1.0 + 0.1 * noise)
            elif tensor.dim() >= 2 and "positional" not in name:
                fan_in = tensor[0].numel()
                tensor.copy_(noise / fan_in**0.5)
            else:
                tensor.copy_(0.1 * noise if "positional" not in name else noise)
    return model
