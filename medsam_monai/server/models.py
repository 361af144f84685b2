"""The protocol's request and response bodies (pydantic): the OpenAPI schema is generated from them."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..automatic import GENERATOR_PARAMETERS
from .codec import COMPRESSIONS, DTYPES

Axis = Literal["axial", "coronal", "sagittal"]

# Every number a request carries is bounded here, so that no arithmetic on it can overflow (a box
# index of 10**30 or a RAS point of 1.7e308 mm used to end in a 500). The bounds are far beyond
# any real image: 2**31 - 1 voxels along an axis, 1e9 mm (1000 km) for coordinates and windows.
MAX_INDEX = 2**31 - 1
MAX_MM = 1e9
Finite = Annotated[float, Field(allow_inf_nan=False, ge=-MAX_MM, le=MAX_MM)]
Index = Annotated[int, Field(ge=0, le=MAX_INDEX)]
Size = Annotated[int, Field(ge=1, le=MAX_INDEX)]


class _Request(BaseModel):
    # A misspelt field (``boxes``, ``windwo``) is an error, not silently ignored.
    model_config = ConfigDict(extra="forbid")


class EncodedArray(_Request):
    """An array as raw little-endian bytes, first index fastest (i, then j, then k: the bytes of
    3D Slicer's ``arrayFromVolume``), zlib-compressed or not, base64-encoded."""

    dtype: Literal[DTYPES]  # type: ignore[valid-type]
    shape: Annotated[list[Size], Field(min_length=3, max_length=3, description="sizes along i, j, k")]
    compression: Literal[COMPRESSIONS] = "zlib"  # type: ignore[valid-type]
    data: str = Field(description="base64 of the (compressed) bytes")

    def __repr__(self) -> str:  # never the megabytes of data (in a log line, a traceback)
        return (
            f"EncodedArray(dtype={self.dtype!r}, shape={self.shape}, compression={self.compression!r}, "
            f"data=<{len(self.data)} chars>)"
        )


class CreateSession(_Request):
    """Upload a volume once; segmentation requests then refer to its session."""

    volume: EncodedArray
    ijk_to_ras: Annotated[
        list[Annotated[list[Finite], Field(min_length=4, max_length=4)]],
        Field(min_length=4, max_length=4, description="4x4 matrix from voxel indices (i, j, k, 1) to RAS mm"),
    ]
    modality: Literal["ct", "mr"] = "ct"
    window: Annotated[str, Field(max_length=64)] | tuple[Finite, Finite] | None = Field(
        None, description="CT window: abdomen (default), lung, brain, mediastinum, bone, 'LEVEL,WIDTH' or [level, width]"
    )
    prefetch: bool = Field(True, description="encode slices in the background, nearest to the focus first")
    focus_ijk: Annotated[list[Index], Field(min_length=3, max_length=3)] | None = Field(
        None, description="voxel whose slice is encoded first (default: the centre)"
    )
    focus_axis: Axis = "axial"


class Prefetch(_Request):
    """Encode the slices nearest to a voxel's slice in the background (e.g. the slice in view)."""

    ijk: Annotated[list[Index], Field(min_length=3, max_length=3)]
    axis: Axis = "axial"


class Point(_Request):
    """A point prompt: a voxel in IJK indices or a position in RAS mm (the nearest voxel)."""

    ijk: Annotated[list[Index], Field(min_length=3, max_length=3)] | None = None
    ras: Annotated[list[Finite], Field(min_length=3, max_length=3)] | None = None
    positive: bool = True

    @model_validator(mode="after")
    def _one_position(self) -> Point:
        if (self.ijk is None) == (self.ras is None):
            raise ValueError("give a point's position as either ijk or ras")
        return self


class MaskPrompt(_Request):
    """An earlier result to refine: ``labels == label_value`` on a block of the session's IJK grid.

    On each segmented slice where the mask has voxels it becomes that slice's dense prompt (SAM's
    low-res mask input), besides the box and points."""

    labels: EncodedArray = Field(description="an integer label block (or the whole volume) on the session's IJK grid")
    offset: Annotated[list[Index], Field(min_length=3, max_length=3)] = Field(
        default_factory=lambda: [0, 0, 0], description="IJK index of the block's first voxel"
    )
    label_value: int = Field(1, ge=1, le=MAX_INDEX, description="the mask is labels == label_value")


class SegmentRequest(_Request):
    """A box (IJK indices, inclusive, or RAS mm) and how to segment it.

    ``propagate``: segment every slice of the box's extent along ``axis`` (MedSAM's 3D
    propagation from the middle slice, as ``medsam segment``); otherwise only the box's middle
    slice. Points apply to the slice they lie on, which must be one of the segmented slices.
    With a ``mask_prompt`` the box may be left out: it is then the mask's tight IJK box.
    """

    box: Annotated[list[Index], Field(min_length=6, max_length=6, description="i0, j0, k0, i1, j1, k1 inclusive")] | None = None
    box_ras: Annotated[list[Finite], Field(min_length=6, max_length=6, description="x0, y0, z0, x1, y1, z1 (mm)")] | None = None
    axis: Axis = "axial"
    propagate: bool = True
    points: Annotated[list[Point], Field(max_length=64)] = Field(default_factory=list)
    label: int = Field(1, ge=1, le=255, description="value of the segmented voxels")
    multimask: bool = Field(False, description="SAM's three candidates per slice; the one of highest predicted IoU is kept")
    mask_prompt: MaskPrompt | None = Field(None, description="an earlier result to refine (each slice's dense prompt)")

    @model_validator(mode="after")
    def _one_box(self) -> SegmentRequest:
        if self.box is not None and self.box_ras is not None:
            raise ValueError("give either box (IJK) or box_ras (RAS mm), not both")
        if self.box is None and self.box_ras is None and self.mask_prompt is None:
            raise ValueError("give either box (IJK) or box_ras (RAS mm), or a mask_prompt whose extent is the box")
        return self


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    version: str
    variant: str | None
    device: str
    precision: str
    preprocessing: Literal["medsam", "sam"] = Field(description="the model's image pipeline (medsam serve --preprocessing)")
    auth_required: bool
    max_upload_bytes: int
    max_volume_bytes: int


class SessionInfo(BaseModel):
    session_id: str
    shape: list[int] = Field(description="sizes along i, j, k")
    dtype: str
    modality: str
    expires_in_s: float = Field(description="seconds until the session expires unless used")
    cached_slices: dict[str, int] = Field(description="encoded slices per axis")


class SliceScores(BaseModel):
    index: int = Field(description="IJK index of the slice along slice_axis")
    iou: list[float] = Field(description="predicted IoU of each candidate mask (3 with multimask, else 1)")
    kept: int = Field(description="the candidate written to the labels (the highest IoU)")


class SegmentResult(BaseModel):
    """The labels of the segmented slices: ``labels`` is the block of the volume's IJK grid that
    starts at ``offset`` and spans those slices (every voxel outside it is 0)."""

    labels: EncodedArray
    offset: list[int] = Field(description="IJK index of the block's first voxel")
    volume_shape: list[int] = Field(description="sizes of the whole volume along i, j, k")
    slice_axis: int = Field(description="voxel axis (0 = i, 1 = j, 2 = k) across the segmented slices")
    slice_range: list[int] = Field(description="first and last segmented index along slice_axis")
    axis: Axis
    voxels: int = Field(description="labelled voxels")
    seconds: float = Field(description="time spent segmenting (turns taken by other requests included)")
    key_index: int = Field(description="IJK index along slice_axis of the key slice (the one given the box)")
    scores: list[SliceScores] = Field(
        default_factory=list, description="the candidates' predicted IoUs of every slice the network segmented, by index"
    )


JobState = Literal["queued", "running", "done", "failed", "cancelled"]


class JobStatus(BaseModel):
    job_id: str
    state: JobState
    done: int = Field(description="slices segmented so far")
    total: int = Field(description="slices to segment")
    detail: str | None = Field(None, description="why the job failed or was cancelled")
    result: SegmentResult | None = Field(None, description="present once the state is done")


# ----- automatic masks ("segment everything") on one slice ---------------------------------------

Fraction = Annotated[float, Field(allow_inf_nan=False, ge=0.0, le=1.0)]
# Bounds of SAM's parameters: far beyond SAM's own settings (32 points a side, 64 a batch, 1 crop
# layer), low enough that one request cannot ask for hours of work or gigabytes of masks.
MAX_POINTS_PER_SIDE = 128
MAX_POINTS_PER_BATCH = 256
MAX_CROP_LAYERS = 3
MAX_GRID_POINTS = 16384
# SAM's defaults of its generator parameters (the fields below keep their types and bounds here).
SAM_DEFAULTS = GENERATOR_PARAMETERS


class EverythingRequest(_Request):
    """Masks of everything on one slice: SAM's automatic mask generator (its parameters' names and
    defaults), then the medical filters. The slice: exactly one of ``ijk``, ``ras``, ``slice``."""

    axis: Axis = "axial"
    ijk: Annotated[list[Index], Field(min_length=3, max_length=3)] | None = Field(
        None, description="a voxel of the slice (only its index along the slice axis matters)"
    )
    ras: Annotated[list[Finite], Field(min_length=3, max_length=3)] | None = Field(
        None, description="a point (mm) of the slice: the slice through its nearest voxel"
    )
    slice: Index | None = Field(
        None,
        description="display slice index along axis (axial: inferior to superior, coronal: posterior to "
        "anterior, sagittal: right to left)",
    )
    points_per_side: int | None = Field(
        SAM_DEFAULTS["points_per_side"], ge=1, le=MAX_POINTS_PER_SIDE, description="null with point_grids"
    )
    points_per_batch: int = Field(SAM_DEFAULTS["points_per_batch"], ge=1, le=MAX_POINTS_PER_BATCH)
    pred_iou_thresh: Fraction = SAM_DEFAULTS["pred_iou_thresh"]
    stability_score_thresh: Fraction = SAM_DEFAULTS["stability_score_thresh"]
    stability_score_offset: float = Field(SAM_DEFAULTS["stability_score_offset"], allow_inf_nan=False, ge=0.0, le=100.0)
    box_nms_thresh: Fraction = SAM_DEFAULTS["box_nms_thresh"]
    crop_n_layers: int = Field(SAM_DEFAULTS["crop_n_layers"], ge=0, le=MAX_CROP_LAYERS)
    crop_nms_thresh: Fraction = SAM_DEFAULTS["crop_nms_thresh"]
    crop_overlap_ratio: float = Field(SAM_DEFAULTS["crop_overlap_ratio"], allow_inf_nan=False, ge=0.0, lt=1.0)
    crop_n_points_downscale_factor: int = Field(SAM_DEFAULTS["crop_n_points_downscale_factor"], ge=1, le=16)
    point_grids: (
        Annotated[
            list[
                Annotated[
                    list[Annotated[list[Fraction], Field(min_length=2, max_length=2)]],
                    Field(min_length=1, max_length=MAX_GRID_POINTS),
                ]
            ],
            Field(min_length=1, max_length=MAX_CROP_LAYERS + 1),
        ]
        | None
    ) = Field(SAM_DEFAULTS["point_grids"], description="one list of [x, y] in [0, 1] per crop layer, instead of points_per_side")
    min_mask_region_area: float = Field(SAM_DEFAULTS["min_mask_region_area"], allow_inf_nan=False, ge=0, le=float(MAX_INDEX))
    min_area_mm2: float | None = Field(None, allow_inf_nan=False, ge=0, le=MAX_MM, description="drop smaller masks")
    max_area_fraction: float | None = Field(
        None, allow_inf_nan=False, gt=0, le=1, description="drop masks covering more of the slice"
    )

    @model_validator(mode="after")
    def _one_slice(self) -> EverythingRequest:
        given = [name for name in ("ijk", "ras", "slice") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give the slice as exactly one of ijk, ras or slice (got {', '.join(given) or 'none'})")
        return self


class EverythingRecord(BaseModel):
    """One mask of SAM's automatic generator, without the mask itself (the label block holds it)."""

    label: int = Field(description="its value in the result's labels (record n has label n)")
    area: int = Field(description="pixels of the whole mask")
    area_mm2: float
    voxels: int = Field(description="pixels of its label visible in the labels (smaller masks lie on top)")
    bbox: list[int] = Field(description="SAM's [x, y, w, h] in display slice pixels (x column, y row)")
    bbox_ijk: list[int] = Field(description="the same box as inclusive IJK indices i0, j0, k0, i1, j1, k1")
    predicted_iou: float
    stability_score: float
    point_coords: list[list[float]] = Field(description="SAM's [[x, y]]: the point that gave the mask, display pixels")
    point_ijk: list[int] = Field(description="the voxel nearest to that point")
    crop_box: list[int] = Field(description="SAM's [x, y, w, h] of the crop the mask was found in")


class EverythingResult(BaseModel):
    """The masks of one slice: ``labels`` is the block of the IJK grid that is that slice."""

    labels: EncodedArray = Field(description="uint16, 0 background, record n has label n; larger masks under smaller")
    offset: list[int] = Field(description="IJK index of the block's first voxel")
    volume_shape: list[int]
    slice_axis: int = Field(description="voxel axis (0 = i, 1 = j, 2 = k) across the slice")
    slice_range: list[int] = Field(description="the slice's index along slice_axis, twice")
    axis: Axis
    masks: int = Field(description="records (after the medical filters)")
    generated: int = Field(description="masks SAM's generator found (before the medical filters)")
    pixel_spacing_mm: list[float] = Field(description="row and column spacing of the display slice")
    records: list[EverythingRecord]
    seconds: float


class EverythingJobStatus(BaseModel):
    job_id: str
    state: JobState
    done: int = Field(description="point batches decoded so far")
    total: int = Field(description="point batches in all (over all crops)")
    detail: str | None = Field(None, description="why the job failed or was cancelled")
    result: EverythingResult | None = Field(None, description="present once the state is done")


class ErrorBody(BaseModel):
    detail: str = Field(description="what was wrong, in one line")
    code: str = Field(
        description="machine-readable: unauthorized, session_not_found, job_not_found, invalid_request, "
        "payload_too_large, busy, conflict, forbidden_host, timeout, shutting_down, internal_error"
    )
