"""The HTTP layer of ``medsam serve``: uvicorn and its h11 protocol, with what they lack.

uvicorn bounds the idle time between requests (``timeout_keep_alive``) but not the time a client
takes to send a request's headers, and it accepts connections until the process runs out of
file descriptors: 200 connections that sent half a request line kept a server from answering
``/health``. :class:`GuardedH11Protocol` adds

- a deadline for the request headers, from the connection's opening or from the previous
  answer (``request_timeout_s``): a connection that started a request gets 408, a silent one is
  closed;
- a cap on open connections (``max_connections``, lowered to fit the open-file limit): a new
  connection beyond it closes the one that has waited longest without sending a request, or,
  when every connection is in a request, gets 503 ``busy``;
- malformed HTTP (bad request line or headers, two Host headers, a bad Content-Length or
  chunk, headers over h11's 16 KB) answered as 400 in this server's JSON error format, with
  h11's reason, instead of uvicorn's plain text.

The server always runs this h11 protocol, also where httptools is installed (uvicorn's "auto"
would pick it): the limits are built on h11's events. The body's deadlines are the request
guard's (:mod:`.guard`). :class:`MedSAMServer` tells the
application when shutdown begins, so that running segmentations end with 503 ``shutting_down``
within the grace period instead of being cut off.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from collections.abc import Callable
from http import HTTPStatus

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..errors import one_line
from .settings import ServerSettings

log = logging.getLogger("medsam_monai.server")

# Open files the server keeps for itself beside its connections (listening socket, logs, a
# checkpoint being read, pipes): the connection cap leaves them room under the open-file limit.
FD_RESERVE = 32
# Connections asyncio accepts in one go (uvicorn's ``backlog``) before any of them reaches the
# protocol, where the cap is applied: two such bursts can be open beyond the cap for a moment.
ACCEPT_BURST = 16


def json_error_bytes(status: int, code: str, detail: str) -> bytes:
    """A complete HTTP/1.1 answer in this server's error format that closes the connection."""
    payload = json.dumps({"detail": one_line(detail), "code": code}).encode()
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(payload)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + payload


