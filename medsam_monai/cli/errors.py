"""What ends a ``medsam`` command early, and the exit status each ending gets."""

from __future__ import annotations

EXIT_USAGE = 2
EXIT_SIGINT = 130  # 128 + the signal's number, as shells report a process ended by it
EXIT_SIGTERM = 143


class UserError(ValueError):
    """A problem with the user's input: printed as one line, exit status 2, no traceback. A ValueError, so
    that the library's own refusals of bad input (ValueErrors too) end the same way."""


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that ``finally`` blocks (the atomic writers' temporary
    files) run as they do for Ctrl-C. A BaseException, like KeyboardInterrupt, so that no
    ``except Exception`` on the way swallows it."""
