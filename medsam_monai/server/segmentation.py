"""A segmentation request in a session: validated into a plan (display frame), then run.

The steps are those of :func:`medsam_monai.segment.segment_volume` (the main job), with the
session's own embedding key, so that for the same voxels, geometry and box the labels are exactly
what ``medsam segment`` writes. Points go to the slice they lie on; a mask prompt (an earlier
result to refine) becomes the dense prompt of each segmented slice it has voxels on; with
``multimask`` each slice keeps the candidate of highest predicted IoU.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..io import Volume
from ..masks import mask_box
from ..orientation import DisplayLayout, box_ijk_to_display, from_display, ijk_to_display_index, nearest_voxel, to_display
from ..predictor import Cancelled, MedSAMPredictor, ObjectPrompt
from ..propagation import SlicePoints, key_slice, propagate
from ..segment import check_voxel_box, ras_box_to_voxel_box
from ..transforms import mask_prompt_logits
from ..wire import CodecError, decode_array, volume_ras_bounds
from .models import MaskPrompt, Point, SegmentRequest
from .runtime import embedding_key
from .sessions import Session

ProgressCallback = Callable[[int, int], None]
CancelCheck = Callable[[], bool]


@dataclass(frozen=True)
class DisplayPoint:
    slice: int
    row: int
    col: int
    positive: bool


@dataclass(frozen=True)
class SegmentPlan:
    """A validated request: the box in the display frame of ``axis`` and the slices to segment."""

    kind = "segment"  # which jobs' path answers for it (not a field)

    session: Session
    axis: str
    layout: DisplayLayout
    box: tuple[int, int, int, int, int, int]  # (s0, r0, c0, s1, r1, c1), inclusive
    first: int  # display slices first..last are segmented
    last: int
    label: int
    propagate: bool
    points: tuple[DisplayPoint, ...] = field(default=())
    multimask: bool = False
    # display slice -> (rows, cols) bool mask: the dense prompt of the segmented slices it has voxels on
    mask_prompts: dict[int, np.ndarray] = field(default_factory=dict, compare=False)

    @property
    def slices(self) -> int:
        return self.last - self.first + 1

    @property
    def steps(self) -> int:
        """What a job's progress counts: slices."""
        return self.slices


@dataclass
class SegmentOutcome:
    """Labels of the segmented slices as a block of the volume's IJK grid."""

    block: np.ndarray  # uint8 [i, j, k]
    offset: tuple[int, int, int]
    slice_axis: int
    slice_range: tuple[int, int]
    seconds: float
    key_index: int = 0  # the key slice's index along slice_axis
    scores: list[tuple[int, list[float], int]] = field(default_factory=list)  # (index, candidates' IoU, kept), by index


def plan_segment(session: Session, request: SegmentRequest) -> SegmentPlan:
    """Check a request against its session's volume; ValueError (one line) when it does not fit."""
    mask_ijk = None if request.mask_prompt is None else mask_prompt_volume(request.mask_prompt, session.shape)
    if request.box is not None:
        box_ijk = check_voxel_box(request.box, session.shape)
    elif request.box_ras is not None:
        ras_box = clipped_to_image(request.box_ras, session.affine, session.shape)
        box_ijk = ras_box_to_voxel_box(ras_box, Volume(session.intensities, session.affine))
    else:  # the mask's extent
        lower, upper = mask_box(mask_ijk)  # type: ignore[arg-type]
        box_ijk = (*lower, *upper)
    layout = session.layout(request.axis)
    box = box_ijk_to_display(box_ijk, session.shape, layout)
    s0, s1 = box[0], box[3]
    key = key_slice(s0, s1)
    first, last = (s0, s1) if request.propagate else (key, key)
    points = tuple(_display_point(p, session, layout) for p in request.points)
    for point, given in zip(points, request.points):
        if not first <= point.slice <= last:
            where = f"ijk {given.ijk}" if given.ijk is not None else f"ras {given.ras} mm"
            raise ValueError(
                f"point at {where} lies on {request.axis} slice {point.slice}, outside the segmented "
                f"slices {first}..{last} of the box"
            )
    masks = {} if mask_ijk is None else slice_masks(mask_ijk, layout, first, last)
    return SegmentPlan(
        session, request.axis, layout, box, first, last, request.label, request.propagate, points, request.multimask, masks
    )


