"""MedSAM v1 pre- and post-processing as MONAI transforms.

Reproduces MedSAM's reference pipeline (``pre_CT_MR.py`` for volume intensities,
``MedSAM_Inference.py`` for slices, boxes and masks) exactly, as numpy maths wrapped in
MONAI-style array transforms (``monai.transforms.Transform``) with dictionary twins
(``...d``, ``monai.transforms.MapTransform``). Nothing here knows about the network or files.

Volume level (any shape; MONAI channel-first volumes are fine):
    ``CTWindow`` / ``MRNormalize`` / ``IntensityForModality`` -> uint8 values in [0, 255].
Slice level:
    ``prepare_slice`` / ``prepare_slices`` / ``PrepareSlice`` -> float32 (3, 1024, 1024) in [0, 1].
Prompts and outputs:
    ``scale_box_to_model`` / ``scale_box_from_model`` / ``postprocess_logits``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Hashable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Union

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from monai.utils import convert_to_dst_type, convert_to_numpy
from monai.utils.enums import TransformBackends
from skimage.transform import resize as _skimage_resize

__all__ = [
    "CT_WINDOW_PRESETS",
    "MODEL_INPUT_SIZE",
    "CTWindow",
    "CTWindowd",
    "IntensityForModality",
    "IntensityForModalityd",
    "MRNormalize",
    "MRNormalized",
    "PrepareSlice",
    "PrepareSliced",
    "ct_window",
    "mr_normalize",
    "parse_window",
    "mask_probabilities",
    "postprocess_logits",
    "prepare_slice",
    "prepare_slices",
    "scale_box_from_model",
    "scale_box_to_model",
]

ArrayLike = Union[np.ndarray, torch.Tensor]
WindowSpec = Union[str, Sequence[float]]

#: Side of the square image MedSAM's (and SAM's) image encoder takes.
MODEL_INPUT_SIZE = 1024

#: CT windows as (level, width) in HU. MedSAM's default (and training data) is abdomen/soft tissue.
CT_WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "abdomen": (40, 400),
    "soft_tissue": (40, 400),
    "lung": (-600, 1500),
    "brain": (40, 80),
    "mediastinum": (50, 350),
    "bone": (400, 1800),
}

#: Guards the min-max divisions against a constant input (MedSAM would divide by zero there).
_EPS = 1e-8

_MR_NAMES = ("mr", "mri")
_CT_NAMES = ("ct",)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _as_float64(img: ArrayLike) -> np.ndarray:
    """``img`` as a float64 numpy array (a copy when the input is not float64 already).

    float64 on purpose: MedSAM reads CT/MR with SimpleITK as int16, so numpy does its clip,
    percentiles and min-max in float64. MONAI loaders hand over float32 holding the same
    integers; converting them to float64 gives bit-identical results to MedSAM's path.
    """
    return np.asarray(convert_to_numpy(img), dtype=np.float64)


def check_finite(arr: np.ndarray) -> None:
    """Raise a one-line ValueError when ``arr`` holds NaN or +-inf (min/max would be meaningless)."""
    if not np.all(np.isfinite(arr)):
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        raise ValueError(
            f"image has NaN or infinite voxels ({bad} of {arr.size}); "
            "fix or mask them before intensity normalisation"
        )


def _minmax_to_255(clipped: np.ndarray) -> np.ndarray:
    """MedSAM's ``(x - min) / (max - min) * 255.0`` (same operation order, float64).

    The range is floored at 1e-8 so a constant volume maps to zeros instead of NaN.
    """
    lo = clipped.min()
    rng = max(float(clipped.max() - lo), _EPS)
    return (clipped - lo) / rng * 255.0


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """``np.uint8(x)`` as MedSAM does: truncation toward zero (values are already in [0, 255])."""
    return values.astype(np.uint8)


def _like_input(out: np.ndarray, img: ArrayLike) -> ArrayLike:
    """Return ``out`` as the type of ``img`` (numpy stays numpy; a MetaTensor keeps its metadata)."""
    dtype = torch.uint8 if isinstance(img, torch.Tensor) else np.uint8
    converted, *_ = convert_to_dst_type(out, img, dtype=dtype)
    return converted


# --------------------------------------------------------------------------------------------
# CT windowing
# --------------------------------------------------------------------------------------------


def _unknown_window(spec: Any) -> ValueError:
    choices = ", ".join(CT_WINDOW_PRESETS)
    return ValueError(f"unknown window preset {spec!r}; choose one of {choices} or give LEVEL,WIDTH")


def _check_level_width(level: float, width: float, spec: Any) -> tuple[float, float]:
    """Validate a numeric (level, width) pair; ``spec`` is only echoed in the message."""
    if not (math.isfinite(level) and math.isfinite(width)):
        raise ValueError(f"window {spec!r}: level and width must be finite numbers")
    if width <= 0:
        raise ValueError(f"window {spec!r}: width must be > 0, got {width:g}")
    return level, width


def parse_window(spec: WindowSpec) -> tuple[float, float]:
    """Turn a CT window spec into ``(level, width)`` in HU.

    Args:
        spec: a preset name from ``CT_WINDOW_PRESETS`` (case-insensitive), a ``"LEVEL,WIDTH"``
            string such as ``"40,400"`` or ``"-600, 1500"``, or a ``(level, width)`` pair.

    Raises:
        ValueError: unknown preset, non-numeric parts, NaN/inf, or width <= 0.
    """
    if isinstance(spec, str):
        text = spec.strip()
        preset = CT_WINDOW_PRESETS.get(text.lower())
        if preset is not None:
            return float(preset[0]), float(preset[1])
        parts = text.split(",")
        if len(parts) != 2:
            raise _unknown_window(spec)
        try:
            level, width = float(parts[0]), float(parts[1])
        except ValueError:
            raise ValueError(f"window {spec!r} is not LEVEL,WIDTH numbers (e.g. 40,400)") from None
        return _check_level_width(level, width, spec)
    try:
        level_raw, width_raw = spec  # type: ignore[misc]
        level, width = float(level_raw), float(width_raw)
    except (TypeError, ValueError):
        raise ValueError(
            f"window {spec!r} is neither a preset name nor a (level, width) pair of numbers"
        ) from None
    return _check_level_width(level, width, spec)


def ct_window(img: ArrayLike, window: WindowSpec = "abdomen") -> np.ndarray:
    """MedSAM's CT intensity normalisation (``pre_CT_MR.py``).

    Clip to [L - W/2, L + W/2], min-max the *clipped volume* (not the window) to [0, 255],
    truncate to uint8.

    Args:
        img: HU values, any shape (e.g. (D, H, W) or MONAI's (1, H, W, D)).
        window: see ``parse_window``.

    Returns:
        uint8 numpy array, same shape as ``img``.
    """
    level, width = parse_window(window)
    arr = _as_float64(img)
    check_finite(arr)
    clipped = np.clip(arr, level - width / 2, level + width / 2)
    return _to_uint8(_minmax_to_255(clipped))


class CTWindow(Transform):
    """Array transform: CT window + min-max to uint8 [0, 255], as MedSAM's training data.

    Input any shape (HU); output the same shape, uint8, same container type as the input
    (numpy -> numpy, tensor/MetaTensor -> tensor/MetaTensor with its metadata).
    """

    backend = [TransformBackends.NUMPY, TransformBackends.TORCH]

    def __init__(self, window: WindowSpec = "abdomen") -> None:
        self.window = parse_window(window)  # fail at construction, not on the first volume

    def __call__(self, img: ArrayLike) -> ArrayLike:
        return _like_input(ct_window(img, self.window), img)


class CTWindowd(MapTransform):
    """Dictionary twin of ``CTWindow``."""

    backend = CTWindow.backend

    def __init__(self, keys: KeysCollection, window: WindowSpec = "abdomen", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = CTWindow(window)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key])
        return d


# --------------------------------------------------------------------------------------------
# MR (and other non-CT) normalisation
# --------------------------------------------------------------------------------------------


def mr_normalize(img: ArrayLike, lower_percentile: float = 0.5, upper_percentile: float = 99.5) -> np.ndarray:
    """MedSAM's MR intensity normalisation (``pre_CT_MR.py``).

    Percentiles over voxels > 0 only (background is excluded from the statistics), clip the
    whole volume to them, min-max the clipped volume to [0, 255], put voxels that were exactly
    0 back to 0, truncate to uint8. A volume without any voxel > 0 gives zeros (MedSAM crashes).

    Args:
        img: intensities, any shape.
        lower_percentile, upper_percentile: in [0, 100], as ``np.percentile``.

    Returns:
        uint8 numpy array, same shape as ``img``.
    """
    arr = _as_float64(img)
    check_finite(arr)
    foreground = arr[arr > 0]
    if foreground.size == 0:
        return np.zeros(arr.shape, dtype=np.uint8)
    lower = np.percentile(foreground, lower_percentile)
    upper = np.percentile(foreground, upper_percentile)
    scaled = _minmax_to_255(np.clip(arr, lower, upper))
    scaled[arr == 0] = 0  # MedSAM keeps the (zero) background black after the clip lifted it
    return _to_uint8(scaled)


class MRNormalize(Transform):
    """Array transform: MedSAM's MR percentile clip + min-max to uint8 [0, 255].

    Input any shape; output the same shape, uint8, same container type as the input.
    """

    backend = [TransformBackends.NUMPY, TransformBackends.TORCH]

    def __init__(self, lower_percentile: float = 0.5, upper_percentile: float = 99.5) -> None:
        if not 0 <= lower_percentile < upper_percentile <= 100:
            raise ValueError(
                f"need 0 <= lower_percentile < upper_percentile <= 100, got {lower_percentile}, {upper_percentile}"
            )
        self.lower_percentile = lower_percentile
        self.upper_percentile = upper_percentile

    def __call__(self, img: ArrayLike) -> ArrayLike:
        out = mr_normalize(img, self.lower_percentile, self.upper_percentile)
        return _like_input(out, img)


class MRNormalized(MapTransform):
    """Dictionary twin of ``MRNormalize``."""

    backend = MRNormalize.backend

    def __init__(
        self,
        keys: KeysCollection,
        lower_percentile: float = 0.5,
        upper_percentile: float = 99.5,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = MRNormalize(lower_percentile, upper_percentile)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key])
        return d


# --------------------------------------------------------------------------------------------
# modality dispatch
# --------------------------------------------------------------------------------------------


class IntensityForModality(Transform):
    """Array transform: ``CTWindow`` for CT, ``MRNormalize`` for MR, chosen by name.

    Args:
        modality: "ct", "mr" or "mri" (case-insensitive).
        window: CT window spec (default "abdomen"); must be None for MR.
    """

    backend = [TransformBackends.NUMPY, TransformBackends.TORCH]

    def __init__(self, modality: str = "ct", window: WindowSpec | None = None) -> None:
        name = str(modality).strip().lower()
        if name in _CT_NAMES:
            self.transform: Transform = CTWindow("abdomen" if window is None else window)
        elif name in _MR_NAMES:
            if window is not None:
                raise ValueError(f"a CT window ({window!r}) was given for modality {modality!r}; MR takes none")
            self.transform = MRNormalize()
        else:
            choices = ", ".join(_CT_NAMES + _MR_NAMES)
            raise ValueError(f"unknown modality {modality!r}; choose one of {choices}")
        self.modality = name

    def __call__(self, img: ArrayLike) -> ArrayLike:
        return self.transform(img)


class IntensityForModalityd(MapTransform):
    """Dictionary twin of ``IntensityForModality``."""

    backend = IntensityForModality.backend

    def __init__(
        self,
        keys: KeysCollection,
        modality: str = "ct",
        window: WindowSpec | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = IntensityForModality(modality, window)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key])
        return d


# --------------------------------------------------------------------------------------------
# slice -> network input
# --------------------------------------------------------------------------------------------


def _as_2d_slice(slice_2d: ArrayLike) -> np.ndarray:
    """A (H, W) float64 slice; a MONAI channel-first (1, H, W) slice is accepted too."""
    arr = _as_float64(slice_2d)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f"expected a 2D slice (H, W) or (1, H, W), got shape {tuple(arr.shape)}")
    check_finite(arr)
    return arr


def _resize_01(grey: np.ndarray, size: int, mode: str, uint8_after_resize: bool = False) -> np.ndarray:
    """Resize one (H, W) float64 slice to (size, size) and min-max it to [0, 1] (float64).

    MedSAM resizes the 3-channel repeat; the channels are identical and scikit-image treats
    the last axis as channels, so resizing the grey slice once gives the same values (to
    ~1e-13) at a fraction of the cost (the channel axis also goes through the spline zoom).
    """
    resized = _skimage_resize(
        grey, (size, size), order=3, preserve_range=True, anti_aliasing=True, mode=mode
    )
    if uint8_after_resize:
        # MedSAM_Inference.py truncates the resized image to uint8 before the min-max
        resized = resized.astype(np.uint8).astype(np.float64)
    return (resized - resized.min()) / np.clip(resized.max() - resized.min(), a_min=_EPS, a_max=None)


def prepare_slice(
    slice_2d: ArrayLike, size: int = MODEL_INPUT_SIZE, mode: str = "reflect", uint8_after_resize: bool = False
) -> torch.Tensor:
    """One grey slice -> MedSAM image-encoder input, exactly as ``MedSAM_Inference.py``.

    Stretch-resize to (size, size) with scikit-image (cubic spline, anti-aliasing, range
    preserved; the aspect ratio is NOT kept), min-max to [0, 1], repeat to 3 channels.
    No SAM pixel mean/std: MedSAM's encoder takes the [0, 1] image.

    Args:
        slice_2d: (H, W) (or (1, H, W)), typically the uint8 output of ``CTWindow``/``MRNormalize``.
        size: output side (1024 for SAM ViT models).
        mode: scikit-image boundary mode; ``MedSAM_Inference.py`` uses the default "reflect"
            (MedSAM's older training preprocessing used "constant"; only the borders differ).
        uint8_after_resize: truncate the resized slice to uint8 before the min-max, as the
            script's ``transform.resize(...).astype(np.uint8)`` does (meant for uint8 input,
            i.e. after ``CTWindow``/``MRNormalize``). Off by default: the project reference
            (resize, then min-max) has no such step; MedSAM's training data had none either.

    Returns:
        float32 tensor (3, size, size) in [0, 1].
    """
    out = _resize_01(_as_2d_slice(slice_2d), size, mode, uint8_after_resize)
    return torch.from_numpy(out).float().unsqueeze(0).repeat(3, 1, 1)


def prepare_slices(
    volume_slices: ArrayLike,
    size: int = MODEL_INPUT_SIZE,
    mode: str = "reflect",
    num_workers: int | None = None,
    uint8_after_resize: bool = False,
) -> torch.Tensor:
    """A stack of slices -> a batch of encoder inputs; each slice as ``prepare_slice``.

    Slices are resized one by one (a single 3D zoom would run the spline across slices) in a
    thread pool: scipy.ndimage releases the GIL, so threads scale.

    Args:
        volume_slices: (N, H, W).
        size: output side.
        mode, uint8_after_resize: see ``prepare_slice``.
        num_workers: threads; default ``min(N, os.cpu_count())``.

    Returns:
        float32 tensor (N, 3, size, size); memory is 12 MiB per slice at size 1024.
    """
    stack = _as_float64(volume_slices)
    if stack.ndim != 3:
        raise ValueError(f"expected slices (N, H, W), got shape {tuple(stack.shape)}")
    check_finite(stack)
    n = stack.shape[0]
    out = torch.empty((n, 3, size, size), dtype=torch.float32)
    if n == 0:
        return out

    def work(i: int) -> None:
        out[i] = torch.from_numpy(_resize_01(stack[i], size, mode, uint8_after_resize)).float()  # broadcast to 3 channels

    workers = max(1, min(n, num_workers or os.cpu_count() or 1))
    if workers == 1:
        for i in range(n):
            work(i)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(work, range(n)))  # list() re-raises worker exceptions
    return out


class PrepareSlice(Transform):
    """Array transform: (H, W) or (1, H, W) slice -> float32 tensor (3, size, size) in [0, 1]."""

    backend = [TransformBackends.NUMPY, TransformBackends.TORCH]

    def __init__(self, size: int = MODEL_INPUT_SIZE, mode: str = "reflect", uint8_after_resize: bool = False) -> None:
        self.size = size
        self.mode = mode
        self.uint8_after_resize = uint8_after_resize

    def __call__(self, img: ArrayLike) -> torch.Tensor:
        return prepare_slice(img, self.size, self.mode, self.uint8_after_resize)


class PrepareSliced(MapTransform):
    """Dictionary twin of ``PrepareSlice``."""

    backend = PrepareSlice.backend

    def __init__(
        self,
        keys: KeysCollection,
        size: int = MODEL_INPUT_SIZE,
        mode: str = "reflect",
        uint8_after_resize: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = PrepareSlice(size, mode, uint8_after_resize)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key])
        return d


# --------------------------------------------------------------------------------------------
# boxes
# --------------------------------------------------------------------------------------------


def _box_wh(slice_shape_hw: Sequence[int]) -> np.ndarray:
    """The slice's (W, H, W, H), matching the (x0, y0, x1, y1) coordinate order."""
    h, w = (int(v) for v in slice_shape_hw)
    if h <= 0 or w <= 0:
        raise ValueError(f"slice shape must be positive (H, W), got {tuple(slice_shape_hw)}")
    return np.array([w, h, w, h], dtype=np.float64)


def _as_boxes(box_xyxy: ArrayLike | Sequence[float]) -> np.ndarray:
    boxes = np.asarray(convert_to_numpy(box_xyxy), dtype=np.float64)
    if boxes.shape[-1:] != (4,):
        raise ValueError(f"boxes must be (..., 4) as (x0, y0, x1, y1), got shape {boxes.shape}")
    return boxes


def scale_box_to_model(
    box_xyxy: ArrayLike | Sequence[float], slice_shape_hw: Sequence[int], size: int = MODEL_INPUT_SIZE
) -> np.ndarray:
    """Box(es) in slice pixels -> the (size x size) model frame: x * size / W, y * size / H.

    The two axes scale independently because the slice is stretched, not letterboxed; no
    rounding, as MedSAM. ``x`` is the column, ``y`` the row.

    Args:
        box_xyxy: (4,) or (..., 4) as (x0, y0, x1, y1).
        slice_shape_hw: (H, W) of the original slice.

    Returns:
        float64 array, same shape as ``box_xyxy``.
    """
    # MedSAM's exact operation order: box / [W, H, W, H] * 1024
    return _as_boxes(box_xyxy) / _box_wh(slice_shape_hw) * size


def scale_box_from_model(
    box_xyxy: ArrayLike | Sequence[float], slice_shape_hw: Sequence[int], size: int = MODEL_INPUT_SIZE
) -> np.ndarray:
    """Inverse of ``scale_box_to_model``: model-frame box(es) -> slice pixels (x * W / size, y * H / size)."""
    return _as_boxes(box_xyxy) / size * _box_wh(slice_shape_hw)


# --------------------------------------------------------------------------------------------
# masks
# --------------------------------------------------------------------------------------------


def mask_probabilities(low_res_logits: torch.Tensor, slice_shape_hw: Sequence[int]) -> torch.Tensor:
    """Low-res decoder logits -> float32 probabilities at the slice size, as ``MedSAM_Inference.py``.

    Sigmoid first, then ONE bilinear resize (align_corners=False) straight to (H, W). (SAM's own
    postprocess resizes logits via 1024 and unpads; MedSAM does not.)

    Args:
        low_res_logits: (P, M, h, w) logits, typically (P, 1, 256, 256); P prompts, M masks.
        slice_shape_hw: (H, W) of the original slice.

    Returns:
        float32 tensor (P, M, H, W) on the logits' device.
    """
    if low_res_logits.ndim != 4:
        raise ValueError(f"expected logits (P, M, h, w), got shape {tuple(low_res_logits.shape)}")
    h, w = (int(v) for v in slice_shape_hw)
    # float32: half-precision logits (autocast) would round the 0.5 threshold and may lack CPU kernels
    probs = torch.sigmoid(low_res_logits.float())
    return F.interpolate(probs, size=(h, w), mode="bilinear", align_corners=False)


def postprocess_logits(low_res_logits: torch.Tensor, slice_shape_hw: Sequence[int]) -> torch.Tensor:
    """Low-res decoder logits -> binary masks (P, M, H, W) at the slice size: :func:`mask_probabilities` > 0.5."""
    return mask_probabilities(low_res_logits, slice_shape_hw) > 0.5
