"""The maths of MedSAM's (and SAM's) pre- and post-processing, as plain functions.

Reproduces MedSAM's reference pipeline (``pre_CT_MR.py`` for volume intensities,
``MedSAM_Inference.py`` for slices, boxes and masks) exactly, in numpy (and torch for masks). The
array transforms of :mod:`.array` and the dictionary transforms of :mod:`.dictionary` wrap these.
Nothing here knows about the network or files.

- Intensities: :func:`parse_window`, :func:`ct_window`, :func:`mr_normalize` -> uint8 in [0, 255].
- Slices: :func:`prepare_slice`, :func:`prepare_slices` -> float32 (3, 1024, 1024) in [0, 1];
  :func:`resize_label` (nearest neighbour, for training masks); :func:`sam_normalize` (SAM's own
  pixel mean/std, for SAM checkpoints; MedSAM takes the [0, 1] image).
- Boxes: :func:`scale_box_to_model`, :func:`scale_box_from_model` (slice pixels <-> 1024 frame).
- Masks: :func:`upscale_masks` (the one bilinear resize of decoder outputs), :func:`mask_probabilities`,
  :func:`postprocess_logits`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.utils import convert_to_dst_type, convert_to_numpy
from skimage.transform import resize as skimage_resize

ArrayLike = np.ndarray | torch.Tensor
WindowSpec = str | Sequence[float]

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

#: SAM's per-channel normalisation of an RGB image in [0, 255] (segment-anything's ``Sam.pixel_mean``
#: / ``pixel_std``; transformers' ImageNet mean/std after rescaling by 1/255 are the same numbers).
SAM_PIXEL_MEAN: tuple[float, float, float] = (123.675, 116.28, 103.53)
SAM_PIXEL_STD: tuple[float, float, float] = (58.395, 57.12, 57.375)

#: Guards the min-max divisions against a constant input (MedSAM would divide by zero there).
EPS = 1e-8

MR_NAMES = ("mr", "mri")
CT_NAMES = ("ct",)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def as_float64(img: ArrayLike) -> np.ndarray:
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
            f"image has NaN or infinite voxels ({bad} of {arr.size}); fix or mask them before intensity normalisation"
        )


def minmax_to_255(clipped: np.ndarray) -> np.ndarray:
    """MedSAM's ``(x - min) / (max - min) * 255.0`` (same operation order, float64).

    The range is floored at 1e-8 so a constant volume maps to zeros instead of NaN.
    """
    lo = clipped.min()
    rng = max(float(clipped.max() - lo), EPS)
    return (clipped - lo) / rng * 255.0


def to_uint8(values: np.ndarray) -> np.ndarray:
    """``np.uint8(x)`` as MedSAM does: truncation toward zero (values are already in [0, 255])."""
    return values.astype(np.uint8)


def uint8_like(out: np.ndarray, img: ArrayLike) -> ArrayLike:
    """``out`` as uint8 in the container type of ``img`` (numpy stays numpy; a MetaTensor keeps its metadata)."""
    dtype = torch.uint8 if isinstance(img, torch.Tensor) else np.uint8
    converted, *_ = convert_to_dst_type(out, img, dtype=dtype)
    return converted


# --------------------------------------------------------------------------------------------
# CT windowing
# --------------------------------------------------------------------------------------------


def unknown_window(spec: Any) -> ValueError:
    """The one-line error for a window spec that is neither a preset nor LEVEL,WIDTH."""
    choices = ", ".join(CT_WINDOW_PRESETS)
    return ValueError(f"unknown window preset {spec!r}; choose one of {choices} or give LEVEL,WIDTH")


def check_level_width(level: float, width: float, spec: Any) -> tuple[float, float]:
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
            raise unknown_window(spec)
        try:
            level, width = float(parts[0]), float(parts[1])
        except ValueError:
            raise ValueError(f"window {spec!r} is not LEVEL,WIDTH numbers (e.g. 40,400)") from None
        return check_level_width(level, width, spec)
    try:
        level_raw, width_raw = spec  # type: ignore[misc]
        level, width = float(level_raw), float(width_raw)
    except (TypeError, ValueError):
        raise ValueError(f"window {spec!r} is neither a preset name nor a (level, width) pair of numbers") from None
    return check_level_width(level, width, spec)


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
    arr = as_float64(img)
    check_finite(arr)
    clipped = np.clip(arr, level - width / 2, level + width / 2)
    return to_uint8(minmax_to_255(clipped))


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
    arr = as_float64(img)
    check_finite(arr)
    foreground = arr[arr > 0]
    if foreground.size == 0:
        return np.zeros(arr.shape, dtype=np.uint8)
    lower = np.percentile(foreground, lower_percentile)
    upper = np.percentile(foreground, upper_percentile)
    scaled = minmax_to_255(np.clip(arr, lower, upper))
    scaled[arr == 0] = 0  # MedSAM keeps the (zero) background black after the clip lifted it
    return to_uint8(scaled)


def check_percentiles(lower_percentile: float, upper_percentile: float) -> None:
    """One-line ValueError unless 0 <= lower < upper <= 100."""
    if not 0 <= lower_percentile < upper_percentile <= 100:
        raise ValueError(f"need 0 <= lower_percentile < upper_percentile <= 100, got {lower_percentile}, {upper_percentile}")


# --------------------------------------------------------------------------------------------
# slice -> network input
# --------------------------------------------------------------------------------------------


def as_2d_slice(slice_2d: ArrayLike) -> np.ndarray:
    """A (H, W) float64 slice; a MONAI channel-first (1, H, W) slice is accepted too."""
    arr = as_float64(slice_2d)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f"expected a 2D slice (H, W) or (1, H, W), got shape {tuple(arr.shape)}")
    check_finite(arr)
    return arr


def resize_01(image: np.ndarray, size: int, mode: str, uint8_after_resize: bool = False) -> np.ndarray:
    """Resize one (H, W) grey or (H, W, 3) RGB float64 image to (size, size[, 3]) and min-max it to
    [0, 1] (float64; one min and max over all channels, as ``MedSAM_Inference.py``).

    MedSAM resizes the 3-channel repeat of a grey slice; the channels are identical and
    scikit-image treats the last axis as channels, so resizing the grey slice once gives the same
    values (to ~1e-13) at a fraction of the cost (the channel axis also goes through the spline zoom).
    """
    resized = skimage_resize(image, (size, size), order=3, preserve_range=True, anti_aliasing=True, mode=mode)
    if uint8_after_resize:
        # MedSAM_Inference.py truncates the resized image to uint8 before the min-max
        resized = resized.astype(np.uint8).astype(np.float64)
    return (resized - resized.min()) / np.clip(resized.max() - resized.min(), a_min=EPS, a_max=None)


def channels_first(image_01: np.ndarray) -> torch.Tensor:
    """(H, W) grey (repeated to 3 channels) or (H, W, 3) RGB -> float32 tensor (3, H, W)."""
    tensor = torch.from_numpy(np.ascontiguousarray(image_01)).float()
    return tensor.unsqueeze(0).repeat(3, 1, 1) if tensor.ndim == 2 else tensor.permute(2, 0, 1).contiguous()


def check_image_stack(stack: np.ndarray) -> None:
    """ValueError (one line) unless ``stack`` is (N, H, W) grey or (N, H, W, 3) RGB images."""
    if not (stack.ndim == 3 or (stack.ndim == 4 and stack.shape[-1] == 3)):
        raise ValueError(f"expected images (N, H, W) or (N, H, W, 3), got shape {tuple(stack.shape)}")


def prepare_slice(
    slice_2d: ArrayLike, size: int = MODEL_INPUT_SIZE, mode: str = "reflect", uint8_after_resize: bool = False
) -> torch.Tensor:
    """One grey slice -> MedSAM image-encoder input, exactly as ``MedSAM_Inference.py``.

    Stretch-resize to (size, size) with scikit-image (cubic spline, anti-aliasing, range
    preserved; the aspect ratio is NOT kept), min-max to [0, 1], repeat to 3 channels.
    No SAM pixel mean/std: MedSAM's encoder takes the [0, 1] image (see :func:`sam_normalize`).

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
    return channels_first(resize_01(as_2d_slice(slice_2d), size, mode, uint8_after_resize))


