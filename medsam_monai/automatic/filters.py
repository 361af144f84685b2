"""Mask filters of SAM's automatic mask generator, without torchvision or OpenCV.

Each function gives the result of the segment-anything (``utils/amg.py``) or torchvision
(``ops.boxes``) function of the same name, in the same order: box NMS follows torchvision's CPU kernel
(boxes by score, descending, ties in input order; float32 IoU ``inter / (area_i + area_j - inter)``;
suppress when IoU > threshold) and ``batched_nms``'s two code paths; small regions are found with
``scipy.ndimage.label`` with 8-connectivity, as segment-anything's ``cv2.connectedComponentsWithStats(mask, 8)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

from ..masks import mask_box

#: 8-connectivity (diagonal neighbours connect), as segment-anything's ``connectedComponentsWithStats(..., 8)``.
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)

#: ``torchvision.ops.batched_nms`` switches from one NMS over offset boxes to one NMS per category
#: above this many box coordinates on the CPU; the two order tied scores differently.
VANILLA_BATCHED_NMS_NUMEL_CPU = 4000
VANILLA_BATCHED_NMS_NUMEL_CUDA = 100_000


# ----- scores --------------------------------------------------------------------------------------


def stability_score(logits: torch.Tensor, mask_threshold: float = 0.0, offset: float = 1.0) -> torch.Tensor:
    """IoU of the masks ``logits > threshold + offset`` and ``logits > threshold - offset``
    (the first lies inside the second): (N, H, W) logits -> (N,) float32.

    Integer pixel counts, then one float32 division, as segment-anything's ``calculate_stability_score``
    (0 / 0 gives NaN there too).
    """
    return pixel_count(logits > (mask_threshold + offset)) / pixel_count(logits > (mask_threshold - offset))


def pixel_count(masks: torch.Tensor) -> torch.Tensor:
    """(..., H, W) bool -> (...,) int32 foreground pixels: row sums in int16 while a row cannot
    overflow it (several times faster than one int64 sum on the CPU), then int32."""
    row_dtype = torch.int16 if masks.shape[-1] <= torch.iinfo(torch.int16).max else torch.int32
    return masks.sum(-1, dtype=row_dtype).sum(-1, dtype=torch.int32)


# ----- boxes ---------------------------------------------------------------------------------------


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """(N, 4) XYXY boxes -> (N,) areas ``(x1 - x0) * (y1 - y0)`` (integer boxes give int64), as torchvision's."""
    if not boxes.is_floating_point() and boxes.dtype not in (torch.int32, torch.int64):
        boxes = boxes.long()
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression of (N, 4) XYXY float boxes: int64 indices of the kept boxes by
    decreasing score, ties in input order (torchvision's CPU kernel, arithmetic in the boxes' dtype)."""
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64)
    order = torch.sort(scores.detach().cpu(), dim=0, descending=True, stable=True).indices.numpy()
    sorted_boxes = boxes.detach().cpu().numpy()[order]
    x1, y1, x2, y2 = (np.ascontiguousarray(sorted_boxes[:, k]) for k in range(4))
    areas = (x2 - x1) * (y2 - y1)
    zero = sorted_boxes.dtype.type(0)
    suppressed = np.zeros(len(order), dtype=bool)
    keep = []
    with np.errstate(invalid="ignore", divide="ignore"):  # 0 / 0 for two empty boxes: NaN, never suppresses
        for i in range(len(order)):
            if suppressed[i]:
                continue
            keep.append(order[i])
            rest = slice(i + 1, None)
            w = np.maximum(zero, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
            h = np.maximum(zero, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
            inter = w * h
            iou = inter / (areas[i] + areas[rest] - inter)
            # the kernel compares its float IoU with the threshold as a double
            suppressed[rest] |= iou.astype(np.float64) > iou_threshold
    return torch.as_tensor(np.asarray(keep, dtype=np.int64))


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """NMS within each category ``idxs``: ``torchvision.ops.batched_nms``, both of its code paths
    (above 4000 coordinates on the CPU one NMS per category, then an unstable sort by score of all
    kept boxes; below, one NMS of boxes offset per category), so that tied scores come out in its order.

    Returns:
        int64 indices of the kept boxes, by decreasing score.
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64)
    limit = VANILLA_BATCHED_NMS_NUMEL_CPU if boxes.device.type == "cpu" else VANILLA_BATCHED_NMS_NUMEL_CUDA
    scores = scores.detach().cpu()
    idxs = idxs.detach().cpu()
    boxes = boxes.detach().cpu()
    if boxes.numel() > limit:
        keep_mask = torch.zeros_like(scores, dtype=torch.bool)
        for class_id in torch.unique(idxs):
            curr_indices = torch.where(idxs == class_id)[0]
            keep_mask[curr_indices[nms(boxes[curr_indices], scores[curr_indices], iou_threshold)]] = True
        keep_indices = torch.where(keep_mask)[0]
        return keep_indices[scores[keep_indices].sort(descending=True)[1]]
    offsets = idxs.to(boxes) * (boxes.max() + torch.tensor(1).to(boxes))
    return nms(boxes + offsets[:, None], scores, iou_threshold)


