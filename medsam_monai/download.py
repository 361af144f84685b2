"""Download and cache pretrained MedSAM / SAM weights.

Only the standard library is used so that fetching a checkpoint never requires
(or slowly imports) torch, and so that the module works in minimal installs.

Downloads are resumable (``<dest>.part`` plus an HTTP ``Range`` request),
verified (size and SHA-256 when known) and atomic: ``dest`` only ever appears
fully written, via :func:`os.replace`. They are bounded: never more bytes than
the registered size (or ``max_bytes``), never longer than a deadline, and a
server that slows to a trickle is dropped. Every failure message is a single
line that tells the user how to get the file by hand, because the most common
cause is a machine without internet access.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import pathlib
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Union

from .errors import one_line

__all__ = [
    "DEFAULT_MAX_MB",
    "KNOWN_WEIGHTS",
    "ChecksumError",
    "DownloadError",
    "ProgressCallback",
    "WeightsSource",
    "default_cache_dir",
    "download_file",
    "fetch_weights",
    "sha256_of_file",
    "verify_sha256",
]

#: ``(downloaded_bytes, total_bytes_or_None) -> None``
ProgressCallback = Callable[[int, int | None], None]
PathLike = Union[str, "os.PathLike[str]"]

_SUPPORTED_SCHEMES = ("http", "https", "file")
#: The cap on a download whose size is not registered: above SAM ViT-H (2.6 GB) with room to spare.
DEFAULT_MAX_MB = 4096
#: The longest one download may take (it resumes when run again), and the slowest it may go, averaged
#: over each ``timeout``-long window, before it counts as stalled.
DEFAULT_DEADLINE_S = 6 * 3600.0
DEFAULT_MIN_RATE = 1024.0
# A file name taken from a URL may not hold path separators, control or shell-special characters.
_UNSAFE_NAME_CHARS = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]')
_USER_AGENT = "medsam-monai-downloader/1"
# Everything that means "the network let us down" (as opposed to a local disk
# problem, which must surface unchanged). socket.timeout is TimeoutError on
# Python >= 3.10 but is listed for clarity.
_NETWORK_ERRORS = (
    urllib.error.URLError,
    http.client.HTTPException,
    ConnectionError,
    TimeoutError,
    socket.timeout,
)


class DownloadError(RuntimeError):
    """A download could not be completed; the message is one actionable line."""


class ChecksumError(DownloadError):
    """A file's size or SHA-256 digest does not match the expected value."""


@dataclass(frozen=True)
class _SizeCap:
    """The most bytes a download may have, why, and what the user can do when a server exceeds it."""

    limit: int
    reason: str
    advice: str


@dataclass
class _TransferClock:
    """Ends a transfer that runs past its deadline or slows below ``min_rate`` bytes/s over a ``window``."""

    deadline: float | None
    window: float
    min_rate: float
    start: float = field(default_factory=time.monotonic)
    window_start: float = field(default_factory=time.monotonic)
    window_bytes: int = 0

    def begin_window(self) -> None:
        """Start measuring the rate afresh (when the body starts: connecting is the socket timeout's business)."""
        self.window_start, self.window_bytes = time.monotonic(), 0

    def problem(self, new_bytes: int) -> str | None:
        """Account ``new_bytes`` just received; say what is wrong, if anything."""
        now = time.monotonic()
        if self.deadline is not None and now - self.start > self.deadline:
            return f"not finished after {self.deadline:g} s, the download deadline"
        self.window_bytes += new_bytes
        elapsed = now - self.window_start
        if elapsed >= self.window:
            if self.window_bytes < self.min_rate * elapsed:
                return f"stalled: {self.window_bytes} bytes in {elapsed:.1f} s, under the minimum of {self.min_rate:g} bytes/s"
            self.window_start, self.window_bytes = now, 0
        return None


