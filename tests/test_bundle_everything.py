"""``configs/everything.json``: SAM's automatic masks of a 2D image or a volume's slice per case, as
``python -m monai.bundle run`` runs it: the records of the library's generator on the same plane, a
label map with larger masks under smaller ones, COCO RLE that pycocotools reads, one-line errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import monai.bundle
import nibabel as nib
import numpy as np
import pytest
import skimage.data
from monai.bundle import ConfigWorkflow
from PIL import Image

from medsam_monai.automatic import AutomaticMaskGenerator, coco_rle_to_mask, records_to_label_map
from medsam_monai.bundle import AutomaticMaskInferer, EverythingEvaluator
from medsam_monai.io import read_volume
from medsam_monai.models import load_predictor
from medsam_monai.orientation import display_index_to_ijk, display_layout, to_display
from medsam_monai.segment import normalized_volume
from medsam_monai.transforms import LoadPlaned, medsam_2d_intensity, read_plane

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "medsam_vit_b"
EVERYTHING = BUNDLE / "configs" / "everything.json"
ANATOMICAL = Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"  # 3D MR, 33x41x25, LAS, 2 mm

# A small grid and no score thresholds: the tiny demo model's IoU head is untrained, and 64 points keep it quick.
SETTINGS = {"points_per_side": 8, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.usefixtures("keep_root_logging")]


@pytest.fixture
def data_dir(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    Image.fromarray(skimage.data.camera()[100:260, 80:300]).save(folder / "camera.png")  # 160 x 220, grey
    shutil.copy(ANATOMICAL, folder / "anatomical.nii")
    return folder


def expected_records(plane: np.ndarray, two_d: bool, preprocessing: str = "medsam", **settings):
    """The library's generator on a plane, as a user of ``medsam_monai.automatic`` runs it (COCO RLE records)."""
    predictor = load_predictor("tiny", device="cpu", preprocessing=preprocessing, uint8_after_resize=two_d)
    return AutomaticMaskGenerator(predictor, output_mode="coco_rle", **{**SETTINGS, **settings}).generate(plane)


def axial_slice(k: int) -> np.ndarray:
    """Slice k of the MR volume in radiological display orientation, MR-normalised: what the CLI's 3D path shows."""
    volume = read_volume(ANATOMICAL)
    layout = display_layout(volume.affine, "axial")
    assert layout.permutation[0] == 2 and not layout.flips[0]  # display slice k is voxel slice k
    return np.ascontiguousarray(to_display(normalized_volume(volume, "mr"), layout)[k])


def assert_same_records(found, expected):
    assert len(found) == len(expected)
    for ours, theirs in zip(found, expected):
        assert ours["segmentation"] == theirs["segmentation"]
        for key in ("area", "bbox", "crop_box"):
            assert ours[key] == theirs[key]
        assert ours["predicted_iou"] == pytest.approx(theirs["predicted_iou"], abs=1e-5)
        assert ours["stability_score"] == pytest.approx(theirs["stability_score"], abs=1e-5)
        np.testing.assert_allclose(ours["point_coords"], theirs["point_coords"])


def assert_smaller_masks_on_top(label_map: np.ndarray, annotations) -> None:
    """Each labelled pixel shows the smallest mask covering it; unlabelled pixels are in no mask."""
    pycocotools_mask = pytest.importorskip("pycocotools.mask")
    masks = np.stack([pycocotools_mask.decode(dict(a["segmentation"])).astype(bool) for a in annotations])
    assert [int(m.sum()) for m in masks] == [a["area"] for a in annotations]  # pycocotools reads our RLE
    areas = np.array([a["area"] for a in annotations], dtype=float)
    covered = masks.any(axis=0)
    smallest = np.argmin(np.where(masks, areas[:, None, None], np.inf), axis=0) + 1
    np.testing.assert_array_equal(label_map, np.where(covered, smallest, 0))