def batched_mask_to_box(masks: torch.Tensor) -> torch.Tensor:
    """(..., H, W) bool masks -> (..., 4) int64 XYXY boxes with inclusive max corners (the last
    foreground column and row); [0, 0, 0, 0] for an empty mask."""
    h, w = masks.shape[-2:]
    if masks.numel() == 0:
        return torch.zeros(*masks.shape[:-2], 4, dtype=torch.int64, device=masks.device)
    rows = masks.any(dim=-1)  # (..., H)
    cols = masks.any(dim=-2)  # (..., W)
    empty = ~rows.any(dim=-1)
    top = rows.to(torch.uint8).argmax(dim=-1)
    bottom = (h - 1) - rows.flip(-1).to(torch.uint8).argmax(dim=-1)
    left = cols.to(torch.uint8).argmax(dim=-1)
    right = (w - 1) - cols.flip(-1).to(torch.uint8).argmax(dim=-1)
    boxes = torch.stack([left, top, right, bottom], dim=-1).to(torch.int64)
    return boxes.masked_fill(empty[..., None], 0)


def box_xyxy_to_xywh(box: Sequence[int] | np.ndarray | torch.Tensor) -> list:
    """One XYXY box -> ``[x, y, x1 - x, y1 - y]`` as a list of Python numbers."""
    x0, y0, x1, y1 = (v.item() if hasattr(v, "item") else v for v in box)
    return [x0, y0, x1 - x0, y1 - y0]


def is_box_near_crop_edge(
    boxes: torch.Tensor, crop_box: Sequence[int], orig_box: Sequence[int], atol: float = 20.0
) -> torch.Tensor:
    """(N, 4) boxes in the crop's frame -> (N,) bool: near (within ``atol``) an edge of the crop that
    is not an edge of the image (such masks are cut off by the crop)."""
    crop = torch.as_tensor(crop_box, dtype=torch.float, device=boxes.device)
    orig = torch.as_tensor(orig_box, dtype=torch.float, device=boxes.device)
    boxes = uncrop_boxes_xyxy(boxes, crop_box).float()
    near_crop_edge = torch.isclose(boxes, crop[None, :], atol=atol, rtol=0)
    near_image_edge = torch.isclose(boxes, orig[None, :], atol=atol, rtol=0)
    return torch.any(near_crop_edge & ~near_image_edge, dim=1)


def uncrop_boxes_xyxy(boxes: torch.Tensor, crop_box: Sequence[int]) -> torch.Tensor:
    """(..., 4) boxes in a crop's frame -> in the image's."""
    x0, y0 = crop_box[0], crop_box[1]
    return boxes + torch.tensor([x0, y0, x0, y0], device=boxes.device)


def uncrop_points(points: torch.Tensor, crop_box: Sequence[int]) -> torch.Tensor:
    """(..., 2) points ``(x, y)`` in a crop's frame -> in the image's."""
    return points + torch.tensor([crop_box[0], crop_box[1]], device=points.device)


