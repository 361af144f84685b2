"""How many organs of the demo phantom does SAM's automatic mask generator find with the tiny model?

The phantom is ``medsam demo``'s (:func:`medsam_monai.phantom.demo_phantom`: four organs), the model
the packaged tiny demo model (``--variant tiny``, trained with boxes on other phantoms). For each
organ, its key axial slice (MedSAM's middle slice of the organ's box, as ``medsam demo`` prompts it)
goes through :func:`medsam_monai.automatic.automatic_masks` exactly as ``medsam everything
--slice K`` runs it; an organ is *found* when one of the masks of its slice overlaps the organ's
mask on that slice with IoU > 0.5. The reference in the same run is what the model was trained for:
MedSAM's box prompt (the organ's tight box on that slice, one mask).

Each setting is a list of generator parameters (SAM's names): SAM's defaults (``pred_iou_thresh``
0.88, ``stability_score_thresh`` 0.95), the IoU threshold alone lowered to 0, and both lowered to 0,
which keeps every mask: the tiny model's IoU head was never trained (its predicted IoUs are ~0), so
SAM's thresholds drop everything it finds.

    python benchmarks/everything_phantom.py [--points-per-side 32]

Not part of the test suite.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import time

import numpy as np
import torch

from medsam_monai.automatic import AutomaticMaskGenerator, automatic_masks, display_pixel_spacing, record_mask
from medsam_monai.masks import mask_box
from medsam_monai.models import load_predictor
from medsam_monai.orientation import display_layout, to_display
from medsam_monai.phantom import demo_phantom, label_box
from medsam_monai.segment import VoxelBox, key_slices_ijk, normalized_volume

SETTINGS = {
    "SAM's defaults (0.88 / 0.95)": {},
    "IoU threshold 0, stability 0.95": {"pred_iou_thresh": 0.0},
    "thresholds 0 / 0": {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0},
}


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name:")), "unknown")


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = int((a | b).sum())
    return 0.0 if union == 0 else int((a & b).sum()) / union


def box_prompt_iou(predictor, image: np.ndarray, organ: np.ndarray) -> float:
    """MedSAM's box prompt on the slice: the organ's tight box, one mask; its IoU with the organ."""
    (y0, x0), (y1, x1) = mask_box(organ)
    embedding = predictor.image_embedding(image)
    box = (x0, y0, x1, y1)
    prediction = predictor.predict_from_embedding(embedding, organ.shape, box=box)
    return iou(prediction.masks[0], organ)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--threshold", type=float, default=0.5, help="IoU above which an organ counts as found")
    args = parser.parse_args()

    phantom = demo_phantom()
    predictor = load_predictor("tiny")
    layout = display_layout(phantom.volume.affine, "axial")
    display = np.ascontiguousarray(to_display(normalized_volume(phantom.volume, "ct"), layout))
    labels = to_display(phantom.labels, layout)
    organs = sorted(phantom.organ_names)
    boxes = [VoxelBox(label_box(phantom.labels, value), label=value) for value in organs]
    keys = dict(zip(organs, key_slices_ijk(boxes, phantom.volume, "axial")))
    spacing = display_pixel_spacing(phantom.volume.affine, layout)
    print(
        f"demo phantom {phantom.volume.shape}, axial display {display.shape}, pixel spacing {spacing[0]:.2f} x "
        f"{spacing[1]:.2f} mm; tiny model ({predictor.preprocessing} preprocessing); points_per_side "
        f"{args.points_per_side}; found: IoU > {args.threshold}"
    )
    print(f"CPU: {cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    reference = {v: box_prompt_iou(predictor, display[keys[v]], labels[keys[v]] == v) for v in organs}
    for name, settings in SETTINGS.items():
        generator = AutomaticMaskGenerator(predictor, points_per_side=args.points_per_side, **settings)
        found, lines, seconds = 0, [], 0.0
        for value in organs:
            key, organ = keys[value], labels[keys[value]] == value
            start = time.perf_counter()
            masks = automatic_masks(generator, display[key], spacing)
            seconds += time.perf_counter() - start
            best = max((iou(record_mask(r), organ) for r in masks.records), default=0.0)
            found += best > args.threshold
            lines.append(
                f"  {phantom.organ_names[value]:<9} slice {key:2d}: {len(masks.records):3d} masks, best IoU {best:.3f}"
                f" (box prompt {reference[value]:.3f})"
            )
        print(f"{name}: {found}/{len(organs)} organs found ({found / len(organs):.0%}), {seconds:.1f} s")
        print("\n".join(lines))


if __name__ == "__main__":
    main()
