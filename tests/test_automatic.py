"""Automatic mask generation (medsam_monai.automatic) against segment-anything's own code.

segment-anything is imported with stand-ins for the four torchvision functions and the one OpenCV
function it needs (medsam_monai.segment_anything_reference); its ``utils/amg.py`` functions and its
``SamAutomaticMaskGenerator`` are the references. The generator is compared twice: on a stub network
(written here, loaded into both: analytic masks around each point, shaped by the image, so that every
filter has work to do; the logic around the network is what it tests) and on the real ``tiny``
network with random weights loaded into both.
"""

from __future__ import annotations

import importlib.util
import threading

import numpy as np
import pytest
import torch
from skimage import data

from medsam_monai.automatic import (
    AutomaticMaskGenerator,
    area_from_rle,
    batched_mask_to_box,
    batched_nms,
    build_all_layer_point_grids,
    build_point_grid,
    coco_rle_to_mask,
    decode_coco_counts,
    encode_coco_counts,
    filter_medical,
    generate_crop_boxes,
    is_box_near_crop_edge,
    mask_to_rle,
    nms,
    records_to_label_map,
    remove_small_regions,
    rle_to_coco,
    rle_to_mask,
    stability_score,
    uncrop_boxes_xyxy,
    uncrop_masks,
    uncrop_points,
)
from medsam_monai.networks import Sam
from medsam_monai.predictor import Cancelled, MedSAMPredictor
from medsam_monai.segment_anything_reference import (
    import_segment_anything,
    opencv_stand_in,
    reference_batched_nms,
    reference_generate,
    segment_anything_sam,
    structured_random_sam,
)

if importlib.util.find_spec("segment_anything") is None:
    pytest.skip("segment-anything (the reference) is not installed", allow_module_level=True)
mask_utils = pytest.importorskip("pycocotools.mask")
import_segment_anything()
from segment_anything.modeling import Sam as SegmentAnythingSam  # noqa: E402
from segment_anything.utils import amg  # noqa: E402


def random_masks(rng: np.random.Generator, n: int, h: int, w: int, density: float = 0.5) -> np.ndarray:
    """(n, h, w) bool blobs and speckle, with a few edge cases (empty, full, first/last pixel set)."""
    masks = rng.random((n, h, w)) < density
    yy, xx = np.mgrid[:h, :w]
    for i in range(n):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(1, max(h, w) / 2)
        blob = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
        masks[i] = blob ^ (masks[i] & (rng.random((h, w)) < 0.1)) if i % 2 else blob
    masks[0] = False
    if n > 1:
        masks[1] = True
    if n > 3:
        masks[2, 0, 0] = True
        masks[3, -1, -1] = True
    return masks


# ----- RLE ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(37, 53), (1, 40), (40, 1), (64, 64)])
def test_rle_equals_segment_anything_and_pycocotools(shape):
    rng = np.random.default_rng(sum(shape))
    masks = random_masks(rng, 12, *shape)
    theirs = amg.mask_to_rle_pytorch(torch.from_numpy(masks))
    for mask, their_rle in zip(masks, theirs):
        rle = mask_to_rle(mask)
        assert rle == their_rle
        assert np.array_equal(rle_to_mask(rle), amg.rle_to_mask(their_rle))
        assert np.array_equal(rle_to_mask(rle), mask)
        assert area_from_rle(rle) == amg.area_from_rle(their_rle) == int(mask.sum())
        coco = rle_to_coco(rle)
        assert coco == amg.coco_encode_rle(their_rle)
        encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert coco["counts"] == encoded["counts"].decode() and coco["size"] == list(encoded["size"])
        assert np.array_equal(mask_utils.decode({"size": coco["size"], "counts": coco["counts"].encode()}), mask)
        assert np.array_equal(coco_rle_to_mask(coco), mask)


def test_coco_counts_round_trip_large_and_negative_differences():
    counts = [0, 1, 70000, 3, 2**31 - 5, 1, 31, 32, 15, 16, 17]
    assert decode_coco_counts(encode_coco_counts(counts)) == counts
    rle = {"size": [1, sum(counts)], "counts": counts}
    assert decode_coco_counts(mask_utils.frPyObjects(rle, 1, sum(counts))["counts"]) == counts


def test_rle_errors_are_one_line():
    with pytest.raises(ValueError, match="add up to"):
        rle_to_mask({"size": [2, 2], "counts": [1, 2]})
    with pytest.raises(ValueError, match="expected a mask"):
        mask_to_rle(np.zeros((2, 2, 2), dtype=bool))


