"""Tests for medsam_monai.download against a real local HTTP server (no internet)."""

from __future__ import annotations

import hashlib
import http.server
import io
import itertools
import random
import re
import socket
import threading
import time
from dataclasses import dataclass, field

import pytest

from medsam_monai import download
from medsam_monai.cli import main
from medsam_monai.cli.progress import download_progress, terminal_bar
from medsam_monai.download import (
    DEFAULT_MAX_MB,
    KNOWN_WEIGHTS,
    ChecksumError,
    DownloadError,
    WeightsSource,
    default_cache_dir,
    download_file,
    fetch_weights,
    sha256_of_file,
    verify_sha256,
)

PAYLOAD = random.Random(1234).randbytes(300_000)
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
CHUNK = 32 * 1024


@dataclass
class ServerState:
    """Per-test knobs and observations shared with the request handler."""

    payload: bytes = PAYLOAD
    ignore_range: bool = False
    fail_status: int | None = None
    cut_first_after: int | None = None
    omit_length: bool = False  # no Content-Length: the body ends when the connection closes
    trickle_interval: float | None = None  # send the body one byte per interval
    range_headers: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def request_count(self) -> int:
        return len(self.range_headers)


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, format, *args):
        pass

    def do_GET(self):
        state: ServerState = self.server.state
        range_header = self.headers.get("Range")
        with state.lock:
            state.range_headers.append(range_header)
            first = state.request_count == 1
        if self.path != "/weights.bin" or state.fail_status is not None:
            self.send_error(state.fail_status or 404)
            return

        payload, start, status = state.payload, 0, 200
        match = re.fullmatch(r"bytes=(\d+)-", (range_header or "").strip())
        if match and not state.ignore_range:
            start = int(match.group(1))
            if start >= len(payload):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(payload)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206

        body = payload[start:]
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        if not state.omit_length:
            self.send_header("Content-Length", str(len(body)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(payload) - 1}/{len(payload)}")
        self.end_headers()
        if first and state.cut_first_after is not None:
            # Promise the full length but hang up early, like a dropped connection.
            self.wfile.write(body[: state.cut_first_after])
            self.wfile.flush()
            self.close_connection = True
            return
        if state.trickle_interval is not None:
            self._trickle(body, state.trickle_interval)
            return
        self.wfile.write(body)

    def _trickle(self, body: bytes, interval: float) -> None:
        try:
            for i in range(len(body)):
                self.wfile.write(body[i : i + 1])
                self.wfile.flush()
                time.sleep(interval)
        except OSError:
            pass  # the client gave up, as it should


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # client hang-ups are expected in some tests


@dataclass
class LocalServer:
    state: ServerState
    base: str

    @property
    def url(self) -> str:
        return f"{self.base}/weights.bin"


@pytest.fixture
def server():
    httpd = _QuietServer(("127.0.0.1", 0), _Handler)
    httpd.state = ServerState()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield LocalServer(httpd.state, f"http://127.0.0.1:{httpd.server_address[1]}")
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _part(dest):
    return dest.with_name(dest.name + ".part")


def _assert_actionable(err: DownloadError, url: str) -> None:
    message = str(err)
    assert "\n" not in message
    assert url in message
    assert "--checkpoint" in message


# --------------------------------------------------------------------------- #


def test_fresh_download_verifies_and_reports_progress(server, tmp_path):
    dest = tmp_path / "sub" / "dir" / "w.bin"
    calls = []
    result = download_file(
        server.url, dest, sha256=PAYLOAD_SHA, size=len(PAYLOAD), progress=lambda d, t: calls.append((d, t)), chunk_size=CHUNK
    )
    assert result == dest
    assert dest.read_bytes() == PAYLOAD
    assert not _part(dest).exists()
    counts = [d for d, _ in calls]
    assert len(counts) > 1
    assert all(a < b for a, b in itertools.pairwise(counts))
    assert counts[-1] == len(PAYLOAD)
    assert all(t == len(PAYLOAD) for _, t in calls)
    assert server.state.range_headers == [None]


def test_resume_after_dropped_connection(server, tmp_path):
    server.state.cut_first_after = 100_000
    dest = tmp_path / "w.bin"
    with pytest.raises(DownloadError) as info:
        download_file(server.url, dest, sha256=PAYLOAD_SHA, chunk_size=CHUNK)
    _assert_actionable(info.value, server.url)
    part = _part(dest)
    assert not dest.exists()
    kept = part.stat().st_size
    assert 0 < kept < len(PAYLOAD)

    download_file(server.url, dest, sha256=PAYLOAD_SHA, chunk_size=CHUNK)
    assert server.state.range_headers[-1] == f"bytes={kept}-"
    assert dest.read_bytes() == PAYLOAD
    assert not part.exists()


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    server.state.ignore_range = True
    dest = tmp_path / "w.bin"
    _part(dest).write_bytes(PAYLOAD[:50_000])
    download_file(server.url, dest, sha256=PAYLOAD_SHA, size=len(PAYLOAD), chunk_size=CHUNK)
    assert server.state.range_headers == ["bytes=50000-"]
    assert dest.read_bytes() == PAYLOAD
    assert not _part(dest).exists()


def test_complete_part_with_416_is_accepted(server, tmp_path):
    dest = tmp_path / "w.bin"
    _part(dest).write_bytes(PAYLOAD)
    download_file(server.url, dest, sha256=PAYLOAD_SHA)
    assert dest.read_bytes() == PAYLOAD
    assert server.state.request_count == 1


def test_stale_part_with_416_restarts_once(server, tmp_path):
    dest = tmp_path / "w.bin"
    _part(dest).write_bytes(b"x" * (len(PAYLOAD) + 10))
    download_file(server.url, dest, sha256=PAYLOAD_SHA)
    assert dest.read_bytes() == PAYLOAD
    assert server.state.range_headers == [f"bytes={len(PAYLOAD) + 10}-", None]


def test_wrong_sha256_deletes_part_and_raises(server, tmp_path):
    dest = tmp_path / "w.bin"
    with pytest.raises(ChecksumError) as info:
        download_file(server.url, dest, sha256="0" * 64)
    assert "\n" not in str(info.value)
    assert not dest.exists()
    assert not _part(dest).exists()


def test_wrong_size_deletes_part_and_raises(server, tmp_path):
    dest = tmp_path / "w.bin"
    with pytest.raises(ChecksumError):
        download_file(server.url, dest, size=len(PAYLOAD) + 1)
    assert not dest.exists()
    assert not _part(dest).exists()


def test_existing_dest_with_right_hash_makes_no_request(server, tmp_path):
    dest = tmp_path / "w.bin"
    dest.write_bytes(PAYLOAD)
    before = server.state.request_count
    assert download_file(server.url, dest, sha256=PAYLOAD_SHA.upper()) == dest
    assert server.state.request_count == before


def test_existing_dest_with_wrong_hash_is_kept(server, tmp_path):
    dest = tmp_path / "w.bin"
    dest.write_bytes(b"not the weights")
    with pytest.raises(ChecksumError) as info:
        download_file(server.url, dest, sha256=PAYLOAD_SHA)
    assert str(dest) in str(info.value)
    assert "\n" not in str(info.value)
    assert dest.read_bytes() == b"not the weights"
    assert server.state.request_count == 0


def test_http_404_raises_actionable_error(server, tmp_path):
    server.state.fail_status = 404
    dest = tmp_path / "w.bin"
    with pytest.raises(DownloadError) as info:
        download_file(server.url, dest)
    _assert_actionable(info.value, server.url)
    assert "404" in str(info.value)
    assert not isinstance(info.value, ChecksumError)
    assert not dest.exists()


def test_connection_refused_raises_actionable_error(tmp_path):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    url = f"http://127.0.0.1:{port}/weights.bin"
    with pytest.raises(DownloadError) as info:
        download_file(url, tmp_path / "w.bin", timeout=5.0)
    _assert_actionable(info.value, url)


def test_file_url_works(tmp_path):
    source = tmp_path / "mirror" / "w.bin"
    source.parent.mkdir()
    source.write_bytes(PAYLOAD)
    dest = tmp_path / "out" / "w.bin"
    download_file(source.as_uri(), dest, sha256=PAYLOAD_SHA, size=len(PAYLOAD))
    assert dest.read_bytes() == PAYLOAD
    assert not _part(dest).exists()


def test_missing_file_url_raises_download_error(tmp_path):
    url = (tmp_path / "absent.bin").as_uri()
    with pytest.raises(DownloadError) as info:
        download_file(url, tmp_path / "w.bin")
    _assert_actionable(info.value, url)


def test_unsupported_scheme_rejected(tmp_path):
    with pytest.raises(ValueError):
        download_file("ftp://example.com/w.bin", tmp_path / "w.bin")
    with pytest.raises(ValueError):
        fetch_weights("ftp://example.com/w.bin", cache_dir=tmp_path)


def test_fetch_weights_raw_url_caches_once(server, tmp_path):
    path = fetch_weights(server.url, cache_dir=tmp_path, sha256=PAYLOAD_SHA)
    assert path == tmp_path / "weights.bin"
    assert path.read_bytes() == PAYLOAD
    assert fetch_weights(server.url, cache_dir=tmp_path, sha256=PAYLOAD_SHA) == path
    assert server.state.request_count == 1


def test_fetch_weights_unknown_name_lists_known(tmp_path):
    with pytest.raises(ValueError) as info:
        fetch_weights("medsam_vit_z", cache_dir=tmp_path)
    for name in KNOWN_WEIGHTS:
        assert name in str(info.value)


def test_known_weights_are_well_formed():
    assert {"medsam_vit_b", "sam_vit_b", "sam_vit_l", "sam_vit_h"} <= set(KNOWN_WEIGHTS)
    for key, source in KNOWN_WEIGHTS.items():
        assert source.name == key
        assert source.url.startswith("https://")
        assert source.filename and "/" not in source.filename
        assert source.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", source.sha256)
        assert source.size is None or source.size > 0


def test_sha256_helpers_match_hashlib(tmp_path):
    path = tmp_path / "blob.bin"
    path.write_bytes(PAYLOAD)
    assert sha256_of_file(path, chunk_size=4096) == PAYLOAD_SHA
    verify_sha256(path, PAYLOAD_SHA.upper())
    with pytest.raises(ChecksumError) as info:
        verify_sha256(path, "f" * 64)
    message = str(info.value)
    assert str(path) in message and PAYLOAD_SHA in message and "f" * 64 in message


def test_default_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDSAM_CACHE_DIR", str(tmp_path / "explicit"))
    assert default_cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("MEDSAM_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "medsam_monai"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir().parts[-2:] == (".cache", "medsam_monai")


class _FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_download_progress_only_draws_on_tty():
    quiet = io.StringIO()
    report = download_progress(quiet)
    report(10, 100)
    report(100, 100)
    assert quiet.getvalue() == ""

    tty = _FakeTTY()
    report = download_progress(tty)
    report(50, 100)
    report(100, 100)
    report(7, None)
    text = tty.getvalue()
    assert text.count("\r") == 3
    assert "100.0%" in text


def test_download_and_slice_progress_draw_the_same_bar(capsys):
    """One bar drawer: a download's bytes and a volume's slices fill the same 30 characters alike."""
    tty = _FakeTTY()
    download_progress(tty)(1_500_000, 3_000_000)
    terminal_bar("segmenting")(20, 40)
    half = "#" * 15 + "." * 15
    assert tty.getvalue() == f"\r[{half}]  50.0% 1.5/3.0 MB"
    assert capsys.readouterr().err == f"\rsegmenting [{half}] 20/40 slices"


# --------------------------------------------------------------------------- #
# File names from URLs, size caps, deadlines
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    "tail",
    [
        "%2e%2e",
        "%2E%2E",
        "sub/%2e%2e",
        "..",
        ".",
        "%2e",
        "..%2f..%2fetc%2fpasswd",
        "a%5cb.pth",
        "a%00b.pth",
        ".hidden",
        "w.pth%20",
        "",
    ],
)
def test_url_file_names_must_be_plain(server, tmp_path, tail):
    cache = tmp_path / "cache"
    cache.mkdir()  # an existing cache is what made "cache/.." an "already downloaded" file
    url = f"{server.base}/models/{tail}"
    with pytest.raises(ValueError, match="safe file name") as info:
        fetch_weights(url, cache_dir=cache)
    assert "\n" not in str(info.value)
    assert server.state.request_count == 0
    assert [p.name for p in tmp_path.iterdir()] == ["cache"] and list(cache.iterdir()) == []


def test_cli_download_of_a_dot_dot_url_prints_no_path(server, tmp_path, capsys):
    """It used to exit 0 printing the cache's parent folder."""
    (tmp_path / "cache").mkdir()
    assert main(["download", f"{server.base}/x/%2e%2e", "--cache-dir", str(tmp_path / "cache")]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("medsam: error: ") and err.count("\n") == 1 and "safe file name" in err


def test_percent_encoded_plain_name_is_kept(tmp_path):
    source = tmp_path / "mirror" / "my model.pth"
    source.parent.mkdir()
    source.write_bytes(PAYLOAD)
    path = fetch_weights(source.as_uri(), cache_dir=tmp_path / "cache", sha256=PAYLOAD_SHA)
    assert path == tmp_path / "cache" / "my model.pth"


def test_body_without_content_length_is_capped(server, tmp_path):
    server.state.omit_length = True
    dest = tmp_path / "w.bin"
    with pytest.raises(DownloadError, match=r"the server sent more than the cap of 100000 bytes \(--max-mb") as info:
        download_file(server.url, dest, max_bytes=100_000, chunk_size=CHUNK)
    assert "\n" not in str(info.value)
    assert not dest.exists() and not _part(dest).exists()
    # The same body within the cap downloads fine: the cap is not a refusal of length-less responses.
    download_file(server.url, dest, sha256=PAYLOAD_SHA, max_bytes=len(PAYLOAD), chunk_size=CHUNK)
    assert dest.read_bytes() == PAYLOAD


def test_announced_length_over_the_cap_is_refused_before_writing(server, tmp_path):
    dest = tmp_path / "w.bin"
    with pytest.raises(DownloadError, match=f"announced {len(PAYLOAD)} bytes, more than the cap of 1000 bytes"):
        download_file(server.url, dest, max_bytes=1000)
    assert not dest.exists() and not _part(dest).exists()


def test_registered_size_caps_known_weights(server, tmp_path, monkeypatch):
    # A registry entry pointing at the local server (the registry is data; the network path is real).
    source = WeightsSource("local", server.url, "local.bin", None, 50_000, "test weights")
    monkeypatch.setitem(KNOWN_WEIGHTS, "local", source)
    server.state.omit_length = True
    with pytest.raises(DownloadError, match=r"cap of 50000 bytes \(the registered size.*not sending the registered file"):
        fetch_weights("local", cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_default_cap_applies_without_size_or_max(monkeypatch):
    assert download._size_cap(None, None).limit == DEFAULT_MAX_MB << 20
    assert download._size_cap(10, 5).limit == 5 and download._size_cap(10, None).limit == 10


def test_cli_max_mb(server, tmp_path, capsys):
    server.state.omit_length = True
    cache = tmp_path / "cache"
    assert main(["download", server.url, "--cache-dir", str(cache), "--max-mb", "0.05"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("medsam: error: ") and err.count("\n") == 1 and "--max-mb 0.05" in err
    assert list(cache.iterdir()) == []
    assert main(["download", server.url, "--cache-dir", str(cache), "--max-mb", "0"]) == 2
    assert "must be positive" in capsys.readouterr().err
    assert main(["download", server.url, "--cache-dir", str(cache), "--max-mb", "1"]) == 0
    assert (cache / "weights.bin").read_bytes() == PAYLOAD


def test_trickling_server_is_dropped_as_stalled(server, tmp_path):
    """50 bytes/s never trips a per-read timeout; the rate over each window does."""
    server.state.trickle_interval = 0.02
    dest = tmp_path / "w.bin"
    start = time.monotonic()
    with pytest.raises(DownloadError, match=r"stalled: \d+ bytes in [\d.]+ s, under the minimum of 1000 bytes/s") as info:
        download_file(server.url, dest, timeout=0.5, min_rate=1000, deadline=None)
    assert time.monotonic() - start < 5
    _assert_actionable(info.value, server.url)
    assert "run again to resume" in str(info.value) and 0 < _part(dest).stat().st_size < len(PAYLOAD)


def test_overall_deadline_ends_a_slow_download(server, tmp_path):
    server.state.trickle_interval = 0.02
    dest = tmp_path / "w.bin"
    start = time.monotonic()
    with pytest.raises(DownloadError, match=r"not finished after 0.6 s, the download deadline") as info:
        download_file(server.url, dest, timeout=5.0, min_rate=0, deadline=0.6)
    assert 0.6 <= time.monotonic() - start < 5
    _assert_actionable(info.value, server.url)


def test_existing_folder_as_destination_is_refused(tmp_path):
    (tmp_path / "w.bin").mkdir()
    with pytest.raises(DownloadError, match="is not a file"):
        download_file((tmp_path / "absent").as_uri(), tmp_path / "w.bin")
