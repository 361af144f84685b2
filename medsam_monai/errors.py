"""One line of error text, as every face prints it (the CLI, the bundle, the server, the checkpoint readers).

Below everything: imports nothing of the package and no third-party module, so any module may use it.
"""

from __future__ import annotations

__all__ = ["one_line"]


def one_line(what: object) -> str:
    """``what`` (an exception or any text) as one line: its whitespace runs, newlines included, as single spaces.

    Messages from other libraries (ITK, torch, a server's reply) may span lines; printed as they are,
    they would break the one-line contract of an error. An exception without a message gives its
    type's name, so that the line still says something.
    """
    text = " ".join(str(what).split())
    if not text and isinstance(what, BaseException):
        return type(what).__name__
    return text
