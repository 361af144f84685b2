"""DICOM folders: which series, whether its files are whole, whether they form one volume.

Real folders from pydicom's test data (a three-plane localizer, radial slices, a series with a
200 mm gap, a CT study with a scout and an axial series) and synthetic series built from pydicom's
real CT slice (CT_small.dcm) with controlled positions, orientations and damage.
"""

from __future__ import annotations

import copy
import os
from contextlib import suppress
from pathlib import Path

import numpy as np
import pydicom
import pytest
from helpers import read_error_line
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from medsam_monai import io as mio
from medsam_monai.cli import main
from medsam_monai.io import ImageReadError, read_volume, scan_dicom_folder

DICOMDIR_TESTS = Path(get_testdata_file("DICOMDIR")).parent  # pydicom's dicomdirtests folders
LOCALIZER = DICOMDIR_TESTS / "98892003" / "MR2"  # three series; two are three-plane localizers
RADIAL = DICOMDIR_TESTS / "98892003" / "MR700"  # 7 slices rotated about one axis
WITH_GAP = DICOMDIR_TESTS / "77654033" / "CT2"  # 4 slices, one of them ~200 mm from the others
CT_STUDY = DICOMDIR_TESTS / "98892001"  # CT2N (scout, 2 files) and CT5N (5 axial slices)


def _headers(folder: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.iterdir()) if p.is_file()]


def _z(ds: pydicom.Dataset) -> float:
    """Position along the slice normal, from the file's own tags."""
    iop = np.array(ds.ImageOrientationPatient, float)
    return float(np.dot(np.array(ds.ImagePositionPatient, float), np.cross(iop[:3], iop[3:])))


# ------------------------------------------------------------------------------------------
# pydicom's real folders
# ------------------------------------------------------------------------------------------


def test_a_real_three_plane_localizer_is_refused():
    by_series: dict[str, list[pydicom.Dataset]] = {}
    for ds in _headers(LOCALIZER):
        by_series.setdefault(ds.SeriesInstanceUID, []).append(ds)
    uid, files = max(by_series.items(), key=lambda item: len(item[1]))
    planes = {tuple(np.round(np.array(ds.ImageOrientationPatient, float), 3)) for ds in files}
    assert len(planes) == 3  # the data are what this test says they are
    message = read_error_line(LOCALIZER, "mixed orientations", series_uid=uid)
    assert f"{len(planes)} different slice planes" in message
    for plane in ("axial", "coronal", "sagittal"):
        assert plane in message


def test_real_radial_slices_are_refused():
    count = len(_headers(RADIAL))
    message = read_error_line(RADIAL, "mixed orientations")
    assert f"{count} different slice planes among {count} files" in message


def test_a_real_series_with_a_gap_is_refused_at_the_gap():
    ordered = sorted(_headers(WITH_GAP), key=_z)
    z = np.array([_z(ds) for ds in ordered])
    steps = np.diff(z)
    gap = int(np.argmax(steps))
    message = read_error_line(WITH_GAP, "a gap at position")
    assert f"a gap at position {z[gap]:.2f} mm" in message
    assert f"{steps[gap]:.2f} mm to the next slice" in message
    assert f"others are {np.median(steps):.2f} mm apart" in message


def test_a_real_regular_series_reads_in_position_order():
    folder = CT_STUDY / "CT5N"
    volume = read_volume(folder)
    datasets = sorted((pydicom.dcmread(p) for p in folder.iterdir()), key=_z)
    assert volume.shape == (datasets[0].Columns, datasets[0].Rows, len(datasets))
    assert volume.spacing[2] == pytest.approx(abs(_z(datasets[1]) - _z(datasets[0])), abs=1e-4)
    for k, ds in enumerate(datasets):
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_array_equal(volume.array[:, :, k], hu.T)


