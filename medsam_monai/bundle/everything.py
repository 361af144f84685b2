"""``configs/everything.json``: SAM's automatic mask generation over the cases, one plane each.

A case is a 2D image (``{"image": "photo.png"}``) or a volume with the slice to look at
(``{"image": "ct.nii.gz", "slice": 40, "axis": "axial"}``: see :mod:`medsam_monai.transforms.planes`).
Its plane goes through :class:`~medsam_monai.automatic.AutomaticMaskGenerator` with SAM's
parameters (the config's values, SAM's names and defaults), the medical filters
(``min_area_mm2``, ``max_area_fraction``) drop masks by size, and two files are written per case:

- ``<case>_masks.png`` (a 2D image; a volume's slice: ``<case>_<axis><slice>_masks.nii.gz`` on
  the volume's grid, that slice labelled): label ``n`` is record ``n``, larger masks painted under
  smaller ones (:func:`~medsam_monai.automatic.records_to_label_map`);
- ``<case>_masks.json``: the records as segment-anything writes them with ``output_mode="coco_rle"``
  (``segmentation`` a COCO RLE of the plane as shown to the network, ``bbox`` XYWH, ``area``,
  ``predicted_iou``, ``point_coords``, ``stability_score``, ``crop_box``), each with its ``label``.

The cases run in :class:`EverythingEvaluator`, the inference run's engine: a failed case is logged
in one line and the others go on.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.inferers import Inferer
from monai.transforms import MapTransform

from .. import automatic
from ..automatic import GENERATOR_PARAMETERS, AutomaticMaskGenerator, apply_size_filters, records_to_label_map
from ..images import write_label_image
from ..io import write_file_atomically, write_label_volume
from ..predictor import MedSAMPredictor
from ..transforms import case_name
from ..transforms.planes import KIND_IMAGE, PLANE_KEY, Plane
from .runner import CaseEvaluator
from .settings import BundleExit

logger = logging.getLogger(__name__)

#: Data keys of a case's results.
RECORDS_KEY = "records"
PRED_KEY = "pred"

#: How a config states the medical filters' bounds (``null``: no filter), in its error messages.
SIZE_FILTER_BOUNDS = {"min_area_mm2": "a number of mm^2 >= 0", "max_area_fraction": "a fraction in (0, 1]"}


def generator_for(predictor: MedSAMPredictor | None, settings: Mapping[str, Any]) -> AutomaticMaskGenerator:
    """SAM's generator with ``settings`` (SAM's names) and COCO RLE records; a one-line ValueError for a bad value or name."""
    unknown = sorted(set(settings) - set(GENERATOR_PARAMETERS))
    if unknown:
        raise ValueError(f"unknown generator setting(s) {', '.join(unknown)}; SAM's are {', '.join(GENERATOR_PARAMETERS)}")
    values = dict(settings)
    if values.get("point_grids") is not None:
        values["point_grids"] = [np.asarray(grid, dtype=np.float64) for grid in values["point_grids"]]
    return AutomaticMaskGenerator(predictor, output_mode="coco_rle", **values)  # type: ignore[arg-type]


def check_size_filters(min_area_mm2: Any, max_area_fraction: Any) -> None:
    """The medical filters' settings: None, or a number >= 0 (mm^2) and a fraction in (0, 1].

    The library's rule (:func:`medsam_monai.automatic.check_size_filters`), told in a config's words.
    """
    for name, value in (("min_area_mm2", min_area_mm2), ("max_area_fraction", max_area_fraction)):
        try:
            automatic.check_size_filters(**{name: value})
        except ValueError:
            raise ValueError(f"{name} must be {SIZE_FILTER_BOUNDS[name]} or null, got {value!r}") from None


def check_automatic_settings(
    generator_settings: Mapping[str, Any], min_area_mm2: Any = None, max_area_fraction: Any = None
) -> None:
    """Fail in one line (:class:`BundleExit`) on generator or filter settings a run cannot use, before any case."""
    try:
        generator_for(None, generator_settings)  # the generator checks its values when built
        check_size_filters(min_area_mm2, max_area_fraction)
    except (TypeError, ValueError) as err:
        raise BundleExit(str(err)) from None


class AutomaticMaskInferer(Inferer):
    """SAM's automatic masks of one plane, through the medical size filters.

    Args:
        generator_settings: :class:`~medsam_monai.automatic.AutomaticMaskGenerator`'s parameters
            (:data:`~medsam_monai.automatic.GENERATOR_PARAMETERS`, SAM's names; the others keep SAM's defaults).
        min_area_mm2: drop masks smaller than this (needs the plane's pixel spacing); None: keep all.
        max_area_fraction: drop masks covering more than this fraction of the plane; None: keep all.
    """

    def __init__(
        self,
        generator_settings: Mapping[str, Any] | None = None,
        min_area_mm2: float | None = None,
        max_area_fraction: float | None = None,
    ) -> None:
        self.generator_settings = dict(generator_settings or {})
        generator_for(None, self.generator_settings)
        check_size_filters(min_area_mm2, max_area_fraction)
        self.min_area_mm2, self.max_area_fraction = min_area_mm2, max_area_fraction

    def __call__(  # type: ignore[override]
        self,
        inputs: np.ndarray,
        network: MedSAMPredictor | torch.nn.Module,
        spacing: tuple[float, float] | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> list[dict[str, Any]]:
        """The records of an (H, W) or (H, W, 3) uint8 plane with ``spacing`` (row, column) mm, in SAM's order."""
        predictor = network if isinstance(network, MedSAMPredictor) else MedSAMPredictor(network)  # type: ignore[arg-type]
        records = generator_for(predictor, self.generator_settings).generate(np.asarray(inputs))
        return self.filtered(records, spacing)

    def filtered(self, records: list[dict[str, Any]], spacing: tuple[float, float] | None) -> list[dict[str, Any]]:
        """``records`` without the masks the size filters drop (none when both are None)."""
        return apply_size_filters(records, spacing, self.min_area_mm2, self.max_area_fraction)


def plane_stem(plane: Plane) -> str:
    """A plane's output name: the image's case name, plus the axis and slice for a volume's slice."""
    name = case_name(plane.source)
    return name if plane.kind == KIND_IMAGE else f"{name}_{plane.axis}{plane.slice}"


class SaveAutomaticMasksd(MapTransform):
    """Write a plane's label map at ``keys`` and its records at ``records_key``, each atomically.

    2D images: ``<output_dir>/<case>_<postfix>.png`` (``image_ext``); a volume's slice:
    ``<output_dir>/<case>_<axis><slice>_<postfix><output_ext>`` on the volume's grid (only that slice
    labelled). The records: ``<output_dir>/<stem>_<postfix>.json``. The paths go to ``<key>_file``
    and ``<records_key>_file``.
    """

    def __init__(
        self,
        keys: KeysCollection = PRED_KEY,
        records_key: str = RECORDS_KEY,
        plane_key: str = PLANE_KEY,
        output_dir: str | os.PathLike[str] = "./eval",
        output_postfix: str = "masks",
        output_ext: str = ".nii.gz",
        image_ext: str = ".png",
        parameters: Mapping[str, Any] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.records_key, self.plane_key = records_key, plane_key
        self.output_dir = Path(output_dir)
        self.output_postfix = output_postfix
        self.output_ext = output_ext if output_ext.startswith(".") else f".{output_ext}"
        self.image_ext = image_ext if image_ext.startswith(".") else f".{image_ext}"
        self.parameters = dict(parameters or {})

    def stem(self, plane: Plane) -> Path:
        """``<output_dir>/<stem>_<postfix>``, without a suffix."""
        postfix = f"_{self.output_postfix}" if self.output_postfix else ""
        return self.output_dir / f"{plane_stem(plane)}{postfix}"

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        plane: Plane = d[self.plane_key]
        stem = self.stem(plane)
        for key in self.key_iterator(d):
            labels = np.asarray(d[key])
            if plane.kind == KIND_IMAGE:
                written = write_label_image(f"{stem}{self.image_ext}", labels, protect=[plane.source])
            else:
                volume = plane.volume
                written = write_label_volume(
                    f"{stem}{self.output_ext}",
                    plane.labels_on_grid(labels),
                    volume.affine,  # type: ignore[union-attr]
                    protect=[plane.source],
                    nifti=volume.nifti,  # type: ignore[union-attr]
                )
            d[f"{key}_file"] = written
            d[f"{self.records_key}_file"] = self.write_records(Path(f"{stem}.json"), d[self.records_key], plane, written)
        return d

    def write_records(self, path: Path, records: list[dict[str, Any]], plane: Plane, label_file: Path) -> Path:
        """The records as JSON (COCO RLE masks of the plane), each with its label in ``label_file``."""
        document = {
            "image": plane_description(plane),
            "label_map": label_file.name,
            "parameters": self.parameters,
            "annotations": automatic.json_records(records),
        }
        text = json.dumps(document, indent=1)
        return write_file_atomically(path, ".json", lambda temporary: temporary.write_text(text))


def plane_description(plane: Plane) -> dict[str, Any]:
    """What the records' masks are masks of: the source, the plane's size and pixel spacing, the slice."""
    description: dict[str, Any] = {
        "source": plane.source,
        "height": plane.shape[0],
        "width": plane.shape[1],
        "spacing_mm": None if plane.spacing is None else list(plane.spacing),
    }
    if plane.kind != KIND_IMAGE:
        # the masks are in the display frame: rows and columns of the slice as shown (radiological)
        description.update(axis=plane.axis, slice=plane.slice, orientation="radiological display")
    return description


class EverythingEvaluator(CaseEvaluator):
    """The engine of ``everything.json``: one plane per iteration, generated, filtered, labelled and written.

    As :class:`~medsam_monai.bundle.runner.CaseEvaluator` (a MONAI ``Evaluator``; a failed case is
    logged and the others run; :class:`~medsam_monai.bundle.runner.CasesFailed` at the end), with
    :class:`AutomaticMaskInferer` as its inferer. A 2D image under MedSAM's pipeline is encoded as
    ``MedSAM_Inference.py`` does (the resized image truncated to uint8 before its min-max).
    """

    def run_case(self, index: int, entry: Any) -> dict[Hashable, Any]:
        """Load one case's plane, generate its masks and write them; its data with ``pred`` and ``records``."""
        data = self.dataset[index]
        plane: Plane = data[PLANE_KEY]
        self.claim_output_name(plane_stem(plane), index)
        records = self.inferer(data["image"], self.predictor_for(plane), plane.spacing)
        data[RECORDS_KEY] = records
        data[PRED_KEY] = records_to_label_map(records, plane.shape)
        if self.case_postprocessing is not None:
            data = self.case_postprocessing(data)
        return data

    def predictor_for(self, plane: Plane) -> MedSAMPredictor:
        """The run's predictor, or for a 2D image under MedSAM's pipeline its twin with the 2D rule (same model and cache)."""
        predictor = self.predictor
        if plane.kind != KIND_IMAGE or predictor.preprocessing != "medsam" or predictor.uint8_after_resize:
            return predictor
        if getattr(self, "image_predictor", None) is None:
            self.image_predictor = MedSAMPredictor(
                predictor.model,
                predictor.device,
                predictor.precision,
                cache=predictor.cache,  # the cache keys hold the pipeline: the two never share an embedding
                encode_batch_size=predictor.encode_batch_size,
                preprocessing=predictor.preprocessing,
                uint8_after_resize=True,
            )
        return self.image_predictor

    def case_summary(self, data: Mapping[Hashable, Any]) -> str:
        """``<n> masks: wrote <label map> and <records>``."""
        return f"{len(data[RECORDS_KEY])} mask(s); wrote {data.get(f'{PRED_KEY}_file')} and {data.get(f'{RECORDS_KEY}_file')}"
