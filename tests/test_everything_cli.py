"""`medsam everything` (issue 17 item 4): SAM's automatic masks of a 2D image or a volume's slice as
COCO RLE records (read back by pycocotools) or a label map, the medical filters, --propagate, and a
one-line error (exit 2, nothing written, no model loaded) for every bad option.

The model is the packaged tiny demo model (what ``--variant tiny`` loads). Its predicted IoUs are
untrained, so the runs keep every mask (``--pred-iou-thresh 0 --stability-score-thresh 0``) and use
a few points (``--points-per-side 4``: 16 points, one batch). Every expected result comes from the
library with the same model (:class:`~medsam_monai.automatic.AutomaticMaskGenerator`,
:func:`~medsam_monai.automatic.propagate_masks`), never a stored answer; the volume is stored
permuted and flipped, so that the voxel index of ``--slice``, the display frame and back are exercised.
"""

from __future__ import annotations

import inspect
import json

import nibabel as nib
import numpy as np
import pytest
import skimage.data
from helpers import relayout
from PIL import Image

from medsam_monai.automatic import (
    OUTPUT_MODES,
    AutomaticMaskGenerator,
    apply_size_filters,
    display_pixel_spacing,
    display_slice,
    propagate_masks,
    record_mask,
    record_masks,
    records_to_label_map,
)
from medsam_monai.cli import everything, main
from medsam_monai.io import read_volume
from medsam_monai.models import load_predictor
from medsam_monai.orientation import display_layout, from_display, to_display
from medsam_monai.phantom import ct_phantom
from medsam_monai.segment import image_intensities, normalized_volume

mask_utils = pytest.importorskip("pycocotools.mask")

KEEP_ALL = ["--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-score-thresh", "0"]
GENERATOR = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
PERMUTATION, FLIPS = (1, 0, 2), (True, False, True)
SHAPE, SPACING = (40, 32, 6), (3.0, 3.0, 5.0)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A 128 x 128 grey PNG (no pixel spacing) and a small CT phantom stored in another voxel order."""
    folder = tmp_path_factory.mktemp("inputs")
    Image.fromarray(skimage.data.camera()[::4, ::4]).save(folder / "camera.png")
    volume = relayout(ct_phantom(shape=SHAPE, spacing=SPACING).volume, PERMUTATION, FLIPS)
    nib.save(nib.Nifti1Image(volume.array, volume.affine), folder / "ct.nii.gz")
    return {"png": str(folder / "camera.png"), "ct": str(folder / "ct.nii.gz")}


@pytest.fixture(scope="module")
def predictors():
    """The packaged tiny model as the CLI loads it: MedSAM's 2D rule (uint8 after the resize) and the volume one."""
    return {flag: load_predictor("tiny", uint8_after_resize=flag) for flag in (False, True)}


