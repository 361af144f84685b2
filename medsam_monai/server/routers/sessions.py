"""``/sessions``: upload a volume once, segment in it (now or as a job), close it.

Handlers are plain ``def``: FastAPI runs them in its thread pool, so a segmentation waiting for
the model never blocks the event loop (nor ``/health``). The upload is the exception: it takes
its body itself, so that the raw JSON is freed as soon as it is parsed (FastAPI would keep it,
and a copy of its text, until the answer), then works in the thread pool too.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from ..errors import unauthorized
from ..guard import token_matches
from ..models import CreateSession, ErrorBody, JobStatus, Prefetch, SegmentRequest, SegmentResult, SessionInfo
from ..state import ServerState, job_status

_bearer = HTTPBearer(auto_error=False, description="the server's token (medsam serve --token), if it has one")


def server(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> ServerState:
    """The server state, once the token checks out (the guard middleware checked it already;
    this also documents the scheme in the OpenAPI schema)."""
    state: ServerState = request.app.state.server
    token = state.settings.token
    if token is not None and (credentials is None or not token_matches(f"Bearer {credentials.credentials}", token)):
        raise unauthorized()
    return state


# The error answers every session route documents (the everything router shares them).
ERRORS = {status: {"model": ErrorBody} for status in (400, 401, 404, 408, 413, 422, 429, 503)}

router = APIRouter(prefix="/sessions", tags=["sessions"], responses=ERRORS)


# The upload's body as the OpenAPI schema shows it (the handler parses it itself; see above).
UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{CreateSession.__name__}"}}},
    }
}


@router.post("", status_code=201, response_model=SessionInfo, summary="Upload a volume: a new session", openapi_extra=UPLOAD_BODY)
async def create_session(request: Request, state: ServerState = Depends(server)) -> SessionInfo:
    holder = [await _whole_body(request)]  # the thread takes it out, so that nothing here keeps it
    session = await run_in_threadpool(state.create_session_from_body, holder)
    return state.info(session)


async def _whole_body(request: Request) -> bytes | bytearray:
    """The request body without a copy (the guard has read it into one buffer already)."""
    parts = [chunk async for chunk in request.stream() if chunk]
    return parts[0] if len(parts) == 1 else b"".join(parts)


@router.get("/{session_id}", response_model=SessionInfo, summary="A session's volume, expiry and encoded slices")
def get_session(session_id: str, state: ServerState = Depends(server)) -> SessionInfo:
    return state.info(state.session(session_id))


@router.delete("/{session_id}", status_code=204, summary="Close a session (its jobs are cancelled)")
def close_session(session_id: str, state: ServerState = Depends(server)) -> Response:
    state.close_session(session_id)
    return Response(status_code=204)


@router.post(
    "/{session_id}/prefetch",
    status_code=202,
    response_model=SessionInfo,
    summary="Encode the slices nearest to a voxel's slice first, in the background",
)
def prefetch(session_id: str, body: Prefetch, state: ServerState = Depends(server)) -> SessionInfo:
    session = state.session(session_id)
    state.prefetch(session, body)
    return state.info(session)


@router.post(
    "/{session_id}/segment",
    response_model=SegmentResult,
    summary="Segment a box now (one slice, or the box's slices with propagation)",
)
def segment(session_id: str, body: SegmentRequest, state: ServerState = Depends(server)) -> SegmentResult:
    return state.segment_now(state.session(session_id), body)


@router.post(
    "/{session_id}/jobs",
    status_code=202,
    response_model=JobStatus,
    summary="Start segmenting in the background; poll the job for progress and result",
)
def start_job(session_id: str, body: SegmentRequest, state: ServerState = Depends(server)) -> JobStatus:
    return job_status(state.start_job(state.session(session_id), body))


@router.get("/{session_id}/jobs/{job_id}", response_model=JobStatus, summary="A job's state and progress; its result once done")
def get_job(session_id: str, job_id: str, state: ServerState = Depends(server)) -> JobStatus:
    return job_status(state.job(state.session(session_id), job_id))


@router.delete("/{session_id}/jobs/{job_id}", response_model=JobStatus, summary="Cancel a job (it stops before its next slice)")
def cancel_job(session_id: str, job_id: str, state: ServerState = Depends(server)) -> JobStatus:
    job = state.job(state.session(session_id), job_id)
    job.cancel()
    return job_status(job)
