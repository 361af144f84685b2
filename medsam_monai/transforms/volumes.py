"""Volumes between :mod:`medsam_monai.io` and MONAI: a :class:`~medsam_monai.io.Volume` as a MetaTensor and back.

A MetaTensor made here is indexed ``[i, j, k]`` in the file's own voxel order (no channel dim, no
reorientation) and its ``affine`` maps voxel centres to RAS millimetres, as ``medsam segment`` reads
the file. Label volumes are checked to hold whole numbers >= 0 and to lie on their image's grid.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.utils import convert_to_numpy

from ..images import IMAGE_2D_SUFFIXES
from ..io import NiftiForms, Volume, read_volume
from ..orientation import check_affine

#: MetaTensor meta key of the source NIfTI header's qform/sform codes (:class:`~medsam_monai.io.NiftiForms`).
NIFTI_FORMS_KEY = "medsam_nifti_forms"

#: The suffixes of volume image files (longest first where one ends another): a case's name is its
#: image's file name without one, and a training folder's ``imagesTr``/``labelsTr`` files are those with one.
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".mgz", ".mgh", ".dcm")

#: A label lies on its image's grid when every entry of their affines agrees to this many mm: far
#: below any voxel, far above the float32 rounding of file headers (3e-5 mm at 500 mm from the origin).
GRID_ATOL = 1e-3


def image_stem(file_name: str, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> str | None:
    """``file_name`` without its suffix of ``suffixes`` (any case: ``CT.NII.GZ`` -> ``CT``); None when it has none."""
    lower = file_name.lower()
    for suffix in suffixes:
        if lower.endswith(suffix) and len(file_name) > len(suffix):
            return file_name[: -len(suffix)]
    return None


def case_name(image: str | os.PathLike[str]) -> str:
    """A case's name: its image file name without the image suffix, a volume's or a 2D image's
    (:data:`medsam_monai.images.IMAGE_2D_SUFFIXES`), or a DICOM folder's name."""
    name = Path(os.fspath(image)).name
    stem = image_stem(name, IMAGE_SUFFIXES + IMAGE_2D_SUFFIXES)
    return name if stem is None else stem


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


def check_same_grid(label: Volume | MetaTensor, image: Volume | MetaTensor, name: str = "label") -> None:
    """A label volume must lie on its image's grid: the same shape, and affines that agree to :data:`GRID_ATOL`.

    One rule for evaluation (MetaTensors from LoadVolumed) and training (:class:`Volume`): a label on
    another grid is a one-line ValueError naming it (``name`` and its file), since a score against a
    shifted label, or a training mask off its image, would be wrong without a word.
    """
    labels, volume = _as_volume(label), _as_volume(image)
    what = f"{name} {labels.source}" if labels.source else name
    if labels.shape != volume.shape:
        raise ValueError(f"{what}: shape {labels.shape} differs from the image's {volume.shape} (another grid)")
    if not np.allclose(labels.affine, volume.affine, rtol=0.0, atol=GRID_ATOL):
        worst = float(np.max(np.abs(labels.affine - volume.affine)))
        raise ValueError(f"{what} lies on another grid than the image (their affines differ by up to {worst:.3g} mm)")


def _as_volume(image: Volume | MetaTensor) -> Volume:
    """``image`` as a :class:`Volume`: itself, or the view :func:`volume_of` gives of a MetaTensor."""
    return image if isinstance(image, Volume) else volume_of(image)