def prepare_slices(
    volume_slices: ArrayLike,
    size: int = MODEL_INPUT_SIZE,
    mode: str = "reflect",
    num_workers: int | None = None,
    uint8_after_resize: bool = False,
) -> torch.Tensor:
    """A stack of slices (or RGB images) -> a batch of MedSAM encoder inputs; each as ``prepare_slice``.

    Slices are resized one by one (a single 3D zoom would run the spline across slices) in a
    thread pool: scipy.ndimage releases the GIL, so threads scale.

    Args:
        volume_slices: (N, H, W) grey or (N, H, W, 3) RGB, values in [0, 255].
        size: output side.
        mode, uint8_after_resize: see ``prepare_slice``.
        num_workers: threads; default ``min(N, os.cpu_count())``.

    Returns:
        float32 tensor (N, 3, size, size); memory is 12 MiB per slice at size 1024.
    """
    stack = as_float64(volume_slices)
    check_image_stack(stack)
    check_finite(stack)
    n = stack.shape[0]
    out = torch.empty((n, 3, size, size), dtype=torch.float32)
    if n == 0:
        return out

    def work(i: int) -> None:
        out[i] = channels_first(resize_01(stack[i], size, mode, uint8_after_resize))

    workers = max(1, min(n, num_workers or os.cpu_count() or 1))
    if workers == 1:
        for i in range(n):
            work(i)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(work, range(n)))  # list() re-raises worker exceptions
    return out


