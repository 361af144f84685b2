"""Train the ``tiny`` demo model on synthetic CT phantoms with the bundle's ``train.json``.

    python -m medsam_monai.training.demo_model

1. Writes random CT phantoms (:func:`medsam_monai.phantom.random_ct_phantom`: two to four labelled
   organs each) as NIfTI files in an ``imagesTr``/``labelsTr`` folder with datalists: training and
   validation phantoms from disjoint seeds.
2. Trains the ``tiny`` variant from random weights with ``python -m monai.bundle run --config_file
   bundles/medsam_vit_b/configs/train.json`` and overrides, in stages (:data:`STAGES`), each
   starting from the previous stage's best weights (``--ckpt_path``) with its own warm-up and
   cosine decay of the learning rate (a warm restart): 24 phantoms for three epochs, then 48 new
   phantoms for one epoch, then twice 48 more with boxes up to 60 px loose (the looseness of the
   boxes that 3D propagation gives). The recipe's learning rate of 1e-4 is for fine-tuning a pretrained
   model; from random weights the demo uses 2e-3 and then 1e-3. Eight boxes per slice (the
   slice's structures, repeated with other jitter) reuse each image encoding.
3. Stores the last stage's best-validation weights, in float16, as
   ``medsam_monai/data/medsam_tiny_demo.safetensors`` (:data:`~medsam_monai.TINY_DEMO_CHECKPOINT`).
4. Segments held-out phantoms (other seeds again) in 3D with :func:`medsam_monai.segment.segment_volume`,
   one box per organ from its label, and reports the Dice (and that of ``medsam demo``'s phantom).

Load the result with ``medsam_monai.build_sam("tiny", TINY_DEMO_CHECKPOINT)`` or
``medsam segment ... --variant tiny --checkpoint <path>``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..checkpoints import TINY_DEMO_CHECKPOINT, build_sam
from ..io import write_label_volume, write_volume
from ..phantom import DEMO_PHANTOM_SEED, Phantom, ct_phantom, demo_phantom, label_box, random_ct_phantom
from ..predictor import MedSAMPredictor
from ..segment import VoxelBox, dice, segment_volume
from .engine import latest_checkpoint

TRAIN_CONFIG = Path(__file__).resolve().parents[2] / "bundles" / "medsam_vit_b" / "configs" / "train.json"

# Disjoint seed ranges: training, validation (checkpoint choice) and held-out test phantoms.
TRAIN_SEED0, VAL_SEED0, TEST_SEED0 = 0, 100_000, 200_000
assert DEMO_PHANTOM_SEED >= TEST_SEED0 + 100_000  # `medsam demo`'s phantom is none of them


def write_phantom_dataset(
    folder: Path, train_seeds: Sequence[int], val_seeds: Sequence[int], name: str = "dataset.json", **phantom_options
) -> Path:
    """Phantoms as ``imagesTr/phNNNNNN.nii.gz`` + ``labelsTr/...``, and a datalist ``name`` naming both splits.

    Files already there are kept (a phantom is a function of its seed and options). ``phantom_options``
    go to :func:`random_ct_phantom` (``shape``, ``spacing``: small test volumes).
    """
    datalist: dict[str, list[dict[str, str]]] = {"training": [], "validation": []}
    for split, seeds in (("training", train_seeds), ("validation", val_seeds)):
        for seed in seeds:
            file = f"ph{seed:06d}.nii.gz"
            image, label = folder / "imagesTr" / file, folder / "labelsTr" / file
            if not (image.is_file() and label.is_file()):
                phantom = random_ct_phantom(seed, **phantom_options)
                write_volume(image, phantom.volume.array, phantom.volume.affine)
                write_label_volume(label, phantom.labels, phantom.volume.affine)
            datalist[split].append({"image": f"imagesTr/{file}", "label": f"labelsTr/{file}"})
    path = folder / name
    path.write_text(json.dumps(datalist, indent=1))
    return path


@dataclass(frozen=True)
class Stage:
    """One ``monai.bundle run`` of the demo's training, on training phantoms ``first_seed ..
    first_seed + phantoms - 1``."""

    name: str
    first_seed: int
    phantoms: int
    epochs: int
    learning_rate: float
    warmup_iterations: int
    bbox_shift: int = 20  # MedSAM's outward jitter, px of the 1024 frame

    @property
    def seeds(self) -> range:
        return range(TRAIN_SEED0 + self.first_seed, TRAIN_SEED0 + self.first_seed + self.phantoms)

    @property
    def cache(self) -> str:
        # a stage that sees each slice once gains nothing from a cache but its memory (5 MB a slice)
        return "memory" if self.epochs > 1 else "none"


# Fresh phantoms after the first stage: with 24 phantoms seen for three epochs the validation Dice
# lags the training loss (the model starts to learn the phantoms, not the task), and a new phantom
# costs no more than a cached one when each slice is seen once. The last stages widen the box
# jitter: in 3D the key slice gets the organ's 3D box (the union of its slices, 50-100 px looser
# than the slice's own box in the 1024 frame for a tilted organ) and every other slice the box of
# its neighbour's mask plus a margin, so a model that only saw boxes 0-20 px loose over-segments
# and the excess grows along the propagation.
STAGES = (
    Stage("stage1", 0, 24, 3, 2e-3, 30),
    Stage("stage2", 24, 48, 1, 1e-3, 20),
    Stage("stage3", 72, 48, 1, 1e-3, 20, bbox_shift=60),
    Stage("stage4", 120, 48, 1, 5e-4, 20, bbox_shift=60),
)
# Settings every stage shares (train.json ids).
COMMON_SETTINGS = {
    "variant": "tiny",
    "lr_schedule": "warmup_cosine",
    "batch_size": 2,
    "prompts_per_slice": 8,
    "min_pixels": 4,  # label slivers of 1-3 pixels teach nothing but noise
    "val_interval": 1,
    "num_workers": 0,  # workers would only compete with the training step for the cores
    "seed": 0,
}
VAL_PHANTOMS = 2


def bundle_command(config: Path, stage: Stage, bundle_root: Path, datalist: Path, init: Path | None) -> list[str]:
    """The ``python -m monai.bundle run`` command line of one stage."""
    settings = {
        **COMMON_SETTINGS,
        "bundle_root": str(bundle_root),
        "data_source": str(datalist),
        "ckpt_path": str(init) if init is not None else "$None",  # '$None': random weights
        "learning_rate": stage.learning_rate,
        "lr_warmup_iterations": stage.warmup_iterations,
        "epochs": stage.epochs,
        "cache": stage.cache,
        "bbox_shift": stage.bbox_shift,
    }
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(config)]
    for key, value in settings.items():
        command += [f"--{key}", str(value)]
    return command


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


def best_validation_dice(bundle_root: Path) -> float:
    """The best ``val_mean_dice`` a stage logged (from its last training checkpoint)."""
    last = latest_checkpoint(bundle_root / "models" / "fine_tuned")
    return float(torch.load(last, map_location="cpu", weights_only=True)["best_model"]["best_metric"])


def export_weights(checkpoint: Path, out: Path) -> None:
    """The best checkpoint's weights as a plain safetensors state dict in float16 (1.5 MB; the loader
    casts to the model's dtype). The 3D check in :func:`main` runs on the file as written."""
    from safetensors.torch import save_file

    state = {
        k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in build_sam("tiny", checkpoint).state_dict().items()
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        state, str(out), metadata={"variant": "tiny", "source": "medsam_monai.training.demo_model", "preprocessing": "medsam"}
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m medsam_monai.training.demo_model", description=__doc__.split("\n")[0])
    parser.add_argument("--work-dir", type=Path, default=Path("medsam_tiny_demo_run"), help="phantoms, checkpoints, logs")
    parser.add_argument("--out", type=Path, default=TINY_DEMO_CHECKPOINT, help="where the trained weights go")
    parser.add_argument("--config", type=Path, default=TRAIN_CONFIG, help="the bundle's train.json")
    parser.add_argument("--test-phantoms", type=int, default=4, help="held-out phantoms of the final 3D check")
    return parser.parse_args(argv)


def stage_finished(bundle_root: Path, stage: Stage) -> bool:
    """Whether ``stage`` ran to its last epoch in ``bundle_root`` (a rerun of the script skips it)."""
    last = latest_checkpoint(bundle_root / "models" / "fine_tuned")
    return last is not None and last.name == f"checkpoint_epoch={stage.epochs}.pt"


def train(args: argparse.Namespace) -> Path:
    """Every stage in turn, each from the previous one's best weights; returns the last best checkpoint.

    Stages already finished in ``--work-dir`` are kept, so an interrupted run continues with the
    same command (from the start of the interrupted stage).
    """
    data = args.work_dir / "data"
    val_seeds = range(VAL_SEED0, VAL_SEED0 + VAL_PHANTOMS)
    init = None
    for stage in STAGES:
        started = time.monotonic()
        bundle_root = args.work_dir / stage.name
        if not stage_finished(bundle_root, stage):
            datalist = write_phantom_dataset(data, stage.seeds, val_seeds, name=f"{stage.name}.json")
            subprocess.run(bundle_command(args.config, stage, bundle_root, datalist, init), check=True)
        init = bundle_root / "models" / "fine_tuned" / "model.pt"
        print(
            f"{stage.name}: {time.monotonic() - started:.0f} s, best validation Dice (2D slices, boxes from "
            f"labels) {best_validation_dice(bundle_root):.4f}",
            flush=True,
        )
    return init


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.monotonic()
    export_weights(train(args), args.out)
    trained = time.monotonic()
    print(f"training took {trained - start:.0f} s; weights: {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")
    tests = [random_ct_phantom(TEST_SEED0 + n) for n in range(args.test_phantoms)]
    scores = evaluate_3d(args.out, tests)
    print(
        f"held-out phantoms, 3D propagation: mean Dice {np.mean(scores):.4f} over {len(scores)} organs "
        f"(min {np.min(scores):.4f}); `medsam demo` phantom: mean {np.mean(evaluate_3d(args.out, [demo_phantom()])):.4f}; "
        f"`ct_phantom()` (not of the training distribution: no partial volume, larger organ): "
        f"{evaluate_3d(args.out, [ct_phantom()])[0]:.4f}; {time.monotonic() - trained:.0f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
