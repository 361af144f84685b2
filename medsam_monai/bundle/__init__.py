"""What the MONAI bundle ``bundles/medsam_vit_b`` runs: its configs call into this package.

The bundle's configs stay declarative; the code lives here so that ``python -m monai.bundle run``
and ``medsam segment`` share one path (:func:`medsam_monai.segment.segment_volume`), and so give
the same labels voxel for voxel for the same input and options. One role per module:

- :mod:`.settings`: the run's settings checked before any case (:func:`check_settings`,
  :func:`check_evaluation_settings`), the device (:func:`resolve_run_device`), the weights
  (:func:`resolve_checkpoint`: ``ckpt_path``, else ``models/model.pt``, else for ``tiny`` the
  packaged demo weights), the variant and the loaded network; errors end the run with
  :class:`BundleExit` (one line, exit status 1);
- :mod:`.cases`: :func:`load_cases` (one ``--input_dict`` case or a MONAI datalist) and
  :class:`CaseDataset` (the bundle's ``dataset``: the cases through the preprocessing);
- :mod:`.inferer`: :class:`BoxPropagationInferer`, MedSAM's 3D propagation on a volume;
- :mod:`.runner`: :class:`CaseEvaluator`, the bundle's ``evaluator`` (a MONAI ``Evaluator``, one
  case per iteration, a failed case logged and the others run; :class:`CasesFailed` at the end);
- :mod:`.metrics`: :class:`SegmentationScorer` (Dice and NSD per case and label, their means, tables);
- :mod:`.everything`: ``configs/everything.json``, SAM's automatic masks of one plane per case
  (:class:`AutomaticMaskInferer`, :class:`EverythingEvaluator`, :class:`SaveAutomaticMasksd`).

The prompts and the other transforms the configs name (``LoadVolumed``, ``PromptBoxesd``,
``BoxesFromLabeld``, ``SaveLabelVolumed``) live in :mod:`medsam_monai.transforms`, below this
package; they are importable from here too, as the bundle's first configs named them.
"""

from ..transforms import (
    BOXES_KEY,
    CASE_INDEX_KEY,
    NAMES_KEY,
    BoxesFromLabel,
    BoxesFromLabeld,
    LoadVolume,
    LoadVolumed,
    PromptBoxesd,
    SaveLabelVolumed,
    boxes_from_prompts,
    case_name,
)
from .cases import CaseDataset, load_cases, read_datalist
from .everything import AutomaticMaskInferer, EverythingEvaluator, SaveAutomaticMasksd, check_automatic_settings
from .inferer import BoxPropagationInferer
from .metrics import MultimaskReport, SegmentationScorer, surface_scores
from .runner import USER_ERRORS, CaseEvaluator, CasesFailed
from .settings import (
    BundleExit,
    check_evaluation_settings,
    check_preprocessing_mode,
    check_settings,
    check_transform_chain,
    default_checkpoint,
    load_weights,
    require_checkpoint,
    resolve_checkpoint,
    resolve_preprocessing,
    resolve_run_device,
    resolve_variant,
)

__all__ = [
    "BOXES_KEY",
    "CASE_INDEX_KEY",
    "NAMES_KEY",
    "USER_ERRORS",
    "AutomaticMaskInferer",
    "BoxPropagationInferer",
    "BoxesFromLabel",
    "BoxesFromLabeld",
    "BundleExit",
    "CaseDataset",
    "CaseEvaluator",
    "CasesFailed",
    "EverythingEvaluator",
    "LoadVolume",
    "LoadVolumed",
    "MultimaskReport",
    "PromptBoxesd",
    "SaveAutomaticMasksd",
    "SaveLabelVolumed",
    "SegmentationScorer",
    "boxes_from_prompts",
    "case_name",
    "check_automatic_settings",
    "check_evaluation_settings",
    "check_preprocessing_mode",
    "check_settings",
    "check_transform_chain",
    "default_checkpoint",
    "load_cases",
    "load_weights",
    "read_datalist",
    "require_checkpoint",
    "resolve_checkpoint",
    "resolve_preprocessing",
    "resolve_run_device",
    "resolve_variant",
    "surface_scores",
]
