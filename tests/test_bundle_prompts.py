"""The bundle's prompts beyond boxes (points, RAS points, mask prompts, multimask) and its image pipeline
(``preprocessing_mode``): the same labels as ``medsam segment`` given the same prompts, and one-line errors."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import monai.bundle
import nibabel as nib
import numpy as np
import pytest
from safetensors.torch import save_file

from medsam_monai.checkpoints import TINY_DEMO_CHECKPOINT, load_state_dict
from medsam_monai.cli import main as medsam_main

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "medsam_vit_b"
CONFIGS = BUNDLE / "configs"
ANATOMICAL = Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"  # 3D MR, 33x41x25, LAS, 2 mm

# Two axial slices (k = 10, 11) keep the tiny model's runs short on a 2-core CPU.
VOXEL_BOX = [5, 5, 10, 25, 30, 11]
POINT = [15, 15, 10]
NEGATIVE_VOXEL = [8, 26, 11]  # given to the bundle in RAS mm, to the CLI too

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.usefixtures("keep_root_logging")]


def ras_of(voxel, affine):
    return [float(v) for v in (np.asarray(affine) @ [*voxel, 1])[:3]]


@pytest.fixture
def data_dir(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    for name in ("anatomical.nii", "no_negative.nii", "points_only.nii"):
        shutil.copy(ANATOMICAL, folder / name)
    return folder


def run_bundle(output_dir, configs=("inference.json",), **overrides):
    """``python -m monai.bundle run`` through its Python API: the tiny demo model, CPU, MR."""
    settings = {"bundle_root": str(BUNDLE), "output_dir": str(output_dir), "variant": "tiny", "device": "cpu", "modality": "mr"}
    settings.update(overrides)
    files = [str(CONFIGS / name) for name in configs]
    monai.bundle.run(config_file=files if len(files) > 1 else files[0], **settings)


def cli(image, out, *options):
    arguments = ["segment", str(image), "--variant", "tiny", "--modality", "mr", "--device", "cpu", "--out", str(out)]
    assert medsam_main([*arguments, *map(str, options)]) == 0


def labels_of(path):
    return np.asarray(nib.load(str(path)).dataobj)


def test_points_mask_prompts_and_multimask_give_medsam_segments_labels_and_ious(data_dir, tmp_path, capsys):
    affine = nib.load(str(ANATOMICAL)).affine
    negative_ras = ras_of(NEGATIVE_VOXEL, affine)
    earlier = np.zeros(nib.load(str(ANATOMICAL)).shape, np.uint8)  # an "earlier result" to refine: label 2
    earlier[10:22, 12:24, 10:12] = 2
    nib.save(nib.Nifti1Image(earlier, affine), str(data_dir / "earlier.nii.gz"))
    datalist = {
        "testing": [
            {
                "image": "anatomical.nii",
                "box": VOXEL_BOX,
                "points": POINT,
                "negative_points_ras": negative_ras,
                "multimask": True,
            },
            {"image": "no_negative.nii", "box": VOXEL_BOX, "points": [POINT]},
            # points alone on two slices, refined by label 2 of a mask prompt (the path relative to the datalist)
            {
                "image": "points_only.nii",
                "points": [[16, 18, 10], [16, 18, 11]],
                "mask_prompt": "earlier.nii.gz",
                "label_value": 2,
            },
        ]
    }
    (data_dir / "datalist.json").write_text(json.dumps(datalist))
    out = tmp_path / "out"
    run_bundle(out, datalist=str(data_dir / "datalist.json"))
    log = capsys.readouterr().out
    assert "Traceback" not in log and "3 of 3 case(s) done" in log

    point = ",".join(map(str, POINT))
    cli(ANATOMICAL, tmp_path / "full.nii.gz", "--box", ",".join(map(str, VOXEL_BOX)), "--point", point,
        "--negative-point-ras=" + ",".join(map(str, negative_ras)), "--multimask")  # fmt: skip
    printed = capsys.readouterr().out
    cli(ANATOMICAL, tmp_path / "refined.nii.gz", "--point", "16,18,10", "--point", "16,18,11",
        "--mask-prompt", data_dir / "earlier.nii.gz", "--label-value", "2")  # fmt: skip
    cli(ANATOMICAL, tmp_path / "unrefined.nii.gz", "--point", "16,18,10", "--point", "16,18,11")

    full, no_negative = labels_of(out / "anatomical_seg.nii.gz"), labels_of(out / "no_negative_seg.nii.gz")
    refined = labels_of(out / "points_only_seg.nii.gz")
    np.testing.assert_array_equal(full, labels_of(tmp_path / "full.nii.gz"))
    np.testing.assert_array_equal(refined, labels_of(tmp_path / "refined.nii.gz"))
    assert full.any() and refined.any()
    assert (full != no_negative).any()  # the negative RAS point did reach the network
    assert (refined != labels_of(tmp_path / "unrefined.nii.gz")).any()  # and so did the mask prompt
    assert not refined[..., [k for k in range(earlier.shape[2]) if k not in (10, 11)]].any()  # points alone: their slices only

    # multimask: the three IoUs of every slice of the multimask case only, its key slice's as the CLI prints them
    with open(out / "multimask_iou.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["case"], r["label"], r["voxel_axis"], r["slice"], r["key"]) for r in rows] == [
        ("anatomical", "1", "k", "10", "1"),
        ("anatomical", "1", "k", "11", "0"),
    ]
    key_ious = [float(rows[0][f"iou_{m}"]) for m in (1, 2, 3)]
    assert int(rows[0]["kept"]) == int(np.argmax(key_ious)) + 1
    cli_line = re.search(r"object 1: IoU (\S+) (\S+) (\S+) \(kept mask (\d)\) on its key slice k = 10", printed)
    assert cli_line is not None, printed
    assert [float(v) for v in cli_line.groups()[:3]] == [round(v, 2) for v in key_ious]
    assert f"case anatomical: object 1: IoU {' '.join(f'{v:.2f}' for v in key_ious)}" in log


def test_bad_prompts_fail_their_case_alone_in_one_line(data_dir, tmp_path, capsys):
    affine = nib.load(str(ANATOMICAL)).affine
    other_grid = np.zeros((33, 41, 24), np.uint8)
    nib.save(nib.Nifti1Image(other_grid, affine), str(data_dir / "cropped.nii.gz"))
    ones = np.zeros(nib.load(str(ANATOMICAL)).shape, np.uint8)
    ones[10:20, 10:20, 10] = 1
    nib.save(nib.Nifti1Image(ones, affine), str(data_dir / "ones.nii.gz"))
    cases = [
        ({"points": [1, 2]}, "'points' must be 3 finite numbers [i, j, k] (voxel indices)"),
        ({"box": VOXEL_BOX, "points": [POINT, [1, 2, 99]]}, "'points' #2: point (1, 2, 99) is outside the image"),
        ({"points_ras": [900, 0, 0]}, "'points_ras': RAS point (900, 0, 0) mm is outside the image"),
        ({"box": VOXEL_BOX, "points": [15, 15, 3]}, "'points' [15, 15, 3] lies on none of the boxes' slices"),
        ({"negative_points": [15, 15, 10]}, "negative points alone select nothing"),
        ({"box": VOXEL_BOX, "multimask": "yes"}, "'multimask' must be true or false, got 'yes'"),
        ({"box": VOXEL_BOX, "label_value": 2}, "'label_value' chooses the label of 'mask_prompt' that an object refines"),
        ({"box": VOXEL_BOX, "mask_prompt": "cropped.nii.gz"}, "shape (33, 41, 24) differs from the image's (33, 41, 25)"),
        ({"box": VOXEL_BOX, "mask_prompt": "ones.nii.gz", "label_value": 3}, "holds no label 3 (it holds 1)"),
        ({"box": VOXEL_BOX, "mask_prompt": "ones.nii.gz", "label_value": [1, 1]}, "2 mask values for 1 objects"),
    ]
    for n in range(1, len(cases) + 1):  # one image per case: each owns its output name
        shutil.copy(ANATOMICAL, data_dir / f"case{n}.nii")
    datalist = {"testing": [{"image": f"case{n}.nii", **prompts} for n, (prompts, _) in enumerate(cases, start=1)]}
    (data_dir / "datalist.json").write_text(json.dumps(datalist))
    with pytest.raises(SystemExit) as exit_info:
        run_bundle(tmp_path / "out", datalist=str(data_dir / "datalist.json"))
    assert str(exit_info.value.code).startswith(f"medsam bundle: {len(cases)} of {len(cases)} cases failed: case1, case2,")
    log = capsys.readouterr().out
    errors = [line for line in log.splitlines() if " ERROR " in line]
    assert len(errors) == len(cases) and "Traceback" not in log
    for n, (line, (_, expected)) in enumerate(zip(errors, cases), start=1):
        assert f"case {n}/{len(cases)} ({data_dir / f'case{n}.nii'}) failed: " in line
        assert expected in line, line
    assert not (tmp_path / "out").exists()  # nothing written: every case failed before its output


# --------------------------------------------------------------------------------------------
# preprocessing_mode
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sam_recorded_checkpoint(tmp_path_factory):
    """The tiny demo weights in a safetensors file that records SAM's pipeline, as our own files do."""
    state = {k: v.float().contiguous() for k, v in load_state_dict(TINY_DEMO_CHECKPOINT).items()}
    path = tmp_path_factory.mktemp("ckpt") / "tiny_sam.safetensors"
    save_file(state, str(path), metadata={"preprocessing": "sam"})
    return path


