"""Training data for MedSAM fine-tuning: labelled volumes -> (1024 image, box, mask) samples.

The cases come from a MONAI datalist (``{"training": [{"image": ..., "label": ...}], "validation":
[...]}``) or an ``imagesTr``/``labelsTr`` folder (Medical Segmentation Decathlon and nnU-Net
layouts). Volumes are read as they are (NIfTI, NRRD, MHA, DICOM series folders: anything
:func:`medsam_monai.io.read_volume` reads); nothing is pre-converted to npy files.

A sample is one 2D slice with foreground along ``axis``, prepared exactly as inference prepares it,
through the same functions: the volume's intensities with :func:`medsam_monai.segment.normalized_volume`
(CT window / MR percentiles to uint8), the slice in radiological display orientation with
:func:`medsam_monai.orientation.display_layout` / ``to_display``, the 1024 network input with
:func:`medsam_monai.transforms.prepare_slice`, and the box in the 1024 frame with
:func:`medsam_monai.transforms.scale_box_to_model`. Then, as MedSAM's training: one label value
picked at random, its mask, and its tight box with each side pushed outward by a random 0..20 px.

Two transforms split the work so that MONAI's ``CacheDataset``/``PersistentDataset`` cache the
expensive, deterministic part (reading, normalising and resizing to 1024) and the random part runs
on every draw: :class:`LoadSliced` then :class:`RandBoxPromptd`.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import threading
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import load_decathlon_datalist
from monai.transforms import MapTransform, Randomizable
from skimage.transform import resize as skimage_resize

from ..io import Volume, read_volume
from ..orientation import display_layout, parse_axis, to_display
from ..segment import normalized_volume
from ..transforms import MODEL_INPUT_SIZE, prepare_slice, scale_box_to_model

logger = logging.getLogger(__name__)

# MedSAM's ``bbox_shift``: each side of the box moves outward by a random 0..20 px in the 1024 frame.
MEDSAM_BBOX_SHIFT = 20

_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".mgz")
# nnU-Net names images CASE_XXXX (one file per channel); the label is CASE.
_NNUNET_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


# --------------------------------------------------------------------------------------------
# cases: datalist JSON or imagesTr/labelsTr folder
# --------------------------------------------------------------------------------------------


def load_cases(
    source: str | Path, val_fraction: float = 0.1, seed: int = 0, base_dir: str | Path | None = None
) -> dict[str, list[dict[str, str]]]:
    """The training and validation cases (``{"image": path, "label": path}``) of a dataset.

    Args:
        source: a MONAI/Decathlon datalist JSON file, or a folder holding ``imagesTr`` and
            ``labelsTr`` (a ``dataset.json`` there with a ``training`` list is used when present).
        val_fraction: share of the training cases held out for validation when the source has no
            ``validation`` list (whole volumes: slices of one volume never land on both sides).
        seed: seeds that hold-out choice.
        base_dir: folder that relative datalist paths start from (default: the JSON file's folder).

    Returns:
        ``{"training": [...], "validation": [...]}``.
    """
    path = Path(source)
    if path.is_dir():
        datalist = path / "dataset.json"
        if datalist.is_file() and "training" in json.loads(datalist.read_text()):
            return load_cases(datalist, val_fraction, seed, base_dir or path)
        return _split(_folder_cases(path), [], val_fraction, seed, str(path))
    if not path.is_file():
        raise FileNotFoundError(f"dataset {path}: no such datalist file or folder")
    content = json.loads(path.read_text())
    root = Path(base_dir) if base_dir is not None else path.parent
    training = load_decathlon_datalist(path, True, "training", root) if "training" in content else []
    validation = load_decathlon_datalist(path, True, "validation", root) if "validation" in content else []
    return _split(training, validation, val_fraction, seed, str(path))


def _split(training: list[dict], validation: list[dict], val_fraction: float, seed: int, source: str) -> dict:
    cases = [{"image": str(c["image"]), "label": str(c["label"])} for c in training]
    held_out = [{"image": str(c["image"]), "label": str(c["label"])} for c in validation]
    if not cases:
        raise ValueError(f"dataset {source}: no training cases")
    if not held_out and val_fraction > 0 and len(cases) > 1:
        order = np.random.default_rng(seed).permutation(len(cases))
        count = min(len(cases) - 1, max(1, round(val_fraction * len(cases))))
        chosen = set(order[:count].tolist())
        held_out = [c for n, c in enumerate(cases) if n in chosen]
        cases = [c for n, c in enumerate(cases) if n not in chosen]
    for case in cases + held_out:
        for key in ("image", "label"):
            if not Path(case[key]).exists():
                raise FileNotFoundError(f"dataset {source}: {key} {case[key]} does not exist")
    return {"training": cases, "validation": held_out}


def _strip_suffix(name: str) -> str | None:
    lower = name.lower()
    for suffix in _IMAGE_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return None


def _folder_cases(folder: Path) -> list[dict[str, str]]:
    """Pairs ``imagesTr/CASE[_0000].ext`` with ``labelsTr/CASE.ext`` (MSD and nnU-Net layouts)."""
    images_dir, labels_dir = folder / "imagesTr", folder / "labelsTr"
    if not (images_dir.is_dir() and labels_dir.is_dir()):
        raise FileNotFoundError(f"dataset {folder}: expected a datalist JSON or a folder with imagesTr/ and labelsTr/")
    labels = {}
    for file in sorted(labels_dir.iterdir()):
        stem = _strip_suffix(file.name)
        if stem is not None and not file.name.startswith("."):
            labels[stem] = file
    cases = []
    for file in sorted(images_dir.iterdir()):
        stem = _strip_suffix(file.name)
        if stem is None or file.name.startswith("."):
            continue
        match = _NNUNET_CHANNEL.match(stem)
        if stem not in labels and match:
            if match["channel"] != "0000":
                continue  # MedSAM takes one grey image: nnU-Net channel 0000
            stem = match["case"]
        if stem in labels:
            cases.append({"image": str(file), "label": str(labels[stem])})
        else:
            logger.warning("%s has no label in %s; skipped", file.name, labels_dir)
    return cases


# --------------------------------------------------------------------------------------------
# volumes in display orientation (cached per process: one volume serves many slice items)
# --------------------------------------------------------------------------------------------


def _window_key(window: object) -> object:
    """A hashable form of a CT window spec (JSON gives lists)."""
    return tuple(window) if isinstance(window, (list, tuple)) else window


def read_label_volume(path: str | Path) -> Volume:
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
    """A label volume must lie on its image's voxel grid (same shape; affines equal to 0.01 mm)."""
    if labels.shape != image.shape:
        raise ValueError(f"label {labels.source} has shape {labels.shape}, its image {image.source} {image.shape}")
    if not np.allclose(labels.affine, image.affine, atol=1e-2):
        logger.warning("label %s and image %s have different affines; the image's is used", labels.source, image.source)


@functools.lru_cache(maxsize=4)
def _display_volumes_cached(image: str, label: str, modality: str, window: object, axis: str):
    volume = read_volume(image)
    labels = read_label_volume(label)
    check_same_grid(labels, volume)
    layout = display_layout(volume.affine, axis)
    intensities = normalized_volume(volume, modality, window)
    return (np.ascontiguousarray(to_display(intensities, layout)),
            np.ascontiguousarray(to_display(labels.array, layout)))


_display_lock = threading.Lock()


def display_volumes(image: str, label: str, modality: str = "ct", window: object = None, axis: str = "axial"):
    """``(intensities, labels)`` of a case as ``[slice, row, col]`` display arrays along ``axis``.

    Intensities are uint8, normalised as at inference; labels int32. The last few cases are kept
    (slice items of one case follow each other, so each volume is read about once).
    """
    with _display_lock:  # CacheDataset fills its cache from threads: read each volume once
        return _display_volumes_cached(str(image), str(label), modality, _window_key(window), parse_axis(axis))


def foreground_slices(
    cases: Sequence[Mapping[str, str]],
    axis: str = "axial",
    min_pixels: int = 1,
) -> list[dict[str, Any]]:
    """The slice items of ``cases``: one per slice along ``axis`` that holds foreground.

    Args:
        cases: ``{"image": path, "label": path}`` items.
        axis: slicing axis (axial, coronal, sagittal), as at inference.
        min_pixels: a label value counts on a slice when it covers at least this many pixels.

    Returns:
        Items ``{"image", "label", "slice", "case"}``, in case and slice order.
    """
    axis = parse_axis(axis)
    items: list[dict[str, Any]] = []
    for case in cases:
        # the label's own grid (the image's, checked when a slice is loaded): images are not read here
        labels = read_label_volume(case["label"])
        labels = to_display(labels.array, display_layout(labels.affine, axis))
        name = _case_name(case["image"])
        for z in range(labels.shape[0]):
            if present_labels(labels[z], min_pixels):
                items.append({"image": str(case["image"]), "label": str(case["label"]), "slice": z, "case": name})
    return items


def _case_name(path: str) -> str:
    name = Path(path).name
    return _strip_suffix(name) or name


def present_labels(label_slice: np.ndarray, min_pixels: int = 1) -> list[int]:
    """Label values (> 0) covering at least ``min_pixels`` pixels of a slice."""
    values, counts = np.unique(label_slice[label_slice > 0], return_counts=True)
    return [int(v) for v, c in zip(values, counts) if c >= min_pixels]


# --------------------------------------------------------------------------------------------
# transforms
# --------------------------------------------------------------------------------------------


def resize_label(label_slice: np.ndarray, size: int = MODEL_INPUT_SIZE) -> np.ndarray:
    """A label slice stretched to (size, size) by nearest neighbour, as MedSAM's ``pre_CT_MR.py``."""
    resized = skimage_resize(
        label_slice, (size, size), order=0, preserve_range=True, mode="constant", anti_aliasing=False
    )
    return resized.astype(label_slice.dtype)


def tight_boxes(label_slice: np.ndarray, values: Sequence[int], size: int = MODEL_INPUT_SIZE) -> np.ndarray:
    """Rows ``[value, x0, y0, x1, y1]``: each value's tight box in slice pixels, scaled to the model frame.

    The scaling is inference's own (:func:`scale_box_to_model`), so a training box and a user's box
    around the same pixels are the same numbers.
    """
    rows = []
    for value in values:
        ys, xs = np.nonzero(label_slice == value)
        box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.float64)
        rows.append([value, *scale_box_to_model(box, label_slice.shape, size)])
    return np.array(rows, dtype=np.float64).reshape(-1, 5)


