"""What the MONAI bundle ``bundles/medsam_vit_b`` runs: its configs call into this module.

The bundle's configs stay declarative; the code lives here so that ``python -m monai.bundle run``
and ``medsam segment`` share one path (:func:`medsam_monai.segment.segment_volume`), and so give
the same labels voxel for voxel for the same input and options.

- Cases: :func:`load_cases` takes one case from ``--input_dict`` or many from a MONAI (Decathlon
  style) datalist JSON; each case is an image and its prompts (see :func:`boxes_from_prompts`).
- Transforms (MONAI style, array class and dictionary twin): :class:`LoadVolume` /
  :class:`LoadVolumed` (:func:`medsam_monai.io.read_volume` as a MetaTensor ``[i, j, k]`` with its
  IJK -> RAS affine), :class:`PromptBoxesd` (prompts -> validated voxel boxes),
  :class:`BoxesFromLabel` / :class:`BoxesFromLabeld` (boxes from a label image, seeded jitter, for
  evaluation), :class:`SaveLabelVolumed` (``<output_dir>/<case>_seg.nii.gz`` on the input's grid).
- :class:`BoxPropagationInferer`: display orientation, per-slice preparation and MedSAM's 3D
  propagation, through ``segment_volume`` and ``MedSAMPredictor``.
- :class:`CaseRunner`: runs the cases one by one; a case's bad input is logged in one line naming
  it and the others go on; a run where any case failed ends with one summary line naming them
  (``medsam bundle: 2 of 5 cases failed: a, b``) and exit status 1, the other cases' outputs written.
- :class:`SegmentationScorer`: Dice and NSD (2 mm, as the MedSAM paper) with ``monai.metrics`` and
  the voxel spacing from the affine, per case and mean, into a CSV and the log.

Errors in the run's settings end the run with :class:`BundleExit`: one line, exit status 1.
Settings: :func:`resolve_checkpoint` (the weights: ``ckpt_path``, else ``models/model.pt``, else for
``tiny`` the packaged demo weights), :func:`resolve_run_device` (``auto``, ``cpu``, ``cuda:N``, ``mps``).
"""

from __future__ import annotations

import ast
import csv
import json
import logging
import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.inferers import Inferer
from monai.metrics import DiceMetric, compute_surface_dice
from monai.transforms import MapTransform, Transform
from monai.utils import convert_to_numpy

from .checkpoints import TINY_DEMO_CHECKPOINT, CheckpointError, detect_variant, load_checkpoint_into, load_state_dict
from .devices import describe_device, resolve_device
from .download import KNOWN_WEIGHTS, DownloadError, default_cache_dir
from .io import Volume, check_output_path, read_volume, write_label_volume
from .networks import SAM_VARIANTS, Sam
from .orientation import check_affine, parse_axis
from .precision import check_precision
from .predictor import MedSAMPredictor
from .segment import VoxelBox, check_voxel_box, ras_box_to_voxel_box, segment_volume
from .transforms import IntensityForModality

__all__ = [
    "BoxPropagationInferer",
    "BoxesFromLabel",
    "BoxesFromLabeld",
    "BundleExit",
    "CaseRunner",
    "CasesFailed",
    "LoadVolume",
    "LoadVolumed",
    "PromptBoxesd",
    "SaveLabelVolumed",
    "SegmentationScorer",
    "boxes_from_prompts",
    "case_name",
    "check_evaluation_settings",
    "check_settings",
    "default_checkpoint",
    "load_cases",
    "load_weights",
    "read_datalist",
    "resolve_checkpoint",
    "resolve_run_device",
    "resolve_variant",
    "surface_scores",
]

logger = logging.getLogger(__name__)

#: Exceptions that mean "bad input" (reported in one line), as the ``medsam`` command treats them.
USER_ERRORS = (ValueError, OSError, DownloadError)

#: Data keys the configs and the runner agree on.
BOXES_KEY = "voxel_boxes"
NAMES_KEY = "segment_names"
CASE_INDEX_KEY = "case_index"

# Image suffixes dropped from a file name to name its case (longest first).
_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".mgz", ".mgh", ".dcm")

