"""The HTTP layer under slow, silent and malformed clients, and shutdown (issue 14, items 2, 4, 5).

Raw sockets over loopback against the server ``medsam serve`` runs (uvicorn with
:class:`~medsam_monai.server.http.GuardedH11Protocol`, in a thread), with short deadlines so that
every test ends in seconds; two tests run ``medsam serve`` itself in a subprocess (an open-file
limit of 128, and SIGTERM).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib

import numpy as np
import pytest
from fastapi.testclient import TestClient

from medsam_monai.phantom import ct_phantom
from medsam_monai.predictor import MedSAMPredictor
from medsam_monai.server import ServerSettings, create_app
from medsam_monai.server.codec import encode_array
from medsam_monai.server.guard import RequestGuard
from medsam_monai.server.testing import ServerThread, fast_tiny_predictor

TIMEOUT = 0.5  # request_timeout_s of the in-process servers


@pytest.fixture(scope="module")
def model():
    return fast_tiny_predictor().model


def serve(model, **settings) -> ServerThread:
    settings.setdefault("prefetch_slices", 0)
    settings.setdefault("request_timeout_s", TIMEOUT)
    return ServerThread(create_app(MedSAMPredictor(model), ServerSettings(**settings)))


def connect(server: ServerThread) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    return sock


def read_until_closed(sock: socket.socket, limit_s: float = 10.0) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    start = time.monotonic()
    sock.settimeout(limit_s)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data, time.monotonic() - start


def parse_answer(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


def assert_json_error(raw: bytes, status: int, code: str, detail: str) -> dict:
    got, headers, body = parse_answer(raw)
    assert got == status, raw
    assert headers["content-type"] == "application/json", headers
    answer = json.loads(body)
    assert answer["code"] == code and detail in answer["detail"], answer
    return answer


def server_connections(server: ServerThread) -> int:
    return sum(1 for c in list(server._server.server_state.connections) if not c.transport.is_closing())


# ----- deadlines ---------------------------------------------------------------------------------


def test_a_silent_connection_is_closed_after_the_request_timeout(model):
    with serve(model) as server:
        sock = connect(server)
        data, waited = read_until_closed(sock)
    assert data == b"" and TIMEOUT * 0.8 < waited < TIMEOUT + 3


@pytest.mark.parametrize(
    "sent",
    [b"GET /hea", b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n"],
    ids=["half a request line", "headers without their end"],
)
def test_partial_headers_get_408_after_the_request_timeout(model, sent):
    with serve(model) as server:
        sock = connect(server)
        sock.sendall(sent)
        data, waited = read_until_closed(sock)
    assert_json_error(data, 408, "timeout", "request headers not received within")
    assert waited < TIMEOUT + 3


def test_headers_sent_a_byte_at_a_time_still_meet_the_deadline(model):
    """The deadline runs from the connection's opening, not from the last byte."""
    request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 200 + b"\r\n\r\n"
    with serve(model) as server:
        sock = connect(server)
        start = time.monotonic()
        try:
            for byte in request:
                sock.sendall(bytes([byte]))
                time.sleep(0.05)
        except (BrokenPipeError, ConnectionResetError):
            pass
        data, _ = read_until_closed(sock)
    assert time.monotonic() - start < 5  # 200 bytes at 20/s would take 10 s
    assert_json_error(data, 408, "timeout", "headers")


def test_a_body_shorter_than_its_content_length_gets_408(model):
    with serve(model) as server:
        sock = connect(server)
        sock.sendall(
            b"POST /sessions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"volume": '
        )
        data, waited = read_until_closed(sock)
    answer = assert_json_error(data, 408, "timeout", "request body too slow")
    assert "11 of 1000 bytes" in answer["detail"] and waited < TIMEOUT + 3


def test_a_trickling_body_gets_408_once_it_falls_below_the_minimum_rate(model):
    with serve(model, min_body_bytes_per_s=1000) as server:
        sock = connect(server)
        sock.sendall(b"POST /sessions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\n")
        start = time.monotonic()
        try:  # 10 bytes every 0.1 s: never silent for the timeout, but 100 bytes/s
            while time.monotonic() - start < 10:
                sock.sendall(b" " * 10)
                time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):
            pass
        data, _ = read_until_closed(sock)
    assert time.monotonic() - start < 5
    assert_json_error(data, 408, "timeout", "KB/s or faster")