def test_everything_json_runs_from_the_command_line_on_a_2d_image_and_volume_slices(data_dir, tmp_path):
    pytest.importorskip("fire")
    datalist = {"testing": [{"image": "camera.png"}, {"image": "anatomical.nii", "slice": 10}]}
    (data_dir / "images.json").write_text(json.dumps(datalist))
    out = tmp_path / "out"
    settings = [f"--{k}={v}" for k, v in SETTINGS.items()]
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(EVERYTHING), "--bundle_root", str(BUNDLE),
               "--variant", "tiny", "--device", "cpu", "--modality", "mr", *settings,
               "--output_dir", str(out), "--datalist", str(data_dir / "images.json")]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=BUNDLE, check=False)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert "Traceback" not in log and "2 of 2 case(s) done" in log
    assert sorted(p.name for p in out.iterdir()) == [
        "anatomical_axial10_masks.json",
        "anatomical_axial10_masks.nii.gz",
        "camera_masks.json",
        "camera_masks.png",
    ]

    # the 2D image: MedSAM's 2D intensities and MedSAM_Inference.py's uint8 rule, the generator's records
    camera = json.loads((out / "camera_masks.json").read_text())
    expected = expected_records(medsam_2d_intensity(np.asarray(Image.open(data_dir / "camera.png"))), two_d=True)
    assert expected, "no mask at all: the test would check nothing"
    assert_same_records([{k: v for k, v in a.items() if k != "label"} for a in camera["annotations"]], expected)
    assert [a["label"] for a in camera["annotations"]] == list(range(1, len(expected) + 1))
    assert camera["image"] == {"source": str(data_dir / "camera.png"), "height": 160, "width": 220, "spacing_mm": None}
    assert camera["label_map"] == "camera_masks.png" and camera["parameters"]["generator"]["points_per_side"] == 8
    label_png = np.asarray(Image.open(out / "camera_masks.png"))
    np.testing.assert_array_equal(label_png, records_to_label_map(expected, (160, 220)))

    # the volume's slice: its records, and the label map on the volume's grid, that slice alone labelled
    volume_records = json.loads((out / "anatomical_axial10_masks.json").read_text())
    expected = expected_records(axial_slice(10), two_d=False)
    assert len(expected) > 1
    assert_same_records([{k: v for k, v in a.items() if k != "label"} for a in volume_records["annotations"]], expected)
    assert volume_records["image"]["axis"] == "axial" and volume_records["image"]["slice"] == 10
    assert volume_records["image"]["spacing_mm"] == [2.0, 2.0]
    written = nib.load(str(out / "anatomical_axial10_masks.nii.gz"))
    np.testing.assert_array_equal(written.affine, nib.load(str(ANATOMICAL)).affine)
    labels = np.asarray(written.dataobj)
    assert labels.shape == (33, 41, 25) and not np.delete(labels, 10, axis=2).any()
    shown = to_display(labels, display_layout(written.affine, "axial"))[10]
    np.testing.assert_array_equal(shown, records_to_label_map(expected, shown.shape))
    assert_smaller_masks_on_top(shown, volume_records["annotations"])
    assert all(coco_rle_to_mask(a["segmentation"]).sum() == a["area"] for a in volume_records["annotations"])


def run_everything(output_dir, **overrides):
    settings = {"bundle_root": str(BUNDLE), "output_dir": str(output_dir), "variant": "tiny", "device": "cpu", "modality": "mr"}
    monai.bundle.run(config_file=str(EVERYTHING), **{**settings, **SETTINGS, **overrides})


def test_size_filters_and_sams_pipeline_on_a_volume_slice(data_dir, tmp_path):
    """``max_area_fraction`` and ``min_area_mm2`` (2 x 2 mm pixels) drop what ``filter_medical`` drops, under SAM's pipeline."""
    run_everything(tmp_path / "out", preprocessing_mode="sam", max_area_fraction=0.3, min_area_mm2=40.0,
                   input_dict={"image": str(data_dir / "anatomical.nii"), "slice": 10})  # fmt: skip
    found = json.loads((tmp_path / "out" / "anatomical_axial10_masks.json").read_text())
    everything = expected_records(axial_slice(10), two_d=False, preprocessing="sam")
    kept = [r for r in everything if r["area"] * 4.0 >= 40.0 and r["area"] <= 0.3 * 41 * 33]
    assert 0 < len(kept) < len(everything)  # the filters did drop some masks, and kept some
    assert_same_records([{k: v for k, v in a.items() if k != "label"} for a in found["annotations"]], kept)
    assert found["parameters"]["preprocessing"] == "sam" and found["parameters"]["max_area_fraction"] == 0.3


@pytest.mark.parametrize(
    ("setting", "value", "expected"),
    [
        ("points_per_side", 0, "points_per_side must be an integer >= 1, got 0"),
        ("pred_iou_thresh", 1.5, "pred_iou_thresh must be in [0, 1], got 1.5"),
        ("crop_overlap_ratio", 1.0, "crop_overlap_ratio must be in [0, 1), got 1.0"),
        ("max_area_fraction", 0, "max_area_fraction must be a fraction in (0, 1] or null, got 0"),
        ("min_area_mm2", -1, "min_area_mm2 must be a number of mm^2 >= 0 or null, got -1"),
        ("preprocessing_mode", "clip", "unknown preprocessing 'clip'; choose one of medsam, sam"),
    ],
)
def test_bad_settings_stop_before_any_case(data_dir, tmp_path, setting, value, expected):
    with pytest.raises(SystemExit) as exit_info:
        run_everything(tmp_path / "out", input_dict={"image": str(data_dir / "camera.png")}, **{setting: value})
    assert str(exit_info.value.code) == f"medsam bundle: error: {expected}"
    assert not (tmp_path / "out").exists()