# ----- grids and crops ---------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 7, 32])
def test_point_grid_equals_segment_anything(n):
    assert np.array_equal(build_point_grid(n), amg.build_point_grid(n))
    for layers, scale in [(0, 1), (2, 2), (1, 3)]:
        ours, theirs = build_all_layer_point_grids(n * 4, layers, scale), amg.build_all_layer_point_grids(n * 4, layers, scale)
        assert len(ours) == len(theirs) and all(np.array_equal(a, b) for a, b in zip(ours, theirs))


@pytest.mark.parametrize(("size", "layers", "ratio"), [((480, 640), 1, 512 / 1500), ((100, 37), 3, 0.2), ((1024, 1024), 2, 0.0)])
def test_crop_boxes_equal_segment_anything(size, layers, ratio):
    assert generate_crop_boxes(size, layers, ratio) == amg.generate_crop_boxes(size, layers, ratio)


# ----- filters -----------------------------------------------------------------------------------


def test_stability_boxes_edges_and_uncrop_equal_segment_anything():
    rng = np.random.default_rng(1)
    logits = torch.from_numpy(rng.normal(0, 2, (9, 31, 45)).astype(np.float32))
    logits[0] = -5  # empty at both thresholds: 0 / 0
    for offset in (0.5, 1.0):
        torch.testing.assert_close(
            stability_score(logits, 0.0, offset),
            amg.calculate_stability_score(logits, 0.0, offset),
            equal_nan=True,
            rtol=0,
            atol=0,
        )
    masks = torch.from_numpy(random_masks(rng, 10, 31, 45))
    assert torch.equal(batched_mask_to_box(masks), amg.batched_mask_to_box(masks))
    assert torch.equal(batched_mask_to_box(masks.reshape(2, 5, 31, 45)), amg.batched_mask_to_box(masks.reshape(2, 5, 31, 45)))
    boxes = batched_mask_to_box(masks)
    crop, orig = [10, 5, 55, 36], [0, 0, 80, 60]
    assert torch.equal(is_box_near_crop_edge(boxes, crop, orig), amg.is_box_near_crop_edge(boxes, crop, orig))
    assert torch.equal(uncrop_boxes_xyxy(boxes, crop), amg.uncrop_boxes_xyxy(boxes, crop))
    points = torch.from_numpy(rng.uniform(0, 30, (7, 2)))
    assert torch.equal(uncrop_points(points, crop), amg.uncrop_points(points, crop))
    assert torch.equal(uncrop_masks(masks, crop, 60, 80), amg.uncrop_masks(masks, crop, 60, 80))


@pytest.mark.parametrize("mode", ["holes", "islands"])
@pytest.mark.parametrize("area", [1, 5, 40, 10_000])
def test_remove_small_regions_equals_segment_anything(mode, area):
    """scipy here, OpenCV's stand-in (scikit-image) there; masks inside the image and touching its border."""
    rng = np.random.default_rng(area)
    masks = random_masks(rng, 14, 48, 64, density=0.15)
    masks[5] = False
    masks[5, 10:30, 20:40] = True  # interior with holes and islands
    masks[5, 15:18, 25:27] = False
    masks[5, 40, 50] = masks[5, 2, 2] = True
    with opencv_stand_in():
        for mask in masks:
            ours, changed = remove_small_regions(mask, area, mode)
            theirs, their_changed = amg.remove_small_regions(mask, area, mode)
            assert changed == their_changed and np.array_equal(ours, theirs)


def brute_force_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    """torchvision's CPU kernel, literally: float32 scalars, stable descending order."""
    boxes = boxes.astype(np.float32)
    order = sorted(range(len(scores)), key=lambda i: -scores[i])  # sorted() is stable
    areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in boxes]
    suppressed = [False] * len(order)
    keep = []
    for a, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(i)
        for j in order[a + 1 :]:
            if suppressed[j]:
                continue
            w = max(np.float32(0), min(boxes[i][2], boxes[j][2]) - max(boxes[i][0], boxes[j][0]))
            h = max(np.float32(0), min(boxes[i][3], boxes[j][3]) - max(boxes[i][1], boxes[j][1]))
            inter = w * h
            with np.errstate(invalid="ignore"):
                if float(inter / (areas[i] + areas[j] - inter)) > threshold:
                    suppressed[j] = True
    return keep


