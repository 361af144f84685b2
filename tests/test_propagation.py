"""medsam_monai.propagation: the one 3D propagation (key slice, slice order, per-slice points),
shared by the library, the CLI and the server."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from torch import nn

import medsam_monai
from medsam_monai.orientation import display_layout, from_display, ijk_to_display_index, to_display
from medsam_monai.phantom import ct_phantom
from medsam_monai.predictor import MedSAMPredictor
from medsam_monai.predictor import ObjectPrompt as ReExported
from medsam_monai.propagation import ObjectPrompt, key_slice, propagate, slice_order
from medsam_monai.segment import normalized_volume
from medsam_monai.server import ServerSettings, create_app
from medsam_monai.server.codec import decode_array, encode_array
from medsam_monai.server.testing import fast_tiny_predictor

# ----- key slice and order --------------------------------------------------------------------


def test_key_slice_is_medsams_midpoint_and_the_order_goes_up_then_down():
    assert [key_slice(z0, z1) for z0, z1 in [(5, 11), (2, 3), (0, 0), (4, 9)]] == [8, 2, 0, 6]
    assert [z for z, _ in slice_order(5, 11)] == [8, 9, 10, 11, 7, 6, 5]
    assert slice_order(2, 3) == [(2, None), (3, 2)]


KEY_SLICE_FORMULA = re.compile(r"\(\s*(\w+)\s*-\s*(\w+)\s*\)\s*/\s*2\s*\+\s*\2\b")


def test_the_key_slice_formula_is_written_once_in_the_package():
    package = Path(medsam_monai.__file__).parent
    bundles = package.parent / "bundles"
    found = []
    for path in [*package.rglob("*.py"), *bundles.rglob("*.py"), *bundles.rglob("*.json"), *bundles.rglob("*.yaml")]:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if KEY_SLICE_FORMULA.search(line) and not line.lstrip().startswith(('"""', "#")) and "``" not in line:
                found.append(f"{path.relative_to(package.parent)}:{number}")
    assert len(found) == 1 and found[0].startswith("medsam_monai/propagation.py:"), found


# ----- object prompts -------------------------------------------------------------------------


def test_object_prompts_compare_by_value_and_are_importable_from_the_predictor():
    assert ReExported is ObjectPrompt
    a = ObjectPrompt((0, 0, 0, 5, 5, 2), points={1: (np.array([[2.0, 3.0]]), [0])})
    b = ObjectPrompt((0, 0, 0, 5, 5, 2), points={1: ([[2, 3]], (0,))})
    assert a == b and a.points == {1: (((2.0, 3.0),), (0,))}
    assert ObjectPrompt((0, 0, 0, 5, 5, 2), points={1: ([], [])}).points == {}  # no empty prompts


@pytest.mark.parametrize(
    "points, message",
    [
        ({1: ([[2, 3]], [1, 0])}, "1 points but 2 point labels"),
        ({1: ([2, 3], [1])}, r"\(N, 2\)"),
        ({1: ([[2, np.nan]], [1])}, "non-finite"),
        ({1: ([[2, 3]], [2])}, "point labels are 1"),
    ],
)
def test_malformed_points_are_refused_with_one_line(points, message):
    with pytest.raises(ValueError, match=message):
        ObjectPrompt((0, 0, 0, 5, 5, 2), points=points)


class PointRecordingSam(nn.Module):
    """A STUB network (logic around the network only): the mask is the prompt box; it records the
    slice (its embedding's first voxel), and the points it is given there."""

    image_size = 1024

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.calls: list[tuple[int, list | None]] = []

    def decode(self, embeddings, boxes=None, points=None, mask_inputs=None, multimask_output=False):
        self.calls.append((int(embeddings[0, 0, 0, 0]), None if points is None else points[0][0].tolist()))
        logits = torch.full((1, 1, 256, 256), -10.0)
        x0, y0, x1, y1 = (boxes[0] / 4).tolist()
        logits[0, 0, int(np.ceil(y0)) : int(np.floor(y1)) + 1, int(np.ceil(x0)) : int(np.floor(x1)) + 1] = 10.0
        return logits, torch.ones(1, 1)


class SliceIdPredictor(MedSAMPredictor):
    """The stub's "embedding" of a slice is its index (stored in its first voxel); encoder calls counted."""

    encoder_calls = 0

    def encode(self, slices):
        self.encoder_calls += 1
        out = torch.zeros(len(slices), 1, 64, 64)
        out[:, 0, 0, 0] = torch.as_tensor(slices[:, 0, 0].astype(np.float32))
        return out


