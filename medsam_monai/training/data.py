"""Training data for MedSAM fine-tuning: labelled volumes -> (1024 image, box, mask) samples.

The cases come from a MONAI datalist (``{"training": [{"image": ..., "label": ...}], "validation":
[...]}``) or an ``imagesTr``/``labelsTr`` folder (Medical Segmentation Decathlon and nnU-Net
layouts). Volumes are read as they are (NIfTI, NRRD, MHA, DICOM series folders: anything
:func:`medsam_monai.io.read_volume` reads); nothing is pre-converted to npy files.

A sample is one 2D slice with foreground along ``axis``, prepared exactly as inference prepares it,
through the same functions: the volume's intensities with :class:`medsam_monai.transforms.IntensityForModality`
(CT window / MR percentiles to uint8), the slice in radiological display orientation with
:func:`medsam_monai.orientation.display_layout` / ``to_display``, the 1024 network input with
:func:`medsam_monai.transforms.prepare_slice`, and the box in the 1024 frame with
:func:`medsam_monai.transforms.scale_box_to_model`. Then, as MedSAM's training: one label value
picked at random, its mask, and its tight box with each side pushed outward by a random 0..20 px.

Two transforms (in :mod:`medsam_monai.transforms`, importable from here) split the work so that
MONAI's ``CacheDataset``/``PersistentDataset`` cache the expensive, deterministic part (reading,
normalising and resizing to 1024) and the random part runs on every draw: :class:`LoadSliced` then
:class:`RandBoxPromptd`. This module finds the cases and their slices with foreground.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import load_decathlon_datalist

from ..orientation import display_layout, parse_axis, to_display
from ..transforms import (
    MEDSAM_BBOX_SHIFT,
    LoadSliced,
    RandBoxPromptd,
    case_name,
    check_same_grid,
    display_volumes,
    image_stem,
    present_labels,
    read_label_volume,
    resize_label,
    tight_boxes,
)

# The transforms and slice helpers live in medsam_monai.transforms; these names stay importable from here.
__all__ = [
    "MEDSAM_BBOX_SHIFT",
    "LoadSliced",
    "RandBoxPromptd",
    "check_same_grid",
    "display_volumes",
    "foreground_slices",
    "load_training_splits",
    "present_labels",
    "read_label_volume",
    "resize_label",
    "tight_boxes",
]

logger = logging.getLogger(__name__)

# nnU-Net names images CASE_XXXX (one file per channel); the label is CASE.
_NNUNET_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


# --------------------------------------------------------------------------------------------
# cases: datalist JSON or imagesTr/labelsTr folder
# --------------------------------------------------------------------------------------------


def load_training_splits(
    source: str | Path, val_fraction: float = 0.1, seed: int = 0, base_dir: str | Path | None = None
) -> dict[str, list[dict[str, str]]]:
    """A dataset's cases (``{"image": path, "label": path}``) split into training and validation.

    (The bundle's :func:`medsam_monai.bundle.load_cases` is another job: the cases of an inference run.)

    Args:
        source: a MONAI/Decathlon datalist JSON file, or a folder holding ``imagesTr`` and
            ``labelsTr`` (a ``dataset.json`` there with a ``training`` list is used when present).
        val_fraction: share of the training cases held out for validation when the source has no
            ``validation`` list (whole volumes: slices of one volume never land on both sides).
        seed: seeds that hold-out choice.
        base_dir: folder that relative datalist paths start from (default: the JSON file's folder).

    Returns:
        ``{"training": [...], "validation": [...]}``.
    """
    path = Path(source)
    if path.is_dir():
        datalist = path / "dataset.json"
        if datalist.is_file() and "training" in json.loads(datalist.read_text()):
            return load_training_splits(datalist, val_fraction, seed, base_dir or path)
        return _split(_folder_cases(path), [], val_fraction, seed, str(path))
    if not path.is_file():
        raise FileNotFoundError(f"dataset {path}: no such datalist file or folder")
    content = json.loads(path.read_text())
    root = Path(base_dir) if base_dir is not None else path.parent
    training = load_decathlon_datalist(path, True, "training", root) if "training" in content else []
    validation = load_decathlon_datalist(path, True, "validation", root) if "validation" in content else []
    return _split(training, validation, val_fraction, seed, str(path))


def _split(training: list[dict], validation: list[dict], val_fraction: float, seed: int, source: str) -> dict:
    cases = [{"image": str(c["image"]), "label": str(c["label"])} for c in training]
    held_out = [{"image": str(c["image"]), "label": str(c["label"])} for c in validation]
    if not cases:
        raise ValueError(f"dataset {source}: no training cases")
    if not held_out and val_fraction > 0 and len(cases) > 1:
        order = np.random.default_rng(seed).permutation(len(cases))
        count = min(len(cases) - 1, max(1, round(val_fraction * len(cases))))
        chosen = set(order[:count].tolist())
        held_out = [c for n, c in enumerate(cases) if n in chosen]
        cases = [c for n, c in enumerate(cases) if n not in chosen]
    for case in cases + held_out:
        for key in ("image", "label"):
            if not Path(case[key]).exists():
                raise FileNotFoundError(f"dataset {source}: {key} {case[key]} does not exist")
    return {"training": cases, "validation": held_out}


def _folder_cases(folder: Path) -> list[dict[str, str]]:
    """Pairs ``imagesTr/CASE[_0000].ext`` with ``labelsTr/CASE.ext`` (MSD and nnU-Net layouts)."""
    images_dir, labels_dir = folder / "imagesTr", folder / "labelsTr"
    if not (images_dir.is_dir() and labels_dir.is_dir()):
        raise FileNotFoundError(f"dataset {folder}: expected a datalist JSON or a folder with imagesTr/ and labelsTr/")
    labels = {}
    for file in sorted(labels_dir.iterdir()):
        stem = image_stem(file.name)
        if stem is not None and not file.name.startswith("."):
            labels[stem] = file
    cases = []
    for file in sorted(images_dir.iterdir()):
        stem = image_stem(file.name)
        if stem is None or file.name.startswith("."):
            continue
        match = _NNUNET_CHANNEL.match(stem)
        if stem not in labels and match:
            if match["channel"] != "0000":
                continue  # MedSAM takes one grey image: nnU-Net channel 0000
            stem = match["case"]
        if stem in labels:
            cases.append({"image": str(file), "label": str(labels[stem])})
        else:
            logger.warning("%s has no label in %s; skipped", file.name, labels_dir)
    return cases


# --------------------------------------------------------------------------------------------
# slice items
# --------------------------------------------------------------------------------------------


def foreground_slices(
    cases: Sequence[Mapping[str, str]],
    axis: str = "axial",
    min_pixels: int = 1,
) -> list[dict[str, Any]]:
    """The slice items of ``cases``: one per slice along ``axis`` that holds foreground.

    Args:
        cases: ``{"image": path, "label": path}`` items.
        axis: slicing axis (axial, coronal, sagittal), as at inference.
        min_pixels: a label value counts on a slice when it covers at least this many pixels.

    Returns:
        Items ``{"image", "label", "slice", "case"}``, in case and slice order.
    """
    axis = parse_axis(axis)
    items: list[dict[str, Any]] = []
    for case in cases:
        # the label's own grid (the image's, checked when a slice is loaded): images are not read here
        labels = read_label_volume(case["label"])
        labels = to_display(labels.array, display_layout(labels.affine, axis))
        name = case_name(case["image"])
        for z in range(labels.shape[0]):
            if present_labels(labels[z], min_pixels):
                items.append({"image": str(case["image"]), "label": str(case["label"]), "slice": z, "case": name})
    return items