@pytest.fixture()
def shared_model(monkeypatch, predictors):
    """The CLI's model loader answering with the module's predictors (so that runs share their embedding
    cache with the reference), recording what each run asked for."""
    asked = []

    def load(args, uint8_after_resize=False):
        assert args.variant == "tiny"
        asked.append(uint8_after_resize)
        return predictors[uint8_after_resize]

    monkeypatch.setattr(everything, "load_predictor", load)
    return asked


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``medsam everything ARGV --variant tiny`` in this process."""
    try:
        status = main(["everything", *argv, "--variant", "tiny"])
    except SystemExit as exit_:  # argparse's own usage errors end the process this way
        status = exit_.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


# ----- outputs ----------------------------------------------------------------------------------------


def test_json_records_are_the_generators_and_pycocotools_decodes_them(files, predictors, tmp_path, capsys):
    """A real run (the model loaded by the CLI itself): the records equal the library generator's on the
    image after MedSAM's 2D rule, each mask a COCO RLE that pycocotools decodes to the record's mask."""
    out = tmp_path / "masks.json"
    status, stdout, _ = run_cli(capsys, files["png"], "--out", str(out), *KEEP_ALL)
    assert status == 0
    image = np.asarray(Image.open(files["png"]))
    expected = AutomaticMaskGenerator(predictors[True], **GENERATOR, output_mode="coco_rle").generate(image_intensities(image))
    records = json.loads(out.read_text())
    assert len(records) == len(expected) > 3 and f"medsam: {len(records)} masks" in stdout
    for n, (record, want) in enumerate(zip(records, expected), start=1):
        assert record["label"] == n
        assert record["segmentation"] == want["segmentation"]
        for name in ("area", "bbox", "crop_box"):
            assert record[name] == want[name], name
        for name in ("predicted_iou", "stability_score"):
            assert record[name] == pytest.approx(want[name], rel=1e-6)
        np.testing.assert_allclose(record["point_coords"], want["point_coords"])
        decoded = mask_utils.decode(record["segmentation"]).astype(bool)
        assert decoded.shape == image.shape and int(decoded.sum()) == record["area"]
        np.testing.assert_array_equal(decoded, record_mask(want))


def test_a_label_image_paints_larger_masks_under_smaller_ones(files, predictors, shared_model, tmp_path, capsys):
    out = tmp_path / "labels.png"
    status, _, _ = run_cli(capsys, files["png"], "--out", str(out), *KEEP_ALL, "--box-nms-thresh", "0.5")
    assert status == 0 and shared_model == [True]  # MedSAM's 2D rule for a 2D image
    image = np.asarray(Image.open(files["png"]))
    expected = AutomaticMaskGenerator(predictors[True], **GENERATOR, box_nms_thresh=0.5).generate(image_intensities(image))
    labels = np.asarray(Image.open(out))
    np.testing.assert_array_equal(labels, records_to_label_map(expected, image.shape))
    assert len(np.unique(labels)) > 3  # several masks visible: the painting order is exercised


def test_uncompressed_rle_records_and_the_area_fraction_filter(files, predictors, shared_model, tmp_path, capsys):
    out = tmp_path / "masks.json"
    argv = [files["png"], "--out", str(out), *KEEP_ALL, "--output-mode", "uncompressed_rle", "--max-area-fraction", "0.2"]
    status, stdout, _ = run_cli(capsys, *argv)
    assert status == 0
    image = np.asarray(Image.open(files["png"]))
    found = AutomaticMaskGenerator(predictors[True], **GENERATOR, output_mode="uncompressed_rle").generate(
        image_intensities(image)
    )
    kept = apply_size_filters(found, None, max_area_fraction=0.2)
    assert 0 < len(kept) < len(found)  # the filter is exercised
    records = json.loads(out.read_text())
    assert [r["segmentation"] for r in records] == [r["segmentation"] for r in kept]
    assert all(isinstance(r["segmentation"]["counts"], list) for r in records)
    assert f"({len(found)} found, {len(found) - len(kept)} dropped by the size filters)" in stdout


def volume_slice_reference(files, predictor, axis: str, index: int, **settings):
    """(display volume, layout, display slice, the library's records of it)."""
    volume = read_volume(files["ct"])
    layout = display_layout(volume.affine, axis)
    display = np.ascontiguousarray(to_display(normalized_volume(volume), layout))
    key = display_slice(index, volume.shape, layout)
    records = AutomaticMaskGenerator(predictor, **{**GENERATOR, **settings}).generate(display[key])
    return volume, layout, display, key, records


def test_a_volume_slice_by_voxel_index_with_the_mm2_filter(files, predictors, shared_model, tmp_path, capsys):
    """--slice is the voxel index along the axis' voxel axis; the label volume holds that slice only,
    on the input's grid; --min-area-mm2 uses the slice's pixel spacing (3 x 3 mm here)."""
    volume, layout, _, key, found = volume_slice_reference(files, predictors[False], "coronal", 20)
    spacing = display_pixel_spacing(volume.affine, layout)
    assert spacing == (5.0, 3.0)  # coronal rows run along the 5 mm slices, columns along 3 mm voxels
    areas = sorted(r["area"] for r in found)
    min_mm2 = 15.0 * (areas[1] + 1)  # drops at least the two smallest masks
    kept = apply_size_filters(found, spacing, min_area_mm2=min_mm2)
    assert 0 < len(kept) < len(found) - 1
    out = tmp_path / "slice.nii.gz"
    argv = [files["ct"], "--out", str(out), *KEEP_ALL, "--axis", "coronal", "--slice", "20", "--min-area-mm2", str(min_mm2)]
    status, stdout, _ = run_cli(capsys, *argv)
    assert status == 0 and shared_model == [False]
    written = nib.load(out)
    np.testing.assert_allclose(written.affine, volume.affine)
    expected = np.zeros(to_display(volume.array, layout).shape, dtype=np.uint16)
    expected[key] = records_to_label_map(kept, expected.shape[1:])
    labels = np.asarray(written.dataobj)
    np.testing.assert_array_equal(labels, from_display(expected, layout))
    voxel_axis = layout.permutation[0]
    assert set(np.flatnonzero(labels.any(axis=tuple(a for a in range(3) if a != voxel_axis)))) == {20}
    assert f"medsam: {len(kept)} masks on the coronal slice {'ijk'[voxel_axis]} = 20" in stdout


def test_propagate_carries_each_mask_through_the_volume(files, predictors, shared_model, tmp_path, capsys):
    settings = {"points_per_side": 2}  # 4 points: few masks to propagate
    volume, layout, display, key, found = volume_slice_reference(files, predictors[False], "axial", 3, **settings)
    assert volume.shape[layout.permutation[0]] == SHAPE[2]
    expected = from_display(propagate_masks(predictors[False], display, key, record_masks(found)), layout)
    out = tmp_path / "propagated.seg.nrrd"
    argv = [files["ct"], "--out", str(out), *KEEP_ALL, "--points-per-side", "2", "--slice", "3", "--propagate"]
    status, stdout, _ = run_cli(capsys, *argv)
    assert status == 0
    labels = read_volume(out).array
    np.testing.assert_array_equal(labels, expected)
    assert set(np.unique(labels)) - {0} <= set(range(1, len(found) + 1))
    spread = np.flatnonzero(labels.any(axis=(0, 1)))
    assert len(spread) > 1  # the masks reach beyond their slice
    assert f"propagated over slices k = {spread.min()}..{spread.max()}" in stdout


# ----- one-line errors --------------------------------------------------------------------------------

BAD_OPTIONS = [
    # (input, arguments, a piece of the message)
    ("png", ["--points-per-side", "0"], "--points-per-side must be an integer >= 1, got 0"),
    ("png", ["--points-per-side", "-3"], "--points-per-side must be an integer >= 1"),
    ("png", ["--points-per-side", "1.5"], "'1.5' is not a whole number"),
    ("png", ["--points-per-side", "many"], "'many' is not a whole number"),
    ("png", ["--points-per-batch", "0"], "--points-per-batch must be an integer >= 1"),
    ("png", ["--pred-iou-thresh", "1.5"], "--pred-iou-thresh must be in [0, 1], got 1.5"),
    ("png", ["--pred-iou-thresh", "-0.1"], "--pred-iou-thresh must be in [0, 1]"),
    ("png", ["--pred-iou-thresh", "nan"], "'nan' is not a finite number"),
    ("png", ["--pred-iou-thresh", "high"], "'high' is not a number"),
    ("png", ["--stability-score-thresh", "2"], "--stability-score-thresh must be in [0, 1]"),
    ("png", ["--stability-score-offset", "-1"], "--stability-score-offset must be >= 0"),
    ("png", ["--stability-score-offset", "inf"], "'inf' is not a finite number"),
    ("png", ["--box-nms-thresh", "1.1"], "--box-nms-thresh must be in [0, 1]"),
    ("png", ["--crop-n-layers", "-1"], "--crop-n-layers must be an integer >= 0"),
    ("png", ["--crop-nms-thresh", "-0.5"], "--crop-nms-thresh must be in [0, 1]"),
    ("png", ["--crop-overlap-ratio", "1"], "--crop-overlap-ratio must be in [0, 1)"),
    ("png", ["--crop-n-points-downscale-factor", "0"], "--crop-n-points-downscale-factor must be an integer >= 1"),
    ("png", ["--min-mask-region-area", "-5"], "--min-mask-region-area must be >= 0"),
    (
        "png",
        ["--points-per-side", "2", "--crop-n-layers", "2", "--crop-n-points-downscale-factor", "2"],
        "--points-per-side 2 leaves no point in crop layer 2",
    ),
    ("png", ["--min-area-mm2", "-1"], "--min-area-mm2 must be a number >= 0"),
    ("png", ["--max-area-fraction", "0"], "--max-area-fraction must be in (0, 1]"),
    ("png", ["--max-area-fraction", "1.5"], "--max-area-fraction must be in (0, 1]"),
    ("png", ["--min-area-mm2", "10"], "--min-area-mm2 needs the pixel spacing, which"),
    ("png", ["--output-mode", "coco_rle"], "--output-mode coco_rle is a form of .json records"),
    ("png", ["--output-mode", "square"], "invalid choice: 'square'"),
    ("png", ["--slice", "2"], "--slice applies to volumes"),
    ("png", ["--axis", "axial"], "--axis applies to volumes"),
    ("png", ["--series-uid", "1.2.3"], "--series-uid applies to volumes"),
    ("ct", ["--slice", "6"], "--slice 6 is outside the axial slices k = 0..5"),
    ("ct", ["--slice", "-1"], "--slice -1 is outside the axial slices k = 0..5"),
    ("ct", ["--axis", "sagittal", "--slice", "40"], "--slice 40 is outside the sagittal slices j = 0..39"),
    ("ct", ["--window", "-600,1500", "--modality", "mr"], "--window applies to CT only"),
    ("ct", ["--window", "bright"], "bright"),
]


@pytest.fixture()
def no_model(monkeypatch):
    """Every refusal comes before the model loads."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(everything, "load_predictor", refuse)


def assert_one_line_refusal(status: int, err: str, piece: str, folder) -> None:
    lines = err.strip().splitlines()
    assert status == 2, err
    assert len(lines) == 1 and lines[0].startswith("medsam: error: "), err
    assert piece in lines[0], err
    assert list(folder.iterdir()) == [], "an output was written"


@pytest.mark.parametrize("source, argv, piece", BAD_OPTIONS)
def test_bad_values_are_one_line_errors_before_the_model_loads(files, no_model, tmp_path, capsys, source, argv, piece):
    out = "labels.png" if "--output-mode" in argv and "square" not in argv else "masks.json"
    status, _, err = run_cli(capsys, files[source], "--out", str(tmp_path / out), *argv)
    assert_one_line_refusal(status, err, piece, tmp_path)


BAD_OUTPUTS = [
    # (input, output name, arguments, a piece of the message)
    ("png", "masks.txt", [], "unsupported output type; use .json (records), a label image"),
    ("ct", "masks.mhd", [], "write .mha instead of .mhd"),
    ("png", "labels.jpg", [], "a lossy format would change label values"),
    ("png", "masks.json", ["--output-mode", "binary_mask"], "--output-mode binary_mask gives arrays"),
    ("ct", "labels.nii.gz", ["--output-mode", "uncompressed_rle"], "a label volume ("),
    ("png", "labels.nii.gz", ["--propagate"], "--propagate applies to volumes"),
    ("ct", "masks.json", ["--propagate"], "--propagate writes a label volume"),
    ("ct", "labels.png", ["--propagate"], "--propagate writes a label volume"),
]


@pytest.mark.parametrize("source, name, argv, piece", BAD_OUTPUTS)
def test_bad_outputs_are_refused_before_the_model_loads(files, no_model, tmp_path, capsys, source, name, argv, piece):
    status, _, err = run_cli(capsys, files[source], "--out", str(tmp_path / name), *argv)
    assert_one_line_refusal(status, err, piece, tmp_path)


def test_the_input_itself_and_a_folder_are_refused_as_outputs(files, no_model, tmp_path, capsys):
    status, _, err = run_cli(capsys, files["png"], "--out", files["png"])
    assert status == 2 and "refusing to overwrite a protected input file" in err
    folder = tmp_path / "taken.json"
    folder.mkdir()
    status, _, err = run_cli(capsys, files["png"], "--out", str(folder))
    assert status == 2 and "is a folder" in err and list(folder.iterdir()) == []


def write_grids(path, grids) -> str:
    path.write_text(json.dumps(grids) if not isinstance(grids, str) else grids)
    return str(path)


@pytest.mark.parametrize(
    "grids, argv, piece",
    [
        (None, [], "cannot read it"),
        ("[[0.5, 0.5],", [], "not a JSON file"),
        ([[0.5, 0.5, 0.5]], [], "expected a list of [x, y] pairs"),
        ([[[0.5, 0.5]], [[0.1]]], [], "expected a list of [x, y] pairs"),
        ([[1.5, 0.5]], [], "--point-grids[0] must hold coordinates in [0, 1]"),
        ([[0.5, 0.5]], ["--crop-n-layers", "1"], "--point-grids has 1 grids; --crop-n-layers 1 needs 2"),
        ([[0.5, 0.5]], ["--points-per-side", "4"], "give --points-per-side or --point-grids, not both"),
    ],
)
def test_bad_point_grids_are_one_line_errors(files, no_model, tmp_path, capsys, grids, argv, piece):
    grid_dir = tmp_path / "grids"
    grid_dir.mkdir()
    path = grid_dir / "grids.json"
    given = str(path) if grids is None else write_grids(path, grids)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    status, _, err = run_cli(capsys, files["png"], "--out", str(out_dir / "masks.json"), "--point-grids", given, *argv)
    assert_one_line_refusal(status, err, piece, out_dir)


def test_a_point_grid_file_replaces_the_grid(files, predictors, shared_model, tmp_path, capsys):
    grid = [[0.25, 0.25], [0.75, 0.25], [0.5, 0.75]]
    out = tmp_path / "masks.json"
    argv = [files["png"], "--out", str(out), "--pred-iou-thresh", "0", "--stability-score-thresh", "0"]
    status, _, _ = run_cli(capsys, *argv, "--point-grids", write_grids(tmp_path / "grid.json", grid))
    assert status == 0
    image = np.asarray(Image.open(files["png"]))
    generator = AutomaticMaskGenerator(
        predictors[True], points_per_side=None, point_grids=[np.array(grid)], pred_iou_thresh=0, stability_score_thresh=0
    )
    expected = generator.generate(image_intensities(image))
    records = json.loads(out.read_text())
    assert [r["area"] for r in records] == [r["area"] for r in expected] and records
    assert {tuple(r["point_coords"][0]) for r in records} <= {(x * 128, y * 128) for x, y in grid}


# ----- the option table ------------------------------------------------------------------------------


def test_the_options_defaults_and_output_modes_are_the_generators():
    signature = inspect.signature(AutomaticMaskGenerator.__init__).parameters
    for name, _, default, _ in everything.GENERATOR_OPTIONS:
        assert signature[name].default == pytest.approx(default), name
    assert set(signature) - {"self", "predictor", "output_mode", "point_grids"} == {n for n, *_ in everything.GENERATOR_OPTIONS}
    assert everything.OUTPUT_MODES == OUTPUT_MODES


def test_no_mask_warns_with_the_thresholds_to_lower(files, shared_model, tmp_path, capsys):
    """SAM's thresholds keep nothing of the tiny model, whose IoU head is untrained: said on stderr."""
    out = tmp_path / "labels.png"
    status, stdout, err = run_cli(capsys, files["png"], "--out", str(out), "--points-per-side", "2")
    assert status == 0 and "medsam: 0 masks" in stdout
    assert "medsam: warning: no masks; the tiny demo model's predicted IoUs are untrained" in err
    assert not np.asarray(Image.open(out)).any()
