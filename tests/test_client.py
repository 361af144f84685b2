"""The 3D Slicer extension's client against real servers over loopback HTTP.

- a real round trip: ``medsam serve`` in a subprocess with the tiny model, a phantom uploaded as 3D
  Slicer holds it ([k, j, i]), a 3D box segmented, and the labels compared with what
  ``medsam segment`` writes for the same file and box;
- sessions of concurrent clients never mixed, re-upload after a restart and after expiry, cancel,
  and the client's errors, against in-process servers (uvicorn in a thread) with the fast stand-in
  encoder.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers import assert_partial, relayout

from medsam_monai.checkpoints import TINY_DEMO_CHECKPOINT
from medsam_monai.cli import main
from medsam_monai.io import Volume, read_volume, write_volume
from medsam_monai.phantom import ct_phantom
from medsam_monai.predictor import MedSAMPredictor
from medsam_monai.segment import VoxelBox, segment_volume
from medsam_monai.server import ServerSettings, create_app
from medsam_monai.server.codec import decode_array, encode_array
from medsam_monai.server.testing import ServerThread, fast_tiny_predictor

EXTENSION = Path(__file__).resolve().parents[1] / "slicer_extension" / "MedSAM"
sys.path.insert(0, str(EXTENSION))

from MedSAMLib import client as medsam_client  # noqa: E402
from MedSAMLib.client import (  # noqa: E402
    AuthError,
    Cancelled,
    ConnectionFailed,
    InvalidRequest,
    MedSAMClient,
    NotFound,
    PayloadTooLarge,
    Timeout,
)

TOKEN = "a-long-random-test-token"


def as_slicer_array(volume: Volume) -> np.ndarray:
    """What ``slicer.util.arrayFromVolume`` returns for this volume: [k, j, i], C order."""
    return np.ascontiguousarray(volume.array.transpose(2, 1, 0))


# ----- the client is torch-free ---------------------------------------------------------------


def test_client_imports_nothing_of_medsam_monai_or_torch():
    code = (
        f"import sys; sys.path.insert(0, {str(EXTENSION)!r}); import MedSAMLib.client; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('medsam_monai', 'torch', 'monai', 'fastapi')); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_client_and_server_codecs_agree():
    rng = np.random.default_rng(0)
    volume_kji = rng.integers(-1000, 2000, size=(5, 6, 7)).astype(np.int16)
    on_server = decode_array(medsam_client.encode_volume(volume_kji), 1 << 20)
    np.testing.assert_array_equal(on_server, volume_kji.transpose(2, 1, 0))  # [i, j, k] on the server
    labels_ijk = (rng.random((7, 6, 5)) > 0.5).astype(np.uint8)
    np.testing.assert_array_equal(medsam_client.decode_array_kji(encode_array(labels_ijk)), labels_ijk.transpose(2, 1, 0))


@pytest.mark.parametrize(
    "dtype, wire",
    [
        (bool, "uint8"),
        (np.float16, "float32"),
        (np.int64, "float64"),
        (">i2", "int16"),
        (np.uint16, "uint16"),
        (np.float64, "float64"),
    ],
)
def test_client_sends_every_volume_dtype_without_changing_values(dtype, wire):
    volume = (np.arange(24).reshape(2, 3, 4) % 7).astype(dtype)
    encoded = medsam_client.encode_volume(volume)
    assert encoded["dtype"] == wire and encoded["shape"] == [4, 3, 2]
    np.testing.assert_array_equal(decode_array(encoded, 1 << 20), volume.astype(float).transpose(2, 1, 0))


def test_client_refuses_what_it_cannot_send():
    with pytest.raises(ValueError, match="3D"):
        medsam_client.encode_volume(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="dtype"):
        medsam_client.encode_volume(np.zeros((2, 2, 2), dtype=np.complex64))
    with pytest.raises(ValueError, match="http"):
        MedSAMClient("127.0.0.1:8123")


# ----- a real round trip through `medsam serve` -----------------------------------------------


@pytest.fixture(scope="module")
def tiny_checkpoint():
    """The packaged tiny demo model (trained on phantoms), so that masks are meaningful as well as equal."""
    return TINY_DEMO_CHECKPOINT


class ServeProcess:
    """``python -m medsam_monai.cli serve --port 0 ARGS`` in a subprocess, its output in a file."""

    def __init__(self, log_path: Path, args: tuple[str, ...], token: str | None) -> None:
        env = {k: v for k, v in os.environ.items() if k != "MEDSAM_SERVER_TOKEN"}
        if token is not None:
            env["MEDSAM_SERVER_TOKEN"] = token
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "medsam_monai.cli", "serve", "--port", "0", "--log-level", "warning", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )

    def url(self, timeout: float = 180.0) -> str:
        """The URL it announces once listening (waits for it)."""
        deadline = time.monotonic() + timeout
        pattern = r"listening on (http://127\.0\.0\.1:\d+)"
        while (found := re.search(pattern, self.log_path.read_text(errors="replace"))) is None:
            assert self.process.poll() is None, f"medsam serve exited: {self.log_path.read_text(errors='replace')}"
            assert time.monotonic() < deadline, "medsam serve did not start"
            time.sleep(0.1)
        return found.group(1)


@contextmanager
def medsam_serve(log_path: Path, *args: str, token: str | None = None):
    server = ServeProcess(log_path, args, token)
    try:
        yield server
    finally:
        server.process.terminate()
        server.process.wait(timeout=60)


def test_round_trip_through_medsam_serve_equals_medsam_segment(tmp_path, tiny_checkpoint):
    base = ct_phantom(shape=(48, 40, 8), spacing=(3.0, 3.0, 5.0))
    # Stored as DICOM-derived files often are (i toward the patient's left, j posterior).
    stored = relayout(base.volume, (0, 1, 2), (True, True, False))
    image = write_volume(tmp_path / "ct.nii.gz", stored.array, stored.affine)
    organ = relayout(Volume(base.labels, base.volume.affine), (0, 1, 2), (True, True, False)).array
    idx = np.argwhere(organ)
    box = (*idx.min(0)[:2].tolist(), 3, *idx.max(0)[:2].tolist(), 5)  # three axial slices

    volume = read_volume(image)  # the voxels and geometry that `medsam segment` reads
    out = tmp_path / "mask.nii.gz"
    with medsam_serve(
        tmp_path / "server.log", "--variant", "tiny", "--checkpoint", str(tiny_checkpoint), "--prefetch-slices", "0", token=TOKEN
    ) as server:
        # `medsam segment` runs while the server starts (both take seconds on a small CPU).
        assert (
            main(
                [
                    "segment",
                    str(image),
                    "--box",
                    ",".join(map(str, box)),
                    "--out",
                    str(out),
                    "--variant",
                    "tiny",
                    "--checkpoint",
                    str(tiny_checkpoint),
                ]
            )
            == 0
        )
        url = server.url()
        anonymous = MedSAMClient(url, timeout=120)
        health = anonymous.health()  # no token needed
        assert health["variant"] == "tiny" and health["auth_required"] is True
        with pytest.raises(AuthError) as refused:
            anonymous.create_session(as_slicer_array(volume), volume.affine)
        assert refused.value.status == 401 and "token" in refused.value.message
        with pytest.raises(AuthError):
            MedSAMClient(url, token="wrong", timeout=120).create_session(as_slicer_array(volume), volume.affine)

        client = MedSAMClient(url, token=TOKEN, timeout=120)
        session = client.create_session(as_slicer_array(volume), volume.affine, modality="ct")
        seen = []
        labels_kji = client.segment(session, box, axis="axial", progress=lambda done, total: seen.append((done, total)))
        client.close_session(session)
    expected_ijk = np.asarray(nib.load(out).dataobj).astype(np.uint8)
    assert_partial(expected_ijk)
    assert labels_kji.dtype == np.uint8 and labels_kji.shape == as_slicer_array(volume).shape
    np.testing.assert_array_equal(labels_kji, expected_ijk.transpose(2, 1, 0))
    assert seen and seen[-1] == (3, 3)


# ----- in-process servers ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def model():
    return fast_tiny_predictor().model


def serve(model, **settings) -> ServerThread:
    settings.setdefault("prefetch_slices", 0)
    return ServerThread(create_app(MedSAMPredictor(model), ServerSettings(**settings)))


def expected_kji(model, volume: Volume, box, axis="axial") -> np.ndarray:
    labels = segment_volume(MedSAMPredictor(model), volume, [VoxelBox(tuple(box))], axis=axis)
    return labels.transpose(2, 1, 0)


def small_volume(seed: int = 0, shape=(40, 32, 6)) -> Volume:
    return ct_phantom(shape=shape, spacing=(3.0, 3.0, 5.0), seed=seed).volume


def test_concurrent_clients_never_see_each_others_results(model):
    """Eight threads, each with its own client and a volume of its own shape and noise."""
    volumes = [small_volume(seed=n, shape=(32 + 2 * n, 28 + n, 4)) for n in range(8)]
    boxes = [(6, 6, 1, 18 + n, 18, 2) for n in range(8)]
    expected = [expected_kji(model, v, b) for v, b in zip(volumes, boxes)]
    assert sum(np.count_nonzero(e) for e in expected) > 0
    results: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    failures: list[BaseException] = []
    with serve(model) as server:
        barrier = threading.Barrier(len(volumes))

        def work(n: int) -> None:
            try:
                client = MedSAMClient(server.url, timeout=120)
                session = client.create_session(as_slicer_array(volumes[n]), volumes[n].affine)
                barrier.wait()
                in_3d = client.segment(session, boxes[n], progress=lambda d, t: None)  # as a job
                one_slice = client.segment(session, boxes[n], propagate=False)  # answered at once
                results[n] = (in_3d, one_slice)
                client.close_session(session)
            except BaseException as err:  # noqa: BLE001 - reported below
                failures.append(err)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(len(volumes))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert not failures, failures
        assert len(server.app.state.server.store) == 0
    for n, want in enumerate(expected):
        in_3d, one_slice = results[n]
        np.testing.assert_array_equal(in_3d, want)
        key = int((boxes[n][5] - boxes[n][2]) / 2 + boxes[n][2])  # identity layout: display slice = k
        np.testing.assert_array_equal(one_slice[key], want[key])
        assert not one_slice[np.arange(one_slice.shape[0]) != key].any()


def test_session_survives_a_server_restart_by_uploading_again(model):
    volume = small_volume()
    box = (8, 9, 2, 20, 20, 4)
    with serve(model) as first:
        client = MedSAMClient(first.url, timeout=120)
        session = client.create_session(as_slicer_array(volume), volume.affine)
        before = client.segment(session, box)
        port = first.port
    assert_partial(before)
    with ServerThread(create_app(MedSAMPredictor(model), ServerSettings(prefetch_slices=0)), port=port) as second:
        results: list[np.ndarray] = []
        threads = [threading.Thread(target=lambda: results.append(client.segment(session, box))) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert len(results) == 4
        for after in results:
            np.testing.assert_array_equal(after, before)
        assert len(second.app.state.server.store) == 1  # four threads, one re-upload
        assert client.session_info(session)["shape"] == list(volume.shape)  # the caller's id still works
        client.close_session(session)
        assert len(second.app.state.server.store) == 0


def test_session_survives_expiry_by_uploading_again(model):
    volume = small_volume(seed=3)
    box = (8, 9, 2, 20, 20, 4)
    with serve(model, session_ttl_s=1.0) as server:
        client = MedSAMClient(server.url, timeout=120)
        session = client.create_session(as_slicer_array(volume), volume.affine)
        time.sleep(1.6)
        state = server.app.state.server
        assert len(state.store) == 0
        labels = client.segment(session, box, propagate=False)
        assert len(state.store) == 1
    key = 3
    np.testing.assert_array_equal(labels[key], expected_kji(model, volume, box)[key])


def test_cancel_stops_the_job_on_the_server(model):
    volume = small_volume()
    with serve(model) as server:
        client = MedSAMClient(server.url, timeout=120)
        session = client.create_session(as_slicer_array(volume), volume.affine)
        state = server.app.state.server
        stop = threading.Event()
        outcome: list[BaseException] = []

        def run() -> None:
            try:
                client.segment(session, (8, 9, 1, 20, 20, 4), cancel=stop)
            except BaseException as err:  # noqa: BLE001
                outcome.append(err)

        with state.gate.model_call():  # the network is busy: the job waits in its first slice
            worker = threading.Thread(target=run)
            worker.start()
            server_session = next(iter(state.store._sessions.values()))
            deadline = time.monotonic() + 30
            while not server_session.jobs and time.monotonic() < deadline:
                time.sleep(0.01)
            stop.set()
            worker.join(timeout=30)
        assert len(outcome) == 1 and isinstance(outcome[0], Cancelled)
        (job,) = server_session.jobs.values()
        deadline = time.monotonic() + 30
        while not job.finished and time.monotonic() < deadline:
            time.sleep(0.01)
        assert job.state == "cancelled" and job.done <= 1 < job.total


def test_errors_name_what_went_wrong(model):
    volume = small_volume()
    with serve(model, max_upload_bytes=200_000) as server:
        client = MedSAMClient(server.url, timeout=120)
        session = client.create_session(as_slicer_array(volume), volume.affine)
        with pytest.raises(InvalidRequest) as bad_box:
            client.segment(session, (0, 0, 0, 99, 5, 5))
        assert bad_box.value.status == 422 and "outside the image" in bad_box.value.message
        with pytest.raises(InvalidRequest, match="outside the segmented slices"):
            client.segment(session, (0, 0, 1, 9, 9, 1), propagate=False, points=[((4, 4, 3), True)])
        with pytest.raises(NotFound) as no_job:
            client.job_status(session, "nope")
        assert no_job.value.code == "job_not_found"
        with pytest.raises(NotFound) as foreign:  # not uploaded by this client: nothing to re-upload
            client.segment("someone-elses-session", (0, 0, 0, 1, 1, 1))
        assert foreign.value.code == "session_not_found"
        large = np.random.default_rng(0).integers(0, 4000, size=(40, 64, 64)).astype(np.int16)
        with pytest.raises(PayloadTooLarge, match="at most"):
            client.create_session(large, np.eye(4))
        job_id = client.start_job(session, (8, 9, 1, 20, 20, 2))
        deadline = time.monotonic() + 60
        while (status := client.job_status(session, job_id))["state"] not in ("done", "failed") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert status["state"] == "done"
        np.testing.assert_array_equal(
            medsam_client.decode_labels(status["result"]), expected_kji(model, volume, (8, 9, 1, 20, 20, 2))
        )
        port = server.port
    with pytest.raises(ConnectionFailed):  # nothing listens there any more
        MedSAMClient(f"http://127.0.0.1:{port}", timeout=5).health()


def test_a_server_that_never_answers_is_a_timeout():
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # connections queue, nobody answers
    try:
        started = time.monotonic()
        with pytest.raises(Timeout):
            MedSAMClient(f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=0.5).health()
        assert time.monotonic() - started < 10
    finally:
        silent.close()