def random_boxes(rng: np.random.Generator, n: int, size: int = 60) -> torch.Tensor:
    x0, y0 = rng.integers(0, size, n), rng.integers(0, size, n)
    w, h = rng.integers(0, size // 2, n), rng.integers(0, size // 2, n)
    return torch.from_numpy(np.stack([x0, y0, x0 + w, y0 + h], 1)).float()


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.7, 0.95, 1.0])
def test_nms_equals_torchvision_kernel_with_ties(threshold):
    rng = np.random.default_rng(int(threshold * 100))
    boxes = random_boxes(rng, 300)
    boxes[:5] = 0  # empty masks' boxes: 0 / 0 never suppresses
    scores = torch.from_numpy(rng.integers(0, 6, 300).astype(np.float32))  # many ties
    expected = brute_force_nms(boxes.numpy(), scores.numpy(), threshold)
    assert nms(boxes, scores, threshold).tolist() == expected
    zeros = torch.zeros(300)
    assert batched_nms(boxes, scores, zeros, threshold).tolist() == expected
    assert reference_batched_nms(boxes, scores, zeros, threshold).tolist() == expected


def test_batched_nms_above_1000_boxes_takes_torchvisions_per_category_path():
    """Over 4000 coordinates torchvision re-sorts the kept boxes with an unstable sort: tied scores
    then come out in that sort's order, which must be reproduced, not the stable one."""
    rng = np.random.default_rng(7)
    boxes = random_boxes(rng, 1500, size=400)
    scores = torch.from_numpy(rng.integers(0, 3, 1500).astype(np.float32))
    categories = torch.from_numpy(rng.integers(0, 2, 1500))
    for idxs in (torch.zeros(1500), categories):
        ours = batched_nms(boxes, scores, idxs, 0.5)
        assert ours.tolist() == reference_batched_nms(boxes, scores, idxs, 0.5).tolist()
        kept = set()
        for c in idxs.unique():
            members = torch.where(idxs == c)[0]
            kept |= set(members[nms(boxes[members], scores[members], 0.5)].tolist())
        assert set(ours.tolist()) == kept and len(ours) == len(kept)
    single = batched_nms(boxes, scores, torch.zeros(1500), 0.5)
    stable = nms(boxes, scores, 0.5)
    assert set(single.tolist()) == set(stable.tolist()) and single.tolist() != stable.tolist()


# ----- a stub network, for the logic around it ---------------------------------------------------


class PooledImageEncoder(torch.nn.Module):
    """(B, 3, 1024, 1024) -> (B, 3, 64, 64): the mean of each 16 x 16 patch (no weights)."""

    img_size = 1024

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.avg_pool2d(x, 16)


class CoordinatePromptEncoder(torch.nn.Module):
    """Hands the point coordinates (1024 frame) to the decoder as the 'sparse embeddings'."""

    def forward(self, points, boxes, masks):
        coords, _ = points
        return coords.float(), torch.zeros(coords.shape[0], 1, 64, 64)

    def get_dense_pe(self) -> torch.Tensor:
        return torch.zeros(1, 1, 64, 64)


class DiskMaskDecoder(torch.nn.Module):
    """Three masks per point: disks of three radii around it whose edge follows the image (the
    pooled brightness), and a predicted IoU from the brightness at the point. Everything a real SAM
    gives the generator to filter: masks of all sizes, near and away from crop edges, with holes
    and islands, stability scores and IoU predictions spread over [0, 1]."""

    radii = (60.0, 150.0, 330.0)  # in the 1024 frame
    slopes = (2.0, 3.0, 2.0)  # logit falls by 1 every this many pixels away from the point
    textures = (0.5, 4.0, 1.0)  # weight of the image's brightness in the logits
    iou_gain = (1.5, -1.0, 0.7)
    iou_bias = (1.5, 2.0, 2.5)

    def forward(self, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, multimask_output):
        brightness = image_embeddings.mean(1, keepdim=True)  # (1, 1, 64, 64), about -2..2
        texture = torch.nn.functional.interpolate(brightness, size=(256, 256), mode="bilinear", align_corners=False)[0, 0]
        centres = (torch.arange(256, dtype=torch.float32) + 0.5) * 4
        points = sparse_prompt_embeddings[:, 0, :]  # (B, 2) x, y
        dx = centres[None, None, :] - points[:, 0, None, None]
        dy = centres[None, :, None] - points[:, 1, None, None]
        distance = torch.sqrt(dx**2 + dy**2)[:, None]  # (B, 1, 256, 256)
        radii, slopes, textures = (torch.tensor(v)[None, :, None, None] for v in (self.radii, self.slopes, self.textures))
        logits = (radii - distance) / slopes + textures * torch.sin(2.5 * texture)
        cell = (points / 16).long().clamp(0, 63)
        at_point = brightness[0, 0, cell[:, 1], cell[:, 0]]  # (B,)
        iou = torch.sigmoid(at_point[:, None] * torch.tensor(self.iou_gain) + torch.tensor(self.iou_bias))
        if not multimask_output:
            return logits[:, :1], iou[:, :1]
        return logits, iou


