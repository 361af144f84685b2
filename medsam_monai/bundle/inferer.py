"""The bundle's ``inferer``: MedSAM's box-prompted 3D segmentation of a volume, as ``medsam segment`` runs it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.data import MetaTensor
from monai.inferers import Inferer

from ..orientation import parse_axis
from ..predictor import MedSAMPredictor
from ..segment import segment_volume
from ..transforms import VoxelBox, volume_of


class BoxPropagationInferer(Inferer):
    """MedSAM's box-prompted 3D inference on a volume, as ``medsam segment`` runs it.

    ``inputs`` is the uint8 MetaTensor ``[i, j, k]`` from ``IntensityForModalityd``; the volume is
    shown to the network slice by slice along ``axis`` in radiological display orientation (axis
    permutation and flips, no resampling), each slice prepared as MedSAM's reference does
    (``prepare_slices``: stretch to 1024x1024, [0, 1], 3 channels), and the labels come back on the
    input's grid (:func:`medsam_monai.segment.segment_volume`).

    ``network`` is a :class:`~medsam_monai.predictor.MedSAMPredictor` (the bundle's ``predictor``),
    or a bare :class:`~medsam_monai.networks.Sam`, which is wrapped in one (fp32, on its own device).
    """

    def __init__(self, axis: str = "axial") -> None:
        self.axis = parse_axis(axis)

    def __call__(  # type: ignore[override]
        self, inputs: MetaTensor, network: MedSAMPredictor | torch.nn.Module, boxes: Sequence[VoxelBox], *args: Any, **kwargs: Any
    ) -> MetaTensor:
        """Labels ``[i, j, k]`` (uint8, uint16 above 255) as a MetaTensor with the input's meta (and affine)."""
        predictor = network if isinstance(network, MedSAMPredictor) else self.predictor_for(network)
        volume = volume_of(inputs)
        labels = segment_volume(predictor, volume, boxes, axis=self.axis, intensities=volume.array)
        return MetaTensor(torch.from_numpy(labels), meta=dict(inputs.meta))  # the meta holds the affine

    @staticmethod
    def predictor_for(network: torch.nn.Module) -> MedSAMPredictor:
        """A predictor over a bare network (MONAI tools hand the inferer the ``network_def`` module)."""
        device = next(network.parameters()).device
        return MedSAMPredictor(network, device=device)  # type: ignore[arg-type]