_PROMPT_HELP = "'box': [i0, j0, k0, i1, j1, k1] (voxels), 'box_ras': [x0, y0, z0, x1, y1, z1] (mm) or 'boxes': [...]"


class BundleExit(SystemExit):
    """Ends a bundle run with one line on stderr and exit status 1, without a traceback.

    A SystemExit on purpose: monai.bundle's config parser wraps every Exception raised while it
    evaluates a config item in a RuntimeError (a long chained traceback); SystemExit passes through
    unchanged, and the interpreter prints its message alone.
    """

    def __init__(self, message: str) -> None:
        super().__init__(f"medsam bundle: error: {message}")


class CasesFailed(BundleExit):
    """Ends a run in which some cases failed: one summary line naming them, exit status 1.

    The cases that worked have written their outputs by then; each failure was logged in its own line.
    """

    #: Names listed in the summary line before "and N more", so it stays one readable line.
    MAX_NAMES = 10

    def __init__(self, failed: Sequence[str], total: int) -> None:
        self.failed = list(failed)
        shown = ", ".join(self.failed[: self.MAX_NAMES])
        if len(self.failed) > self.MAX_NAMES:
            shown += f" and {len(self.failed) - self.MAX_NAMES} more"
        SystemExit.__init__(self, f"medsam bundle: {len(self.failed)} of {total} cases failed: {shown}")


# --------------------------------------------------------------------------------------------
# Settings, checkpoint, network
# --------------------------------------------------------------------------------------------


def check_settings(
    cases: Sequence[Any],
    variant: str,
    ckpt_path: str,
    bundle_root: str,
    modality: str = "ct",
    window: Any = None,
    precision: str = "fp32",
    device: str | torch.device = "auto",
    axis: str = "axial",
    output_ext: str = ".nii.gz",
) -> None:
    """Fail in one line on settings a run cannot use, before the network is built or loaded.

    ``ckpt_path`` is the resolved checkpoint (:func:`resolve_checkpoint`); ``device`` the setting as
    given (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``), checked with :func:`resolve_device`.
    """
    try:
        if variant != "auto" and variant not in SAM_VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(SAM_VARIANTS)} or auto")
        IntensityForModality(modality, window)
        check_precision(precision)
        parse_axis(axis)
        check_output_path(f"case{output_ext if output_ext.startswith('.') else '.' + output_ext}")
        resolve_device(device)  # the device chosen is logged where the run resolves it (resolve_run_device)
    except ValueError as err:
        raise BundleExit(str(err)) from None
    _require_checkpoint(ckpt_path, bundle_root)
    logger.info(
        f"{len(cases)} case(s); variant {variant}, checkpoint {ckpt_path}, precision {precision}, "
        f"modality {modality}, window {window}, axis {axis}"
    )


def check_evaluation_settings(
    box_jitter: int, seed: int, nsd_tolerance_mm: float, label_values: Sequence[int] | None = None
) -> None:
    """Fail in one line on evaluation settings a run cannot use (evaluate.json's extra check)."""
    try:
        BoxesFromLabel(box_jitter, label_values)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a whole number >= 0, got {seed!r}")
        if isinstance(nsd_tolerance_mm, bool) or not isinstance(nsd_tolerance_mm, (int, float)) or not nsd_tolerance_mm > 0:
            raise ValueError(f"the NSD tolerance must be a number of mm > 0, got {nsd_tolerance_mm!r}")
    except (TypeError, ValueError) as err:
        raise BundleExit(str(err)) from None


def resolve_run_device(device: str | torch.device = "auto") -> torch.device:
    """The torch device of a run for the ``device`` setting (``auto``: CUDA, else Apple MPS, else CPU).

    A name torch does not know or a device this machine lacks ends the run in one line
    (:class:`BundleExit`); the device chosen is logged.
    """
    try:
        chosen = resolve_device(device)
    except ValueError as err:
        raise BundleExit(str(err)) from None
    logger.info(f"using device {describe_device(chosen)} (device setting: {device})")
    return torch.device(chosen)