def sam_predictor(model: Sam) -> MedSAMPredictor:
    return MedSAMPredictor(model, device="cpu", preprocessing="sam")


def stub_models() -> tuple[Sam, SegmentAnythingSam]:
    ours = Sam(PooledImageEncoder(), CoordinatePromptEncoder(), DiskMaskDecoder())
    theirs = SegmentAnythingSam(PooledImageEncoder(), CoordinatePromptEncoder(), DiskMaskDecoder())
    return ours.eval(), theirs.eval()


def assert_same_records(ours: list[dict], theirs: list[dict], output_mode: str, atol: float = 0.0) -> None:
    """Same masks in the same order, same boxes, areas, points and crops; scores to ``atol``."""
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert list(a) == list(b)  # the same keys in the same order
        if output_mode == "binary_mask":
            assert a["segmentation"].shape == b["segmentation"].shape and np.array_equal(a["segmentation"], b["segmentation"])
        else:
            assert a["segmentation"] == b["segmentation"]
        assert a["bbox"] == b["bbox"] and all(isinstance(v, int) for v in a["bbox"])
        assert a["area"] == b["area"] and a["crop_box"] == b["crop_box"]
        assert a["point_coords"] == b["point_coords"]
        assert a["predicted_iou"] == pytest.approx(b["predicted_iou"], abs=atol)
        assert a["stability_score"] == pytest.approx(b["stability_score"], abs=atol, nan_ok=True)


@pytest.fixture(scope="module")
def chelsea() -> np.ndarray:
    return data.chelsea()[::2, ::2].copy()  # (150, 226, 3) uint8, a real photograph


STUB_RUNS = {
    "defaults": dict(points_per_side=12),
    "crops_small_regions_coco": dict(
        points_per_side=8,
        crop_n_layers=1,
        crop_n_points_downscale_factor=2,
        min_mask_region_area=40,
        output_mode="coco_rle",
        box_nms_thresh=0.8,
    ),
    "two_layers_rle_grids": dict(
        points_per_side=None,
        point_grids=[build_point_grid(6), build_point_grid(3), build_point_grid(2)],
        crop_n_layers=2,
        crop_overlap_ratio=0.25,
        points_per_batch=5,
        pred_iou_thresh=0.6,
        stability_score_thresh=0.9,
        output_mode="uncompressed_rle",
    ),
}


@pytest.fixture
def filter_counts(monkeypatch):
    """How many masks each of the generator's filters saw and dropped (or changed)."""
    import medsam_monai.automatic.generator as generator

    counts = {name: [0, 0] for name in ("crop_edge", "nms", "small_regions")}
    counts["stability_scores"] = []

    def spy(name, function, dropped):
        def wrapper(*args, **kwargs):
            result = function(*args, **kwargs)
            if name == "stability_scores":
                counts[name] += result.tolist()
            else:
                seen, gone = dropped(args, result)
                counts[name][0] += seen
                counts[name][1] += gone
            return result

        monkeypatch.setattr(generator, function.__name__, wrapper)

    spy("stability_scores", generator.stability_score, None)
    spy("crop_edge", generator.is_box_near_crop_edge, lambda a, r: (len(r), int(r.sum())))
    spy("nms", generator.batched_nms, lambda a, r: (len(a[0]), len(a[0]) - len(r)))
    spy("small_regions", generator.remove_small_regions, lambda a, r: (1, int(r[1])))
    return counts


