"""The inference server endpoint by endpoint (FastAPI's TestClient, no sockets).

The model is the tiny mask decoder behind a fast stand-in image encoder
(:func:`medsam_monai.server.testing.fast_tiny_predictor`); expected labels come from the library's
own pipeline (:func:`medsam_monai.segment.segment_volume`) with the same network, so every
comparison is against what the main job computes, never a stored answer.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import zlib

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import assert_partial, relayout

from medsam_monai.cli import main
from medsam_monai.cli.serve import is_loopback
from medsam_monai.io import Volume
from medsam_monai.orientation import display_layout, ijk_to_display_index, to_display
from medsam_monai.phantom import ct_phantom
from medsam_monai.predictor import MedSAMPredictor
from medsam_monai.segment import VoxelBox, normalized_volume, segment_volume
from medsam_monai.server import ServerSettings, create_app
from medsam_monai.server.codec import decode_array, encode_array
from medsam_monai.server.runtime import embedding_key, nearest_first
from medsam_monai.server.testing import fast_tiny_predictor

TOKEN = "s3cret-token-for-tests"


@pytest.fixture(scope="module")
def model():
    """One network for the server and for the expected results (the server takes over only the
    predictor's cache, not the network)."""
    return fast_tiny_predictor().model


PERMUTATION, FLIPS = (1, 0, 2), (True, False, True)


@pytest.fixture(scope="module")
def phantom():
    """A small phantom stored in a permuted and flipped voxel order, so that IJK, the display
    frame and back are all exercised."""
    base = ct_phantom(shape=(40, 32, 6), spacing=(3.0, 3.0, 5.0))
    return relayout(base.volume, PERMUTATION, FLIPS)


@pytest.fixture(scope="module")
def organ(phantom):
    """The inclusive IJK box of the phantom's organ, in the relaid volume's indices."""
    base = ct_phantom(shape=(40, 32, 6), spacing=(3.0, 3.0, 5.0))
    labels = relayout(Volume(base.labels, base.volume.affine), PERMUTATION, FLIPS).array
    idx = np.argwhere(labels == 1)
    return (*idx.min(0).tolist(), *idx.max(0).tolist())


def make_app(model, **settings):
    settings.setdefault("prefetch_slices", 0)
    return create_app(MedSAMPredictor(model), ServerSettings(**settings))


def upload_body(volume: Volume, **extra) -> dict:
    return {"volume": encode_array(volume.array), "ijk_to_ras": volume.affine.tolist(), **extra}


def labels_of(result: dict) -> np.ndarray:
    """A SegmentResult as an [i, j, k] label volume."""
    block = decode_array(result["labels"], 1 << 30)
    out = np.zeros(result["volume_shape"], dtype=np.uint8)
    i, j, k = result["offset"]
    out[i : i + block.shape[0], j : j + block.shape[1], k : k + block.shape[2]] = block
    return out


def expected_labels(model, volume: Volume, box, axis="axial") -> np.ndarray:
    return segment_volume(MedSAMPredictor(model), volume, [VoxelBox(tuple(box))], axis=axis)


@pytest.fixture()
def client(model):
    with TestClient(make_app(model)) as test_client:
        yield test_client


@pytest.fixture()
def session(client, phantom):
    answer = client.post("/sessions", json=upload_body(phantom))
    assert answer.status_code == 201, answer.text
    return answer.json()["session_id"]


# ----- health, auth, limits -------------------------------------------------------------------


def test_health_reports_the_model_and_needs_no_token(model):
    with TestClient(make_app(model, token=TOKEN, variant="tiny")) as c:
        answer = c.get("/health")
    assert answer.status_code == 200
    body = answer.json()
    assert body["status"] == "ok" and body["variant"] == "tiny" and body["device"] == "cpu"
    assert body["precision"] == "fp32" and body["auth_required"] is True and body["version"]


@pytest.mark.parametrize("header", [None, "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer"])
def test_every_session_endpoint_needs_the_token(model, phantom, header):
    with TestClient(make_app(model, token=TOKEN)) as c:
        headers = {} if header is None else {"Authorization": header}
        for method, path in [
            ("post", "/sessions"),
            ("get", "/sessions/x"),
            ("delete", "/sessions/x"),
            ("post", "/sessions/x/segment"),
            ("get", "/sessions/x/jobs/y"),
        ]:
            answer = getattr(c, method)(path, headers=headers)
            assert answer.status_code == 401, (method, path, answer.text)
            assert answer.json()["code"] == "unauthorized"
            assert answer.headers["www-authenticate"] == "Bearer"
        good = c.post("/sessions", json=upload_body(phantom), headers={"Authorization": f"Bearer {TOKEN}"})
        assert good.status_code == 201


def test_the_token_is_checked_before_the_body_is_read(model):
    with TestClient(make_app(model, token=TOKEN, max_upload_bytes=1000)) as c:
        answer = c.post("/sessions", content=b"x" * 5000)
    assert answer.status_code == 401  # not 413 nor 422: nothing was read for an unknown caller


def test_oversized_uploads_are_refused(model, phantom):
    with TestClient(make_app(model, max_upload_bytes=2000)) as c:
        declared = c.post("/sessions", json=upload_body(phantom))
        assert declared.status_code == 413 and declared.json()["code"] == "payload_too_large"
        assert "limit" in declared.json()["detail"]

        def chunks():  # no Content-Length: counted while it arrives
            for _ in range(10):
                yield b" " * 500

        streamed = c.post("/sessions", content=chunks(), headers={"Content-Type": "application/json"})
        assert streamed.status_code == 413


def test_volume_whose_decoded_size_exceeds_the_cap_is_refused_before_inflating(model, phantom):
    with TestClient(make_app(model, max_volume_bytes=1000)) as c:
        answer = c.post("/sessions", json=upload_body(phantom))
    assert answer.status_code == 413
    assert "accepts at most" in answer.json()["detail"]


def _encoded(dtype, shape, raw: bytes, compress=True):
    data = zlib.compress(raw) if compress else raw
    return {
        "dtype": dtype,
        "shape": shape,
        "compression": "zlib" if compress else "none",
        "data": base64.b64encode(data).decode(),
    }


AFFINE = np.diag([1.0, 1.0, 2.0, 1.0]).tolist()


@pytest.mark.parametrize(
    "body, message",
    [
        ({"volume": _encoded("int16", [4, 4, 4], bytes(1 << 20)), "ijk_to_ras": AFFINE}, "inflates to more than"),
        ({"volume": _encoded("int16", [4, 4, 4], bytes(100)), "ijk_to_ras": AFFINE}, "declare 128"),
        ({"volume": _encoded("int16", [4, 4, 4], bytes(128))["data"][:-8], "ijk_to_ras": AFFINE}, "volume"),
        ({"volume": {**_encoded("int16", [4, 4, 4], bytes(128)), "data": "%%%"}, "ijk_to_ras": AFFINE}, "base64"),
        (
            {
                "volume": {**_encoded("int16", [4, 4, 4], bytes(128)), "data": base64.b64encode(b"nope").decode()},
                "ijk_to_ras": AFFINE,
            },
            "zlib",
        ),
        (
            {
                "volume": _encoded("int16", [4, 4, 4], zlib.compress(bytes(128))[:-6], compress=False) | {"compression": "zlib"},
                "ijk_to_ras": AFFINE,
            },
            "truncated",
        ),
        ({"volume": _encoded("int16", [4, 4, 4], bytes(100), compress=False), "ijk_to_ras": AFFINE}, "declare 128"),
        ({"volume": _encoded("complex64", [4, 4, 4], bytes(512)), "ijk_to_ras": AFFINE}, "dtype"),
        ({"volume": _encoded("int16", [4, 4], bytes(32)), "ijk_to_ras": AFFINE}, "shape"),
        ({"volume": _encoded("int16", [4, 0, 4], b""), "ijk_to_ras": AFFINE}, "shape"),
        ({"volume": _encoded("int16", [4, 4, 4], bytes(128)), "ijk_to_ras": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]}, "ijk_to_ras"),
        ({"volume": _encoded("int16", [4, 4, 4], bytes(128)), "ijk_to_ras": np.zeros((4, 4)).tolist()}, "singular"),
        ({"volume": _encoded("int16", [4, 4, 4], bytes(128)), "ijk_to_ras": AFFINE, "modality": "pet"}, "modality"),
        ({"volume": _encoded("int16", [4, 4, 4], bytes(128)), "ijk_to_ras": AFFINE, "modality": "mr", "window": "lung"}, "MR"),
        ({"volume": _encoded("int16", [4, 4, 4], bytes(128)), "ijk_to_ras": AFFINE, "window": "sunny"}, "window"),
        ({"volume": _encoded("int16", [4, 4, 4], bytes(128)), "ijk_to_ras": AFFINE, "window": [40, -5]}, "width"),
        ({"volume": _encoded("float32", [2, 2, 2], np.array([np.nan] * 8, "<f4").tobytes()), "ijk_to_ras": AFFINE}, "NaN"),
        ({"volume": _encoded("int16", [4, 4, 4], bytes(128)), "ijk_to_ras": AFFINE, "focus_ijk": [9, 0, 0]}, "outside"),
        ({"ijk_to_ras": AFFINE}, "volume"),
        ({"volume": _encoded("int16", [4, 4, 4], bytes(128)), "ijk_to_ras": AFFINE, "volumes": 1}, "volumes"),
        ([1, 2, 3], "object"),
    ],
)
def test_malformed_uploads_get_a_clear_4xx(client, body, message):
    answer = client.post("/sessions", json=body)
    assert 400 <= answer.status_code < 500, answer.text
    detail = answer.json()["detail"]
    assert isinstance(detail, str) and message.lower() in detail.lower(), detail


