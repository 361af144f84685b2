"""Issue 17 in the server: the preprocessing it reports and uses, multimask, refining a mask prompt,
and SAM's automatic masks of one slice as a job (``/sessions/{id}/everything``).

The model is the tiny mask decoder behind the fast stand-in encoder
(:func:`medsam_monai.server.testing.fast_tiny_predictor`; seed 5 gives masks of several sizes on
the phantom). Every expected result comes from the library with the same network (the propagation,
the predictor, :class:`~medsam_monai.automatic.AutomaticMaskGenerator`), never a stored answer; the
phantom is stored permuted and flipped, so that IJK, the display frame and back are all exercised.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import assert_partial, relayout

from medsam_monai.automatic import AutomaticMaskGenerator, filter_medical, record_mask, records_to_label_map
from medsam_monai.cli import main
from medsam_monai.cli.parsing import PREPROCESSING_CHOICES
from medsam_monai.io import Volume
from medsam_monai.masks import mask_box
from medsam_monai.orientation import box_ijk_to_display, display_layout, from_display, ijk_to_display_index, to_display
from medsam_monai.phantom import ct_phantom
from medsam_monai.predictor import MedSAMPredictor, ObjectPrompt
from medsam_monai.propagation import propagate
from medsam_monai.segment import VoxelBox, normalized_volume, segment_volume
from medsam_monai.server import ServerSettings, create_app
from medsam_monai.server.codec import decode_array, encode_array
from medsam_monai.server.everything import EverythingPlan, plan_everything
from medsam_monai.server.models import EverythingRequest
from medsam_monai.server.testing import fast_tiny_predictor
from medsam_monai.transforms import PREPROCESSING_MODES

PERMUTATION, FLIPS = (1, 0, 2), (True, False, True)
SHAPE, SPACING = (40, 32, 6), (3.0, 3.0, 5.0)
# SAM's generator on the tiny random decoder: its scores are meaningless, so keep every mask.
GENERATOR = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}


@pytest.fixture(scope="module")
def model():
    return fast_tiny_predictor(seed=5).model


@pytest.fixture(scope="module")
def phantom() -> Volume:
    return relayout(ct_phantom(shape=SHAPE, spacing=SPACING).volume, PERMUTATION, FLIPS)


@pytest.fixture(scope="module")
def organ_mask(phantom) -> np.ndarray:
    """The phantom's organ as an [i, j, k] bool mask of the relaid volume."""
    base = ct_phantom(shape=SHAPE, spacing=SPACING)
    return relayout(Volume(base.labels, base.volume.affine), PERMUTATION, FLIPS).array == 1


@pytest.fixture(scope="module")
def display(phantom) -> np.ndarray:
    """The axial display volume the server's network sees."""
    return np.ascontiguousarray(to_display(normalized_volume(phantom), display_layout(phantom.affine, "axial")))


def make_app(model, preprocessing="medsam", **settings):
    settings.setdefault("prefetch_slices", 0)
    return create_app(MedSAMPredictor(model, preprocessing=preprocessing), ServerSettings(**settings))


@pytest.fixture()
def client(model):
    with TestClient(make_app(model)) as test_client:
        yield test_client


@pytest.fixture()
def session(client, phantom):
    answer = client.post("/sessions", json={"volume": encode_array(phantom.array), "ijk_to_ras": phantom.affine.tolist()})
    assert answer.status_code == 201, answer.text
    return answer.json()["session_id"]


def labels_of(result: dict) -> np.ndarray:
    """A result's label block as the whole [i, j, k] label volume."""
    block = decode_array(result["labels"], 1 << 30)
    out = np.zeros(result["volume_shape"], dtype=block.dtype)
    i, j, k = result["offset"]
    out[i : i + block.shape[0], j : j + block.shape[1], k : k + block.shape[2]] = block
    return out


def box_of(mask: np.ndarray) -> list[int]:
    lower, upper = mask_box(mask)
    return [*lower, *upper]


