"""Test helpers for the server: a fast stand-in encoder and an in-process uvicorn server.

Not a segmentation method. The stand-in encoder keeps every other part real (slice preparation,
the embedding cache, the tiny mask decoder, 3D propagation, the whole server), so that server tests
exercise the same code paths in a fraction of the time of even the tiny ViT encoder.
"""

from __future__ import annotations

import socket
import threading
import time

import torch
from torch import nn

from ..networks import build_sam_variant
from ..predictor import MedSAMPredictor


class PooledEncoder(nn.Module):
    """A STAND-IN image encoder: 16x16 average pooling and a fixed random 1x1 convolution, giving
    the (B, C, 64, 64) embeddings of a real encoder that depend on the slice's content."""

    img_size = 1024

    def __init__(self, channels: int = 64, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.pool = nn.AvgPool2d(16)
        self.proj = nn.Conv2d(3, channels, 1)
        with torch.no_grad():
            self.proj.weight.copy_(4 * torch.randn(self.proj.weight.shape, generator=generator))
            self.proj.bias.copy_(torch.randn(self.proj.bias.shape, generator=generator))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.proj(self.pool(images)))


def fast_tiny_predictor(seed: int = 2) -> MedSAMPredictor:
    """The tiny model's prompt encoder and mask decoder behind :class:`PooledEncoder`, randomly
    initialised from ``seed`` (2 gives partial masks on the phantoms: an empty or full mask would
    make comparisons meaningless, so tests check for that)."""
    torch.manual_seed(seed)
    model = build_sam_variant("tiny")
    model.image_encoder = PooledEncoder(model.prompt_encoder.embed_dim, seed)
    return MedSAMPredictor(model.eval())


class ServerThread:
    """``create_app``'s app served by uvicorn in a thread on a loopback port (``port=0``: a free one).

    ``with ServerThread(app) as server: ... server.url ...``; leaving stops it as SIGTERM stops
    ``medsam serve`` (the app's lifespan ends, so its background threads stop too).
    """

    def __init__(self, app, port: int = 0, host: str = "127.0.0.1") -> None:
        from .http import server_for

        self.app = app
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self._socket.listen(128)
        self.port = self._socket.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        # The same uvicorn server and protocol as `medsam serve` (deadlines, connection cap, shutdown).
        self._server = server_for(app, log_level="warning")
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True)

    def __enter__(self) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)
        self._socket.close()
