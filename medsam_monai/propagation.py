"""MedSAM's 3D propagation (LiteMedSAM's inference), the one place that owns it.

An object is a 3D box over display slices ``z0..z1`` (and optionally points on some of its slices).
Its key slice, :func:`key_slice`, gets the user's box; going up to ``z1`` and down to ``z0``
(:func:`slice_order`), each slice gets the box of the previous slice's mask (:func:`propagated_box`).
:func:`propagate` runs that for several objects with the overlap rule, progress, cancel and encoder
batching. ``medsam segment``, the bundle, the server and the training check all reach it through
:meth:`medsam_monai.predictor.MedSAMPredictor.segment_3d`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from .masks import mask_box
from .transforms import mask_prompt_logits, scale_boxes_to_model

if TYPE_CHECKING:
    import torch

    from .predictor import SlicePrediction

# MedSAM's propagation enlarges the previous slice's mask box by 3 px at LiteMedSAM's 256 scale.
PROPAGATION_MARGIN_1024 = 12

ProgressCallback = Callable[[int, int], None]
CancelCheck = Callable[[], bool] | threading.Event
SlicePoints = tuple[tuple[tuple[float, float], ...], tuple[int, ...]]  # ((x, y), ...), (1 positive / 0 negative, ...)


class Cancelled(RuntimeError):
    """Raised when the caller cancelled a running prediction."""


def check_cancel(cancel: CancelCheck | None) -> None:
    """Raise :class:`Cancelled` when ``cancel`` (an Event or a callable) is set."""
    if cancel is None:
        return
    if cancel.is_set() if isinstance(cancel, threading.Event) else cancel():
        raise Cancelled("cancelled")


@dataclass(frozen=True)
class ObjectPrompt:
    """One object to segment in 3D: a box over slices ``z0..z1``, the label value it gets, and
    optional points and mask prompts on some of those slices.

    ``box`` is ``(x0, y0, z0, x1, y1, z1)`` in the display frame (x column, y row, z slice),
    inclusive. The 2D part is the box on the key slice (:func:`key_slice`, or ``key`` when given).
    ``points`` maps a slice index to ``(coords, labels)``: coords (N, 2) ``(x, y)`` in slice pixels,
    labels (N,) 1 positive, 0 negative; they are added to that slice's box prompt. They are kept as
    tuples so that prompts compare by value. ``mask_prompts`` maps a slice index to an (H, W) bool
    mask given as that slice's dense prompt (SAM's low-res mask input), e.g. an earlier result to
    refine. ``key_mask`` is an (H, W) bool mask already known on the key slice (e.g. from the
    automatic generator): it is that slice's result, and its neighbours get its box.
    """

    box: tuple[float, float, int, float, float, int]
    label: int = 1
    points: Mapping[int, SlicePoints] = field(default_factory=dict, hash=False)
    key: int | None = None
    mask_prompts: Mapping[int, np.ndarray] = field(default_factory=dict, hash=False, compare=False)
    key_mask: np.ndarray | None = field(default=None, hash=False, compare=False)

    def __post_init__(self) -> None:
        points = {int(z): _slice_points(z, *given) for z, given in self.points.items()}
        object.__setattr__(self, "points", {z: given for z, given in points.items() if given[0]})  # no empty prompts
        object.__setattr__(self, "mask_prompts", {int(z): np.asarray(m, dtype=bool) for z, m in self.mask_prompts.items()})
        if self.key_mask is not None:
            object.__setattr__(self, "key_mask", np.asarray(self.key_mask, dtype=bool))

    @property
    def key_slice(self) -> int:
        """The slice that gets the user's box: ``key``, or MedSAM's middle of the box's slices."""
        return key_slice(int(self.box[2]), int(self.box[5])) if self.key is None else int(self.key)


def _slice_points(z: int, coords: np.ndarray | Sequence[Sequence[float]], labels: Sequence[int]) -> SlicePoints:
    """Points of slice ``z`` as tuples; ValueError when they are not (N, 2) finite coordinates with N labels 0/1."""
    xy = np.asarray(coords, dtype=np.float64)
    if xy.size == 0:
        xy = xy.reshape(0, 2)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(f"points of slice {z} must be (N, 2) (x, y) pairs, got shape {xy.shape}")
    flags = [int(v) for v in labels]
    if len(flags) != len(xy):
        raise ValueError(f"slice {z} has {len(xy)} points but {len(flags)} point labels")
    if not np.all(np.isfinite(xy)):
        raise ValueError(f"a point of slice {z} has a non-finite coordinate")
    if any(v not in (0, 1) for v in flags):
        raise ValueError(f"point labels are 1 (positive) or 0 (negative), got {flags} on slice {z}")
    return tuple((float(x), float(y)) for x, y in xy), tuple(flags)


def key_slice(z0: int, z1: int) -> int:
    """The slice of ``z0..z1`` (inclusive) that gets the user's box: MedSAM's ``int((z1 - z0) / 2 + z0)``."""
    return int((z1 - z0) / 2 + z0)


