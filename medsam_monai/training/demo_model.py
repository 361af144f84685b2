"""Train the ``tiny`` demo model on synthetic CT phantoms with the bundle's ``train.json``.

    python -m medsam_monai.training.demo_model

1. Writes random CT phantoms (:func:`medsam_monai.phantom.random_ct_phantom`: two to four labelled
   organs each) as NIfTI files in an ``imagesTr``/``labelsTr`` folder with a ``dataset.json``
   datalist: training and validation phantoms from disjoint seeds.
2. Trains the ``tiny`` variant from random weights with ``python -m monai.bundle run --config_file
   bundles/medsam_vit_b/configs/train.json`` and overrides (the recipe's learning rate 1e-4 is
   for fine-tuning a pretrained model; from scratch the demo uses a larger one, and several boxes
   per slice so that each costly image encoding teaches the decoder more than one structure).
3. Stores the best-validation weights as ``medsam_monai/data/medsam_tiny_demo.safetensors``.
4. Segments held-out phantoms (other seeds again) in 3D with :func:`medsam_monai.segment.segment_volume`,
   one box per organ from its label, and reports the Dice.

Load the result with ``medsam_monai.build_sam("tiny", DEMO_MODEL_PATH)`` or
``medsam segment ... --variant tiny --checkpoint <path>``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..checkpoints import build_sam
from ..io import write_label_volume, write_volume
from ..phantom import Phantom, ct_phantom, label_box, random_ct_phantom
from ..predictor import MedSAMPredictor
from ..segment import VoxelBox, segment_volume
from .engine import latest_checkpoint

DEMO_MODEL_PATH = Path(__file__).resolve().parents[1] / "data" / "medsam_tiny_demo.safetensors"
TRAIN_CONFIG = Path(__file__).resolve().parents[2] / "bundles" / "medsam_vit_b" / "configs" / "train.json"

# Disjoint seed ranges: training, validation (checkpoint choice) and held-out test phantoms.
TRAIN_SEED0, VAL_SEED0, TEST_SEED0 = 0, 100_000, 200_000


def write_phantom_dataset(folder: Path, train_seeds: Sequence[int], val_seeds: Sequence[int], **phantom_options) -> Path:
    """Phantoms as ``imagesTr/phNNNNNN.nii.gz`` + ``labelsTr/...``, and a ``dataset.json`` naming both splits.

    ``phantom_options`` go to :func:`random_ct_phantom` (``shape``, ``spacing``: small test volumes).
    """
    datalist: dict[str, list[dict[str, str]]] = {"training": [], "validation": []}
    for split, seeds in (("training", train_seeds), ("validation", val_seeds)):
        for seed in seeds:
            phantom = random_ct_phantom(seed, **phantom_options)
            name = f"ph{seed:06d}.nii.gz"
            write_volume(folder / "imagesTr" / name, phantom.volume.array, phantom.volume.affine)
            write_label_volume(folder / "labelsTr" / name, phantom.labels, phantom.volume.affine)
            datalist[split].append({"image": f"imagesTr/{name}", "label": f"labelsTr/{name}"})
    path = folder / "dataset.json"
    path.write_text(json.dumps(datalist, indent=1))
    return path


def bundle_overrides(args: argparse.Namespace, work_dir: Path, datalist: Path) -> list[str]:
    """The ``monai.bundle run`` command line for the demo's training."""
    settings = {
        "bundle_root": str(work_dir),
        "data_source": str(datalist),
        "variant": "tiny",
        "ckpt_path": "$None",  # from random weights
        "learning_rate": args.lr,
        "lr_schedule": "warmup_cosine",
        "lr_warmup_iterations": args.warmup,
        "batch_size": args.batch_size,
        "prompts_per_slice": args.prompts_per_slice,
        "min_pixels": args.min_pixels,
        "epochs": args.epochs,
        "val_interval": args.val_interval,
        "num_workers": 0,  # items come from the memory cache: workers would only compete for the cores
        "cache": "memory",
        "seed": args.seed,
    }
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(args.config)]
    for key, value in settings.items():
        command += [f"--{key}", str(value)]
    return command


