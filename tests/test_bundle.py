"""The MONAI bundle bundles/medsam_vit_b: inference (--input_dict, datalist), evaluation, metadata, weights."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import monai.bundle
import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from monai.data import MetaTensor

from medsam_monai.bundle import resolve_checkpoint, surface_scores
from medsam_monai.checkpoints import TINY_DEMO_CHECKPOINT
from medsam_monai.cli import main as medsam_main
from medsam_monai.devices import describe_device, resolve_device
from medsam_monai.download import KNOWN_WEIGHTS
from medsam_monai.io import Volume
from medsam_monai.networks import build_sam_variant
from medsam_monai.transforms import (
    BoxesFromLabel,
    BoxesFromLabeld,
    boxes_from_prompts,
    case_name,
)

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "medsam_vit_b"
CONFIGS = BUNDLE / "configs"
SCHEMA = Path("/work/shared/schema/meta_schema_20240725.json")
ANATOMICAL = Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"  # 3D MR, 33x41x25, LAS, 2 mm

# Two axial slices (k = 10, 11) keep the tiny model's runs short on a 2-core CPU.
VOXEL_BOX = [5, 5, 10, 25, 30, 11]

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.usefixtures("keep_root_logging")]


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save(build_sam_variant("tiny").state_dict(), path)
    return path


@pytest.fixture
def data_dir(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    shutil.copy(ANATOMICAL, folder / "anatomical.nii")
    return folder


def run_bundle_command(*arguments, config="inference.json", timeout=300):
    """``python -m monai.bundle run`` in a subprocess, as a user types it (from the bundle's folder)."""
    pytest.importorskip("fire")  # what `python -m monai.bundle` parses its arguments with
    command = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str(CONFIGS / config),
        "--bundle_root",
        str(BUNDLE),
        *map(str, arguments),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=BUNDLE, check=False)


def run_bundle(configs, tiny_ckpt, output_dir, **overrides):
    """``python -m monai.bundle run`` through its Python API, on the tiny model and CPU (``tiny_ckpt`` None: the default)."""
    settings = {"bundle_root": str(BUNDLE), "output_dir": str(output_dir), "variant": "tiny", "device": "cpu", "modality": "mr"}
    if tiny_ckpt is not None:
        settings["ckpt_path"] = str(tiny_ckpt)
    settings.update(overrides)
    files = [str(CONFIGS / name) for name in configs]
    monai.bundle.run(config_file=files if len(files) > 1 else files[0], **settings)


def labels_of(path):
    image = nib.load(str(path))
    return np.asarray(image.dataobj), image.affine, image.get_data_dtype()


def ras_box_of(voxel_box, affine):
    """The RAS mm box through the centres of a voxel box's corner voxels."""
    corners = np.array([voxel_box[:3], voxel_box[3:]], dtype=float)
    ras = corners @ affine[:3, :3].T + affine[:3, 3]
    return [float(v) for v in (*ras.min(axis=0), *ras.max(axis=0))]


# --------------------------------------------------------------------------------------------
# Inference
# --------------------------------------------------------------------------------------------


