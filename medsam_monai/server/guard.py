"""The first thing every request meets (plain ASGI, before FastAPI reads anything):

- the Host header, when the server is limited to loopback names (no token: DNS rebinding would
  otherwise let any web page the user opens drive the server);
- the bearer token, for every path but ``/health`` and the API docs, so that an unauthenticated
  client cannot even make the server read a body;
- the body size: a declared ``Content-Length`` over the limit is refused unread, and a body
  without one is counted while it arrives.
"""

from __future__ import annotations

import hmac
import json

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
    def __init__(self, app, settings: ServerSettings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            await _answer(send, *refusal)
            return
        body = await _read_body(receive, self.settings.max_upload_bytes)
        if body is None:  # the client went away
            return
        if isinstance(body, tuple):
            await _answer(send, *body)
            return
        await self.app(scope, _replay(body, receive), send)

    def _refusal(self, scope, headers: dict[str, str]) -> tuple[int, str, str, dict[str, str]] | None:
        allowed = self.settings.allowed_hosts
        if allowed is not None and host_name(headers.get("host", "")) not in allowed:
            return 403, "forbidden_host", f"this server answers only requests for {', '.join(allowed)}", {}
        token = self.settings.token
        if token is not None and scope.get("path") not in OPEN_PATHS and not token_matches(headers.get("authorization"), token):
            return (401, "unauthorized", "missing or wrong token: send the header 'Authorization: Bearer <token>'",
                    {"www-authenticate": "Bearer"})
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                return 400, "invalid_request", f"Content-Length {declared!r} is not a number", {}
            if int(declared) > self.settings.max_upload_bytes:
                return 413, "payload_too_large", _too_large(int(declared), self.settings.max_upload_bytes), {}
        return None


def _too_large(size: int, limit: int) -> str:
    return (f"request body of {size / 2**20:.1f} MB exceeds this server's limit of {limit / 2**20:.1f} MB "
            "(medsam serve --max-upload-mb)")


async def _read_body(receive, limit: int):
    """The whole body (bytes), an answer tuple when it exceeds ``limit``, or None on disconnect."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return 413, "payload_too_large", _too_large(size, limit), {}
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive_more):
    """A ``receive`` that gives the buffered body once, then waits on the connection again
    (which only has a disconnect left to tell)."""
    sent = False

    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
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
