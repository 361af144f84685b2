"""Progress on stderr: a volume's slices while it is segmented, a download's bytes while weights arrive.

One bar drawer (:func:`draw_bar`) for both, so that every ``medsam`` command redraws its progress
the same way.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

#: Characters of a progress bar.
BAR_WIDTH = 30


def draw_bar(
    stream: TextIO, fraction: float | None, detail: str, label: str = "", finished: bool = False, width: int = BAR_WIDTH
) -> None:
    """Redraw the progress line in place: ``\\r<label> [###...] <detail>``; ``finished`` ends the line.

    The bar has ``width`` characters, ``#`` for each whole ``1 / width`` of ``fraction`` done (full only
    at 1); with ``fraction`` None (a total not known) the line is ``detail`` alone.
    """
    bar = ""
    if fraction is not None:
        filled = int(width * min(max(fraction, 0.0), 1.0))
        bar = f"[{'#' * filled}{'.' * (width - filled)}] "
    prefix = f"{label} " if label else ""
    stream.write(f"\r{prefix}{bar}{detail}" + ("\n" if finished else ""))
    stream.flush()


def progress_reporter(
    label: str, clock: Callable[[], float] = time.monotonic, unit: str = "slices"
) -> Callable[[int, int], None]:
    """A progress callback (slices done, slices in all) for stderr: a bar redrawn in place on a
    terminal; elsewhere (a log, 3D Slicer's process panel, CI), where a carriage return is noise,
    one line per tenth of the work with the time elapsed and an estimate of the time left.
    ``unit`` names what is counted (``point batches`` for ``medsam everything``)."""
    if sys.stderr.isatty():
        return terminal_bar(label, unit)
    return progress_lines(label, clock, unit)


def terminal_bar(label: str, unit: str = "slices") -> Callable[[int, int], None]:
    """A 30-character bar redrawn in place; the last call ends the line."""

    def report(done: int, total: int) -> None:
        draw_bar(sys.stderr, done / max(total, 1), f"{done}/{total} {unit}", label, finished=done >= total)

    return report


def progress_lines(label: str, clock: Callable[[], float], unit: str = "slices") -> Callable[[int, int], None]:
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
            f"{label}: {done}/{total} {unit} ({100 * done // max(total, 1)}%), {elapsed:.1f} s elapsed, ~{left:.0f} s left",
            file=sys.stderr,
            flush=True,
        )

    return report


def download_progress(stream: TextIO | None = None, width: int = BAR_WIDTH) -> Callable[[int, int | None], None]:
    """A progress callback (bytes so far, bytes in all or None) drawing a bar on ``stream`` (default stderr).

    Nothing is written when the stream is not a terminal, so that logs and CI output are not flooded
    with carriage returns.
    """
    out = stream if stream is not None else sys.stderr
    isatty = getattr(out, "isatty", None)
    enabled = bool(isatty and isatty())

    def report(downloaded: int, total: int | None) -> None:
        if not enabled:
            return
        megabytes = downloaded / 1e6
        if total:
            fraction = min(downloaded / total, 1.0)
            detail = f"{fraction * 100:5.1f}% {megabytes:.1f}/{total / 1e6:.1f} MB"
            draw_bar(out, fraction, detail, finished=downloaded >= total, width=width)
        else:
            draw_bar(out, None, f"{megabytes:.1f} MB")

    return report
