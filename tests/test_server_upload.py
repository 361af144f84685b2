"""Uploads within a known amount of memory (issue 14, items 1 and 5): every limit checked on the
declared size before anything is allocated, chunked decoding into one buffer, normalisation in
slabs equal to the main job's, and nothing accepted after the zlib stream.

Memory is measured with ``tracemalloc``, which sees every numpy buffer and Python object the
server allocates (uvicorn runs in a thread of this process: the whole server side is counted,
while the request body the test built before is not).
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import threading
import tracemalloc
import zlib

import nibabel
import numpy as np
import pytest
from fastapi.testclient import TestClient

from medsam_monai.io import Volume
from medsam_monai.predictor import MedSAMPredictor
from medsam_monai.segment import normalized_volume
from medsam_monai.server import ServerSettings, create_app, intake
from medsam_monai.server.codec import CodecError, decode_array, encode_array
from medsam_monai.server.intake import IntakeBudget, IntakeBusy, normalized_in_slabs, working_bytes
from medsam_monai.server.testing import ServerThread, fast_tiny_predictor

AFFINE = np.diag([0.8, 0.8, 2.5, 1.0]).tolist()
NIBABEL_DATA = os.path.join(os.path.dirname(nibabel.__file__), "tests", "data")


@pytest.fixture(scope="module")
def model():
    return fast_tiny_predictor().model


def make_app(model, **settings):
    settings.setdefault("prefetch_slices", 0)
    return create_app(MedSAMPredictor(model), ServerSettings(**settings))


def upload_json(array: np.ndarray, modality: str = "ct", compress: bool = True) -> bytes:
    raw = np.asarray(array).tobytes(order="F")
    volume = {
        "dtype": array.dtype.name,
        "shape": list(array.shape),
        "compression": "zlib" if compress else "none",
        "data": base64.b64encode(zlib.compress(raw, 1) if compress else raw).decode(),
    }
    return json.dumps({"volume": volume, "ijk_to_ras": AFFINE, "modality": modality, "prefetch": False}).encode()


def post(port: int, path: str, body: bytes) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        connection.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        answer = connection.getresponse()
        return answer.status, json.loads(answer.read())
    finally:
        connection.close()


def peak_bytes_of(call) -> tuple[object, int]:
    """``call()``'s result and the most memory allocated at once while it ran (tracemalloc)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        result = call()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# ----- every limit before allocating -------------------------------------------------------------


def test_a_volume_over_the_session_memory_is_refused_before_it_is_decoded(model):
    """130 KB that declared 105M voxels once cost 2.6 GB before --max-sessions-mb was looked at."""
    voxels = (256, 256, 128)  # 8M int16 voxels: 16 MB decoded, 32 MB of session memory
    body = upload_json(np.zeros(voxels, np.int16))
    assert len(body) < 100_000
    with ServerThread(make_app(model, max_sessions_bytes=16 << 20)) as server:
        (status, answer), peak = peak_bytes_of(lambda: post(server.port, "/sessions", body))
    assert status == 413 and answer["code"] == "payload_too_large" and "session memory" in answer["detail"]
    assert peak < 4 << 20, f"{peak / 2**20:.1f} MB allocated for a refused upload"


def test_a_volume_whose_sessions_are_all_busy_is_refused_before_it_is_decoded(model):
    """The room check counts only idle sessions as room: 503 (try later), still without decoding."""
    small = upload_json(np.zeros((64, 64, 8), np.int16))
    with ServerThread(make_app(model, max_sessions_bytes=200_000)) as server:
        status, answer = post(server.port, "/sessions", small)
        assert status == 201
        busy = server.app.state.server.store.get(answer["session_id"])
        with busy.in_use():
            (status, answer), peak = peak_bytes_of(lambda: post(server.port, "/sessions", small))
    assert status == 503 and answer["code"] == "busy", answer
    assert peak < 2 << 20


def test_bad_geometry_and_window_are_refused_before_the_volume_is_decoded(model):
    with TestClient(make_app(model)) as client:
        state = client.app.state.server
        decoded: list[int] = []
        original = state._normalized
        state._normalized = lambda body: decoded.append(1) or original(body)  # spy: counts decodings
        for extra in (
            {"ijk_to_ras": np.zeros((4, 4)).tolist()},
            {"window": "sunny"},
            {"focus_ijk": [99, 0, 0]},
            {"ijk_to_ras": np.diag([1e-9, 1, 1, 1]).tolist()},
        ):
            body = json.loads(upload_json(np.zeros((8, 8, 4), np.int16))) | extra
            answer = client.post("/sessions", json=body)
            assert answer.status_code == 422, answer.text
        assert decoded == []
        assert "voxel sizes" in answer.json()["detail"]


