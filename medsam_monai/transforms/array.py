"""Array transforms (``monai.transforms.Transform``): one image (or path) in, one out.

Each has a dictionary twin of the same name plus ``d`` in :mod:`.dictionary`; the maths is in
:mod:`.functional` and :mod:`.boxes`.

- Intensities: :class:`CTWindow`, :class:`MRNormalize`, :class:`IntensityForModality` -> uint8 [0, 255].
- Slices: :class:`PrepareSlice` -> float32 (3, 1024, 1024) in [0, 1] (MedSAM); :class:`SamNormalize`
  (SAM's pixel mean/std, for SAM checkpoints).
- Volumes: :class:`LoadVolume` (a file or DICOM folder -> MetaTensor ``[i, j, k]`` with its affine).
- Prompts: :class:`BoxesFromLabel` (one voxel box per label value, seeded outward jitter).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Transform
from monai.utils import convert_to_numpy
from monai.utils.enums import TransformBackends

from ..io import read_volume
from .boxes import VoxelBox, jittered_voxel_box, label_values_of
from .functional import (
    CT_NAMES,
    MODEL_INPUT_SIZE,
    MR_NAMES,
    ArrayLike,
    WindowSpec,
    check_percentiles,
    ct_window,
    mr_normalize,
    parse_window,
    prepare_slice,
    sam_normalize,
    uint8_like,
)
from .images import medsam_2d_intensity
from .volumes import volume_to_metatensor


class CTWindow(Transform):
    """Array transform: CT window + min-max to uint8 [0, 255], as MedSAM's training data.

    Input any shape (HU); output the same shape, uint8, same container type as the input
    (numpy -> numpy, tensor/MetaTensor -> tensor/MetaTensor with its metadata).
    """

    backend = [TransformBackends.NUMPY, TransformBackends.TORCH]

    def __init__(self, window: WindowSpec = "abdomen") -> None:
        self.window = parse_window(window)  # fail at construction, not on the first volume

    def __call__(self, img: ArrayLike) -> ArrayLike:
        return uint8_like(ct_window(img, self.window), img)


class MRNormalize(Transform):
    """Array transform: MedSAM's MR percentile clip + min-max to uint8 [0, 255].

    Input any shape; output the same shape, uint8, same container type as the input.
    """

    backend = [TransformBackends.NUMPY, TransformBackends.TORCH]

    def __init__(self, lower_percentile: float = 0.5, upper_percentile: float = 99.5) -> None:
        check_percentiles(lower_percentile, upper_percentile)
        self.lower_percentile = lower_percentile
        self.upper_percentile = upper_percentile

    def __call__(self, img: ArrayLike) -> ArrayLike:
        return uint8_like(mr_normalize(img, self.lower_percentile, self.upper_percentile), img)


class IntensityForModality(Transform):
    """Array transform: ``CTWindow`` for CT, ``MRNormalize`` for MR, chosen by name.

    Args:
        modality: "ct", "mr" or "mri" (case-insensitive).
        window: CT window spec (default "abdomen"); must be None for MR.
    """

    backend = [TransformBackends.NUMPY, TransformBackends.TORCH]

    def __init__(self, modality: str = "ct", window: WindowSpec | None = None) -> None:
        name = str(modality).strip().lower()
        if name in CT_NAMES:
            self.transform: Transform = CTWindow("abdomen" if window is None else window)
        elif name in MR_NAMES:
            if window is not None:
                raise ValueError(f"a CT window ({window!r}) was given for modality {modality!r}; MR takes none")
            self.transform = MRNormalize()
        else:
            choices = ", ".join(CT_NAMES + MR_NAMES)
            raise ValueError(f"unknown modality {modality!r}; choose one of {choices}")
        self.modality = name

    def __call__(self, img: ArrayLike) -> ArrayLike:
        return self.transform(img)


class PrepareSlice(Transform):
    """Array transform: (H, W) or (1, H, W) slice -> float32 tensor (3, size, size) in [0, 1]."""

    backend = [TransformBackends.NUMPY, TransformBackends.TORCH]

    def __init__(self, size: int = MODEL_INPUT_SIZE, mode: str = "reflect", uint8_after_resize: bool = False) -> None:
        self.size = size
        self.mode = mode
        self.uint8_after_resize = uint8_after_resize

    def __call__(self, img: ArrayLike) -> torch.Tensor:
        return prepare_slice(img, self.size, self.mode, self.uint8_after_resize)


class SamNormalize(Transform):
    """Array transform: SAM's per-channel pixel mean/std normalisation of (3, H, W) or (B, 3, H, W) images in [0, 255].

    For SAM checkpoints (``sam_vit_*``), whose encoder was trained on it; MedSAM's is not (see
    :func:`~.functional.sam_normalize`).
    """

    backend = [TransformBackends.NUMPY, TransformBackends.TORCH]

    def __call__(self, img: ArrayLike) -> ArrayLike:
        return sam_normalize(img)


class LoadVolume(Transform):
    """Read a 3D image file or DICOM folder with :func:`medsam_monai.io.read_volume`.

    Returns a MetaTensor indexed ``[i, j, k]`` in the file's own voxel order (no channel dim, no
    reorientation; dtype kept) whose ``affine`` maps voxel centres to RAS millimetres, as
    ``medsam segment`` reads it.

    Args:
        series_uid: the DICOM series to read from a folder holding several (None: the only one);
            a call's own ``series_uid`` wins.
    """

    def __init__(self, series_uid: str | None = None) -> None:
        self.series_uid = series_uid

    def __call__(self, path: str | os.PathLike[str], series_uid: str | None = None) -> MetaTensor:
        chosen = series_uid if series_uid is not None else self.series_uid
        return volume_to_metatensor(read_volume(path, series_uid=chosen), source=path)


class BoxesFromLabel(Transform):
    """One voxel box per label value of a label image: its tight box, jittered outward.

    Each of the six faces moves outward by a random whole number of voxels in ``0..jitter`` (as
    MedSAM's training pushes box sides outward), clipped to the image; ``jitter=0`` gives the tight
    box. The box's label is the label value, so predictions and truth share values.

    Args:
        jitter: largest outward move of a face, in voxels.
        label_values: the values to box; None boxes every value > 0 present.
    """

    def __init__(self, jitter: int = 0, label_values: Sequence[int] | None = None) -> None:
        if isinstance(jitter, bool) or not isinstance(jitter, (int, np.integer)) or jitter < 0:
            raise ValueError(f"box jitter is a whole number of voxels >= 0, got {jitter!r}")
        self.jitter = int(jitter)
        self.label_values = None if label_values is None else [int(v) for v in label_values]

    def __call__(self, label: ArrayLike, rng: np.random.Generator | None = None) -> list[VoxelBox]:
        """``label`` ``[i, j, k]`` -> its boxes, in label value order; ``rng`` draws the jitter."""
        array = np.asarray(convert_to_numpy(label))
        if array.ndim != 3:
            raise ValueError(f"a label image is 3D [i, j, k], got shape {array.shape}")
        rng = rng if rng is not None else np.random.default_rng()
        return [VoxelBox(jittered_voxel_box(array == value, self.jitter, rng), label=value) for value in self.values(array)]

    def values(self, array: np.ndarray) -> list[int]:
        """The label values to box: ``label_values`` that are present, or every value > 0 present."""
        present = label_values_of(array)
        wanted = present if self.label_values is None else [v for v in self.label_values if v in present]
        if not wanted:
            asked = "" if self.label_values is None else f" of {self.label_values}"
            raise ValueError(f"the label image has no foreground{asked} to derive a box from")
        return wanted


class Medsam2DIntensity(Transform):
    """Array transform: MedSAM's 2D image intensities (``pre_grey_rgb.py``) -> uint8 (H, W, 3).

    Input (H, W) grey, (H, W, 3) RGB or (H, W, 4) as read (channels last, any real dtype); output
    uint8 (H, W, 3) in the container type of the input. See :func:`~.images.medsam_2d_intensity`.

    Args:
        percentile_clip: MedSAM's optional 0.5-99.5 percentile cut-off (``do_intensity_cutoff``, for grey images).
    """

    backend = [TransformBackends.NUMPY, TransformBackends.TORCH]

    def __init__(self, percentile_clip: bool = False) -> None:
        self.percentile_clip = bool(percentile_clip)

    def __call__(self, img: ArrayLike) -> ArrayLike:
        return uint8_like(medsam_2d_intensity(img, self.percentile_clip), img)
