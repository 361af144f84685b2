"""Reading real NIfTI/NRRD/DICOM files and writing label volumes atomically."""

from __future__ import annotations

import copy
import gzip
import os
import random
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from helpers import read_error_line
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from medsam_monai import io as mio
from medsam_monai.io import Volume, affine_from_sitk, read_volume, sitk_from_array, write_label_volume

NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


# ------------------------------------------------------------------------------------------
# NIfTI, MGH and NRRD
# ------------------------------------------------------------------------------------------


def test_read_nifti_keeps_dtype_and_affine():
    path = NIBABEL_DATA / "anatomical.nii"
    volume = read_volume(path)
    reference = nib.load(path)
    assert isinstance(volume, Volume) and volume.source == str(path)
    assert volume.shape == (33, 41, 25)
    assert volume.array.dtype == np.int16 and volume.array.dtype.isnative  # stored big-endian
    np.testing.assert_array_equal(volume.array, np.asanyarray(reference.dataobj))
    np.testing.assert_allclose(volume.affine, reference.affine)
    assert volume.spacing == (2.0, 2.0, 2.0)


def test_simpleitk_and_nibabel_agree_on_the_nifti_affine():
    path = NIBABEL_DATA / "anatomical.nii"
    image = sitk.ReadImage(str(path))
    np.testing.assert_allclose(affine_from_sitk(image), nib.load(path).affine, atol=1e-5)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image).transpose(2, 1, 0), read_volume(path).array)


def test_4d_is_refused_unless_it_holds_one_volume(tmp_path):
    path = NIBABEL_DATA / "example4d.nii.gz"
    message = read_error_line(path, "expected a 3D image")
    assert "(128, 96, 24, 2)" in message
    single = nib.load(path).slicer[..., :1]
    nib.save(single, tmp_path / "one.nii.gz")
    volume = read_volume(tmp_path / "one.nii.gz")
    assert volume.shape == (128, 96, 24) and volume.array.ndim == 3
    np.testing.assert_allclose(volume.affine, nib.load(path).affine)  # oblique qform/sform


def test_nifti2_and_mgz(tmp_path):
    source = nib.load(NIBABEL_DATA / "example_nifti2.nii.gz")
    read_error_line(NIBABEL_DATA / "example_nifti2.nii.gz", "expected a 3D image, got shape")
    first = source.slicer[..., 0]
    nib.save(nib.Nifti2Image(np.asanyarray(first.dataobj), first.affine, first.header), tmp_path / "n2.nii.gz")
    assert nib.load(tmp_path / "n2.nii.gz").header.sizeof_hdr == 540
    volume = read_volume(tmp_path / "n2.nii.gz")
    np.testing.assert_array_equal(volume.array, np.asanyarray(source.dataobj)[..., 0])
    np.testing.assert_allclose(volume.affine, source.affine)

    mgz = nib.load(NIBABEL_DATA / "test.mgz")
    read_error_line(NIBABEL_DATA / "test.mgz", "expected a 3D image")
    nib.save(mgz.slicer[..., 1], tmp_path / "one.mgz")
    volume = read_volume(tmp_path / "one.mgz")
    np.testing.assert_array_equal(volume.array, np.asanyarray(mgz.dataobj)[..., 1])
    np.testing.assert_allclose(volume.affine, mgz.affine)
    assert volume.array.dtype == np.float32


def test_read_a_hand_written_ras_nrrd(tmp_path):
    # A NRRD in RAS space written byte by byte, so ITK's LPS handling is checked independently.
    data = np.arange(60, dtype=np.uint8).reshape((3, 4, 5), order="F")
    header = (
        "NRRD0004\ntype: uint8\ndimension: 3\nspace: right-anterior-superior\nsizes: 3 4 5\n"
        "space directions: (0,2,0) (-3,0,0) (0,0,4)\nkinds: domain domain domain\nendian: little\n"
        "encoding: raw\nspace origin: (10,20,30)\n\n"
    )
    path = tmp_path / "ras.nrrd"
    path.write_bytes(header.encode() + data.tobytes(order="F"))
    volume = read_volume(path)
    np.testing.assert_array_equal(volume.array, data)
    expected = np.array([[0, -3, 0, 10], [2, 0, 0, 20], [0, 0, 4, 30], [0, 0, 0, 1]], dtype=float)
    np.testing.assert_allclose(volume.affine, expected, atol=1e-9)
    assert volume.spacing == (2.0, 3.0, 4.0)


# ------------------------------------------------------------------------------------------
# DICOM
# ------------------------------------------------------------------------------------------