@dataclass(frozen=True)
class WeightsSource:
    """Where a named checkpoint lives and how to recognise a good copy."""

    name: str
    url: str
    filename: str
    sha256: str | None
    size: int | None
    description: str
    preprocessing: str = "sam"  # the image pipeline the weights were trained with (medsam_monai.transforms)


_SAM_HOST = "https://dl.fbaipublicfiles.com/segment_anything"

KNOWN_WEIGHTS: dict[str, WeightsSource] = {
    source.name: source
    for source in (
        WeightsSource(
            name="medsam_vit_b",
            url="https://huggingface.co/flaviagiammarino/medsam-vit-base/resolve/main/pytorch_model.bin",
            filename="medsam_vit_b_hf.bin",
            sha256="b80a96478503f89e76f1f7bbba50cfcd4ec9e7467f0d5185310216b33946ec9c",
            size=None,
            description="MedSAM ViT-B (Hugging Face conversion of the official weights, Apache-2.0)",
            preprocessing="medsam",
        ),
        WeightsSource(
            name="sam_vit_b",
            url=f"{_SAM_HOST}/sam_vit_b_01ec64.pth",
            filename="sam_vit_b_01ec64.pth",
            sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
            size=375042383,
            description="SAM ViT-B (official Meta AI release, Apache-2.0)",
        ),
        WeightsSource(
            name="sam_vit_l",
            url=f"{_SAM_HOST}/sam_vit_l_0b3195.pth",
            filename="sam_vit_l_0b3195.pth",
            sha256=None,
            size=None,
            description="SAM ViT-L (official Meta AI release, Apache-2.0)",
        ),
        WeightsSource(
            name="sam_vit_h",
            url=f"{_SAM_HOST}/sam_vit_h_4b8939.pth",
            filename="sam_vit_h_4b8939.pth",
            sha256=None,
            size=None,
            description="SAM ViT-H (official Meta AI release, Apache-2.0)",
        ),
    )
}


# --------------------------------------------------------------------------- #
# Cache location and hashing
# --------------------------------------------------------------------------- #


def default_cache_dir() -> pathlib.Path:
    """Return the directory where downloaded weights are cached.

    ``$MEDSAM_CACHE_DIR`` wins; otherwise the XDG cache convention is followed
    (``$XDG_CACHE_HOME/medsam_monai`` or ``~/.cache/medsam_monai``).
    """
    override = os.environ.get("MEDSAM_CACHE_DIR")
    if override:
        return pathlib.Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = pathlib.Path(xdg).expanduser() if xdg else pathlib.Path.home() / ".cache"
    return base / "medsam_monai"


