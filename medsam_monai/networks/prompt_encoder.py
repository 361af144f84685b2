"""SAM's prompt encoder: points, boxes and low-res masks -> sparse and dense prompt embeddings.

Coordinates are in the network's input frame (pixels of the 1024x1024 image, x = column, y = row).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .common import LayerNorm2d


class PositionEmbeddingRandom(nn.Module):
    """Positional encoding with random spatial frequencies (a fixed Gaussian 2 x num_pos_feats matrix)."""

    def __init__(self, num_pos_feats: int = 64, scale: float | None = None) -> None:
        super().__init__()
        scale = 1.0 if scale is None or scale <= 0.0 else scale
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn((2, num_pos_feats)))

    def _pe_encoding(self, coords: torch.Tensor) -> torch.Tensor:
        """(..., 2) coordinates normalised to [0, 1] -> (..., 2 * num_pos_feats)."""
        coords = 2 * coords - 1
        coords = coords @ self.positional_encoding_gaussian_matrix.to(coords.dtype)
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        """Encoding of every cell centre of an (H, W) grid: -> (2 * num_pos_feats, H, W)."""
        h, w = size
        device = self.positional_encoding_gaussian_matrix.device
        grid = torch.ones((h, w), device=device, dtype=torch.float32)
        y_embed = (grid.cumsum(dim=0) - 0.5) / h
        x_embed = (grid.cumsum(dim=1) - 0.5) / w
        return self._pe_encoding(torch.stack([x_embed, y_embed], dim=-1)).permute(2, 0, 1)

    def forward_with_coords(self, coords_input: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """(B, N, 2) pixel coordinates (x, y) in an image of ``image_size`` (H, W) -> (B, N, C)."""
        coords = coords_input.clone()  # divided in the input's dtype, then float32, as SAM does
        coords[:, :, 0] = coords[:, :, 0] / image_size[1]
        coords[:, :, 1] = coords[:, :, 1] / image_size[0]
        return self._pe_encoding(coords.to(self.positional_encoding_gaussian_matrix.dtype))


class PromptEncoder(nn.Module):
    """Encodes prompts for the mask decoder.

    Point labels: 1 positive, 0 negative, -1 padding (ignored).
    """

    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: tuple[int, int],
        input_image_size: tuple[int, int],
        mask_in_chans: int,
    ) -> None:
        """
        Args:
            embed_dim: prompt embedding channels (256 in SAM).
            image_embedding_size: (H, W) of the image embedding (64, 64).
            input_image_size: (H, W) of the network input (1024, 1024).
            mask_in_chans: hidden channels of the mask downscaler (16).
        """
        super().__init__()
        self.embed_dim = embed_dim
        self.input_image_size = input_image_size
        self.image_embedding_size = image_embedding_size
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        # 0: negative point, 1: positive point, 2: box top-left, 3: box bottom-right.
        self.num_point_embeddings = 4
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(self.num_point_embeddings))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of the image embedding grid: (1, embed_dim, H, W)."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def _embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        points = points + 0.5  # pixel centre
        if pad:
            points = torch.cat([points, torch.zeros_like(points[:, :1])], dim=1)
            labels = torch.cat([labels, -torch.ones_like(labels[:, :1])], dim=1)
        embedding = self.pe_layer.forward_with_coords(points, self.input_image_size)
        labels = labels[..., None]
        embedding = torch.where(labels == -1, self.not_a_point_embed.weight, embedding)
        embedding = embedding + torch.where(labels == 0, self.point_embeddings[0].weight, 0.0)
        return embedding + torch.where(labels == 1, self.point_embeddings[1].weight, 0.0)

    def _embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        boxes = boxes + 0.5  # pixel centre
        corners = self.pe_layer.forward_with_coords(boxes.reshape(-1, 2, 2), self.input_image_size)
        corner_offsets = torch.cat([self.point_embeddings[2].weight, self.point_embeddings[3].weight], dim=0)
        return corners + corner_offsets

    @staticmethod
    def _batch_size(
        points: tuple[torch.Tensor, torch.Tensor] | None, boxes: torch.Tensor | None, masks: torch.Tensor | None
    ) -> int:
        if points is not None:
            return points[0].shape[0]
        if boxes is not None:
            return boxes.shape[0]
        if masks is not None:
            return masks.shape[0]
        return 1

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            points: coordinates (P, N, 2) and labels (P, N), or None.
            boxes: (P, 4) as (x0, y0, x1, y1), or None.
            masks: (P, 1, 256, 256) low-res mask logits, or None.

        Returns:
            sparse (P, T, embed_dim) and dense (P, embed_dim, 64, 64) embeddings.
        """
        bs = self._batch_size(points, boxes, masks)
        device = self.point_embeddings[0].weight.device
        sparse = torch.empty((bs, 0, self.embed_dim), device=device)
        if points is not None:
            coords, labels = points
            sparse = torch.cat([sparse, self._embed_points(coords, labels, pad=boxes is None)], dim=1)
        if boxes is not None:
            sparse = torch.cat([sparse, self._embed_boxes(boxes)], dim=1)
        if masks is not None:
            dense = self.mask_downscaling(masks)
        else:
            h, w = self.image_embedding_size
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(bs, -1, h, w)
        return sparse, dense