def _dicom_affine(ds: pydicom.Dataset, slice_step: np.ndarray) -> np.ndarray:
    """The RAS affine written out from DICOM tags: i runs along a row (column index)."""
    row, col = np.array(ds.ImageOrientationPatient[:3], float), np.array(ds.ImageOrientationPatient[3:], float)
    lps = np.eye(4)
    lps[:3, 0] = row * float(ds.PixelSpacing[1])
    lps[:3, 1] = col * float(ds.PixelSpacing[0])
    lps[:3, 2] = slice_step
    lps[:3, 3] = np.array(ds.ImagePositionPatient, float)
    return LPS @ lps


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_read_single_dicom_file(name):
    path = get_testdata_file(name)
    ds = pydicom.dcmread(path)
    volume = read_volume(path)
    assert volume.shape == (ds.Columns, ds.Rows, 1)
    expected = ds.pixel_array * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
    np.testing.assert_array_equal(volume.array[:, :, 0], expected.T)
    normal = np.cross(ds.ImageOrientationPatient[:3], ds.ImageOrientationPatient[3:])
    # Only the in-plane geometry is defined by one slice; the slice step is ITK's choice.
    np.testing.assert_allclose(volume.affine[:, [0, 1, 3]], _dicom_affine(ds, normal)[:, [0, 1, 3]], atol=1e-4)


def _write_series(
    folder: Path, count: int, step: float, orientation: list[float], series_uid: str, mark: int
) -> list[np.ndarray]:
    """Slices of CT_small.dcm along the normal, written under shuffled names with reversed
    InstanceNumbers; pixel (row 5, col 7) holds ``mark + 100 * position index``. Returns positions."""
    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    row, col = np.array(orientation[:3]), np.array(orientation[3:])
    normal = np.cross(row, col)
    origin = np.array(template.ImagePositionPatient, float)
    positions = [origin + n * step * normal for n in range(count)]
    order = list(range(count))
    random.Random(count).shuffle(order)
    for written, n in enumerate(order):
        ds = copy.deepcopy(template)
        ds.ImageOrientationPatient = [f"{x:.6f}" for x in orientation]
        ds.ImagePositionPatient = [f"{x:.4f}" for x in positions[n]]
        ds.InstanceNumber = count - n
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        pixels = ds.pixel_array.copy()
        pixels[5, 7] = mark + 100 * n
        ds.PixelData = pixels.tobytes()
        ds.save_as(folder / f"img_{written:03d}_{generate_uid()[-6:]}.dcm")
    return [np.array([float(f"{x:.4f}") for x in p]) for p in positions]


@pytest.mark.parametrize("tilt", [0.0, 20.0])
def test_read_dicom_series_sorted_along_the_normal(tmp_path, tilt):
    c, s = np.cos(np.radians(tilt)), np.sin(np.radians(tilt))
    orientation = [1.0, 0.0, 0.0, 0.0, round(c, 6), round(s, 6)]
    positions = _write_series(tmp_path, 5, 2.5, orientation, generate_uid(), mark=1000)
    volume = read_volume(tmp_path)
    assert volume.shape == (128, 128, 5) and volume.source == str(tmp_path)
    intercept = -1024  # CT_small's RescaleIntercept, applied by the reader
    assert [int(volume.array[7, 5, n]) for n in range(5)] == [1000 + 100 * n + intercept for n in range(5)]
    ds = pydicom.dcmread(next(tmp_path.iterdir()))
    normal = np.cross(orientation[:3], orientation[3:])
    expected = _dicom_affine(ds, normal * 2.5)
    expected[:3, 3] = (LPS @ np.r_[positions[0], 1])[:3]
    np.testing.assert_allclose(volume.affine, expected, atol=1e-3)
    assert volume.spacing[2] == pytest.approx(2.5, abs=1e-3)


def test_folder_with_two_series(tmp_path):
    big, small = generate_uid(), generate_uid()
    _write_series(tmp_path, 4, 3.0, [1, 0, 0, 0, 1, 0], big, mark=1000)
    _write_series(tmp_path, 2, 3.0, [1, 0, 0, 0, 1, 0], small, mark=2000)
    # Several series and no choice: refused, with every series listed (no silent pick of the largest).
    message = read_error_line(tmp_path, "holds 2 DICOM series; choose one with --series-uid")
    assert f"{big} (CT" in message and "4 files of 128x128" in message
    assert f"{small} (CT" in message and "2 files of 128x128" in message
    assert read_volume(tmp_path, series_uid=big).shape[2] == 4
    chosen = read_volume(tmp_path, series_uid=small)
    assert chosen.shape[2] == 2 and int(chosen.array[7, 5, 1]) == 2000 + 100 - 1024
    read_error_line(tmp_path, "no DICOM series", series_uid="1.2.3")


