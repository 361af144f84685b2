"""The main job end to end: `medsam segment` / `medsam demo`, orientation invariance, bad inputs."""

from __future__ import annotations

import copy
import io
import os
import random
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from helpers import relayout
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from medsam_monai.cli import build_parser, main
from medsam_monai.io import Volume, read_volume, write_volume
from medsam_monai.networks import build_sam_variant
from medsam_monai.phantom import ct_phantom, demo_phantom, label_box
from medsam_monai.predictor import MedSAMPredictor
from medsam_monai.segment import VoxelBox, ras_box_to_voxel_box, segment_volume

NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save(build_sam_variant("tiny").state_dict(), path)
    return path


def to_ras_grid(labels: np.ndarray, volume: Volume) -> np.ndarray:
    """Resample nothing: put labels back in RAS voxel order using the affine's axis codes."""
    codes = np.argmax(np.abs(volume.affine[:3, :3]), axis=0)
    order = np.argsort(codes)
    out = labels.transpose(order)
    for axis in range(3):
        if volume.affine[axis, order[axis]] < 0:
            out = np.flip(out, axis)
    return out


class ThresholdInBoxPredictor(MedSAMPredictor):
    """A STUB for the orientation logic only: each object's "mask" is the bright voxels inside its
    display-frame box (so a wrong slice, row or column order shows up as a different mask)."""

    def segment_3d(self, volume, objects, **kwargs):
        labels = np.zeros(volume.shape, dtype=np.uint8)
        for obj in objects:
            x0, y0, z0, x1, y1, z1 = (int(v) for v in obj.box)
            region = volume[z0 : z1 + 1, y0 : y1 + 1, x0 : x1 + 1]
            labels[z0 : z1 + 1, y0 : y1 + 1, x0 : x1 + 1][region > 134] = obj.label
            # Mark the key slice's first row and column so that in-plane flips are caught too.
            labels[int((z1 - z0) / 2 + z0), y0, x0] = obj.label + 1
        return labels


@pytest.mark.parametrize("axis", ["axial", "coronal", "sagittal"])
def test_same_physical_volume_in_three_layouts_gives_the_same_physical_mask(axis):
    phantom = ct_phantom(shape=(48, 40, 24), spacing=(3.0, 3.0, 5.0))
    predictor = ThresholdInBoxPredictor(build_sam_variant("tiny"))
    ras_box = phantom.volume.affine[:3, :3] @ np.array(phantom.organ_box[:3]) + phantom.volume.affine[:3, 3]
    ras_box2 = phantom.volume.affine[:3, :3] @ np.array(phantom.organ_box[3:]) + phantom.volume.affine[:3, 3]
    ras = (*ras_box, *ras_box2)
    results = []
    for permutation, flips in [
        ((0, 1, 2), (False, False, False)),
        ((0, 1, 2), (True, True, False)),
        ((2, 0, 1), (False, True, True)),
    ]:
        volume = relayout(phantom.volume, permutation, flips)
        box = ras_box_to_voxel_box(ras, volume)
        labels = segment_volume(predictor, volume, [VoxelBox(box)], axis=axis)
        assert labels.shape == volume.shape
        results.append(to_ras_grid(labels, volume))
    truth = phantom.labels.astype(bool)
    dice = 2 * ((results[0] == 1) & truth).sum() / ((results[0] == 1).sum() + truth.sum())
    assert dice > 0.6  # the stub finds the noisy organ: the box and the display frame are right
    for other in results[1:]:
        np.testing.assert_array_equal(other, results[0])