def sha256_of_file(path: PathLike, chunk_size: int = 1 << 20) -> str:
    """Return the hex SHA-256 of ``path``, read in chunks (checkpoints are GBs)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: PathLike, expected: str) -> None:
    """Raise :class:`ChecksumError` unless ``path`` hashes to ``expected``.

    The comparison ignores case because published digests come in both.
    """
    actual = sha256_of_file(path)
    if actual.lower() != expected.strip().lower():
        raise ChecksumError(f"sha256 mismatch for {path}: expected {expected.strip().lower()}, got {actual}")


# --------------------------------------------------------------------------- #
# Download
# --------------------------------------------------------------------------- #


def _check_scheme(url: str) -> None:
    scheme = urllib.parse.urlparse(url).scheme.lower()
    if scheme not in _SUPPORTED_SCHEMES:
        raise ValueError(f"Unsupported URL scheme {scheme!r} in {url!r}: expected one of {', '.join(_SUPPORTED_SCHEMES)}")


def _part_path(dest: pathlib.Path) -> pathlib.Path:
    return dest.with_name(dest.name + ".part")


def _manual_fallback(url: str, dest: pathlib.Path) -> str:
    return f"download it by hand from {url} and pass its path with --checkpoint, or save it as {dest}"


def _network_error(url: str, dest: pathlib.Path, part: pathlib.Path, what: object) -> DownloadError:
    """Build the one-line error for a failed transfer, mentioning any resumable data."""
    message = f"Downloading {url} failed ({one_line(what)}); {_manual_fallback(url, dest)}"
    if part.exists() and part.stat().st_size > 0:
        message += f" (partial data kept in {part}; run again to resume)"
    return DownloadError(message)


def _parse_int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """Parse ``bytes START-END/TOTAL`` into ``(START, TOTAL)``; unknown parts are None."""
    if not value or not value.strip().lower().startswith("bytes "):
        return None, None
    span, _, total = value.strip()[6:].partition("/")
    start = _parse_int(span.partition("-")[0].strip())
    return start, _parse_int(total.strip()) if total.strip() != "*" else None


@dataclass(frozen=True)
class _Transfer:
    """What every step of one download needs: where from, where to, its bounds and its reporting."""

    url: str
    dest: pathlib.Path
    part: pathlib.Path
    cap: _SizeCap
    clock: _TransferClock
    progress: ProgressCallback | None
    timeout: float
    chunk_size: int

    def network_error(self, what: object) -> DownloadError:
        return _network_error(self.url, self.dest, self.part, what)

    def too_large(self, amount: str) -> DownloadError:
        # The partial data cannot become the file under this cap: delete it rather than leave it to fill the disk.
        self.part.unlink(missing_ok=True)
        return DownloadError(
            f"Refusing {self.url}: the server {amount} the cap of {self.cap.limit} bytes ({self.cap.reason}); "
            f"nothing was kept. {self.cap.advice}, or {_manual_fallback(self.url, self.dest)}"
        )


def _stream_body(transfer: _Transfer, response: http.client.HTTPResponse, mode: str, offset: int, total: int | None) -> None:
    """Copy ``response`` into the part file (appending when ``mode`` is ``"ab"``), within the transfer's bounds."""
    if total is not None and total > transfer.cap.limit:
        raise transfer.too_large(f"announced {total} bytes, more than")
    # read1 returns what has arrived instead of waiting for a whole chunk, so a trickling server
    # cannot hold a read (and the deadline check after it) for long.
    read = getattr(response, "read1", response.read)
    downloaded = offset
    transfer.clock.begin_window()
    with open(transfer.part, mode) as out:
        while True:
            try:
                chunk = read(transfer.chunk_size)
            except _NETWORK_ERRORS as err:
                raise transfer.network_error(err) from err
            if not chunk:
                break
            if downloaded + len(chunk) > transfer.cap.limit:
                out.close()
                raise transfer.too_large("sent more than")
            out.write(chunk)
            downloaded += len(chunk)
            if transfer.progress is not None:
                transfer.progress(downloaded, total)
            problem = transfer.clock.problem(len(chunk))
            if problem is not None:
                out.close()
                raise transfer.network_error(problem)
    # http.client returns b"" instead of raising when the peer closes early,
    # so a truncated body has to be detected here.
    if total is not None and downloaded < total:
        raise transfer.network_error(f"connection closed after {downloaded} of {total} bytes")


def _fetch_into_part(transfer: _Transfer) -> bool:
    """Fill the part file with the resource at the URL, resuming if it already has data.

    Returns True when the server answered 416 (nothing left to send), i.e. the
    part is either complete or stale; the caller decides which by verifying it.
    """
    part = transfer.part
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(transfer.url, headers={"User-Agent": _USER_AGENT})
    if offset:
        request.add_header("Range", f"bytes={offset}-")

    try:
        response = urllib.request.urlopen(request, timeout=transfer.timeout)
    except urllib.error.HTTPError as err:
        err.close()
        if err.code == 416 and offset:
            if transfer.progress is not None:
                transfer.progress(offset, offset)
            return True
        raise transfer.network_error(f"HTTP {err.code} {err.reason}") from err
    except _NETWORK_ERRORS as err:
        raise transfer.network_error(getattr(err, "reason", err)) from err

    with response:
        # file:// responses have no status; like a 200 they carry the whole body.
        if response.status == 206:
            start, total = _parse_content_range(response.headers.get("Content-Range"))
            if start != offset:
                # The server sent some other byte range: appending it would corrupt
                # the file, so fall back to a clean full download.
                response.close()
                part.unlink()
                return _fetch_into_part(transfer)
            if total is None:
                length = _parse_int(response.headers.get("Content-Length"))
                total = offset + length if length is not None else None
            _stream_body(transfer, response, "ab", offset, total)
        else:
            # The server ignored the Range header and is sending everything.
            _stream_body(transfer, response, "wb", 0, _parse_int(response.headers.get("Content-Length")))
    return False