def resize_label(label_slice: np.ndarray, size: int = MODEL_INPUT_SIZE) -> np.ndarray:
    """A (H, W) label slice stretched to (size, size) by nearest neighbour, as MedSAM's ``pre_CT_MR.py``."""
    resized = skimage_resize(label_slice, (size, size), order=0, preserve_range=True, mode="constant", anti_aliasing=False)
    return resized.astype(label_slice.dtype)


def sam_normalize(images: ArrayLike) -> ArrayLike:
    """SAM's input normalisation: ``(x - pixel_mean) / pixel_std`` per RGB channel, for x in [0, 255].

    This is what SAM checkpoints (``sam_vit_*``) expect after their longest-side resize and before
    their zero padding; MedSAM does not use it (its encoder takes the [0, 1] image of
    :func:`prepare_slice`).

    Args:
        images: channel-first (3, H, W) or a batch (B, 3, H, W), numpy or torch, values in [0, 255].

    Returns:
        float32 (numpy) or floating (torch, the input's float dtype or float32) of the same shape.
    """
    if images.ndim not in (3, 4) or images.shape[-3] != 3:
        raise ValueError(f"expected RGB images (3, H, W) or (B, 3, H, W), got shape {tuple(images.shape)}")
    if isinstance(images, torch.Tensor):
        dtype = images.dtype if images.is_floating_point() else torch.float32
        mean = torch.tensor(SAM_PIXEL_MEAN, dtype=dtype, device=images.device).view(3, 1, 1)
        std = torch.tensor(SAM_PIXEL_STD, dtype=dtype, device=images.device).view(3, 1, 1)
        return (images.to(dtype) - mean) / std
    array = np.asarray(images, dtype=np.float32)
    mean_np = np.asarray(SAM_PIXEL_MEAN, dtype=np.float32).reshape(3, 1, 1)
    std_np = np.asarray(SAM_PIXEL_STD, dtype=np.float32).reshape(3, 1, 1)
    return (array - mean_np) / std_np


#: The two image pipelines: MedSAM's (stretch to 1024, min-max to [0, 1]) and SAM's (longest side to
#: 1024, pixel mean/std, zero padding). A checkpoint must be fed the one it was trained with.
PREPROCESSING_MODES = ("medsam", "sam")


def check_preprocessing(name: str) -> str:
    """``name`` if it is one of :data:`PREPROCESSING_MODES`; one-line ValueError otherwise."""
    if name not in PREPROCESSING_MODES:
        raise ValueError(f"unknown preprocessing {name!r}; choose one of {', '.join(PREPROCESSING_MODES)}")
    return name


def sam_resized_shape(image_hw: Sequence[int], size: int = MODEL_INPUT_SIZE) -> tuple[int, int]:
    """SAM's ``ResizeLongestSide`` target (new_h, new_w): the longest side becomes ``size``, rounded half up."""
    h, w = (int(v) for v in image_hw)
    if h <= 0 or w <= 0:
        raise ValueError(f"image shape must be positive (H, W), got {tuple(image_hw)}")
    scale = size / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def as_uint8_rgb(image: ArrayLike) -> np.ndarray:
    """(H, W) grey or (H, W, 3) RGB in [0, 255] -> uint8 (H, W, 3), as SAM takes images (rounded, clipped)."""
    array = np.asarray(convert_to_numpy(image))
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"expected an image (H, W) or (H, W, 3), got shape {tuple(array.shape)}")
    if array.dtype == np.uint8:
        return array
    check_finite(array.astype(np.float64, copy=False))
    return np.clip(np.rint(array), 0, 255).astype(np.uint8)