def test_segment_real_nifti_end_to_end(tmp_path, tiny_checkpoint):
    image = NIBABEL_DATA / "anatomical.nii"
    out = tmp_path / "mask.nii.gz"
    preview = tmp_path / "preview.png"
    code = main(
        [
            "segment",
            str(image),
            "--box",
            "5,10,5,30,38,8",
            "--out",
            str(out),
            "--variant",
            "tiny",
            "--checkpoint",
            str(tiny_checkpoint),
            "--modality",
            "mr",
            "--label",
            "structure",
            "--preview",
            str(preview),
        ]
    )
    assert code == 0
    written = nib.load(out)
    source = nib.load(image)
    assert written.shape == source.shape
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-5)
    labels = np.asarray(written.dataobj)
    slices_with_mask = np.flatnonzero(labels.any(axis=(0, 1)))
    assert set(slices_with_mask) <= set(range(5, 9))  # never outside the box's slice range (axial = k here)
    assert preview.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_box_ras_gives_the_same_result_as_the_voxel_box(tmp_path, tiny_checkpoint):
    image = NIBABEL_DATA / "anatomical.nii"
    volume = read_volume(image)
    lo = volume.affine[:3, :3] @ [5, 10, 5] + volume.affine[:3, 3]
    hi = volume.affine[:3, :3] @ [30, 38, 8] + volume.affine[:3, 3]
    common = ["--variant", "tiny", "--checkpoint", str(tiny_checkpoint), "--modality", "mr"]
    assert main(["segment", str(image), "--box", "5,10,5,30,38,8", "--out", str(tmp_path / "a.nii.gz"), *common]) == 0
    ras = ",".join(str(v) for v in (*lo, *hi))
    assert main(["segment", str(image), f"--box-ras={ras}", "--out", str(tmp_path / "b.nii.gz"), *common]) == 0
    a = np.asarray(nib.load(tmp_path / "a.nii.gz").dataobj)
    b = np.asarray(nib.load(tmp_path / "b.nii.gz").dataobj)
    np.testing.assert_array_equal(a, b)


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "medsam_monai.cli", *args],
        check=False,
        capture_output=True,
        text=True,
        env={**os.environ, "MEDSAM_CACHE_DIR": "/nonexistent-cache"},
    )


@pytest.mark.parametrize(
    "make_args, message",
    [
        (
            lambda d, ck: ["segment", str(d / "missing.nii.gz"), "--box", "0,0,0,1,1,1", "--out", str(d / "o.nii.gz")],
            "no such file",
        ),
        (
            lambda d, ck: [
                "segment",
                str(NIBABEL_DATA / "anatomical.nii"),
                "--box",
                "0,0,0,999,1,1",
                "--out",
                str(d / "o.nii.gz"),
            ],
            "outside the image",
        ),
        (
            lambda d, ck: ["segment", str(NIBABEL_DATA / "anatomical.nii"), "--box", "5,5,5,1,1,1", "--out", str(d / "o.nii.gz")],
            "reversed",
        ),
        (
            lambda d, ck: ["segment", str(NIBABEL_DATA / "anatomical.nii"), "--box", "1,2,3", "--out", str(d / "o.nii.gz")],
            "6 comma-separated",
        ),
        (
            lambda d, ck: ["segment", str(NIBABEL_DATA / "anatomical.nii"), "--box", "a,b,c,d,e,f", "--out", str(d / "o.nii.gz")],
            "6 comma-separated",
        ),
        (
            lambda d, ck: [
                "segment",
                str(NIBABEL_DATA / "example4d.nii.gz"),
                "--box",
                "0,0,0,1,1,1",
                "--out",
                str(d / "o.nii.gz"),
            ],
            "3D",
        ),
        (
            lambda d, ck: [
                "segment",
                str(NIBABEL_DATA / "anatomical.nii"),
                "--box",
                "0,0,0,1,1,1",
                "--window",
                "nope",
                "--out",
                str(d / "o.nii.gz"),
            ],
            "unknown window preset",
        ),
        (
            lambda d, ck: [
                "segment",
                str(NIBABEL_DATA / "anatomical.nii"),
                "--box",
                "0,0,0,1,1,1",
                "--out",
                str(d / "o.nii.gz"),
                "--variant",
                "vit_b",
                "--checkpoint",
                str(ck),
            ],
            "--variant tiny",
        ),
        (
            lambda d, ck: ["segment", str(NIBABEL_DATA / "anatomical.nii"), "--box", "0,0,0,1,1,1", "--out", str(d / "o.xyz")],
            "unsupported output",
        ),
        (lambda d, ck: ["segment", str(NIBABEL_DATA / "anatomical.nii"), "--out", str(d / "o.nii.gz")], "at least one --box"),
        (lambda d, ck: ["segment", str(_garbage(d)), "--box", "0,0,0,1,1,1", "--out", str(d / "o.nii.gz")], "cannot read"),
        (
            lambda d, ck: ["segment", str(_image_2d(d)), "--box", "0,0,0,1,1,0", "--out", str(d / "o.nii.gz")],
            "expected a 3D image",
        ),
        (
            lambda d, ck: [
                "segment",
                str(NIBABEL_DATA / "anatomical.nii"),
                "--box",
                "0,0,0,1,1,1",
                "--window",
                "40,-5",
                "--out",
                str(d / "o.nii.gz"),
            ],
            "width",
        ),
        (
            lambda d, ck: [
                "segment",
                str(NIBABEL_DATA / "anatomical.nii"),
                "--box-ras",
                "1e6,1e6,1e6,2e6,2e6,2e6",
                "--out",
                str(d / "o.nii.gz"),
            ],
            "no voxel centre",
        ),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, tiny_checkpoint, make_args, message):
    result = run_cli(*make_args(tmp_path, tiny_checkpoint))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr and result.stderr.strip().count("\n") == 0
    assert not list(tmp_path.glob("o.*"))


def _garbage(folder: Path) -> Path:
    path = folder / "broken.nii.gz"
    path.write_bytes(b"this is not an image\n")
    return path


def _image_2d(folder: Path) -> Path:
    path = folder / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8), dtype=np.int16), np.eye(4)), path)
    return path