def test_a_study_folder_is_searched_and_its_series_listed():
    series = {ds.SeriesInstanceUID: ds for folder in ("CT2N", "CT5N") for ds in _headers(CT_STUDY / folder)}
    message = read_error_line(CT_STUDY, "holds 2 DICOM series; choose one with --series-uid", longest=None)  # lists them
    for uid, ds in series.items():
        assert uid in message and ds.SeriesDescription in message and ds.Modality in message
    assert "2 files of 16x16, in CT2N" in message and "5 files of 16x16, in CT5N" in message
    axial = pydicom.dcmread(next((CT_STUDY / "CT5N").iterdir()), stop_before_pixels=True).SeriesInstanceUID
    chosen = read_volume(CT_STUDY, series_uid=axial)
    direct = read_volume(CT_STUDY / "CT5N")
    np.testing.assert_array_equal(chosen.array, direct.array)
    np.testing.assert_allclose(chosen.affine, direct.affine)


def test_an_unknown_series_uid_lists_what_is_there():
    message = read_error_line(CT_STUDY, "no DICOM series '1.2.3' among the 2 found: ", series_uid="1.2.3")
    assert message.count("; ") == 1 and message.count(" files of 16x16") == 2


def test_a_series_uid_for_a_file_is_refused():
    read_error_line(get_testdata_file("CT_small.dcm"), "this is a file", series_uid="1.2.3")


def test_files_without_pixel_data_are_not_taken_for_images():
    message = read_error_line(DICOMDIR_TESTS / "TINY_ALPHA", "no readable DICOM image")
    assert "no pixel data" in message


@pytest.mark.parametrize("folder", [LOCALIZER, RADIAL, WITH_GAP, CT_STUDY / "CT5N"], ids=lambda f: f.name)
def test_itk_and_gdcm_print_nothing_raw(folder, capfd):
    with suppress(ImageReadError):  # three of them are refused: the point here is what reached the terminal
        read_volume(folder)
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""


def test_native_output_is_captured_not_printed(capfd):
    import SimpleITK as sitk

    folder = str(Path(mio.__file__).parent)  # no DICOM files: GDCM warns "No Series were found"
    sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder)
    assert "WARNING" in capfd.readouterr().err  # what reached the terminal before
    with mio._native_output_captured() as lines:
        sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder)
        os.write(2, b"MetaImage: written straight to file descriptor 2\n")
    assert capfd.readouterr().err == ""
    assert lines == ["MetaImage: written straight to file descriptor 2"]
    assert sitk.ProcessObject_GetGlobalWarningDisplay()  # restored


# ------------------------------------------------------------------------------------------
# Synthetic series from a real CT slice
# ------------------------------------------------------------------------------------------

AXIAL = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]


def write_series(
    folder: Path,
    positions: list[list[float]],
    orientations: list[list[float]] | None = None,
    uid: str | None = None,
    prefix: str = "s",
) -> list[Path]:
    """CT_small.dcm once per position (LPS mm), slice n named ``{prefix}{n:03d}.dcm``; pixel (0, 0) holds n."""
    folder.mkdir(parents=True, exist_ok=True)
    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    uid = uid or generate_uid()
    paths = []
    for n, position in enumerate(positions):
        ds = copy.deepcopy(template)
        ds.ImageOrientationPatient = [f"{x:.6f}" for x in (orientations[n] if orientations else AXIAL)]
        ds.ImagePositionPatient = [f"{x:.4f}" for x in position]
        ds.InstanceNumber = n + 1
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        pixels = ds.pixel_array.copy()
        pixels[0, 0] = n
        ds.PixelData = pixels.tobytes()
        paths.append(folder / f"{prefix}{n:03d}.dcm")
        ds.save_as(paths[-1])
    return paths


def stack(count: int, step: float, origin=(-100.0, -80.0, 20.0)) -> list[list[float]]:
    return [[origin[0], origin[1], origin[2] + n * step] for n in range(count)]


def test_a_regular_synthetic_series_reads_at_its_spacing(tmp_path):
    write_series(tmp_path, stack(40, 4.0)[::-1])  # written in reverse: sorting is by position
    volume = read_volume(tmp_path)
    assert volume.shape == (128, 128, 40) and volume.spacing[2] == pytest.approx(4.0)
    assert [int(volume.array[0, 0, k]) for k in (0, 39)] == [39 - 1024, 0 - 1024]  # pixel value n, minus the intercept


