"""SAM's automatic mask generator on a :class:`~medsam_monai.predictor.MedSAMPredictor`.

The algorithm, parameters (names and defaults) and records of segment-anything's
``SamAutomaticMaskGenerator``: a grid of single positive points over the image (and over crops of it),
three masks per point, filtered by predicted IoU, by stability score and by closeness to a crop's
edge, de-duplicated by box NMS within each crop and then between crops, optionally with small holes
and islands removed. With the same weights and image the records are segment-anything's, in its
order (``tests/test_automatic.py``).

What differs is how, not what: masks are filtered by predicted IoU before they are upscaled (the
score does not depend on the upscale), upscaled a few at a time (at most ``points_per_batch * 3``
float masks exist only while one batch is decoded; at most :data:`UPSCALE_CHUNK` at the image
size), kept as run-length encodings once thresholded, and small regions are found with SciPy
instead of OpenCV.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..propagation import CancelCheck, ProgressCallback, check_cancel
from ..transforms import mask_logits
from .filters import (
    batched_mask_to_box,
    batched_nms,
    box_area,
    box_xyxy_to_xywh,
    is_box_near_crop_edge,
    remove_small_regions,
    stability_score,
    uncrop_boxes_xyxy,
    uncrop_points,
)
from .grids import build_all_layer_point_grids, generate_crop_boxes
from .rle import RLE, area_from_rle, mask_to_rle, rle_to_coco, rle_to_mask

if TYPE_CHECKING:
    from ..predictor import MedSAMPredictor

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")

#: Masks upscaled to the image size at once (float32: 4 MB each for a 1024x1024 image).
UPSCALE_CHUNK = 16

#: SAM's mask threshold on logits (``Sam.mask_threshold``).
MASK_THRESHOLD = 0.0


@dataclass
class MaskSet:
    """Masks kept so far, in the image's frame: one entry per mask in each field."""

    rles: list[RLE] = field(default_factory=list)
    boxes: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 4, dtype=torch.int64))  # (N, 4) XYXY, inclusive
    iou_preds: torch.Tensor = field(default_factory=lambda: torch.zeros(0))  # (N,) float32
    points: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 2, dtype=torch.float64))  # (N, 2) (x, y)
    stability: torch.Tensor = field(default_factory=lambda: torch.zeros(0))  # (N,) float32
    crop_boxes: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 4, dtype=torch.int64))  # (N, 4) XYXY

    def __len__(self) -> int:
        return len(self.rles)

    def select(self, keep: torch.Tensor) -> MaskSet:
        """The masks at int64 indices ``keep``, in that order."""
        indices = keep.tolist()
        return MaskSet(
            rles=[self.rles[i] for i in indices],
            boxes=self.boxes[keep],
            iou_preds=self.iou_preds[keep],
            points=self.points[keep],
            stability=self.stability[keep],
            crop_boxes=self.crop_boxes[keep],
        )

    @staticmethod
    def concat(parts: Sequence[MaskSet]) -> MaskSet:
        """The masks of ``parts``, one after the other."""
        if not parts:
            return MaskSet()
        return MaskSet(
            rles=[rle for part in parts for rle in part.rles],
            boxes=torch.cat([p.boxes for p in parts]),
            iou_preds=torch.cat([p.iou_preds for p in parts]),
            points=torch.cat([p.points for p in parts]),
            stability=torch.cat([p.stability for p in parts]),
            crop_boxes=torch.cat([p.crop_boxes for p in parts]),
        )


@dataclass
class ChunkMasks:
    """The masks of one upscaled chunk that passed the filters."""

    indices: torch.Tensor  # (n,) int64 into the batch's B * M masks
    stability: torch.Tensor  # (n,) float32
    boxes: torch.Tensor  # (n, 4) int64 XYXY in the crop's frame
    rles: list[RLE]  # n RLEs of the whole image