def test_input_dict_run_equals_medsam_segment_voxel_for_voxel(tiny_ckpt, data_dir, tmp_path):
    image = data_dir / "anatomical.nii"
    ras_box = ras_box_of([12, 8, 10, 28, 34, 11], nib.load(str(image)).affine)
    # variant "auto" reads the variant from the checkpoint; medsam segment is told "tiny"
    run_bundle(
        ["inference.json"],
        tiny_ckpt,
        tmp_path / "out",
        variant="auto",
        input_dict={"image": str(image), "box": VOXEL_BOX, "box_ras": ras_box},
    )
    cli_out = tmp_path / "cli.nii.gz"
    assert (
        medsam_main(
            [
                "segment",
                str(image),
                "--box",
                ",".join(map(str, VOXEL_BOX)),
                "--box-ras=" + ",".join(map(str, ras_box)),
                "--variant",
                "tiny",
                "--checkpoint",
                str(tiny_ckpt),
                "--modality",
                "mr",
                "--out",
                str(cli_out),
            ]
        )
        == 0
    )

    bundle_labels, bundle_affine, bundle_dtype = labels_of(tmp_path / "out" / "anatomical_seg.nii.gz")
    cli_labels, cli_affine, cli_dtype = labels_of(cli_out)
    assert np.unique(bundle_labels).tolist() == [0, 1, 2]  # both boxes found something: not two empty volumes
    np.testing.assert_array_equal(bundle_labels, cli_labels)
    assert bundle_dtype == cli_dtype
    np.testing.assert_array_equal(bundle_affine, nib.load(str(image)).affine)
    np.testing.assert_array_equal(bundle_affine, cli_affine)
    # both keep the input's NIfTI qform/sform codes (anatomical.nii: aligned, 2 and 2)
    source = nib.load(str(image)).header
    codes = (int(source["qform_code"]), int(source["sform_code"]))
    assert codes != (1, 1)
    for written in (tmp_path / "out" / "anatomical_seg.nii.gz", cli_out):
        header = nib.load(str(written)).header
        assert (int(header["qform_code"]), int(header["sform_code"])) == codes


def test_datalist_bad_cases_fail_alone_with_one_line_naming_them(tiny_ckpt, data_dir, tmp_path, capsys):
    for name in ("copy.nii", "third.nii"):
        shutil.copy(data_dir / "anatomical.nii", data_dir / name)
    one_slice = VOXEL_BOX[:5] + [10]
    datalist = {
        "testing": [
            {"image": "anatomical.nii", "box": one_slice},
            {"image": "missing.nii.gz", "box": VOXEL_BOX},
            {"box": VOXEL_BOX},
            {"image": "third.nii", "box": [0, 0, 0, 33, 5, 5]},
            # same image content and box as case 1, under another name and with its own label value
            {"image": "copy.nii", "boxes": [{"box": one_slice, "label": 3, "name": "spot"}]},
            {"image": "anatomical.nii", "box": one_slice},
        ]
    }
    (data_dir / "datalist.json").write_text(json.dumps(datalist))
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        run_bundle(["inference.json"], tiny_ckpt, out, datalist=str(data_dir / "datalist.json"))
    # one summary line naming the failed cases (the number where a name is not unique), exit status 1
    assert exit_info.value.code == "medsam bundle: 4 of 6 cases failed: missing, case 3, third, anatomical (case 6)"

    assert sorted(p.name for p in out.iterdir()) == ["anatomical_seg.nii.gz", "copy_seg.nii.gz"]
    first, _, _ = labels_of(out / "anatomical_seg.nii.gz")
    relabelled, _, _ = labels_of(out / "copy_seg.nii.gz")
    assert (first > 0).any()
    np.testing.assert_array_equal(relabelled, np.where(first > 0, 3, 0))

    log = capsys.readouterr().out
    errors = [line for line in log.splitlines() if " ERROR " in line]
    assert len(errors) == 4
    assert f"case 2/6 ({data_dir / 'missing.nii.gz'}) failed: " in errors[0] and "no such file" in errors[0]
    assert "case 3/6 failed: no 'image' given" in errors[1]
    assert f"case 4/6 ({data_dir / 'third.nii'}) failed: box (0, 0, 0, 33, 5, 5) is outside the image" in errors[2]
    assert "case 6/6" in errors[3] and "output name 'anatomical' is already used by case 1" in errors[3]
    assert "2 of 6 case(s) done, 4 failed" in log
    assert "Traceback" not in log