def test_an_idle_keep_alive_connection_is_closed_and_a_half_sent_next_request_too(model):
    with serve(model, keep_alive_s=0.3) as server:
        for rest, pipelined in [(b"", False), (b"GET /heal", False), (b"GET /heal", True)]:
            sock = connect(server)
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" + (rest if pipelined else b""))
            if rest and not pipelined:
                time.sleep(0.1)  # the answer has come: the next request starts on an idle connection
                sock.sendall(rest)
            data, waited = read_until_closed(sock)
            assert data.startswith(b"HTTP/1.1 200") and waited < TIMEOUT + 3
            if rest:  # the second, unfinished request got its 408
                assert data.count(b"HTTP/1.1 ") == 2 and b'"code": "timeout"' in data, data


# ----- the connection cap ------------------------------------------------------------------------


def test_silent_connections_beyond_the_cap_make_room_and_health_still_answers(model):
    """200 silent connections once kept /health from answering; now the oldest give way."""
    with serve(model, max_connections=8, request_timeout_s=30) as server:
        silent = [connect(server) for _ in range(40)]
        time.sleep(0.3)
        assert server_connections(server) <= 8
        start = time.monotonic()
        health = connect(server)
        health.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        data, _ = read_until_closed(health)
        assert data.startswith(b"HTTP/1.1 200") and time.monotonic() - start < 3
        closed, _ = read_until_closed(silent[0], limit_s=1)  # the first ones were closed to make room
        assert closed == b""
        for sock in silent:
            sock.close()


def test_a_connection_beyond_the_cap_gets_503_when_every_other_is_in_a_request(model):
    phantom = ct_phantom(shape=(24, 20, 4), spacing=(3.0, 3.0, 5.0)).volume
    with serve(model, max_connections=2) as server:
        client = TestClient(server.app)  # same app, no socket: the upload does not count
        upload = {"volume": encode_array(phantom.array), "ijk_to_ras": phantom.affine.tolist()}
        session = client.post("/sessions", json=upload).json()["session_id"]
        state = server.app.state.server
        request = json.dumps({"box": [0, 0, 0, 10, 10, 3]}).encode()
        head = (
            f"POST /sessions/{session}/segment HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(request)}\r\n"
            "Content-Type: application/json\r\n\r\n"
        ).encode()
        with state.gate.model_call():  # both requests wait for the network
            busy = [connect(server) for _ in range(2)]
            for sock in busy:
                sock.sendall(head + request)
            deadline = time.monotonic() + 10
            while state.gate._waiting < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            extra = connect(server)
            data, _ = read_until_closed(extra)
        assert_json_error(data, 503, "busy", "connections in use")
        for sock in busy:
            answer, _ = read_until_closed(sock)
            assert answer.startswith(b"HTTP/1.1 200")


# ----- malformed HTTP --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_bytes, reason",
    [
        (b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: 127.0.0.1\r\n\r\n", "multiple Host"),
        (b"POST /sessions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: abc\r\n\r\n", "Content-Length"),
        (b"POST /sessions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n", "Content-Length"),
        (b"POST /sessions HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "chunk"),
        # h11 refuses a request head that is still incomplete past 16 KB (sent in two parts here)
        ((b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 20_000, b"\r\n\r\n"), "too long"),
        (b"NOT HTTP AT ALL\r\n\r\n", ""),
    ],
    ids=["duplicate Host", "bad Content-Length", "two Content-Lengths", "bad chunk", "headers over 16 KB", "garbage"],
)
def test_malformed_http_gets_a_400_in_the_error_format(model, request_bytes, reason):
    with serve(model) as server:
        sock = connect(server)
        for part in request_bytes if isinstance(request_bytes, tuple) else (request_bytes,):
            try:
                sock.sendall(part)
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.1)
        data, _ = read_until_closed(sock)
    answer = assert_json_error(data, 400, "invalid_request", "malformed HTTP request")
    assert reason.lower() in answer["detail"].lower()


