"""Dictionary transforms (``monai.transforms.MapTransform``): the array transforms applied to a case's keys.

A twin of an array transform takes that transform's arguments plus MONAI's ``keys`` and
``allow_missing_keys``. The others work on several keys of a case at once:

- :class:`LoadVolumed` (image and label paths -> MetaTensors; a case's ``series_uid`` picks its
  image's DICOM series), :class:`PromptBoxesd` (a case's prompts -> voxel boxes, points, mask prompt),
  :class:`BoxesFromLabeld` (evaluation boxes, seeded per case), :class:`SaveLabelVolumed`
  (``<output_dir>/<case>_seg.nii.gz`` on the input's grid): the bundle's inference and evaluation;
- :class:`LoadSliced` (a slice item -> its 1024 network input, labels and tight boxes; cacheable) and
  :class:`RandBoxPromptd` (MedSAM's random label and box jitter): training.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable

from ..io import write_label_volume
from ..orientation import parse_axis
from .array import (
    BoxesFromLabel,
    CTWindow,
    IntensityForModality,
    LoadVolume,
    Medsam2DIntensity,
    MRNormalize,
    PrepareSlice,
    SamNormalize,
)
from .boxes import present_labels, tight_boxes
from .display import display_volumes
from .functional import MODEL_INPUT_SIZE, WindowSpec, prepare_slice, resize_label
from .prompts import (
    MASK_PROMPT_KEY,
    CasePrompts,
    boxes_from_prompts,
    mask_values_of,
    multimask_of,
    points_from_prompts,
)
from .volumes import case_name, check_same_grid, volume_of

#: Data keys the bundle's configs, its runner and these transforms agree on.
BOXES_KEY = "voxel_boxes"
NAMES_KEY = "segment_names"
#: A case's prompts besides its boxes (:class:`~.prompts.CasePrompts`).
PROMPTS_KEY = "case_prompts"
CASE_INDEX_KEY = "case_index"
#: A case's DICOM series UID, for an image folder that holds several series.
SERIES_UID_KEY = "series_uid"

# MedSAM's ``bbox_shift``: each side of the box moves outward by a random 0..20 px in the 1024 frame.
MEDSAM_BBOX_SHIFT = 20


class ApplyArrayd(MapTransform):
    """Base of the dictionary twins: apply ``self.transform`` (an array transform) to every key present."""

    transform: Any

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key])
        return d


class CTWindowd(ApplyArrayd):
    """Dictionary twin of ``CTWindow``."""

    backend = CTWindow.backend

    def __init__(self, keys: KeysCollection, window: WindowSpec = "abdomen", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = CTWindow(window)


class MRNormalized(ApplyArrayd):
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


class IntensityForModalityd(ApplyArrayd):
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


class PrepareSliced(ApplyArrayd):
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


class SamNormalized(ApplyArrayd):
    """Dictionary twin of ``SamNormalize``."""

    backend = SamNormalize.backend

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = SamNormalize()


# --------------------------------------------------------------------------------------------
# the bundle's cases: load, prompts, evaluation boxes, write
# --------------------------------------------------------------------------------------------


class LoadVolumed(MapTransform):
    """Dictionary twin of :class:`LoadVolume`: each path at ``keys`` -> its MetaTensor ``[i, j, k]``.

    A missing (or None) path is a one-line ValueError naming it unless ``allow_missing_keys``. The
    case's ``series_uid_key`` value, when present, chooses the DICOM series of the ``image_key``
    folder (a folder holding several series needs one; other keys, a label say, are read as they are).
    """

    def __init__(
        self,
        keys: KeysCollection,
        allow_missing_keys: bool = False,
        image_key: str = "image",
        series_uid_key: str = SERIES_UID_KEY,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadVolume()
        self.image_key = image_key
        self.series_uid_key = series_uid_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.require_keys(d)
        for key in self.key_iterator(d):
            if d[key] is None:  # allowed missing (require_keys refuses it otherwise): a case's null optional path
                continue
            d[key] = self.loader(d[key], series_uid=self.series_uid(d) if key == self.image_key else None)
        return d

    def series_uid(self, data: Mapping[Hashable, Any]) -> str | None:
        """The case's series UID (None when it gives none); one-line ValueError when it is not a non-empty string."""
        uid = data.get(self.series_uid_key)
        if uid is None:
            return None
        if not isinstance(uid, str) or not uid.strip():
            raise ValueError(f"{self.series_uid_key!r} must be a DICOM series UID (a string), got {uid!r}")
        return uid.strip()

    def require_keys(self, data: Mapping[Hashable, Any]) -> None:
        """One-line ValueError naming a missing path (MONAI's KeyError would be logged as a bug, with a stack)."""
        if self.allow_missing_keys:
            return
        missing = [key for key in self.keys if data.get(key) is None]
        if missing:
            wanted = " and ".join(repr(key) for key in self.keys)
            raise ValueError(f"no {' or '.join(repr(key) for key in missing)} given; this run reads {wanted} for every case")