def sam_resize(image: ArrayLike, size: int = MODEL_INPUT_SIZE) -> np.ndarray:
    """SAM's resize: uint8 RGB (H, W, 3), longest side to ``size`` with PIL's bilinear filter
    (segment-anything's ``ResizeLongestSide.apply_image`` and transformers' ``SamImageProcessor``)."""
    from PIL import Image

    rgb = as_uint8_rgb(image)
    new_h, new_w = sam_resized_shape(rgb.shape[:2], size)
    return np.array(Image.fromarray(rgb).resize((new_w, new_h), Image.BILINEAR))  # a writable copy


def prepare_sam_image(image: ArrayLike, size: int = MODEL_INPUT_SIZE) -> torch.Tensor:
    """One image -> SAM image-encoder input: :func:`sam_resize`, :func:`sam_normalize`, zero padding
    bottom/right to (size, size) after the normalisation, as segment-anything's ``Sam.preprocess``.

    Args:
        image: (H, W) grey (repeated to 3 channels) or (H, W, 3) RGB, values in [0, 255].

    Returns:
        float32 tensor (3, size, size).
    """
    resized = torch.from_numpy(sam_resize(image, size)).permute(2, 0, 1)
    normalized = sam_normalize(resized)
    return F.pad(normalized, (0, size - resized.shape[2], 0, size - resized.shape[1]))


def prepare_sam_images(images: ArrayLike, size: int = MODEL_INPUT_SIZE) -> torch.Tensor:
    """(N, H, W) or (N, H, W, 3) images in [0, 255] -> float32 (N, 3, size, size), each as :func:`prepare_sam_image`."""
    stack = np.asarray(convert_to_numpy(images))
    check_image_stack(stack)
    out = torch.empty((stack.shape[0], 3, size, size), dtype=torch.float32)
    for i in range(stack.shape[0]):
        out[i] = prepare_sam_image(stack[i], size)
    return out


def prepare_images(
    images: ArrayLike, preprocessing: str = "medsam", size: int = MODEL_INPUT_SIZE, uint8_after_resize: bool = False
) -> torch.Tensor:
    """(N, H, W) or (N, H, W, 3) images in [0, 255] -> (N, 3, size, size) encoder inputs of ``preprocessing``
    (:func:`prepare_slices` for ``medsam``, :func:`prepare_sam_images` for ``sam``)."""
    if check_preprocessing(preprocessing) == "sam":
        return prepare_sam_images(images, size)
    return prepare_slices(images, size, uint8_after_resize=uint8_after_resize)


# --------------------------------------------------------------------------------------------
# boxes: slice pixels <-> the model frame
# --------------------------------------------------------------------------------------------


def box_wh(slice_shape_hw: Sequence[int]) -> np.ndarray:
    """The slice's (W, H, W, H), matching the (x0, y0, x1, y1) coordinate order."""
    h, w = (int(v) for v in slice_shape_hw)
    if h <= 0 or w <= 0:
        raise ValueError(f"slice shape must be positive (H, W), got {tuple(slice_shape_hw)}")
    return np.array([w, h, w, h], dtype=np.float64)


def as_xyxy_boxes(box_xyxy: ArrayLike | Sequence[float]) -> np.ndarray:
    """Box(es) as a float64 (..., 4) array of (x0, y0, x1, y1); one-line ValueError otherwise."""
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
    return as_xyxy_boxes(box_xyxy) / box_wh(slice_shape_hw) * size


def scale_box_from_model(
    box_xyxy: ArrayLike | Sequence[float], slice_shape_hw: Sequence[int], size: int = MODEL_INPUT_SIZE
) -> np.ndarray:
    """Inverse of ``scale_box_to_model``: model-frame box(es) -> slice pixels (x * W / size, y * H / size)."""
    return as_xyxy_boxes(box_xyxy) / size * box_wh(slice_shape_hw)