def mask_prompt_volume(prompt: MaskPrompt, shape: tuple[int, int, int]) -> np.ndarray:
    """The mask of a mask prompt as an ``[i, j, k]`` bool volume of ``shape``; ValueError (one line)
    when its block does not fit in the volume, is not an integer array, or has no voxel of its label.

    The block's declared size is checked against the volume before anything is decoded, so a mask
    prompt never costs more than the volume's voxels (as bools) and its own block."""
    block = prompt.labels
    offset = prompt.offset
    if any(o + n > size for o, n, size in zip(offset, block.shape, shape)):
        raise ValueError(
            f"mask_prompt: a block of shape {block.shape} at offset {offset} does not fit in the volume of shape {list(shape)}"
        )
    if not np.issubdtype(np.dtype(block.dtype), np.integer):
        raise ValueError(f"mask_prompt: labels must be an integer array, got {block.dtype}")
    fields = {"dtype": block.dtype, "shape": block.shape, "compression": block.compression, "data": block.data}
    try:
        labels = decode_array(fields, int(np.prod(block.shape)) * np.dtype(block.dtype).itemsize)
    except CodecError as err:
        raise ValueError(f"mask_prompt: {err}") from None
    mask = np.zeros(shape, dtype=bool)
    i, j, k = offset
    mask[i : i + labels.shape[0], j : j + labels.shape[1], k : k + labels.shape[2]] = labels == prompt.label_value
    if not mask.any():
        raise ValueError(f"mask_prompt: the labels have no voxel of label_value {prompt.label_value}")
    return mask


def slice_masks(mask_ijk: np.ndarray, layout: DisplayLayout, first: int, last: int) -> dict[int, np.ndarray]:
    """The (rows, cols) masks of display slices ``first..last`` that have voxels, by display slice."""
    display = to_display(mask_ijk, layout)
    return {z: np.ascontiguousarray(display[z]) for z in range(first, last + 1) if display[z].any()}


def clipped_to_image(ras_box: Sequence[float], affine: np.ndarray, shape: Sequence[int], margin_mm: float = 1.0) -> list[float]:
    """An RAS box ``(x0, y0, z0, x1, y1, z1)`` cut to the RAS bounding box of the image's voxel
    centres (plus ``margin_mm``): the same voxel centres lie inside, and the numbers stay small
    enough for voxel arithmetic whatever the request said. ValueError when it misses the image."""
    given = np.asarray(ras_box, dtype=np.float64)
    lo, hi = np.minimum(given[:3], given[3:]), np.maximum(given[:3], given[3:])
    centres_lo, centres_hi = volume_ras_bounds(affine, shape)
    image_lo, image_hi = centres_lo - margin_mm, centres_hi + margin_mm
    if np.any(hi < image_lo) or np.any(lo > image_hi):
        raise ValueError(f"RAS box {tuple(float(v) for v in ras_box)} mm contains no voxel centre of the image")
    return [*np.maximum(lo, image_lo).tolist(), *np.minimum(hi, image_hi).tolist()]


def _display_point(point: Point, session: Session, layout: DisplayLayout) -> DisplayPoint:
    if point.ijk is not None:
        ijk = tuple(point.ijk)
        if any(v >= n for v, n in zip(ijk, session.shape)):
            raise ValueError(f"point {list(ijk)} is outside the image (voxel indices 0..{[n - 1 for n in session.shape]})")
    else:
        nearest = nearest_voxel(point.ras, session.affine, session.shape)
        if nearest is None:
            last = [n - 1 for n in session.shape]
            raise ValueError(f"point at RAS {point.ras} mm is outside the image (voxel indices 0..{last})")
        ijk = nearest
    s, r, c = ijk_to_display_index(ijk, session.shape, layout)
    return DisplayPoint(s, r, c, point.positive)


def run_segment(
    predictor: MedSAMPredictor,
    plan: SegmentPlan,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
) -> SegmentOutcome:
    """Segment the plan's slices; raises :class:`~medsam_monai.predictor.Cancelled` when
    ``cancel()`` turns true (checked between slices)."""
    start = time.perf_counter()
    _raise_if_cancelled(cancel)
    _, display = plan.session.display(plan.axis)
    key = embedding_key(plan.session, plan.axis)
    scores: dict[int, np.ndarray] = {}  # display slice -> the candidates' predicted IoU
    if not plan.propagate:
        labels = _segment_key_slice(predictor, display, key, plan, scores)
        if progress is not None:
            progress(1, 1)
    else:
        by_label: dict[int, dict[int, np.ndarray]] = {}
        labels = propagate(
            predictor,
            display,
            [object_prompt(plan)],
            volume_key=key,
            progress=progress,
            cancel=cancel,
            multimask_output=plan.multimask,
            scores=by_label,
        )
        scores = by_label.get(plan.label, {})
    return _outcome(labels, plan, time.perf_counter() - start, scores)


