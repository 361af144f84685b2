"""Volumes between :mod:`medsam_monai.io` and MONAI: a :class:`~medsam_monai.io.Volume` as a MetaTensor and back.

A MetaTensor made here is indexed ``[i, j, k]`` in the file's own voxel order (no channel dim, no
reorientation) and its ``affine`` maps voxel centres to RAS millimetres, as ``medsam segment`` reads
the file. Label volumes are checked to hold whole numbers >= 0 and to lie on their image's grid.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.utils import convert_to_numpy

from ..io import NiftiForms, Volume, read_volume
from ..orientation import check_affine

logger = logging.getLogger(__name__)

#: MetaTensor meta key of the source NIfTI header's qform/sform codes (:class:`~medsam_monai.io.NiftiForms`).
NIFTI_FORMS_KEY = "medsam_nifti_forms"

#: Image suffixes dropped from a file name to name its case (longest first where one ends another).
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".mgz", ".mgh", ".dcm")

#: Affines of a label and its image agree to this many mm for evaluation (a stricter grid check).
EVALUATION_GRID_ATOL = 1e-3
#: Training warns (and uses the image's affine) beyond this many mm.
TRAINING_GRID_ATOL = 1e-2


def case_name(image: str | os.PathLike[str]) -> str:
    """A case's name: its image file name without the image suffix (a DICOM folder's name)."""
    name = Path(os.fspath(image)).name
    lower = name.lower()
    for suffix in IMAGE_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def volume_to_metatensor(volume: Volume, source: str | os.PathLike[str] | None = None) -> MetaTensor:
    """``volume`` as a MetaTensor ``[i, j, k]`` (dtype kept) with its IJK -> RAS affine and source name."""
    try:
        data = torch.from_numpy(np.ascontiguousarray(volume.array))
    except TypeError:  # a dtype torch lacks (uint32, say): float64 holds its values exactly
        data = torch.from_numpy(volume.array.astype(np.float64))
    name = os.fspath(source) if source is not None else volume.source
    meta = {"filename_or_obj": name, "spatial_shape": np.asarray(volume.shape)}
    if volume.nifti is not None:  # the source's qform/sform codes, for outputs on its grid
        meta[NIFTI_FORMS_KEY] = volume.nifti
    return MetaTensor(data, affine=torch.as_tensor(volume.affine, dtype=torch.float64), meta=meta)


def volume_of(image: Any) -> Volume:
    """A :class:`Volume` view of a MetaTensor ``[i, j, k]`` (its affine is IJK -> RAS); TypeError for anything else."""
    if not isinstance(image, MetaTensor):
        raise TypeError(f"expected the MetaTensor that LoadVolumed makes, got {type(image).__name__}")
    affine = check_affine(convert_to_numpy(image.affine, dtype=np.float64))
    nifti = image.meta.get(NIFTI_FORMS_KEY)
    return Volume(
        np.asarray(convert_to_numpy(image)),
        affine,
        str(image.meta.get("filename_or_obj", "")),
        nifti=nifti if isinstance(nifti, NiftiForms) else None,
    )


def read_label_volume(path: str | os.PathLike[str]) -> Volume:
    """A label volume, its values as int32 (whole numbers >= 0, checked)."""
    labels = read_volume(path)
    array = np.asarray(labels.array)
    if not np.issubdtype(array.dtype, np.integer):
        rounded = np.rint(array)
        if not np.allclose(array, rounded, atol=1e-3):
            raise ValueError(f"label {path}: values must be whole numbers, got dtype {array.dtype}")
        array = rounded
    if array.size and array.min() < 0:
        raise ValueError(f"label {path}: negative label values")
    return Volume(array.astype(np.int32), labels.affine, str(path))


def check_same_grid(labels: Volume, image: Volume) -> None:
    """Training: a label volume must have its image's shape; affines that differ by more than 0.01 mm
    are logged and the image's is used (the voxels are what training reads)."""
    if labels.shape != image.shape:
        raise ValueError(f"label {labels.source} has shape {labels.shape}, its image {image.source} {image.shape}")
    if not np.allclose(labels.affine, image.affine, atol=TRAINING_GRID_ATOL):
        logger.warning("label %s and image %s have different affines; the image's is used", labels.source, image.source)


def check_label_grid(label: Any, image: Any, key: str) -> None:
    """Evaluation: the label MetaTensor at ``key`` must lie on the image's grid (same shape, affines to 0.001 mm).

    Stricter than training's :func:`check_same_grid`: a score against a shifted label would be wrong silently.
    """
    label_volume, image_volume = volume_of(label), volume_of(image)
    if label_volume.shape != image_volume.shape:
        raise ValueError(f"{key} shape {label_volume.shape} differs from the image's {image_volume.shape}")
    if not np.allclose(label_volume.affine, image_volume.affine, atol=EVALUATION_GRID_ATOL):
        raise ValueError(f"{key} lies on another grid than the image (their affines differ)")