def slice_order(z0: int, z1: int, key: int | None = None) -> list[tuple[int, int | None]]:
    """MedSAM's slice order ``[(z, slice whose mask gives z's box or None), ...]``: the key slice
    (default :func:`key_slice`), then up to ``z1``, then down to ``z0``."""
    key = key_slice(z0, z1) if key is None else key
    order: list[tuple[int, int | None]] = [(key, None)]
    order += [(z, z - 1) for z in range(key + 1, z1 + 1)]
    order += [(z, z + 1) for z in range(key - 1, z0 - 1, -1)]
    return order


def propagated_box(
    previous_mask: np.ndarray | None,
    user_box: np.ndarray,
    shape: tuple[int, int],
    image_size: int,
    margin: float,
    preprocessing: str = "medsam",
) -> np.ndarray:
    """The box ``(x0, y0, x1, y1)`` in the ``image_size`` model frame (of ``preprocessing``) for the next slice.

    Args:
        previous_mask: (H, W) bool mask of the slice before, or None on the key slice.
        user_box: ``(x0, y0, x1, y1)`` the user's 2D box in slice pixels; used when the previous
            mask is missing or empty.
        shape: (H, W) of a slice.
        margin: pixels of the model frame added on every side of the previous mask's tight box.
    """
    if previous_mask is None or not previous_mask.any():
        return scale_boxes_to_model(user_box, shape, preprocessing, image_size)
    (y0, x0), (y1, x1) = mask_box(previous_mask)
    tight = np.array([x0, y0, x1, y1], dtype=np.float64)
    box = scale_boxes_to_model(tight, shape, preprocessing, image_size) + np.array([-margin, -margin, margin, margin])
    return np.clip(box, 0, image_size - 1)


class SlicePredictor(Protocol):
    """What :func:`propagate` needs of a predictor (:class:`~medsam_monai.predictor.MedSAMPredictor`)."""

    image_size: int
    encode_batch_size: int
    preprocessing: str

    def slice_embeddings(
        self,
        volume: np.ndarray,
        indices: Sequence[int],
        volume_key: Hashable | None = None,
        progress: ProgressCallback | None = None,
        cancel: CancelCheck | None = None,
    ) -> list[torch.Tensor]: ...

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
    ) -> SlicePrediction: ...


def validated_user_box(obj: ObjectPrompt, shape: tuple[int, int, int]) -> tuple[np.ndarray, int, int]:
    """The user's 2D box ``(x0, y0, x1, y1)`` and slice range ``z0, z1`` of an object in an (S, H, W)
    volume; ValueError (one line) when the box, label or points do not fit."""
    if len(obj.box) != 6:
        raise ValueError(f"a 3D box has 6 numbers (x0, y0, z0, x1, y1, z1), got {len(obj.box)}")
    x0, y0, z0, x1, y1, z1 = obj.box
    if not all(np.isfinite(obj.box)):
        raise ValueError(f"box {tuple(obj.box)} has a non-finite coordinate")
    if x0 > x1 or y0 > y1 or z0 > z1:
        raise ValueError(f"box {tuple(obj.box)} is reversed: give the lower corner first")
    if z0 != int(z0) or z1 != int(z1):
        raise ValueError(f"box slice range {z0}..{z1} must be whole slice indices")
    s, h, w = shape[:3]
    if x0 < 0 or y0 < 0 or z0 < 0 or x1 > w - 1 or y1 > h - 1 or z1 > s - 1:
        raise ValueError(f"box {tuple(obj.box)} is outside the volume (slices 0..{s - 1}, rows 0..{h - 1}, columns 0..{w - 1})")
    if obj.label <= 0:
        raise ValueError(f"label values start at 1, got {obj.label}")
    outside = sorted(z for z in obj.points if not z0 <= z <= z1)
    if outside:  # such points would silently be ignored
        raise ValueError(f"points on slices {outside} lie outside the box's slices {int(z0)}..{int(z1)}")
    outside = sorted(z for z in obj.mask_prompts if not z0 <= z <= z1)
    if outside:
        raise ValueError(f"mask prompts on slices {outside} lie outside the box's slices {int(z0)}..{int(z1)}")
    if not z0 <= obj.key_slice <= z1:
        raise ValueError(f"key slice {obj.key_slice} lies outside the box's slices {int(z0)}..{int(z1)}")
    for what, mask in [("key mask", obj.key_mask), *((f"mask prompt of slice {z}", m) for z, m in obj.mask_prompts.items())]:
        if mask is not None and mask.shape != (h, w):
            raise ValueError(f"the {what} is {mask.shape[0]}x{mask.shape[1]} but the slices are {h}x{w}")
    return np.array([x0, y0, x1, y1], dtype=np.float64), int(z0), int(z1)