def test_the_image_pipeline_follows_the_checkpoint_and_the_setting_wins(sam_recorded_checkpoint, tmp_path, capsys):
    image = {"image": str(ANATOMICAL), "box": VOXEL_BOX}
    run_bundle(tmp_path / "follows", ckpt_path=str(sam_recorded_checkpoint), input_dict=image)
    assert "image preprocessing sam (follows the tiny checkpoint)" in capsys.readouterr().out
    run_bundle(tmp_path / "medsam", ckpt_path=str(sam_recorded_checkpoint), input_dict=image, preprocessing_mode="medsam")
    assert "image preprocessing medsam (preprocessing_mode setting)" in capsys.readouterr().out
    run_bundle(tmp_path / "default", input_dict=image)  # the packaged tiny weights: MedSAM's pipeline
    assert "image preprocessing medsam (follows the tiny checkpoint)" in capsys.readouterr().out

    box = ",".join(map(str, VOXEL_BOX))
    cli(ANATOMICAL, tmp_path / "sam.nii.gz", "--box", box, "--checkpoint", sam_recorded_checkpoint, "--preprocessing", "sam")
    follows = labels_of(tmp_path / "follows" / "anatomical_seg.nii.gz")
    medsam = labels_of(tmp_path / "medsam" / "anatomical_seg.nii.gz")
    np.testing.assert_array_equal(follows, labels_of(tmp_path / "sam.nii.gz"))
    np.testing.assert_array_equal(medsam, labels_of(tmp_path / "default" / "anatomical_seg.nii.gz"))  # same weights
    assert follows.any() and (follows != medsam).any()  # the two pipelines differ: the setting reached the predictor


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"preprocessing_mode": "clip"}, "medsam bundle: error: unknown preprocessing 'clip'; choose one of medsam, sam"),
        ({"preprocessing": "sam"}, "give --preprocessing_mode sam"),  # MONAI's `preprocessing` is the transform chain
        ({"multimask": "yes"}, "medsam bundle: error: multimask must be true or false, got 'yes'"),
    ],
)
def test_bad_pipeline_settings_stop_before_any_case_in_one_line(tmp_path, overrides, expected):
    with pytest.raises(SystemExit) as exit_info:
        run_bundle(tmp_path / "out", input_dict={"image": str(ANATOMICAL), "box": VOXEL_BOX}, **overrides)
    message = str(exit_info.value.code)
    assert expected in message and "\n" not in message
    assert not (tmp_path / "out").exists()


def test_a_bare_network_gets_the_inferers_pipeline():
    """MONAI tools hand the inferer the ``network_def`` module: it is wrapped with the run's pipeline."""
    from medsam_monai.bundle import BoxPropagationInferer
    from medsam_monai.checkpoints import build_sam

    sam = build_sam("tiny", TINY_DEMO_CHECKPOINT).eval()
    assert BoxPropagationInferer(preprocessing="sam").predictor_for(sam).preprocessing == "sam"
    assert BoxPropagationInferer().predictor_for(sam).preprocessing == "medsam"
    with pytest.raises(ValueError, match="unknown preprocessing"):
        BoxPropagationInferer(preprocessing="clip")