def test_bad_cases_fail_alone_in_one_line(data_dir, tmp_path, capsys):
    datalist = {
        "testing": [
            {"image": "anatomical.nii"},
            {"image": "anatomical.nii", "slice": 25},
            {"image": "camera.png", "slice": 3},
            {"image": "anatomical.nii", "slice": 4, "axis": "oblique"},
            {"image": "camera.png"},  # runs: min_area_mm2 needs a spacing the PNG lacks
        ]
    }
    (data_dir / "images.json").write_text(json.dumps(datalist))
    with pytest.raises(SystemExit) as exit_info:
        run_everything(tmp_path / "out", datalist=str(data_dir / "images.json"), min_area_mm2=1.0)
    assert exit_info.value.code.startswith("medsam bundle: 5 of 5 cases failed: anatomical (case 1)")
    log = capsys.readouterr().out
    errors = [line for line in log.splitlines() if " ERROR " in line]
    assert len(errors) == 5 and "Traceback" not in log
    for line, expected in zip(
        errors,
        [
            "is a volume: give 'slice', the voxel index along its axial axis (K, 0..24)",
            "slice 25 is outside the volume: its axial axis (K) has slices 0..24",
            "'slice' applies to volumes; ",
            "unknown slicing axis 'oblique'",
            "min_area_mm2 needs the pixel spacing, which this image does not record",
        ],
    ):
        assert expected in line, line
    assert not (tmp_path / "out").exists()


def test_everything_json_has_every_inference_property(data_dir):
    workflow = ConfigWorkflow(
        config_file=str(EVERYTHING),
        workflow_type="infer",
        logging_file=False,
        bundle_root=str(BUNDLE),
        variant="tiny",
        device="cpu",
        input_dict={"image": str(data_dir / "camera.png")},
    )
    workflow.initialize()
    assert workflow.check_properties() == []
    assert isinstance(workflow.evaluator, EverythingEvaluator) and isinstance(workflow.inferer, AutomaticMaskInferer)
    item = workflow.dataset[0]  # the case through the preprocessing: its plane, MedSAM's 2D intensities
    assert item["image"].shape == (160, 220, 3) and item["image"].dtype == np.uint8
    assert item["plane"].kind == "image_2d" and item["plane"].spacing is None


def test_a_volume_slice_is_the_files_own_voxel_slice_whatever_the_display_flips(tmp_path):
    array = np.random.default_rng(0).integers(0, 1000, (12, 10, 6)).astype(np.int16)
    affine = np.diag([2.0, 2.0, -3.0, 1.0])  # k runs toward the feet: the axial display reverses it
    nib.save(nib.Nifti1Image(array, affine), str(tmp_path / "flipped.nii.gz"))
    plane = read_plane(tmp_path / "flipped.nii.gz", 4, "axial", "mr")
    layout = display_layout(affine, "axial")
    assert layout.flips[0] and plane.display_slice == 1
    assert display_index_to_ijk((plane.display_slice, 0, 0), array.shape, layout)[2] == 4
    intensities = normalized_volume(read_volume(tmp_path / "flipped.nii.gz"), "mr")
    np.testing.assert_array_equal(plane.image, to_display(intensities, layout)[1])
    np.testing.assert_array_equal(plane.image, to_display(intensities[:, :, 4:5], layout)[0])  # voxel slice k = 4 itself
    labels = np.arange(1, 1 + plane.image.size, dtype=np.uint16).reshape(plane.shape)
    on_grid = plane.labels_on_grid(labels)
    assert on_grid.shape == array.shape and not np.delete(on_grid, 4, axis=2).any()
    np.testing.assert_array_equal(to_display(on_grid[:, :, 4:5], layout)[0], labels)


def test_load_planed_skips_a_missing_key_when_allowed(data_dir):
    loaded = LoadPlaned(keys=["image", "other"], allow_missing_keys=True)({"image": str(data_dir / "camera.png")})
    assert loaded["image"].shape == (160, 220, 3) and "other" not in loaded and loaded["plane"].kind == "image_2d"
    with pytest.raises(ValueError, match="unknown modality 'xray'"):
        LoadPlaned(keys="image", modality="xray")
