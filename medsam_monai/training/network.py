"""The network as MedSAM trains it: (images, boxes) -> mask logits at the 1024 input size.

:class:`MedSAMTrainNet` is a :class:`~medsam_monai.networks.Sam` (it shares the given model's
modules) whose ``forward`` is MedSAM's training forward. Its ``state_dict`` has exactly the
original SAM key names, so whatever saves it (MONAI's ``CheckpointSaver``, DDP, plain
``torch.save``) writes a file that :func:`medsam_monai.build_sam` and ``medsam segment
--checkpoint`` load as they are.
"""

from __future__ import annotations

import logging
from os import PathLike
from pathlib import Path

import torch

from ..checkpoints import build_sam
from ..networks import Sam
from ..transforms import upscale_masks

logger = logging.getLogger(__name__)


class MedSAMTrainNet(Sam):
    """MedSAM's training model: image encoder and mask decoder trained, prompt encoder frozen.

    ``forward(images, boxes)``: images (B, 1 or 3, 1024, 1024) prepared slices (one channel is
    repeated to three), boxes (B * K, 4) in the 1024 frame, K consecutive boxes per image (K = 1 in
    MedSAM) -> (B * K, 1, 1024, 1024) logits: the decoder's 256x256 low-res logits (mask token 0,
    ``multimask_output=False``) upsampled bilinearly to the input size
    (:func:`~medsam_monai.transforms.upscale_masks`, as at inference), where MedSAM's ``train_one_gpu.py``
    computes its loss against the 1024 ground truth.
    """

    def __init__(self, sam: Sam, freeze_prompt_encoder: bool = True) -> None:
        super().__init__(sam.image_encoder, sam.prompt_encoder, sam.mask_decoder, variant=sam.variant)
        if freeze_prompt_encoder:
            self.prompt_encoder.requires_grad_(False)

    def forward(self, images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected images (B, 1 or 3, H, W), got {tuple(images.shape)}")
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        boxes = boxes.reshape(-1, 4).to(images.dtype)
        if boxes.shape[0] % images.shape[0]:
            raise ValueError(f"{boxes.shape[0]} boxes for {images.shape[0]} images: need K boxes per image")
        logits, _ = self.decode(self.encode_image(images), boxes=boxes, multimask_output=False)
        return upscale_masks(logits.float(), images.shape[-2:])  # the interpolation inference uses, on logits

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """What the optimizer updates: image encoder and mask decoder (MedSAM's ``img_mask_encdec_params``)."""
        return [p for p in self.parameters() if p.requires_grad]


def load_sam(variant: str = "vit_b", checkpoint: str | PathLike[str] | None = None) -> Sam:
    """The starting model: ``variant`` with ``checkpoint`` (any format the loader knows) or random weights.

    ``checkpoint`` None (``null`` in a config) trains from scratch, with a warning.
    """
    if checkpoint is None:
        logger.warning("no ckpt_path: training %s from random weights", variant)
    elif not Path(checkpoint).exists():
        raise FileNotFoundError(
            f"starting weights {checkpoint} not found: fetch MedSAM with `python -m monai.bundle download_large_files "
            "--bundle_path .` (or `medsam download medsam_vit_b`), or pass --ckpt_path; '$None' trains from random weights"
        )
    return build_sam(variant, checkpoint).train()


def train_net(
    variant: str = "vit_b", checkpoint: str | PathLike[str] | None = None, freeze_prompt_encoder: bool = True
) -> MedSAMTrainNet:
    """:func:`load_sam` wrapped as :class:`MedSAMTrainNet` (the bundle's ``network_def``)."""
    return MedSAMTrainNet(load_sam(variant, checkpoint), freeze_prompt_encoder)
