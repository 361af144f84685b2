"""Point grids and crop boxes of SAM's automatic mask generator (segment-anything's ``utils/amg.py``),
with the same arithmetic, so that the prompts are the same to the last bit."""

from __future__ import annotations

import math
from itertools import product

import numpy as np


def build_point_grid(n_per_side: int) -> np.ndarray:
    """(n * n, 2) points ``(x, y)`` evenly spaced in [0, 1]^2, cell centres, x fastest."""
    offset = 1 / (2 * n_per_side)
    points_one_side = np.linspace(offset, 1 - offset, n_per_side)
    points_x = np.tile(points_one_side[None, :], (n_per_side, 1))
    points_y = np.tile(points_one_side[:, None], (1, n_per_side))
    return np.stack([points_x, points_y], axis=-1).reshape(-1, 2)


def build_all_layer_point_grids(n_per_side: int, n_layers: int, scale_per_layer: int) -> list[np.ndarray]:
    """One grid per crop layer 0..n_layers, layer i with ``int(n_per_side / scale_per_layer**i)`` points a side."""
    return [build_point_grid(int(n_per_side / (scale_per_layer**i))) for i in range(n_layers + 1)]


def crop_length(orig_len: int, n_crops: int, overlap: int) -> int:
    """Side of each of ``n_crops`` crops over ``orig_len`` pixels that overlap by ``overlap``."""
    return int(math.ceil((overlap * (n_crops - 1) + orig_len) / n_crops))


def generate_crop_boxes(im_size: tuple[int, int], n_layers: int, overlap_ratio: float) -> tuple[list[list[int]], list[int]]:
    """SAM's crops: the whole image, then (2^i)^2 overlapping crops in layer i = 1..n_layers.

    Args:
        im_size: (H, W) of the image.
        n_layers: crop layers below the whole image.
        overlap_ratio: overlap of neighbouring crops of layer 1, as a fraction of the short side
            (halved in each further layer).

    Returns:
        crop boxes ``[x0, y0, x1, y1]`` (x1, y1 exclusive) and the layer of each.
    """
    im_h, im_w = im_size
    short_side = min(im_h, im_w)
    crop_boxes, layer_idxs = [[0, 0, im_w, im_h]], [0]
    for i_layer in range(n_layers):
        n_crops_per_side = 2 ** (i_layer + 1)
        overlap = int(overlap_ratio * short_side * (2 / n_crops_per_side))
        crop_w = crop_length(im_w, n_crops_per_side, overlap)
        crop_h = crop_length(im_h, n_crops_per_side, overlap)
        crop_box_x0 = [int((crop_w - overlap) * i) for i in range(n_crops_per_side)]
        crop_box_y0 = [int((crop_h - overlap) * i) for i in range(n_crops_per_side)]
        for x0, y0 in product(crop_box_x0, crop_box_y0):  # x outer, y inner, as SAM
            crop_boxes.append([x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h)])
            layer_idxs.append(i_layer + 1)
    return crop_boxes, layer_idxs
