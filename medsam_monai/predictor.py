"""MedSAMPredictor: box/point/mask prompts on slices of a volume, and MedSAM's 3D propagation
(:mod:`medsam_monai.propagation`).

The predictor works on a volume already in the display frame: an (S, H, W) array of slices as the
network must see them (radiological orientation, intensities already windowed/normalised to
[0, 255]); :mod:`medsam_monai.segment` gets a file's volume there and back. Boxes follow MedSAM:
``(x0, y0, x1, y1)`` with x the column and y the row of a slice, in its pixels, both ends inclusive.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from os import PathLike

import numpy as np
import torch

from .checkpoints import build_sam
from .embedding_cache import EmbeddingCache
from .networks import Sam
from .precision import autocast, check_precision
from .propagation import (  # re-exported: callers import them from here
    PROPAGATION_MARGIN_1024,
    CancelCheck,
    Cancelled,
    ObjectPrompt,
    ProgressCallback,
    check_cancel,
    propagate,
)
from .transforms import (
    check_preprocessing,
    masks_and_probabilities,
    prepare_images,
    scale_boxes_to_model,
    scale_points_to_model,
)

__all__ = [
    "PROPAGATION_MARGIN_1024",
    "CallGuard",
    "CancelCheck",
    "Cancelled",
    "MedSAMPredictor",
    "ObjectPrompt",
    "ProgressCallback",
    "SlicePrediction",
    "volume_fingerprint",
]

# Called around each network call (one encoder batch, one decoder call): a server's turn-taking gate.
CallGuard = Callable[[], contextlib.AbstractContextManager[object]]


@dataclass
class SlicePrediction:
    """Masks of one prompt on one slice."""

    masks: np.ndarray  # (M, H, W) bool: MedSAM's probabilities > 0.5, or SAM's logits > 0
    iou: np.ndarray  # (M,) predicted IoU
    low_res_logits: torch.Tensor  # (M, 256, 256), reusable as a mask prompt
    probabilities: np.ndarray  # (M, H, W) float32 at the slice size


def volume_fingerprint(volume: np.ndarray) -> str:
    """A key for a volume's content (shape, dtype and voxels) to cache its slice embeddings by."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{volume.shape}{volume.dtype}".encode())
    digest.update(np.ascontiguousarray(volume).data)
    return digest.hexdigest()


