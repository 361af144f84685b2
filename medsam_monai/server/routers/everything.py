"""``/sessions/{id}/everything``: SAM's automatic masks of one slice, as a job (progress, cancel).

Plain ``def`` handlers, as the sessions router's: FastAPI runs them in its thread pool.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends

from ..models import EverythingJobStatus, EverythingRequest
from ..state import ServerState, everything_status
from .sessions import ERRORS, server

router = APIRouter(prefix="/sessions/{session_id}/everything", tags=["everything"], responses=ERRORS)


@router.post(
    "",
    status_code=202,
    response_model=EverythingJobStatus,
    summary="Start SAM's automatic masks of one slice in the background; poll the job for progress and result",
)
def start_everything(session_id: str, body: EverythingRequest, state: ServerState = Depends(server)) -> EverythingJobStatus:
    return everything_status(state.start_everything(state.session(session_id), body))


@router.get(
    "/{job_id}", response_model=EverythingJobStatus, summary="An automatic-mask job's state and progress; its result once done"
)
def get_everything(session_id: str, job_id: str, state: ServerState = Depends(server)) -> EverythingJobStatus:
    return everything_status(state.job(state.session(session_id), job_id, kind="everything"))


@router.delete(
    "/{job_id}", response_model=EverythingJobStatus, summary="Cancel an automatic-mask job (it stops before its next point batch)"
)
def cancel_everything(session_id: str, job_id: str, state: ServerState = Depends(server)) -> EverythingJobStatus:
    job = state.job(state.session(session_id), job_id, kind="everything")
    job.cancel()
    return everything_status(job)
