"""Turning an upload into a session's intensities within a known amount of memory.

Every limit is checked against the declared dtype and shape before anything is allocated; the
data is decoded in chunks straight into one buffer of the declared size (:mod:`.codec`); and the
intensities are normalised a slab of :data:`SLAB_VOXELS` voxels at a time, with the statistics
MedSAM's normalisation needs (CT: the clipped minimum and maximum; MR: the foreground
percentiles) computed first. The result is bit for bit what :func:`medsam_monai.segment.normalized_volume`
gives (the tests compare the two), without its float64 copies of the whole volume.

Working memory of one upload, besides its request body: the decoded voxels, one uint8 per voxel
for the result and, for MR, the voxels > 0 (in their own dtype, float64 for float32 volumes), plus
a few slabs (:func:`working_bytes`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np

from ..transforms import IntensityForModality, parse_window

# Voxels normalised at a time: 256K voxels, so each float64 temporary of a slab is 2 MB.
SLAB_VOXELS = 1 << 18
# float64 temporaries a slab needs at once (its values, the clipped and the scaled copy), with margin.
_SLAB_TEMPORARIES = 4


class IntakeBusy(RuntimeError):
    """The memory for decoding uploads is taken by others for longer than a client should wait."""


def check_normalisation(modality: str, window: object) -> None:
    """Raise a one-line ValueError for an unknown modality or a bad window (before any decoding)."""
    IntensityForModality(modality=modality, window=window)


def foreground_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype the MR foreground is gathered in for percentiles that equal numpy's on float64.

    Integers stay as they are (every value and every difference of two positive values is exact in
    float64, so numpy's interpolation gives the same result); float32 is widened, as numpy would
    interpolate in float32 otherwise."""
    return np.dtype(np.float64) if dtype.kind == "f" else dtype


def working_bytes(dtype: str, voxels: int, modality: str) -> int:
    """The most memory decoding and normalising one upload of ``voxels`` voxels of ``dtype`` needs
    (its request body aside): the decoded voxels, the uint8 result, the MR foreground, the slabs."""
    itemsize = np.dtype(dtype).itemsize
    foreground = voxels * foreground_dtype(np.dtype(dtype)).itemsize if modality == "mr" else 0
    return voxels * itemsize + voxels + foreground + _SLAB_TEMPORARIES * 8 * min(voxels, SLAB_VOXELS)


def normalized_in_slabs(array: np.ndarray, modality: str = "ct", window: object = None) -> np.ndarray:
    """MedSAM's intensities (uint8, same shape) of ``array``, equal to ``normalized_volume``'s.

    Args:
        array: the decoded volume ``[i, j, k]``, any of the wire dtypes, Fortran or C contiguous.
        modality, window: as :func:`medsam_monai.segment.normalized_volume`.

    Raises:
        ValueError: one line, for NaN or infinite voxels, an unknown modality or a bad window.
    """
    check_normalisation(modality, window)
    order = "F" if array.flags.f_contiguous else "C"
    flat = array.reshape(-1, order=order)  # a view: contiguous either way
    out = np.empty(array.shape, dtype=np.uint8, order=order)
    out_flat = out.reshape(-1, order=order)
    if array.dtype.kind == "f":
        _check_finite_in_slabs(flat)
    if str(modality).strip().lower() in ("mr", "mri"):
        _mr_in_slabs(flat, out_flat)
    else:
        level, width = parse_window(window if window is not None else "abdomen")
        _ct_in_slabs(flat, out_flat, level - width / 2, level + width / 2)
    return out


def _slabs(size: int) -> Iterator[slice]:
    for start in range(0, size, SLAB_VOXELS):
        yield slice(start, min(start + SLAB_VOXELS, size))


def _check_finite_in_slabs(flat: np.ndarray) -> None:
    bad = sum(int(part.size - np.count_nonzero(np.isfinite(part))) for part in map(flat.__getitem__, _slabs(flat.size)))
    if bad:
        raise ValueError(
            f"image has NaN or infinite voxels ({bad} of {flat.size}); fix or mask them before intensity normalisation"
        )


def _clipped_range(flat: np.ndarray, lower: np.float64, upper: np.float64) -> tuple[np.float64, float]:
    """``clipped.min()`` and MedSAM's ``max(clipped.max() - min, 1e-8)`` of ``np.clip(flat, lower, upper)``
    without the clipped copy: clipping is monotone, so the clipped extremes are the clipped extremes."""
    lo = np.clip(np.float64(flat.min()), lower, upper)
    hi = np.clip(np.float64(flat.max()), lower, upper)
    return lo, max(float(hi - lo), 1e-8)


def _ct_in_slabs(flat: np.ndarray, out: np.ndarray, lower: float, upper: float) -> None:
    """``ct_window``: clip to the window, min-max the clipped volume to [0, 255], truncate."""
    lo, spread = _clipped_range(flat, np.float64(lower), np.float64(upper))
    for part in _slabs(flat.size):
        clipped = np.clip(flat[part].astype(np.float64), lower, upper)
        out[part] = ((clipped - lo) / spread * 255.0).astype(np.uint8)


def _mr_in_slabs(flat: np.ndarray, out: np.ndarray) -> None:
    """``mr_normalize``: 0.5-99.5 percentiles of the voxels > 0, clip, min-max, zeros stay 0."""
    foreground = _foreground(flat)
    if foreground.size == 0:
        out[:] = 0
        return
    lower, upper = np.percentile(foreground, [0.5, 99.5], overwrite_input=True)
    del foreground
    lo, spread = _clipped_range(flat, lower, upper)
    for part in _slabs(flat.size):
        values = flat[part]
        scaled = (np.clip(values.astype(np.float64), lower, upper) - lo) / spread * 255.0
        scaled[values == 0] = 0
        out[part] = scaled.astype(np.uint8)


def _foreground(flat: np.ndarray) -> np.ndarray:
    """The voxels > 0 in :func:`foreground_dtype`, gathered slab by slab into one array."""
    count = sum(int(np.count_nonzero(flat[part] > 0)) for part in _slabs(flat.size))
    foreground = np.empty(count, dtype=foreground_dtype(flat.dtype))
    filled = 0
    for part in _slabs(flat.size):
        values = flat[part]
        chosen = values[values > 0]
        foreground[filled : filled + chosen.size] = chosen
        filled += chosen.size
    return foreground


class IntakeBudget:
    """Bytes that uploads being decoded may use together: an upload waits until its working
    memory fits beside the others', and runs at once when it is alone (so any upload the limits
    allow can run, and two large ones never decode side by side)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._used = 0
        self._count = 0
        self._cond = threading.Condition()

    @property
    def used(self) -> int:
        with self._cond:
            return self._used

    def acquire(self, nbytes: int, timeout_s: float, give_up: threading.Event | None = None) -> None:
        """Take ``nbytes`` of the budget (give them back with :meth:`release`); :class:`IntakeBusy`
        after ``timeout_s`` seconds, or as soon as ``give_up`` is set, without room."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._count and self._used + nbytes > self.max_bytes:
                left = deadline - time.monotonic()
                if left <= 0 or (give_up is not None and give_up.is_set()):
                    raise IntakeBusy(f"other uploads are being decoded ({self._used / 2**20:.0f} MB); try again shortly")
                self._cond.wait(min(left, 0.5))
            self._used += nbytes
            self._count += 1

    def release(self, nbytes: int) -> None:
        with self._cond:
            self._used -= nbytes
            self._count -= 1
            self._cond.notify_all()
