"""Running slow work (HTTP uploads, inference) off the GUI thread.

The work runs in a daemon thread; the GUI polls :class:`BackgroundTask` from a timer for progress
and completion and applies the result itself, because MRML nodes and Qt widgets may only be
touched from the main thread. Cancelling sets a flag the work checks between steps (the MedSAM
client checks it between slices), so a cancelled request stops at the next slice.

Nothing here imports Slicer or Qt.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Optional, Tuple

Progress = Callable[[int, int], None]
CancelCheck = Callable[[], bool]


class TaskCancelled(RuntimeError):
    """The user cancelled the task."""


class BackgroundTask:
    """``work(progress, cancelled)`` in a thread; poll :attr:`done`, :meth:`progress`, :meth:`result`."""

    def __init__(self, work: Callable[[Progress, CancelCheck], Any], name: str = "MedSAM task"):
        self._work = work
        self.name = name
        self._lock = threading.Lock()
        self._progress: Tuple[int, int] = (0, 0)
        self._cancel = threading.Event()
        self._finished = threading.Event()
        self._result: Any = None
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> "BackgroundTask":
        self._thread.start()
        return self

    def _report(self, done: int, total: int) -> None:
        with self._lock:
            self._progress = (int(done), int(total))

    def _run(self) -> None:
        try:
            self._result = self._work(self._report, self._cancel.is_set)
        except BaseException as error:  # noqa: BLE001 - handed to the GUI thread by result()
            self._error = error
        finally:
            self._finished.set()

    def cancel(self) -> None:
        """Ask the work to stop at its next check."""
        self._cancel.set()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    @property
    def done(self) -> bool:
        return self._finished.is_set()

    def progress(self) -> Tuple[int, int]:
        """``(done, total)`` as last reported by the work; total 0 when unknown."""
        with self._lock:
            return self._progress

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until the work ends (for scripts and tests); False on timeout."""
        return self._finished.wait(timeout)

    def result(self) -> Any:
        """The work's return value; re-raises its exception. Only once :attr:`done`."""
        if not self.done:
            raise RuntimeError(f"{self.name} is still running")
        if self._error is not None:
            raise self._error
        return self._result