def test_every_case_failing_ends_the_run_non_zero(tiny_ckpt, data_dir, tmp_path, capsys):
    datalist = {"testing": [{"image": "anatomical.nii", "box_ras": [900, 900, 900, 901, 901, 901]}, "absent.nii"]}
    (data_dir / "datalist.json").write_text(json.dumps(datalist))
    with pytest.raises(SystemExit) as exit_info:
        run_bundle(["inference.json"], tiny_ckpt, tmp_path / "out", datalist=str(data_dir / "datalist.json"))
    assert exit_info.value.code == "medsam bundle: 2 of 2 cases failed: anatomical, absent"
    errors = [line for line in capsys.readouterr().out.splitlines() if " ERROR " in line]
    assert "case 1/2" in errors[0] and "contains no voxel centre of the image" in errors[0]
    assert "case 2/2" in errors[1] and "absent.nii: no such file" in errors[1]
    assert not (tmp_path / "out").exists()


def test_command_line_input_dict_and_all_failed_exit_status(tiny_ckpt, data_dir, tmp_path):
    input_dict = f"{{'image': '{data_dir / 'anatomical.nii'}', 'box': [0, 0, 0, 40, 5, 5]}}"
    result = run_bundle_command(
        "--ckpt_path",
        tiny_ckpt,
        "--variant",
        "tiny",
        "--device",
        "cpu",
        "--output_dir",
        tmp_path / "out",
        "--input_dict",
        input_dict,
    )
    assert result.returncode == 1
    assert "box (0, 0, 0, 40, 5, 5) is outside the image" in result.stdout  # the dict reached the case intact
    assert result.stderr.strip().splitlines()[-1] == "medsam bundle: 1 of 1 cases failed: anatomical"
    assert "Traceback" not in result.stderr + result.stdout


def test_tiny_without_ckpt_path_uses_the_packaged_weights_and_partial_failure_exits_non_zero(data_dir, tmp_path):
    """`--variant tiny` alone runs (no models/model.pt needed), as `medsam segment --variant tiny`;
    a datalist where some cases fail ends with a summary line and exit status 1, the others written."""
    shutil.copy(data_dir / "anatomical.nii", data_dir / "second.nii")
    datalist = {
        "testing": [
            {"image": "anatomical.nii", "box": VOXEL_BOX},
            {"image": "missing.nii.gz", "box": VOXEL_BOX},
            {"image": "second.nii", "box": [0, 0, 0, 40, 5, 5]},
        ]
    }
    (data_dir / "datalist.json").write_text(json.dumps(datalist))
    out = tmp_path / "out"
    result = run_bundle_command(
        "--variant", "tiny", "--modality", "mr", "--output_dir", out, "--datalist", data_dir / "datalist.json"
    )
    log = result.stdout + result.stderr
    assert result.returncode == 1, log[-3000:]
    assert result.stderr.strip().splitlines()[-1] == "medsam bundle: 2 of 3 cases failed: missing, second"
    assert f"checkpoint {TINY_DEMO_CHECKPOINT}," in log
    expected_device = resolve_device("auto")
    assert f"using device {describe_device(expected_device)} (device setting: auto)" in log  # auto is the default
    assert "Traceback" not in log
    assert sorted(p.name for p in out.iterdir()) == ["anatomical_seg.nii.gz"]

    cli_out = tmp_path / "cli.nii.gz"
    assert (
        medsam_main(
            [
                "segment",
                str(data_dir / "anatomical.nii"),
                "--box",
                ",".join(map(str, VOXEL_BOX)),
                "--variant",
                "tiny",
                "--modality",
                "mr",
                "--device",
                expected_device,
                "--out",
                str(cli_out),
            ]
        )
        == 0
    )
    bundle_labels, _, _ = labels_of(out / "anatomical_seg.nii.gz")
    assert (bundle_labels > 0).any()
    np.testing.assert_array_equal(bundle_labels, labels_of(cli_out)[0])  # the same (packaged) weights