class LoadSliced(MapTransform):
    """Deterministic (cacheable) part: a slice item -> its 1024 network input, labels and tight boxes.

    Input item: ``{"image": path, "label": path, "slice": z, ...}`` (see :func:`foreground_slices`).
    Output keys (torch tensors, so ``PersistentDataset`` can store them with ``weights_only``):

    - ``image``: (1, 1024, 1024) float32, :func:`prepare_slice` of the display slice (its three
      channels are equal; the network repeats the one kept here, saving two thirds of a cache);
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
    ) -> None:
        super().__init__(keys)
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
        chosen = self._choose_rows(len(rows))
        values = rows[chosen, 0].astype(np.int64)
        for key in self.key_iterator(d):
            label_map = torch.as_tensor(d[key])
            d[key] = torch.stack([(label_map == int(v)) for v in values]).float()
        d["box"] = torch.from_numpy(self._jittered(rows[chosen, 1:])).float()
        d["label_id"] = torch.from_numpy(values)
        return d

    def _choose_rows(self, count: int) -> np.ndarray:
        if self.prompts_per_slice == "all":
            return np.arange(count)
        return self.R.choice(count, size=self.prompts_per_slice, replace=count < self.prompts_per_slice)

    def _jittered(self, boxes: np.ndarray) -> np.ndarray:
        """MedSAM's outward jitter: x0, y0 minus and x1, y1 plus a random 0..bbox_shift, clipped."""
        shift = self.R.randint(0, self.bbox_shift + 1, size=boxes.shape).astype(np.float64)
        jittered = boxes + shift * np.array([-1.0, -1.0, 1.0, 1.0])
        return np.clip(jittered, 0, self.size - 1)
