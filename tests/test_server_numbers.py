"""No number in a request can reach a 500 (issue 14, item 3).

A box index of 10**30 (a TypeError in ``check_voxel_box``) and a RAS point of 1.7e308 mm with a
0.5 mm affine (an OverflowError rounding it to a voxel) were 500s. Every numeric field of every
request body is tried here with values at and past the edges of int64, float64 and the
protocol's own bounds; each must be answered (2xx, or a 4xx in the server's error format).
"""

from __future__ import annotations

import base64
import json
import zlib

import numpy as np
import pytest
from fastapi.testclient import TestClient

from medsam_monai.predictor import MedSAMPredictor
from medsam_monai.server import ServerSettings, create_app
from medsam_monai.server.testing import fast_tiny_predictor

SHAPE = [12, 10, 4]
AFFINE = np.diag([0.5, 0.5, 0.5, 1.0]).tolist()

# Raw JSON number texts: past int64 and uint64, past float64 (1e400 parses as inf), subnormal, negative.
EXTREMES = [
    "1e30",
    "-1e30",
    str(10**30),
    str(-(10**30)),
    str(2**63),
    str(2**64),
    str(-(2**63) - 1),
    "1.7e308",
    "-1.7e308",
    "1e400",
    "-1e400",
    "5e-324",
    "-1",
    "0.5",
    "1e9",
    "1000000001",
    "2147483648",
    "NaN",
    "Infinity",
]


@pytest.fixture(scope="module")
def client():
    app = create_app(MedSAMPredictor(fast_tiny_predictor().model), ServerSettings(prefetch_slices=0))
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def session(client):
    raw = np.arange(np.prod(SHAPE), dtype=np.int16).tobytes(order="F")
    volume = {"dtype": "int16", "shape": SHAPE, "compression": "zlib", "data": base64.b64encode(zlib.compress(raw)).decode()}
    answer = client.post("/sessions", json={"volume": volume, "ijk_to_ras": AFFINE, "prefetch": False})
    assert answer.status_code == 201, answer.text
    return answer.json()["session_id"]


def with_number(template: str, number: str) -> bytes:
    """``template`` (JSON with one ``@`` where the number goes) as request bytes."""
    return template.replace("@", number).encode()


def assert_answered(answer) -> None:
    assert answer.status_code < 500, answer.text
    if answer.status_code >= 400:
        body = answer.json()
        assert set(body) == {"detail", "code"} and isinstance(body["detail"], str) and "\n" not in body["detail"]


def _upload_templates() -> list[str]:
    volume = base64.b64encode(zlib.compress(bytes(2 * 12 * 10 * 4))).decode()
    encoded = '{"dtype": "int16", "shape": %s, "compression": "zlib", "data": "' + volume + '"}'
    affine = json.dumps(AFFINE)
    return [
        '{"volume": ' + encoded % "[12, 10, @]" + ', "ijk_to_ras": ' + affine + "}",
        '{"volume": ' + encoded % "[12, 10, 4]" + ', "ijk_to_ras": [[@, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]}',
        '{"volume": ' + encoded % "[12, 10, 4]" + ', "ijk_to_ras": [[1, 0, 0, @], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]}',
        '{"volume": ' + encoded % "[12, 10, 4]" + ', "ijk_to_ras": ' + affine + ', "window": [@, 400]}',
        '{"volume": ' + encoded % "[12, 10, 4]" + ', "ijk_to_ras": ' + affine + ', "window": [40, @]}',
        '{"volume": ' + encoded % "[12, 10, 4]" + ', "ijk_to_ras": ' + affine + ', "window": "@,400"}',
        '{"volume": ' + encoded % "[12, 10, 4]" + ', "ijk_to_ras": ' + affine + ', "focus_ijk": [0, @, 0]}',
    ]


SEGMENT_TEMPLATES = [
    '{"box": [0, 0, 0, @, 5, 3], "propagate": false}',  # the issue's {"box": [0, 0, 0, 10**30, 10, 4]}
    '{"box": [@, 0, 0, 5, 5, 3], "propagate": false}',
    '{"box_ras": [0, 0, 0, @, 2, 1], "propagate": false}',
    '{"box_ras": [-@, -@, -@, @, @, @], "propagate": false}',
    '{"box": [0, 0, 0, 5, 5, 3], "propagate": false, "points": [{"ras": [@, 0, 0]}]}',  # the issue's 1.7e308
    '{"box": [0, 0, 0, 5, 5, 3], "propagate": false, "points": [{"ijk": [1, @, 1]}]}',
    '{"box": [0, 0, 0, 5, 5, 3], "propagate": false, "label": @}',
]


@pytest.mark.parametrize("template", _upload_templates())
def test_no_number_in_an_upload_reaches_a_500(client, template):
    for number in EXTREMES:
        answer = client.post("/sessions", content=with_number(template, number), headers={"Content-Type": "application/json"})
        assert_answered(answer)


@pytest.mark.parametrize("template", SEGMENT_TEMPLATES)
@pytest.mark.parametrize("path", ["segment", "jobs"])
def test_no_number_in_a_segment_request_reaches_a_500(client, session, template, path):
    for number in EXTREMES:
        answer = client.post(
            f"/sessions/{session}/{path}", content=with_number(template, number), headers={"Content-Type": "application/json"}
        )
        assert_answered(answer)


def test_no_number_in_a_prefetch_reaches_a_500(client, session):
    for number in EXTREMES:
        answer = client.post(
            f"/sessions/{session}/prefetch",
            content=with_number('{"ijk": [0, 0, @]}', number),
            headers={"Content-Type": "application/json"},
        )
        assert_answered(answer)


@pytest.mark.parametrize(
    "body, message",
    [
        ({"box": [0, 0, 0, 10**30, 10, 4]}, "less than or equal to 2147483647"),
        ({"box": [0, 0, 0, 5, 5, 3], "points": [{"ras": [1.7e308, 0, 0]}]}, "less than or equal to 1000000000"),
        ({"box": [0, 0, 0, 5, 5, 3], "points": [{"ras": [1e9, 0, 0]}]}, "outside the image"),
        ({"box_ras": [-1e9, -1e9, -1e9, 1e9, 1e9, 1e9], "propagate": False}, None),  # the whole image: answered
        ({"box_ras": [1e8, 0, 0, 1e9, 1, 1]}, "no voxel centre"),
    ],
)
def test_the_issues_numbers_get_a_clear_answer(client, session, body, message):
    answer = client.post(f"/sessions/{session}/segment", json=body)
    if message is None:
        assert answer.status_code == 200, answer.text
        assert answer.json()["slice_range"] == [1, 1]  # the middle slice of all four
    else:
        assert answer.status_code == 422 and message in answer.json()["detail"], answer.text
