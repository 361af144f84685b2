"""Which weights each model variant uses, and a predictor loaded from them.

One answer for every front end: the ``medsam`` command (``segment``, ``demo``, ``serve``), the
server and the MONAI bundle. ``tiny`` uses the demo weights packaged with the library (trained on
synthetic CT phantoms only); the SAM variants use their official weights, downloaded once into the
cache and hash checked (:func:`medsam_monai.download.fetch_weights`). An explicit checkpoint always wins.

Nothing heavy is imported with this module (the ``medsam`` command's ``--help`` reads
:data:`MODEL_VARIANTS`); torch loads only with :func:`load_predictor`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .download import ProgressCallback
    from .predictor import MedSAMPredictor

# variant -> its official weights, a name in medsam_monai.download.KNOWN_WEIGHTS
OFFICIAL_WEIGHTS = {"vit_b": "medsam_vit_b", "vit_l": "sam_vit_l", "vit_h": "sam_vit_h"}
# variants whose default weights ship inside the package (no download, no network)
PACKAGED_VARIANTS = ("tiny",)
MODEL_VARIANTS = (*OFFICIAL_WEIGHTS, *PACKAGED_VARIANTS)

TINY_DEMO_NOTE = "the tiny demo model, trained on synthetic CT phantoms only: not for real images"


def check_variant(variant: str) -> str:
    """``variant`` when it is one of :data:`MODEL_VARIANTS`, else a ValueError listing them."""
    if variant not in MODEL_VARIANTS:
        raise ValueError(f"unknown variant {variant!r}: use one of {', '.join(MODEL_VARIANTS)}")
    return variant


def packaged_checkpoint(variant: str) -> Path | None:
    """The weights of ``variant`` shipped inside the package (``tiny``: the demo model), else None."""
    if check_variant(variant) not in PACKAGED_VARIANTS:
        return None
    from .checkpoints import TINY_DEMO_CHECKPOINT

    return TINY_DEMO_CHECKPOINT


def uses_packaged_weights(variant: str, checkpoint: str | os.PathLike[str] | None) -> bool:
    """True when a run of ``variant`` with ``checkpoint`` (None: the default) gets the packaged demo
    weights, which a front end should say are not for real images."""
    return _is_unset(checkpoint) and check_variant(variant) in PACKAGED_VARIANTS


def default_checkpoint(variant: str, progress: ProgressCallback | None = None) -> Path:
    """The weights ``variant`` uses when none are given: the packaged file for ``tiny``, else the
    official weights from the cache, downloaded first when missing (``progress(done, total)`` bytes)."""
    packaged = packaged_checkpoint(variant)
    if packaged is not None:
        return packaged
    from .download import fetch_weights

    return fetch_weights(OFFICIAL_WEIGHTS[variant], progress=progress)


def resolve_checkpoint(
    variant: str, checkpoint: str | os.PathLike[str] | None = None, progress: ProgressCallback | None = None
) -> Path:
    """``checkpoint`` when given (an explicit path always wins), else :func:`default_checkpoint`."""
    check_variant(variant)
    if not _is_unset(checkpoint):
        return Path(checkpoint)  # type: ignore[arg-type]
    return default_checkpoint(variant, progress)


def default_preprocessing(variant: str, checkpoint: str | os.PathLike[str] | None = None) -> str:
    """The image pipeline (``medsam`` or ``sam``) the weights of ``variant``/``checkpoint`` were trained with.

    In order: what a safetensors checkpoint records in its metadata (our own files write it); the
    registered file the checkpoint is (by file name: ``sam_vit_b_01ec64.pth`` is SAM's); for the
    default weights, those of the variant (``vit_b``: MedSAM, ``vit_l``/``vit_h``: SAM, ``tiny``:
    MedSAM's pipeline, which it was trained with); for any other file, ``sam`` for ``vit_l``/``vit_h``
    (only SAM publishes those) and ``medsam`` for ``vit_b`` and ``tiny``.
    """
    from .download import KNOWN_WEIGHTS

    check_variant(variant)
    if not _is_unset(checkpoint):
        from .checkpoints import recorded_preprocessing

        recorded = recorded_preprocessing(checkpoint)  # type: ignore[arg-type]
        if recorded is not None:
            return recorded
        name = Path(checkpoint).name  # type: ignore[arg-type]
        for source in KNOWN_WEIGHTS.values():
            if source.filename == name:
                return source.preprocessing
    elif variant in OFFICIAL_WEIGHTS:
        return KNOWN_WEIGHTS[OFFICIAL_WEIGHTS[variant]].preprocessing
    return "medsam" if variant in ("vit_b", *PACKAGED_VARIANTS) else "sam"


def load_predictor(
    variant: str,
    checkpoint: str | os.PathLike[str] | None = None,
    *,
    device: str = "auto",
    precision: str = "fp32",
    progress: ProgressCallback | None = None,
    preprocessing: str | None = None,
    uint8_after_resize: bool = False,
) -> MedSAMPredictor:
    """A :class:`~medsam_monai.predictor.MedSAMPredictor` of ``variant`` with the weights
    :func:`resolve_checkpoint` picks, on ``device`` (``auto``: the best this machine has) at ``precision``,
    with ``preprocessing`` (None: :func:`default_preprocessing` of those weights).

    Bad input (an unknown variant or device, a checkpoint that does not fit) raises a ValueError
    (:class:`~medsam_monai.checkpoints.CheckpointError` for the checkpoint).
    """
    from .devices import resolve_device
    from .predictor import MedSAMPredictor
    from .transforms import check_preprocessing

    chosen = resolve_device(device)
    if preprocessing is not None:
        check_preprocessing(preprocessing)  # before any download or load
    path = resolve_checkpoint(variant, checkpoint, progress)
    pipeline = default_preprocessing(variant, checkpoint) if preprocessing is None else preprocessing
    return MedSAMPredictor.from_checkpoint(
        path,
        variant=variant,
        device=chosen,
        precision=precision,
        preprocessing=pipeline,
        uint8_after_resize=uint8_after_resize,
    )


def _is_unset(checkpoint: str | os.PathLike[str] | None) -> bool:
    # An empty string counts as not given: that is how a config file or an empty form field leaves it.
    return checkpoint is None or os.fspath(checkpoint) == ""