@pytest.mark.parametrize("run", list(STUB_RUNS))
def test_generator_equals_segment_anything_on_a_stub_network(run, chelsea, filter_counts):
    kwargs = STUB_RUNS[run]
    ours_model, their_model = stub_models()
    ours = AutomaticMaskGenerator(sam_predictor(ours_model), **kwargs).generate(chelsea)
    theirs = reference_generate(their_model, chelsea, **kwargs)
    assert len(ours) >= 10 and len({str(r["bbox"]) for r in ours}) == len(ours)
    # every filter had masks to drop, and kept some
    stability = np.array(filter_counts["stability_scores"])
    assert 0 < (stability < kwargs.get("stability_score_thresh", 0.95)).sum() < len(stability)
    seen, gone = filter_counts["nms"]
    assert 0 < gone < seen
    if "crop_n_layers" in kwargs:
        assert len({str(r["crop_box"]) for r in ours}) > 1
        seen, gone = filter_counts["crop_edge"]
        assert 0 < gone < seen
    if "min_mask_region_area" in kwargs:
        assert 0 < filter_counts["small_regions"][1] < filter_counts["small_regions"][0]
    assert_same_records(ours, theirs, kwargs.get("output_mode", "binary_mask"))


# ----- the real network --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_pair():
    ours = structured_random_sam("tiny")
    return ours, segment_anything_sam("tiny", ours)


def test_generator_equals_segment_anything_on_the_tiny_network(tiny_pair):
    """The same random weights in both (our encoder and decoder against segment-anything's, then the
    generator); NMS off (threshold 1) so that every mask passing the score filters comes out, in
    NMS's order by predicted IoU."""
    ours_model, their_model = tiny_pair
    image = data.astronaut()[::4, ::4].copy()  # (128, 128, 3)
    kwargs = dict(points_per_side=8, pred_iou_thresh=0.2, stability_score_thresh=0.1, box_nms_thresh=1.0)
    ours = AutomaticMaskGenerator(sam_predictor(ours_model), **kwargs).generate(image)
    theirs = reference_generate(their_model, image, **kwargs)
    assert len(ours) >= 10
    assert len({r["area"] for r in ours}) > len(ours) // 2  # masks of many sizes, not copies
    assert_same_records(ours, theirs, "binary_mask", atol=1e-4)


# ----- the generator's own behaviour -------------------------------------------------------------


def test_masks_are_upscaled_after_the_iou_filter_and_a_few_at_a_time(monkeypatch, chelsea):
    import medsam_monai.automatic.generator as generator

    seen = []
    original = generator.mask_logits

    def counting(low_res, *args, **kwargs):
        seen.append(low_res.shape[0])
        return original(low_res, *args, **kwargs)

    monkeypatch.setattr(generator, "mask_logits", counting)
    model, _ = stub_models()
    predictor = sam_predictor(model)
    AutomaticMaskGenerator(predictor, points_per_side=8, pred_iou_thresh=0.8).generate(chelsea)
    embedding = predictor.image_embedding(chelsea)
    points = build_point_grid(8) * np.array([chelsea.shape[1], chelsea.shape[0]])
    _, iou = predictor.decode(embedding, chelsea.shape[:2], points[:, None], np.ones((64, 1)), multimask_output=True)
    assert max(seen) <= generator.UPSCALE_CHUNK
    assert sum(seen) == int((iou > 0.8).sum()) < iou.numel()