def _prompt_points(points: Sequence[DisplayPoint]) -> tuple[np.ndarray | None, list[int] | None]:
    """Points of one slice as the predictor takes them: (x, y) = (column, row), labels 1/0."""
    if not points:
        return None, None
    return np.array([[p.col, p.row] for p in points], dtype=np.float64), [int(p.positive) for p in points]


def object_prompt(plan: SegmentPlan) -> ObjectPrompt:
    """The plan as the propagation takes it: its display box and each slice's points."""
    s0, r0, c0, s1, r1, c1 = plan.box
    points: dict[int, SlicePoints] = {}
    for point in plan.points:  # (x, y) = (column, row), labels 1 positive / 0 negative
        coords, labels = points.get(point.slice, ((), ()))
        points[point.slice] = ((*coords, (float(point.col), float(point.row))), (*labels, int(point.positive)))
    return ObjectPrompt((c0, r0, s0, c1, r1, s1), label=plan.label, points=points, mask_prompts=plan.mask_prompts)


def _segment_key_slice(
    predictor: MedSAMPredictor, display: np.ndarray, key: object, plan: SegmentPlan, scores: dict[int, np.ndarray]
) -> np.ndarray:
    """The box (points, mask prompt) on the key slice only: what the 3D propagation starts from.
    ``scores`` gets the candidates' predicted IoU of that slice."""
    s0, r0, c0, s1, r1, c1 = plan.box
    coords, point_labels = _prompt_points(plan.points)
    mask = plan.mask_prompts.get(plan.first)
    mask_input = None if mask is None else mask_prompt_logits(mask, predictor.preprocessing, predictor.image_size)
    prediction = predictor.predict_slice(
        display,
        plan.first,
        box=(c0, r0, c1, r1),
        points=coords,
        point_labels=point_labels,
        mask_input=mask_input,
        multimask_output=plan.multimask,
        volume_key=key,
    )
    best = int(np.argmax(prediction.iou))  # as the propagation keeps it
    labels = np.zeros(display.shape, dtype=np.uint8)
    labels[plan.first][prediction.masks[best]] = plan.label
    scores[plan.first] = prediction.iou
    return labels


def _outcome(labels: np.ndarray, plan: SegmentPlan, seconds: float, scores: dict[int, np.ndarray]) -> SegmentOutcome:
    """The block of the IJK label grid that spans the segmented slices."""
    shape = plan.session.shape
    labels_ijk = from_display(labels, plan.layout)
    slice_axis = plan.layout.permutation[0]
    if plan.layout.flips[0]:  # display slice s is voxel index n - 1 - s along slice_axis
        first, last = shape[slice_axis] - 1 - plan.last, shape[slice_axis] - 1 - plan.first
    else:
        first, last = plan.first, plan.last
    region = [slice(None)] * 3
    region[slice_axis] = slice(first, last + 1)
    offset = [0, 0, 0]
    offset[slice_axis] = first
    block = np.asarray(labels_ijk[tuple(region)], dtype=np.uint8)
    count = shape[slice_axis]

    def voxel_index(z: int) -> int:  # display slice -> index along slice_axis
        return count - 1 - z if plan.layout.flips[0] else z

    slice_scores = sorted((voxel_index(z), [float(v) for v in iou], int(np.argmax(iou))) for z, iou in scores.items())
    key = voxel_index(key_slice(plan.box[0], plan.box[3]))
    return SegmentOutcome(block, tuple(offset), slice_axis, (first, last), seconds, key, slice_scores)  # type: ignore[arg-type]


def _raise_if_cancelled(cancel: CancelCheck | None) -> None:
    if cancel is not None and cancel():
        raise Cancelled("cancelled")


def cancel_check(*events: threading.Event) -> CancelCheck:
    """A cancel check that turns true once any of ``events`` is set."""
    return lambda: any(event.is_set() for event in events)