def test_a_missing_slice_is_a_gap(tmp_path):
    paths = write_series(tmp_path, stack(40, 4.0))
    paths[20].unlink()
    message = read_error_line(tmp_path, "a gap at position 96.00 mm")
    assert "8.00 mm to the next slice where the others are 4.00 mm apart (between s019.dcm and s021.dcm" in message


def test_uneven_spacing_is_refused(tmp_path):
    positions = stack(10, 2.0)
    positions[5][2] += 0.5  # a slice 0.5 mm off its place: steps 2.5 and 1.5
    write_series(tmp_path, positions)
    message = read_error_line(tmp_path, "at position")
    assert "2.50 mm to the next slice" in message or "1.50 mm to the next slice" in message


def test_small_position_noise_is_accepted(tmp_path):
    positions = stack(10, 2.0)
    positions[5][2] += 0.004  # rounding in the decimal strings of real scanners
    write_series(tmp_path, positions)
    assert read_volume(tmp_path).shape[2] == 10


def test_one_slice_in_another_orientation_is_refused(tmp_path):
    orientations = [AXIAL] * 6
    orientations[3] = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]  # coronal
    write_series(tmp_path, stack(6, 3.0), orientations)
    message = read_error_line(tmp_path, "mixed orientations: 2 different slice planes among 6 files")
    assert "axial in s000.dcm" in message and "coronal in s003.dcm" in message


def test_slices_at_the_same_position_are_refused(tmp_path):
    positions = stack(6, 3.0)
    write_series(tmp_path, positions + positions[2:3])  # a repeat of slice 2 (a second echo, say)
    read_error_line(tmp_path, "2 slices share positions .*s002.dcm.*s006.dcm|2 slices share positions .*s006.dcm.*s002.dcm")


def test_slices_shifted_within_their_plane_are_refused(tmp_path):
    # A gantry-tilted CT: axial orientation, but each slice moves 1 mm in y as z goes up.
    positions = [[-100.0, -80.0 + n * 1.0, 20.0 + n * 3.0] for n in range(8)]
    write_series(tmp_path, positions)
    read_error_line(tmp_path, "not stacked along their normal .*gantry tilt")


def test_slices_of_different_sizes_are_refused(tmp_path):
    paths = write_series(tmp_path, stack(4, 3.0))
    ds = pydicom.dcmread(paths[1])
    ds.PixelData = ds.pixel_array[:64, :64].copy().tobytes()
    ds.Rows, ds.Columns = 64, 64
    ds.save_as(paths[1])
    read_error_line(tmp_path, "slices of different sizes in one series: 128x128 .*64x64 \\(s001.dcm\\)")


# ------------------------------------------------------------------------------------------
# Damaged files (issue 14.8: a 40-slice 4 mm series with one bad file)
# ------------------------------------------------------------------------------------------


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated pixels":
        path.write_bytes(data[: len(data) - 5000])
    elif how == "truncated header":
        path.write_bytes(data[:600])
    elif how == "zeroed header":
        path.write_bytes(data[:300] + bytes(100) + data[400:])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "random bytes":
        path.write_bytes(np.random.default_rng(0).bytes(len(data)))


@pytest.mark.parametrize("how", ["truncated pixels", "truncated header", "zeroed header", "empty", "random bytes"])
def test_a_damaged_file_in_a_series_is_refused_by_name(tmp_path, how):
    paths = write_series(tmp_path, stack(40, 4.0))
    _damage(paths[20], how)
    message = read_error_line(tmp_path, "damaged DICOM file s020.dcm in series")
    assert "repair or remove it" in message


