"""``GET /health``: is the server up, and with which model (no token needed)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from ..models import Health

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health, summary="Server status, model variant, device, precision and limits")
async def health(request: Request) -> Health:
    return request.app.state.server.health()