def _size_cap(size: int | None, max_bytes: int | None) -> _SizeCap:
    """The tighter of the registered size and ``max_bytes``; without either, :data:`DEFAULT_MAX_MB`."""
    larger = "If the file really is that large, pass a larger --max-mb"
    caps = []
    if size is not None:
        caps.append(_SizeCap(size, "the registered size of this file", "The server is not sending the registered file"))
    if max_bytes is not None:
        caps.append(_SizeCap(max_bytes, f"--max-mb {max_bytes / 2**20:.4g}", larger))
    if not caps:
        caps.append(_SizeCap(DEFAULT_MAX_MB << 20, f"the default cap of {DEFAULT_MAX_MB} MB for files of unknown size", larger))
    return min(caps, key=lambda cap: cap.limit)


def _verify_part(part: pathlib.Path, size: int | None, sha256: str | None) -> str | None:
    """Return a description of what is wrong with ``part``, or None if it is good."""
    if size is not None:
        actual_size = part.stat().st_size
        if actual_size != size:
            return f"its size is {actual_size} bytes, expected {size}"
    if sha256 is not None:
        actual = sha256_of_file(part)
        if actual.lower() != sha256.strip().lower():
            return f"its sha256 is {actual}, expected {sha256.strip().lower()}"
    return None


def download_file(
    url: str,
    dest: PathLike,
    sha256: str | None = None,
    size: int | None = None,
    progress: ProgressCallback | None = None,
    timeout: float = 60.0,
    chunk_size: int = 1 << 20,
    max_bytes: int | None = None,
    deadline: float | None = DEFAULT_DEADLINE_S,
    min_rate: float = DEFAULT_MIN_RATE,
) -> pathlib.Path:
    """Download ``url`` to ``dest`` (resumable, verified, atomic, bounded) and return ``dest``.

    If ``dest`` already exists it is verified against ``sha256`` (when given)
    and returned without touching the network. Otherwise data goes to
    ``dest.part``, which is resumed with an HTTP Range request if present, and
    is renamed to ``dest`` only after the size and hash checks pass.

    Args:
        timeout: seconds one connection attempt or read may wait for the server.
        max_bytes: the most bytes accepted (the tighter of this and ``size``; without
            either, :data:`DEFAULT_MAX_MB`), whatever the server announces or omits.
        deadline: seconds the whole download may take (None: no limit); checked after
            each read, so it can be overrun by at most ``timeout``.
        min_rate: bytes/s the transfer must average over each ``timeout``-long window.

    Raises:
        ValueError: the URL scheme is not http, https or file.
        ChecksumError: the existing file or the downloaded data is wrong.
        DownloadError: the transfer failed (the partial file is kept to resume), or the
            server sent more than the cap (nothing is kept).
    """
    _check_scheme(url)
    if max_bytes is not None and max_bytes <= 0:
        raise ValueError(f"max_bytes (--max-mb) must be positive, got {max_bytes}")
    dest = pathlib.Path(dest).expanduser()
    if dest.exists() and not dest.is_file():
        raise DownloadError(f"{dest} exists and is not a file: it was left untouched; pass another --cache-dir")
    if dest.exists():
        if sha256 is not None:
            actual = sha256_of_file(dest)
            if actual.lower() != sha256.strip().lower():
                # Never delete a file we did not create in this call: it may be
                # the user's own checkpoint.
                raise ChecksumError(
                    f"{dest} exists but its sha256 is {actual}, expected {sha256.strip().lower()}; "
                    f"it was left untouched: remove it to download again, or pass the right file with --checkpoint"
                )
        return dest

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = _part_path(dest)
    clock = _TransferClock(deadline=deadline, window=timeout, min_rate=min_rate)
    transfer = _Transfer(url, dest, part, _size_cap(size, max_bytes), clock, progress, timeout, chunk_size)
    for attempt in range(2):
        got_416 = _fetch_into_part(transfer)
        problem = _verify_part(part, size, sha256)
        if problem is None:
            os.replace(part, dest)
            return dest
        part.unlink(missing_ok=True)
        if got_416 and attempt == 0:
            # A 416 on a wrong part means it is stale (e.g. a different file
            # version); one clean restart is worth trying.
            continue
        raise ChecksumError(
            f"Downloaded {url} but {problem}; the corrupt data was deleted: run again, or {_manual_fallback(url, dest)}"
        )
    raise AssertionError("unreachable")  # pragma: no cover