# ----- shutdown -------------------------------------------------------------------------------


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_shutdown_during_a_segmentation_answers_503_and_stops_cleanly(model):
    """Stopping the server (what SIGTERM does) while a 3D segmentation waits for the network:
    503 ``shutting_down`` at once, not a bare 500 after the grace period, and nothing logged as
    an error."""
    phantom = ct_phantom(shape=(24, 20, 6), spacing=(3.0, 3.0, 5.0)).volume
    server = serve(model, shutdown_grace_s=30)
    records = Records()
    logging.getLogger("uvicorn.error").addHandler(records)
    try:
        with server:
            client = TestClient(server.app)
            upload = {"volume": encode_array(phantom.array), "ijk_to_ras": phantom.affine.tolist()}
            session = client.post("/sessions", json=upload).json()["session_id"]
            state = server.app.state.server
            answers: list[bytes] = []
            request = json.dumps({"box": [0, 0, 0, 20, 16, 5]}).encode()
            with state.gate.model_call():  # the network is busy: the request waits for it
                sock = connect(server)
                sock.sendall(
                    f"POST /sessions/{session}/segment HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                    f"application/json\r\nContent-Length: {len(request)}\r\n\r\n".encode()
                    + request
                )
                reader = threading.Thread(target=lambda: answers.append(read_until_closed(sock)[0]))
                reader.start()
                deadline = time.monotonic() + 10
                while state.gate._waiting < 1 and time.monotonic() < deadline:
                    time.sleep(0.02)
                started = time.monotonic()
                server._server.should_exit = True  # what uvicorn's SIGTERM handler does
                reader.join(timeout=20)
            assert answers, "no answer"
            assert time.monotonic() - started < 5  # not the 30 s grace period
        assert not server._thread.is_alive()
    finally:
        logging.getLogger("uvicorn.error").removeHandler(records)
    assert_json_error(answers[0], 503, "shutting_down", "shutting down")
    errors = [r for r in records.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


def test_a_job_running_at_shutdown_is_cancelled_with_the_reason(model):
    phantom = ct_phantom(shape=(24, 20, 6), spacing=(3.0, 3.0, 5.0)).volume
    app = create_app(MedSAMPredictor(model), ServerSettings(prefetch_slices=0))
    with TestClient(app) as client:
        state = app.state.server
        upload = {"volume": encode_array(phantom.array), "ijk_to_ras": phantom.affine.tolist()}
        session = client.post("/sessions", json=upload).json()["session_id"]
        with state.gate.model_call():
            job_id = client.post(f"/sessions/{session}/jobs", json={"box": [0, 0, 0, 20, 16, 5]}).json()["job_id"]
            job = state.store.get(session).jobs[job_id]
            state.begin_shutdown()
        deadline = time.monotonic() + 10
        while not job.finished and time.monotonic() < deadline:
            time.sleep(0.02)
        assert job.state == "cancelled" and job.detail == "the server is shutting down"
        answer = client.get("/health")  # and every new request is told why
        assert answer.status_code == 503 and answer.json()["code"] == "shutting_down"


def test_a_request_cut_off_at_the_end_of_the_grace_period_still_gets_a_json_503():
    """When a network call outlasts the grace period uvicorn cancels the request's task; the guard
    turns the cancellation into 503 ``shutting_down`` (this is the guard alone, around an app
    that never answers)."""
    shutting_down = threading.Event()
    sent: list[dict] = []

    async def never_answers(scope, receive, send):
        await asyncio.Event().wait()

    async def run() -> None:
        guard = RequestGuard(never_answers, ServerSettings(), shutting_down=shutting_down)
        messages = iter([{"type": "http.request", "body": b"", "more_body": False}])

        async def receive():
            return next(messages)

        async def send(message):
            sent.append(message)

        task = asyncio.ensure_future(guard({"type": "http", "path": "/health", "headers": []}, receive, send))
        await asyncio.sleep(0.05)
        shutting_down.set()
        task.cancel()
        await task  # the guard answered instead of letting the cancellation through

    asyncio.run(run())
    assert sent[0]["status"] == 503
    assert json.loads(sent[1]["body"])["code"] == "shutting_down"


# ----- medsam serve itself --------------------------------------------------------------------


class MedSAMServe:
    """``medsam serve --variant tiny`` (the packaged demo model) in a subprocess on a free loopback
    port, under an open-file limit if given; its output is read all along (a full pipe would block
    it) into ``output``."""

    def __init__(self, *extra: str, open_files: int | None = None) -> None:
        self.process, self.url = start_medsam_serve(*extra, open_files=open_files)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(iter(self.process.stdout.readline, "")), daemon=True)
        self._reader.start()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait(self, timeout: float) -> int:
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


# `python -m medsam_monai.cli`, with the open-file limit of argv[1] first (0: unchanged).
_LIMITED_CLI = """
import resource, runpy, sys
limit = int(sys.argv.pop(1))
if limit:
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
sys.argv[0] = "medsam"
runpy.run_module("medsam_monai.cli", run_name="__main__")
"""