def propagate(
    predictor: SlicePredictor,
    volume: np.ndarray,
    objects: Sequence[ObjectPrompt],
    volume_key: Hashable | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
    stop_when_empty: bool = False,
    margin: float = PROPAGATION_MARGIN_1024,
    multimask_output: bool = False,
    scores: dict[int, dict[int, np.ndarray]] | None = None,
) -> np.ndarray:
    """MedSAM's 3D inference (LiteMedSAM): one box per object, propagated slice by slice.

    For each object: the key slice gets the user's box; going up to ``z1`` and down to ``z0``, each
    slice gets the tight box of the previous slice's mask, enlarged by ``margin`` pixels of the 1024
    frame on every side and clipped to the image, or the user's box again when the previous mask is
    empty. A slice's points, if any, are added to its box prompt. No early stop unless
    ``stop_when_empty``. Where the masks of several objects overlap, the voxel goes to the object
    whose mask is the most probable there (the first of them on a tie), so the result does not
    depend on the order of the objects and a mask that leaks into its neighbour does not overwrite it.
    With ``multimask_output`` each slice gets SAM's three candidates and keeps the one of highest
    predicted IoU.

    Args:
        predictor: a :class:`~medsam_monai.predictor.MedSAMPredictor`; its ``encode_batch_size``
            slices are encoded per encoder call.
        volume: (S, H, W) display volume.
        objects: boxes ``(x0, y0, z0, x1, y1, z1)`` (inclusive), their label values and points.
        volume_key: the embedding cache key of ``volume`` (default: its content fingerprint).
        progress: called with (slices done, slices in all objects) after each slice.
        cancel: an Event or a callable; when set, :class:`Cancelled` is raised between slices.
        scores: if given, filled with ``{label: {slice: predicted IoUs (M,)}}`` of every predicted slice.

    Returns:
        (S, H, W) label volume (uint8, or uint16 for labels over 255): 0 background, each object's label on its voxels.
    """
    if volume_key is None:
        from .predictor import volume_fingerprint  # the predictor imports this module

        volume_key = volume_fingerprint(volume)
    dtype = np.uint8 if max((o.label for o in objects), default=0) < 256 else np.uint16
    labels = np.zeros(volume.shape[:3], dtype=dtype)  # an RGB volume (S, H, W, 3) has (S, H, W) labels
    # probability of the label written at each voxel; needed only to settle overlaps
    written = np.zeros(volume.shape[:3], dtype=np.float32) if len(objects) > 1 else None
    plans = [validated_user_box(o, volume.shape) for o in objects]  # all checked before any slice is encoded
    total = sum(z1 - z0 + 1 for _, z0, z1 in plans)
    done = 0
    for obj, (user_box, z0, z1) in zip(objects, plans):
        order = slice_order(z0, z1, obj.key_slice)
        masks: dict[int, np.ndarray] = {}
        probabilities: dict[int, np.ndarray] = {}
        encoded: dict[int, torch.Tensor] = {}
        for step, (z, previous) in enumerate(order):
            check_cancel(cancel)
            if stop_when_empty and previous is not None and not masks[previous].any():
                masks[z] = np.zeros(volume.shape[1:3], dtype=bool)
            elif previous is None and obj.key_mask is not None:
                masks[z] = obj.key_mask
                probabilities[z] = obj.key_mask.astype(np.float32)
            else:
                if z not in encoded:  # encode this slice and the next ones in one batch
                    batch = [zz for zz, _ in order[step : step + predictor.encode_batch_size]]
                    encoded = dict(zip(batch, predictor.slice_embeddings(volume, batch, volume_key, cancel=cancel)))
                prediction = _predict_slice(
                    predictor, encoded[z], obj, z, masks.get(previous), user_box, volume.shape, margin, multimask_output
                )
                best = int(np.argmax(prediction.iou))
                masks[z] = prediction.masks[best]
                if written is not None:
                    probabilities[z] = prediction.probabilities[best]
                if scores is not None:
                    scores.setdefault(obj.label, {})[z] = prediction.iou
            done += 1
            if progress is not None:
                progress(done, total)
        for z, mask in masks.items():
            if written is None:
                labels[z][mask] = obj.label
            elif z in probabilities:
                wins = mask & (probabilities[z] > written[z])
                labels[z][wins] = obj.label
                written[z][wins] = probabilities[z][wins]
    return labels


def _predict_slice(
    predictor: SlicePredictor,
    embedding: torch.Tensor,
    obj: ObjectPrompt,
    z: int,
    previous_mask: np.ndarray | None,
    user_box: np.ndarray,
    shape: tuple[int, ...],
    margin: float,
    multimask_output: bool = False,
) -> SlicePrediction:
    """One slice of an object: its propagated box plus its points and mask prompt, if any."""
    image_hw = (int(shape[1]), int(shape[2]))
    box = propagated_box(previous_mask, user_box, image_hw, predictor.image_size, margin, predictor.preprocessing)
    coords, point_labels = obj.points.get(z, (None, None))
    mask = obj.mask_prompts.get(z)
    mask_input = None if mask is None else mask_prompt_logits(mask, predictor.preprocessing, predictor.image_size)
    return predictor.predict_from_embedding(
        embedding,
        image_hw,
        box=box,
        points=coords,
        point_labels=point_labels,
        mask_input=mask_input,
        multimask_output=multimask_output,
        box_in_model_frame=True,
    )
