"""A bundle run's settings: checked before any case, resolved to a device, a checkpoint and a network.

Errors here end the run before the first case with :class:`BundleExit`: one line, exit status 1.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..checkpoints import CheckpointError, detect_variant, load_checkpoint_into, load_state_dict
from ..devices import describe_device, resolve_device
from ..download import KNOWN_WEIGHTS, default_cache_dir
from ..errors import one_line
from ..io import check_output_type
from ..models import MODEL_VARIANTS, TINY_DEMO_NOTE, default_preprocessing, packaged_checkpoint
from ..networks import SAM_VARIANTS, Sam
from ..orientation import parse_axis
from ..precision import check_precision
from ..transforms import PREPROCESSING_MODES, BoxesFromLabel, IntensityForModality, check_preprocessing

logger = logging.getLogger(__name__)


class BundleExit(SystemExit):
    """Ends a bundle run with one line on stderr and exit status 1, without a traceback.

    A SystemExit on purpose: monai.bundle's config parser wraps every Exception raised while it
    evaluates a config item in a RuntimeError (a long chained traceback); SystemExit passes through
    unchanged, and the interpreter prints its message alone.
    """

    def __init__(self, message: str) -> None:
        super().__init__(f"medsam bundle: error: {one_line(message)}")


def check_settings(
    cases: Sequence[Any],
    variant: str,
    ckpt_path: str,
    bundle_root: str,
    modality: str = "ct",
    window: Any = None,
    precision: str = "fp32",
    device: str | torch.device = "auto",
    axis: str = "axial",
    output_ext: str = ".nii.gz",
    preprocessing_mode: str | None = None,
    multimask: Any = False,
) -> None:
    """Fail in one line on settings a run cannot use, before the network is built or loaded.

    ``ckpt_path`` is the resolved checkpoint (:func:`resolve_checkpoint`); ``device`` the setting as
    given (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``), checked with :func:`resolve_device`;
    ``preprocessing_mode`` the image pipeline (``medsam``, ``sam``, or None: the checkpoint's);
    ``multimask`` the run's default for SAM's three candidates (true or false).
    """
    try:
        if variant != "auto" and variant not in SAM_VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(SAM_VARIANTS)} or auto")
        IntensityForModality(modality, window)
        check_precision(precision)
        parse_axis(axis)
        check_output_type(f"case{output_ext if output_ext.startswith('.') else '.' + output_ext}")
        check_preprocessing_mode(preprocessing_mode)
        if not isinstance(multimask, bool):
            raise ValueError(f"multimask must be true or false, got {multimask!r}")
        resolve_device(device)  # the device chosen is logged where the run resolves it (resolve_run_device)
    except ValueError as err:
        raise BundleExit(str(err)) from None
    require_checkpoint(ckpt_path, bundle_root)
    logger.info(
        f"{len(cases)} case(s); variant {variant}, checkpoint {ckpt_path}, precision {precision}, "
        f"modality {modality}, window {window}, axis {axis}" + (", multimask" if multimask else "")
    )


def check_preprocessing_mode(mode: str | None) -> str | None:
    """``mode`` when it is None (follow the checkpoint), empty (the same) or one of ``medsam``, ``sam``; else a ValueError."""
    if mode is None or mode == "":
        return None
    if not isinstance(mode, str):
        raise ValueError(f"preprocessing_mode must be one of {', '.join(PREPROCESSING_MODES)} or null, got {mode!r}")
    return check_preprocessing(mode)


def check_transform_chain(transforms: Any) -> None:
    """A config's ``preprocessing`` must stay a transform chain: ``--preprocessing sam`` replaces it with a word.

    MONAI's bundle contract names the transforms ``preprocessing``; the image pipeline that the
    ``medsam`` command calls ``--preprocessing`` is ``preprocessing_mode`` here. The dataset checks
    its transform with this when it is built (before any case).
    """
    if transforms is None or callable(transforms):
        return
    hint = ""
    if isinstance(transforms, str) and transforms in PREPROCESSING_MODES:
        hint = f"; for the image pipeline give --preprocessing_mode {transforms}"
    raise BundleExit(f"the config's 'preprocessing' is its transform chain (MONAI's bundle property), got {transforms!r}{hint}")


def resolve_preprocessing(mode: str | None, variant: str, ckpt_path: str | os.PathLike[str]) -> str:
    """The image pipeline of the run: ``mode`` when given, else the one the checkpoint was trained with.

    ``variant`` is the resolved variant (not ``auto``); the choice follows
    :func:`medsam_monai.models.default_preprocessing` (a safetensors file's metadata, SAM's
    registered file names, else ``sam`` for ``vit_l``/``vit_h`` and ``medsam`` for ``vit_b``/``tiny``),
    as ``medsam segment`` without ``--preprocessing`` chooses. The choice is logged.
    """
    try:
        given = check_preprocessing_mode(mode)
        chosen = default_preprocessing(variant, ckpt_path) if given is None else given
    except ValueError as err:
        raise BundleExit(str(err)) from None
    source = "preprocessing_mode setting" if given is not None else f"follows the {variant} checkpoint"
    logger.info(f"image preprocessing {chosen} ({source})")
    return chosen


def check_evaluation_settings(
    box_jitter: int, seed: int, nsd_tolerance_mm: float, label_values: Sequence[int] | None = None
) -> None:
    """Fail in one line on evaluation settings a run cannot use (evaluate.json's extra check)."""
    try:
        BoxesFromLabel(box_jitter, label_values)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a whole number >= 0, got {seed!r}")
        if isinstance(nsd_tolerance_mm, bool) or not isinstance(nsd_tolerance_mm, (int, float)) or not nsd_tolerance_mm > 0:
            raise ValueError(f"the NSD tolerance must be a number of mm > 0, got {nsd_tolerance_mm!r}")
    except (TypeError, ValueError) as err:
        raise BundleExit(str(err)) from None


def resolve_run_device(device: str | torch.device = "auto") -> torch.device:
    """The torch device of a run for the ``device`` setting (``auto``: CUDA, else Apple MPS, else CPU).

    A name torch does not know or a device this machine lacks ends the run in one line
    (:class:`BundleExit`); the device chosen is logged.
    """
    try:
        chosen = resolve_device(device)
    except ValueError as err:
        raise BundleExit(str(err)) from None
    logger.info(f"using device {describe_device(chosen)} (device setting: {device})")
    return torch.device(chosen)


def default_checkpoint(variant: str, bundle_root: str | os.PathLike[str] = ".") -> str:
    """The weights a run uses when no ``ckpt_path`` is given.

    ``tiny``: the demo weights inside the package (as ``medsam segment --variant tiny``); every other
    variant: ``<bundle_root>/models/model.pt``, where ``download_large_files`` puts MedSAM.
    """
    packaged = packaged_checkpoint(variant) if variant in MODEL_VARIANTS else None
    if packaged is not None:
        logger.warning(f"variant {variant}: {TINY_DEMO_NOTE}")
        return str(packaged)
    return os.path.join(os.fspath(bundle_root), "models", "model.pt")


def resolve_checkpoint(
    variant: str, ckpt_path: str | os.PathLike[str] | None = None, bundle_root: str | os.PathLike[str] = "."
) -> str:
    """``ckpt_path`` when given (an explicit path always wins), else :func:`default_checkpoint`."""
    if ckpt_path is not None and os.fspath(ckpt_path) != "":
        return os.fspath(ckpt_path)
    return default_checkpoint(variant, bundle_root)


def require_checkpoint(ckpt_path: str | os.PathLike[str], bundle_root: str | os.PathLike[str]) -> None:
    """A missing checkpoint ends the run with how to get it (the weights are not in the bundle)."""
    if Path(ckpt_path).exists():
        return
    message = (
        f"checkpoint {ckpt_path} not found: download the MedSAM weights with "
        f"`python -m monai.bundle download_large_files --bundle_path {bundle_root}`, or run "
        "`medsam download` and pass the file it prints with --ckpt_path"
    )
    cached = default_cache_dir() / KNOWN_WEIGHTS["medsam_vit_b"].filename
    if cached.is_file():
        message += f" (`medsam download` already fetched {cached})"
    raise BundleExit(message)


def resolve_variant(variant: str, ckpt_path: str, bundle_root: str = ".") -> str:
    """``variant``, or with ``"auto"`` the variant the checkpoint fits (the file is read for it)."""
    if variant != "auto":
        return variant
    require_checkpoint(ckpt_path, bundle_root)
    try:
        found = detect_variant(load_state_dict(ckpt_path))
    except CheckpointError as err:
        raise BundleExit(str(err)) from None
    if found is None:
        raise BundleExit(f"{ckpt_path} fits none of the variants {', '.join(SAM_VARIANTS)}")
    return found


def load_weights(network: Sam, ckpt_path: str, device: str | torch.device = "cpu", bundle_root: str = ".") -> Sam:
    """``network`` with the checkpoint's weights (any supported format, strict, weights_only), in eval mode."""
    require_checkpoint(ckpt_path, bundle_root)
    try:
        load_checkpoint_into(network, ckpt_path)
    except CheckpointError as err:
        raise BundleExit(str(err)) from None
    return network.to(device).eval()