@pytest.mark.parametrize("raw", [b"{not json", b"", b"\xff\xfe", json.dumps({"volume": "x"}).encode()])
def test_unparsable_bodies_are_422(client, raw):
    answer = client.post("/sessions", content=raw, headers={"Content-Type": "application/json"})
    assert answer.status_code == 422 and answer.json()["code"] == "invalid_request"


def test_non_finite_affine_is_refused(client):
    body = json.dumps(
        {
            "volume": _encoded("int16", [4, 4, 4], bytes(128)),
            "ijk_to_ras": [[float("nan"), 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]],
        }
    )
    answer = client.post("/sessions", content=body.encode(), headers={"Content-Type": "application/json"})
    assert answer.status_code == 422


def test_host_check_stops_dns_rebinding(model):
    app = make_app(model, allowed_hosts=("127.0.0.1", "localhost"))
    with TestClient(app, base_url="http://evil.example") as c:
        assert c.get("/health").status_code == 403
    with TestClient(app, base_url="http://127.0.0.1:8123") as c:
        assert c.get("/health").status_code == 200


def test_unknown_paths_and_methods_answer_in_the_error_format(client):
    assert client.get("/nope").json()["code"] == "not_found"
    answer = client.put("/sessions")
    assert answer.status_code == 405 and "detail" in answer.json()