class PromptBoxesd(MapTransform):
    """Turn a case's prompts (see :mod:`~.prompts`) into voxel boxes of the image at ``keys`` and its other prompts.

    Writes ``boxes_key`` (list of :class:`~.boxes.VoxelBox`, :func:`~.prompts.boxes_from_prompts`),
    ``names_key`` (segment names by label) and ``prompts_key`` (:class:`~.prompts.CasePrompts`: its
    points, ``multimask``, and its ``mask_prompt`` at ``mask_key``, a label volume read by
    :class:`LoadVolumed`, checked to lie on the image's grid, with ``label_value``). A case needs a
    box or a point; points alone make one object (label 1).
    """

    def __init__(
        self,
        keys: KeysCollection,
        boxes_key: str = BOXES_KEY,
        names_key: str = NAMES_KEY,
        prompts_key: str = PROMPTS_KEY,
        mask_key: str = MASK_PROMPT_KEY,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.boxes_key = boxes_key
        self.names_key = names_key
        self.prompts_key = prompts_key
        self.mask_key = mask_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            points = points_from_prompts(d)
            boxes, names = boxes_from_prompts(d, volume_of(d[key]), required=not points)
            d[self.boxes_key], d[self.names_key] = boxes, names or {1: "Segment_1"}
            mask, mask_name = self.mask_prompt(d, d[key])
            d[self.prompts_key] = CasePrompts(tuple(points), multimask_of(d), mask, mask_values_of(d), mask_name)
        return d

    def mask_prompt(self, data: Mapping[Hashable, Any], image: Any) -> tuple[Any, str]:
        """The case's mask prompt (read by :class:`LoadVolumed`), checked to lie on ``image``'s grid, and its name."""
        mask = data.get(self.mask_key)
        if mask is None:
            return None, f"{self.mask_key!r}"
        if isinstance(mask, (str, os.PathLike)):
            raise ValueError(f"{self.mask_key!r} {mask} was not read: this run's LoadVolumed must read {self.mask_key!r} too")
        source = volume_of(mask).source
        check_same_grid(mask, image, repr(self.mask_key))
        return mask, f"{self.mask_key!r} {source}" if source else repr(self.mask_key)


class BoxesFromLabeld(MapTransform):
    """Dictionary twin of :class:`BoxesFromLabel`, for evaluation.

    The label at ``keys`` must lie on the grid of the image at ``image_key``. The jitter is drawn
    from a generator seeded with ``(seed, case index)``, so a case's boxes do not depend on the
    cases before it (nor on which of them failed).
    """

    def __init__(
        self,
        keys: KeysCollection,
        image_key: str = "image",
        jitter: int = 0,
        seed: int = 0,
        label_values: Sequence[int] | None = None,
        boxes_key: str = BOXES_KEY,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = BoxesFromLabel(jitter, label_values)
        self.image_key = image_key
        self.seed = int(seed)
        self.boxes_key = boxes_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            check_same_grid(d[key], d[self.image_key], str(key))
            rng = np.random.default_rng([self.seed, int(d.get(CASE_INDEX_KEY, 0))])
            d[self.boxes_key] = self.transform(d[key], rng)
        return d


class SaveLabelVolumed(MapTransform):
    """Write each label volume at ``keys`` as ``<output_dir>/<case>_<postfix><ext>`` on the input's grid.

    ``<case>`` is the source image's name without its suffix (:func:`~.volumes.case_name`); the
    geometry is the MetaTensor's affine, i.e. the input's; the write is atomic and never overwrites
    the input. The written path goes to ``<key>_file``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str | os.PathLike[str] = "./eval",
        output_postfix: str = "seg",
        output_ext: str = ".nii.gz",
        names_key: str = NAMES_KEY,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir = Path(output_dir)
        self.output_postfix = output_postfix
        self.output_ext = output_ext if output_ext.startswith(".") else f".{output_ext}"
        self.names_key = names_key

    def output_path(self, source: str | os.PathLike[str]) -> Path:
        """Where the labels of the image at ``source`` go."""
        postfix = f"_{self.output_postfix}" if self.output_postfix else ""
        return self.output_dir / f"{case_name(source)}{postfix}{self.output_ext}"

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            labels = volume_of(d[key])
            path = self.output_path(labels.source)
            d[f"{key}_file"] = write_label_volume(
                path,
                labels.array,
                labels.affine,
                segment_names=d.get(self.names_key),
                protect=[labels.source],
                nifti=labels.nifti,
            )
        return d


# --------------------------------------------------------------------------------------------
# training samples
# --------------------------------------------------------------------------------------------


class LoadSliced(MapTransform):
    """Deterministic (cacheable) part: a slice item -> its 1024 network input, labels and tight boxes.

    Input item: ``{"image": path, "label": path, "slice": z, ...}`` (see
    :func:`medsam_monai.training.foreground_slices`). Output keys (torch tensors, so
    ``PersistentDataset`` can store them with ``weights_only``):

    - ``image``: (1, 1024, 1024) float32, :func:`~.functional.prepare_slice` of the display slice (its
      three channels are equal; the network repeats the one kept here, saving two thirds of a cache);
    - ``label``: (1024, 1024) label values, nearest-neighbour resized;
    - ``label_boxes``: (N, 5) float64 rows ``[value, x0, y0, x1, y1]`` in the 1024 frame.
    """

    def __init__(
        self,
        keys: KeysCollection = ("image", "label"),
        modality: str = "ct",
        window: object = None,
        axis: str = "axial",
        min_pixels: int = 1,
        size: int = MODEL_INPUT_SIZE,
    ) -> None:
        super().__init__(keys)
        if len(self.keys) != 2:
            raise ValueError(f"LoadSliced takes the image and label keys, got {self.keys}")
        self.image_key, self.label_key = self.keys
        self.modality, self.window, self.axis = modality, window, parse_axis(axis)
        self.min_pixels, self.size = min_pixels, size

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        intensities, labels = display_volumes(d[self.image_key], d[self.label_key], self.modality, self.window, self.axis)
        z = int(d["slice"])
        label_slice = labels[z]
        resized_label = resize_label(label_slice, self.size)
        # a value can vanish when a side shrinks to 1024: keep the ones the resized mask still has
        values = [v for v in present_labels(label_slice, self.min_pixels) if (resized_label == v).any()]
        d[self.image_key] = prepare_slice(intensities[z], self.size)[:1].clone()
        d[self.label_key] = torch.from_numpy(resized_label.astype(np.uint8 if labels.max() < 256 else np.int32))
        d["label_boxes"] = torch.from_numpy(tight_boxes(label_slice, values, self.size))
        return d


class RandBoxPromptd(Randomizable, MapTransform):
    """Random part: pick label value(s), their binary masks and jittered boxes (MedSAM's recipe).

    Per prompt: one label value at random among those on the slice, its mask, and its tight box
    with each side moved outward by an independent random integer in ``0..bbox_shift`` px of the
    1024 frame, clipped to the image.

    Output keys: ``label`` (K, 1024, 1024) float32 0/1, ``box`` (K, 4) float32 ``(x0, y0, x1, y1)``,
    ``label_id`` (K,) int64; ``label_boxes`` is dropped. K is ``prompts_per_slice``: 1 in MedSAM (one
    image-mask pair per sample); more prompts reuse one image encoding for several structures of
    the slice (values repeat when the slice has fewer). ``prompts_per_slice="all"`` takes every
    value on the slice once, in order (validation: with ``bbox_shift=0`` nothing is random; K then
    varies from slice to slice, so batches hold one slice).
    """

    def __init__(
        self,
        keys: KeysCollection = ("label",),
        bbox_shift: int = MEDSAM_BBOX_SHIFT,
        prompts_per_slice: int | str = 1,
        size: int = MODEL_INPUT_SIZE,
        seed: int | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        if prompts_per_slice != "all" and (not isinstance(prompts_per_slice, int) or prompts_per_slice < 1):
            raise ValueError(f"prompts_per_slice must be a positive integer or 'all', got {prompts_per_slice!r}")
        if bbox_shift < 0:
            raise ValueError(f"bbox_shift must be >= 0, got {bbox_shift}")
        self.bbox_shift, self.prompts_per_slice, self.size = int(bbox_shift), prompts_per_slice, size
        if seed is not None:
            self.set_random_state(seed)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        rows = torch.as_tensor(d.pop("label_boxes")).numpy()
        if len(rows) == 0:
            raise ValueError(f"slice {d.get('slice')} of {d.get('case')} has no foreground: build items with foreground_slices()")
        chosen = self.choose_rows(len(rows))
        values = rows[chosen, 0].astype(np.int64)
        for key in self.key_iterator(d):
            label_map = torch.as_tensor(d[key])
            d[key] = torch.stack([(label_map == int(v)) for v in values]).float()
        d["box"] = torch.from_numpy(self.jittered(rows[chosen, 1:])).float()
        d["label_id"] = torch.from_numpy(values)
        return d

    def choose_rows(self, count: int) -> np.ndarray:
        """Which of the slice's ``count`` label rows this sample prompts (drawn unless ``prompts_per_slice`` is "all")."""
        if self.prompts_per_slice == "all":
            return np.arange(count)
        return self.R.choice(count, size=self.prompts_per_slice, replace=count < self.prompts_per_slice)

    def jittered(self, boxes: np.ndarray) -> np.ndarray:
        """MedSAM's outward jitter: x0, y0 minus and x1, y1 plus a random 0..bbox_shift, clipped."""
        shift = self.R.randint(0, self.bbox_shift + 1, size=boxes.shape).astype(np.float64)
        jittered = boxes + shift * np.array([-1.0, -1.0, 1.0, 1.0])
        return np.clip(jittered, 0, self.size - 1)


class Medsam2DIntensityd(ApplyArrayd):
    """Dictionary twin of ``Medsam2DIntensity``."""

    backend = Medsam2DIntensity.backend

    def __init__(self, keys: KeysCollection, percentile_clip: bool = False, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = Medsam2DIntensity(percentile_clip)