def start_medsam_serve(*extra: str, open_files: int | None = None) -> tuple[subprocess.Popen, str]:
    """``medsam serve --variant tiny`` started, and the URL it listens on."""
    command = [
        sys.executable,
        "-c",
        _LIMITED_CLI,
        str(open_files or 0),
        "serve",
        "--variant",
        "tiny",
        "--device",
        "cpu",
        "--port",
        "0",
        "--prefetch-slices",
        "0",
        *extra,
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        found = re.search(r"listening on (http://\S+)", line)
        if found:
            return process, found.group(1)
    process.kill()
    raise AssertionError("medsam serve did not start:\n" + "".join(lines))


def http_request(url: str, method: str, path: str, body: dict | None = None, timeout: float = 60) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, json.loads(answer.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.mark.skipif(sys.platform != "linux", reason="open-file limits and /proc as on Linux")
def test_medsam_serve_at_128_open_files_answers_health_beside_200_silent_connections():
    served = MedSAMServe(open_files=128)
    port = int(served.url.rsplit(":", 1)[1])
    silent: list[socket.socket] = []
    try:
        for _ in range(200):
            silent.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        time.sleep(1.0)
        start = time.monotonic()
        status, health = http_request(served.url, "GET", "/health", timeout=10)
        assert status == 200 and health["status"] == "ok"
        assert time.monotonic() - start < 5
        assert len(os.listdir(f"/proc/{served.process.pid}/fd")) < 128
    finally:
        for sock in silent:
            sock.close()
        served.process.terminate()
        served.wait(timeout=60)
        served.stop()
    assert "Traceback" not in served.output, served.output


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM")
def test_sigterm_during_a_segmentation_answers_503_and_exits_without_a_traceback():
    served = MedSAMServe()
    url = served.url
    try:
        phantom = ct_phantom(shape=(64, 64, 30), spacing=(1.0, 1.0, 2.0)).volume
        raw = np.asarray(phantom.array).tobytes(order="F")
        volume = {
            "dtype": phantom.array.dtype.name,
            "shape": list(phantom.shape),
            "compression": "zlib",
            "data": base64.b64encode(zlib.compress(raw)).decode(),
        }
        status, info = http_request(
            url, "POST", "/sessions", {"volume": volume, "ijk_to_ras": phantom.affine.tolist(), "prefetch": False}
        )
        assert status == 201, info
        answers: list[tuple[int, dict]] = []
        box = {"box": [4, 4, 0, 60, 60, 29]}  # 30 slices: many seconds of the tiny model on a CPU
        segment = threading.Thread(
            target=lambda: answers.append(http_request(url, "POST", f"/sessions/{info['session_id']}/segment", box, timeout=120))
        )
        segment.start()
        time.sleep(3.0)
        assert not answers, "the segmentation ended before SIGTERM: the test needs a longer one"
        sent = time.monotonic()
        served.process.send_signal(signal.SIGTERM)
        segment.join(timeout=60)
        code = served.wait(timeout=60)
    finally:
        served.stop()
    assert answers and answers[0][0] == 503 and answers[0][1]["code"] == "shutting_down", answers
    assert time.monotonic() - sent < 30
    assert "Traceback" not in served.output and "CancelledError" not in served.output, served.output
    assert code in (143, -signal.SIGTERM), code  # ended by the signal (143: through medsam's own handler)


def test_medsam_serve_with_sam_preprocessing_reports_it_and_answers_an_everything_job_over_http():
    served = MedSAMServe("--preprocessing", "sam")
    url = served.url
    try:
        status, health = http_request(url, "GET", "/health")
        assert status == 200 and health["preprocessing"] == "sam" and health["variant"] == "tiny"
        phantom = ct_phantom(shape=(24, 20, 4), spacing=(3.0, 3.0, 5.0)).volume
        upload = {"volume": encode_array(phantom.array), "ijk_to_ras": phantom.affine.tolist(), "prefetch": False}
        status, info = http_request(url, "POST", "/sessions", upload)
        assert status == 201, info
        path = f"/sessions/{info['session_id']}/everything"
        status, job = http_request(url, "POST", path, {"ijk": [0, 0, 2], "points_per_side": 2, "pred_iou_thresh": 0.0})
        assert status == 202 and job["total"] == 1, job
        deadline = time.monotonic() + 60
        while job["state"] not in ("done", "failed", "cancelled") and time.monotonic() < deadline:
            time.sleep(0.1)
            status, job = http_request(url, "GET", f"{path}/{job['job_id']}")
        assert job["state"] == "done", job
        result = job["result"]
        assert result["labels"]["dtype"] == "uint16" and result["labels"]["shape"] == [24, 20, 1]
        assert result["slice_range"] == [2, 2] and result["masks"] == len(result["records"])
        status, error = http_request(url, "POST", path, {"ijk": [0, 0, 2], "crop_n_layers": 9})
        assert status == 422 and "crop_n_layers" in error["detail"]
        served.process.terminate()
        served.wait(timeout=60)
    finally:
        served.stop()
    assert "Traceback" not in served.output, served.output