# ------------------------------------------------------------------------------------------
# Read errors
# ------------------------------------------------------------------------------------------


def test_read_errors(tmp_path):
    read_error_line(tmp_path / "missing.nii.gz", "no such file")
    (tmp_path / "text.nii.gz").write_text("not an image\n")
    read_error_line(tmp_path / "text.nii.gz", "cannot read")
    (tmp_path / "text.nrrd").write_text("not an image either\n")
    read_error_line(tmp_path / "text.nrrd", "unsupported or unreadable")
    empty = tmp_path / "empty"
    empty.mkdir()
    read_error_line(empty, "empty folder")
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "readme.txt").write_text("hello")
    read_error_line(notes, "no DICOM series")


def test_2d_images_are_refused(tmp_path):
    sitk.WriteImage(sitk.Image(5, 6, sitk.sitkUInt8), str(tmp_path / "flat.mha"))
    assert "(5, 6)" in read_error_line(tmp_path / "flat.mha", "expected a 3D image")
    nib.save(nib.Nifti1Image(np.zeros((5, 6), np.uint8), np.eye(4)), tmp_path / "flat.nii.gz")
    assert "(5, 6)" in read_error_line(tmp_path / "flat.nii.gz", "expected a 3D image")
    sitk.WriteImage(sitk.Image(5, 6, sitk.sitkVectorUInt8, 3), str(tmp_path / "rgb.png"))
    read_error_line(tmp_path / "rgb.png", "expected a 3D image")


# ------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------


def _oblique_affine() -> np.ndarray:
    c, s = np.cos(np.radians(10)), np.sin(np.radians(10))
    rotation = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]]) @ np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.8, 0.9, 2.5]) @ np.diag([-1, 1, 1])  # an LPS-like i axis
    affine[:3, 3] = (12.5, -30.25, 47.0)
    return affine


def _labels(dtype=np.uint8) -> np.ndarray:
    labels = np.zeros((6, 7, 8), dtype=dtype)
    labels[1:3, 2:5, 3:7] = 1
    labels[4, 0, 0] = 2
    labels[5, 6, 7] = 3 if dtype == np.uint8 else 1000
    return labels


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha", ".seg.nrrd"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_write_read_round_trip(tmp_path, suffix, dtype):
    labels, affine = _labels(dtype), _oblique_affine()
    path = write_label_volume(tmp_path / f"out{suffix}", labels, affine)
    assert path == tmp_path / f"out{suffix}" and sorted(os.listdir(tmp_path)) == [f"out{suffix}"]
    volume = read_volume(path)
    assert volume.array.dtype == dtype
    np.testing.assert_array_equal(volume.array, labels)
    np.testing.assert_allclose(volume.affine, affine, atol=1e-5)


def test_nifti_header_has_scanner_qform_and_sform(tmp_path):
    affine = _oblique_affine()
    write_label_volume(tmp_path / "out.nii.gz", _labels(), affine)
    image = nib.load(tmp_path / "out.nii.gz")
    assert int(image.header["qform_code"]) == 1 and int(image.header["sform_code"]) == 1
    np.testing.assert_allclose(image.get_qform(), affine, atol=1e-5)
    np.testing.assert_allclose(image.get_sform(), affine, atol=1e-5)
    # SimpleITK reads the same geometry.
    np.testing.assert_allclose(affine_from_sitk(sitk.ReadImage(str(tmp_path / "out.nii.gz"))), affine, atol=1e-5)


def _nrrd_header(path: Path) -> dict[str, str]:
    header = path.read_bytes().split(b"\n\n", 1)[0].decode()
    fields = {}
    for line in header.splitlines()[1:]:
        if line.startswith("#"):
            continue
        key, _, value = line.partition(":=") if ":=" in line else line.partition(": ")
        fields[key] = value
    return fields