def test_checkpoint_defaults_by_variant_and_an_explicit_path_wins(tmp_path):
    root = tmp_path / "bundle"
    assert resolve_checkpoint("tiny", None, root) == str(TINY_DEMO_CHECKPOINT)
    for variant in ("vit_b", "vit_l", "auto"):
        assert resolve_checkpoint(variant, None, root) == str(root / "models" / "model.pt")
    assert resolve_checkpoint("tiny", tmp_path / "mine.pt", root) == str(tmp_path / "mine.pt")
    assert resolve_checkpoint("vit_b", "other.pth", root) == "other.pth"


def test_missing_checkpoint_says_how_to_download(data_dir, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        run_bundle(
            ["inference.json"],
            tmp_path / "models" / "model.pt",
            tmp_path / "out",
            input_dict={"image": str(data_dir / "anatomical.nii"), "box": VOXEL_BOX},
        )
    message = str(exit_info.value.code)
    assert "not found" in message and f"download_large_files --bundle_path {BUNDLE}" in message
    assert "medsam download" in message and "\n" not in message
    # vit_b without --ckpt_path: the bundle's models/model.pt, under the bundle_root given
    with pytest.raises(SystemExit) as exit_info:
        run_bundle(
            ["inference.json"],
            None,
            tmp_path / "out",
            variant="vit_b",
            bundle_root=str(tmp_path),
            input_dict={"image": str(data_dir / "anatomical.nii"), "box": VOXEL_BOX},
        )
    assert str(exit_info.value.code).startswith(f"medsam bundle: error: checkpoint {tmp_path / 'models' / 'model.pt'} not found")


@pytest.mark.parametrize(
    ("setting", "value", "expected"),
    [
        ("modality", "xray", "unknown modality 'xray'"),
        ("precision", "fp16", "unknown precision 'fp16'"),
        ("variant", "vit_x", "unknown variant 'vit_x'"),
        ("window", "lung", "a CT window ('lung') was given for modality 'mr'"),
        ("axis", "oblique", "unknown slicing axis 'oblique'"),
        ("device", "gpu", "unknown device 'gpu'; use auto"),
        ("device", "meta", "device 'meta' cannot run a model here"),
        pytest.param(
            "device",
            "cuda",
            "device 'cuda' asked for, but torch sees no CUDA GPU",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU"),
        ),
    ],
)
def test_bad_settings_stop_before_any_case(tiny_ckpt, data_dir, tmp_path, setting, value, expected):
    with pytest.raises(SystemExit) as exit_info:
        run_bundle(
            ["inference.json"],
            tiny_ckpt,
            tmp_path / "out",
            **{setting: value},
            input_dict={"image": str(data_dir / "anatomical.nii"), "box": VOXEL_BOX},
        )
    assert str(exit_info.value.code).startswith("medsam bundle: error: " + expected)
    assert not (tmp_path / "out").exists()


def test_no_cases_given_is_one_line(tiny_ckpt, tmp_path):
    with pytest.raises(SystemExit, match="--input_dict"):
        run_bundle(["inference.json"], tiny_ckpt, tmp_path / "out")
    (tmp_path / "datalist.json").write_text(json.dumps({"training": []}))
    with pytest.raises(SystemExit, match="no non-empty list 'testing'"):
        run_bundle(["inference.json"], tiny_ckpt, tmp_path / "out", datalist=str(tmp_path / "datalist.json"))


# --------------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------------


def test_prompts_give_boxes_numbered_as_medsam_segment():
    affine = np.diag([-2.0, 2.0, 3.0, 1.0])
    volume = Volume(np.zeros((10, 12, 8), np.int16), affine)
    ras = ras_box_of([1, 2, 3, 4, 5, 6], affine)
    boxes, names = boxes_from_prompts(
        {
            "box": [[0, 0, 0, 1, 1, 1], [2, 2, 2, 3, 3, 3]],
            "box_ras": ras,
            "boxes": [[5, 5, 5, 6, 6, 6], {"box": [1, 1, 1, 9, 11, 7], "label": 9, "name": "liver"}],
        },
        volume,
    )
    assert [b.box for b in boxes] == [
        (0, 0, 0, 1, 1, 1),
        (2, 2, 2, 3, 3, 3),
        (1, 2, 3, 4, 5, 6),
        (5, 5, 5, 6, 6, 6),
        (1, 1, 1, 9, 11, 7),
    ]
    assert [b.label for b in boxes] == [1, 2, 3, 4, 9]
    assert names == {1: "Segment_1", 2: "Segment_2", 3: "Segment_3", 4: "Segment_4", 9: "liver"}


@pytest.mark.parametrize(
    ("prompts", "message"),
    [
        ({}, "no box or point given"),
        ({"box": [1, 2, 3]}, "'box' must be 6 numbers"),
        ({"box": [0, 0, 0, 10, 1, 1]}, "outside the image"),
        ({"box": [3, 0, 0, 1, 1, 1]}, "reversed"),
        ({"boxes": [{"box": [0, 0, 0, 1, 1, 1], "box_ras": [0, 0, 0, 1, 1, 1]}]}, "exactly one of 'box' or 'box_ras'"),
        ({"boxes": [{"box": [0, 0, 0, 1, 1, 1], "label": 0}]}, "'label' must be a whole number in 1..65535"),
        ({"boxes": "0,0,0,1,1,1"}, "'boxes' must be a list"),
    ],
)
def test_bad_prompts_are_one_line_errors(prompts, message):
    volume = Volume(np.zeros((10, 12, 8), np.int16), np.eye(4))
    with pytest.raises(ValueError, match=message):
        boxes_from_prompts(prompts, volume)


def test_case_names_drop_the_image_suffix():
    assert [case_name(p) for p in ("a/ct_01.nii.gz", "b/mr.v2.nii", "c/t1.nrrd", "d/series_dir", "e/x.MHA")] == [
        "ct_01",
        "mr.v2",
        "t1",
        "series_dir",
        "x",
    ]


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


def test_box_from_label_is_tight_and_jitter_is_seeded_outward_and_clipped():
    label = np.zeros((20, 20, 20), np.uint8)
    label[3:8, 0:5, 10:12] = 2
    label[12:15, 12:19, 19] = 5
    tight = BoxesFromLabel(0)(label)
    assert [(b.box, b.label) for b in tight] == [((3, 0, 10, 7, 4, 11), 2), ((12, 12, 19, 14, 18, 19), 5)]

    jittered = [BoxesFromLabel(3)(label, np.random.default_rng([7, n])) for n in range(20)]
    again = [BoxesFromLabel(3)(label, np.random.default_rng([7, n])) for n in range(20)]
    assert jittered == again
    for boxes in jittered:
        for box, exact in zip(boxes, tight):
            lo, hi, lo0, hi0 = np.array(box.box[:3]), np.array(box.box[3:]), np.array(exact.box[:3]), np.array(exact.box[3:])
            assert np.all(lo <= lo0) and np.all(lo >= np.maximum(lo0 - 3, 0))
            assert np.all(hi >= hi0) and np.all(hi <= np.minimum(hi0 + 3, 19))
    assert len({tuple(b.box for b in boxes) for boxes in jittered}) > 10  # the seed does move the faces


def test_boxes_from_labeld_seeds_per_case():
    label = np.zeros((20, 20, 20), np.uint8)
    label[5:9, 5:9, 5:9] = 1
    image = MetaTensor(torch.zeros(20, 20, 20), affine=torch.eye(4, dtype=torch.float64))
    transform = BoxesFromLabeld(keys="label", jitter=4, seed=11)
    same_grid = MetaTensor(torch.from_numpy(label), affine=torch.eye(4, dtype=torch.float64))
    boxes = [transform({"image": image, "label": same_grid, "case_index": n})["voxel_boxes"] for n in (0, 1, 0)]
    assert boxes[0] == boxes[2] and boxes[0] == BoxesFromLabel(4)(label, np.random.default_rng([11, 0]))
    assert boxes[1] != boxes[0]  # another case draws its own jitter
    shifted = MetaTensor(torch.from_numpy(label), affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0], dtype=torch.float64)))
    with pytest.raises(ValueError, match="another grid"):
        transform({"image": image, "label": shifted})