def uncrop_masks(masks: torch.Tensor, crop_box: Sequence[int], orig_h: int, orig_w: int) -> torch.Tensor:
    """(N, h, w) masks of a crop -> (N, orig_h, orig_w), zero outside the crop."""
    x0, y0, x1, y1 = crop_box
    if x0 == 0 and y0 == 0 and x1 == orig_w and y1 == orig_h:
        return masks
    pad_x, pad_y = orig_w - (x1 - x0), orig_h - (y1 - y0)
    return torch.nn.functional.pad(masks, (x0, pad_x - x0, y0, pad_y - y0), value=0)


# ----- small regions -------------------------------------------------------------------------------


def label_regions(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8-connected components of ``mask`` (H, W) bool: labels (H, W) (0 where False, 1.. in raster
    order of each component's first pixel) and sizes (n_labels + 1,), index 0 the False pixels."""
    labels, n = ndimage.label(mask, structure=EIGHT_CONNECTED)
    return labels, np.bincount(labels.ravel(), minlength=n + 1)


def foreground_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(y0, y1, x0, x1), exclusive ends, of the foreground of (H, W) ``mask``; None when empty."""
    try:
        lo, hi = mask_box(mask)
    except ValueError:  # an empty mask has no box
        return None
    (y0, x0), (y1, x1) = lo, hi
    return y0, y1 + 1, x0, x1 + 1


def region_sizes_and_labels(working: np.ndarray, holes: bool) -> tuple[np.ndarray, np.ndarray, tuple[slice, slice]]:
    """Components of ``working`` (H, W), computed on the smallest window that gives the same labels
    and sizes as the whole image: labels of the window, sizes, the window.

    Islands (``holes`` False) all lie in the foreground's box. Holes: when the mask's box leaves a
    border of background on every side of the image, a window one pixel larger than the box holds
    every hole, and its outer ring belongs to the one background component around the mask (label
    1 in both), whose size is the window's count plus the pixels outside it.
    """
    h, w = working.shape
    everything = (slice(0, h), slice(0, w))
    box = foreground_box(working if not holes else ~working)
    if box is None:
        return *label_regions(working), everything
    y0, y1, x0, x1 = box
    if not holes:
        window = (slice(y0, y1), slice(x0, x1))
        return *label_regions(working[window]), window
    if y0 == 0 or x0 == 0 or y1 == h or x1 == w:
        return *label_regions(working), everything
    window = (slice(y0 - 1, y1 + 1), slice(x0 - 1, x1 + 1))
    labels, sizes = label_regions(working[window])
    sizes[1] += h * w - labels.size  # label 1 holds the window's corner, part of the outer background
    return labels, sizes, window


def remove_small_regions(mask: np.ndarray, area_thresh: float, mode: str) -> tuple[np.ndarray, bool]:
    """Fill holes (``mode="holes"``) or remove islands (``"islands"``) smaller than ``area_thresh``
    pixels from an (H, W) bool mask (8-connected components), as segment-anything's function of this
    name: when every island is small, the largest one stays (ties: the first in raster order).

    Returns:
        the new mask (H, W) bool and whether anything changed.
    """
    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    mask = np.asarray(mask, dtype=bool)
    holes = mode == "holes"
    working = ~mask if holes else mask
    labels, sizes, window = region_sizes_and_labels(working, holes)
    small = np.flatnonzero(sizes[1:] < area_thresh) + 1
    if small.size == 0:
        return mask, False
    if holes:
        fill = np.zeros(len(sizes), dtype=bool)
        fill[small] = True
        # outside a window smaller than the image lies only label 1, the background around the mask
        out = np.full_like(mask, True) if labels.size < mask.size and fill[1] else mask.copy()
        out[window] |= fill[labels]
        return out, True
    keep = np.ones(len(sizes), dtype=bool)
    keep[0] = False
    keep[small] = False
    if not keep.any():
        keep[int(np.argmax(sizes[1:])) + 1] = True
    out = np.zeros_like(mask)
    out[window] = keep[labels]
    return out, True