# ----- sessions and segmentation --------------------------------------------------------------


def test_session_info_and_close(client, session, phantom):
    info = client.get(f"/sessions/{session}").json()
    assert info["shape"] == list(phantom.shape) and info["dtype"] == "int16" and info["modality"] == "ct"
    assert 0 < info["expires_in_s"] <= 3600
    assert client.delete(f"/sessions/{session}").status_code == 204
    gone = client.get(f"/sessions/{session}")
    assert gone.status_code == 404 and gone.json()["code"] == "session_not_found"
    assert "closed" in gone.json()["detail"]
    assert client.delete(f"/sessions/{session}").status_code == 404


@pytest.mark.parametrize("axis", ["axial", "coronal"])
def test_3d_segmentation_equals_the_main_job(client, model, phantom, axis, organ):
    box = organ
    session = client.post("/sessions", json=upload_body(phantom)).json()["session_id"]
    answer = client.post(f"/sessions/{session}/segment", json={"box": list(box), "axis": axis})
    assert answer.status_code == 200, answer.text
    result = answer.json()
    expected = expected_labels(model, phantom, box, axis)
    assert_partial(expected)
    np.testing.assert_array_equal(labels_of(result), expected)
    assert result["voxels"] == np.count_nonzero(expected)
    # The block spans exactly the box's slices along the voxel axis that the display slices cross.
    axis_index = result["slice_axis"]
    assert axis_index == display_layout(phantom.affine, axis).permutation[0]
    assert result["slice_range"] == [box[axis_index], box[axis_index + 3]]
    assert decode_array(result["labels"], 1 << 30).shape[axis_index] == box[axis_index + 3] - box[axis_index] + 1


