"""The inference server behind the 3D Slicer extension: ``medsam serve`` (FastAPI + uvicorn).

``create_app(predictor, settings)`` builds the app; the ``medsam serve`` command is
:mod:`medsam_monai.cli.serve`. FastAPI is imported only when the app is built, so the ``medsam`` command works
without the ``serve`` extra.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .settings import ServerSettings

if TYPE_CHECKING:
    from .app import create_app

__all__ = ["ServerSettings", "create_app"]


def __getattr__(name: str):
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
