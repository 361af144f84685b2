"""The first thing every request meets (plain ASGI, before FastAPI reads anything):

- the Host header, when the server is limited to loopback names (no token: DNS rebinding would
  otherwise let any web page the user opens drive the server);
- shutdown: once the server is stopping, new requests get 503 ``shutting_down``;
- the bearer token, for every path but ``/health`` and the API docs, so that an unauthenticated
  client cannot even make the server read a body;
- the body size: a declared ``Content-Length`` over the limit is refused unread, and a body
  without one is counted while it arrives;
- the body's pace: each part must come within ``request_timeout_s`` and the whole at
  ``min_body_bytes_per_s`` on average after that, or the answer is 408 (a slow or silent client
  cannot hold a connection and its buffer).

The body is read into one buffer and handed to the app, which becomes its only holder (an
upload frees it as soon as it is parsed). The connection-level limits (request headers' deadline, idle
timeout, connection cap, malformed HTTP) are in :mod:`.http`.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import threading

from .settings import ServerSettings

OPEN_PATHS = ("/health", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")


def token_matches(header_value: str | None, token: str) -> bool:
    """True when an ``Authorization`` header carries ``Bearer <token>`` (constant-time compare)."""
    scheme, _, value = (header_value or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())


def host_name(host_header: str) -> str:
    """``example.org:8123`` -> ``example.org``; ``[::1]:8123`` -> ``::1``."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class RequestGuard:
    def __init__(self, app, settings: ServerSettings, shutting_down: threading.Event | None = None) -> None:
        self.app = app
        self.settings = settings
        self.shutting_down = shutting_down or threading.Event()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            await _answer(send, *refusal)
            return
        answered = _AnswerTracker(send)
        try:
            body = await _read_body(receive, self.settings, _declared_length(headers))
            if body is None:  # the client went away
                return
            if isinstance(body, tuple):
                await _answer(send, *body)
                return
            replay = _replay(body, receive)
            del body  # the app becomes the body's only holder (an upload frees it once parsed)
            await self.app(scope, replay, answered.send)
        except asyncio.CancelledError:
            # uvicorn cancels what is still running when the shutdown's grace period ends: say so in
            # this server's error format instead of the bare 500 the client would get.
            if not self.shutting_down.is_set() or answered.started:
                raise
            await _answer(send, *_SHUTTING_DOWN)

    def _refusal(self, scope, headers: dict[str, str]) -> tuple[int, str, str, dict[str, str]] | None:
        allowed = self.settings.allowed_hosts
        if allowed is not None and host_name(headers.get("host", "")) not in allowed:
            return 403, "forbidden_host", f"this server answers only requests for {', '.join(allowed)}", {}
        if self.shutting_down.is_set():
            return _SHUTTING_DOWN
        token = self.settings.token
        if token is not None and scope.get("path") not in OPEN_PATHS and not token_matches(headers.get("authorization"), token):
            return (
                401,
                "unauthorized",
                "missing or wrong token: send the header 'Authorization: Bearer <token>'",
                {"www-authenticate": "Bearer"},
            )
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                return 400, "invalid_request", f"Content-Length {declared!r} is not a number", {}
            if int(declared) > self.settings.max_upload_bytes:
                return 413, "payload_too_large", _too_large(int(declared), self.settings.max_upload_bytes), {}
        return None


_SHUTTING_DOWN = (503, "shutting_down", "the server is shutting down; send the request again once it is back", {})


class _AnswerTracker:
    """Passes ``send`` through and remembers whether an answer has started."""

    def __init__(self, send) -> None:
        self._send = send
        self.started = False

    async def send(self, message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)


def _declared_length(headers: dict[str, str]) -> int | None:
    declared = headers.get("content-length", "").strip()
    return int(declared) if declared.isdigit() else None


def _too_large(size: int, limit: int) -> str:
    return (
        f"request body of {size / 2**20:.1f} MB exceeds this server's limit of {limit / 2**20:.1f} MB "
        "(medsam serve --max-upload-mb)"
    )


async def _read_body(receive, settings: ServerSettings, declared: int | None):
    """The whole body (a bytearray), an answer tuple (413 over the limit, 408 too slow), or None
    when the client went away. ``declared`` is the checked Content-Length, for the messages.

    The buffer grows as the body arrives (a large bytearray grows in place, without a copy), so a
    request that declares a large body and sends little costs only what it sent."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    buffer = bytearray()
    size = 0
    while True:
        # Each part within the timeout, and the whole no slower than the minimum rate after it.
        wait = min(
            settings.request_timeout_s, start + settings.request_timeout_s + size / settings.min_body_bytes_per_s - loop.time()
        )
        try:
            message = await asyncio.wait_for(receive(), timeout=max(wait, 0.0))
        except asyncio.TimeoutError:
            return 408, "timeout", _too_slow(size, declared, loop.time() - start, settings), {}
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > settings.max_upload_bytes:
            return 413, "payload_too_large", _too_large(size, settings.max_upload_bytes), {}
        buffer += chunk
        if not message.get("more_body", False):
            return buffer


def _too_slow(size: int, declared: int | None, elapsed: float, settings: ServerSettings) -> str:
    of = f" of {declared}" if declared is not None else ""
    return (
        f"request body too slow: {size}{of} bytes in {elapsed:.1f} s (each part must come within "
        f"{settings.request_timeout_s:g} s, the whole at {settings.min_body_bytes_per_s / 1024:g} KB/s or faster)"
    )


def _replay(body: bytearray, receive_more):
    """A ``receive`` that gives the buffered body once, keeping no reference to it (the app is its
    only holder from then on), then waits on the connection again (which only has a disconnect
    left to tell)."""
    holder = [body]

    async def receive():
        if holder:
            return {"type": "http.request", "body": holder.pop(), "more_body": False}
        return await receive_more()

    return receive


async def _answer(send, status: int, code: str, detail: str, headers: dict[str, str]) -> None:
    payload = json.dumps({"detail": detail, "code": code}).encode()
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw_headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    # The unread body is left to the server, which closes the connection after this answer.
    raw_headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": payload})