def default_checkpoint(variant: str, bundle_root: str | os.PathLike[str] = ".") -> str:
    """The weights a run uses when no ``ckpt_path`` is given.

    ``tiny``: the demo weights inside the package (as ``medsam segment --variant tiny``); every other
    variant: ``<bundle_root>/models/model.pt``, where ``download_large_files`` puts MedSAM.
    """
    if variant == "tiny":
        logger.warning("variant tiny: the packaged demo model, trained on synthetic CT phantoms only: not for real images")
        return str(TINY_DEMO_CHECKPOINT)
    return os.path.join(os.fspath(bundle_root), "models", "model.pt")


def resolve_checkpoint(
    variant: str, ckpt_path: str | os.PathLike[str] | None = None, bundle_root: str | os.PathLike[str] = "."
) -> str:
    """``ckpt_path`` when given (an explicit path always wins), else :func:`default_checkpoint`."""
    if ckpt_path is not None and os.fspath(ckpt_path) != "":
        return os.fspath(ckpt_path)
    return default_checkpoint(variant, bundle_root)


def _require_checkpoint(ckpt_path: str | os.PathLike[str], bundle_root: str | os.PathLike[str]) -> None:
    """A missing checkpoint ends the run with how to get it (the weights are not in the bundle)."""
    if Path(ckpt_path).exists():
        return
    message = (
        f"checkpoint {ckpt_path} not found: download the MedSAM weights with "
        f"`python -m monai.bundle download_large_files --bundle_path {bundle_root}`, or run "
        "`medsam download` and pass the file it prints with --ckpt_path"
    )
    cached = default_cache_dir() / KNOWN_WEIGHTS["medsam_vit_b"].filename
    if cached.is_file():
        message += f" (`medsam download` already fetched {cached})"
    raise BundleExit(message)


def resolve_variant(variant: str, ckpt_path: str, bundle_root: str = ".") -> str:
    """``variant``, or with ``"auto"`` the variant the checkpoint fits (the file is read for it)."""
    if variant != "auto":
        return variant
    _require_checkpoint(ckpt_path, bundle_root)
    try:
        found = detect_variant(load_state_dict(ckpt_path))
    except CheckpointError as err:
        raise BundleExit(str(err)) from None
    if found is None:
        raise BundleExit(f"{ckpt_path} fits none of the variants {', '.join(SAM_VARIANTS)}")
    return found


def load_weights(network: Sam, ckpt_path: str, device: str | torch.device = "cpu", bundle_root: str = ".") -> Sam:
    """``network`` with the checkpoint's weights (any supported format, strict, weights_only), in eval mode."""
    _require_checkpoint(ckpt_path, bundle_root)
    try:
        load_checkpoint_into(network, ckpt_path)
    except CheckpointError as err:
        raise BundleExit(str(err)) from None
    return network.to(device).eval()


# --------------------------------------------------------------------------------------------
# Cases: --input_dict or a datalist
# --------------------------------------------------------------------------------------------


def load_cases(input_dict: Any = None, datalist: str | None = None, datalist_key: str = "testing") -> list[Any]:
    """The run's cases: the one ``input_dict``, or the ``datalist_key`` list of a datalist JSON."""
    if (input_dict is None) == (datalist is None):
        raise BundleExit(
            "give one case with --input_dict \"{'image': 'ct.nii.gz', 'box': [i0, j0, k0, i1, j1, k1]}\" "
            "or many with --datalist PATH (not both)"
        )
    if datalist is not None:
        return read_datalist(datalist, datalist_key)
    if isinstance(input_dict, str):
        # fire hands over a string when the shell quoting did not survive as a Python literal
        try:
            input_dict = ast.literal_eval(input_dict)
        except (ValueError, SyntaxError):
            pass
    if not isinstance(input_dict, Mapping):
        raise BundleExit(f"--input_dict must be a dict such as {{'image': 'ct.nii.gz', 'box': [...]}}, got {input_dict!r}")
    return [dict(input_dict)]


