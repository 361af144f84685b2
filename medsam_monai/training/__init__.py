"""Fine-tuning MedSAM (and training the ``tiny`` demo model) with MONAI engines.

The bundle's ``configs/train.json`` and ``configs/multi_gpu_train.json`` are built from these pieces:

- data (:mod:`.data`): :func:`load_training_splits` (datalist JSON or ``imagesTr``/``labelsTr`` folder),
  :func:`foreground_slices`, the transforms :class:`LoadSliced` (cacheable: the slice prepared
  exactly as at inference) and :class:`RandBoxPromptd` (MedSAM's random label and box jitter);
- the network (:mod:`.network`): :class:`MedSAMTrainNet`, MedSAM's training forward with SAM's own
  parameter names, so its checkpoints load everywhere without conversion;
- the engine glue (:mod:`.engine`): :class:`PrepareBoxBatch`, :func:`slice_dataset`,
  :class:`TrainingStateSaver`, :class:`ResumeTraining`.
"""

from .data import (
    MEDSAM_BBOX_SHIFT,
    LoadSliced,
    RandBoxPromptd,
    display_volumes,
    foreground_slices,
    load_training_splits,
    present_labels,
    resize_label,
    tight_boxes,
)
from .engine import (
    BestModelState,
    PrepareBoxBatch,
    ResumeTraining,
    TrainingStateSaver,
    WarmupCosine,
    latest_checkpoint,
    lr_scheduler,
    slice_dataset,
)
from .network import MedSAMTrainNet, load_sam, train_net

__all__ = [
    "MEDSAM_BBOX_SHIFT",
    "BestModelState",
    "LoadSliced",
    "MedSAMTrainNet",
    "PrepareBoxBatch",
    "RandBoxPromptd",
    "ResumeTraining",
    "TrainingStateSaver",
    "WarmupCosine",
    "display_volumes",
    "foreground_slices",
    "latest_checkpoint",
    "load_sam",
    "load_training_splits",
    "lr_scheduler",
    "present_labels",
    "resize_label",
    "slice_dataset",
    "tight_boxes",
    "train_net",
]