def model_frame_scale(image_hw: Sequence[int], preprocessing: str = "medsam", size: int = MODEL_INPUT_SIZE) -> np.ndarray:
    """``(sx, sy)``: image pixels -> the model frame (x * sx, y * sy). ``medsam`` stretches
    (size / W, size / H); ``sam`` resizes the longest side (new_w / W, new_h / H)."""
    w, h = (int(v) for v in box_wh(image_hw)[:2])  # checked positive
    if check_preprocessing(preprocessing) == "sam":
        new_h, new_w = sam_resized_shape((h, w), size)
        return np.array([new_w / w, new_h / h], dtype=np.float64)
    return np.array([size / w, size / h], dtype=np.float64)


def scale_points_to_model(
    points_xy: ArrayLike | Sequence[Sequence[float]],
    image_hw: Sequence[int],
    preprocessing: str = "medsam",
    size: int = MODEL_INPUT_SIZE,
) -> np.ndarray:
    """Points (..., 2) ``(x, y)`` in image pixels -> the model frame of ``preprocessing`` (float64)."""
    points = np.asarray(convert_to_numpy(points_xy), dtype=np.float64)
    if points.shape[-1:] != (2,):
        raise ValueError(f"points must be (..., 2) as (x, y), got shape {points.shape}")
    return points * model_frame_scale(image_hw, preprocessing, size)


def scale_boxes_to_model(
    box_xyxy: ArrayLike | Sequence[float],
    image_hw: Sequence[int],
    preprocessing: str = "medsam",
    size: int = MODEL_INPUT_SIZE,
) -> np.ndarray:
    """Boxes (..., 4) in image pixels -> the model frame of ``preprocessing``: MedSAM's exact
    :func:`scale_box_to_model` or SAM's per-corner ``apply_boxes``."""
    if check_preprocessing(preprocessing) == "medsam":
        return scale_box_to_model(box_xyxy, image_hw, size)
    return as_xyxy_boxes(box_xyxy) * np.tile(model_frame_scale(image_hw, preprocessing, size), 2)


# --------------------------------------------------------------------------------------------
# masks
# --------------------------------------------------------------------------------------------


def upscale_masks(masks: torch.Tensor, size_hw: Sequence[int]) -> torch.Tensor:
    """The bilinear resize (align_corners=False) of decoder outputs, as MedSAM does it everywhere.

    Used on probabilities at inference (:func:`mask_probabilities`) and on logits in training
    (``MedSAMTrainNet``, the loss at 1024), so both see the same interpolation.

    Args:
        masks: (P, M, h, w) mask logits or probabilities, typically (P, 1, 256, 256).
        size_hw: the (H, W) to resize to.

    Returns:
        (P, M, H, W), same dtype and device.
    """
    if masks.ndim != 4:
        raise ValueError(f"expected masks (P, M, h, w), got shape {tuple(masks.shape)}")
    h, w = (int(v) for v in size_hw)
    if masks.shape[-2:] == (h, w):
        # bilinear at scale 1 (align_corners=False) samples every pixel at its own centre: an identity, skipped
        return masks
    return F.interpolate(masks, size=(h, w), mode="bilinear", align_corners=False)


def mask_probabilities(low_res_logits: torch.Tensor, slice_shape_hw: Sequence[int]) -> torch.Tensor:
    """Low-res decoder logits -> float32 probabilities at the slice size, as ``MedSAM_Inference.py``.

    Sigmoid first, then ONE bilinear resize (:func:`upscale_masks`) straight to (H, W). (SAM's own
    postprocess resizes logits via 1024 and unpads; MedSAM does not.)

    Args:
        low_res_logits: (P, M, h, w) logits, typically (P, 1, 256, 256); P prompts, M masks.
        slice_shape_hw: (H, W) of the original slice.

    Returns:
        float32 tensor (P, M, H, W) on the logits' device.
    """
    if low_res_logits.ndim != 4:
        raise ValueError(f"expected logits (P, M, h, w), got shape {tuple(low_res_logits.shape)}")
    # float32: half-precision logits (autocast) would round the 0.5 threshold and may lack CPU kernels
    return upscale_masks(torch.sigmoid(low_res_logits.float()), slice_shape_hw)