def test_points_go_to_their_slice_only_and_slices_with_points_are_encoded_in_batches():
    volume = np.zeros((12, 256, 256), dtype=np.uint8)
    volume[:, 0, 0] = np.arange(12)
    stub = PointRecordingSam()
    predictor = SliceIdPredictor(stub, encode_batch_size=3)
    obj = ObjectPrompt((64, 64, 2, 127, 127, 9), points={3: ([[100, 90]], [0]), 8: ([[70, 80], [71, 81]], [1, 0])})
    propagate(predictor, volume, [obj])
    scale = 1024 / 256
    assert dict(stub.calls) == {
        z: ([[x * scale, y * scale] for x, y in obj.points[z][0]] if z in obj.points else None) for z in range(2, 10)
    }
    assert predictor.encoder_calls == 3  # slices 5, 6, 7 | 8, 9, 4 | 3, 2 in the propagation's order
    with pytest.raises(ValueError, match=r"points on slices \[10\] lie outside the box's slices 2..9"):
        propagate(predictor, volume, [ObjectPrompt(obj.box, points={10: ([[1, 1]], [1])})])


# ----- the server propagates as the library ---------------------------------------------------


def test_server_box_and_points_propagation_equals_the_librarys_voxel_for_voxel():
    """Real tiny network and a phantom: the server's 3D request with points on two slices gives the
    labels that ``propagate`` gives for the same display box and points."""
    phantom = ct_phantom(shape=(40, 32, 8), spacing=(3.0, 3.0, 5.0))
    volume = phantom.volume
    idx = np.argwhere(phantom.labels == 1)
    box = [*idx.min(0).tolist(), *idx.max(0).tolist()]
    centre = [(box[n] + box[n + 3]) // 2 for n in range(3)]
    prompts = [([*centre[:2], box[2] + 1], False), ([centre[0] + 2, centre[1], box[5] - 1], True), ([*centre[:2], box[5]], False)]
    model = fast_tiny_predictor().model
    settings = ServerSettings(prefetch_slices=0)
    with TestClient(create_app(MedSAMPredictor(model), settings)) as client:
        session = client.post("/sessions", json={"volume": encode_array(volume.array), "ijk_to_ras": volume.affine.tolist()})
        session_id = session.json()["session_id"]
        points = [{"ijk": ijk, "positive": positive} for ijk, positive in prompts]
        answer = client.post(f"/sessions/{session_id}/segment", json={"box": box, "points": points})
        assert answer.status_code == 200, answer.text
    result = answer.json()
    server = np.zeros(result["volume_shape"], dtype=np.uint8)
    i, j, k = result["offset"]
    block = decode_array(result["labels"], 1 << 30)
    server[i : i + block.shape[0], j : j + block.shape[1], k : k + block.shape[2]] = block

    layout = display_layout(volume.affine, "axial")
    display = np.ascontiguousarray(to_display(normalized_volume(volume), layout))
    corners = [ijk_to_display_index(box[:3], volume.shape, layout), ijk_to_display_index(box[3:], volume.shape, layout)]
    (s0, r0, c0), (s1, r1, c1) = np.minimum(*corners).tolist(), np.maximum(*corners).tolist()
    by_slice: dict[int, tuple[list, list]] = {}
    for ijk, positive in prompts:
        s, r, c = ijk_to_display_index(ijk, volume.shape, layout)
        by_slice.setdefault(s, ([], []))[0].append([c, r])
        by_slice[s][1].append(int(positive))
    library = propagate(MedSAMPredictor(model), display, [ObjectPrompt((c0, r0, s0, c1, r1, s1), points=by_slice)])
    without_points = propagate(MedSAMPredictor(model), display, [ObjectPrompt((c0, r0, s0, c1, r1, s1))])

    expected = from_display(library, layout)
    assert 0 < np.count_nonzero(expected) < expected.size  # neither empty nor full
    assert not np.array_equal(library, without_points)  # the points change the result, so the comparison means something
    np.testing.assert_array_equal(server, expected)


# ----- key slice, known key mask, mask prompts, multimask -------------------------------------


class MaskPromptRecordingSam(PointRecordingSam):
    """A STUB network (logic around the network only): as PointRecordingSam, but it also records
    whether a dense mask prompt came, and answers three candidates whose IoU picks the second."""

    def __init__(self) -> None:
        super().__init__()
        self.mask_calls: list[tuple[int, bool]] = []

    def decode(self, embeddings, boxes=None, points=None, mask_inputs=None, multimask_output=False):
        logits, _ = super().decode(embeddings, boxes, points, mask_inputs, multimask_output)
        self.mask_calls.append((int(embeddings[0, 0, 0, 0]), mask_inputs is not None))
        if not multimask_output:
            return logits, torch.ones(1, 1)
        empty = torch.full_like(logits, -10.0)
        return torch.cat([empty, logits, empty], dim=1), torch.tensor([[0.2, 0.9, 0.1]])


def test_an_explicit_key_slice_starts_the_propagation_there_and_a_key_mask_is_kept():
    volume = np.zeros((12, 256, 256), dtype=np.uint8)
    volume[:, 0, 0] = np.arange(12)
    stub = PointRecordingSam()
    predictor = SliceIdPredictor(stub, encode_batch_size=1)
    key_mask = np.zeros((256, 256), dtype=bool)
    key_mask[100:120, 30:60] = True
    labels = propagate(predictor, volume, [ObjectPrompt((0, 0, 0, 255, 255, 11), key=3, key_mask=key_mask)], stop_when_empty=True)
    assert [z for z, _ in stub.calls] == [4, 5, 6, 7, 8, 9, 10, 11, 2, 1, 0]  # the key slice is not predicted
    np.testing.assert_array_equal(labels[3], key_mask)
    # its neighbours get the key mask's box (enlarged by 12 px of the 1024 frame = 3 px here)
    rows, cols = np.flatnonzero(labels[4].any(axis=1)), np.flatnonzero(labels[4].any(axis=0))
    assert (rows[0], rows[-1], cols[0], cols[-1]) == (97, 122, 27, 62)
    with pytest.raises(ValueError, match=r"key slice 12 lies outside the box's slices 0..11"):
        propagate(predictor, volume, [ObjectPrompt((0, 0, 0, 255, 255, 11), key=12)])
    with pytest.raises(ValueError, match=r"the key mask is 10x10 but the slices are 256x256"):
        propagate(predictor, volume, [ObjectPrompt((0, 0, 0, 255, 255, 11), key_mask=np.ones((10, 10), bool))])


def test_mask_prompts_go_to_their_slice_and_multimask_keeps_the_best_candidate_with_its_scores():
    volume = np.zeros((6, 256, 256), dtype=np.uint8)
    volume[:, 0, 0] = np.arange(6)
    stub = MaskPromptRecordingSam()
    predictor = SliceIdPredictor(stub, encode_batch_size=1)
    prompt = np.zeros((256, 256), dtype=bool)
    prompt[64:128, 64:128] = True
    obj = ObjectPrompt((64, 64, 1, 127, 127, 4), label=2, mask_prompts={2: prompt, 4: prompt})
    scores: dict = {}
    labels = propagate(predictor, volume, [obj], multimask_output=True, scores=scores)
    assert dict(stub.mask_calls) == {1: False, 2: True, 3: False, 4: True}
    assert set(scores) == {2} and set(scores[2]) == {1, 2, 3, 4}
    np.testing.assert_allclose(scores[2][3], [0.2, 0.9, 0.1])
    assert labels[1:5].any(axis=(1, 2)).all() and not labels[0].any()  # the second candidate (the box) was kept
    with pytest.raises(ValueError, match=r"mask prompts on slices \[5\] lie outside the box's slices 1..4"):
        propagate(predictor, volume, [ObjectPrompt(obj.box, mask_prompts={5: prompt})])


def test_a_mask_prompt_becomes_low_res_logits_in_the_frame_of_each_pipeline():
    from medsam_monai.transforms import mask_prompt_logits

    mask = np.zeros((300, 600), dtype=bool)
    mask[:, :300] = True  # the left half
    medsam = mask_prompt_logits(mask, "medsam")[0]  # stretched: the left half of the 256 frame
    sam = mask_prompt_logits(mask, "sam")[0]  # longest side to 256: 128 rows, then padding
    assert medsam.shape == sam.shape == (256, 256)
    assert (medsam[:, :127] > 9).all() and (medsam[:, 129:] < -9).all()
    assert (sam[:127, :127] > 9).all() and (sam[:128, 129:] < -9).all() and (sam[129:] < -9).all()
