"""Automatic masks ("segment everything") on one slice of a session: validated into a plan, then run.

SAM's automatic mask generator (:class:`medsam_monai.automatic.AutomaticMaskGenerator`, SAM's
parameters) on the display slice the network sees, then the medical filters, then one uint16 label
map (larger masks under smaller): the library's :func:`~medsam_monai.automatic.automatic_masks`, as
``medsam everything`` runs it. Here: the label map as a block of the IJK grid, and the records'
numbers in the IJK frame too.

Memory: the generator keeps the masks it found as run-length encodings (``uncompressed_rle``), never
one full mask per point; they are painted into the label map one at a time and dropped, so a finished
job holds one uint16 slice and the records' numbers. The whole slice's embedding is the session's
(cached, shared with box requests and prefetching); crops' embeddings are encoded once and not cached.
"""

from __future__ import annotations

import time
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..automatic import (
    GENERATOR_PARAMETERS,  # the request's fields that are SAM's generator parameters, under SAM's names
    AutomaticMaskGenerator,
    automatic_masks,
    display_pixel_spacing,
    point_batches,
    voxel_slice,
)
from ..orientation import (
    DisplayLayout,
    box_display_to_ijk,
    display_index_to_ijk,
    from_display,
    ijk_to_display_index,
    nearest_voxel,
)
from ..predictor import MedSAMPredictor
from ..propagation import check_cancel
from .models import EverythingRequest
from .runtime import embedding_key
from .segmentation import CancelCheck, ProgressCallback
from .sessions import Session


@dataclass(frozen=True)
class EverythingPlan:
    """A validated request: the display slice of ``axis`` and the generator's parameters."""

    kind = "everything"  # which jobs' path answers for it (not a field)

    session: Session
    axis: str
    layout: DisplayLayout
    slice: int  # display slice index
    parameters: dict[str, Any] = field(compare=False)  # SAM's, as AutomaticMaskGenerator takes them
    min_area_mm2: float | None
    max_area_fraction: float | None
    spacing_mm: tuple[float, float]  # (row, col) of the display slice
    batches: int  # point batches over all crops

    @property
    def steps(self) -> int:
        """What a job's progress counts: point batches."""
        return self.batches

    @property
    def slice_index(self) -> int:
        """The slice's index along its voxel axis."""
        return voxel_slice(self.slice, self.session.shape, self.layout)


@dataclass
class EverythingOutcome:
    """The masks of the slice: a uint16 label block of the IJK grid and one record per label."""

    block: np.ndarray  # uint16 [i, j, k], size 1 along slice_axis
    offset: tuple[int, int, int]
    slice_axis: int
    records: list[dict[str, Any]]  # label n is records[n - 1]
    generated: int  # masks before the medical filters
    seconds: float


def plan_everything(session: Session, request: EverythingRequest, predictor: MedSAMPredictor) -> EverythingPlan:
    """Check a request against its session's volume and SAM's rules; ValueError (one line) otherwise."""
    layout = session.layout(request.axis)
    display_slice = _display_slice(session, layout, request)
    parameters = {name: getattr(request, name) for name in GENERATOR_PARAMETERS}
    if parameters["point_grids"] is not None and "points_per_side" not in request.model_fields_set:
        parameters["points_per_side"] = None  # SAM's default 32 yields to the grids given
    generator = AutomaticMaskGenerator(predictor, **parameters)  # SAM's checks of the parameters together
    rows, cols = (session.shape[v] for v in layout.permutation[1:])
    spacing = display_pixel_spacing(session.affine, layout)
    return EverythingPlan(
        session,
        request.axis,
        layout,
        display_slice,
        parameters,
        request.min_area_mm2,
        request.max_area_fraction,
        spacing,
        point_batches(generator, (rows, cols)),
    )


def _display_slice(session: Session, layout: DisplayLayout, request: EverythingRequest) -> int:
    count = session.shape[layout.permutation[0]]
    last = [n - 1 for n in session.shape]
    if request.slice is not None:
        if request.slice >= count:
            raise ValueError(f"slice {request.slice} is outside the {request.axis} slices 0..{count - 1}")
        return int(request.slice)
    if request.ijk is not None:
        ijk = tuple(request.ijk)
        if any(v >= n for v, n in zip(ijk, session.shape)):
            raise ValueError(f"voxel {list(ijk)} is outside the image (voxel indices 0..{last})")
    else:
        nearest = nearest_voxel(request.ras, session.affine, session.shape)
        if nearest is None:
            raise ValueError(f"point at RAS {request.ras} mm is outside the image (voxel indices 0..{last})")
        ijk = nearest
    return ijk_to_display_index(ijk, session.shape, layout)[0]


