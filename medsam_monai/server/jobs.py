"""Jobs: a segmentation or an automatic-mask request run in the background, with progress and cancel.

A job belongs to a session (it is cancelled when the session goes) and passes the model gate like
any request; a pool of ``job_workers`` threads waits there, so jobs queue rather than pile up.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from ..errors import one_line
from ..predictor import Cancelled
from .segmentation import SegmentOutcome, SegmentPlan, cancel_check

log = logging.getLogger("medsam_monai.server")

# Finished jobs a session keeps (with their results) until they are fetched or pushed out.
FINISHED_JOBS_KEPT = 8


class TooManyJobs(RuntimeError):
    """The session already has as many unfinished jobs as allowed."""


class Job:
    """One segmentation or automatic-mask request: its state, progress, and result or error. Thread-safe.

    ``plan`` is a :class:`~.segmentation.SegmentPlan` or an :class:`~.everything.EverythingPlan`
    (``kind`` says which; ``steps``, the units its progress counts)."""

    def __init__(self, plan: SegmentPlan) -> None:
        self.id = secrets.token_urlsafe(12)
        self.plan = plan
        self.kind: str = plan.kind
        self.state = "queued"
        self.done = 0
        self.total = plan.steps
        self.detail: str | None = None
        self.outcome: SegmentOutcome | None = None
        self.result: object | None = None  # the outcome as the protocol's SegmentResult, once asked for
        self.cancel_requested = threading.Event()
        self._lock = threading.Lock()

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")

    def progress(self, done: int, total: int) -> None:
        with self._lock:
            self.done, self.total = done, total

    def cancel(self) -> None:
        self.cancel_requested.set()

    def snapshot(self) -> tuple[str, int, int, str | None, SegmentOutcome | None]:
        with self._lock:
            return self.state, self.done, self.total, self.detail, self.outcome

    def set_state(self, state: str, detail: str | None = None, outcome: SegmentOutcome | None = None) -> None:
        with self._lock:
            self.state, self.detail, self.outcome = state, detail, outcome


class JobRunner:
    """Runs jobs on a thread pool through ``run(plan, progress, cancel) -> SegmentOutcome``."""

    def __init__(
        self,
        run: Callable[..., SegmentOutcome],
        workers: int,
        max_per_session: int,
        stopping: threading.Event | None = None,
        on_freed: Callable[[], None] | None = None,
    ) -> None:
        self._run = run
        self._stopping = stopping or threading.Event()  # the server is shutting down: every job stops
        self._on_freed = on_freed or (lambda: None)  # told when a job let go of a closed session's arrays
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="medsam-job")
        self._max_per_session = max_per_session
        self._lock = threading.Lock()

    def submit(self, plan: SegmentPlan) -> Job:
        session = plan.session
        job = Job(plan)
        with self._lock:
            unfinished = sum(1 for j in list(session.jobs.values()) if not j.finished)
            if unfinished >= self._max_per_session:
                raise TooManyJobs(
                    f"session has {unfinished} unfinished jobs (at most {self._max_per_session}); wait for one or cancel it"
                )
            session.jobs[job.id] = job
            _forget_old_jobs(session.jobs)
        self._pool.submit(self._execute, job)
        return job

    def _execute(self, job: Job) -> None:
        closed = self._run_job(job)
        if closed.is_set():  # this job held the last references to its session's arrays: let them go
            job.plan = None  # type: ignore[assignment]
            self._on_freed()

    def _run_job(self, job: Job) -> threading.Event:
        """Run ``job`` to its end state; its session's ``closed`` event."""
        session = job.plan.session
        cancel = cancel_check(job.cancel_requested, session.closed, self._stopping)
        try:
            outcome = self._run(job.plan, progress=job.progress, cancel=cancel, on_start=lambda: job.set_state("running"))
        except Cancelled:
            job.set_state("cancelled", self._cancel_reason(job))
        except Exception as err:  # noqa: BLE001 - a failed job reports, the worker lives on
            log.exception("job %s of session %s failed", job.id, session.id)
            job.set_state("failed", f"internal error: {type(err).__name__}: {one_line(err)}")
        else:
            job.progress(job.total, job.total)
            job.set_state("done", outcome=outcome)
        return session.closed

    def _cancel_reason(self, job: Job) -> str:
        if job.plan.session.closed.is_set():
            return "the session was closed"
        if self._stopping.is_set() and not job.cancel_requested.is_set():
            return "the server is shutting down"
        return "cancelled by the client"

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _forget_old_jobs(jobs: dict) -> None:
    finished = [job_id for job_id, job in jobs.items() if job.finished]
    for job_id in finished[: max(0, len(finished) - FINISHED_JOBS_KEPT)]:
        del jobs[job_id]
