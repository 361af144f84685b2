"""The Slicer module's Slicer-free helpers: consent store, local server process, tasks, undo, options."""

from __future__ import annotations

import json
import os
import stat
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "slicer_extension" / "MedSAM"))

from MedSAMLib import consent, options, server_process, tasks, undo  # noqa: E402

# ----- consent ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "a, b",
    [
        ("http://localhost:8123", "HTTP://LOCALHOST:8123/"),
        ("http://example.org", "http://example.org:80"),
        ("https://example.org/medsam/", "https://Example.org:443/medsam"),
        ("http://[::1]:8123", "http://[::1]:8123/"),
    ],
)
def test_server_addresses_that_are_the_same_server(a, b):
    assert consent.normalize_server_url(a) == consent.normalize_server_url(b)


@pytest.mark.parametrize(
    "a, b",
    [
        ("http://localhost:8123", "http://localhost:8124"),
        ("http://localhost:8123", "https://localhost:8123"),
        ("http://localhost:8123", "http://127.0.0.1:8123"),
        ("https://example.org/a", "https://example.org/b"),
    ],
)
def test_server_addresses_that_are_different_servers(a, b):
    assert consent.normalize_server_url(a) != consent.normalize_server_url(b)


@pytest.mark.parametrize("bad", ["", "localhost:8123", "ftp://example.org", "http://", "http://host:99999"])
def test_bad_server_addresses_are_refused(bad):
    with pytest.raises(ValueError, match="server address"):
        consent.normalize_server_url(bad)


def test_consent_is_remembered_per_server_and_can_be_revoked():
    saved = {}
    store = consent.ConsentStore(lambda: saved.get("text"), lambda text: saved.__setitem__("text", text))
    url = "http://127.0.0.1:8123"
    assert not store.is_granted(url)
    with pytest.raises(consent.ConsentRequired, match="agree to send images"):
        store.require(url)
    store.grant(url)
    assert store.is_granted("http://127.0.0.1:8123/")
    assert not store.is_granted("http://127.0.0.1:9000")
    assert not store.is_granted("not a url")
    # What was written is all a new store (a new Slicer session) needs.
    again = consent.ConsentStore(lambda: saved.get("text"), lambda text: None)
    assert again.is_granted(url)
    store.grant("https://gpu.example.org")
    assert store.servers() == ["http://127.0.0.1:8123", "https://gpu.example.org:443"]
    store.revoke(url)
    assert not store.is_granted(url) and store.is_granted("https://gpu.example.org")


@pytest.mark.parametrize("stored", ["not json", '{"a": 1}', "[1, 2]", None, ""])
def test_unreadable_consent_counts_as_none(stored):
    store = consent.ConsentStore.in_memory(stored)
    assert not store.is_granted("http://127.0.0.1:8123")
    store.grant("http://127.0.0.1:8123")
    assert store.servers() == ["http://127.0.0.1:8123"]


def test_consent_question_says_where_the_image_goes():
    local = consent.consent_question("http://localhost:8123")
    remote = consent.consent_question("https://gpu.example.org")
    assert "this computer" in local and "http://localhost:8123" in local
    assert "leaves this one" in remote and "https://gpu.example.org:443" in remote
    assert consent.is_local_server("http://127.0.0.2:1") and not consent.is_local_server("http://10.0.0.1")


# ----- local server process -----------------------------------------------------------------


def test_serve_command_line(tmp_path):
    checkpoint = tmp_path / "w.pth"
    checkpoint.write_bytes(b"x")
    settings = server_process.ServerSettings(
        python=sys.executable,
        port=9123,
        variant="tiny",
        checkpoint=str(checkpoint),
        device="cuda",
        precision="bf16",
        token="secret",
        extra_arguments=("--prefetch-slices", "0"),
    )
    server_process.check_settings(settings)
    command = server_process.serve_command(settings)
    assert command == [
        sys.executable,
        "-m",
        "medsam_monai.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "9123",
        "--variant",
        "tiny",
        "--device",
        "cuda",
        "--precision",
        "bf16",
        "--checkpoint",
        str(checkpoint),
        "--prefetch-slices",
        "0",
    ]
    assert "secret" not in " ".join(command)  # the token travels in the environment
    assert settings.url == "http://127.0.0.1:9123"


def test_the_local_server_picks_its_device_by_default_and_medsam_serve_takes_every_choice():
    from medsam_monai.cli import build_parser

    assert server_process.ServerSettings(python=sys.executable).device == "auto"
    for device in (*server_process.DEVICES, "cuda:1"):
        settings = server_process.ServerSettings(python=sys.executable, variant="tiny", device=device)
        server_process.check_settings(settings)
        assert build_parser().parse_args(server_process.serve_command(settings)[3:]).device == device


def test_serve_command_line_is_accepted_by_medsam_serve():
    from medsam_monai.cli import build_parser

    settings = server_process.ServerSettings(python=sys.executable, port=9123, variant="tiny", device="cpu")
    args = build_parser().parse_args(server_process.serve_command(settings)[3:])
    assert (args.command, args.port, args.variant, args.host, args.device, args.precision) == (
        "serve",
        9123,
        "tiny",
        "127.0.0.1",
        "cpu",
        "fp32",
    )