def test_seg_nrrd_has_slicer_segment_metadata(tmp_path):
    labels = _labels()
    path = write_label_volume(
        tmp_path / "seg.seg.nrrd",
        labels,
        _oblique_affine(),
        segment_names={1: "liver", 7: "tumour\nnew line"},
        colors={1: (1.0, 0.0, 0.0)},
    )
    fields = _nrrd_header(path)
    assert fields["dimension"] == "3" and fields["space"] == "left-posterior-superior"
    assert fields["encoding"] == "gzip"
    assert fields["Segmentation_ContainedRepresentationNames"] == "Binary labelmap|"
    segments = {}
    for n in range(4):  # labels 1, 2, 3 present plus the named, absent 7
        segments[int(fields[f"Segment{n}_LabelValue"])] = {
            key: fields[f"Segment{n}_{key}"] for key in ("ID", "Name", "Color", "Layer", "Extent")
        }
    assert "Segment4_ID" not in fields
    assert sorted(segments) == [1, 2, 3, 7]
    assert segments[1]["Name"] == "liver" and segments[1]["ID"] == "Segment_1"
    assert [float(x) for x in segments[1]["Color"].split()] == [1.0, 0.0, 0.0]
    assert segments[1]["Extent"] == "1 2 2 4 3 6"
    assert segments[2]["Name"] == "Segment_2" and segments[2]["Extent"] == "4 4 0 0 0 0"
    assert len(segments[2]["Color"].split()) == 3
    assert segments[7]["Name"] == "tumour new line" and segments[7]["Extent"] == "0 -1 0 -1 0 -1"
    assert {s["Layer"] for s in segments.values()} == {"0"}
    # The labelmap reads back voxel for voxel.
    np.testing.assert_array_equal(read_volume(path).array, labels)


def test_sitk_from_array_matches_affine_from_sitk():
    affine = _oblique_affine()
    image = sitk_from_array(_labels(), affine)
    np.testing.assert_allclose(affine_from_sitk(image), affine, atol=1e-12)
    assert image.GetSize() == (6, 7, 8)


def test_output_folders_are_created_and_bad_names_refused(tmp_path):
    path = write_label_volume(tmp_path / "a" / "b" / "mask.nii.gz", _labels(), np.eye(4))
    assert path.is_file()
    for name in ("mask.png", "mask.mhd", ".nii.gz"):
        with pytest.raises(ValueError):
            write_label_volume(tmp_path / name, _labels(), np.eye(4))
    with pytest.raises(ValueError, match="integers"):
        write_label_volume(tmp_path / "f.nii.gz", _labels().astype(float), np.eye(4))
    with pytest.raises(ValueError, match="0..65535"):
        write_label_volume(tmp_path / "f.nii.gz", _labels().astype(np.int32) - 1, np.eye(4))
    # A boolean mask is written as uint8.
    write_label_volume(tmp_path / "b.nrrd", _labels() > 0, np.eye(4))
    assert read_volume(tmp_path / "b.nrrd").array.dtype == np.uint8


def test_never_overwrites_a_protected_input(tmp_path):
    image = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((6, 7, 8), np.int16), np.eye(4)), image)
    before = image.read_bytes()
    for spelling in (image, tmp_path / "x" / ".." / "ct.nii.gz", str(image)):
        with pytest.raises(ValueError, match="protected"):
            write_label_volume(spelling, _labels(), np.eye(4), protect=[image])
    assert image.read_bytes() == before


def _partial_then_fail(exception: BaseException):
    def write(path, *args, **kwargs):
        Path(path).write_bytes(b"half a file")
        raise exception

    return write


@pytest.mark.parametrize("exception", [OSError("disk full"), KeyboardInterrupt()])
def test_failed_nifti_write_leaves_nothing_behind(tmp_path, monkeypatch, exception):
    out = tmp_path / "mask.nii.gz"
    out.write_bytes(b"previous result")
    monkeypatch.setattr(mio, "_write_nifti", _partial_then_fail(exception))
    with pytest.raises(type(exception)):
        write_label_volume(out, _labels(), np.eye(4))
    assert out.read_bytes() == b"previous result"
    assert os.listdir(tmp_path) == ["mask.nii.gz"]


@pytest.mark.parametrize("name", ["mask.nrrd", "mask.seg.nrrd", "mask.mha"])
def test_failed_simpleitk_write_leaves_nothing_behind(tmp_path, monkeypatch, name):
    def execute(self, *args):
        Path(self.GetFileName()).write_bytes(b"NRRD0004\ntruncated")
        raise RuntimeError("ITK ERROR: NrrdImageIO(0x1): write failed")

    monkeypatch.setattr(sitk.ImageFileWriter, "Execute", execute)
    with pytest.raises(mio.ImageWriteError, match=f"cannot write {tmp_path / name}: write failed") as error:
        write_label_volume(tmp_path / name, _labels(), np.eye(4))
    assert ".tmp" not in str(error.value)  # the user's path, never the temporary one
    assert os.listdir(tmp_path) == []


def test_written_nifti_is_gzip_compressed(tmp_path):
    path = write_label_volume(tmp_path / "mask.nii.gz", _labels(), np.eye(4))
    with gzip.open(path) as handle:
        assert len(handle.read(348)) == 348