def connection_cap(requested: int) -> int:
    """``requested``, lowered so that the connections fit under this process's open-file limit."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):  # no such limit here (Windows)
        return requested
    if soft == resource.RLIM_INFINITY:
        return requested
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:
        in_use = FD_RESERVE
    return min(requested, max(4, soft - in_use - FD_RESERVE - 2 * ACCEPT_BURST))


class _RecordingConnection(h11.Connection):
    """h11's connection, remembering why the last request was malformed (uvicorn drops the reason)."""

    protocol_error: str | None = None

    def next_event(self):  # type: ignore[override]
        try:
            return super().next_event()
        except h11.RemoteProtocolError as err:
            self.protocol_error = str(err)
            raise


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a request-headers deadline, a connection cap and JSON 400s.

    The class attributes are set per server by :func:`protocol_class`.
    """

    request_timeout_s: float = 10.0
    max_connections: int = 64

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        limit = self.config.h11_max_incomplete_event_size
        self.conn = _RecordingConnection(h11.SERVER, limit) if limit is not None else _RecordingConnection(h11.SERVER)
        self._head_timer: asyncio.TimerHandle | None = None
        self._waiting_since = 0.0
        self._head_bytes = 0  # bytes of a request received while waiting for its headers

    # ----- uvicorn's hooks --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._wait_for_headers()
        self._make_room()

    def data_received(self, data: bytes) -> None:
        if self.waiting_for_headers():
            self._head_bytes += len(data)
        super().data_received(data)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._wait_for_headers()
            if self._head_bytes:  # part of the next request came with the last one: not idle, but due
                self._unset_keepalive_if_required()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        """Malformed HTTP: 400 in the server's error format, with h11's reason, then close."""
        reason = self.conn.protocol_error or msg
        payload = json.dumps({"detail": f"malformed HTTP request: {reason}", "code": "invalid_request"}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
            (b"connection", b"close"),
        ]
        try:
            for event in (
                h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
                h11.Data(data=payload),
                h11.EndOfMessage(),
            ):
                self.transport.write(self.conn.send(event))
        except h11.LocalProtocolError:  # an answer had already begun: nothing more can be said
            pass
        self.transport.close()

    # ----- the headers' deadline --------------------------------------------------------------

    def waiting_for_headers(self) -> bool:
        """True between requests: before the first one's headers, and after each answer."""
        return self.cycle is None or self.cycle.response_complete

    def _wait_for_headers(self) -> None:
        self._cancel_head_timer()
        self._waiting_since = self.loop.time()
        self._head_bytes = len(self.conn.trailing_data[0])  # what h11 holds of the next request already
        self._head_timer = self.loop.call_later(self.request_timeout_s, self._headers_overdue)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _headers_overdue(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing() and self.waiting_for_headers():
            self.close_waiting(f"request headers not received within {self.request_timeout_s:g} s")

    def close_waiting(self, why: str) -> None:
        """Close a connection that is waiting for a request: 408 if one had begun, silently if not."""
        if self._head_bytes:
            self.transport.write(json_error_bytes(408, "timeout", why))
        self.transport.close()

    # ----- the connection cap -----------------------------------------------------------------

    def _make_room(self) -> None:
        """Keep at most ``max_connections`` open: close the one waiting longest for a request to
        make room for this one, or refuse this one when all the others are in a request."""
        others = [c for c in self.connections if c is not self and not c.transport.is_closing()]
        if len(others) < self.max_connections:
            return
        waiting = [c for c in others if isinstance(c, GuardedH11Protocol) and c.waiting_for_headers()]
        if waiting:
            oldest = min(waiting, key=lambda c: c._waiting_since)
            oldest.close_waiting(f"closed to make room: this server keeps at most {self.max_connections} connections")
            return
        self._cancel_head_timer()
        self.transport.write(
            json_error_bytes(
                503, "busy", f"this server has {len(others)} connections in use (at most {self.max_connections}); try again"
            )
        )
        self.transport.close()


def protocol_class(settings: ServerSettings) -> type[GuardedH11Protocol]:
    """The protocol class uvicorn instantiates per connection, with ``settings``' limits."""
    cap = connection_cap(settings.max_connections)
    if cap < settings.max_connections:
        log.warning("at most %d connections (the open-file limit leaves no room for %d)", cap, settings.max_connections)
    return type(
        "MedSAMHttpProtocol", (GuardedH11Protocol,), {"request_timeout_s": settings.request_timeout_s, "max_connections": cap}
    )


class MedSAMServer(uvicorn.Server):
    """uvicorn's server, calling ``on_shutdown`` as soon as shutdown begins (SIGTERM, Ctrl-C,
    ``should_exit``), before it waits for the running requests."""

    def __init__(self, config: uvicorn.Config, on_shutdown: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_shutdown = on_shutdown

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._on_shutdown()
        await super().shutdown(sockets=sockets)


def server_for(app, log_level: str = "info") -> MedSAMServer:
    """A uvicorn server for an app of :func:`~medsam_monai.server.app.create_app`, with its limits."""
    state = app.state.server
    settings: ServerSettings = state.settings
    config = uvicorn.Config(
        app,
        http=protocol_class(settings),
        log_level=log_level,
        lifespan="on",
        backlog=ACCEPT_BURST,
        timeout_keep_alive=settings.keep_alive_s,
        timeout_graceful_shutdown=settings.shutdown_grace_s,
    )
    return MedSAMServer(config, on_shutdown=state.begin_shutdown)


def serve(app, sock: socket.socket, log_level: str = "info") -> None:
    """Serve ``app`` on the listening socket ``sock`` until SIGTERM or Ctrl-C."""
    server_for(app, log_level).run(sockets=[sock])