class AutomaticMaskGenerator:
    """Masks of everything in an image, as segment-anything's ``SamAutomaticMaskGenerator``.

    Args:
        predictor: the model, its device, precision and preprocessing (``sam`` for SAM checkpoints).
        points_per_side: points along each side of the grid (``points_per_side**2`` in all); None
            when ``point_grids`` gives them.
        points_per_batch: points decoded together (memory grows with it).
        pred_iou_thresh: keep masks whose predicted IoU is above this, in [0, 1] (0: keep all).
        stability_score_thresh: keep masks whose stability score is at least this, in [0, 1] (0: all).
        stability_score_offset: the logit offset of the stability score's two thresholds, >= 0.
        box_nms_thresh: box IoU above which NMS drops the lower-scoring mask of a crop, in [0, 1].
        crop_n_layers: crop layers below the whole image (layer i has (2^i)^2 crops).
        crop_nms_thresh: box IoU for NMS between crops (masks of smaller crops win), in [0, 1].
        crop_overlap_ratio: overlap of layer-1 crops as a fraction of the short side, in [0, 1).
        crop_n_points_downscale_factor: layer i has ``points_per_side / factor**i`` points a side.
        point_grids: one (N, 2) grid of ``(x, y)`` in [0, 1] per crop layer, instead of ``points_per_side``.
        min_mask_region_area: fill holes and remove islands smaller than this many pixels (0: off).
        output_mode: ``binary_mask`` ((H, W) bool), ``uncompressed_rle`` or ``coco_rle``.
    """

    def __init__(
        self,
        predictor: MedSAMPredictor,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: Sequence[np.ndarray] | None = None,
        min_mask_region_area: float = 0,
        output_mode: str = "binary_mask",
    ) -> None:
        self.predictor = predictor
        self.points_per_batch = check_int("points_per_batch", points_per_batch, 1)
        self.pred_iou_thresh = check_fraction("pred_iou_thresh", pred_iou_thresh)
        self.stability_score_thresh = check_fraction("stability_score_thresh", stability_score_thresh)
        self.stability_score_offset = check_non_negative("stability_score_offset", stability_score_offset)
        self.box_nms_thresh = check_fraction("box_nms_thresh", box_nms_thresh)
        self.crop_n_layers = check_int("crop_n_layers", crop_n_layers, 0)
        self.crop_nms_thresh = check_fraction("crop_nms_thresh", crop_nms_thresh)
        self.crop_overlap_ratio = check_fraction("crop_overlap_ratio", crop_overlap_ratio, below_one=True)
        self.crop_n_points_downscale_factor = check_int("crop_n_points_downscale_factor", crop_n_points_downscale_factor, 1)
        self.min_mask_region_area = check_non_negative("min_mask_region_area", min_mask_region_area)
        if output_mode not in OUTPUT_MODES:
            raise ValueError(f"unknown output_mode {output_mode!r}; choose one of {', '.join(OUTPUT_MODES)}")
        self.output_mode = output_mode
        self.point_grids = self.layer_point_grids(points_per_side, point_grids)

    def layer_point_grids(self, points_per_side: int | None, point_grids: Sequence[np.ndarray] | None) -> list[np.ndarray]:
        """One (N, 2) grid in [0, 1] per crop layer, from exactly one of the two arguments."""
        if (points_per_side is None) == (point_grids is None):
            raise ValueError("give exactly one of points_per_side and point_grids")
        if points_per_side is not None:
            check_int("points_per_side", points_per_side, 1)
            smallest = int(points_per_side / self.crop_n_points_downscale_factor**self.crop_n_layers)
            if smallest < 1:
                raise ValueError(
                    f"points_per_side {points_per_side} leaves no point in crop layer {self.crop_n_layers} "
                    f"(downscale factor {self.crop_n_points_downscale_factor}); use fewer layers or a smaller factor"
                )
            return build_all_layer_point_grids(points_per_side, self.crop_n_layers, self.crop_n_points_downscale_factor)
        grids = [np.asarray(grid, dtype=np.float64) for grid in point_grids]
        if len(grids) < self.crop_n_layers + 1:
            raise ValueError(
                f"point_grids has {len(grids)} grids; crop_n_layers {self.crop_n_layers} needs {self.crop_n_layers + 1}"
            )
        for i, grid in enumerate(grids):
            if grid.ndim != 2 or grid.shape[1] != 2 or len(grid) == 0:
                raise ValueError(f"point_grids[{i}] must be a non-empty (N, 2) array of (x, y), got shape {grid.shape}")
            if not (np.all(np.isfinite(grid)) and grid.min() >= 0 and grid.max() <= 1):
                raise ValueError(f"point_grids[{i}] must hold coordinates in [0, 1] (fractions of the crop)")
        return grids

    # ----- the whole image -------------------------------------------------------------------

    def generate(
        self, image: np.ndarray, progress: ProgressCallback | None = None, cancel: CancelCheck | None = None
    ) -> list[dict[str, Any]]:
        """Masks of everything in ``image``.

        Args:
            image: (H, W) grey or (H, W, 3) RGB, values in [0, 255] (uint8 preferred).
            progress: called with (point batches done, point batches in all) after each batch.
            cancel: an Event or a callable; when set, :class:`~medsam_monai.propagation.Cancelled`
                is raised between batches.

        Returns:
            One record per mask, in segment-anything's order and form: ``segmentation`` (the
            ``output_mode``'s), ``area`` (int pixels), ``bbox`` ``[x, y, w, h]`` (ints; w, h are the
            last foreground column / row minus the first, as SAM's), ``predicted_iou``,
            ``point_coords`` ``[[x, y]]``, ``stability_score``, ``crop_box`` ``[x, y, w, h]``.
        """
        image = check_image(image)
        masks = self.generate_masks(image, progress, cancel)
        if self.min_mask_region_area > 0 and len(masks):
            masks = self.remove_small_regions(masks, max(self.box_nms_thresh, self.crop_nms_thresh))
        return [self.record(masks, i) for i in range(len(masks))]

    def generate_masks(self, image: np.ndarray, progress: ProgressCallback | None, cancel: CancelCheck | None) -> MaskSet:
        """The masks of every crop, with duplicates between crops removed (smaller crops win)."""
        orig_hw = image.shape[:2]
        crop_boxes, layer_idxs = generate_crop_boxes(orig_hw, self.crop_n_layers, self.crop_overlap_ratio)
        batches = [math.ceil(len(self.point_grids[layer]) / self.points_per_batch) for layer in layer_idxs]
        counter = BatchCounter(sum(batches), progress)
        masks = MaskSet.concat(
            [self.crop_masks(image, crop_box, layer, counter, cancel) for crop_box, layer in zip(crop_boxes, layer_idxs)]
        )
        if len(crop_boxes) > 1 and len(masks):
            scores = 1 / box_area(masks.crop_boxes)
            keep = batched_nms(masks.boxes.float(), scores, torch.zeros(len(masks)), self.crop_nms_thresh)
            masks = masks.select(keep)
        return masks

    # ----- one crop --------------------------------------------------------------------------

    def crop_masks(
        self, image: np.ndarray, crop_box: list[int], layer: int, counter: BatchCounter, cancel: CancelCheck | None
    ) -> MaskSet:
        """The masks of one crop after NMS within it, in the image's frame."""
        x0, y0, x1, y1 = crop_box
        crop = image[y0:y1, x0:x1]
        crop_hw = crop.shape[:2]
        check_cancel(cancel)
        embedding = self.predictor.image_embedding(crop)
        points = self.point_grids[layer] * np.array(crop_hw)[None, ::-1]  # (x, y) in crop pixels, float64
        parts = []
        for start in range(0, len(points), self.points_per_batch):
            check_cancel(cancel)
            batch = points[start : start + self.points_per_batch]
            parts.append(self.batch_masks(embedding, batch, crop_hw, crop_box, image.shape[:2]))
            counter.step()
        masks = MaskSet.concat(parts)
        if not len(masks):
            return masks
        keep = batched_nms(masks.boxes.float(), masks.iou_preds, torch.zeros(len(masks)), self.box_nms_thresh)
        masks = masks.select(keep)
        masks.boxes = uncrop_boxes_xyxy(masks.boxes, crop_box)
        masks.points = uncrop_points(masks.points, crop_box)
        return masks

    def batch_masks(
        self,
        embedding: torch.Tensor,
        points: np.ndarray,
        crop_hw: tuple[int, int],
        crop_box: list[int],
        orig_hw: tuple[int, int],
    ) -> MaskSet:
        """Masks of one batch of (B, 2) points in a crop that pass the IoU, stability and crop-edge
        filters: boxes in the crop's frame, masks as RLEs of the whole image."""
        labels = np.ones((len(points), 1), dtype=np.int64)
        low_res, iou = self.predictor.decode(embedding, crop_hw, points[:, None, :], labels, multimask_output=True)
        per_point = low_res.shape[1]
        low_res = low_res.flatten(0, 1)[:, None]  # (B * M, 1, 256, 256), mask b * M + m
        iou = iou.flatten(0, 1).cpu()
        candidates = torch.arange(len(iou))
        if self.pred_iou_thresh > 0.0:  # before the upscale: the score does not depend on it
            candidates = candidates[iou > self.pred_iou_thresh]
        chunks = [chunk for chunk in candidates.split(UPSCALE_CHUNK) if len(chunk)]
        parts = [self.upscaled_masks(low_res, chunk, crop_hw, crop_box, orig_hw) for chunk in chunks]
        kept = torch.cat([part.indices for part in parts]) if parts else torch.zeros(0, dtype=torch.int64)
        return MaskSet(
            rles=[rle for part in parts for rle in part.rles],
            boxes=torch.cat([part.boxes for part in parts]) if parts else torch.zeros(0, 4, dtype=torch.int64),
            iou_preds=iou[kept],
            points=torch.as_tensor(points.repeat(per_point, axis=0))[kept],  # (x, y) float64
            stability=torch.cat([part.stability for part in parts]) if parts else torch.zeros(0),
            crop_boxes=torch.tensor([crop_box] * len(kept), dtype=torch.int64).reshape(-1, 4),
        )

    def upscaled_masks(
        self,
        low_res: torch.Tensor,
        chunk: torch.Tensor,
        crop_hw: tuple[int, int],
        crop_box: list[int],
        orig_hw: tuple[int, int],
    ) -> ChunkMasks:
        """Masks ``chunk`` (indices into (N, 1, 256, 256) ``low_res``) at the crop's size, those
        stable enough and away from the crop's inner edges kept as RLEs of the whole image."""
        logits = mask_logits(low_res[chunk.to(low_res.device)], crop_hw, self.predictor.preprocessing, self.predictor.image_size)
        logits = logits[:, 0]  # (k, h, w) float32
        stability = stability_score(logits, MASK_THRESHOLD, self.stability_score_offset).cpu()
        stable = torch.ones(len(chunk), dtype=torch.bool)
        if self.stability_score_thresh > 0.0:
            stable = stability >= self.stability_score_thresh
        masks = logits[stable.to(logits.device)] > MASK_THRESHOLD
        del logits
        boxes = batched_mask_to_box(masks).cpu()
        inside = ~is_box_near_crop_edge(boxes, crop_box, [0, 0, orig_hw[1], orig_hw[0]])
        masks = masks[inside.to(masks.device)].cpu().numpy()
        return ChunkMasks(
            indices=chunk[stable][inside],
            stability=stability[stable][inside],
            boxes=boxes[inside],
            rles=[mask_to_rle(uncrop_mask(mask, crop_box, orig_hw)) for mask in masks],
        )

    # ----- after all crops -------------------------------------------------------------------

    def remove_small_regions(self, masks: MaskSet, nms_thresh: float) -> MaskSet:
        """Fill small holes and drop small islands (``min_mask_region_area``), then NMS again where
        unchanged masks win over changed ones (segment-anything's ``postprocess_small_regions``)."""
        new_rles: dict[int, RLE] = {}
        boxes = masks.boxes.clone()
        scores = torch.ones(len(masks))
        for i, rle in enumerate(masks.rles):
            mask, filled = remove_small_regions(rle_to_mask(rle), self.min_mask_region_area, mode="holes")
            mask, removed = remove_small_regions(mask, self.min_mask_region_area, mode="islands")
            if filled or removed:
                scores[i] = 0.0
                new_rles[i] = mask_to_rle(mask)
                boxes[i] = batched_mask_to_box(torch.from_numpy(mask))
        keep = batched_nms(boxes.float(), scores, torch.zeros(len(masks)), nms_thresh)
        masks.rles = [new_rles.get(i, rle) for i, rle in enumerate(masks.rles)]
        masks.boxes = boxes
        return masks.select(keep)

    def record(self, masks: MaskSet, i: int) -> dict[str, Any]:
        """segment-anything's record of mask ``i``."""
        rle = masks.rles[i]
        if self.output_mode == "coco_rle":
            segmentation: Any = rle_to_coco(rle)
        elif self.output_mode == "binary_mask":
            segmentation = rle_to_mask(rle)
        else:
            segmentation = rle
        return {
            "segmentation": segmentation,
            "area": area_from_rle(rle),
            "bbox": box_xyxy_to_xywh(masks.boxes[i]),
            "predicted_iou": masks.iou_preds[i].item(),
            "point_coords": [masks.points[i].tolist()],
            "stability_score": masks.stability[i].item(),
            "crop_box": box_xyxy_to_xywh(masks.crop_boxes[i]),
        }