def test_surface_scores_measure_in_millimetres():
    truth = np.zeros((12, 12, 12), bool)
    truth[3:8, 3:8, 3:8] = True
    pred = np.roll(truth, 1, axis=0)  # one voxel further along i
    expected_dice = 2 * (truth & pred).sum() / (truth.sum() + pred.sum())
    dice, nsd_1mm = surface_scores(pred, truth, (1.0, 1.0, 1.0), tolerance_mm=2.0)
    _, nsd_3mm = surface_scores(pred, truth, (3.0, 1.0, 1.0), tolerance_mm=2.0)
    _, nsd_3mm_wide = surface_scores(pred, truth, (3.0, 1.0, 1.0), tolerance_mm=3.0)
    assert dice == pytest.approx(expected_dice)
    assert nsd_1mm == pytest.approx(1.0)  # a 1 mm shift is within 2 mm
    assert nsd_3mm < 0.9  # a 3 mm shift is not: the i faces count as misses
    assert nsd_3mm_wide == pytest.approx(1.0)


def test_evaluate_writes_per_case_and_mean_dice_and_nsd(tiny_ckpt, data_dir, tmp_path, capsys):
    image = nib.load(str(data_dir / "anatomical.nii"))
    label = np.zeros(image.shape, np.uint8)
    label[8:20, 10:25, 10:12] = 1
    label[20:28, 12:22, 10:12] = 2
    nib.save(nib.Nifti1Image(label, image.affine), str(data_dir / "anatomical_label.nii.gz"))
    nib.save(nib.Nifti1Image(label[:-1], image.affine), str(data_dir / "cropped_label.nii.gz"))
    shutil.copy(data_dir / "anatomical.nii", data_dir / "second.nii")
    datalist = {
        "testing": [
            {"image": "anatomical.nii", "label": "anatomical_label.nii.gz"},
            {"image": "second.nii", "label": "cropped_label.nii.gz"},
        ]
    }
    (data_dir / "datalist.json").write_text(json.dumps(datalist))
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:  # the second case's label is on another grid
        run_bundle(
            ["inference.json", "evaluate.json"], tiny_ckpt, out, datalist=str(data_dir / "datalist.json"), box_jitter=1, seed=3
        )
    assert exit_info.value.code == "medsam bundle: 1 of 2 cases failed: second"

    with open(out / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    per_case = [r for r in rows if r["case"] != "mean"]
    assert [(r["case"], r["label"]) for r in per_case] == [("anatomical", "1"), ("anatomical", "2")]
    pred, _, _ = labels_of(out / "anatomical_seg.nii.gz")
    for row in per_case:
        value = int(row["label"])
        found, truth = pred == value, label == value
        assert float(row["dice"]) == pytest.approx(2 * (found & truth).sum() / (found.sum() + truth.sum()), abs=1e-6)
        assert 0.0 <= float(row["nsd"]) <= 1.0
    means = {r["label"]: r for r in rows if r["case"] == "mean"}
    assert float(means["all"]["dice"]) == pytest.approx(np.mean([float(r["dice"]) for r in per_case]), abs=1e-6)
    assert float(means["all"]["nsd"]) == pytest.approx(np.mean([float(r["nsd"]) for r in per_case]), abs=1e-6)

    log = capsys.readouterr().out
    assert f"Dice {float(means['all']['dice']):.4f} NSD {float(means['all']['nsd']):.4f} (tolerance 2 mm)" in log
    assert "case 2/2" in log and "shape (32, 41, 25) differs from the image's (33, 41, 25)" in log


def test_evaluate_without_label_is_one_line_per_case(tiny_ckpt, data_dir, tmp_path, capsys):
    shutil.copy(data_dir / "anatomical.nii", data_dir / "second.nii")
    datalist = {"testing": [{"image": "anatomical.nii"}, {"image": "second.nii", "box": VOXEL_BOX}]}
    (data_dir / "datalist.json").write_text(json.dumps(datalist))
    with pytest.raises(SystemExit) as exit_info:
        run_bundle(["inference.json", "evaluate.json"], tiny_ckpt, tmp_path / "out", datalist=str(data_dir / "datalist.json"))
    assert exit_info.value.code == "medsam bundle: 2 of 2 cases failed: anatomical, second"
    log = capsys.readouterr().out
    errors = [line for line in log.splitlines() if " ERROR " in line]
    assert len(errors) == 2 and "Traceback" not in log
    for n, name in enumerate(("anatomical.nii", "second.nii"), start=1):
        assert f"case {n}/2 ({data_dir / name}) failed: no 'label' given; this run reads 'image' and 'label'" in errors[n - 1]
    assert not (tmp_path / "out" / "metrics.csv").exists()


def test_bad_evaluation_settings_stop_early(tiny_ckpt, data_dir, tmp_path):
    with pytest.raises(SystemExit, match="box jitter is a whole number of voxels >= 0"):
        run_bundle(
            ["inference.json", "evaluate.json"],
            tiny_ckpt,
            tmp_path / "out",
            box_jitter=-1,
            input_dict={"image": str(data_dir / "anatomical.nii"), "label": str(data_dir / "anatomical.nii")},
        )


# --------------------------------------------------------------------------------------------
# Metadata and weights
# --------------------------------------------------------------------------------------------


@pytest.fixture
def schema_copy(tmp_path):
    if not SCHEMA.is_file():
        pytest.skip(f"no offline copy of the Model Zoo schema at {SCHEMA}")
    return shutil.copy(SCHEMA, tmp_path / "schema.json")


def test_metadata_validates_against_the_model_zoo_schema(schema_copy):
    monai.bundle.verify_metadata(meta_file=str(CONFIGS / "metadata.json"), filepath=str(schema_copy))
    metadata = json.loads((CONFIGS / "metadata.json").read_text())
    assert "medsam-monai" in metadata["required_packages_version"]


@pytest.mark.parametrize("breakage", ["drop_task", "version_number", "tensor_without_dtype"])
def test_broken_metadata_fails_validation(schema_copy, tmp_path, breakage):
    metadata = json.loads((CONFIGS / "metadata.json").read_text())
    if breakage == "drop_task":
        del metadata["task"]
    elif breakage == "version_number":
        metadata["version"] = 1
    else:
        del metadata["network_data_format"]["inputs"]["box"]["dtype"]
    broken = tmp_path / "metadata.json"
    broken.write_text(json.dumps(metadata))
    with pytest.raises(ValueError, match="Failed validating"):
        monai.bundle.verify_metadata(meta_file=str(broken), filepath=str(schema_copy))


def test_large_files_names_the_known_medsam_weights_and_downloads(tmp_path):
    (entry,) = yaml.safe_load((BUNDLE / "large_files.yml").read_text())["large_files"]
    known = KNOWN_WEIGHTS["medsam_vit_b"]
    assert (entry["path"], entry["url"], entry["hash_val"], entry["hash_type"]) == (
        "models/model.pt",
        known.url,
        known.sha256,
        "sha256",
    )

    # The same file through monai's own downloader, with a local file standing in for the URL.
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"stand-in weights")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    local = dict(entry, url=weights.as_uri(), hash_val=hashlib.sha256(weights.read_bytes()).hexdigest())
    (bundle / "large_files.yml").write_text(yaml.safe_dump({"large_files": [local]}))
    monai.bundle.download_large_files(bundle_path=str(bundle))
    assert (bundle / "models" / "model.pt").read_bytes() == b"stand-in weights"
