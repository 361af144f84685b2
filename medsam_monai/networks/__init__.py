"""The SAM architecture (image encoder, prompt encoder, mask decoder). Knows nothing of files or volumes."""

from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoder, pair_images_with_prompts
from .prompt_encoder import PromptEncoder
from .registry import SAM_VARIANTS, SamVariant, build_sam_from_spec, build_sam_variant, count_parameters
from .sam import Sam
from .transformer import TwoWayTransformer

__all__ = [
    "ImageEncoderViT",
    "MaskDecoder",
    "PromptEncoder",
    "SAM_VARIANTS",
    "Sam",
    "SamVariant",
    "TwoWayTransformer",
    "build_sam_from_spec",
    "build_sam_variant",
    "count_parameters",
    "pair_images_with_prompts",
]
