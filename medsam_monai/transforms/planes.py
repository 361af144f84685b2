"""One plane of a case, for automatic mask generation: a 2D image, or one slice of a volume.

A plane is what SAM's automatic mask generator looks at: an (H, W) grey or (H, W, 3) RGB uint8
image. A case names either a 2D image (PNG, JPEG, TIFF, BMP, a one-frame DICOM: MedSAM's 2D
intensity rules, :func:`~.images.medsam_2d_intensity`) or a volume with a slicing ``axis`` and a
``slice``: the voxel index along the voxel axis that ``axis`` runs along (what 3D Slicer and
ITK-SNAP show as I, J or K), shown in radiological display orientation after the volume's CT
window or MR normalisation (:class:`~.array.IntensityForModality`), as the other faces show it.
The plane keeps what is needed to write its labels back on the input's grid.
Nothing here knows about the network.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform

from ..images import KIND_VOLUME, input_kind, read_image_2d
from ..io import Volume, read_volume
from ..orientation import (
    DisplayLayout,
    display_layout,
    display_pixel_spacing,
    display_shape,
    from_display,
    parse_axis,
    slice_to_display,
    to_display,
)
from .array import IntensityForModality
from .functional import WindowSpec
from .images import medsam_2d_intensity

#: Data keys of a case that :class:`LoadPlaned` reads (besides the image path) and writes.
SLICE_KEY = "slice"
AXIS_KEY = "axis"
FRAME_KEY = "frame"
PLANE_KEY = "plane"

KIND_IMAGE = "image_2d"
KIND_SLICE = "volume_slice"


@dataclass(eq=False)
class Plane:
    """A case's plane as the generator gets it, and where it came from.

    Attributes:
        image: (H, W) grey or (H, W, 3) RGB uint8, rows x columns as shown to the network.
        spacing: (row, column) pixel size in mm, or None when the file records none.
        source: the image path.
        kind: :data:`KIND_IMAGE` (a 2D image) or :data:`KIND_SLICE` (a slice of a volume).
        axis, slice: the slicing axis and the voxel index along it (volumes only).
        volume: the volume's grid (its ``array`` the raw voxels), to write labels on (volumes only).
        layout: the volume's display layout along ``axis`` (volumes only).
    """

    image: np.ndarray
    spacing: tuple[float, float] | None
    source: str
    kind: str
    axis: str | None = None
    slice: int | None = None
    volume: Volume | None = None
    layout: DisplayLayout | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the plane."""
        return int(self.image.shape[0]), int(self.image.shape[1])

    @property
    def display_slice(self) -> int | None:
        """The slice's index in the display array (the voxel index, reversed when the display flips it)."""
        if self.volume is None or self.layout is None or self.slice is None:
            return None
        return slice_to_display(self.slice, self.volume.shape, self.layout)

    def labels_on_grid(self, labels: np.ndarray) -> np.ndarray:
        """(H, W) labels of a volume's plane as a label volume ``[i, j, k]`` on the volume's grid (0 elsewhere)."""
        if self.volume is None or self.layout is None:
            raise ValueError("a 2D image has no volume grid; its labels are the plane's own")
        slices = display_shape(self.volume.shape, self.layout)[0]
        display = np.zeros((slices, *self.shape), dtype=labels.dtype)
        display[self.display_slice] = labels
        return np.ascontiguousarray(from_display(display, self.layout))


