"""The main job's speed: ``segment_volume`` against MedSAM's own per-slice 3D loop.

The reference is the algorithm of reference section 4 written the way MedSAM's scripts run it:
one slice at a time, scikit-image ``resize(order=3, preserve_range=True, anti_aliasing=True)``,
transformers' ``SamModel`` (same random weights as ours), sigmoid + one bilinear resize + > 0.5,
the next box from the previous mask enlarged by 12 px in the 1024 frame. Ours is
``medsam_monai.segment.segment_volume`` on the same normalised volume: batched and threaded slice
preparation, our encoder, the embedding cache. Both get the same box on a synthetic CT phantom
(in RAS order, so the display frame is a transpose and flips of the array).

Reported: wall time of each (median of ``--repeats`` after a warm-up, runs alternating), the ratio,
and whether the two 3D masks agree voxel for voxel (fp32) or their Dice (bf16).

    python benchmarks/segment_speed.py --variant vit_b --slices 8 --repeats 1

Needs transformers (``pip install -e .[test]``). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from skimage.transform import resize

from medsam_monai import MedSAMPredictor, autocast
from medsam_monai.checkpoints import build_sam, to_original_keys
from medsam_monai.orientation import display_layout, parse_axis, to_display
from medsam_monai.phantom import ct_phantom
from medsam_monai.segment import VoxelBox, normalized_volume, segment_volume
from medsam_monai.testing import hf_config_for, randomize_

ENLARGE_PX_1024 = 12


def reference_slice(model, grey: np.ndarray, box_xyxy: np.ndarray) -> np.ndarray:
    """MedSAM_Inference.py on one uint8 slice: the boolean mask."""
    h, w = grey.shape
    rgb = np.repeat(grey[:, :, None], 3, axis=-1)
    big = resize(rgb, (1024, 1024), order=3, preserve_range=True, anti_aliasing=True).astype(np.float64)
    big = (big - big.min()) / np.clip(big.max() - big.min(), 1e-8, None)
    image = torch.tensor(big, dtype=torch.float32).permute(2, 0, 1)[None]
    box = torch.tensor(box_xyxy / np.array([w, h, w, h]) * 1024, dtype=torch.float32)[None, None]
    embedding = model.get_image_embeddings(image)
    out = model(image_embeddings=embedding, input_boxes=box, multimask_output=False)
    logits = out.pred_masks[:, 0].float()  # (1, 1, 256, 256)
    mask = F.interpolate(torch.sigmoid(logits), size=(h, w), mode="bilinear", align_corners=False)
    return (mask[0, 0] > 0.5).numpy()


def reference_3d(model, display: np.ndarray, box: tuple[int, ...]) -> np.ndarray:
    """LiteMedSAM's propagation: key slice with the user box, then outward, 12 px at 1024."""
    x0, y0, z0, x1, y1, z1 = box
    user = np.array([x0, y0, x1, y1], dtype=np.float64)
    labels = np.zeros(display.shape, dtype=np.uint8)
    key = int((z1 - z0) / 2 + z0)
    labels[key] = reference_slice(model, display[key], user)
    h, w = display.shape[1:]
    for order in (range(key + 1, z1 + 1), range(key - 1, z0 - 1, -1)):
        previous = labels[key]
        for z in order:
            if previous.any():
                rows, cols = np.flatnonzero(previous.any(1)), np.flatnonzero(previous.any(0))
                pad_x, pad_y = ENLARGE_PX_1024 * w / 1024, ENLARGE_PX_1024 * h / 1024
                box_z = np.array(
                    [max(cols[0] - pad_x, 0), max(rows[0] - pad_y, 0), min(cols[-1] + pad_x, w - 1), min(rows[-1] + pad_y, h - 1)]
                )
            else:
                box_z = user
            labels[z] = reference_slice(model, display[z], box_z)
            previous = labels[z]
    return labels


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def run(args: argparse.Namespace) -> None:
    from transformers import SamModel

    torch.manual_seed(0)
    reference = randomize_(SamModel(hf_config_for(args.variant)), seed=0).eval()
    ours = build_sam(args.variant)
    ours.load_state_dict(to_original_keys(reference.state_dict()), strict=True)
    phantom = ct_phantom(shape=(args.size, args.size, args.slices + 4), spacing=(0.8, 0.8, 2.5))
    i0, j0, k0, i1, j1, k1 = phantom.organ_box
    box = VoxelBox((i0, j0, 2, i1, j1, 2 + args.slices - 1))
    volume = phantom.volume
    intensities = normalized_volume(volume, "ct")
    layout = display_layout(volume.affine, parse_axis("axial"))
    display = np.ascontiguousarray(to_display(intensities, layout))
    display_labels = lambda labels: to_display(labels, layout)  # noqa: E731

    from medsam_monai.orientation import box_ijk_to_display

    s0, r0, c0, s1, r1, c1 = box_ijk_to_display(box.box, volume.shape, layout)
    display_box = (c0, r0, s0, c1, r1, s1)

    for precision in args.precisions:
        times: dict[str, list[float]] = {"medsam_monai": [], "reference": []}
        results = {}
        for repeat in range(args.repeats + 1):
            # A new predictor per run: its embedding cache would otherwise make repeats free.
            predictor = MedSAMPredictor(ours, precision=precision)
            start = time.perf_counter()
            results["medsam_monai"] = display_labels(segment_volume(predictor, volume, [box], intensities=intensities))
            ours_s = time.perf_counter() - start
            start = time.perf_counter()
            with torch.inference_mode(), autocast("cpu", precision):
                results["reference"] = reference_3d(reference, display, display_box)
            ref_s = time.perf_counter() - start
            if repeat > 0 or args.repeats == 0:
                times["medsam_monai"].append(ours_s)
                times["reference"].append(ref_s)
        ours_s, ref_s = statistics.median(times["medsam_monai"]), statistics.median(times["reference"])
        print(
            json.dumps(
                {
                    "precision": precision,
                    "slices": args.slices,
                    "slice_size": args.size,
                    "medsam_monai_s": round(ours_s, 2),
                    "reference_s": round(ref_s, 2),
                    "speedup": round(ref_s / ours_s, 2),
                    "per_slice_ours_s": round(ours_s / args.slices, 3),
                    "masks_identical": bool(np.array_equal(results["medsam_monai"], results["reference"])),
                    "dice_ours_vs_reference": round(dice(results["medsam_monai"], results["reference"]), 4),
                    "foreground_voxels": int((results["reference"] > 0).sum()),
                }
            ),
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="vit_b")
    parser.add_argument("--slices", type=int, default=8, help="slices in the box along the axial axis")
    parser.add_argument("--size", type=int, default=256, help="in-plane size of the phantom's slices")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--precisions", default="fp32,bf16")
    args = parser.parse_args()
    args.precisions = [p for p in args.precisions.split(",") if p]
    print(
        json.dumps(
            {
                "machine": platform.processor() or platform.machine(),
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "variant": args.variant,
            }
        ),
        flush=True,
    )
    run(args)


if __name__ == "__main__":
    main()