@pytest.mark.parametrize(
    "change, message",
    [
        ({"python": ""}, "choose the Python"),
        ({"python": "/no/such/python"}, "not an executable"),
        ({"port": 0}, "outside 1..65535"),
        ({"variant": "vit_x"}, "not one of"),
        ({"precision": "fp16"}, "not one of"),
        ({"device": "gpu"}, "device 'gpu' is not one of auto, cpu, cuda, mps"),
        ({"device": "cuda:x"}, "not one of"),
        ({"checkpoint": "/no/such/weights.pth"}, "does not exist"),
    ],
)
def test_bad_server_settings_are_refused(change, message):
    values = {"python": sys.executable, **change}
    with pytest.raises(server_process.ServerProcessError, match=message):
        server_process.check_settings(server_process.ServerSettings(**values))


def test_server_environment_drops_slicers_python_and_carries_the_token():
    base = {
        "PATH": "/usr/bin",
        "PYTHONHOME": "/slicer/lib/Python",
        "PYTHONPATH": "/slicer/lib",
        "PYTHONNOUSERSITE": "1",
        server_process.TOKEN_ENVIRONMENT_VARIABLE: "old",
    }
    env = server_process.server_environment(base, token="new")
    assert env["PATH"] == "/usr/bin" and env[server_process.TOKEN_ENVIRONMENT_VARIABLE] == "new"
    assert not {"PYTHONHOME", "PYTHONPATH", "PYTHONNOUSERSITE"} & set(env)
    assert server_process.TOKEN_ENVIRONMENT_VARIABLE not in server_process.server_environment(base)


# A stand-in for `python -m medsam_monai.cli serve`: answers /health on --port and records how it was started.
FAKE_SERVER = textwrap.dedent("""
    import http.server, json, os, sys
    args = sys.argv[1:]
    record = {"argv": args, "token": os.environ.get("MEDSAM_SERVER_TOKEN"), "pythonpath": os.environ.get("PYTHONPATH")}
    open(os.environ["FAKE_RECORD"], "w").write(json.dumps(record))
    mode = os.environ.get("FAKE_MODE", "ok")
    print("fake server starting", flush=True)
    if mode == "crash":
        print("Traceback: no module named torch", flush=True)
        sys.exit(3)
    port = int(args[args.index("--port") + 1])
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if mode == "silent":
                self.send_response(500); self.end_headers(); return
            body = json.dumps({"status": "ok", "variant": "fake", "path": self.path}).encode()
            self.send_response(200); self.send_header("Content-Type", "application/json"); self.end_headers()
            self.wfile.write(body)
        def log_message(self, *a):
            pass
    http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
""")


@pytest.fixture
def fake_python(tmp_path):
    script = tmp_path / "fake_server.py"
    script.write_text(FAKE_SERVER)
    launcher = tmp_path / "python"
    launcher.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{script}" "$@"\n')
    launcher.chmod(launcher.stat().st_mode | stat.S_IEXEC)
    return launcher


def start_fake(fake_python, tmp_path, mode, token=None):
    settings = server_process.ServerSettings(
        python=str(fake_python), port=server_process.free_port(), variant="tiny", token=token
    )
    server = server_process.LocalServer(settings, log_path=str(tmp_path / "server.log"))
    environment = {
        **os.environ,
        "FAKE_RECORD": str(tmp_path / "record.json"),
        "FAKE_MODE": mode,
        "PYTHONPATH": "/slicer/lib/python",
    }
    server.start(environment=environment)
    return server


@pytest.mark.skipif(sys.platform == "win32", reason="uses a shell-script launcher")
def test_local_server_starts_answers_and_stops(fake_python, tmp_path):
    server = start_fake(fake_python, tmp_path, "ok", token="s3cret")
    try:
        health = server.wait_until_ready(timeout=20, interval=0.05)
        assert health["variant"] == "fake" and health["path"] == "/health"
        assert server.is_running()
        record = json.loads((tmp_path / "record.json").read_text())
        assert record["argv"][:3] == ["-m", "medsam_monai.cli", "serve"]
        assert record["argv"][record["argv"].index("--port") + 1] == str(server.settings.port)
        assert record["token"] == "s3cret" and record["pythonpath"] is None
        assert server_process.port_in_use(server.settings.port)
        with pytest.raises(server_process.ServerProcessError, match="already in use"):
            server_process.LocalServer(server.settings, log_path=str(tmp_path / "other.log")).start()
    finally:
        server.stop(timeout=5)
    assert not server.is_running()
    assert not server_process.port_in_use(server.settings.port)
    assert "fake server starting" in server.log_tail()


@pytest.mark.skipif(sys.platform == "win32", reason="uses a shell-script launcher")
def test_local_server_that_dies_reports_its_log(fake_python, tmp_path):
    server = start_fake(fake_python, tmp_path, "crash")
    with pytest.raises(server_process.ServerProcessError, match=r"exit status 3(.|\n)*no module named torch"):
        server.wait_until_ready(timeout=20, interval=0.05)


