"""``medsam serve``: load the model once and serve it over HTTP (see :mod:`medsam_monai.server`)."""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys

from ..server.settings import DEFAULT_PORT, LOOPBACK_HOST_NAMES, MB, TOKEN_ENVIRONMENT_VARIABLE, ServerSettings
from .errors import UserError
from .model import load_predictor, resolve_device_option
from .parsing import add_model_options, add_preprocessing_option


class ServeError(UserError):
    """Why ``medsam serve`` cannot start: one line, exit status 2."""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``serve`` on the ``medsam`` command's subparsers."""
    serve = subparsers.add_parser(
        "serve",
        help="serve the model over HTTP for the 3D Slicer extension",
        description="Load the model once and answer segmentation requests over HTTP (the 3D Slicer "
        "extension's server). Binds to 127.0.0.1 unless told otherwise; any other address needs a token. "
        "The protocol is at http://HOST:PORT/docs.",
    )
    add_model_options(serve)
    add_preprocessing_option(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this computer only)")
    serve.add_argument("--port", type=_port, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT}; 0: any free one)")
    serve.add_argument(
        "--token",
        default=None,
        help=f"bearer token every request must carry (default: ${TOKEN_ENVIRONMENT_VARIABLE}, which "
        "keeps it out of the process list); required to listen on a non-loopback address",
    )
    serve.add_argument("--max-upload-mb", type=_positive, default=1024, help="largest request body (default 1024)")
    serve.add_argument("--max-volume-mb", type=_positive, default=2048, help="largest decoded volume (default 2048)")
    serve.add_argument(
        "--max-sessions-mb",
        type=_positive,
        default=4096,
        help="memory for all sessions' volumes, 4 bytes per voxel each (default 4096)",
    )
    serve.add_argument(
        "--cache-mb", type=_non_negative, default=1024, help="slice-embedding cache (default 1024; a ViT-B slice takes 4 MB)"
    )
    serve.add_argument(
        "--session-ttl", type=_positive, default=3600, metavar="SECONDS", help="drop a session unused this long (default 3600)"
    )
    serve.add_argument(
        "--prefetch-slices",
        type=int,
        default=64,
        help="slices per session encoded in the background, nearest first (default 64; 0: none)",
    )
    serve.add_argument(
        "--request-timeout",
        type=_positive,
        default=10,
        metavar="SECONDS",
        help="most seconds a client may take to send a request's headers, or each part of its body; then "
        "408 and the connection closes (default 10)",
    )
    serve.add_argument(
        "--max-connections",
        type=_positive_int,
        default=64,
        help="open connections at once; beyond it the one waiting longest for a request is closed (default 64, "
        "lowered to fit the open-file limit)",
    )
    serve.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"], help="server log detail (default info)"
    )
    serve.set_defaults(func=run)
    return serve


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port {value} is outside 0..65535")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a whole number >= 1")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a number >= 0")
    return value


def is_loopback(host: str) -> bool:
    """True when every address ``host`` stands for is on this computer only."""
    if host.lower() in LOOPBACK_HOST_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything, so it counts as exposed


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket, or a ServeError (port taken, address not on this computer)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as err:
        raise ServeError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    sock.set_inheritable(True)
    return sock


def run(args: argparse.Namespace) -> int:
    """Refuse what cannot start (an exposed address without a token, no serve extra, a missing device,
    a taken port) before the model loads; then serve until stopped."""
    token = args.token or os.environ.get(TOKEN_ENVIRONMENT_VARIABLE) or None
    loopback = is_loopback(args.host)
    if not loopback and token is None:
        raise ServeError(
            f"refusing to listen on {args.host} without a token: anyone who can reach it could use the "
            f"server; set --token or ${TOKEN_ENVIRONMENT_VARIABLE}, or keep --host 127.0.0.1"
        )
    try:
        import uvicorn  # noqa: F401 - only to tell a missing serve extra in one line

        from ..server.app import create_app
        from ..server.http import serve
    except ImportError as err:
        raise ServeError(
            f"medsam serve needs the serve extra ({err.name} is missing): pip install 'medsam-monai[serve]'"
        ) from None
    resolve_device_option(args)  # a device this machine lacks is refused before the port is taken
    sock = _listen(args.host, args.port)
    try:
        predictor = load_predictor(args)
    except BaseException:
        sock.close()  # a refused checkpoint or device (one line, exit 2) or Ctrl-C: the port is free again
        raise
    settings = ServerSettings(
        token=token,
        max_upload_bytes=int(args.max_upload_mb * MB),
        max_volume_bytes=int(args.max_volume_mb * MB),
        max_sessions_bytes=int(args.max_sessions_mb * MB),
        cache_bytes=int(args.cache_mb * MB),
        session_ttl_s=float(args.session_ttl),
        prefetch_slices=max(0, args.prefetch_slices),
        # Without a token, only requests addressed to this computer by name are answered.
        allowed_hosts=None if token is not None else LOOPBACK_HOST_NAMES,
        variant=args.variant,
        request_timeout_s=float(args.request_timeout),
        max_connections=args.max_connections,
    )
    app = create_app(predictor, settings)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(
        f"medsam serve: {settings.variant} on {predictor.device} ({predictor.precision}, {predictor.preprocessing} "
        f"preprocessing), listening on "
        f"http://{shown}:{port} ({'token required' if token else 'no token: this computer only'})",
        file=sys.stderr,
        flush=True,
    )
    serve(app, sock, log_level=args.log_level)
    return 0