def test_nan_voxels_are_refused(tmp_path, tiny_checkpoint):
    data = np.zeros((8, 8, 4), dtype=np.float32)
    data[2, 2, 2] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "nan.nii.gz")
    result = run_cli(
        "segment",
        str(tmp_path / "nan.nii.gz"),
        "--box",
        "0,0,0,3,3,3",
        "--out",
        str(tmp_path / "o.nii.gz"),
        "--variant",
        "tiny",
        "--checkpoint",
        str(tiny_checkpoint),
    )
    assert result.returncode == 2 and "NaN" in result.stderr
    assert not (tmp_path / "o.nii.gz").exists()


def test_demo_runs_offline_and_the_packaged_model_finds_the_organs(tmp_path, capsys):
    assert main(["demo", "--out-dir", str(tmp_path)]) == 0
    mask = nib.load(tmp_path / "demo_mask.nii.gz")
    image = nib.load(tmp_path / "demo_image.nii.gz")
    assert mask.shape == image.shape
    assert np.allclose(mask.affine, image.affine)
    from PIL import Image  # the readable preview: one key slice per organ, each >= 512 px on its long side

    assert Image.open(tmp_path / "demo_preview.png").size[0] >= 4 * 512
    phantom, found = demo_phantom(), np.asarray(mask.dataobj)
    assert np.array_equal(np.asarray(image.dataobj), phantom.volume.array)
    out = capsys.readouterr().out
    scores = []
    for value, name in sorted(phantom.organ_names.items()):
        truth, segmented = phantom.labels == value, found == value
        scores.append(2 * (truth & segmented).sum() / (truth.sum() + segmented.sum()))
        assert f"{name} {scores[-1]:.3f}" in out
    assert len(scores) >= 2 and np.mean(scores) >= 0.85, scores


def _write_ct_series(folder: Path, count: int, step_mm: float) -> None:
    """A real CT slice (pydicom's CT_small) stacked along a tilted normal, shuffled file names."""
    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    c, s = np.cos(np.radians(15)), np.sin(np.radians(15))
    orientation = [1.0, 0.0, 0.0, 0.0, round(c, 6), round(s, 6)]
    normal = np.cross(orientation[:3], orientation[3:])
    origin = np.array(template.ImagePositionPatient, float)
    uid = generate_uid()
    order = list(range(count))
    random.Random(0).shuffle(order)
    for n in order:
        ds = copy.deepcopy(template)
        ds.ImageOrientationPatient = [f"{x:.6f}" for x in orientation]
        ds.ImagePositionPatient = [f"{x:.4f}" for x in origin + n * step_mm * normal]
        ds.InstanceNumber = count - n  # deliberately disagrees with the position order
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PixelData = np.roll(ds.pixel_array, 3 * n, axis=1).tobytes()  # slices differ
        ds.save_as(folder / f"{generate_uid()[-8:]}.dcm")