@pytest.mark.skipif(sys.platform == "win32", reason="uses a shell-script launcher")
def test_local_server_that_never_answers_is_stopped(fake_python, tmp_path):
    server = start_fake(fake_python, tmp_path, "silent")
    with pytest.raises(server_process.ServerProcessError, match="did not answer within 1 s"):
        server.wait_until_ready(timeout=1, interval=0.05)
    assert not server.is_running()


@pytest.mark.skipif(sys.platform == "win32", reason="uses a shell-script launcher")
def test_local_server_start_can_be_cancelled(fake_python, tmp_path):
    server = start_fake(fake_python, tmp_path, "silent")
    with pytest.raises(server_process.ServerProcessError, match="cancelled"):
        server.wait_until_ready(timeout=20, interval=0.05, cancel=lambda: True)
    assert not server.is_running()


# ----- background tasks -------------------------------------------------------------------------


def test_background_task_reports_progress_and_result():
    gate = threading.Event()

    def work(progress, cancelled):
        progress(1, 4)
        gate.wait(5)
        progress(4, 4)
        return "labels"

    task = tasks.BackgroundTask(work, "test").start()
    deadline = time.monotonic() + 5
    while task.progress() != (1, 4) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert task.progress() == (1, 4) and not task.done
    with pytest.raises(RuntimeError, match="still running"):
        task.result()
    gate.set()
    assert task.wait(5)
    assert task.result() == "labels" and task.progress() == (4, 4)


def test_background_task_hands_over_the_error_and_the_cancel_request():
    def work(progress, cancelled):
        while not cancelled():
            time.sleep(0.01)
        raise tasks.TaskCancelled("stopped at a slice boundary")

    task = tasks.BackgroundTask(work).start()
    task.cancel()
    assert task.wait(5) and task.cancel_requested
    with pytest.raises(tasks.TaskCancelled, match="slice boundary"):
        task.result()


# ----- undo -------------------------------------------------------------------------------------


def entry(rng, shape=(3, 17, 11), segmentation="vtkMRMLSegmentationNode1"):
    slab = (rng.random(shape) > 0.5).astype(np.uint8)
    return slab, undo.UndoEntry.capture("MedSAM 3D", segmentation, "S1", False, 2, 4, 6, slab, volume_node_id="V1")


def test_undo_entry_round_trips_the_slab_in_packed_bits():
    rng = np.random.default_rng(0)
    slab, item = entry(rng)
    np.testing.assert_array_equal(item.slab_before(), slab)
    assert item.size_bytes == (slab.size + 7) // 8
    assert (item.first_slice, item.last_slice, item.voxel_axis, item.volume_node_id) == (4, 6, 2, "V1")


def test_undo_stack_drops_the_oldest_beyond_its_limits():
    rng = np.random.default_rng(1)
    stack = undo.UndoStack(max_entries=3)
    items = [entry(rng)[1] for _ in range(5)]
    for item in items:
        stack.push(item)
    assert len(stack) == 3 and stack.peek() is items[-1]
    assert [stack.pop() for _ in range(4)] == [items[4], items[3], items[2], None]

    small = undo.UndoStack(max_bytes=2 * items[0].size_bytes)
    for item in items:
        small.push(item)
    assert len(small) == 2
    big = undo.UndoStack(max_bytes=1)  # the newest entry is always kept
    big.push(items[0])
    assert len(big) == 1


def test_undo_stack_forgets_a_removed_segmentation():
    rng = np.random.default_rng(2)
    stack = undo.UndoStack()
    stack.push(entry(rng, segmentation="A")[1])
    stack.push(entry(rng, segmentation="B")[1])
    stack.forget_segmentation("B")
    assert len(stack) == 1 and stack.peek().segmentation_node_id == "A"


# ----- options ----------------------------------------------------------------------------------


def test_window_choices():
    assert options.window_argument("CT", "lung") == "lung"
    assert options.window_argument("ct", "custom", 50, 350) == (50.0, 350.0)
    assert options.window_argument("mr", "lung") is None
    assert options.normalize_window("ct") == "abdomen"
    assert options.normalize_window("ct", (-600, 1500)) == (-600.0, 1500.0)
    assert options.normalize_window("mr", (1, 2)) is None
    for bad in (("xray", "lung"), ("ct", "liver"), ("ct", "custom", 40, 0)):
        with pytest.raises(ValueError):
            options.window_argument(*bad)
    with pytest.raises(ValueError, match="preset name or"):
        options.normalize_window("ct", 40)
    # The presets are the server's.
    from medsam_monai.transforms import CT_WINDOW_PRESETS

    for name, (level, width) in options.CT_WINDOW_PRESETS.items():
        assert CT_WINDOW_PRESETS[name] == (level, width)


def test_guess_modality():
    assert options.guess_modality(-1024) == "ct"
    assert options.guess_modality(0) == "mr"