def read_datalist(path: str | os.PathLike[str], key: str = "testing") -> list[Any]:
    """Entries of a MONAI datalist (the Decathlon format ``load_decathlon_datalist`` reads).

    As there, ``image`` and ``label`` paths are relative to the datalist's folder and a bare string
    entry is an image. Unlike it, a malformed entry is kept as it is, so that only that case fails.
    """
    file = Path(path)
    if not file.is_file():
        raise BundleExit(f"datalist {file} does not exist")
    try:
        content = json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise BundleExit(f"datalist {file} is not readable JSON: {err}") from None
    entries = content.get(key) if isinstance(content, Mapping) else None
    if not isinstance(entries, list) or not entries:
        found = ", ".join(repr(k) for k, v in content.items() if isinstance(v, list)) if isinstance(content, Mapping) else ""
        raise BundleExit(
            f"datalist {file} has no non-empty list {key!r} (lists found: {found or 'none'}); choose one with --datalist_key"
        )
    return [_datalist_entry(entry, file.parent) for entry in entries]


def _datalist_entry(entry: Any, base: Path) -> Any:
    if isinstance(entry, str):
        entry = {"image": entry}
    if not isinstance(entry, Mapping):
        return entry
    item = dict(entry)
    for key in ("image", "label"):
        if isinstance(item.get(key), str) and item[key]:
            item[key] = os.path.normpath(os.path.join(base, item[key]))
    return item


def case_name(image: str | os.PathLike[str]) -> str:
    """A case's name: its image file name without the image suffix (a DICOM folder's name)."""
    name = Path(os.fspath(image)).name
    lower = name.lower()
    for suffix in _IMAGE_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def _image_of(entry: Any) -> str:
    """The case's image path; a one-line ValueError when the entry has none."""
    if not isinstance(entry, Mapping):
        raise ValueError(f"a case is a dict with 'image' and its prompts, got {type(entry).__name__} {entry!r}")
    image = entry.get("image")
    if not isinstance(image, (str, os.PathLike)) or not os.fspath(image):
        raise ValueError("no 'image' given")
    return os.fspath(image)


# --------------------------------------------------------------------------------------------
# Prompts -> voxel boxes
# --------------------------------------------------------------------------------------------


def _six_numbers(value: Any, what: str) -> tuple[int | float, ...]:
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 6
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        raise ValueError(f"{what} must be 6 numbers, got {value!r}")
    return tuple(value)


