"""Automatic mask generation: SAM's algorithm, parameters and records on a MedSAM/SAM predictor.

- :class:`AutomaticMaskGenerator` (:mod:`.generator`): segment-anything's ``SamAutomaticMaskGenerator``;
  :data:`GENERATOR_PARAMETERS`, its parameters' names and defaults, the one list every face uses.
- :mod:`.rle`: SAM's uncompressed RLE and COCO's compressed RLE strings.
- :mod:`.grids`: point grids and crop boxes.
- :mod:`.filters`: stability score, box NMS (torchvision's order), mask boxes, small regions.
- :mod:`.labels`: physical-size filters and a label map for medical images.
- :mod:`.volumes`: the core of every face: a volume's slice and its spacing, the filtered masks of
  a plane as one label map (:func:`automatic_masks`), JSON records, each mask propagated in 3D.

Joins the predictor like :mod:`medsam_monai.predictor` does; knows nothing of files or HTTP.
"""

from .filters import (
    batched_mask_to_box,
    batched_nms,
    box_area,
    is_box_near_crop_edge,
    nms,
    remove_small_regions,
    stability_score,
    uncrop_boxes_xyxy,
    uncrop_masks,
    uncrop_points,
)
from .generator import GENERATOR_PARAMETERS, OUTPUT_MODES, AutomaticMaskGenerator, MaskSet
from .grids import build_all_layer_point_grids, build_point_grid, generate_crop_boxes
from .labels import filter_medical, record_mask, records_to_label_map
from .rle import (
    RLE,
    area_from_rle,
    coco_rle_to_mask,
    coco_to_rle,
    decode_coco_counts,
    encode_coco_counts,
    mask_to_rle,
    masks_to_rle,
    rle_to_coco,
    rle_to_mask,
)
from .volumes import (
    AutomaticMasks,
    apply_size_filters,
    automatic_masks,
    check_size_filters,
    check_spacing_for_filters,
    display_pixel_spacing,
    display_slice,
    json_records,
    point_batches,
    propagate_masks,
    record_masks,
    voxel_slice,
)

__all__ = [
    "GENERATOR_PARAMETERS",
    "OUTPUT_MODES",
    "RLE",
    "AutomaticMaskGenerator",
    "AutomaticMasks",
    "apply_size_filters",
    "automatic_masks",
    "check_size_filters",
    "check_spacing_for_filters",
    "display_pixel_spacing",
    "display_slice",
    "json_records",
    "point_batches",
    "propagate_masks",
    "record_masks",
    "voxel_slice",
    "MaskSet",
    "area_from_rle",
    "batched_mask_to_box",
    "batched_nms",
    "box_area",
    "build_all_layer_point_grids",
    "build_point_grid",
    "coco_rle_to_mask",
    "coco_to_rle",
    "decode_coco_counts",
    "encode_coco_counts",
    "filter_medical",
    "generate_crop_boxes",
    "is_box_near_crop_edge",
    "mask_to_rle",
    "masks_to_rle",
    "nms",
    "record_mask",
    "records_to_label_map",
    "remove_small_regions",
    "rle_to_coco",
    "rle_to_mask",
    "stability_score",
    "uncrop_boxes_xyxy",
    "uncrop_masks",
    "uncrop_points",
]
