"""Running slow work (HTTP uploads, inference) off the GUI thread.

The work runs in a daemon thread; the GUI polls :class:`BackgroundTask` from a timer for progress
and completion and applies the result itself, because MRML nodes and Qt widgets may only be
touched from the main thread. Cancelling sets a flag the work checks between steps (the MedSAM
client checks it between slices), so a cancelled request stops at the next slice.

Inside 3D Slicer the worker thread only runs when the main thread lets go of Python's GIL, and
Slicer's main thread keeps the GIL while it idles in the Qt event loop: PythonQt releases it only
with thread support enabled (``PythonQt::setEnableThreadSupport``, "turned off by default",
src/PythonQt.h of the PythonQt revisions CTK pins for Slicer 5.6/5.8), and nothing in Slicer
5.6-5.10 or in the CTK revisions it builds calls it or ``PyEval_SaveThread``. So each timer tick
waits on the task for a moment (:meth:`BackgroundTask.poll`): ``Event.wait`` releases the GIL, and
the worker's HTTP calls run during that wait instead of one GIL hand-over per tick.
``benchmarks/slicer_gil.py`` measures it in an embedded interpreter that holds the GIL the same way.

Nothing here imports Slicer or Qt.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Optional, Tuple

Progress = Callable[[int, int], None]
CancelCheck = Callable[[], bool]

# Seconds of each GUI timer tick (100 ms) during which the main thread waits on the task with the
# GIL released: the worker runs ~30% of the time while the GUI stays responsive.
WORKER_TIME_PER_TICK_S = 0.03


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

    def poll(self, worker_time: float = WORKER_TIME_PER_TICK_S) -> bool:
        """One timer tick of the GUI: let the worker run up to ``worker_time`` s, then say whether it is done.

        The wait releases the GIL (a main thread that holds it starves the worker) and returns as
        soon as the work ends, so a quick request is finished within the tick that sees it.
        """
        if worker_time > 0 and not self.done:
            self._finished.wait(worker_time)
        return self.done

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
