"""Remembering, per server, that the user agreed to send images there.

Nothing is uploaded to a server before the user has said yes once for that server. The answer is
kept under a normalised server address, so ``http://LOCALHOST:8000/`` and ``http://localhost:8000``
are the same server, while another port, host or scheme is a different one (and asks again).

The store needs only a way to read and write one text value; in 3D Slicer that is a QSettings key,
in tests a dict or a file. Nothing here imports Slicer or Qt.
"""

from __future__ import annotations

import json
import threading
from typing import Callable, Dict, Optional
from urllib.parse import urlsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}


class ConsentRequired(RuntimeError):
    """An upload was about to happen to a server the user has not agreed to send images to."""

    def __init__(self, server_url: str):
        self.server_url = server_url
        super().__init__(
            f"the image has not been sent to {normalize_server_url(server_url)}: agree to send images to this server first"
        )


def normalize_server_url(url: str) -> str:
    """``scheme://host:port/path`` in lower case with the default port written out, no trailing slash.

    Raises ValueError for anything that is not an http(s) URL with a host.
    """
    text = str(url).strip()
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"server address {url!r} must look like http://host:port or https://host:port")
    try:
        port = parts.port or _DEFAULT_PORTS[scheme]
    except ValueError:
        raise ValueError(f"server address {url!r} has an invalid port") from None
    host = parts.hostname.lower()
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    path = parts.path.rstrip("/")
    return f"{scheme}://{host}:{port}{path}"


def is_local_server(url: str) -> bool:
    """True when the server runs on this computer (images do not leave it)."""
    host = (urlsplit(normalize_server_url(url)).hostname or "").lower()
    return host in ("localhost", "127.0.0.1", "::1") or host.startswith("127.")


def consent_question(url: str) -> str:
    """The sentence asking the user, saying plainly where the image goes."""
    where = normalize_server_url(url)
    if is_local_server(url):
        place = "a MedSAM server on this computer"
    else:
        place = "another computer; the image leaves this one (check that this is allowed for your data)"
    return (
        f"To segment, the whole selected image volume is sent to {where}, which is {place}.\n\n"
        "Send images to this server from now on? (You are asked once per server address.)"
    )


class ConsentStore:
    """The set of server addresses the user agreed to upload to.

    ``read`` returns the stored text (or None/empty when nothing is stored); ``write`` stores it.
    The text is a JSON list of normalised addresses; unreadable text counts as no consent at all.
    """

    def __init__(self, read: Callable[[], Optional[str]], write: Callable[[str], None]):
        self._read = read
        self._write = write
        # Revocations made through this store, counted in memory per address: a worker thread can
        # tell that the user withdrew consent after it was checked without calling ``read`` (in
        # Slicer a QSettings, which belongs to the main thread).
        self._revocations: Dict[str, int] = {}
        self._lock = threading.Lock()

    @classmethod
    def in_memory(cls, initial: Optional[str] = None) -> "ConsentStore":
        """A store kept in a dict (tests, scripts)."""
        box = {"value": initial}
        return cls(lambda: box["value"], lambda text: box.__setitem__("value", text))

    def servers(self) -> list[str]:
        """The addresses agreed to, sorted."""
        try:
            values = json.loads(self._read() or "[]")
        except (TypeError, ValueError):
            return []
        if not isinstance(values, list):
            return []
        return sorted({v for v in values if isinstance(v, str)})

    def is_granted(self, url: str) -> bool:
        """True when the user agreed to send images to ``url``."""
        try:
            return normalize_server_url(url) in self.servers()
        except ValueError:
            return False

    def grant(self, url: str) -> None:
        """Remember that the user agreed to send images to ``url``."""
        key = normalize_server_url(url)
        self._write(json.dumps(sorted(set(self.servers()) | {key})))

    def revoke(self, url: str) -> None:
        """Forget the agreement for ``url`` (the next upload asks again)."""
        key = normalize_server_url(url)
        with self._lock:
            self._revocations[key] = self._revocations.get(key, 0) + 1
        self._write(json.dumps([s for s in self.servers() if s != key]))

    def revocation_count(self, url: str) -> int:
        """How often ``url``'s agreement was revoked through this store; reads memory only (any thread)."""
        try:
            key = normalize_server_url(url)
        except ValueError:
            return 0
        with self._lock:
            return self._revocations.get(key, 0)

    def require(self, url: str) -> None:
        """Raise :class:`ConsentRequired` unless the user agreed to send images to ``url``."""
        if not self.is_granted(url):
            raise ConsentRequired(url)
