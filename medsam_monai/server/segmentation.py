"""A segmentation request in a session: validated into a plan (display frame), then run.

The steps are those of :func:`medsam_monai.segment.segment_volume` (the main job), with the
session's own embedding key, so that for the same voxels, geometry and box the labels are exactly
what ``medsam segment`` writes. Points, which the main job does not take, go to the slice they
lie on.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..io import Volume
from ..orientation import DisplayLayout, box_ijk_to_display, from_display, ijk_to_display_index
from ..predictor import Cancelled, MedSAMPredictor, ObjectPrompt
from ..propagation import SlicePoints, key_slice
from ..segment import check_voxel_box, ras_box_to_voxel_box
from .models import Point, SegmentRequest
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

    session: Session
    axis: str
    layout: DisplayLayout
    box: tuple[int, int, int, int, int, int]  # (s0, r0, c0, s1, r1, c1), inclusive
    first: int  # display slices first..last are segmented
    last: int
    label: int
    propagate: bool
    points: tuple[DisplayPoint, ...] = field(default=())

    @property
    def slices(self) -> int:
        return self.last - self.first + 1


@dataclass
class SegmentOutcome:
    """Labels of the segmented slices as a block of the volume's IJK grid."""

    block: np.ndarray  # uint8 [i, j, k]
    offset: tuple[int, int, int]
    slice_axis: int
    slice_range: tuple[int, int]
    seconds: float


def plan_segment(session: Session, request: SegmentRequest) -> SegmentPlan:
    """Check a request against its session's volume; ValueError (one line) when it does not fit."""
    if request.box is not None:
        box_ijk = check_voxel_box(request.box, session.shape)
    else:
        ras_box = clipped_to_image(request.box_ras, session.affine, session.shape)  # type: ignore[arg-type]
        box_ijk = ras_box_to_voxel_box(ras_box, Volume(session.intensities, session.affine))
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
    return SegmentPlan(session, request.axis, layout, box, first, last, request.label, request.propagate, points)


def clipped_to_image(ras_box: Sequence[float], affine: np.ndarray, shape: Sequence[int], margin_mm: float = 1.0) -> list[float]:
    """An RAS box ``(x0, y0, z0, x1, y1, z1)`` cut to the RAS bounding box of the image's voxel
    centres (plus ``margin_mm``): the same voxel centres lie inside, and the numbers stay small
    enough for voxel arithmetic whatever the request said. ValueError when it misses the image."""
    given = np.asarray(ras_box, dtype=np.float64)
    lo, hi = np.minimum(given[:3], given[3:]), np.maximum(given[:3], given[3:])
    corners = np.array(list(itertools.product(*[(0, n - 1) for n in shape])), dtype=np.float64)
    centres = corners @ affine[:3, :3].T + affine[:3, 3]
    image_lo, image_hi = centres.min(axis=0) - margin_mm, centres.max(axis=0) + margin_mm
    if np.any(hi < image_lo) or np.any(lo > image_hi):
        raise ValueError(f"RAS box {tuple(float(v) for v in ras_box)} mm contains no voxel centre of the image")
    return [*np.maximum(lo, image_lo).tolist(), *np.minimum(hi, image_hi).tolist()]


def _display_point(point: Point, session: Session, layout: DisplayLayout) -> DisplayPoint:
    if point.ijk is not None:
        ijk = tuple(point.ijk)
        if any(v >= n for v, n in zip(ijk, session.shape)):
            raise ValueError(f"point {list(ijk)} is outside the image (voxel indices 0..{[n - 1 for n in session.shape]})")
    else:
        continuous = (np.linalg.inv(session.affine) @ np.array([*point.ras, 1.0]))[:3]  # type: ignore[misc]
        nearest = np.rint(continuous)
        # Checked before turning into integers: a far point must be "outside", not an overflow.
        if not np.all(np.isfinite(nearest)) or np.any(nearest < 0) or np.any(nearest >= session.shape):
            last = [n - 1 for n in session.shape]
            raise ValueError(f"point at RAS {point.ras} mm is outside the image (voxel indices 0..{last})")
        ijk = tuple(int(v) for v in nearest)
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
    if not plan.propagate:
        labels = _segment_key_slice(predictor, display, key, plan)
        if progress is not None:
            progress(1, 1)
    else:
        labels = predictor.segment_3d(display, [object_prompt(plan)], volume_key=key, progress=progress, cancel=cancel)
    return _outcome(labels, plan, time.perf_counter() - start)


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
    return ObjectPrompt((c0, r0, s0, c1, r1, s1), label=plan.label, points=points)


def _segment_key_slice(predictor: MedSAMPredictor, display: np.ndarray, key: object, plan: SegmentPlan) -> np.ndarray:
    """The box (and points) on the key slice only: what the 3D propagation starts from."""
    s0, r0, c0, s1, r1, c1 = plan.box
    coords, point_labels = _prompt_points(plan.points)
    prediction = predictor.predict_slice(
        display, plan.first, box=(c0, r0, c1, r1), points=coords, point_labels=point_labels, volume_key=key
    )
    labels = np.zeros(display.shape, dtype=np.uint8)
    labels[plan.first][prediction.masks[0]] = plan.label
    return labels


def _outcome(labels: np.ndarray, plan: SegmentPlan, seconds: float) -> SegmentOutcome:
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
    return SegmentOutcome(block, tuple(offset), slice_axis, (first, last), seconds)  # type: ignore[arg-type]


def _raise_if_cancelled(cancel: CancelCheck | None) -> None:
    if cancel is not None and cancel():
        raise Cancelled("cancelled")


def cancel_check(*events: threading.Event) -> CancelCheck:
    """A cancel check that turns true once any of ``events`` is set."""
    return lambda: any(event.is_set() for event in events)