def _box_list(value: Any) -> list[Any]:
    """``value`` as a list of boxes: one box (6 numbers) or a list of them."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (list, tuple)) for v in value):
        return list(value)
    return [value]


def _voxel_box(box: Any, is_ras: bool, volume: Volume, what: str) -> tuple[int, int, int, int, int, int]:
    numbers = _six_numbers(box, what)
    return ras_box_to_voxel_box(numbers, volume) if is_ras else check_voxel_box(numbers, volume.shape)


def _box_item(item: Any, volume: Volume, where: str) -> tuple[tuple[int, ...], int | None, str | None]:
    """One entry of ``boxes``: 6 voxel numbers, or a dict with ``box`` or ``box_ras`` and optional ``label``, ``name``."""
    if not isinstance(item, Mapping):
        return _voxel_box(item, False, volume, where), None, None
    given = [key for key in ("box", "box_ras") if key in item]
    if len(given) != 1:
        raise ValueError(f"{where} needs exactly one of 'box' or 'box_ras', got keys {sorted(item)}")
    box = _voxel_box(item[given[0]], given[0] == "box_ras", volume, f"{where} {given[0]!r}")
    label = item.get("label")
    if label is not None and (isinstance(label, bool) or not isinstance(label, int) or not 0 < label < 65536):
        raise ValueError(f"{where} 'label' must be a whole number in 1..65535, got {label!r}")
    name = item.get("name")
    return box, label, None if name is None else str(name)


def boxes_from_prompts(prompts: Mapping[Hashable, Any], volume: Volume) -> tuple[list[VoxelBox], dict[int, str]]:
    """A case's boxes, validated against its image, numbered as ``medsam segment`` numbers them.

    Keys: ``box`` (voxel indices ``[i0, j0, k0, i1, j1, k1]`` in the file's own order, inclusive,
    or a list of such boxes), ``box_ras`` (RAS millimetres, likewise), ``boxes`` (a list of voxel
    boxes or of dicts ``{"box" | "box_ras": [...], "label": n, "name": "liver"}``). Boxes are taken
    in that order; box n gets label n unless it names its own, and name ``Segment_<label>``.

    Returns:
        The boxes, and the segment names by label (used by ``.seg.nrrd`` outputs).
    """
    found: list[tuple[tuple[int, ...], int | None, str | None]] = []
    for key, is_ras in (("box", False), ("box_ras", True)):
        for n, box in enumerate(_box_list(prompts.get(key))):
            found.append((_voxel_box(box, is_ras, volume, f"{key!r}" if n == 0 else f"{key!r} #{n + 1}"), None, None))
    items = prompts.get("boxes")
    if items is not None and not isinstance(items, (list, tuple)):
        raise ValueError(f"'boxes' must be a list, got {items!r}")
    for n, item in enumerate(items or []):
        found.append(_box_item(item, volume, f"'boxes' #{n + 1}"))
    if not found:
        raise ValueError(f"no box given; add {_PROMPT_HELP}")
    boxes: list[VoxelBox] = []
    names: dict[int, str] = {}
    for position, (box, label, name) in enumerate(found, start=1):
        value = position if label is None else label
        boxes.append(VoxelBox(box, label=value))  # type: ignore[arg-type]
        if name is not None:
            names[value] = name
        else:
            names.setdefault(value, f"Segment_{value}")
    return boxes, names


# --------------------------------------------------------------------------------------------
# Transforms
# --------------------------------------------------------------------------------------------


def _volume_of(image: Any) -> Volume:
    """A :class:`Volume` view of a MetaTensor ``[i, j, k]`` (its affine is IJK -> RAS)."""
    if not isinstance(image, MetaTensor):
        raise TypeError(f"expected the MetaTensor that LoadVolumed makes, got {type(image).__name__}")
    affine = check_affine(convert_to_numpy(image.affine, dtype=np.float64))
    return Volume(np.asarray(convert_to_numpy(image)), affine, str(image.meta.get("filename_or_obj", "")))


class LoadVolume(Transform):
    """Read a 3D image file or DICOM folder with :func:`medsam_monai.io.read_volume`.

    Returns a MetaTensor indexed ``[i, j, k]`` in the file's own voxel order (no channel dim, no
    reorientation; dtype kept) whose ``affine`` maps voxel centres to RAS millimetres, as
    ``medsam segment`` reads it.
    """

    def __call__(self, path: str | os.PathLike[str]) -> MetaTensor:
        volume = read_volume(path)
        try:
            data = torch.from_numpy(np.ascontiguousarray(volume.array))
        except TypeError:  # a dtype torch lacks (uint32, say): float64 holds its values exactly
            data = torch.from_numpy(volume.array.astype(np.float64))
        meta = {"filename_or_obj": os.fspath(path), "spatial_shape": np.asarray(volume.shape)}
        return MetaTensor(data, affine=torch.as_tensor(volume.affine, dtype=torch.float64), meta=meta)


class LoadVolumed(MapTransform):
    """Dictionary twin of :class:`LoadVolume`."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadVolume()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self._require_keys(d)
        for key in self.key_iterator(d):
            d[key] = self.loader(d[key])
        return d

    def _require_keys(self, data: Mapping[Hashable, Any]) -> None:
        """One-line ValueError naming a missing path (MONAI's KeyError would be logged as a bug, with a stack)."""
        if self.allow_missing_keys:
            return
        missing = [key for key in self.keys if data.get(key) is None]
        if missing:
            wanted = " and ".join(repr(key) for key in self.keys)
            raise ValueError(f"no {' or '.join(repr(key) for key in missing)} given; this run reads {wanted} for every case")