def postprocess_logits(low_res_logits: torch.Tensor, slice_shape_hw: Sequence[int]) -> torch.Tensor:
    """Low-res decoder logits -> binary masks (P, M, H, W) at the slice size: :func:`mask_probabilities` > 0.5."""
    return mask_probabilities(low_res_logits, slice_shape_hw) > 0.5


def sam_postprocess_logits(low_res_logits: torch.Tensor, image_hw: Sequence[int], size: int = MODEL_INPUT_SIZE) -> torch.Tensor:
    """SAM's ``postprocess_masks``: (P, M, h, w) low-res logits -> bilinear to (size, size) -> crop the
    padding to the resized image -> bilinear to (H, W). float32 logits; masks are logits > 0."""
    if low_res_logits.ndim != 4:
        raise ValueError(f"expected logits (P, M, h, w), got shape {tuple(low_res_logits.shape)}")
    new_h, new_w = sam_resized_shape(image_hw, size)
    padded = upscale_masks(low_res_logits.float(), (size, size))
    return upscale_masks(padded[..., :new_h, :new_w], image_hw)


def mask_logits(
    low_res_logits: torch.Tensor, image_hw: Sequence[int], preprocessing: str = "medsam", size: int = MODEL_INPUT_SIZE
) -> torch.Tensor:
    """Low-res decoder logits (P, M, h, w) -> float32 logits (P, M, H, W) at the image size:
    SAM's :func:`sam_postprocess_logits` for ``sam``, one bilinear resize for ``medsam``."""
    if check_preprocessing(preprocessing) == "sam":
        return sam_postprocess_logits(low_res_logits, image_hw, size)
    if low_res_logits.ndim != 4:
        raise ValueError(f"expected logits (P, M, h, w), got shape {tuple(low_res_logits.shape)}")
    return upscale_masks(low_res_logits.float(), image_hw)


def masks_and_probabilities(
    low_res_logits: torch.Tensor, image_hw: Sequence[int], preprocessing: str = "medsam", size: int = MODEL_INPUT_SIZE
) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary masks and float32 probabilities (P, M, H, W) as each pipeline thresholds them:
    MedSAM's sigmoid, resize, > 0.5 (:func:`mask_probabilities`); SAM's logits > 0 after its upscale."""
    if check_preprocessing(preprocessing) == "sam":
        logits = sam_postprocess_logits(low_res_logits, image_hw, size)
        return logits > 0.0, torch.sigmoid(logits)
    probabilities = mask_probabilities(low_res_logits, image_hw)
    return probabilities > 0.5, probabilities


#: A binary mask given as a dense prompt becomes logits ``20 * m - 10`` at the decoder's 256 scale:
#: SAM 2's convention for mask inputs (``sigmoid_scale_for_mem_enc`` 20, bias -10); SAM 1 and
#: MedSAM only take their own earlier low-res logits.
MASK_PROMPT_SCALE = 20.0
MASK_PROMPT_BIAS = -10.0


def mask_prompt_logits(
    mask: ArrayLike, preprocessing: str = "medsam", size: int = MODEL_INPUT_SIZE, low_res: int = 256
) -> torch.Tensor:
    """An (H, W) binary mask in image pixels -> (1, low_res, low_res) float32 logits for the decoder's
    mask input, in the model frame of ``preprocessing``: stretched for ``medsam``; longest side
    resized and zero-padded (as logits of "outside") for ``sam``. Area-weighted (antialiased
    bilinear) resize, then :data:`MASK_PROMPT_SCALE` and :data:`MASK_PROMPT_BIAS`.
    """
    array = np.asarray(convert_to_numpy(mask))
    if array.ndim != 2 or 0 in array.shape:
        raise ValueError(f"a mask prompt must be a 2D (H, W) mask, got shape {tuple(array.shape)}")
    fraction = torch.from_numpy(np.ascontiguousarray(array != 0, dtype=np.float32))[None, None]
    if check_preprocessing(preprocessing) == "sam":
        new_h, new_w = sam_resized_shape(array.shape, low_res)
        resized = F.interpolate(fraction, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
        fraction = F.pad(resized, (0, low_res - new_w, 0, low_res - new_h))
    else:
        fraction = F.interpolate(fraction, size=(low_res, low_res), mode="bilinear", align_corners=False, antialias=True)
    return (fraction[0] * MASK_PROMPT_SCALE + MASK_PROMPT_BIAS).float()