def whole_number(value: Any, what: str) -> int:
    """``value`` as an int when it is a whole number (not a bool); a one-line ValueError naming ``what`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer)) or float(value) != int(value):
        raise ValueError(f"{what} must be a whole number, got {value!r}")
    return int(value)


def read_plane(
    path: str | os.PathLike[str],
    slice_index: int | None = None,
    axis: str = "axial",
    modality: str = "ct",
    window: WindowSpec | None = None,
    percentile_clip: bool = False,
    frame: int | None = None,
    series_uid: str | None = None,
) -> Plane:
    """The plane of a case: a 2D image as is, or slice ``slice_index`` of a volume along ``axis``.

    Args:
        path: a 2D image (:func:`medsam_monai.images.input_kind` says which), a volume file or a
            DICOM series folder.
        slice_index: volumes only (and required there): the voxel index along the voxel axis that
            ``axis`` runs along, 0..N-1.
        axis: ``axial``, ``coronal`` or ``sagittal`` (volumes).
        modality, window: the volume's intensities (CT window or MR percentiles, to uint8).
        percentile_clip: 2D images: MedSAM's optional 0.5-99.5 percentile cut-off.
        frame: which frame of a multi-frame colour DICOM (2D only).
        series_uid: which series of a DICOM folder (volumes).

    Raises:
        ValueError (one line): a slice for a 2D image or none for a volume, a slice outside the
        volume, an unreadable file.
    """
    source = os.fspath(path)
    if input_kind(source) != KIND_VOLUME:
        if slice_index is not None:
            raise ValueError(f"'slice' applies to volumes; {source} is a 2D image (give 'frame' for a frame of a DICOM cine)")
        image = read_image_2d(source, frame=frame)
        return Plane(medsam_2d_intensity(image.array, percentile_clip), image.spacing, source, KIND_IMAGE)
    if frame is not None:
        raise ValueError(f"'frame' applies to multi-frame colour DICOM files; {source} is a volume: give 'slice' and 'axis'")
    name = parse_axis(axis)
    volume = read_volume(source, series_uid=series_uid)
    layout = display_layout(volume.affine, name)
    voxel_axis = layout.permutation[0]
    count = volume.shape[voxel_axis]
    if slice_index is None:
        raise ValueError(
            f"{source} is a volume: give 'slice', the voxel index along its {name} axis ({'IJK'[voxel_axis]}, 0..{count - 1})"
        )
    index = whole_number(slice_index, "'slice'")
    if not 0 <= index < count:
        raise ValueError(f"slice {index} is outside the volume: its {name} axis ({'IJK'[voxel_axis]}) has slices 0..{count - 1}")
    intensities = np.asarray(IntensityForModality(modality, window)(volume.array))
    spacing = display_pixel_spacing(volume.affine, layout)
    plane = Plane(np.empty((0, 0), np.uint8), spacing, source, KIND_SLICE, name, index, volume, layout)
    plane.image = np.ascontiguousarray(to_display(intensities, layout)[plane.display_slice])
    return plane


class LoadPlaned(MapTransform):
    """A case's plane (:func:`read_plane`): the path at ``keys`` -> its (H, W[, 3]) uint8 image.

    The case's ``slice``, ``axis`` (default: ``axis``), ``frame`` and ``series_uid`` pick the plane;
    the :class:`Plane` (source, spacing, grid) goes to ``plane_key``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        axis: str = "axial",
        modality: str = "ct",
        window: WindowSpec | None = None,
        percentile_clip: bool = False,
        plane_key: str = PLANE_KEY,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.axis = parse_axis(axis)
        IntensityForModality(modality, window)  # bad settings fail here, before any case
        self.modality, self.window, self.percentile_clip = modality, window, bool(percentile_clip)
        self.plane_key = plane_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            plane = read_plane(
                d[key],
                d.get(SLICE_KEY),
                case_axis(d, self.axis),
                self.modality,
                self.window,
                self.percentile_clip,
                optional_whole_number(d, FRAME_KEY),
                series_uid_of(d),
            )
            d[key], d[self.plane_key] = plane.image, plane
        return d


def case_axis(data: Mapping[Hashable, Any], default: str) -> str:
    """The case's ``axis`` (a name), or ``default``; one-line ValueError for anything else."""
    axis = data.get(AXIS_KEY)
    if axis is None:
        return default
    if not isinstance(axis, str):
        raise ValueError(f"'axis' must be axial, coronal or sagittal, got {axis!r}")
    return parse_axis(axis)


def optional_whole_number(data: Mapping[Hashable, Any], key: str) -> int | None:
    """The case's ``key`` as an int, None when absent; one-line ValueError when it is not a whole number."""
    value = data.get(key)
    return None if value is None else whole_number(value, repr(key))


def series_uid_of(data: Mapping[Hashable, Any]) -> str | None:
    """The case's ``series_uid`` (None when absent); one-line ValueError when it is not a non-empty string."""
    uid = data.get("series_uid")
    if uid is None:
        return None
    if not isinstance(uid, str) or not uid.strip():
        raise ValueError(f"'series_uid' must be a DICOM series UID (a string), got {uid!r}")
    return uid.strip()