def test_a_damaged_file_of_another_series_elsewhere_does_not_block(tmp_path):
    good = write_series(tmp_path / "axial", stack(5, 2.0))
    other = write_series(tmp_path / "other", stack(3, 2.0))
    _damage(other[1], "truncated pixels")
    uid = pydicom.dcmread(good[0], stop_before_pixels=True).SeriesInstanceUID
    message = read_error_line(tmp_path, "holds 2 DICOM series")
    assert "in axial" in message and "in other" in message
    assert read_volume(tmp_path, series_uid=uid).shape == (128, 128, 5)
    # The damaged file's header names its series: choosing that series names the file.
    other_uid = pydicom.dcmread(other[0], stop_before_pixels=True).SeriesInstanceUID
    read_error_line(tmp_path, "damaged DICOM file other/s001.dcm", series_uid=other_uid)


def test_files_that_are_not_dicom_are_skipped(tmp_path):
    write_series(tmp_path, stack(5, 2.0))
    (tmp_path / "notes.txt").write_text("scanned on tuesday\n")
    (tmp_path / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    assert read_volume(tmp_path).shape == (128, 128, 5)


def test_the_search_is_bounded(tmp_path, monkeypatch):
    write_series(tmp_path / "a" / "b", stack(3, 2.0))
    monkeypatch.setattr(mio, "DICOM_SEARCH_MAX_FILES", 2)
    read_error_line(tmp_path, "more than 2 files below this folder")
    monkeypatch.setattr(mio, "DICOM_SEARCH_MAX_FILES", 100)
    monkeypatch.setattr(mio, "DICOM_SEARCH_MAX_DEPTH", 1)
    read_error_line(tmp_path, "no DICOM series found")
    monkeypatch.setattr(mio, "DICOM_SEARCH_MAX_DEPTH", 2)
    assert read_volume(tmp_path).shape[2] == 3


def test_scan_groups_a_series_split_over_folders(tmp_path):
    uid = generate_uid()
    positions = stack(6, 2.0)
    write_series(tmp_path / "part1", positions[:3], uid=uid, prefix="a")
    write_series(tmp_path / "part2", positions[3:], uid=uid, prefix="b")
    scan = scan_dicom_folder(tmp_path)
    assert list(scan.series) == [uid] and len(scan.series[uid]) == 6
    assert read_volume(tmp_path).shape[2] == 6


# ------------------------------------------------------------------------------------------
# The CLI: one line, exit 2, nothing written, no raw ITK text
# ------------------------------------------------------------------------------------------


def _segment_cli(image: Path, out: Path, *extra: str) -> list[str]:
    return ["segment", str(image), "--box", "0,0,0,3,3,1", "--out", str(out), "--variant", "tiny", *extra]


def _damaged_series(folder: Path) -> Path:
    paths = write_series(folder, stack(40, 4.0))
    _damage(paths[20], "truncated pixels")
    return folder


@pytest.mark.parametrize(
    "make_image, message",
    [
        (lambda d: LOCALIZER, "holds 3 DICOM series; choose one with --series-uid"),
        (lambda d: RADIAL, "mixed orientations"),
        (lambda d: WITH_GAP, "a gap at position"),
        (lambda d: _damaged_series(d / "series"), "damaged DICOM file s020.dcm"),
    ],
    ids=["several series", "radial", "gap", "damaged file"],
)
def test_cli_refuses_what_is_not_a_volume(tmp_path, capfd, monkeypatch, make_image, message):
    import medsam_monai.cli.segment as segment_command

    monkeypatch.setattr(segment_command, "load_predictor", lambda args: pytest.fail("the model must not load for a bad input"))
    out = tmp_path / "mask.nii.gz"
    assert main(_segment_cli(make_image(tmp_path), out)) == 2
    err = capfd.readouterr().err
    assert err.startswith("medsam: error: ") and err.count("\n") == 1 and message in err
    assert not out.exists()


def test_cli_series_uid_chooses_a_series_of_a_study(tmp_path, capfd):
    axial = pydicom.dcmread(next((CT_STUDY / "CT5N").iterdir()), stop_before_pixels=True).SeriesInstanceUID
    out = tmp_path / "mask.nii.gz"
    assert main(_segment_cli(CT_STUDY, out, "--series-uid", axial)) == 0
    assert read_volume(out).shape == read_volume(CT_STUDY / "CT5N").shape
    assert "WARNING" not in capfd.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["mask.nii.gz"]