class PromptBoxesd(MapTransform):
    """Turn a case's prompts (see :func:`boxes_from_prompts`) into voxel boxes of the image at ``keys``.

    Writes ``boxes_key`` (list of :class:`~medsam_monai.segment.VoxelBox`) and ``names_key``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        boxes_key: str = BOXES_KEY,
        names_key: str = NAMES_KEY,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.boxes_key = boxes_key
        self.names_key = names_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.boxes_key], d[self.names_key] = boxes_from_prompts(d, _volume_of(d[key]))
        return d


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

    def __call__(self, label: Any, rng: np.random.Generator | None = None) -> list[VoxelBox]:
        array = np.asarray(convert_to_numpy(label))
        if array.ndim != 3:
            raise ValueError(f"a label image is 3D [i, j, k], got shape {array.shape}")
        values = self._values(array)
        rng = rng if rng is not None else np.random.default_rng()
        return [VoxelBox(self._box(array == value, rng), label=value) for value in values]

    def _values(self, array: np.ndarray) -> list[int]:
        present = np.unique(array)
        if not np.all(np.mod(present, 1) == 0) or present.min() < 0:
            raise ValueError("the label image holds values that are not whole numbers >= 0")
        present_values = [int(v) for v in present if v > 0]
        wanted = present_values if self.label_values is None else [v for v in self.label_values if v in present_values]
        if not wanted:
            asked = "" if self.label_values is None else f" of {self.label_values}"
            raise ValueError(f"the label image has no foreground{asked} to derive a box from")
        return wanted

    def _box(self, mask: np.ndarray, rng: np.random.Generator) -> tuple[int, int, int, int, int, int]:
        lo, hi = [], []
        for axis in range(3):
            occupied = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
            lo.append(int(occupied[0]))
            hi.append(int(occupied[-1]))
        grow = rng.integers(0, self.jitter + 1, size=6) if self.jitter else np.zeros(6, dtype=int)
        shape = mask.shape
        lo = [max(0, v - int(g)) for v, g in zip(lo, grow[:3])]
        hi = [min(n - 1, v + int(g)) for v, g, n in zip(hi, grow[3:], shape)]
        return (*lo, *hi)  # type: ignore[return-value]


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
            _check_same_grid(d[key], d[self.image_key], str(key))
            rng = np.random.default_rng([self.seed, int(d.get(CASE_INDEX_KEY, 0))])
            d[self.boxes_key] = self.transform(d[key], rng)
        return d


def _check_same_grid(label: Any, image: Any, key: str) -> None:
    label_volume, image_volume = _volume_of(label), _volume_of(image)
    if label_volume.shape != image_volume.shape:
        raise ValueError(f"{key} shape {label_volume.shape} differs from the image's {image_volume.shape}")
    if not np.allclose(label_volume.affine, image_volume.affine, atol=1e-3):
        raise ValueError(f"{key} lies on another grid than the image (their affines differ)")


class SaveLabelVolumed(MapTransform):
    """Write each label volume at ``keys`` as ``<output_dir>/<case>_<postfix><ext>`` on the input's grid.

    ``<case>`` is the source image's name without its suffix (:func:`case_name`); the geometry is
    the MetaTensor's affine, i.e. the input's; the write is atomic and never overwrites the input.
    The written path goes to ``<key>_file``.
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
        postfix = f"_{self.output_postfix}" if self.output_postfix else ""
        return self.output_dir / f"{case_name(source)}{postfix}{self.output_ext}"

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            labels = _volume_of(d[key])
            path = self.output_path(labels.source)
            d[f"{key}_file"] = write_label_volume(
                path, labels.array, labels.affine, segment_names=d.get(self.names_key), protect=[labels.source]
            )
        return d


# --------------------------------------------------------------------------------------------
# Inference
# --------------------------------------------------------------------------------------------


class BoxPropagationInferer(Inferer):
    """MedSAM's box-prompted 3D inference on a volume, as ``medsam segment`` runs it.

    ``inputs`` is the uint8 MetaTensor ``[i, j, k]`` from ``IntensityForModalityd``; the volume is
    shown to the network slice by slice along ``axis`` in radiological display orientation (axis
    permutation and flips, no resampling), each slice prepared as MedSAM's reference does
    (``prepare_slices``: stretch to 1024x1024, [0, 1], 3 channels), and the labels come back on the
    input's grid (:func:`medsam_monai.segment.segment_volume`).
    """

    def __init__(self, axis: str = "axial") -> None:
        self.axis = parse_axis(axis)

    def __call__(  # type: ignore[override]
        self, inputs: MetaTensor, network: MedSAMPredictor, boxes: Sequence[VoxelBox], *args: Any, **kwargs: Any
    ) -> MetaTensor:
        volume = _volume_of(inputs)
        labels = segment_volume(network, volume, boxes, axis=self.axis, intensities=volume.array)
        return MetaTensor(torch.from_numpy(labels), meta=dict(inputs.meta))  # the meta holds the affine


# --------------------------------------------------------------------------------------------
# Running the cases
# --------------------------------------------------------------------------------------------