def test_progress_cancel_and_grey_images(chelsea):
    model, _ = stub_models()
    predictor = sam_predictor(model)
    calls = []
    gen = AutomaticMaskGenerator(predictor, points_per_side=4, points_per_batch=5, crop_n_layers=1)
    gen.generate(chelsea, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(i, 4 + 4 * 4) for i in range(1, 21)]  # 16 points in 4 batches, 5 crops
    stop = threading.Event()
    stop.set()
    with pytest.raises(Cancelled):
        gen.generate(chelsea, cancel=stop)
    grey = chelsea[..., 1]
    as_rgb = AutomaticMaskGenerator(predictor, points_per_side=6).generate(np.repeat(grey[..., None], 3, axis=-1))
    as_grey = AutomaticMaskGenerator(predictor, points_per_side=6).generate(grey)
    assert len(as_grey) == len(as_rgb) > 0
    assert all(np.array_equal(a["segmentation"], b["segmentation"]) for a, b in zip(as_grey, as_rgb))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(points_per_side=0), "points_per_side must be an integer >= 1"),
        (dict(points_per_side=None), "exactly one of points_per_side and point_grids"),
        (dict(point_grids=[build_point_grid(2)]), "exactly one of points_per_side and point_grids"),
        (dict(points_per_side=None, point_grids=[np.ones((3, 3))]), r"point_grids\[0\] must be a non-empty \(N, 2\)"),
        (dict(points_per_side=None, point_grids=[build_point_grid(2) * 2]), r"in \[0, 1\]"),
        (dict(points_per_side=None, point_grids=[build_point_grid(2)], crop_n_layers=1), "needs 2"),
        (dict(points_per_batch=0), "points_per_batch must be an integer >= 1"),
        (dict(pred_iou_thresh=1.5), r"pred_iou_thresh must be in \[0, 1\]"),
        (dict(stability_score_thresh=float("nan")), "stability_score_thresh must be a finite number"),
        (dict(stability_score_offset=-1), "stability_score_offset must be >= 0"),
        (dict(box_nms_thresh=-0.1), r"box_nms_thresh must be in \[0, 1\]"),
        (dict(crop_n_layers=-1), "crop_n_layers must be an integer >= 0"),
        (dict(crop_overlap_ratio=1.0), r"crop_overlap_ratio must be in \[0, 1\)"),
        (dict(crop_n_points_downscale_factor=0), "crop_n_points_downscale_factor must be an integer >= 1"),
        (dict(points_per_side=2, crop_n_layers=2, crop_n_points_downscale_factor=2), "leaves no point in crop layer 2"),
        (dict(min_mask_region_area=-5), "min_mask_region_area must be >= 0"),
        (dict(output_mode="png"), "unknown output_mode 'png'"),
    ],
)
def test_bad_parameters_are_one_line_errors(kwargs, message):
    model, _ = stub_models()
    with pytest.raises(ValueError, match=message) as info:
        AutomaticMaskGenerator(sam_predictor(model), **kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("image", "message"),
    [(np.zeros((4, 4, 4)), r"\(H, W\) or \(H, W, 3\)"), (np.zeros((0, 4)), "empty"), (np.full((4, 4), 300.0), r"in \[0, 255\]")],
)
def test_bad_images_are_one_line_errors(image, message):
    model, _ = stub_models()
    with pytest.raises(ValueError, match=message):
        AutomaticMaskGenerator(sam_predictor(model), points_per_side=2).generate(image)


# ----- medical filters and the label map ---------------------------------------------------------


def test_label_map_paints_larger_masks_first_for_every_output_mode(chelsea):
    model, _ = stub_models()
    predictor = sam_predictor(model)
    maps = []
    for mode in ("binary_mask", "uncompressed_rle", "coco_rle"):
        records = AutomaticMaskGenerator(predictor, points_per_side=8, output_mode=mode).generate(chelsea)
        label_map = records_to_label_map(records, chelsea.shape[:2])
        maps.append(label_map)
    assert label_map.dtype == np.uint16 and label_map.shape == chelsea.shape[:2]
    assert all(np.array_equal(maps[0], other) for other in maps[1:])
    masks = [coco_rle_to_mask(r["segmentation"]) for r in records]  # the last run's, coco_rle
    expected = np.zeros(chelsea.shape[:2], dtype=np.uint16)
    for i in sorted(range(len(records)), key=lambda i: -records[i]["area"]):
        expected[masks[i]] = i + 1
    assert np.array_equal(label_map, expected)
    smallest = int(np.argmin([r["area"] for r in records]))
    assert np.all(label_map[masks[smallest]] == smallest + 1)  # on top of everything
    assert set(np.unique(label_map)) - {0} <= set(range(1, len(records) + 1))


def test_filter_medical_by_physical_area_and_image_fraction():
    def record(area: int) -> dict:
        mask = np.zeros((10, 20), dtype=bool)
        mask.flat[:area] = True
        return {"segmentation": mask_to_rle(mask), "area": area}

    records = [record(a) for a in (4, 10, 50, 150, 200)]
    pixel = 0.5 * 0.5  # mm^2
    assert [r["area"] for r in filter_medical(records, pixel, min_area_mm2=2.5)] == [10, 50, 150, 200]
    assert [r["area"] for r in filter_medical(records, pixel, max_area_fraction=0.5)] == [4, 10, 50]
    assert [r["area"] for r in filter_medical(records, pixel, 2.5, 0.75)] == [10, 50, 150]
    assert filter_medical(records, pixel) == records
    for bad in (dict(pixel_area_mm2=0), dict(pixel_area_mm2=1, min_area_mm2=-1), dict(pixel_area_mm2=1, max_area_fraction=0)):
        with pytest.raises(ValueError):
            filter_medical(records, **bad)