def dice(truth: np.ndarray, found: np.ndarray) -> float:
    total = int(truth.sum() + found.sum())
    return 1.0 if total == 0 else 2.0 * float((truth & found).sum()) / total


def evaluate_3d(model_path: Path, phantoms: Sequence[Phantom]) -> list[float]:
    """Per-organ 3D Dice: one box per organ (its label's box), propagated along the axial axis."""
    predictor = MedSAMPredictor(build_sam("tiny", model_path), device="cpu")
    scores = []
    for phantom in phantoms:
        boxes = [VoxelBox(label_box(phantom.labels, v), label=v) for v in phantom.organ_names]
        for box in boxes:  # organs one by one: each Dice is its own box's result, without overlap effects
            found = segment_volume(predictor, phantom.volume, [box], axis="axial", modality="ct")
            scores.append(dice(phantom.labels == box.label, found == box.label))
    return scores


def best_validation_dice(work_dir: Path) -> float:
    """The best ``val_mean_dice`` the run logged (from its last training checkpoint)."""
    last = latest_checkpoint(work_dir / "models" / "fine_tuned")
    state = torch.load(last, map_location="cpu", weights_only=True)["best_model"]
    return float(state["best_metric"])


def export_weights(checkpoint: Path, out: Path) -> None:
    """The best checkpoint's weights as a plain safetensors state dict (what the loader reads fastest)."""
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in build_sam("tiny", checkpoint).state_dict().items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out), metadata={"variant": "tiny", "source": "medsam_monai.training.demo_model"})


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m medsam_monai.training.demo_model", description=__doc__.split("\n")[0])
    parser.add_argument("--work-dir", type=Path, default=Path("medsam_tiny_demo_run"), help="phantoms, checkpoints, logs")
    parser.add_argument("--out", type=Path, default=DEMO_MODEL_PATH, help="where the trained weights go")
    parser.add_argument("--config", type=Path, default=TRAIN_CONFIG, help="the bundle's train.json")
    parser.add_argument("--train-phantoms", type=int, default=12)
    parser.add_argument("--val-phantoms", type=int, default=2)
    parser.add_argument("--test-phantoms", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--val-interval", type=int, default=1)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=20, help="warm-up iterations before the cosine decay")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--prompts-per-slice", type=int, default=4)
    parser.add_argument("--min-pixels", type=int, default=4, help="ignore label slivers smaller than this on a slice")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.monotonic()
    data_dir = args.work_dir / "data"
    datalist = write_phantom_dataset(
        data_dir,
        range(TRAIN_SEED0, TRAIN_SEED0 + args.train_phantoms),
        range(VAL_SEED0, VAL_SEED0 + args.val_phantoms),
    )
    print(f"phantoms written to {data_dir} ({time.monotonic() - start:.0f} s)", flush=True)
    subprocess.run(bundle_overrides(args, args.work_dir, datalist), check=True)
    trained = time.monotonic()
    best = args.work_dir / "models" / "fine_tuned" / "model.pt"
    export_weights(best, args.out)
    print(f"training took {trained - start:.0f} s; best validation Dice (2D slices, boxes from labels) "
          f"{best_validation_dice(args.work_dir):.4f}")
    print(f"weights: {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")
    tests = [random_ct_phantom(TEST_SEED0 + n) for n in range(args.test_phantoms)]
    scores = evaluate_3d(args.out, tests)
    print(f"held-out phantoms, 3D propagation: mean Dice {np.mean(scores):.4f} over {len(scores)} organs "
          f"(min {np.min(scores):.4f}); `medsam demo` phantom: {evaluate_3d(args.out, [ct_phantom()])[0]:.4f}; "
          f"total {time.monotonic() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