def _root_cause(error: BaseException) -> BaseException:
    """The original exception: MONAI's Compose re-raises each as RuntimeError('applying transform ...')."""
    while error.__cause__ is not None:
        error = error.__cause__
    return error


def _name_or_none(entry: Any) -> str | None:
    try:
        return case_name(_image_of(entry))
    except ValueError:
        return None


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


class CaseRunner:
    """Runs the cases one by one: load and prepare, segment, write (and score when evaluating).

    A case that fails is logged in one line naming it and the run goes on; once all cases ran, a
    run where any case failed ends with :class:`CasesFailed` (a summary line, exit status 1).
    """

    def __init__(
        self,
        predictor: MedSAMPredictor,
        preprocessing: Any,
        inferer: Inferer,
        postprocessing: Any = None,
        scorer: SegmentationScorer | None = None,
        boxes_key: str = BOXES_KEY,
    ) -> None:
        self.predictor = predictor
        self.preprocessing = preprocessing
        self.inferer = inferer
        self.postprocessing = postprocessing
        self.scorer = scorer
        self.boxes_key = boxes_key

    def run(self, cases: Sequence[Any]) -> list[dict[str, Any]]:
        """Run every case; returns, per finished case, its name, image and output file."""
        finished: list[dict[str, Any]] = []
        failed_names: list[str] = []
        owners: dict[str, int] = {}
        for index, entry in enumerate(cases):
            tag = self._tag(index, len(cases), entry)
            try:
                data = self._run_case(index, entry, owners)
            except Exception as error:  # noqa: BLE001 - one case's failure must not stop the others
                self._report_failure(tag, error)
                failed_names.append(self._failed_name(index, entry, cases))
                continue
            logger.info(f"{tag}: {self._summary(data)}")
            # Keep names only: holding every case's volumes would grow with the datalist.
            finished.append({"case": case_name(_image_of(entry)), "image": _image_of(entry), "output": data.get("pred_file")})
        failed = len(cases) - len(finished)
        if self.scorer is not None and finished:
            self.scorer.report()
        logger.info(f"{len(finished)} of {len(cases)} case(s) done" + (f", {failed} failed" if failed else ""))
        if failed_names:
            raise CasesFailed(failed_names, len(cases))
        return finished

    @staticmethod
    def _failed_name(index: int, entry: Any, cases: Sequence[Any]) -> str:
        """How the summary names a failed case: its case name, with its number where that name is not unique."""
        try:
            name = case_name(_image_of(entry))
        except ValueError:
            return f"case {index + 1}"
        same = sum(1 for other in cases if _name_or_none(other) == name)
        return name if same == 1 else f"{name} (case {index + 1})"

    def _run_case(self, index: int, entry: Any, owners: dict[str, int]) -> dict[Hashable, Any]:
        name = case_name(_image_of(entry))
        if name in owners:
            raise ValueError(
                f"its output name {name!r} is already used by case {owners[name] + 1}; give the images distinct names"
            )
        owners[name] = index
        data = dict(entry)
        data[CASE_INDEX_KEY] = index
        data = self.preprocessing(data)
        data["pred"] = self.inferer(data["image"], self.predictor, data[self.boxes_key])
        if self.postprocessing is not None:
            data = self.postprocessing(data)
        if self.scorer is not None:
            self.scorer(data, name)
        return data

    @staticmethod
    def _tag(index: int, count: int, entry: Any) -> str:
        try:
            return f"case {index + 1}/{count} ({_image_of(entry)})"
        except ValueError:
            return f"case {index + 1}/{count}"

    @staticmethod
    def _report_failure(tag: str, error: Exception) -> None:
        cause = _root_cause(error)
        if isinstance(cause, USER_ERRORS):
            logger.error(f"{tag} failed: {_one_line(cause)}")
        else:  # not the input's fault: keep the traceback for the bug report
            logger.error(f"{tag} failed: {type(cause).__name__}: {_one_line(cause)}", exc_info=error)

    @staticmethod
    def _summary(data: Mapping[Hashable, Any]) -> str:
        labels = np.asarray(convert_to_numpy(data["pred"]))
        values, counts = np.unique(labels[labels > 0], return_counts=True)
        voxels = ", ".join(f"label {v} {c} voxels" for v, c in zip(values, counts)) or "empty"
        written = data.get("pred_file")
        return (f"wrote {written}: " if written else "") + voxels


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


