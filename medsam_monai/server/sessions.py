"""Sessions: uploaded volumes kept in memory, bounded in bytes, dropped after a time unused.

A session holds a volume's normalised intensities (uint8, the uploaded IJK order), its geometry,
and lazily its display arrays per axis (what the network sees). Its id is random (128 bits) and
also keys its slice embeddings, so two sessions never share or see each other's results.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from ..orientation import DisplayLayout, display_layout, to_display
from ..predictor import Cancelled

# Bytes a session is charged per voxel: its uint8 intensities and up to three display copies.
BYTES_PER_VOXEL = 4

_FULL_OF_BUSY_SESSIONS = "the server's session memory is full of sessions with running jobs; try again later"

# How many removed session ids are remembered, to say "expired" or "closed" instead of "unknown".
_TOMBSTONES = 1024


class SessionNotFound(LookupError):
    """No such session (never created, closed, expired, or dropped for room)."""


class StoreFull(RuntimeError):
    """No room for a new session: the others are busy, or the volume alone exceeds the bound."""

    def __init__(self, message: str, too_large: bool) -> None:
        super().__init__(message)
        self.too_large = too_large


@dataclass(eq=False)
class Session:
    """One uploaded volume. Thread-safe: jobs, the prefetcher and requests share it."""

    intensities: np.ndarray  # uint8 [i, j, k], as MedSAM was trained (window / MR normalisation)
    affine: np.ndarray  # IJK -> RAS
    dtype: str  # of the upload
    modality: str
    id: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    last_used: float = 0.0
    closed: threading.Event = field(default_factory=threading.Event)
    jobs: OrderedDict = field(default_factory=OrderedDict)  # job id -> Job, oldest first
    active: int = 0  # requests working on it right now (guarded by _lock)
    _displays: dict[str, tuple[DisplayLayout, np.ndarray]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.intensities.shape)  # type: ignore[return-value]

    @property
    def nbytes(self) -> int:
        return BYTES_PER_VOXEL * self.intensities.size

    def layout(self, axis: str) -> DisplayLayout:
        return display_layout(self.affine, axis)

    def display(self, axis: str) -> tuple[DisplayLayout, np.ndarray]:
        """The layout and the contiguous display array ``[slice, row, col]`` along ``axis``
        (made once: the network reads whole slices, which a strided view makes slow).

        Raises:
            Cancelled: the session is closed (its memory is being given back, not made again).
        """
        with self._lock:
            if self.closed.is_set():
                raise Cancelled("the session was closed")
            if axis not in self._displays:
                layout = display_layout(self.affine, axis)
                self._displays[axis] = (layout, np.ascontiguousarray(to_display(self.intensities, layout)))
            return self._displays[axis]

    def busy(self) -> bool:
        """True while a request or a job works on it: such a session neither expires nor is
        dropped for room."""
        return self.active > 0 or any(not job.finished for job in list(self.jobs.values()))

    def release(self) -> None:
        """Drop what a closed session holds beyond its intensities: the display copies (3 bytes per
        voxel) and its jobs, whose plans point back at it (a reference cycle would keep the arrays
        until Python's cycle collector happens to run). Requests still running keep their own
        references until they end."""
        with self._lock:
            self._displays.clear()
        self.jobs.clear()

    @contextmanager
    def in_use(self) -> Iterator[None]:
        with self._lock:
            self.active += 1
        try:
            yield
        finally:
            with self._lock:
                self.active -= 1


class SessionStore:
    """Sessions by id, at most ``max_bytes`` together, each dropped ``ttl_s`` after its last use.

    ``on_remove(session, reason)`` is called (outside the lock) for every session that leaves,
    so that its embeddings, prefetching and jobs can be dropped too.
    """

    def __init__(
        self,
        ttl_s: float,
        max_bytes: int,
        on_remove: Callable[[Session, str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self._on_remove = on_remove
        self._clock = clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()  # least recently used first
        self._tombstones: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._sessions)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(s.nbytes for s in self._sessions.values())

    def check_room(self, nbytes: int) -> None:
        """Raise :class:`StoreFull` when a session of ``nbytes`` could not be kept, even after dropping
        every idle session (asked before an upload is decoded, so that a refusal costs no memory)."""
        if nbytes > self.max_bytes:
            raise StoreFull(
                f"the volume needs {nbytes / 2**20:.0f} MB of session memory ({BYTES_PER_VOXEL} bytes per "
                f"voxel) but the server holds at most {self.max_bytes / 2**20:.0f} MB of sessions",
                too_large=True,
            )
        with self._lock:
            busy = sum(s.nbytes for s in self._sessions.values() if s.busy())
        if busy + nbytes > self.max_bytes:
            raise StoreFull(_FULL_OF_BUSY_SESSIONS, too_large=False)

    def add(self, session: Session) -> None:
        """Keep ``session``, dropping least recently used idle sessions if it needs the room."""
        self.check_room(session.nbytes)
        evicted: list[Session] = []
        with self._lock:
            used = sum(s.nbytes for s in self._sessions.values())
            for old in list(self._sessions.values()):
                if used + session.nbytes <= self.max_bytes:
                    break
                if not old.busy():
                    used -= old.nbytes
                    evicted.append(self._pop(old.id, "dropped to make room for newer sessions"))
            if used + session.nbytes > self.max_bytes:
                raise StoreFull(_FULL_OF_BUSY_SESSIONS, too_large=False)
            session.last_used = self._clock()
            self._sessions[session.id] = session
        self._notify(evicted, "evicted")

    def get(self, session_id: str) -> Session:
        """The session, marked as used now; :class:`SessionNotFound` with the reason otherwise."""
        self.expire()
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                reason = self._tombstones.get(session_id, "never created here, or the server restarted")
                raise SessionNotFound(f"unknown session {session_id!r} ({reason}); upload the volume again")
            session.last_used = self._clock()
            self._sessions.move_to_end(session_id)
            return session

    def touch(self, session: Session) -> None:
        """Mark ``session`` as used now (a long job keeps its session alive)."""
        with self._lock:
            if session.id in self._sessions:
                session.last_used = self._clock()

    def remove(self, session_id: str, reason: str = "closed") -> Session:
        with self._lock:
            if session_id not in self._sessions:
                raise SessionNotFound(
                    f"unknown session {session_id!r} ({self._tombstones.get(session_id, 'never created here')})"
                )
            session = self._pop(session_id, reason)
        self._notify([session], reason)
        return session

    def expire(self) -> list[Session]:
        """Drop the sessions unused for longer than the TTL (never one with a running job)."""
        now = self._clock()
        with self._lock:
            stale = [s for s in self._sessions.values() if now - s.last_used > self.ttl_s and not s.busy()]
            expired = [self._pop(s.id, f"expired after {self.ttl_s:g} s unused") for s in stale]
        self._notify(expired, "expired")
        return expired

    def expires_in(self, session: Session) -> float:
        return max(0.0, self.ttl_s - (self._clock() - session.last_used))

    def clear(self) -> None:
        with self._lock:
            removed = [self._pop(sid, "the server stopped") for sid in list(self._sessions)]
        self._notify(removed, "stopped")

    def _pop(self, session_id: str, reason: str) -> Session:
        session = self._sessions.pop(session_id)
        session.closed.set()
        session.release()
        self._tombstones[session_id] = reason
        while len(self._tombstones) > _TOMBSTONES:
            self._tombstones.popitem(last=False)
        return session

    def _notify(self, sessions: list[Session], reason: str) -> None:
        if self._on_remove is not None:
            for session in sessions:
                self._on_remove(session, reason)