def test_box_in_ras_millimetres_gives_the_same_labels(client, session, phantom, organ):
    box = organ
    a = phantom.affine
    corners = [a[:3, :3] @ np.array(box[:3]) + a[:3, 3], a[:3, :3] @ np.array(box[3:]) + a[:3, 3]]
    ras = [*np.minimum(*corners), *np.maximum(*corners)]
    by_ijk = client.post(f"/sessions/{session}/segment", json={"box": list(box)}).json()
    by_ras = client.post(f"/sessions/{session}/segment", json={"box_ras": [float(v) for v in ras]}).json()
    np.testing.assert_array_equal(labels_of(by_ras), labels_of(by_ijk))


def test_single_slice_is_the_key_slice_of_the_3d_result(client, session, organ):
    box = list(organ)
    full = labels_of(client.post(f"/sessions/{session}/segment", json={"box": box}).json())
    result = client.post(f"/sessions/{session}/segment", json={"box": box, "propagate": False}).json()
    single = labels_of(result)
    first, last = result["slice_range"]
    assert first == last
    axis = result["slice_axis"]
    region = [slice(None)] * 3
    region[axis] = first
    assert np.count_nonzero(single) == np.count_nonzero(single[tuple(region)])  # nothing off that slice
    np.testing.assert_array_equal(single[tuple(region)], full[tuple(region)])