def surface_scores(
    pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float], tolerance_mm: float = 2.0
) -> tuple[float, float]:
    """Dice and normalised surface Dice (NSD at ``tolerance_mm``) of two binary masks, with MONAI's metrics.

    ``spacing`` is the voxel size in mm along the masks' axes, so NSD measures distances in mm.
    """
    y_pred = torch.as_tensor(np.asarray(pred, dtype=bool))[None, None].float()
    y = torch.as_tensor(np.asarray(truth, dtype=bool))[None, None].float()
    dice = DiceMetric(include_background=True, reduction="none")(y_pred, y)
    nsd = compute_surface_dice(y_pred, y, class_thresholds=[float(tolerance_mm)], include_background=True, spacing=list(spacing))
    return float(dice.reshape(-1)[0]), float(nsd.reshape(-1)[0])


class SegmentationScorer:
    """Per-case Dice and NSD of each boxed label value, their means, into a CSV and the log.

    Args:
        csv_path: where the table goes (columns case, image, label, dice, nsd; ``mean`` rows last).
        tolerance_mm: NSD tolerance (2 mm, as the MedSAM paper).
    """

    COLUMNS = ("case", "image", "label", "dice", "nsd")

    def __init__(
        self,
        csv_path: str | os.PathLike[str],
        tolerance_mm: float = 2.0,
        label_key: str = "label",
        boxes_key: str = BOXES_KEY,
    ) -> None:
        if not tolerance_mm > 0:
            raise ValueError(f"the NSD tolerance must be > 0 mm, got {tolerance_mm!r}")
        self.csv_path = Path(csv_path)
        self.tolerance_mm = float(tolerance_mm)
        self.label_key = label_key
        self.boxes_key = boxes_key
        self.rows: list[dict[str, Any]] = []

    def __call__(self, data: Mapping[Hashable, Any], name: str) -> list[dict[str, Any]]:
        """Score one case's prediction against its label; returns (and keeps) its rows."""
        truth = _volume_of(data[self.label_key])
        pred = np.asarray(convert_to_numpy(data["pred"]))
        rows = []
        for value in sorted({box.label for box in data[self.boxes_key]}):
            dice, nsd = surface_scores(pred == value, truth.array == value, truth.spacing, self.tolerance_mm)
            rows.append({"case": name, "image": _volume_of(data["image"]).source, "label": value, "dice": dice, "nsd": nsd})
        self.rows.extend(rows)
        scores = "; ".join(f"label {r['label']} Dice {r['dice']:.4f} NSD {r['nsd']:.4f}" for r in rows)
        logger.info(f"case {name}: {scores}")
        return rows

    def mean_rows(self) -> list[dict[str, Any]]:
        """Mean Dice and NSD per label value, then over all scored structures."""
        groups: dict[Any, list[dict[str, Any]]] = {}
        for row in self.rows:
            groups.setdefault(row["label"], []).append(row)
        if len(groups) > 1:
            groups["all"] = list(self.rows)
        return [
            {"case": "mean", "image": "", "label": label,
             "dice": float(np.mean([r["dice"] for r in rows])), "nsd": float(np.mean([r["nsd"] for r in rows]))}
            for label, rows in groups.items()
        ]

    def report(self) -> Path:
        """Write the CSV (atomically) and log the means."""
        means = self.mean_rows()
        self.csv_path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.csv_path.with_name(f".{self.csv_path.name}.tmp")
        with open(temporary, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.COLUMNS)
            writer.writeheader()
            for row in self.rows + means:
                writer.writerow({**row, "dice": f"{row['dice']:.6f}", "nsd": f"{row['nsd']:.6f}"})
        os.replace(temporary, self.csv_path)
        cases = len({row["case"] for row in self.rows})
        overall = means[-1]
        logger.info(
            f"mean over {len(self.rows)} structure(s) in {cases} case(s): Dice {overall['dice']:.4f} "
            f"NSD {overall['nsd']:.4f} (tolerance {self.tolerance_mm:g} mm); table in {self.csv_path}"
        )
        return self.csv_path
