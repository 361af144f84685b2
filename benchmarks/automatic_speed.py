"""Automatic mask generation: medsam_monai.automatic against segment-anything's SamAutomaticMaskGenerator.

One process, the same weights in both (ours loaded into segment-anything's ``Sam``, see
``medsam_monai.segment_anything_reference``), the same 1024x1024 image (scikit-image's astronaut,
512x512, upscaled 2x with PIL's bicubic filter), SAM's default parameters (``points_per_side`` 32:
1024 points, 64 a batch) unless told otherwise. The two run one after the other, then the other
way round, ``--repeats`` times, each run from a fresh predictor (no cached embedding); the script
prints each run's seconds, the ratio of the medians ours / reference, whether the records are equal,
the CPU and the machine's load.

Weights: ``structured`` (default) are random weights rescaled so that masks have edges and
predicted IoUs spread over about [0, 1] (``structured_random_sam``), so that the filters keep a
share of the masks as with real weights; ``plain`` are ``randomize_``'s (IoU predictions near 0:
almost nothing passes ``pred_iou_thresh`` 0.88, which favours ours, since it upscales only the
masks that pass). ``--pred-iou-thresh 0`` makes both upscale every mask.

    python benchmarks/automatic_speed.py [--variant vit_b] [--points-per-side 32] [--repeats 2]

Needs segment-anything and pycocotools (``pip install -e .[test]``). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import time

import numpy as np
import torch
from PIL import Image

from medsam_monai.automatic import AutomaticMaskGenerator
from medsam_monai.networks import build_sam_variant
from medsam_monai.predictor import MedSAMPredictor
from medsam_monai.segment_anything_reference import reference_generate, segment_anything_sam, structured_random_sam
from medsam_monai.testing import randomize_


def test_image(size: int) -> np.ndarray:
    from skimage import data

    return np.asarray(Image.fromarray(data.astronaut()).resize((size, size), Image.BICUBIC))


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def same_records(ours: list[dict], theirs: list[dict]) -> dict:
    """How far the two lists of records agree (masks compared pixel for pixel)."""
    pairs = list(zip(ours, theirs))
    same_masks = sum(np.array_equal(a["segmentation"], b["segmentation"]) for a, b in pairs)
    iou_gap = max((abs(a["predicted_iou"] - b["predicted_iou"]) for a, b in pairs), default=0.0)
    stability_gap = max((abs(a["stability_score"] - b["stability_score"]) for a, b in pairs), default=0.0)
    return {
        "records": [len(ours), len(theirs)],
        "identical_masks": same_masks,
        "same_boxes_in_order": all(a["bbox"] == b["bbox"] for a, b in pairs) and len(ours) == len(theirs),
        "max_score_gaps": [iou_gap, stability_gap],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", default="vit_b")
    parser.add_argument("--weights", choices=("structured", "plain"), default="structured")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--points-per-batch", type=int, default=64)
    parser.add_argument("--pred-iou-thresh", type=float, default=0.88)
    parser.add_argument("--stability-score-thresh", type=float, default=0.95)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    torch.manual_seed(0)
    ours_model = (
        structured_random_sam(args.variant) if args.weights == "structured" else randomize_(build_sam_variant(args.variant))
    )
    their_model = segment_anything_sam(args.variant, ours_model)
    image = test_image(args.size)
    kwargs = dict(
        points_per_side=args.points_per_side,
        points_per_batch=args.points_per_batch,
        pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_score_thresh,
    )

    def ours_run() -> list[dict]:
        predictor = MedSAMPredictor(ours_model, device="cpu", preprocessing="sam")  # a fresh embedding cache
        return AutomaticMaskGenerator(predictor, **kwargs).generate(image)

    runs = {"medsam_monai": ours_run, "segment_anything": lambda: reference_generate(their_model, image, **kwargs)}
    times: dict[str, list[float]] = {name: [] for name in runs}
    records = {}
    for repeat in range(args.repeats):
        # ABBA order: a machine whose load drifts during the runs slows both alike
        for name in list(runs) if repeat % 2 == 0 else list(runs)[::-1]:
            start = time.perf_counter()
            records[name] = runs[name]()
            times[name].append(time.perf_counter() - start)
            print(f"{name}: {times[name][-1]:.1f} s", flush=True)
    ours, theirs = records["medsam_monai"], records["segment_anything"]
    ratio = statistics.median(times["medsam_monai"]) / statistics.median(times["segment_anything"])
    report = {
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_average": [round(v, 2) for v in __import__("os").getloadavg()],
        "settings": {"variant": args.variant, "weights": args.weights, "image": [args.size, args.size], **kwargs},
        "seconds": times,
        "ratio_ours_over_reference": round(ratio, 3),
        "agreement": same_records(ours, theirs),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
