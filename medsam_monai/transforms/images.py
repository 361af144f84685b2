"""MedSAM's intensity rules for 2D images (``utils/pre_grey_rgb.py``), as a plain function.

MedSAM's 2D training data (X-ray, ultrasound, endoscopy, dermoscopy, fundus, pathology) went
through ``pre_grey_rgb.py``, and ``MedSAM_Inference.py`` feeds a 2D image the same way: an image
above 255 is min-maxed to [0, 255] and cast to uint8; a grey image is repeated to 3 channels (an RGB
one kept, a fourth channel dropped); optionally (``do_intensity_cutoff``, meant for grey images) the
values are clipped to their 0.5 and 99.5 percentiles over pixels > 0, min-maxed to [0, 255] with
the zero pixels kept at 0, and cast to uint8. The result is what the predictor takes as a 2D image
(a one-slice volume, :mod:`medsam_monai.predictor`); the 1024 resize and the [0, 1] scaling are the
predictor's. The array transforms are :class:`~.array.Medsam2DIntensity` and
:class:`~.dictionary.Medsam2DIntensityd`. Nothing here knows about files or the network.
"""

from __future__ import annotations

import numpy as np
from monai.utils import convert_to_numpy

from .functional import ArrayLike, check_finite, mr_normalize

#: ``pre_grey_rgb.py``'s ``do_intensity_cutoff`` percentiles (over pixels > 0).
CUTOFF_PERCENTILES = (0.5, 99.5)


def _channel_last_image(image: ArrayLike) -> np.ndarray:
    """``image`` as a numpy (H, W) or (H, W, C) array, C in 3, 4; (H, W, 1) becomes (H, W)."""
    array = np.asarray(convert_to_numpy(image))
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4))):
        raise ValueError(
            f"a 2D image is (H, W) grey or (H, W, 3) RGB (channels last; a 4th channel is dropped), got shape {array.shape}"
        )
    if 0 in array.shape:
        raise ValueError(f"empty image of shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool) or np.issubdtype(array.dtype, np.complexfloating):
        raise ValueError(f"a 2D image holds real numbers, got dtype {array.dtype}")
    return array


def _minmax_to_uint8(array: np.ndarray) -> np.ndarray:
    """``np.uint8((x - min) / (max - min) * 255.0)`` as ``pre_grey_rgb.py`` writes it.

    Integers go through float64 (exact, and no overflow where MedSAM's int16 subtraction would wrap);
    floats keep their own precision as in MedSAM's numpy arithmetic. A constant image gives zeros
    (MedSAM's 0 / 0 is NaN, which its uint8 cast turns into 0).
    """
    work = array if np.issubdtype(array.dtype, np.floating) else array.astype(np.float64)
    low = work.min()
    spread = work.max() - low
    if spread == 0:
        return np.zeros(array.shape, dtype=np.uint8)
    return ((work - low) / spread * 255.0).astype(np.uint8)


def _to_byte_range(array: np.ndarray) -> np.ndarray:
    """Values in [0, 255]: MedSAM's rule (max > 255 -> min-max) plus the inputs its rule leaves undefined.

    Whole numbers in [0, 255] are kept (an 8-bit image, a 16-bit one that uses only 8 bits), as
    MedSAM. Negative values or fractions (a float image in [0, 1], say), which MedSAM's later uint8
    cast would wrap or truncate to nothing, are min-maxed like images above 255. Bool is 0/255.
    """
    if array.dtype == bool:
        return array.astype(np.uint8) * np.uint8(255)
    if array.max() > 255.0:
        return _minmax_to_uint8(array)
    whole = not np.issubdtype(array.dtype, np.floating) or bool(np.all(np.floor(array) == array))
    if array.min() < 0 or not whole:
        return _minmax_to_uint8(array)
    return array.astype(np.uint8)


def _three_channels(array: np.ndarray) -> np.ndarray:
    """(H, W) -> (H, W, 3) by repeating, (H, W, 4) -> its first three channels, (H, W, 3) as is."""
    if array.ndim == 2:
        return np.repeat(array[:, :, None], 3, axis=-1)
    return array[:, :, :3]


def medsam_2d_intensity(image: ArrayLike, percentile_clip: bool = False) -> np.ndarray:
    """MedSAM's 2D image intensities (``pre_grey_rgb.py``): any grey or colour image -> uint8 (H, W, 3).

    In MedSAM's order: (1) an image whose maximum is above 255 is min-maxed to [0, 255] and
    truncated to uint8 (the whole array, a fourth channel included, as MedSAM); (2) a grey image is
    repeated to 3 channels, an RGB one kept, a fourth channel (alpha) dropped; (3) with
    ``percentile_clip`` (``do_intensity_cutoff``, which MedSAM sets for grey images): clip to the
    0.5 and 99.5 percentiles of the pixels > 0 of the 3-channel image, min-max to [0, 255], pixels
    that were 0 back to 0, truncate to uint8 (the formula of MedSAM's MR normalisation,
    :func:`~.functional.mr_normalize`, which it reuses).

    Departures, where MedSAM's result is no uint8 image: whole numbers in [0, 255] are kept, but
    negative values and fractions are min-maxed as in (1); bool is 0/255; an image without any
    pixel > 0 gives zeros under ``percentile_clip`` (MedSAM's percentile of nothing fails).

    Args:
        image: (H, W) grey, (H, W, 3) RGB or (H, W, 4) RGBA (channels last, as read), any real
            dtype, numpy or torch; (H, W, 1) counts as grey.
        percentile_clip: apply (3).

    Returns:
        uint8 numpy array (H, W, 3).

    Raises:
        ValueError: another shape, an empty image, NaN or infinite values.
    """
    array = _channel_last_image(image)
    if np.issubdtype(array.dtype, np.floating):
        check_finite(array)
    rgb = _three_channels(_to_byte_range(array))
    if percentile_clip:
        return mr_normalize(rgb, *CUTOFF_PERCENTILES)
    return np.ascontiguousarray(rgb, dtype=np.uint8)
