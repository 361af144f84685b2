"""Every error the server answers: a status, a one-line ``detail`` and a machine-readable ``code``.

Nothing reaches the client as a traceback: bad input is a 4xx saying what was wrong, and an
unexpected failure is a 500 saying only its type and message (the traceback goes to the log).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import one_line

log = logging.getLogger("medsam_monai.server")


class ApiError(Exception):
    """An answer other than success; raised anywhere in a request, rendered by the handler."""

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers


def error_response(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """Every error answer: ``{"detail", "code"}``, the detail as one line whatever produced it."""
    return JSONResponse({"detail": one_line(detail), "code": code}, status_code=status, headers=headers)


def unauthorized() -> ApiError:
    return ApiError(
        401,
        "unauthorized",
        "missing or wrong token: send the header 'Authorization: Bearer <token>'",
        {"WWW-Authenticate": "Bearer"},
    )


def validation_message(errors: Sequence[Mapping[str, Any]]) -> str:
    """Pydantic's errors as one line: ``volume.shape: List should have at least 3 items; ...``."""
    parts = []
    for item in errors[:5]:
        location = ".".join(str(p) for p in item.get("loc", ()) if p != "body")
        message = str(item.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{location}: {message}" if location else message)
    more = len(errors) - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    422: "invalid_request",
}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, err: ApiError) -> JSONResponse:
        return error_response(err.status, err.code, err.detail, err.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_request", validation_message(err.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException) -> JSONResponse:
        # Unknown paths and methods: FastAPI's own 404/405, in this server's error format.
        return error_response(err.status_code, _CODES.get(err.status_code, "error"), str(err.detail), err.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception) -> JSONResponse:
        log.exception("unexpected error in %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", f"internal error: {type(err).__name__}: {err}")