def test_segment_dicom_series_folder_matches_the_same_voxels_as_nifti(tmp_path, tiny_checkpoint):
    series = tmp_path / "series"
    series.mkdir()
    _write_ct_series(series, count=5, step_mm=2.5)
    volume = read_volume(series)
    write_volume(tmp_path / "same.nii.gz", volume.array, volume.affine)
    common = ["--box", "20,30,1,90,100,3", "--variant", "tiny", "--checkpoint", str(tiny_checkpoint)]
    assert main(["segment", str(series), "--out", str(tmp_path / "from_dicom.nii.gz"), *common]) == 0
    assert main(["segment", str(tmp_path / "same.nii.gz"), "--out", str(tmp_path / "from_nifti.nii.gz"), *common]) == 0
    from_dicom = nib.load(tmp_path / "from_dicom.nii.gz")
    np.testing.assert_allclose(from_dicom.affine, volume.affine, atol=1e-4)  # the series' own geometry
    labels = np.asarray(from_dicom.dataobj)
    np.testing.assert_array_equal(labels, np.asarray(nib.load(tmp_path / "from_nifti.nii.gz").dataobj))
    assert labels.shape == volume.shape


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_a_bar_on_a_terminal_and_lines_elsewhere(tmp_path, tiny_checkpoint, monkeypatch):
    args = [
        "segment",
        str(NIBABEL_DATA / "anatomical.nii"),
        "--box",
        "5,10,5,30,38,8",
        "--modality",
        "mr",
        "--variant",
        "tiny",
        "--checkpoint",
        str(tiny_checkpoint),
    ]
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main([*args, "--out", str(tmp_path / "a.nii.gz")]) == 0
    bar = terminal.getvalue()
    assert "\rsegmenting [" in bar and "4/4 slices" in bar and "1/4 slices" in bar and bar.endswith("\n")
    piped = io.StringIO()
    monkeypatch.setattr(sys, "stderr", piped)
    assert main([*args, "--out", str(tmp_path / "b.nii.gz")]) == 0
    log = piped.getvalue()
    assert "\r" not in log  # no carriage-return noise in logs
    lines = [line for line in log.splitlines() if line.startswith("segmenting: ")]
    assert [line.split(" slices")[0] for line in lines] == [f"segmenting: {n}/4" for n in (1, 2, 3, 4)]
    assert lines[-1].startswith("segmenting: 4/4 slices (100%), ") and lines[-1].endswith(" s elapsed, ~0 s left")


def test_the_chosen_device_is_said_once(tmp_path, tiny_checkpoint, capsys):
    from medsam_monai.devices import auto_device

    assert (
        main(
            [
                "segment",
                str(NIBABEL_DATA / "anatomical.nii"),
                "--box",
                "5,10,5,30,38,8",
                "--modality",
                "mr",
                "--variant",
                "tiny",
                "--checkpoint",
                str(tiny_checkpoint),
                "--out",
                str(tmp_path / "a.nii.gz"),
            ]
        )
        == 0
    )
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("medsam: using device ")]
    assert len(said) == 1 and said[0].split()[3] == auto_device()  # --device auto is the default


