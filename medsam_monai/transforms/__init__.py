"""MedSAM's pre- and post-processing as MONAI transforms, split as MONAI splits its own.

- :mod:`.functional`: the maths (CT window, MR percentiles, slice preparation, box scaling, the
  mask upscale, SAM's pixel normalisation), exact to MedSAM's reference scripts;
- :mod:`.boxes`: voxel boxes (:class:`VoxelBox`), their checks, boxes of label images;
- :mod:`.prompts`: a case's ``box`` / ``box_ras`` / ``boxes`` prompts -> voxel boxes;
- :mod:`.volumes`: :class:`medsam_monai.io.Volume` <-> MetaTensor, label volumes, grid checks, case names;
- :mod:`.display`: a labelled case in display orientation (training slices);
- :mod:`.array`: array transforms (``monai.transforms.Transform``);
- :mod:`.dictionary`: their dictionary twins (``...d``, ``keys``, ``allow_missing_keys``) and the
  transforms of the bundle's cases and of training samples.

Nothing here knows about the network: the predictor (:mod:`medsam_monai.predictor`) joins the
two, and the bundle and training are built on both. Every public name is importable from here.
"""

from .array import BoxesFromLabel, CTWindow, IntensityForModality, LoadVolume, MRNormalize, PrepareSlice, SamNormalize
from .boxes import (
    VoxelBox,
    check_voxel_box,
    jittered_voxel_box,
    label_values_of,
    mask_box,
    present_labels,
    ras_box_to_voxel_box,
    tight_boxes,
)
from .dictionary import (
    BOXES_KEY,
    CASE_INDEX_KEY,
    MEDSAM_BBOX_SHIFT,
    NAMES_KEY,
    SERIES_UID_KEY,
    BoxesFromLabeld,
    CTWindowd,
    IntensityForModalityd,
    LoadSliced,
    LoadVolumed,
    MRNormalized,
    PrepareSliced,
    PromptBoxesd,
    RandBoxPromptd,
    SamNormalized,
    SaveLabelVolumed,
)
from .display import display_volumes
from .functional import (
    CT_WINDOW_PRESETS,
    MODEL_INPUT_SIZE,
    SAM_PIXEL_MEAN,
    SAM_PIXEL_STD,
    check_finite,
    ct_window,
    mask_probabilities,
    mr_normalize,
    parse_window,
    postprocess_logits,
    prepare_slice,
    prepare_slices,
    resize_label,
    sam_normalize,
    scale_box_from_model,
    scale_box_to_model,
    upscale_masks,
)
from .prompts import PROMPT_HELP, boxes_from_prompts
from .volumes import (
    IMAGE_SUFFIXES,
    case_name,
    check_label_grid,
    check_same_grid,
    read_label_volume,
    volume_of,
    volume_to_metatensor,
)

__all__ = [
    "BOXES_KEY",
    "CASE_INDEX_KEY",
    "CT_WINDOW_PRESETS",
    "IMAGE_SUFFIXES",
    "MEDSAM_BBOX_SHIFT",
    "MODEL_INPUT_SIZE",
    "NAMES_KEY",
    "PROMPT_HELP",
    "SAM_PIXEL_MEAN",
    "SAM_PIXEL_STD",
    "SERIES_UID_KEY",
    "BoxesFromLabel",
    "BoxesFromLabeld",
    "CTWindow",
    "CTWindowd",
    "IntensityForModality",
    "IntensityForModalityd",
    "LoadSliced",
    "LoadVolume",
    "LoadVolumed",
    "MRNormalize",
    "MRNormalized",
    "PrepareSlice",
    "PrepareSliced",
    "PromptBoxesd",
    "RandBoxPromptd",
    "SamNormalize",
    "SamNormalized",
    "SaveLabelVolumed",
    "VoxelBox",
    "boxes_from_prompts",
    "case_name",
    "check_finite",
    "check_label_grid",
    "check_same_grid",
    "check_voxel_box",
    "ct_window",
    "display_volumes",
    "jittered_voxel_box",
    "label_values_of",
    "mask_box",
    "mask_probabilities",
    "mr_normalize",
    "parse_window",
    "postprocess_logits",
    "prepare_slice",
    "prepare_slices",
    "present_labels",
    "ras_box_to_voxel_box",
    "read_label_volume",
    "resize_label",
    "sam_normalize",
    "scale_box_from_model",
    "scale_box_to_model",
    "tight_boxes",
    "upscale_masks",
    "volume_of",
    "volume_to_metatensor",
]
