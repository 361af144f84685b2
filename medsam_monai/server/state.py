"""The server's state and operations: sessions, the model, jobs.

Routers only translate requests into these calls; failures leave as :class:`ApiError` with the
status and message the client gets.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import numpy as np
from pydantic import BaseModel, ValidationError

from .. import __version__
from ..checkpoints import detect_variant
from ..orientation import check_affine
from ..predictor import Cancelled, MedSAMPredictor
from .codec import CodecError, TooLarge, check_declared, decode_array, encode_array
from .errors import ApiError, validation_message
from .everything import EverythingOutcome, EverythingPlan, plan_everything, run_everything
from .intake import IntakeBudget, IntakeBusy, check_normalisation, normalized_in_slabs, working_bytes
from .jobs import Job, JobRunner, TooManyJobs
from .memory import MemoryReleaser
from .models import (
    CreateSession,
    EverythingJobStatus,
    EverythingRequest,
    EverythingResult,
    Health,
    JobStatus,
    Prefetch,
    SegmentRequest,
    SegmentResult,
    SessionInfo,
    SliceScores,
)
from .runtime import GatedPredictor, ModelGate, Prefetcher, SessionEmbeddingCache
from .segmentation import SegmentOutcome, SegmentPlan, cancel_check, plan_segment, run_segment
from .sessions import BYTES_PER_VOXEL, Session, SessionNotFound, SessionStore, StoreFull
from .settings import ServerSettings

log = logging.getLogger("medsam_monai.server")

# Longest an upload waits for memory to decode in while others decode (then: 503, try again).
INTAKE_WAIT_S = 120.0

ModelT = TypeVar("ModelT", bound=BaseModel)


def parse_body(model: type[ModelT], holder: list[bytes | bytearray]) -> ModelT:
    """The request body in ``holder`` (taken out of it, so that the raw bytes are freed as soon as
    they are parsed) validated as ``model``; a 422 :class:`ApiError` in one line otherwise."""
    raw = holder.pop()
    try:
        return model.model_validate_json(raw)
    except ValidationError as err:
        raise ApiError(422, "invalid_request", validation_message(err.errors())) from None


class ServerState:
    """One model, its gate and cache, the sessions, the prefetcher and the job pool.

    It takes over ``predictor.cache`` (replaced by a :class:`SessionEmbeddingCache` of
    ``settings.cache_bytes``, so that a closed session's embeddings can be dropped).
    """

    def __init__(self, predictor: MedSAMPredictor, settings: ServerSettings) -> None:
        self.predictor = predictor
        self.settings = settings
        predictor.cache = SessionEmbeddingCache(settings.cache_bytes)
        self.cache: SessionEmbeddingCache = predictor.cache
        self.gate = ModelGate()
        self.model = GatedPredictor(predictor, self.gate)  # what requests use; prefetching uses `predictor`
        # Set when the server begins to stop: running segmentations end at their next slice (503).
        self.shutting_down = threading.Event()
        # Uploads decode side by side only while their working memory fits in what the largest
        # allowed one would need alone (uint8 voxels: the decoded bytes and the uint8 result).
        self.intake = IntakeBudget(2 * settings.max_volume_bytes)
        self.variant = settings.variant or detect_variant(predictor.model.state_dict())
        self.store = SessionStore(settings.session_ttl_s, settings.max_sessions_bytes, on_remove=self._on_remove)
        self.prefetcher = Prefetcher(predictor, self.gate, settings.prefetch_slices)
        # Freed memory goes back to the system once the server has been quiet for a second.
        self.releaser = MemoryReleaser()
        self.jobs = JobRunner(
            self.run, settings.job_workers, settings.max_jobs_per_session, self.shutting_down, on_freed=self.releaser.soon
        )
        self._stop = threading.Event()
        self._janitor = threading.Thread(target=self._expire_sessions, name="medsam-janitor", daemon=True)
        self._janitor.start()

    # ----- lifecycle ------------------------------------------------------------------------

    def begin_shutdown(self) -> None:
        """The server is stopping: refuse new requests (503 ``shutting_down``), end running
        segmentations and jobs at their next slice, and stop waiting for the network."""
        if not self.shutting_down.is_set():
            log.info("shutting down: running segmentations stop at their next slice")
        self.shutting_down.set()
        self.gate.refuse_waiting()

    def close(self) -> None:
        """Stop the background threads and drop every session (the app's lifespan ends)."""
        self._stop.set()
        self.store.clear()
        self.prefetcher.stop()
        self.jobs.shutdown()
        self._janitor.join(timeout=5)
        self.releaser.stop()

    def _expire_sessions(self) -> None:
        period = max(0.05, min(self.settings.session_ttl_s / 4, 30.0))
        while not self._stop.wait(period):
            if self.store.expire():
                self.releaser.soon()

    def _on_remove(self, session: Session, reason: str) -> None:
        """Everything a session leaves behind goes with it (its jobs see ``session.closed``)."""
        self.prefetcher.forget(session.id)
        self.cache.discard_session(session.id)
        log.info("session %s %s", session.id, reason)

    # ----- health ---------------------------------------------------------------------------

    def health(self) -> Health:
        return Health(
            version=__version__,
            variant=self.variant,
            device=str(self.predictor.device),
            precision=self.predictor.precision,
            preprocessing=self.predictor.preprocessing,  # type: ignore[arg-type]
            auth_required=self.settings.token is not None,
            max_upload_bytes=self.settings.max_upload_bytes,
            max_volume_bytes=self.settings.max_volume_bytes,
        )

    # ----- sessions -------------------------------------------------------------------------

    def create_session_from_body(self, holder: list[bytes | bytearray]) -> Session:
        """:meth:`create_session` of a raw JSON body (``holder``'s one item, taken out when parsed)."""
        return self.create_session(parse_body(CreateSession, holder))

    def create_session(self, body: CreateSession) -> Session:
        """Check, decode, normalise and keep an uploaded volume; start encoding it in the background.

        Every limit is checked against the declared dtype and shape before anything is allocated,
        and the working memory stays within :func:`~.intake.working_bytes` of the volume."""
        affine, shape = self._checked_upload(body)
        focus = body.focus_ijk or [n // 2 for n in shape]
        _check_voxel(focus, shape)
        try:
            with self._decoding_memory(body, shape):
                intensities = self._normalized(body)
            session = Session(intensities, affine, dtype=body.volume.dtype, modality=body.modality)
            try:
                self.store.add(session)
            except StoreFull as err:
                raise _store_full(err) from None
        finally:
            self.releaser.soon()  # the decoding buffers, and sessions dropped to make room
        if body.prefetch:
            self.prefetcher.focus(session, body.focus_axis, tuple(focus))  # type: ignore[arg-type]
        return session

    def _checked_upload(self, body: CreateSession) -> tuple[np.ndarray, tuple[int, int, int]]:
        """The affine and shape of an upload once every check that needs no voxel has passed:
        the declared size against ``max_volume_bytes`` and the session memory, the geometry, the
        modality and window (4xx otherwise, before any byte is decoded)."""
        volume = body.volume
        try:
            check_declared(volume.dtype, volume.shape, self.settings.max_volume_bytes)
        except TooLarge as err:
            raise ApiError(413, "payload_too_large", f"volume: {err}") from None
        except CodecError as err:
            raise ApiError(422, "invalid_request", f"volume: {err}") from None
        try:
            self.store.check_room(BYTES_PER_VOXEL * math.prod(volume.shape))
        except StoreFull as err:
            raise _store_full(err) from None
        try:
            affine = _check_spacing(check_affine(np.array(body.ijk_to_ras, dtype=float)))
            check_normalisation(body.modality, _window(body))
        except ValueError as err:
            raise ApiError(422, "invalid_request", str(err)) from None
        return affine, tuple(volume.shape)  # type: ignore[return-value]

    @contextmanager
    def _decoding_memory(self, body: CreateSession, shape: tuple[int, int, int]) -> Iterator[None]:
        """Hold the upload's working memory in the intake budget while it decodes (503 when the
        budget stays full, or the server stops, while it waits)."""
        needed = working_bytes(body.volume.dtype, math.prod(shape), body.modality)
        try:
            self.intake.acquire(needed, INTAKE_WAIT_S, give_up=self.shutting_down)
        except IntakeBusy as err:
            raise (_shutting_down() if self.shutting_down.is_set() else ApiError(503, "busy", str(err))) from None
        try:
            yield
        finally:
            self.intake.release(needed)

    def _normalized(self, body: CreateSession) -> np.ndarray:
        """The upload's uint8 intensities ``[i, j, k]``; its base64 text is dropped once decoded."""
        try:
            array = decode_array(_encoded_fields(body), self.settings.max_volume_bytes)
        except TooLarge as err:
            raise ApiError(413, "payload_too_large", f"volume: {err}") from None
        except CodecError as err:
            raise ApiError(422, "invalid_request", f"volume: {err}") from None
        finally:
            body.volume.data = ""  # the text can be as large as the voxels: free it before normalising
        try:
            return normalized_in_slabs(array, body.modality, _window(body))
        except ValueError as err:
            raise ApiError(422, "invalid_request", str(err)) from None

    def session(self, session_id: str) -> Session:
        try:
            return self.store.get(session_id)
        except SessionNotFound as err:
            raise ApiError(404, "session_not_found", str(err)) from None

    def close_session(self, session_id: str) -> None:
        try:
            self.store.remove(session_id, "closed by the client")
        except SessionNotFound as err:
            raise ApiError(404, "session_not_found", str(err)) from None
        self.releaser.soon()

    def info(self, session: Session) -> SessionInfo:
        return SessionInfo(
            session_id=session.id,
            shape=list(session.shape),
            dtype=session.dtype,
            modality=session.modality,
            expires_in_s=self.store.expires_in(session),
            cached_slices={axis: self.cache.count(session.id, axis) for axis in ("axial", "coronal", "sagittal")},
        )

    def prefetch(self, session: Session, body: Prefetch) -> None:
        _check_voxel(body.ijk, session.shape)
        self.prefetcher.focus(session, body.axis, tuple(body.ijk))  # type: ignore[arg-type]

    # ----- segmentation ---------------------------------------------------------------------

    def plan(self, session: Session, body: SegmentRequest) -> SegmentPlan:
        try:
            return plan_segment(session, body)
        except ValueError as err:
            raise ApiError(422, "invalid_request", str(err)) from None

    def run(
        self,
        plan: SegmentPlan | EverythingPlan,
        progress: Callable[[int, int], None] | None = None,
        cancel: Callable[[], bool] | None = None,
        on_start: Callable[[], None] | None = None,
    ) -> SegmentOutcome | EverythingOutcome:
        """Run a plan (a segmentation or automatic masks); its network calls take turns with other
        requests', before background work."""
        work = run_everything if isinstance(plan, EverythingPlan) else run_segment
        with plan.session.in_use(), self.gate.request():
            if on_start is not None:
                on_start()
            try:
                return work(self.model, plan, progress, cancel)  # type: ignore[arg-type]
            finally:
                self.store.touch(plan.session)
                if plan.session.closed.is_set():  # closed meanwhile: drop what its last slice cached
                    self.cache.discard_session(plan.session.id)

    def segment_now(self, session: Session, body: SegmentRequest) -> SegmentResult:
        plan = self.plan(session, body)
        try:
            outcome = self.run(plan, cancel=cancel_check(session.closed, self.shutting_down))
        except Cancelled:
            if self.shutting_down.is_set():
                raise _shutting_down() from None
            raise ApiError(409, "conflict", "the session was closed while segmenting") from None
        return result_of(plan, outcome)

    def start_job(self, session: Session, body: SegmentRequest) -> Job:
        return self._submit(self.plan(session, body))

    def start_everything(self, session: Session, body: EverythingRequest) -> Job:
        """Start SAM's automatic masks on one slice as a job (checked first: 422 on bad values)."""
        try:
            plan = plan_everything(session, body, self.model)
        except ValueError as err:
            raise ApiError(422, "invalid_request", str(err)) from None
        return self._submit(plan)

    def _submit(self, plan: SegmentPlan | EverythingPlan) -> Job:
        try:
            return self.jobs.submit(plan)  # type: ignore[arg-type]
        except TooManyJobs as err:
            raise ApiError(429, "busy", str(err)) from None

    def job(self, session: Session, job_id: str, kind: str = "segment") -> Job:
        """A job of ``session`` of ``kind`` (``segment`` or ``everything``: each has its own path)."""
        job = session.jobs.get(job_id)
        if job is None:
            raise ApiError(404, "job_not_found", f"unknown job {job_id!r} in session {session.id!r}")
        if job.kind != kind:
            what, path = ("an automatic-mask", "everything") if job.kind == "everything" else ("a segmentation", "jobs")
            raise ApiError(404, "job_not_found", f"job {job_id!r} is {what} job: ask /sessions/{session.id}/{path}/{job_id}")
        return job


def _encoded_fields(body: CreateSession) -> dict[str, object]:
    """The volume's fields as :func:`~.codec.decode_array` takes them (its text not copied)."""
    volume = body.volume
    return {"dtype": volume.dtype, "shape": volume.shape, "compression": volume.compression, "data": volume.data}


# Voxel sizes a session may have: an IJK-to-RAS matrix beyond them makes voxel arithmetic on RAS
# millimetres overflow, and no scanner comes near them.
SPACING_RANGE_MM = (1e-6, 1e6)


def _check_spacing(affine: np.ndarray) -> np.ndarray:
    """``affine``, refused (one-line ValueError) when it stretches any direction to a voxel size
    outside :data:`SPACING_RANGE_MM` (its 3x3 part's singular values)."""
    lo, hi = SPACING_RANGE_MM
    sizes = np.linalg.svd(affine[:3, :3], compute_uv=False)
    if sizes.min() < lo or sizes.max() > hi:
        raise ValueError(f"ijk_to_ras: voxel sizes {sizes.min():.3g}..{sizes.max():.3g} mm are outside {lo:g}..{hi:g} mm")
    return affine


def _window(body: CreateSession) -> object:
    return list(body.window) if isinstance(body.window, tuple) else body.window


def _store_full(err: StoreFull) -> ApiError:
    return ApiError(413 if err.too_large else 503, "payload_too_large" if err.too_large else "busy", str(err))


def _shutting_down() -> ApiError:
    return ApiError(503, "shutting_down", "the server is shutting down; send the request again once it is back")


def _check_voxel(ijk: list[int], shape: tuple[int, int, int]) -> None:
    if any(v >= n for v, n in zip(ijk, shape)):
        raise ApiError(422, "invalid_request", f"voxel {ijk} is outside the image (voxel indices 0..{[n - 1 for n in shape]})")


def result_of(plan: SegmentPlan, outcome: SegmentOutcome) -> SegmentResult:
    return SegmentResult(
        labels=encode_array(outcome.block),  # type: ignore[arg-type]
        offset=list(outcome.offset),
        volume_shape=list(plan.session.shape),
        slice_axis=outcome.slice_axis,
        slice_range=list(outcome.slice_range),
        axis=plan.axis,  # type: ignore[arg-type]
        voxels=int(np.count_nonzero(outcome.block)),
        seconds=round(outcome.seconds, 4),
        key_index=outcome.key_index,
        scores=[SliceScores(index=index, iou=iou, kept=kept) for index, iou, kept in outcome.scores],
    )


def everything_result_of(plan: EverythingPlan, outcome: EverythingOutcome) -> EverythingResult:
    index = outcome.offset[outcome.slice_axis]
    return EverythingResult(
        labels=encode_array(outcome.block),  # type: ignore[arg-type]
        offset=list(outcome.offset),
        volume_shape=list(plan.session.shape),
        slice_axis=outcome.slice_axis,
        slice_range=[index, index],
        axis=plan.axis,  # type: ignore[arg-type]
        masks=len(outcome.records),
        generated=outcome.generated,
        pixel_spacing_mm=list(plan.spacing_mm),
        records=outcome.records,  # type: ignore[arg-type]
        seconds=round(outcome.seconds, 4),
    )


def job_status(job: Job) -> JobStatus:
    state, done, total, detail, outcome = job.snapshot()
    result = None
    if outcome is not None:
        if job.result is None:  # encoded once, however often the client polls
            job.result = result_of(job.plan, outcome)
        result = job.result
    return JobStatus(job_id=job.id, state=state, done=done, total=total, detail=detail, result=result)  # type: ignore[arg-type]


def everything_status(job: Job) -> EverythingJobStatus:
    state, done, total, detail, outcome = job.snapshot()
    result = None
    if outcome is not None:
        if job.result is None:  # encoded once, however often the client polls
            job.result = everything_result_of(job.plan, outcome)  # type: ignore[arg-type]
        result = job.result
    return EverythingJobStatus(job_id=job.id, state=state, done=done, total=total, detail=detail, result=result)  # type: ignore[arg-type]
