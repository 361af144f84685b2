"""MedSAMPredictor: 3D propagation step by step (stub network), cache bound, 2D prompts (tiny model)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from torch import nn

from medsam_monai.embedding_cache import EmbeddingCache
from medsam_monai.networks import build_sam_variant
from medsam_monai.predictor import Cancelled, MedSAMPredictor, ObjectPrompt


class BoxEchoSam(nn.Module):
    """A STUB network, for testing the logic around the network only: its mask is the prompt box
    itself (logits +10 inside, -10 outside, at 256x256), except on slices listed in ``empty``, which
    get an empty mask. It records the box it is given on each slice."""

    image_size = 1024

    def __init__(self, empty=()) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.empty = set(empty)
        self.boxes: list[tuple[int, list[float]]] = []

    def decode(self, embeddings, boxes=None, points=None, mask_inputs=None, multimask_output=False):
        z = int(embeddings[0, 0, 0, 0])
        self.boxes.append((z, boxes[0].tolist()))
        logits = torch.full((1, 1, 256, 256), -10.0)
        if z not in self.empty:
            x0, y0, x1, y1 = (boxes[0] / 4).tolist()
            logits[0, 0, int(np.ceil(y0)) : int(np.floor(y1)) + 1, int(np.ceil(x0)) : int(np.floor(x1)) + 1] = 10.0
        return logits, torch.ones(1, 1)


class SliceIdPredictor(MedSAMPredictor):
    """The stub's "embedding" of a slice is the slice's index, stored in its first voxel."""

    def __init__(self, model, **kwargs):
        super().__init__(model, **kwargs)
        self.encoded: list[int] = []

    def encode(self, slices):
        out = torch.zeros(len(slices), 1, 64, 64)
        for n, s in enumerate(slices):
            out[n, 0, 0, 0] = float(s[0, 0])
            self.encoded.append(int(s[0, 0]))
        return out


def indexed_volume(slices=20, size=256):
    volume = np.zeros((slices, size, size), dtype=np.uint8)
    volume[:, 0, 0] = np.arange(slices)
    return volume


def box_1024(box, size=256):
    return [v * 1024 / size for v in box]


def test_propagation_follows_medsam_step_by_step():
    stub = BoxEchoSam()
    predictor = SliceIdPredictor(stub)
    user = (64, 80, 5, 127, 159, 11)  # x0, y0, z0, x1, y1, z1 on a 256x256 slice
    labels = predictor.segment_3d(indexed_volume(), [ObjectPrompt(user, label=3)])

    slices = [z for z, _ in stub.boxes]
    assert slices == [8, 9, 10, 11, 7, 6, 5]  # key slice int((11 - 5) / 2 + 5), up, then down
    assert stub.boxes[0][1] == pytest.approx(box_1024([64, 80, 127, 159]))  # the user's box, scaled
    # Each next box is the previous mask's tight box (here the previous box, rounded inward to
    # whole 256-grid cells and upsampled) enlarged by 12 px of the 1024 frame, clipped to the image.
    previous = {9: 8, 10: 9, 11: 10, 7: 8, 6: 7, 5: 6}
    for z, box in stub.boxes[1:]:
        z_prev = previous[z]
        mask = labels[z_prev] == 3
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        expected = np.array(box_1024([cols[0], rows[0], cols[-1], rows[-1]])) + [-12, -12, 12, 12]
        assert box == pytest.approx(np.clip(expected, 0, 1023).tolist()), z
    assert set(np.flatnonzero(labels.any(axis=(1, 2)))) == set(range(5, 12))  # never outside z0..z1
    assert set(np.unique(labels)) == {0, 3}
    assert sorted(predictor.encoded) == list(range(5, 12))  # every slice encoded once


def test_empty_mask_falls_back_to_the_user_box_without_stopping():
    stub = BoxEchoSam(empty={9})
    predictor = SliceIdPredictor(stub)
    user = (64, 80, 5, 127, 159, 11)
    labels = predictor.segment_3d(indexed_volume(), [ObjectPrompt(user)])
    boxes = dict(stub.boxes)
    assert not labels[9].any()
    assert boxes[10] == pytest.approx(box_1024([64, 80, 127, 159]))  # after the empty slice 9
    assert labels[10].any() and labels[11].any()  # no early stop by default

    stub = BoxEchoSam(empty={9})
    predictor = SliceIdPredictor(stub)
    labels = predictor.segment_3d(indexed_volume(), [ObjectPrompt(user)], stop_when_empty=True)
    assert not labels[10].any() and not labels[11].any()
    assert labels[5].any()  # the other direction goes on


def test_boxes_grow_until_clipped_at_the_image_border():
    stub = BoxEchoSam()
    predictor = SliceIdPredictor(stub)
    predictor.segment_3d(indexed_volume(slices=40), [ObjectPrompt((0, 0, 0, 250, 250, 39))])
    last = stub.boxes[-1][1]
    assert last == pytest.approx([0, 0, 1023, 1023])


def test_several_objects_one_call_each_with_its_label_and_shared_encodings():
    stub = BoxEchoSam()
    predictor = SliceIdPredictor(stub)
    objects = [ObjectPrompt((10, 10, 2, 60, 60, 6), label=1), ObjectPrompt((100, 100, 4, 200, 220, 9), label=7)]
    calls = []
    labels = predictor.segment_3d(indexed_volume(), objects, progress=lambda done, total: calls.append((done, total)))
    assert set(np.unique(labels[3])) == {0, 1} and set(np.unique(labels[8])) == {0, 7}
    assert set(np.unique(labels[5])) == {0, 1, 7}
    assert calls == [(n, 11) for n in range(1, 12)]
    assert sorted(predictor.encoded) == list(range(2, 10))  # slices 4..6 of the second object were cached


class CentreConfidentSam(BoxEchoSam):
    """A STUB network (logic around the network only): its mask is the prompt box, most probable at
    the box centre and less so towards its sides (logits 6 at the centre falling to 1 at the edge)."""

    def decode(self, embeddings, boxes=None, points=None, mask_inputs=None, multimask_output=False):
        x0, y0, x1, y1 = (boxes[0] / 4).tolist()
        ys, xs = torch.meshgrid(torch.arange(256.0), torch.arange(256.0), indexing="ij")
        off_centre = torch.maximum((xs - (x0 + x1) / 2).abs() / ((x1 - x0) / 2), (ys - (y0 + y1) / 2).abs() / ((y1 - y0) / 2))
        logits = torch.where(off_centre <= 1, 1 + 5 * (1 - off_centre), torch.tensor(-10.0))
        return logits[None, None], torch.ones(1, 1)


def test_overlapping_objects_go_to_the_more_probable_mask_in_any_order():
    left = ObjectPrompt((10, 40, 2, 120, 150, 4), label=1)
    right = ObjectPrompt((80, 42, 2, 191, 149, 4), label=2)  # overlaps left on columns 80..120; no exact tie
    results = [
        SliceIdPredictor(CentreConfidentSam()).segment_3d(indexed_volume(), objects) for objects in ([left, right], [right, left])
    ]
    # equal in either order, away from the boxes' corners (where both masks sit at probability sigmoid(1): a tie)
    assert np.array_equal(results[0][:, 50:140], results[1][:, 50:140])
    row = results[0][3, 95]
    assert row[10:80].tolist() == [1] * 70 and row[121:192].tolist() == [2] * 71
    # in the overlap, each column goes to the box whose centre (65 or 135.5) is nearer
    assert row[80:101].tolist() == [1] * 21 and row[101:121].tolist() == [2] * 20


def test_cancel_stops_between_slices():
    predictor = SliceIdPredictor(BoxEchoSam())
    event = threading.Event()

    def progress(done, total):
        if done == 3:
            event.set()

    with pytest.raises(Cancelled):
        predictor.segment_3d(indexed_volume(), [ObjectPrompt((10, 10, 0, 60, 60, 19))], progress=progress, cancel=event)
    assert len(predictor.model.boxes) == 3


@pytest.mark.parametrize(
    "box, message",
    [
        ((10, 10, 5, 5, 60, 8), "reversed"),
        ((10, 10, 5, 60, 60, 25), "outside the volume"),
        ((-1, 10, 5, 60, 60, 8), "outside the volume"),
        ((10, 10, 5, 60, float("nan"), 8), "non-finite"),
        ((10, 10, 5.5, 60, 60, 8), "whole slice"),
        ((10, 10, 5, 60, 60), "6 numbers"),
    ],
)
def test_bad_boxes_are_clear_errors(box, message):
    predictor = SliceIdPredictor(BoxEchoSam())
    with pytest.raises(ValueError, match=message):
        predictor.segment_3d(indexed_volume(), [ObjectPrompt(box)])


def test_embedding_cache_is_bounded_in_bytes_and_lru():
    cache = EmbeddingCache(max_bytes=3 * 400)
    tensors = {k: torch.zeros(100) for k in "abcd"}  # 400 bytes each
    for key in "abc":
        cache.put(key, tensors[key])
    assert cache.get("a") is tensors["a"]  # a is now the most recently used
    cache.put("d", tensors["d"])
    assert "b" not in cache and all(k in cache for k in "acd")
    assert cache.nbytes == 1200
    cache.put("huge", torch.zeros(1000))
    assert "huge" not in cache and cache.nbytes <= 1200


def test_predictor_cache_keys_by_volume_and_respects_its_budget():
    predictor = SliceIdPredictor(BoxEchoSam(), cache_bytes=4 * 64 * 64 * 3)  # room for 3 slices
    volume = indexed_volume()
    predictor.slice_embeddings(volume, [1, 2, 3], volume_key="a")
    predictor.slice_embeddings(volume, [1, 2, 3], volume_key="a")
    assert predictor.encoded == [1, 2, 3]
    predictor.slice_embeddings(volume, [1], volume_key="b")  # another volume: not a hit
    assert predictor.encoded == [1, 2, 3, 1]
    assert predictor.cache.nbytes <= predictor.cache.max_bytes and len(predictor.cache) == 3


@pytest.fixture(scope="module")
def tiny_predictor():
    torch.manual_seed(0)
    return MedSAMPredictor(build_sam_variant("tiny"))


def test_real_network_prompts_and_multimask(tiny_predictor):
    rng = np.random.default_rng(0)
    volume = rng.integers(0, 255, size=(3, 96, 80), dtype=np.uint8)
    single = tiny_predictor.predict_slice(volume, 1, box=(10, 20, 50, 70))
    assert single.masks.shape == (1, 96, 80) and single.masks.dtype == bool and single.iou.shape == (1,)
    multi = tiny_predictor.predict_slice(volume, 1, box=(10, 20, 50, 70), multimask_output=True)
    assert multi.masks.shape == (3, 96, 80) and multi.iou.shape == (3,)
    refined = tiny_predictor.predict_slice(
        volume,
        1,
        box=(10, 20, 50, 70),
        points=[(30, 40), (12, 22)],
        point_labels=[1, 0],
        mask_input=single.low_res_logits,
    )
    assert refined.masks.shape == (1, 96, 80)
    assert not np.allclose(refined.low_res_logits.numpy(), single.low_res_logits.numpy())
    assert tiny_predictor.cache.hits >= 2  # slice 1 was encoded once
    with pytest.raises(ValueError, match="give a box, points or a mask"):
        tiny_predictor.predict_slice(volume, 1)
    with pytest.raises(ValueError, match="outside the volume"):
        tiny_predictor.predict_slice(volume, 3, box=(10, 20, 50, 70))
