"""The model behind ``segment``, ``demo`` and ``serve``: the device the options name, and the predictor
loaded with :func:`medsam_monai.models.load_predictor`, with what the user should know said on stderr."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from ..models import TINY_DEMO_NOTE, uses_packaged_weights
from .errors import UserError
from .progress import download_progress

if TYPE_CHECKING:
    from ..predictor import MedSAMPredictor


def resolve_device_option(args: argparse.Namespace) -> str:
    """Turn ``args.device`` (``auto`` or a name) into the device this machine has, or a UserError.
    Idempotent, so each command calls it first, before reading any input, and the loader again."""
    from ..devices import resolve_device

    try:
        args.device = resolve_device(args.device)
    except ValueError as err:
        raise UserError(str(err)) from None
    return args.device


def load_predictor(args: argparse.Namespace, uint8_after_resize: bool = False) -> MedSAMPredictor:
    """The predictor of ``args.variant`` / ``args.checkpoint`` on ``args.device`` at ``args.precision``
    (with ``args.preprocessing`` where the command has that option; ``uint8_after_resize``: MedSAM's
    2D rule, for 2D images, see :func:`medsam_monai.models.load_predictor`)."""
    from ..devices import describe_device
    from ..models import load_predictor as load_model_predictor

    resolve_device_option(args)
    if uses_packaged_weights(args.variant, args.checkpoint):
        print(f"medsam: note: {TINY_DEMO_NOTE}", file=sys.stderr)
    predictor = load_model_predictor(
        args.variant,
        args.checkpoint,
        device=args.device,
        precision=args.precision,
        progress=download_progress(),
        preprocessing=getattr(args, "preprocessing", None),  # None (or no such option): the checkpoint's
        uint8_after_resize=uint8_after_resize,
    )
    # Said once the model is in place, so that a refused checkpoint still ends with its one error line.
    print(f"medsam: using device {describe_device(args.device)}", file=sys.stderr, flush=True)
    return predictor
