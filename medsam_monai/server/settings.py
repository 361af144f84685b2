"""What an inference server is allowed to do: limits, auth and timing, in one frozen object."""

from __future__ import annotations

from dataclasses import dataclass

MB = 1 << 20

# The environment variable `medsam serve` reads the token from (also what the 3D Slicer extension
# sets): a token on the command line is visible to every user of the computer in `ps`.
TOKEN_ENVIRONMENT_VARIABLE = "MEDSAM_SERVER_TOKEN"

DEFAULT_PORT = 8123


@dataclass(frozen=True)
class ServerSettings:
    """Limits and options of one server (see ``medsam serve --help`` for the user-facing names).

    Attributes:
        token: the bearer token every request but ``/health`` must carry; None: no auth
            (only acceptable on a loopback address, which `medsam serve` enforces).
        max_upload_bytes: largest HTTP request body (a volume's base64 JSON, ~1.33x its
            compressed bytes); larger requests get 413 before they are read.
        max_volume_bytes: largest decoded volume (shape x dtype size); guards against a small
            compressed upload that inflates to gigabytes.
        max_sessions_bytes: memory all sessions may hold together (4 bytes per voxel each: the
            uint8 intensities and up to three display copies); least recently used idle
            sessions are dropped to make room.
        cache_bytes: budget of the slice-embedding cache shared by all sessions.
        session_ttl_s: a session unused this long is dropped (its embeddings too).
        prefetch_slices: slices encoded in the background per session, nearest to the focus
            slice first; 0 disables background encoding.
        job_workers: 3D jobs that may wait for the model at once (they run one at a time).
        max_jobs_per_session: unfinished jobs one session may have.
        allowed_hosts: when set, requests whose Host header names another host are refused
            (a loopback server without a token is otherwise reachable by DNS rebinding).
        variant: the model variant's name, reported by ``/health``.
        request_timeout_s: the most seconds a connection may take to send a request's headers
            (from its opening, or from the previous answer), and to send each part of a body;
            beyond it the connection gets 408 (if it had started a request) and is closed.
        min_body_bytes_per_s: a body slower than this on average, after its first
            ``request_timeout_s``, gets 408 (a client trickling bytes cannot hold a connection).
        keep_alive_s: an idle connection is closed this long after its last answer.
        max_connections: open connections at once (further capped by the open-file limit); when
            they are all taken, the connection that has waited longest without sending a
            request is closed to make room, and with none such a new connection gets 503.
        shutdown_grace_s: on SIGTERM, how long running requests may take to end (they stop at
            their next slice, with 503 ``shutting_down``) before they are cut off.
    """

    token: str | None = None
    max_upload_bytes: int = 1024 * MB
    max_volume_bytes: int = 2048 * MB
    max_sessions_bytes: int = 4096 * MB
    cache_bytes: int = 1024 * MB
    session_ttl_s: float = 3600.0
    prefetch_slices: int = 64
    job_workers: int = 4
    max_jobs_per_session: int = 4
    allowed_hosts: tuple[str, ...] | None = None
    variant: str | None = None
    request_timeout_s: float = 10.0
    min_body_bytes_per_s: float = 64 * 1024
    keep_alive_s: float = 5.0
    max_connections: int = 64
    shutdown_grace_s: float = 5.0

    def __post_init__(self) -> None:
        if self.token is not None and not self.token:
            raise ValueError("the token cannot be empty (leave it unset for no auth)")
        for name in (
            "max_upload_bytes",
            "max_volume_bytes",
            "max_sessions_bytes",
            "job_workers",
            "max_jobs_per_session",
            "max_connections",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("cache_bytes", "prefetch_slices"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} cannot be negative, got {getattr(self, name)}")
        for name in ("session_ttl_s", "request_timeout_s", "min_body_bytes_per_s", "keep_alive_s", "shutdown_grace_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


LOOPBACK_HOST_NAMES = ("localhost", "127.0.0.1", "::1")