def generator_parameters() -> Mapping[str, Any]:
    """SAM's parameters of :class:`AutomaticMaskGenerator`, name -> default, in its signature's order
    (``predictor`` and ``output_mode`` left out: every face picks those itself)."""
    signature = inspect.signature(AutomaticMaskGenerator.__init__).parameters
    return MappingProxyType(
        {name: p.default for name, p in signature.items() if name not in ("self", "predictor", "output_mode")}
    )


#: The generator parameters every face (CLI, bundle config, server request) may set: SAM's names
#: and defaults, read from :class:`AutomaticMaskGenerator`'s signature so that they cannot drift.
GENERATOR_PARAMETERS: Mapping[str, Any] = generator_parameters()


class BatchCounter:
    """Counts point batches over all crops for a ``progress(done, total)`` callback."""

    def __init__(self, total: int, progress: ProgressCallback | None) -> None:
        self.done, self.total, self.progress = 0, total, progress

    def step(self) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total)


def uncrop_mask(mask: np.ndarray, crop_box: Sequence[int], orig_hw: tuple[int, int]) -> np.ndarray:
    """(h, w) mask of a crop -> (H, W) mask of the image, False outside the crop."""
    x0, y0, x1, y1 = crop_box
    if mask.shape == tuple(orig_hw):
        return mask
    full = np.zeros(orig_hw, dtype=bool)
    full[y0:y1, x0:x1] = mask
    return full