# --------------------------------------------------------------------------- #
# Named weights
# --------------------------------------------------------------------------- #


def _looks_like_url(text: str) -> bool:
    return "://" in text


def _filename_from_url(url: str) -> str:
    """The URL's last path segment, percent-decoded, if it is a plain file name that stays in the cache folder."""
    # Split before decoding: "%2F" must not create a segment, and "a/%2e%2e" must stay the name "..".
    raw = urllib.parse.urlparse(url).path.rsplit("/", 1)[-1]
    name = urllib.parse.unquote(raw)
    if not _is_plain_file_name(name):
        raise ValueError(
            f"Cannot derive a safe file name from URL {url!r}: its last part {raw!r} decodes to {name!r}; "
            "the URL must end with a plain file name such as medsam_vit_b.pth"
        )
    return name


def _is_plain_file_name(name: str) -> bool:
    # A leading dot covers "." and ".." (and hidden files); trailing dots and spaces vanish on Windows.
    return (
        bool(name)
        and not name.startswith(".")
        and name == name.rstrip(". ")
        and not _UNSAFE_NAME_CHARS.search(name)
        and len(name.encode("utf-8", "surrogateescape")) <= 255
    )


def fetch_weights(
    name_or_url: str,
    cache_dir: PathLike | None = None,
    sha256: str | None = None,
    progress: ProgressCallback | None = None,
    max_bytes: int | None = None,
) -> pathlib.Path:
    """Return the local path of a checkpoint, downloading it into the cache once.

    Args:
        name_or_url: a key of :data:`KNOWN_WEIGHTS` or a raw http/https/file URL.
        cache_dir: where to store it; defaults to :func:`default_cache_dir`.
        sha256: expected digest; overrides the registry value when given.
        progress: optional ``(downloaded, total)`` callback.
        max_bytes: the most bytes accepted; the registered size caps known weights anyway.
    """
    directory = pathlib.Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    source = KNOWN_WEIGHTS.get(name_or_url)
    if source is not None:
        return download_file(
            source.url,
            directory / source.filename,
            sha256=sha256 or source.sha256,
            size=source.size,
            progress=progress,
            max_bytes=max_bytes,
        )
    if not _looks_like_url(name_or_url):
        raise ValueError(
            f"Unknown weights {name_or_url!r}: expected one of {', '.join(sorted(KNOWN_WEIGHTS))} or an http(s)/file URL"
        )
    _check_scheme(name_or_url)
    destination = directory / _filename_from_url(name_or_url)
    return download_file(name_or_url, destination, sha256=sha256, progress=progress, max_bytes=max_bytes)