def test_an_empty_segment_is_named_in_a_warning_and_the_run_succeeds(tmp_path, tiny_checkpoint, capsys):
    """Two identical boxes: on a tie the first segment keeps the voxels, so the second comes out empty
    whatever the model finds (a real run, no stub). Each empty segment, and only those, gets a warning."""
    out = tmp_path / "mask.nii.gz"
    box = "5,10,5,30,38,8"
    assert (
        main(
            [
                "segment",
                str(NIBABEL_DATA / "anatomical.nii"),
                "--box",
                box,
                "--box",
                box,
                "--label",
                "first",
                "--label",
                "second",
                "--modality",
                "mr",
                "--variant",
                "tiny",
                "--checkpoint",
                str(tiny_checkpoint),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    labels = np.asarray(nib.load(out).dataobj)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("medsam: warning: ")]
    empty = [name for value, name in [(1, "first"), (2, "second")] if not (labels == value).any()]
    assert "second" in empty
    assert [w.split("'")[1] for w in warnings] == empty
    assert all(w.startswith(f"medsam: warning: segment '{w.split(chr(39))[1]}' is empty") for w in warnings)


@pytest.mark.parametrize("device", ["mps", "cuda"])
def test_a_device_this_machine_lacks_is_one_line_exit_2(tmp_path, device):
    from medsam_monai.devices import resolve_device

    try:
        resolve_device(device)
        pytest.skip(f"this machine has {device}")
    except ValueError:
        pass
    result = run_cli(
        "segment",
        str(NIBABEL_DATA / "anatomical.nii"),
        "--box",
        "5,10,5,30,38,8",
        "--variant",
        "tiny",
        "--device",
        device,
        "--out",
        str(tmp_path / "o.nii.gz"),
    )
    assert result.returncode == 2
    assert result.stderr.startswith(f"medsam: error: device '{device}' asked for") and result.stderr.count("\n") == 1
    assert not list(tmp_path.iterdir())


def test_serve_refuses_a_missing_device_before_taking_the_port(tmp_path):
    result = run_cli("serve", "--variant", "tiny", "--device", "mps", "--port", "0")
    if result.returncode == 0:
        pytest.skip("this machine has mps")
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("medsam: error: device 'mps' asked for") and result.stderr.count("\n") == 1


def test_segment_volume_takes_plain_tuples_lists_and_arrays_as_boxes():
    """The README's Python call: plain boxes get labels 1, 2, ... in order, as VoxelBox(label=n) would."""
    from medsam_monai.checkpoints import TINY_DEMO_CHECKPOINT, build_sam

    phantom = ct_phantom(shape=(48, 40, 6), spacing=(3.0, 3.0, 5.0))
    predictor = MedSAMPredictor(build_sam("tiny", TINY_DEMO_CHECKPOINT))
    boxes = [label_box(phantom.labels, 1), (26, 8, 3, 40, 30, 3)]  # the liver-like organ, and a box beside it
    expected = segment_volume(predictor, phantom.volume, [VoxelBox(b, label=n) for n, b in enumerate(boxes, start=1)])
    assert set(np.unique(expected)) == {0, 1, 2}
    np.testing.assert_array_equal(segment_volume(predictor, phantom.volume, [tuple(b) for b in boxes]), expected)
    mixed = [list(boxes[0]), VoxelBox(boxes[1], label=2)]
    np.testing.assert_array_equal(segment_volume(predictor, phantom.volume, mixed), expected)
    np.testing.assert_array_equal(segment_volume(predictor, phantom.volume, np.array(boxes)), expected)
    one = segment_volume(predictor, phantom.volume, tuple(boxes[0]))  # one box, not in a list
    np.testing.assert_array_equal(one, segment_volume(predictor, phantom.volume, [VoxelBox(boxes[0])]))


@pytest.mark.parametrize(
    "boxes, message",
    [
        ([(1, 2, 3)], "box 1 must be"),
        ([None], "box 1 must be"),
        ([(0, 0, 0, 1, 1, 1), "0,0,0,1,1,1"], "box 2 must be"),
        ([], "at least one box"),
    ],
)
def test_segment_volume_refuses_what_is_not_a_box(boxes, message):
    phantom = ct_phantom(shape=(16, 16, 4))
    with pytest.raises(ValueError, match=message):
        segment_volume(ThresholdInBoxPredictor(build_sam_variant("tiny")), phantom.volume, boxes)


def _subcommands() -> dict:
    parser = build_parser()
    return next(a for a in parser._subparsers._group_actions if a.dest == "command").choices


def _subcommand(name: str):
    return _subcommands()[name]


@pytest.mark.parametrize("command", sorted(_subcommands()))
def test_help_documents_every_option(command):
    parser = _subcommand(command)
    text = parser.format_help()
    for action in parser._actions:
        for flag in action.option_strings:
            assert flag in text
        assert action.help, f"{command} {action.option_strings or action.dest} has no help text"


def test_segment_help_names_every_promised_option():
    text = _subcommand("segment").format_help()
    for promised in [
        "--box",
        "--box-ras",
        "--axis",
        "--modality",
        "--window",
        "--checkpoint",
        "--variant",
        "--device",
        "--precision",
        "--label",
        "--preview",
        "--out",
    ]:
        assert promised in text


@pytest.mark.slow
def test_segment_with_the_full_vit_b(tmp_path):
    """The full ViT-B through the CLI once (random weights: geometry and plumbing, not mask quality)."""
    torch.manual_seed(0)
    checkpoint = tmp_path / "vit_b.pth"
    torch.save(build_sam_variant("vit_b").state_dict(), checkpoint)
    out = tmp_path / "mask.seg.nrrd"
    assert (
        main(
            [
                "segment",
                str(NIBABEL_DATA / "anatomical.nii"),
                "--box",
                "5,10,6,30,38,6",
                "--modality",
                "mr",
                "--checkpoint",
                str(checkpoint),
                "--out",
                str(out),
                "--label",
                "probe",
            ]
        )
        == 0
    )
    labels = read_volume(out)
    source = read_volume(NIBABEL_DATA / "anatomical.nii")
    assert labels.shape == source.shape
    np.testing.assert_allclose(labels.affine, source.affine, atol=1e-5)
    assert set(np.flatnonzero(labels.array.any(axis=(0, 1)))) <= {6}  # a zero extent is one slice