# ----- working memory of an upload ----------------------------------------------------------------

SHAPE = (256, 256, 128)
_rng = np.random.default_rng(0)
CASES = {
    # A decompression bomb: a few hundred KB that declare 8M voxels.
    "zeros int16 ct": (lambda: np.zeros(SHAPE, np.int16), "ct", True),
    "zeros float32 mr": (lambda: np.zeros(SHAPE, np.float32), "mr", True),
    # Incompressible uploads: the body is as large as the voxels (4/3 of it as base64).
    "noise int16 mr": (lambda: _rng.integers(1, 4000, SHAPE).astype(np.int16), "mr", False),
    "noise float32 mr": (lambda: _rng.normal(100, 20, SHAPE).astype(np.float32), "mr", True),
    "noise uint8 ct": (lambda: _rng.integers(0, 255, SHAPE).astype(np.uint8), "ct", False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_an_upload_needs_at_most_twice_its_body_plus_its_working_bytes(model, case):
    """The bound the README states: 2 x the request body + the decoded voxels + 1 byte per voxel
    (+ the MR foreground) + a few MB of slabs. A zero-filled upload used to cost ~27 bytes per
    declared voxel (float64 copies of the whole volume)."""
    make, modality, compress = CASES[case]
    array = make()
    body = upload_json(array, modality, compress)
    with ServerThread(make_app(model, max_upload_bytes=1 << 30)) as server:
        (status, answer), peak = peak_bytes_of(lambda: post(server.port, "/sessions", body))
        assert status == 201, answer
        stored = server.app.state.server.store.get(answer["session_id"]).intensities
        np.testing.assert_array_equal(stored, normalized_volume(Volume(array, np.array(AFFINE)), modality))
    bound = 2 * len(body) + working_bytes(array.dtype.name, array.size, modality)
    assert peak <= bound, f"{peak / 2**20:.0f} MB > {bound / 2**20:.0f} MB"
    if len(body) < array.nbytes / 100:  # the bombs: a few bytes per declared voxel, not ~27
        assert peak / array.size < 2 * array.itemsize + 2


def test_uploads_decode_side_by_side_only_within_the_budget():
    budget = IntakeBudget(100)
    budget.acquire(80, timeout_s=1)
    with pytest.raises(IntakeBusy):
        budget.acquire(30, timeout_s=0.2)  # would exceed 100 beside the first
    budget.acquire(20, timeout_s=0.2)  # fits beside it
    stop = threading.Event()
    stop.set()
    with pytest.raises(IntakeBusy):
        budget.acquire(50, timeout_s=30, give_up=stop)  # shutting down: no wait
    released = threading.Timer(0.2, lambda: (budget.release(80), budget.release(20)))
    released.start()
    budget.acquire(500, timeout_s=10)  # alone, any size may run: it waited for the others
    assert budget.used == 500
    budget.release(500)


# ----- slab normalisation equals the main job's ---------------------------------------------------


def _nibabel_volume(name: str) -> np.ndarray:
    data = np.asanyarray(nibabel.load(os.path.join(NIBABEL_DATA, name)).dataobj)
    data = data.reshape(data.shape[:3] + (-1,))[..., 0] if data.ndim > 3 else data
    return np.asfortranarray(data.astype(data.dtype.newbyteorder("=")))


@pytest.mark.parametrize("name", ["anatomical.nii", "example4d.nii.gz", "reoriented_anat_moved.nii", "functional.nii"])
@pytest.mark.parametrize("modality, window", [("ct", None), ("ct", "lung"), ("ct", "fitted"), ("mr", None)])
def test_slab_normalisation_equals_the_main_jobs_on_real_images(monkeypatch, name, modality, window):
    monkeypatch.setattr(intake, "SLAB_VOXELS", 997)  # many slabs, none aligned with the image's rows
    array = _nibabel_volume(name)
    if window == "fitted":  # a window inside the image's own range, so that many grey levels come out
        window = [float(np.median(array)), float(np.ptp(array)) / 2]
    expected = normalized_volume(Volume(array, np.eye(4)), modality, window)
    if modality == "mr" or window is not None and not isinstance(window, str):
        assert len(np.unique(expected)) > 2  # a meaningful comparison
    np.testing.assert_array_equal(normalized_in_slabs(array, modality, window), expected)


@pytest.mark.parametrize("dtype", ["uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64"])
def test_slab_normalisation_equals_the_main_jobs_for_every_wire_dtype(monkeypatch, dtype):
    monkeypatch.setattr(intake, "SLAB_VOXELS", 1000)
    rng = np.random.default_rng(7)
    for trial in range(20):
        shape = tuple(int(n) for n in rng.integers(1, 24, size=3))
        if np.dtype(dtype).kind == "f":
            array = (rng.normal(0, 1, shape) * 10.0 ** rng.uniform(-3, 4)).astype(dtype)
        else:
            info = np.iinfo(dtype)
            wide = rng.integers(info.min, info.max, size=shape, dtype=np.int64 if info.max < 2**62 else np.uint64)
            array = (wide if trial % 2 else np.clip(wide, -3000, 3000)).astype(dtype)
        array[rng.random(shape) < 0.3] = 0  # background for MR
        order = "F" if trial % 3 else "C"
        array = np.asarray(array, order=order)
        for modality, window in [("ct", None), ("ct", [float(rng.normal(0, 200)), float(rng.uniform(1, 2000))]), ("mr", None)]:
            expected = normalized_volume(Volume(array, np.eye(4)), modality, window)
            np.testing.assert_array_equal(normalized_in_slabs(array, modality, window), expected, err_msg=f"{shape} {modality}")


def test_slab_normalisation_refuses_non_finite_voxels_in_one_line():
    array = np.zeros((4, 4, 4), np.float32)
    array[1, 2, 3] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite voxels \\(1 of 64\\)"):
        normalized_in_slabs(array)


# ----- chunked decoding -----------------------------------------------------------------------


def test_chunked_decoding_gives_the_same_array_at_any_chunk_size(monkeypatch):
    array = np.random.default_rng(1).integers(-2000, 2000, (37, 23, 11)).astype(np.int16)
    for compression in ("zlib", "none"):
        encoded = encode_array(array, compression=compression)
        for text, inflate in [(4, 1), (8, 7), (1024, 100), (1 << 22, 1 << 22)]:
            monkeypatch.setattr("medsam_monai.wire.TEXT_CHUNK", text)
            monkeypatch.setattr("medsam_monai.wire.INFLATE_CHUNK", inflate)
            decoded = decode_array(encoded, 1 << 20)
            np.testing.assert_array_equal(decoded, array)
            assert not decoded.flags.writeable


def _with_data(raw: bytes, dtype="int16", shape=(4, 4, 4), compression="zlib") -> dict:
    return {"dtype": dtype, "shape": list(shape), "compression": compression, "data": base64.b64encode(raw).decode()}


STREAM = zlib.compress(bytes(128))


@pytest.mark.parametrize("text_chunk", [8, 1 << 22])
@pytest.mark.parametrize(
    "raw",
    [STREAM + b"junk", STREAM + STREAM, STREAM + b"\0", STREAM + zlib.compress(b"")],
    ids=["junk", "second stream", "one zero byte", "empty second stream"],
)
def test_bytes_after_the_zlib_stream_are_refused(monkeypatch, text_chunk, raw):
    monkeypatch.setattr("medsam_monai.wire.TEXT_CHUNK", text_chunk)
    with pytest.raises(CodecError, match="after the end of its zlib stream"):
        decode_array(_with_data(raw), 1 << 20)


def test_bytes_after_the_zlib_stream_are_a_422_from_the_server(model):
    body = {"volume": _with_data(STREAM + b"trailing"), "ijk_to_ras": AFFINE}
    with TestClient(make_app(model)) as client:
        answer = client.post("/sessions", json=body)
    assert answer.status_code == 422 and "after the end of its zlib stream" in answer.json()["detail"]


@pytest.mark.parametrize(
    "data, message",
    [
        ("QQ==QUFB", "padding"),  # padding in the middle, across a chunk boundary
        ("QUFB" * 3 + "QQ=", "multiple of 4"),
        ("QUF@QUFB", "base64"),
    ],
)
def test_base64_is_checked_as_strictly_in_chunks_as_whole(monkeypatch, data, message):
    monkeypatch.setattr("medsam_monai.wire.TEXT_CHUNK", 4)
    with pytest.raises(CodecError, match=message):
        decode_array({"dtype": "uint8", "shape": [2, 2, 2], "compression": "none", "data": data}, 1 << 20)


def test_inflating_stops_at_the_declared_size_with_little_memory():
    """A 64 MB bomb declared as 128 bytes: refused after inflating one byte past the declared size."""
    bomb = _with_data(zlib.compress(bytes(64 << 20), 9))

    def refused() -> None:
        with pytest.raises(CodecError, match="inflates to more than"):
            decode_array(bomb, 1 << 20)

    _, peak = peak_bytes_of(refused)
    assert peak < 1 << 20
