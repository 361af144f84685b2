"""The FastAPI application: ``create_app(predictor, settings)``."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI

from .. import __version__
from ..predictor import MedSAMPredictor
from .errors import install_error_handlers
from .guard import RequestGuard
from .models import CreateSession
from .routers import everything, health, sessions
from .settings import ServerSettings
from .state import ServerState

DESCRIPTION = """\
MedSAM for the 3D Slicer extension (or any client): upload a volume once as a session, then
segment boxes in it, slice by slice or in 3D, while the server encodes its slices in the background.

Arrays travel as `{"dtype", "shape", "compression", "data"}`: raw little-endian bytes, first
index fastest (i, then j, then k), zlib-compressed, base64. Boxes and points are in the uploaded
volume's IJK voxel indices (inclusive) or RAS millimetres; the labels come back on its IJK grid.
Every error is `{"detail": "...", "code": "..."}` with a 4xx status for bad input.
"""


def create_app(predictor: MedSAMPredictor, settings: ServerSettings | None = None) -> FastAPI:
    """An app serving ``predictor`` (whose embedding cache it takes over) under ``settings``.

    Background threads (prefetching, session expiry, jobs) start here and stop when the app's
    lifespan ends (uvicorn's shutdown, or leaving ``with TestClient(app)``).
    """
    settings = settings or ServerSettings()
    state = ServerState(predictor, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        try:
            yield
        finally:
            state.close()

    app = FastAPI(title="medsam-monai inference server", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.server = state
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(sessions.router)
    app.include_router(everything.router)
    app.add_middleware(RequestGuard, settings=settings, shutting_down=state.shutting_down)
    _document_upload_body(app)
    return app


def _document_upload_body(app: FastAPI) -> None:
    """Put the upload's request model in the OpenAPI components: its handler parses the body
    itself (to free it early), so FastAPI does not see the model."""
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = generate()
            upload = CreateSession.model_json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, definition in upload.pop("$defs", {}).items():
                components.setdefault(name, definition)
            components[CreateSession.__name__] = upload
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
