"""A labelled case in radiological display orientation, as training slices are cut from it.

Intensities are normalised as at inference (:class:`~.array.IntensityForModality`) and the volume
is turned to display orientation along the slicing axis (:func:`medsam_monai.orientation.display_layout`),
the same steps ``medsam segment`` takes, so a training slice is the slice the network sees later.
The last few cases are kept per process: the slice items of one case follow each other, so each
volume is read about once.
"""

from __future__ import annotations

import functools
import threading

import numpy as np

from ..io import read_volume
from ..orientation import display_layout, parse_axis, to_display
from .array import IntensityForModality
from .volumes import check_same_grid, read_label_volume


def window_key(window: object) -> object:
    """A hashable form of a CT window spec (JSON gives lists)."""
    return tuple(window) if isinstance(window, (list, tuple)) else window


@functools.lru_cache(maxsize=4)
def display_volumes_cached(image: str, label: str, modality: str, window: object, axis: str) -> tuple[np.ndarray, np.ndarray]:
    """Uncached work of :func:`display_volumes` (arguments already normalised, so the cache hits)."""
    volume = read_volume(image)
    labels = read_label_volume(label)
    check_same_grid(labels, volume)
    layout = display_layout(volume.affine, axis)
    intensities = np.asarray(IntensityForModality(modality=modality, window=window)(volume.array))
    return (np.ascontiguousarray(to_display(intensities, layout)), np.ascontiguousarray(to_display(labels.array, layout)))


display_lock = threading.Lock()


def display_volumes(
    image: str, label: str, modality: str = "ct", window: object = None, axis: str = "axial"
) -> tuple[np.ndarray, np.ndarray]:
    """``(intensities, labels)`` of a case as ``[slice, row, col]`` display arrays along ``axis``.

    Intensities are uint8, normalised as at inference; labels int32.
    """
    with display_lock:  # CacheDataset fills its cache from threads: read each volume once
        return display_volumes_cached(str(image), str(label), modality, window_key(window), parse_axis(axis))
