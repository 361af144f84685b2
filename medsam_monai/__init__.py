"""medsam-monai: MedSAM for CT/MR volumes, as a MONAI bundle, a 3D Slicer extension and a fine-tuning recipe."""

from .checkpoints import TINY_DEMO_CHECKPOINT, CheckpointError, build_sam, detect_variant, load_state_dict
from .networks import SAM_VARIANTS, Sam
from .precision import autocast
from .predictor import MedSAMPredictor

__version__ = "0.1.0"

__all__ = [
    "SAM_VARIANTS",
    "TINY_DEMO_CHECKPOINT",
    "CheckpointError",
    "MedSAMPredictor",
    "Sam",
    "__version__",
    "autocast",
    "build_sam",
    "detect_variant",
    "load_state_dict",
]
