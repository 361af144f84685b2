"""The server's state and operations: sessions, the model, jobs.

Routers only translate requests into these calls; failures leave as :class:`ApiError` with the
status and message the client gets.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import numpy as np

from .. import __version__
from ..checkpoints import detect_variant
from ..io import Volume
from ..orientation import check_affine
from ..predictor import Cancelled, MedSAMPredictor
from ..segment import normalized_volume
from ..transforms import check_finite
from .codec import CodecError, TooLarge, decode_array, encode_array
from .errors import ApiError
from .jobs import Job, JobRunner, TooManyJobs
from .models import CreateSession, Health, JobStatus, Prefetch, SegmentRequest, SegmentResult, SessionInfo
from .runtime import GatedPredictor, ModelGate, Prefetcher, SessionEmbeddingCache
from .segmentation import SegmentOutcome, SegmentPlan, cancel_check, plan_segment, run_segment
from .sessions import Session, SessionNotFound, SessionStore, StoreFull
from .settings import ServerSettings

log = logging.getLogger("medsam_monai.server")


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
        # Decoding and normalising an upload needs several times the volume's size for a moment.
        self._upload_slots = threading.BoundedSemaphore(2)
        self.variant = settings.variant or detect_variant(predictor.model.state_dict())
        self.store = SessionStore(settings.session_ttl_s, settings.max_sessions_bytes, on_remove=self._on_remove)
        self.prefetcher = Prefetcher(predictor, self.gate, settings.prefetch_slices)
        self.jobs = JobRunner(self.run, settings.job_workers, settings.max_jobs_per_session)
        self._stop = threading.Event()
        self._janitor = threading.Thread(target=self._expire_sessions, name="medsam-janitor", daemon=True)
        self._janitor.start()

    # ----- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        self._stop.set()
        self.store.clear()
        self.prefetcher.stop()
        self.jobs.shutdown()
        self._janitor.join(timeout=5)

    def _expire_sessions(self) -> None:
        period = max(0.05, min(self.settings.session_ttl_s / 4, 30.0))
        while not self._stop.wait(period):
            self.store.expire()

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
            auth_required=self.settings.token is not None,
            max_upload_bytes=self.settings.max_upload_bytes,
            max_volume_bytes=self.settings.max_volume_bytes,
        )

    # ----- sessions -------------------------------------------------------------------------

    def create_session(self, body: CreateSession) -> Session:
        """Decode, normalise and keep an uploaded volume; start encoding it in the background."""
        with self._upload_slots:
            session = self._decoded_session(body)
        focus = body.focus_ijk or [n // 2 for n in session.shape]
        _check_voxel(focus, session.shape)
        try:
            self.store.add(session)
        except StoreFull as err:
            raise ApiError(413 if err.too_large else 503, "payload_too_large" if err.too_large else "busy", str(err)) from None
        if body.prefetch:
            self.prefetcher.focus(session, body.focus_axis, tuple(focus))  # type: ignore[arg-type]
        return session

    def _decoded_session(self, body: CreateSession) -> Session:
        try:
            array = decode_array(body.volume.model_dump(), self.settings.max_volume_bytes)
        except TooLarge as err:
            raise ApiError(413, "payload_too_large", f"volume: {err}") from None
        except CodecError as err:
            raise ApiError(422, "invalid_request", f"volume: {err}") from None
        try:
            affine = check_affine(np.array(body.ijk_to_ras, dtype=float))
            check_finite(array)
            window = list(body.window) if isinstance(body.window, tuple) else body.window
            intensities = normalized_volume(Volume(array, affine), body.modality, window)
        except ValueError as err:
            raise ApiError(422, "invalid_request", str(err)) from None
        return Session(intensities, affine, dtype=body.volume.dtype, modality=body.modality)

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
        plan: SegmentPlan,
        progress: Callable[[int, int], None] | None = None,
        cancel: Callable[[], bool] | None = None,
        on_start: Callable[[], None] | None = None,
    ) -> SegmentOutcome:
        """Run a plan; its network calls take turns with other requests', before background work."""
        with plan.session.in_use(), self.gate.request():
            if on_start is not None:
                on_start()
            try:
                return run_segment(self.model, plan, progress, cancel)
            finally:
                self.store.touch(plan.session)
                if plan.session.closed.is_set():  # closed meanwhile: drop what its last slice cached
                    self.cache.discard_session(plan.session.id)

    def segment_now(self, session: Session, body: SegmentRequest) -> SegmentResult:
        plan = self.plan(session, body)
        try:
            outcome = self.run(plan, cancel=cancel_check(session.closed))
        except Cancelled:
            raise ApiError(409, "conflict", "the session was closed while segmenting") from None
        return result_of(plan, outcome)

    def start_job(self, session: Session, body: SegmentRequest) -> Job:
        plan = self.plan(session, body)
        try:
            return self.jobs.submit(plan)
        except TooManyJobs as err:
            raise ApiError(429, "busy", str(err)) from None

    def job(self, session: Session, job_id: str) -> Job:
        job = session.jobs.get(job_id)
        if job is None:
            raise ApiError(404, "job_not_found", f"unknown job {job_id!r} in session {session.id!r}")
        return job


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
    )


def job_status(job: Job) -> JobStatus:
    state, done, total, detail, outcome = job.snapshot()
    result = None
    if outcome is not None:
        if job.result is None:  # encoded once, however often the client polls
            job.result = result_of(job.plan, outcome)
        result = job.result
    return JobStatus(job_id=job.id, state=state, done=done, total=total, detail=detail, result=result)  # type: ignore[arg-type]