class SliceEmbeddings:
    """``predictor`` as the generator sees it on display slice ``index`` of ``display``: the whole
    slice's embedding comes from (and goes to) the session's cache entry; a crop's is encoded once,
    uncached (the cache would key it by content, outside every session, until evicted). Everything
    else is the predictor's own."""

    def __init__(self, predictor: MedSAMPredictor, display: np.ndarray, index: int, key: Hashable) -> None:
        self.predictor = predictor
        self.display = display
        self.index = index
        self.key = key

    def __getattr__(self, name: str) -> Any:
        return getattr(self.predictor, name)

    def image_embedding(self, image: np.ndarray, key: Hashable | None = None):
        """(C, 64, 64) embedding of the slice or of a crop of it (``key`` is not used)."""
        # A crop of a crop-box grid has the slice's size only when it is the whole slice.
        if tuple(image.shape[:2]) == tuple(self.display.shape[1:3]):
            (embedding,) = self.predictor.slice_embeddings(self.display, [self.index], self.key)
            return embedding
        return self.predictor.encode(np.ascontiguousarray(image)[None])[0]


def run_everything(
    predictor: MedSAMPredictor,
    plan: EverythingPlan,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
) -> EverythingOutcome:
    """The plan's masks; raises :class:`~medsam_monai.predictor.Cancelled` when ``cancel()`` turns
    true (checked between point batches)."""
    start = time.perf_counter()
    check_cancel(cancel)
    _, display = plan.session.display(plan.axis)
    image = display[plan.slice]
    source = SliceEmbeddings(predictor, display, plan.slice, embedding_key(plan.session, plan.axis))
    generator = AutomaticMaskGenerator(source, **plan.parameters, output_mode="uncompressed_rle")  # type: ignore[arg-type]
    masks = automatic_masks(
        generator, image, plan.spacing_mm, plan.min_area_mm2, plan.max_area_fraction, progress=progress, cancel=cancel
    )
    generated, label_map = masks.generated, masks.label_map
    pixel_area = plan.spacing_mm[0] * plan.spacing_mm[1]
    records = [_record_numbers(record, n + 1, plan, pixel_area) for n, record in enumerate(masks.records)]
    del masks  # the masks' encodings: the label map holds the masks now
    visible = np.bincount(label_map.ravel(), minlength=len(records) + 1)
    for record in records:
        record["voxels"] = int(visible[record["label"]])
    block = from_display(label_map[None], plan.layout)  # (1, rows, cols) display -> the IJK block
    slice_axis = plan.layout.permutation[0]
    offset = [0, 0, 0]
    offset[slice_axis] = plan.slice_index
    return EverythingOutcome(
        np.ascontiguousarray(block),
        tuple(offset),
        slice_axis,
        records,
        generated,
        time.perf_counter() - start,  # type: ignore[arg-type]
    )


def _record_numbers(record: dict[str, Any], label: int, plan: EverythingPlan, pixel_area: float) -> dict[str, Any]:
    """A generator record without its mask, with its label, its area in mm² and its box and point in IJK."""
    shape = plan.session.shape
    x, y, w, h = (int(v) for v in record["bbox"])
    bbox_ijk = box_display_to_ijk((plan.slice, y, x, plan.slice, y + h, x + w), shape, plan.layout)
    rows, cols = (shape[v] for v in plan.layout.permutation[1:])
    px, py = record["point_coords"][0]
    # SAM's pixel centres are at whole coordinates (its prompt encoder adds 0.5): the nearest pixel
    row = min(max(int(np.rint(py)), 0), rows - 1)
    col = min(max(int(np.rint(px)), 0), cols - 1)
    return {
        "label": label,
        "area": int(record["area"]),
        "area_mm2": float(record["area"]) * pixel_area,
        "bbox": [x, y, w, h],
        "bbox_ijk": list(bbox_ijk),
        "predicted_iou": float(record["predicted_iou"]),
        "stability_score": float(record["stability_score"]),
        "point_coords": [[float(px), float(py)]],
        "point_ijk": list(display_index_to_ijk((plan.slice, row, col), shape, plan.layout)),
        "crop_box": [int(v) for v in record["crop_box"]],
    }
