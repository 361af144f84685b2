"""The bundle's ``inferer``: MedSAM's prompted 3D segmentation of a volume, as ``medsam segment`` runs it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import Inferer

from ..io import Volume
from ..orientation import display_index_to_ijk, display_layout, parse_axis
from ..predictor import MedSAMPredictor
from ..segment import check_voxel_point, ras_point_to_voxel, segment_volume_prompts, volume_prompts
from ..transforms import CasePoint, CasePrompts, VoxelBox, check_preprocessing, volume_of


class BoxPropagationInferer(Inferer):
    """MedSAM's prompted 3D inference on a volume, as ``medsam segment`` runs it.

    ``inputs`` is the uint8 MetaTensor ``[i, j, k]`` from ``IntensityForModalityd``; the volume is
    shown to the network slice by slice along ``axis`` in radiological display orientation (axis
    permutation and flips, no resampling), each slice prepared by the predictor's image pipeline
    (MedSAM's: stretch to 1024x1024, [0, 1], 3 channels; or SAM's), and the labels come back on the
    input's grid. The boxes propagate in 3D; a case's points join the box on their slice (or, with
    no box, make an object on their own slices), its mask prompt refines each object, and with
    ``multimask`` every slice keeps the best of SAM's three candidates: the rules of
    :func:`medsam_monai.segment.segment_volume`, which ``medsam segment`` runs.

    Args:
        axis: slicing axis.
        preprocessing: the image pipeline of a bare network (``network`` not a predictor); None: MedSAM's.
        multimask: the run's default (a case's ``multimask`` wins).

    ``network`` is a :class:`~medsam_monai.predictor.MedSAMPredictor` (the bundle's ``predictor``),
    or a bare :class:`~medsam_monai.networks.Sam`, which is wrapped in one (fp32, on its own device).
    """

    def __init__(self, axis: str = "axial", preprocessing: str | None = None, multimask: bool = False) -> None:
        self.axis = parse_axis(axis)
        self.preprocessing = "medsam" if preprocessing is None else check_preprocessing(preprocessing)
        if not isinstance(multimask, bool):
            raise ValueError(f"multimask must be true or false, got {multimask!r}")
        self.multimask = multimask

    def __call__(  # type: ignore[override]
        self,
        inputs: MetaTensor,
        network: MedSAMPredictor | torch.nn.Module,
        boxes: Sequence[VoxelBox],
        *args: Any,
        prompts: CasePrompts | None = None,
        iou_rows: list[dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> MetaTensor:
        """Labels ``[i, j, k]`` (uint8, uint16 above 255) as a MetaTensor with the input's meta (and affine).

        ``prompts``: the case's points, mask prompt and multimask choice (none: boxes only).
        ``iou_rows``: with multimask, filled with one row per object and slice (:func:`iou_rows_of`).
        """
        predictor = network if isinstance(network, MedSAMPredictor) else self.predictor_for(network)
        volume = volume_of(inputs)
        prompts = prompts or CasePrompts()
        multimask = self.multimask if prompts.multimask is None else prompts.multimask
        objects = volume_prompts(
            volume,
            list(boxes),
            self.axis,
            [voxel_of(point, volume) for point in prompts.points],
            [int(point.positive) for point in prompts.points],
            mask_prompt=None if prompts.mask_prompt is None else volume_of(prompts.mask_prompt),
            mask_values=prompts.mask_values,
            point_names=[point.name for point in prompts.points],
            mask_name=prompts.mask_name,
        )
        scores: dict[int, dict[int, np.ndarray]] | None = {} if multimask else None
        labels = segment_volume_prompts(
            predictor, volume, objects, self.axis, intensities=volume.array, multimask=multimask, scores=scores
        )
        if scores and iou_rows is not None:
            keys = {prompt.label: prompt.key_slice for prompt in objects}
            iou_rows.extend(iou_rows_of(scores, keys, volume, self.axis))
        return MetaTensor(torch.from_numpy(labels), meta=dict(inputs.meta))  # the meta holds the affine

    def predictor_for(self, network: torch.nn.Module) -> MedSAMPredictor:
        """A predictor over a bare network (MONAI tools hand the inferer the ``network_def`` module)."""
        device = next(network.parameters()).device
        return MedSAMPredictor(network, device=device, preprocessing=self.preprocessing)  # type: ignore[arg-type]


def voxel_of(point: CasePoint, volume: Volume) -> tuple[int, int, int]:
    """A case's point as the voxel ``(i, j, k)`` it names (an RAS point: the nearest voxel centre); one-line
    ValueError naming the point when it lies outside the image."""
    try:
        return ras_point_to_voxel(point.coords, volume) if point.ras else check_voxel_point(point.coords, volume.shape)
    except ValueError as err:
        raise ValueError(f"{point.key}: {err}") from None


def iou_rows_of(
    scores: dict[int, dict[int, np.ndarray]], key_slices: dict[int, int], volume: Volume, axis: str
) -> list[dict[str, Any]]:
    """One row per object and predicted slice: its candidates' predicted IoUs and the one kept.

    ``scores`` is ``{label: {display slice: IoUs (M,)}}`` (:func:`medsam_monai.segment.segment_volume`);
    a row names the slice by the file's own voxel index along ``axis`` (``slice``, on voxel axis
    ``voxel_axis`` i, j or k), and ``key`` marks the object's key slice, where its prompt starts.
    """
    layout = display_layout(volume.affine, axis)
    voxel_axis = layout.permutation[0]
    rows = []
    for label in sorted(scores):
        for z in sorted(scores[label]):
            iou = [float(v) for v in np.asarray(scores[label][z]).reshape(-1)]
            rows.append(
                {
                    "label": label,
                    "axis": axis,
                    "voxel_axis": "ijk"[voxel_axis],
                    "slice": display_index_to_ijk((z, 0, 0), volume.shape, layout)[voxel_axis],
                    "key": z == key_slices.get(label),
                    "iou": iou,
                    "kept": int(np.argmax(iou)) + 1,
                }
            )
    return rows