def display_prompt(phantom, box_ijk, **kwargs) -> ObjectPrompt:
    """The object the server builds from an IJK box: its display box ``(x0, y0, z0, x1, y1, z1)``."""
    s0, r0, c0, s1, r1, c1 = box_ijk_to_display(box_ijk, phantom.shape, display_layout(phantom.affine, "axial"))
    return ObjectPrompt((c0, r0, s0, c1, r1, s1), **kwargs)


def in_ijk(display_labels: np.ndarray, phantom) -> np.ndarray:
    return from_display(display_labels, display_layout(phantom.affine, "axial"))


def wait(client, path: str, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get(path).json()
        if status["state"] in ("done", "failed", "cancelled"):
            return status
        time.sleep(0.02)
    raise AssertionError(f"{path} did not finish")


# ----- preprocessing ------------------------------------------------------------------------------


def test_the_server_reports_its_preprocessing_and_every_request_uses_it(model, phantom, organ_mask):
    box = box_of(organ_mask)
    with TestClient(make_app(model, preprocessing="sam")) as c:
        assert c.get("/health").json()["preprocessing"] == "sam"
        session = c.post("/sessions", json={"volume": encode_array(phantom.array), "ijk_to_ras": phantom.affine.tolist()})
        answer = c.post(f"/sessions/{session.json()['session_id']}/segment", json={"box": box})
    assert answer.status_code == 200, answer.text
    sam = segment_volume(MedSAMPredictor(model, preprocessing="sam"), phantom, [VoxelBox(tuple(box))])
    medsam = segment_volume(MedSAMPredictor(model, preprocessing="medsam"), phantom, [VoxelBox(tuple(box))])
    assert_partial(sam)
    assert not np.array_equal(sam, medsam)  # the two pipelines differ here: the comparison tells them apart
    np.testing.assert_array_equal(labels_of(answer.json()), sam)


def test_medsam_serve_takes_preprocessing_and_the_server_uses_it(monkeypatch, model):
    import medsam_monai.models
    import medsam_monai.server.http

    asked: dict = {}

    def load(variant, checkpoint=None, **kwargs):
        asked.update(kwargs)
        return MedSAMPredictor(model, preprocessing=kwargs["preprocessing"] or "medsam")

    served: list = []

    def serve(app, sock, log_level):  # instead of serving: keep the app, free the port and the threads
        sock.close()
        app.state.server.close()
        served.append(app.state.server.health().preprocessing)

    monkeypatch.setattr(medsam_monai.models, "load_predictor", load)
    monkeypatch.setattr(medsam_monai.server.http, "serve", serve)
    assert main(["serve", "--variant", "tiny", "--port", "0", "--preprocessing", "sam"]) == 0
    assert asked["preprocessing"] == "sam" and served == ["sam"]
    assert main(["serve", "--variant", "tiny", "--port", "0"]) == 0
    assert asked["preprocessing"] is None  # nothing given: the checkpoint decides (models.default_preprocessing)


def test_medsam_serve_refuses_an_unknown_preprocessing(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["serve", "--preprocessing", "clahe"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("medsam: error:") and "--preprocessing" in err and len(err.strip().splitlines()) == 1
    assert PREPROCESSING_CHOICES == PREPROCESSING_MODES


# ----- multimask ----------------------------------------------------------------------------------


def test_multimask_keeps_the_best_candidate_on_every_slice_and_reports_the_scores(
    client, session, model, phantom, display, organ_mask
):
    box = box_of(organ_mask)
    answer = client.post(f"/sessions/{session}/segment", json={"box": box, "multimask": True})
    assert answer.status_code == 200, answer.text
    result = answer.json()
    scores: dict = {}
    expected = propagate(MedSAMPredictor(model), display, [display_prompt(phantom, box)], multimask_output=True, scores=scores)
    assert_partial(expected)
    np.testing.assert_array_equal(labels_of(result), in_ijk(expected, phantom))
    single = propagate(MedSAMPredictor(model), display, [display_prompt(phantom, box)])
    assert not np.array_equal(expected, single)  # multimask changed the result: it reached the network
    # The scores: every slice of the box, by IJK index along the slice axis, three candidates, the best kept.
    layout = display_layout(phantom.affine, "axial")
    axis = result["slice_axis"]
    assert axis == layout.permutation[0] and layout.flips[0]  # display slice z is voxel index count - 1 - z

    def voxel_index(z):
        return phantom.shape[axis] - 1 - z

    by_index = {voxel_index(z): iou for z, iou in scores[1].items()}
    assert [s["index"] for s in result["scores"]] == sorted(by_index) == list(range(box[axis], box[axis + 3] + 1))
    for entry in result["scores"]:
        np.testing.assert_allclose(entry["iou"], by_index[entry["index"]], rtol=1e-6)
        assert len(entry["iou"]) == 3 and entry["kept"] == int(np.argmax(entry["iou"]))
    assert result["key_index"] == voxel_index(display_prompt(phantom, box).key_slice)


def test_multimask_on_one_slice_is_the_predictors_best_candidate(client, session, model, phantom, display, organ_mask):
    box = box_of(organ_mask)
    result = client.post(f"/sessions/{session}/segment", json={"box": box, "multimask": True, "propagate": False}).json()
    prompt = display_prompt(phantom, box)
    x0, y0, _, x1, y1, _ = prompt.box
    z = prompt.key_slice
    prediction = MedSAMPredictor(model).predict_slice(display, z, box=(x0, y0, x1, y1), multimask_output=True)
    best = int(np.argmax(prediction.iou))
    expected = np.zeros(display.shape, dtype=np.uint8)
    expected[z][prediction.masks[best]] = 1
    np.testing.assert_array_equal(labels_of(result), in_ijk(expected, phantom))
    assert [s["index"] for s in result["scores"]] == [result["key_index"]] == [result["slice_range"][0]]
    np.testing.assert_allclose(result["scores"][0]["iou"], prediction.iou, rtol=1e-6)
    plain = client.post(f"/sessions/{session}/segment", json={"box": box, "propagate": False}).json()
    assert len(plain["scores"][0]["iou"]) == 1 and plain["scores"][0]["kept"] == 0


# ----- refining a mask prompt ---------------------------------------------------------------------


def test_a_mask_prompt_is_the_dense_prompt_of_each_slice_it_covers(client, session, model, phantom, display, organ_mask):
    box = box_of(organ_mask)
    # The mask of the organ's upper half only, sent as a label block with an offset and another label value.
    mask = organ_mask.copy()
    mask[:, :, : (box[2] + box[5]) // 2 + 1] = False
    lo, hi = mask_box(mask)
    block = np.where(mask, 7, 3).astype(np.uint16)[lo[0] : hi[0] + 1, lo[1] : hi[1] + 1, lo[2] : hi[2] + 1]
    prompt = {"labels": encode_array(block), "offset": lo, "label_value": 7}
    answer = client.post(f"/sessions/{session}/segment", json={"box": box, "mask_prompt": prompt, "multimask": True})
    assert answer.status_code == 200, answer.text
    layout = display_layout(phantom.affine, "axial")
    shown = to_display(mask, layout)
    dense = {z: shown[z] for z in range(display.shape[0]) if shown[z].any()}
    assert 0 < len(dense) < box[5] - box[2] + 1  # some slices get the mask prompt, others only the box
    obj = display_prompt(phantom, box, mask_prompts=dense)
    expected = propagate(MedSAMPredictor(model), display, [obj], multimask_output=True)
    without = propagate(MedSAMPredictor(model), display, [display_prompt(phantom, box)], multimask_output=True)
    assert_partial(expected)
    assert not np.array_equal(expected, without)  # the mask reached the network
    np.testing.assert_array_equal(labels_of(answer.json()), in_ijk(expected, phantom))


def test_a_mask_prompt_without_a_box_refines_on_its_own_extent(client, session, model, phantom, display, organ_mask):
    prompt = {"labels": encode_array(organ_mask.astype(np.uint8))}
    answer = client.post(f"/sessions/{session}/segment", json={"mask_prompt": prompt})
    assert answer.status_code == 200, answer.text
    box = box_of(organ_mask)
    shown = to_display(organ_mask, display_layout(phantom.affine, "axial"))
    obj = display_prompt(phantom, box, mask_prompts={z: shown[z] for z in range(display.shape[0]) if shown[z].any()})
    expected = propagate(MedSAMPredictor(model), display, [obj])
    np.testing.assert_array_equal(labels_of(answer.json()), in_ijk(expected, phantom))
    assert answer.json()["slice_range"] == [box[2], box[5]]


def _mask(dtype="uint8", shape=(4, 4, 2), value=1):
    return encode_array(np.full(shape, value, dtype=dtype))


@pytest.mark.parametrize(
    "body, message",
    [
        ({"mask_prompt": {"labels": _mask(), "offset": [38, 0, 0]}}, "does not fit in the volume"),
        ({"mask_prompt": {"labels": _mask(shape=(4, 4, 7))}}, "does not fit in the volume"),
        ({"mask_prompt": {"labels": _mask("float32")}}, "integer"),
        ({"mask_prompt": {"labels": _mask(), "label_value": 2}}, "no voxel of label_value 2"),
        ({"mask_prompt": {"labels": {**_mask(), "data": "%%%%"}}}, "base64"),
        ({"mask_prompt": {"labels": {**_mask(), "shape": [4, 4, 1]}}}, "mask_prompt"),
        ({"mask_prompt": {"labels": _mask(), "label_value": 0}}, "label_value"),
        ({"mask_prompt": {"labels": _mask(), "offset": [0, 0]}}, "offset"),
        ({"mask_prompt": {"labels": _mask(), "value": 1}}, "value"),
        ({"multimask": "often"}, "multimask"),
        ({"box": [0, 0, 0, 3, 3, 1], "box_ras": [0, 0, 0, 1, 1, 1]}, "not both"),
        ({"propagate": False}, "either box"),
    ],
)
def test_bad_mask_prompts_and_flags_get_a_one_line_422(client, session, body, message):
    answer = client.post(f"/sessions/{session}/segment", json=body)
    assert answer.status_code == 422, answer.text
    detail = answer.json()["detail"]
    assert message.lower() in detail.lower() and "\n" not in detail, detail


# ----- segment everything -------------------------------------------------------------------------

SLICE_IJK = [5, 9, 2]  # a voxel of axial display slice 3 (k is flipped: 6 - 1 - 2)


@pytest.fixture(scope="module")
def reference(model, display):
    """segment-anything's records of the display slice, from the library's generator directly."""
    return AutomaticMaskGenerator(MedSAMPredictor(model), **GENERATOR).generate(display[3])


def start_everything(client, session, **body) -> dict:
    answer = client.post(f"/sessions/{session}/everything", json={"ijk": SLICE_IJK, **GENERATOR, **body})
    assert answer.status_code == 202, answer.text
    return answer.json()


def test_everything_gives_the_generators_masks_as_labels_and_records(client, session, phantom, display, reference):
    started = start_everything(client, session)
    assert started["total"] == 1  # 16 points, 64 a batch
    status = wait(client, f"/sessions/{session}/everything/{started['job_id']}")
    assert status["state"] == "done" and status["done"] == status["total"] == 1, status
    result = status["result"]
    layout = display_layout(phantom.affine, "axial")
    expected = np.zeros(display.shape, dtype=np.uint16)
    expected[3] = records_to_label_map(reference, expected.shape[1:])
    expected_ijk = from_display(expected, layout)
    labels = labels_of(result)
    assert labels.dtype == np.uint16 and result["labels"]["shape"][2] == 1
    assert len(np.unique(labels)) > 3  # several masks visible: the painting order is exercised
    np.testing.assert_array_equal(labels, expected_ijk)
    assert result["slice_axis"] == 2 and result["slice_range"] == [SLICE_IJK[2]] * 2
    assert result["masks"] == result["generated"] == len(reference) == len(result["records"])
    assert result["pixel_spacing_mm"] == [3.0, 3.0]
    for n, (record, want) in enumerate(zip(result["records"], reference), start=1):
        assert record["label"] == n
        for name in ("area", "bbox", "crop_box"):
            assert record[name] == want[name], name
        for name in ("predicted_iou", "stability_score"):
            assert record[name] == pytest.approx(want[name], rel=1e-6), name
        np.testing.assert_allclose(record["point_coords"], want["point_coords"])
        assert record["area_mm2"] == pytest.approx(9.0 * want["area"])
        assert record["voxels"] == np.count_nonzero(labels == n) <= want["area"]
        # The record's IJK box is the tight box of its mask on the volume grid.
        full = np.zeros(expected.shape, dtype=bool)
        full[3] = record_mask(want)
        assert record["bbox_ijk"] == box_of(from_display(full, layout))
        x, y = (int(round(v)) for v in want["point_coords"][0])
        assert ijk_to_display_index(record["point_ijk"], phantom.shape, layout) == (3, y, x)


def test_the_medical_filters_keep_the_generators_records_they_admit(client, session, reference):
    areas = sorted(r["area"] for r in reference)
    min_mm2 = 9.0 * (areas[1] + 1)  # drops the two smallest masks
    started = start_everything(client, session, min_area_mm2=min_mm2, max_area_fraction=0.9)
    result = wait(client, f"/sessions/{session}/everything/{started['job_id']}")["result"]
    kept = filter_medical(reference, 9.0, min_area_mm2=min_mm2, max_area_fraction=0.9)
    assert 0 < len(kept) < len(reference) - 1
    assert result["generated"] == len(reference) and result["masks"] == len(kept)
    assert [r["area"] for r in result["records"]] == [r["area"] for r in kept]
    assert [r["label"] for r in result["records"]] == list(range(1, len(kept) + 1))
    assert set(np.unique(labels_of(result))) <= set(range(len(kept) + 1))


def test_the_slice_can_be_named_by_voxel_ras_point_or_display_index(client, session, phantom):
    state = client.app.state.server
    stored = state.session(session)
    ras = (phantom.affine @ np.array([*SLICE_IJK, 1.0]))[:3] + 0.4  # not a voxel centre: the nearest voxel
    plans = [
        plan_everything(stored, EverythingRequest(**form), state.model)
        for form in ({"ijk": SLICE_IJK}, {"ras": ras.tolist()}, {"slice": 3})
    ]
    assert {plan.slice for plan in plans} == {3} and {plan.slice_index for plan in plans} == {SLICE_IJK[2]}
    sagittal = plan_everything(stored, EverythingRequest(axis="sagittal", ijk=SLICE_IJK), state.model)
    assert isinstance(sagittal, EverythingPlan) and sagittal.slice_index == SLICE_IJK[sagittal.layout.permutation[0]]
    grids = plan_everything(stored, EverythingRequest(slice=0, point_grids=[[[0.5, 0.5]] * 70], points_per_batch=32), state.model)
    assert grids.steps == 3 and grids.parameters["points_per_side"] is None  # SAM's default yields to the grids


def test_the_job_keeps_one_uint16_slice_and_no_masks_and_caches_only_its_slice(client, session, display):
    state = client.app.state.server
    started = start_everything(client, session, points_per_side=2, crop_n_layers=1)
    status = wait(client, f"/sessions/{session}/everything/{started['job_id']}")
    assert status["state"] == "done" and status["total"] == 5  # the whole slice and its 4 crops, a batch each
    job = state.session(session).jobs[started["job_id"]]
    assert job.outcome.block.dtype == np.uint16 and job.outcome.block.size == display[0].size
    assert job.outcome.records and all(set(record) == set(status["result"]["records"][0]) for record in job.outcome.records)
    assert not any("segmentation" in record for record in job.outcome.records)
    # The whole slice's embedding is the session's cache entry; the crops' were not cached at all.
    assert state.cache.count(session, "axial") == 1 == len(state.cache)
    misses = state.cache.misses
    client.post(f"/sessions/{session}/segment", json={"box": [2, 2, SLICE_IJK[2], 20, 20, SLICE_IJK[2]]})
    assert state.cache.misses == misses


def test_an_everything_job_is_cancelled_by_the_client_and_by_closing_its_session(client, session, phantom):
    state = client.app.state.server
    with state.gate.model_call():  # the network is busy: the jobs wait before their first batch
        first = start_everything(client, session, points_per_batch=4)
        assert first["total"] == 4 and first["state"] in ("queued", "running")
        cancelled = client.delete(f"/sessions/{session}/everything/{first['job_id']}")
        assert cancelled.status_code == 200 and cancelled.json()["job_id"] == first["job_id"]
    status = wait(client, f"/sessions/{session}/everything/{first['job_id']}")
    assert status["state"] == "cancelled" and "cancelled by the client" in status["detail"]
    assert status["result"] is None and status["done"] < status["total"]
    with state.gate.model_call():
        second = start_everything(client, session, points_per_batch=4)
        job = state.session(session).jobs[second["job_id"]]
        assert client.delete(f"/sessions/{session}").status_code == 204
    deadline = time.monotonic() + 30
    while not job.finished and time.monotonic() < deadline:
        time.sleep(0.02)
    assert job.state == "cancelled" and "closed" in job.detail


def test_segment_and_everything_jobs_have_their_own_paths_and_share_the_limit(model, phantom, session, client):
    with state_gate(client):
        segment_job = client.post(f"/sessions/{session}/jobs", json={"box": [0, 0, 0, 3, 3, 1]}).json()["job_id"]
        everything_job = start_everything(client, session)["job_id"]
    wrong = client.get(f"/sessions/{session}/jobs/{everything_job}")
    assert wrong.status_code == 404 and f"/sessions/{session}/everything/{everything_job}" in wrong.json()["detail"]
    wrong = client.delete(f"/sessions/{session}/everything/{segment_job}")
    assert wrong.status_code == 404 and f"/sessions/{session}/jobs/{segment_job}" in wrong.json()["detail"]
    assert client.get(f"/sessions/{session}/everything/nope").json()["code"] == "job_not_found"
    assert client.post("/sessions/nope/everything", json={"slice": 0}).json()["code"] == "session_not_found"
    wait(client, f"/sessions/{session}/everything/{everything_job}")
    with TestClient(make_app(model, max_jobs_per_session=1)) as c:
        one = c.post("/sessions", json={"volume": encode_array(phantom.array), "ijk_to_ras": phantom.affine.tolist()})
        sid = one.json()["session_id"]
        with state_gate(c):
            assert c.post(f"/sessions/{sid}/jobs", json={"box": [0, 0, 0, 3, 3, 1]}).status_code == 202
            busy = c.post(f"/sessions/{sid}/everything", json={"slice": 0})
            assert busy.status_code == 429 and busy.json()["code"] == "busy"


def state_gate(client):
    """Hold the network, so that jobs started meanwhile wait."""
    return client.app.state.server.gate.model_call()


@pytest.mark.parametrize(
    "body, message",
    [
        ({"ijk": SLICE_IJK, "points_per_side": 0}, "points_per_side"),
        ({"ijk": SLICE_IJK, "points_per_side": 129}, "points_per_side"),
        ({"ijk": SLICE_IJK, "points_per_batch": 0}, "points_per_batch"),
        ({"ijk": SLICE_IJK, "pred_iou_thresh": 1.5}, "pred_iou_thresh"),
        ({"ijk": SLICE_IJK, "stability_score_thresh": -0.1}, "stability_score_thresh"),
        ({"ijk": SLICE_IJK, "stability_score_offset": -1}, "stability_score_offset"),
        ({"ijk": SLICE_IJK, "box_nms_thresh": 2}, "box_nms_thresh"),
        ({"ijk": SLICE_IJK, "crop_n_layers": 4}, "crop_n_layers"),
        ({"ijk": SLICE_IJK, "crop_overlap_ratio": 1.0}, "crop_overlap_ratio"),
        ({"ijk": SLICE_IJK, "crop_n_points_downscale_factor": 0}, "crop_n_points_downscale_factor"),
        ({"ijk": SLICE_IJK, "min_mask_region_area": -5}, "min_mask_region_area"),
        ({"ijk": SLICE_IJK, "min_area_mm2": -1}, "min_area_mm2"),
        ({"ijk": SLICE_IJK, "max_area_fraction": 0}, "max_area_fraction"),
        ({"ijk": SLICE_IJK, "points_per_side": 2, "crop_n_layers": 2, "crop_n_points_downscale_factor": 2}, "no point"),
        ({"ijk": SLICE_IJK, "point_grids": [[[0.5, 1.5]]]}, "point_grids"),
        ({"ijk": SLICE_IJK, "point_grids": [[[0.5, 0.5]]], "crop_n_layers": 1}, "needs 2"),
        ({"ijk": SLICE_IJK, "point_grids": [[[0.5, 0.5]]], "points_per_side": 8}, "exactly one of points_per_side"),
        ({"ijk": SLICE_IJK, "output_mode": "coco_rle"}, "output_mode"),
        ({"ijk": SLICE_IJK, "points_per_sid": 8}, "points_per_sid"),
        ({"ijk": SLICE_IJK, "slice": 1}, "exactly one of ijk, ras or slice"),
        ({}, "exactly one of ijk, ras or slice"),
        ({"slice": 6}, "outside the axial slices 0..5"),
        ({"ijk": [0, 0, 6]}, "outside the image"),
        ({"ras": [1e6, 0, 0]}, "outside the image"),
        ({"slice": 0, "axis": "oblique"}, "axis"),
    ],
)
def test_bad_everything_requests_get_a_one_line_422(client, session, body, message):
    answer = client.post(f"/sessions/{session}/everything", json=body)
    assert answer.status_code == 422, answer.text
    detail = answer.json()["detail"]
    assert message.lower() in detail.lower() and "\n" not in detail, detail


def test_openapi_documents_the_everything_jobs(client):
    schema = client.get("/openapi.json").json()
    assert {"post"} <= set(schema["paths"]["/sessions/{session_id}/everything"])
    assert {"get", "delete"} <= set(schema["paths"]["/sessions/{session_id}/everything/{job_id}"])
    request = schema["components"]["schemas"]["EverythingRequest"]["properties"]
    assert {"points_per_side", "pred_iou_thresh", "crop_n_layers", "point_grids", "min_area_mm2"} <= set(request)
    assert {"multimask", "mask_prompt"} <= set(schema["components"]["schemas"]["SegmentRequest"]["properties"])
    assert "preprocessing" in schema["components"]["schemas"]["Health"]["properties"]


def test_an_everything_job_running_at_shutdown_is_cancelled_with_the_reason(model, phantom):
    with TestClient(make_app(model)) as c:
        state = c.app.state.server
        upload = {"volume": encode_array(phantom.array), "ijk_to_ras": phantom.affine.tolist()}
        session = c.post("/sessions", json=upload).json()["session_id"]
        with state.gate.model_call():
            job_id = start_everything(c, session, points_per_batch=4)["job_id"]
            job = state.session(session).jobs[job_id]
            state.begin_shutdown()
        deadline = time.monotonic() + 10
        while not job.finished and time.monotonic() < deadline:
            time.sleep(0.02)
        assert job.state == "cancelled" and job.detail == "the server is shutting down"
