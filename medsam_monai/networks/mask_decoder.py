"""SAM's mask decoder: image embedding + prompt embeddings -> low-res mask logits and IoU scores."""

from __future__ import annotations

import torch
from torch import nn

from .common import MLP, LayerNorm2d
from .transformer import TwoWayTransformer


def pair_images_with_prompts(image_tensor: torch.Tensor, num_prompts: int) -> torch.Tensor:
    """Repeat per-image tensors so that each prompt gets the image it belongs to.

    Prompts are grouped by image, in order: with B images and P prompts (P a multiple of B),
    prompt p belongs to image ``p // (P // B)``. This covers both uses of SAM's decoder:
    B images with one box each (MedSAM, training, 3D batches; P == B, nothing is copied) and one
    image with N prompts (interactive SAM; B == 1).

    Args:
        image_tensor: (B, ...).
        num_prompts: P.

    Returns:
        (P, ...).
    """
    num_images = image_tensor.shape[0]
    if num_prompts == num_images:
        return image_tensor
    if num_images == 0 or num_prompts % num_images != 0:
        raise ValueError(
            f"cannot pair {num_images} image embeddings with {num_prompts} prompts: give one image "
            "with any number of prompts, or the same number of prompts for every image"
        )
    return torch.repeat_interleave(image_tensor, num_prompts // num_images, dim=0)


class MaskDecoder(nn.Module):
    """Predicts masks from an image embedding and prompt embeddings with a two-way transformer."""

    def __init__(
        self,
        transformer_dim: int,
        transformer: TwoWayTransformer,
        num_multimask_outputs: int = 3,
        activation: type[nn.Module] = nn.GELU,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            activation(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            activation(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            image_embeddings: (B, C, 64, 64); paired with prompts as :func:`pair_images_with_prompts` says.
            image_pe: (1, C, 64, 64) positional encoding of the embedding grid.
            sparse_prompt_embeddings: (P, T, C) point and box embeddings.
            dense_prompt_embeddings: (P, C, 64, 64) mask-prompt embeddings.
            multimask_output: return the 3 candidate masks (tokens 1..3) instead of the single one (token 0).

        Returns:
            masks (P, M, 256, 256) low-res logits and iou_pred (P, M), M = 3 or 1.
        """
        masks, iou_pred = self.predict_masks(image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings)
        selected = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, selected], iou_pred[:, selected]

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All ``num_mask_tokens`` masks (P, 4, 256, 256) and their IoU predictions (P, 4)."""
        num_prompts = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(num_prompts, -1, -1)
        tokens = torch.cat((output_tokens.to(sparse_prompt_embeddings.dtype), sparse_prompt_embeddings), dim=1)

        src = pair_images_with_prompts(image_embeddings, num_prompts) + dense_prompt_embeddings
        pos_src = image_pe.expand(num_prompts, -1, -1, -1)
        b, c, h, w = src.shape

        hs, src = self.transformer(src, pos_src, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]

        upscaled = self.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        hyper_in = torch.stack([mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1)
        b, c, h, w = upscaled.shape
        masks = (hyper_in @ upscaled.reshape(b, c, h * w)).reshape(b, -1, h, w)
        return masks, self.iou_prediction_head(iou_token_out)
