"""medsam-monai: MedSAM for CT/MR volumes, as a MONAI bundle, a 3D Slicer extension and a fine-tuning recipe.

The public names below are imported on first use (PEP 562), not with the package: ``import
medsam_monai`` (and so the ``medsam`` command's ``--help`` and argument errors) must not pay for
importing torch and MONAI, which takes seconds.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> the submodule that defines it
_LAZY_NAMES = {
    "SAM_VARIANTS": ".networks",
    "Sam": ".networks",
    "TINY_DEMO_CHECKPOINT": ".checkpoints",
    "CheckpointError": ".checkpoints",
    "build_sam": ".checkpoints",
    "detect_variant": ".checkpoints",
    "load_state_dict": ".checkpoints",
    "autocast": ".precision",
    "MedSAMPredictor": ".predictor",
}

if TYPE_CHECKING:  # what static tools see; at run time __getattr__ imports them
    from .checkpoints import TINY_DEMO_CHECKPOINT, CheckpointError, build_sam, detect_variant, load_state_dict
    from .networks import SAM_VARIANTS, Sam
    from .precision import autocast
    from .predictor import MedSAMPredictor

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


def __getattr__(name: str) -> object:
    """Import a public name's submodule on first access and keep the name in this module. A submodule
    (``medsam_monai.networks``) is imported on first access too, as the eager package used to offer."""
    module = _LAZY_NAMES.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module, __name__), name)
        globals()[name] = value  # later look-ups skip __getattr__
        return value
    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f".{name}", __name__)  # the import binds it here
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
