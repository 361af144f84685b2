"""The shipped tiny demo model: small, loads with the ordinary loader, and segments phantoms it never
saw in 3D through `medsam segment` (one box per organ from its label, slice-by-slice propagation)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from medsam_monai.checkpoints import TINY_DEMO_CHECKPOINT, build_sam, detect_variant, load_state_dict
from medsam_monai.cli import main
from medsam_monai.io import write_volume
from medsam_monai.phantom import label_box, random_ct_phantom
from medsam_monai.training.demo_model import TEST_SEED0, TRAIN_SEED0, VAL_SEED0

# Seeds outside the demo's training, validation and evaluation ranges; fewer slices than the
# training phantoms (same in-plane anatomy) to keep the test short.
HELD_OUT = [TEST_SEED0 + 100_000 + n for n in range(2)]
SHAPE = {"shape": (84, 72, 12), "spacing": (0.9, 0.9, 3.0)}


def test_demo_model_is_small_and_loads_as_tiny():
    assert TINY_DEMO_CHECKPOINT.stat().st_size <= 5 * 2**20
    assert detect_variant(load_state_dict(TINY_DEMO_CHECKPOINT)) == "tiny"
    build_sam("tiny", TINY_DEMO_CHECKPOINT)
    assert all(seed >= TEST_SEED0 + 100_000 for seed in HELD_OUT) and TRAIN_SEED0 < VAL_SEED0 < TEST_SEED0


@pytest.mark.parametrize("seed", HELD_OUT)
def test_demo_model_segments_held_out_phantoms_in_3d(seed, tmp_path):
    phantom = random_ct_phantom(seed, **SHAPE)
    image = write_volume(tmp_path / "ct.nii.gz", phantom.volume.array, phantom.volume.affine)
    organs = sorted(phantom.organ_names)
    boxes = [arg for value in organs for arg in ("--box", ",".join(map(str, label_box(phantom.labels, value))))]
    out = tmp_path / "organs.nii.gz"
    assert (
        main(["segment", str(image), *boxes, "--variant", "tiny", "--checkpoint", str(TINY_DEMO_CHECKPOINT), "--out", str(out)])
        == 0
    )
    found = np.asarray(nib.load(out).dataobj)
    scores = []
    for n, value in enumerate(organs, start=1):  # box n gets label n
        truth, mask = phantom.labels == value, found == n
        scores.append(2 * (truth & mask).sum() / (truth.sum() + mask.sum()))
    assert np.mean(scores) >= 0.85, scores
    assert min(scores) >= 0.7, scores
