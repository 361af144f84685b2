"""The assembled Segment Anything model (SAM / MedSAM)."""

from __future__ import annotations

import torch
from torch import nn

from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder


class Sam(nn.Module):
    """Image encoder, prompt encoder and mask decoder with the original SAM parameter names.

    The network takes prepared images and prompts in the 1024 frame; everything around it (SAM's
    pixel mean/std normalisation, which MedSAM does not use, and the upscale of the decoder's masks)
    is in :mod:`medsam_monai.transforms` (``sam_normalize``, ``upscale_masks``).
    """

    def __init__(
        self,
        image_encoder: ImageEncoderViT,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        variant: str = "",
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.variant = variant

    @property
    def image_size(self) -> int:
        """Side of the square network input (1024)."""
        return self.image_encoder.img_size

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, 1024, 1024) prepared images -> (B, C, 64, 64) image embeddings."""
        return self.image_encoder(images)

    def decode(
        self,
        image_embeddings: torch.Tensor,
        boxes: torch.Tensor | None = None,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        mask_inputs: torch.Tensor | None = None,
        multimask_output: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks for P prompts on B image embeddings.

        Prompts are grouped by image, in order: P == B pairs prompt b with image b (MedSAM's
        batches), B == 1 applies every prompt to the one image (interactive SAM); in general each
        image has P // B consecutive prompts.

        Args:
            image_embeddings: (B, C, 64, 64).
            boxes: (P, 4) as (x0, y0, x1, y1) in the 1024 input frame.
            points: coordinates (P, N, 2) as (x, y) in the 1024 frame and labels (P, N), 1 positive,
                0 negative, -1 padding.
            mask_inputs: (P, 1, 256, 256) low-res logits from a previous prediction.
            multimask_output: three candidate masks per prompt instead of one.

        Returns:
            low-res mask logits (P, M, 256, 256) and predicted IoU (P, M), M = 3 or 1.
        """
        sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=mask_inputs)
        return self.mask_decoder(
            image_embeddings=image_embeddings,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
        )

    def forward(
        self,
        images: torch.Tensor,
        boxes: torch.Tensor | None = None,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        mask_inputs: torch.Tensor | None = None,
        multimask_output: bool = False,
    ) -> torch.Tensor:
        """MedSAM's forward: B prepared images, prompts grouped by image -> (P, M, 256, 256) logits."""
        logits, _ = self.decode(self.encode_image(images), boxes, points, mask_inputs, multimask_output)
        return logits