class MedSAMPredictor:
    """Holds a model, its device and precision, and a byte-bounded cache of slice embeddings."""

    def __init__(
        self,
        model: Sam,
        device: str | torch.device | None = None,
        precision: str = "fp32",
        cache_bytes: int = 1 << 30,
        encode_batch_size: int | None = None,
        cache: EmbeddingCache | None = None,
        call_guard: CallGuard = contextlib.nullcontext,
        preprocessing: str = "medsam",
        uint8_after_resize: bool = False,
    ) -> None:
        """
        Args:
            model: a SAM/MedSAM network.
            device: where it runs; default: the model's device.
            precision: ``fp32`` (exact) or ``bf16`` (autocast).
            cache_bytes: budget of the embedding cache (4 MB per ViT-B slice at fp32).
            encode_batch_size: slices per encoder call; default 1 on CPU (no gain there, more
                memory) and 4 on GPUs.
            cache: an embedding cache to share (e.g. with another predictor on the same model)
                instead of a new one of ``cache_bytes``.
            call_guard: a context-manager factory entered around each network call (an encoder
                batch, a decoder call); default: none.
            preprocessing: the image pipeline the checkpoint was trained with: ``medsam`` (stretch
                to 1024, [0, 1]) or ``sam`` (longest side to 1024, pixel mean/std, zero padding);
                it also decides how prompts are scaled and masks thresholded
                (:mod:`medsam_monai.transforms.functional`).
            uint8_after_resize: ``medsam`` only: truncate the resized image to uint8 before the
                min-max, as ``MedSAM_Inference.py`` does for 2D images.
        """
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model = model.to(self.device).eval()
        self.precision = check_precision(precision)
        self.cache = EmbeddingCache(cache_bytes) if cache is None else cache
        self.call_guard = call_guard
        self.encode_batch_size = encode_batch_size or (1 if self.device.type == "cpu" else 4)
        self.preprocessing = check_preprocessing(preprocessing)
        self.uint8_after_resize = uint8_after_resize

    @property
    def pipeline(self) -> tuple[str, bool]:
        """What an embedding depends on besides the image and the model (part of its cache key)."""
        return self.preprocessing, self.uint8_after_resize and self.preprocessing == "medsam"

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | PathLike[str] | None,
        variant: str = "vit_b",
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        sha256: str | None = None,
        **kwargs,
    ) -> MedSAMPredictor:
        """Build the model of ``variant`` from ``checkpoint`` (any supported format)."""
        return cls(build_sam(variant, checkpoint, sha256=sha256, device=device), device, precision, **kwargs)

    @property
    def image_size(self) -> int:
        return self.model.image_size

    # ----- image embeddings -----------------------------------------------------------------

    def encode(self, slices: np.ndarray) -> torch.Tensor:
        """Embeddings of (N, H, W) display slices or (N, H, W, 3) RGB images (values in [0, 255]): -> (N, C, 64, 64)."""
        images = prepare_images(slices, self.preprocessing, self.image_size, self.uint8_after_resize).to(self.device)
        with self.call_guard(), torch.inference_mode(), autocast(self.device, self.precision):
            return self.model.encode_image(images)

    def slice_embeddings(
        self,
        volume: np.ndarray,
        indices: Sequence[int],
        volume_key: Hashable | None = None,
        progress: ProgressCallback | None = None,
        cancel: CancelCheck | None = None,
    ) -> list[torch.Tensor]:
        """Embeddings of ``volume[indices]`` ((S, H, W) or (S, H, W, 3)), from the cache or encoded in batches.

        Returns:
            One (C, 64, 64) tensor per index, in order.
        """
        key = volume_fingerprint(volume) if volume_key is None else volume_key
        found: dict[int, torch.Tensor] = {}
        missing = []
        for index in dict.fromkeys(indices):
            cached = self.cache.get(self.cache_key(key, index))
            if cached is None:
                missing.append(index)
            else:
                found[index] = cached
        for start in range(0, len(missing), self.encode_batch_size):
            check_cancel(cancel)
            batch = missing[start : start + self.encode_batch_size]
            for index, embedding in zip(batch, self.encode(volume[batch])):
                embedding = embedding.clone()  # do not keep the whole batch alive through a view
                self.cache.put(self.cache_key(key, index), embedding)
                found[index] = embedding
            if progress is not None:
                progress(min(start + len(batch), len(missing)), len(missing))
        return [found[index] for index in indices]

    def cache_key(self, volume_key: Hashable, index: int) -> tuple[Hashable, int, tuple[str, bool]]:
        """The embedding cache's key of slice ``index`` of the volume known as ``volume_key``."""
        return volume_key, index, self.pipeline

    def image_embedding(self, image: np.ndarray, key: Hashable | None = None) -> torch.Tensor:
        """The (C, 64, 64) embedding of one (H, W) or (H, W, 3) image (values in [0, 255]), cached."""
        (embedding,) = self.slice_embeddings(np.asarray(image)[None], [0], key)
        return embedding

    # ----- 2D prompts -----------------------------------------------------------------------

    def predict_from_embedding(
        self,
        embedding: torch.Tensor,
        slice_shape: tuple[int, int],
        box: Sequence[float] | None = None,
        points: np.ndarray | Sequence[Sequence[float]] | None = None,
        point_labels: Sequence[int] | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = False,
        box_in_model_frame: bool = False,
    ) -> SlicePrediction:
        """Masks for one prompt on a slice whose embedding is known.

        Args:
            embedding: (C, 64, 64) embedding of the slice.
            slice_shape: (H, W) of the slice.
            box: ``(x0, y0, x1, y1)`` in slice pixels (or in the 1024 frame if ``box_in_model_frame``).
            points: (N, 2) ``(x, y)`` in slice pixels.
            point_labels: (N,) 1 positive, 0 negative.
            mask_input: (1, 256, 256) low-res logits of an earlier prediction.
            multimask_output: three candidates with their IoU scores instead of one mask.
        """
        if box is None and points is None and mask_input is None:
            raise ValueError("give a box, points or a mask prompt")
        boxes = None if box is None else np.asarray(box, dtype=np.float64).reshape(1, 4)
        coords = labels = None
        if points is not None:
            coords = np.asarray(points, dtype=np.float64).reshape(1, -1, 2)
            labels = np.ones(coords.shape[:2]) if point_labels is None else np.asarray(point_labels).reshape(1, -1)
            if labels.shape != coords.shape[:2]:
                raise ValueError(f"{coords.shape[1]} points but {labels.size} point labels")
        low_res, iou = self.decode(
            embedding, slice_shape, coords, labels, boxes, mask_input, multimask_output, box_in_model_frame
        )
        masks, probabilities = masks_and_probabilities(low_res, slice_shape, self.preprocessing, self.image_size)
        return SlicePrediction(
            masks=masks[0].cpu().numpy(),
            iou=iou[0].cpu().numpy(),
            low_res_logits=low_res[0],
            probabilities=probabilities[0].cpu().numpy(),
        )

    def decode(
        self,
        embedding: torch.Tensor,
        image_hw: tuple[int, int],
        points: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        boxes: np.ndarray | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = False,
        boxes_in_model_frame: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The mask decoder on B prompts for one image: -> float32 low-res logits (B, M, 256, 256), IoU (B, M).

        Args:
            embedding: (C, 64, 64) embedding of the image.
            image_hw: (H, W) of the image the prompts are given in.
            points: (B, N, 2) ``(x, y)`` in image pixels; point_labels (B, N), 1 positive, 0 negative.
            boxes: (B, 4) ``(x0, y0, x1, y1)`` in image pixels (or the model frame if ``boxes_in_model_frame``).
            mask_input: (B, 1, 256, 256) (or (1, 256, 256) for B = 1) low-res logits of an earlier prediction.
        """
        points_t = None
        if points is not None:
            # float64 into the prompt encoder, which divides and then casts, as SAM does
            scaled = scale_points_to_model(points, image_hw, self.preprocessing, self.image_size)
            points_t = (
                torch.as_tensor(scaled, device=self.device),
                torch.as_tensor(np.asarray(point_labels), dtype=torch.int64, device=self.device),
            )
        boxes_t = None
        if boxes is not None:
            model_boxes = (
                np.asarray(boxes, dtype=np.float64)
                if boxes_in_model_frame
                else scale_boxes_to_model(boxes, image_hw, self.preprocessing, self.image_size)
            )
            boxes_t = torch.as_tensor(model_boxes, dtype=torch.float32, device=self.device).reshape(-1, 4)
        masks_t = None if mask_input is None else mask_input.reshape(-1, 1, *mask_input.shape[-2:]).to(self.device)
        with self.call_guard(), torch.inference_mode(), autocast(self.device, self.precision):
            logits, iou = self.model.decode(
                embedding[None].to(self.device),
                boxes=boxes_t,
                points=points_t,
                mask_inputs=masks_t,
                multimask_output=multimask_output,
            )
        return logits.float(), iou.float()

    def predict_slice(
        self,
        volume: np.ndarray,
        index: int,
        box: Sequence[float] | None = None,
        points: np.ndarray | Sequence[Sequence[float]] | None = None,
        point_labels: Sequence[int] | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = False,
        volume_key: Hashable | None = None,
    ) -> SlicePrediction:
        """Masks for one prompt on slice ``index`` of an (S, H, W) display volume (embedding cached)."""
        _check_slice_index(index, volume.shape[0])
        (embedding,) = self.slice_embeddings(volume, [index], volume_key)
        return self.predict_from_embedding(embedding, volume.shape[1:3], box, points, point_labels, mask_input, multimask_output)

    # ----- 3D propagation -------------------------------------------------------------------

    def segment_3d(
        self,
        volume: np.ndarray,
        objects: Sequence[ObjectPrompt],
        volume_key: Hashable | None = None,
        progress: ProgressCallback | None = None,
        cancel: CancelCheck | None = None,
        stop_when_empty: bool = False,
        margin: float = PROPAGATION_MARGIN_1024,
    ) -> np.ndarray:
        """MedSAM's 3D inference (LiteMedSAM), one box (and optional points) per object: see
        :func:`medsam_monai.propagation.propagate`, which this runs with this predictor.

        Args:
            volume: (S, H, W) display volume.
            objects: boxes ``(x0, y0, z0, x1, y1, z1)`` (inclusive), their label values and points.
            progress: called with (slices done, slices in all objects) after each slice.
            cancel: an Event or a callable; when set, :class:`Cancelled` is raised between slices.

        Returns:
            (S, H, W) label volume: 0 background, each object's label on its voxels.
        """
        return propagate(self, volume, objects, volume_key, progress, cancel, stop_when_empty, margin)


def _check_slice_index(index: int, count: int) -> None:
    if not 0 <= index < count:
        raise ValueError(f"slice {index} is outside the volume (0..{count - 1})")