def test_points_reach_the_network_on_their_display_pixel(client, session, model, phantom, organ):
    box = list(organ)
    result = client.post(f"/sessions/{session}/segment", json={"box": box, "propagate": False}).json()
    key = result["slice_range"][0]
    point_ijk = [(box[0] + box[3]) // 2, (box[1] + box[4]) // 2, (box[2] + box[5]) // 2]
    point_ijk[result["slice_axis"]] = key
    answer = client.post(
        f"/sessions/{session}/segment", json={"box": box, "propagate": False, "points": [{"ijk": point_ijk, "positive": False}]}
    )
    assert answer.status_code == 200, answer.text
    # The same prompt given to the predictor directly, in the display frame.
    layout = display_layout(phantom.affine, "axial")
    display = np.ascontiguousarray(to_display(normalized_volume(phantom), layout))
    s, r, c = ijk_to_display_index(point_ijk, phantom.shape, layout)
    s0, r0, c0 = ijk_to_display_index(box[:3], phantom.shape, layout)
    s1, r1, c1 = ijk_to_display_index(box[3:], phantom.shape, layout)
    box_2d = (min(c0, c1), min(r0, r1), max(c0, c1), max(r0, r1))
    mask = MedSAMPredictor(model).predict_slice(display, s, box=box_2d, points=[[c, r]], point_labels=[0]).masks[0]
    expected = np.zeros(display.shape, dtype=np.uint8)
    expected[s][mask] = 1
    from medsam_monai.orientation import from_display

    np.testing.assert_array_equal(labels_of(answer.json()), from_display(expected, layout))


def test_points_in_3d_prompt_their_slice_and_the_propagation_goes_on(client, session, organ):
    box = list(organ)
    key = client.post(f"/sessions/{session}/segment", json={"box": box, "propagate": False}).json()
    axis, key_slice = key["slice_axis"], key["slice_range"][0]
    point = [(box[0] + box[3]) // 2, (box[1] + box[4]) // 2, (box[2] + box[5]) // 2]
    point[axis] = key_slice
    points = [{"ijk": point, "positive": False}]
    in_3d = client.post(f"/sessions/{session}/segment", json={"box": box, "points": points})
    assert in_3d.status_code == 200, in_3d.text
    assert in_3d.json()["slice_range"] == [box[axis], box[axis + 3]]
    one = client.post(f"/sessions/{session}/segment", json={"box": box, "propagate": False, "points": points}).json()
    region = [slice(None)] * 3
    region[axis] = key_slice
    # The key slice gets the box and the point, exactly as the single-slice request.
    np.testing.assert_array_equal(labels_of(in_3d.json())[tuple(region)], labels_of(one)[tuple(region)])


@pytest.mark.parametrize(
    "request_body, status, message",
    [
        ({"box": [0, 0, 0, 99, 1, 1]}, 422, "outside the image"),
        ({"box": [5, 5, 3, 2, 2, 1]}, 422, "reversed"),
        ({"box": [0, 0, 0, 1, 1]}, 422, "box"),
        ({"box": [0, 0, 0, 1.5, 1, 1]}, 422, "integer"),
        ({"box": [-1, 0, 0, 1, 1, 1]}, 422, "box"),
        ({}, 422, "either box"),
        ({"box": [0, 0, 0, 1, 1, 1], "box_ras": [0, 0, 0, 1, 1, 1]}, 422, "either box"),
        ({"box_ras": [1e6, 1e6, 1e6, 2e6, 2e6, 2e6]}, 422, "no voxel centre"),
        ({"box": [0, 0, 0, 3, 3, 3], "axis": "oblique"}, 422, "axis"),
        ({"box": [0, 0, 0, 3, 3, 3], "label": 0}, 422, "label"),
        ({"box": [0, 0, 0, 3, 3, 3], "label": 256}, 422, "label"),
        ({"box": [0, 0, 0, 3, 3, 1], "points": [{"ijk": [1, 1, 4]}]}, 422, "outside the segmented slices"),
        ({"box": [0, 0, 0, 3, 3, 1], "points": [{"ijk": [1, 1, 40]}]}, 422, "outside the image"),
        ({"box": [0, 0, 0, 3, 3, 1], "points": [{"ras": [1e5, 0, 0]}]}, 422, "outside the image"),
        ({"box": [0, 0, 0, 3, 3, 1], "points": [{"ijk": [1, 1, 1], "ras": [0, 0, 0]}]}, 422, "either ijk or ras"),
        ({"box": [0, 0, 0, 3, 3, 1], "points": [{}]}, 422, "either ijk or ras"),
    ],
)
def test_bad_segment_requests_get_a_clear_4xx(client, session, request_body, status, message):
    answer = client.post(f"/sessions/{session}/segment", json=request_body)
    assert answer.status_code == status, answer.text
    assert message.lower() in answer.json()["detail"].lower()


def test_unknown_session_and_job(client, session):
    for path in ["/sessions/nope/segment", "/sessions/nope/jobs"]:
        answer = client.post(path, json={"box": [0, 0, 0, 1, 1, 1]})
        assert answer.status_code == 404 and answer.json()["code"] == "session_not_found"
    answer = client.get(f"/sessions/{session}/jobs/nope")
    assert answer.status_code == 404 and answer.json()["code"] == "job_not_found"


# ----- jobs: progress, result, cancel ---------------------------------------------------------


def wait_for_job(client, session, job_id, timeout=60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get(f"/sessions/{session}/jobs/{job_id}").json()
        if status["state"] in ("done", "failed", "cancelled"):
            return status
        time.sleep(0.02)
    raise AssertionError("job did not finish")


def test_job_reports_progress_and_gives_the_same_result(client, session, organ):
    box = list(organ)
    started = client.post(f"/sessions/{session}/jobs", json={"box": box})
    assert started.status_code == 202
    status = wait_for_job(client, session, started.json()["job_id"])
    assert status["state"] == "done" and status["done"] == status["total"] == box[5] - box[2] + 1
    now = client.post(f"/sessions/{session}/segment", json={"box": box}).json()
    np.testing.assert_array_equal(labels_of(status["result"]), labels_of(now))


def test_cancel_stops_a_job(client, session, organ):
    state = client.app.state.server
    box = list(organ)
    with state.gate.model_call():  # the network is busy: the job waits in its first slice
        job_id = client.post(f"/sessions/{session}/jobs", json={"box": box}).json()["job_id"]
        assert client.get(f"/sessions/{session}/jobs/{job_id}").json()["state"] in ("queued", "running")
        client.delete(f"/sessions/{session}/jobs/{job_id}")
    status = wait_for_job(client, session, job_id)
    assert status["state"] == "cancelled" and "cancelled by the client" in status["detail"]
    assert status["result"] is None and status["done"] <= 1 < box[5] - box[2] + 1


def test_a_box_does_not_wait_for_another_sessions_3d_job(client, phantom):
    """Requests take turns at the network slice by slice, not job by job."""
    state = client.app.state.server
    busy = client.post("/sessions", json=upload_body(phantom)).json()["session_id"]
    other = client.post("/sessions", json=upload_body(phantom)).json()["session_id"]
    whole = [0, 0, 0, phantom.shape[0] - 1, phantom.shape[1] - 1, phantom.shape[2] - 1]
    with state.gate.model_call():  # both wait until the test lets the network go
        job_id = client.post(f"/sessions/{busy}/jobs", json={"box": whole, "axis": "sagittal"}).json()["job_id"]
        job = state.store.get(busy).jobs[job_id]
        box = threading.Thread(target=lambda: client.post(f"/sessions/{other}/segment", json={"box": [0, 0, 0, 3, 3, 0]}))
        box.start()
        time.sleep(0.3)
    box.join(timeout=60)
    assert job.done < job.total - 2, (job.done, job.total)  # the box was answered long before the job ended
    client.delete(f"/sessions/{busy}/jobs/{job_id}")
    assert wait_for_job(client, busy, job_id)["state"] == "cancelled"


def test_too_many_jobs_in_one_session_is_429(model, phantom):
    with TestClient(make_app(model, max_jobs_per_session=1)) as c:
        session = c.post("/sessions", json=upload_body(phantom)).json()["session_id"]
        with c.app.state.server.gate.model_call():
            assert c.post(f"/sessions/{session}/jobs", json={"box": [0, 0, 0, 3, 3, 1]}).status_code == 202
            second = c.post(f"/sessions/{session}/jobs", json={"box": [0, 0, 0, 3, 3, 1]})
            assert second.status_code == 429 and second.json()["code"] == "busy"


def test_closing_a_session_cancels_its_jobs_and_drops_its_embeddings(client, phantom, organ):
    state = client.app.state.server
    keep = client.post("/sessions", json=upload_body(phantom)).json()["session_id"]
    close = client.post("/sessions", json=upload_body(phantom)).json()["session_id"]
    box = [0, 0, 0, 3, 3, 1]
    for session in (keep, close):
        client.post(f"/sessions/{session}/segment", json={"box": box})
    assert state.cache.count(keep, "axial") == state.cache.count(close, "axial") == 2
    with state.gate.model_call():
        job_id = client.post(f"/sessions/{close}/jobs", json={"box": list(organ)}).json()["job_id"]
        job = state.store.get(close).jobs[job_id]
        assert client.delete(f"/sessions/{close}").status_code == 204
    deadline = time.monotonic() + 30
    while not job.finished and time.monotonic() < deadline:
        time.sleep(0.02)
    assert job.state == "cancelled" and "closed" in job.detail
    assert state.cache.count(close, "axial") == 0
    assert state.cache.count(keep, "axial") == 2  # the other session keeps its embeddings


# ----- expiry, memory bound, prefetch ---------------------------------------------------------


def test_sessions_expire_after_the_ttl(model, phantom):
    with TestClient(make_app(model, session_ttl_s=1.0)) as c:
        session = c.post("/sessions", json=upload_body(phantom)).json()["session_id"]
        c.post(f"/sessions/{session}/segment", json={"box": [0, 0, 0, 3, 3, 1]})
        time.sleep(0.1)
        assert c.get(f"/sessions/{session}").status_code == 200  # being used keeps it alive
        time.sleep(1.6)
        state = c.app.state.server
        assert len(state.store) == 0  # the janitor dropped it without being asked
        gone = c.get(f"/sessions/{session}")
        assert gone.status_code == 404 and "expired" in gone.json()["detail"]
        assert state.cache.count(session, "axial") == 0


def test_session_memory_is_bounded_least_recently_used_first(model, phantom):
    per_session = 4 * int(np.prod(phantom.shape))
    with TestClient(make_app(model, max_sessions_bytes=int(2.5 * per_session))) as c:
        first, second = (c.post("/sessions", json=upload_body(phantom)).json()["session_id"] for _ in range(2))
        assert c.get(f"/sessions/{first}").status_code == 200  # now second is the least recently used
        third = c.post("/sessions", json=upload_body(phantom))
        assert third.status_code == 201
        assert c.get(f"/sessions/{first}").status_code == 200
        dropped = c.get(f"/sessions/{second}")
        assert dropped.status_code == 404 and "room" in dropped.json()["detail"]
    with TestClient(make_app(model, max_sessions_bytes=per_session - 1)) as c:
        too_big = c.post("/sessions", json=upload_body(phantom))
        assert too_big.status_code == 413 and "session memory" in too_big.json()["detail"]


def test_nearest_first_order():
    assert nearest_first(6, 2, 10) == [2, 3, 1, 4, 0, 5]
    assert nearest_first(6, 5, 3) == [5, 4, 3]
    assert nearest_first(1, 0, 0) == []


def test_prefetch_encodes_the_slices_nearest_to_the_focus(model, phantom):
    with TestClient(make_app(model, prefetch_slices=3)) as c:
        state = c.app.state.server
        focus = [10, 10, 1]
        session_id = c.post("/sessions", json=upload_body(phantom, focus_ijk=focus)).json()["session_id"]
        deadline = time.monotonic() + 30
        while not state.prefetcher.idle() and time.monotonic() < deadline:
            time.sleep(0.02)
        session = state.store.get(session_id)
        layout = session.layout("axial")
        centre = ijk_to_display_index(focus, phantom.shape, layout)[0]
        key = embedding_key(session, "axial")
        cached = sorted(z for z in range(phantom.shape[2]) if state.predictor.cache_key(key, z) in state.cache)
        assert cached == sorted(nearest_first(phantom.shape[2], centre, 3))
        assert c.get(f"/sessions/{session_id}").json()["cached_slices"]["axial"] == 3
        # A box on prefetched slices encodes nothing more.
        misses = state.cache.misses
        box_slice = (phantom.shape[2] - 1 - cached[0]) if layout.flips[0] else cached[0]
        c.post(f"/sessions/{session_id}/segment", json={"box": [0, 0, box_slice, 5, 5, box_slice]})
        assert state.cache.misses == misses
        # Refocusing on another axis encodes there.
        assert c.post(f"/sessions/{session_id}/prefetch", json={"ijk": [0, 0, 0], "axis": "coronal"}).status_code == 202
        deadline = time.monotonic() + 30
        while not state.prefetcher.idle() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert state.cache.count(session_id, "coronal") == 3
        bad = c.post(f"/sessions/{session_id}/prefetch", json={"ijk": [0, 0, 99]})
        assert bad.status_code == 422


def test_openapi_documents_the_protocol(client):
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    for path in [
        "/health",
        "/sessions",
        "/sessions/{session_id}",
        "/sessions/{session_id}/segment",
        "/sessions/{session_id}/jobs",
        "/sessions/{session_id}/jobs/{job_id}",
        "/sessions/{session_id}/prefetch",
    ]:
        assert path in paths, path
    assert "HTTPBearer" in schema["components"]["securitySchemes"]
    assert {"dtype", "shape", "compression", "data"} <= set(schema["components"]["schemas"]["EncodedArray"]["properties"])


def test_concurrent_requests_in_the_test_client_do_not_mix(client, model):
    """Four threads, four volumes of different shapes, through one app."""
    volumes = [ct_phantom(shape=(36 + 4 * n, 30, 4), spacing=(3.0, 3.0, 5.0), seed=n).volume for n in range(4)]
    boxes = [(6, 6, 1, 20, 20, 2) for _ in volumes]
    expected = [expected_labels(model, v, b) for v, b in zip(volumes, boxes)]
    results: dict[int, np.ndarray] = {}
    barrier = threading.Barrier(len(volumes))

    def work(n):
        session = client.post("/sessions", json=upload_body(volumes[n])).json()["session_id"]
        barrier.wait()
        results[n] = labels_of(client.post(f"/sessions/{session}/segment", json={"box": list(boxes[n])}).json())

    threads = [threading.Thread(target=work, args=(n,)) for n in range(len(volumes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for n, want in enumerate(expected):
        np.testing.assert_array_equal(results[n], want)


# ----- the command ----------------------------------------------------------------------------


def test_serve_refuses_a_public_address_without_a_token(capsys, monkeypatch):
    monkeypatch.delenv("MEDSAM_SERVER_TOKEN", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--variant", "tiny"]) == 2
    assert "without a token" in capsys.readouterr().err


def test_loopback_addresses():
    assert all(map(is_loopback, ["127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"]))
    assert not any(map(is_loopback, ["0.0.0.0", "192.168.1.4", "example.org", "::"]))