# ----- argument checks -----------------------------------------------------------------------------


def check_int(name: str, value: Any, minimum: int) -> int:
    """``value`` if it is an integer >= ``minimum``; one-line ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def check_fraction(name: str, value: Any, below_one: bool = False) -> float:
    """``value`` if it is a number in [0, 1] ([0, 1) with ``below_one``); one-line ValueError otherwise."""
    number = check_number(name, value)
    if not (0.0 <= number < 1.0 if below_one else 0.0 <= number <= 1.0):
        raise ValueError(f"{name} must be in [0, {'1)' if below_one else '1]'}, got {value!r}")
    return number


def check_non_negative(name: str, value: Any) -> float:
    number = check_number(name, value)
    if number < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return number


def check_image(image: Any) -> np.ndarray:
    """An (H, W) or (H, W, 3) image with values in [0, 255]; one-line ValueError otherwise."""
    array = np.asarray(image)
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
        raise ValueError(f"expected an image (H, W) or (H, W, 3), got shape {array.shape}")
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(f"the image is empty: shape {array.shape}")
    if array.dtype != np.uint8:
        if array.dtype == bool or not np.issubdtype(array.dtype, np.number):
            raise ValueError(f"image values must be numbers in [0, 255], got dtype {array.dtype}")
        if not np.all(np.isfinite(array)) or array.min() < 0 or array.max() > 255:
            raise ValueError("image values must be finite and in [0, 255]")
    return array
