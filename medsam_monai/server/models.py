"""The protocol's request and response bodies (pydantic): the OpenAPI schema is generated from them."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

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


class SegmentRequest(_Request):
    """A box (IJK indices, inclusive, or RAS mm) and how to segment it.

    ``propagate``: segment every slice of the box's extent along ``axis`` (MedSAM's 3D
    propagation from the middle slice, as ``medsam segment``); otherwise only the box's middle
    slice. Points apply to the slice they lie on, which must be one of the segmented slices.
    """

    box: Annotated[list[Index], Field(min_length=6, max_length=6, description="i0, j0, k0, i1, j1, k1 inclusive")] | None = None
    box_ras: Annotated[list[Finite], Field(min_length=6, max_length=6, description="x0, y0, z0, x1, y1, z1 (mm)")] | None = None
    axis: Axis = "axial"
    propagate: bool = True
    points: Annotated[list[Point], Field(max_length=64)] = Field(default_factory=list)
    label: int = Field(1, ge=1, le=255, description="value of the segmented voxels")

    @model_validator(mode="after")
    def _one_box(self) -> SegmentRequest:
        if (self.box is None) == (self.box_ras is None):
            raise ValueError("give either box (IJK) or box_ras (RAS mm)")
        return self


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    version: str
    variant: str | None
    device: str
    precision: str
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


JobState = Literal["queued", "running", "done", "failed", "cancelled"]


class JobStatus(BaseModel):
    job_id: str
    state: JobState
    done: int = Field(description="slices segmented so far")
    total: int = Field(description="slices to segment")
    detail: str | None = Field(None, description="why the job failed or was cancelled")
    result: SegmentResult | None = Field(None, description="present once the state is done")


class ErrorBody(BaseModel):
    detail: str = Field(description="what was wrong, in one line")
    code: str = Field(
        description="machine-readable: unauthorized, session_not_found, job_not_found, invalid_request, "
        "payload_too_large, busy, conflict, forbidden_host, timeout, shutting_down, internal_error"
    )
