"""Progress on stderr while a volume is segmented."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable


def progress_reporter(label: str, clock: Callable[[], float] = time.monotonic) -> Callable[[int, int], None]:
    """A progress callback (slices done, slices in all) for stderr: a bar redrawn in place on a
    terminal; elsewhere (a log, 3D Slicer's process panel, CI), where a carriage return is noise,
    one line per tenth of the work with the time elapsed and an estimate of the time left."""
    if sys.stderr.isatty():
        return terminal_bar(label)
    return progress_lines(label, clock)


def terminal_bar(label: str) -> Callable[[int, int], None]:
    """A 30-character bar redrawn in place; the last call ends the line."""

    def report(done: int, total: int) -> None:
        filled = int(30 * done / max(total, 1))
        end = "\n" if done >= total else ""
        print(f"\r{label} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total} slices", end=end, file=sys.stderr, flush=True)

    return report


def progress_lines(label: str, clock: Callable[[], float]) -> Callable[[int, int], None]:
    """One line for the first slice, then one per tenth of the work, then one at the end."""
    start = clock()
    last = -1  # the tenth of the work reported last: the first slice, then each tenth, then the end

    def report(done: int, total: int) -> None:
        nonlocal last
        tenth = 10 if done >= total else 10 * done // max(total, 1)
        if tenth <= last:
            return
        last = tenth
        elapsed = clock() - start
        left = elapsed / done * (total - done) if done else 0.0
        print(
            f"{label}: {done}/{total} slices ({100 * done // max(total, 1)}%), {elapsed:.1f} s elapsed, ~{left:.0f} s left",
            file=sys.stderr,
            flush=True,
        )

    return report
