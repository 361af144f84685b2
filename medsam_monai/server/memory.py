"""Giving freed memory back to the operating system.

A closed session's arrays are freed at once, but glibc's allocator keeps what it freed in its
arenas (one per thread that allocated, and the server's requests run on a pool of threads) for
reuse instead of returning it: after 16 clients had come and gone, an idle server held twice its
fresh size. ``malloc_trim(0)`` returns the free pages of every arena. Memory given back must be
faulted in again when it is next used, so the server does not trim while it is busy: a
:class:`MemoryReleaser` trims once nothing more has been freed for a second (after the last
session of a burst closed, or the last upload ended).

Elsewhere than glibc (macOS, Windows, musl) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
import time
from collections.abc import Callable


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_MALLOC_TRIM = _load_malloc_trim()
_LOCK = threading.Lock()
_running = False  # a thread is trimming
_again = False  # memory was freed while it trimmed: it trims once more before it stops


def release_free_memory() -> bool:
    """Return the allocator's free memory to the system; True when the allocator supports it.

    Calls at once share one trimming thread, which trims again when asked meanwhile: the last
    call's memory (the last session of many closing together) is returned too."""
    global _running, _again
    if _MALLOC_TRIM is None:
        return False
    with _LOCK:
        if _running:
            _again = True
            return True
        _running = True
    while True:
        _MALLOC_TRIM(0)
        with _LOCK:
            if not _again:
                _running = False
                return True
            _again = False


class MemoryReleaser:
    """Calls :func:`release_free_memory` ``delay_s`` seconds after the last :meth:`soon`, from
    a thread of its own (so no request waits for it, and a busy server is not trimmed)."""

    def __init__(self, delay_s: float = 1.0) -> None:
        self.delay_s = delay_s
        self._due: float | None = None
        self._stopped = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="medsam-memory", daemon=True)
        self._thread.start()

    def soon(self) -> None:
        """Memory was freed: give it back once nothing more has been freed for ``delay_s``."""
        with self._cond:
            self._due = time.monotonic() + self.delay_s
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        with self._cond:
            while not self._stopped:
                if self._due is None:
                    self._cond.wait()
                    continue
                left = self._due - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                self._due = None
                self._cond.release()
                try:
                    release_free_memory()
                finally:
                    self._cond.acquire()
