"""Inputs that must be refused (corrupt compression, complex voxels, unknown voxel sizes), NIfTI
header codes that must survive into the label output, and outputs checked before the run."""

from __future__ import annotations

import gzip
import os
import struct
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from helpers import read_error_line

from medsam_monai import io as mio
from medsam_monai.cli import main
from medsam_monai.io import (
    ImageWriteError,
    check_output_path,
    read_volume,
    write_label_volume,
    write_volume,
)

NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"
ANATOMICAL = NIBABEL_DATA / "anatomical.nii"  # qform and sform code 2 (aligned)


def _anatomical() -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(ANATOMICAL)
    return np.asanyarray(image.dataobj).astype(np.int16), image.affine


# ------------------------------------------------------------------------------------------
# Corrupt compressed input (issue 13.6)
# ------------------------------------------------------------------------------------------


def _zero_middle(data: bytes, count: int = 100) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes(count) + data[middle + count :]


def _real_files(folder: Path) -> dict[str, Path]:
    """nibabel's anatomical.nii as gzip NIfTI (compressed here: the bytes are nibabel's own), MGZ,
    NRRD (gzip encoding), MetaImage (zlib) and a detached MetaImage .mhd + .zraw."""
    array, affine = _anatomical()
    files = {
        ".nii.gz": folder / "anat.nii.gz",
        ".mgz": folder / "anat.mgz",
        ".nrrd": folder / "anat.nrrd",
        ".mha": folder / "anat.mha",
    }
    files[".nii.gz"].write_bytes(gzip.compress(ANATOMICAL.read_bytes()))
    nib.save(nib.MGHImage(array.astype(np.int32), affine), files[".mgz"])
    write_volume(files[".nrrd"], array, affine)
    write_volume(files[".mha"], array, affine)
    image = sitk.ReadImage(str(files[".mha"]))
    sitk.WriteImage(image, str(folder / "anat.mhd"), True)  # anat.mhd + anat.zraw
    sitk.WriteImage(image, str(folder / "anat.nhdr"), True)  # anat.nhdr + anat.raw.gz
    files[".zraw"], files[".raw.gz"] = folder / "anat.zraw", folder / "anat.raw.gz"
    return files


DETACHED_HEADERS = {".zraw": "anat.mhd", ".raw.gz": "anat.nhdr"}


@pytest.mark.parametrize("suffix", [".nii.gz", ".mgz", ".nrrd", ".mha", ".zraw", ".raw.gz"])
@pytest.mark.parametrize("damage", ["100 bytes zeroed", "trailer cut", "half cut"])
def test_corrupt_compressed_input_is_refused(tmp_path, suffix, damage):
    files = _real_files(tmp_path)
    damaged = files[suffix]
    read = tmp_path / DETACHED_HEADERS[suffix] if suffix in DETACHED_HEADERS else damaged
    expected = read_volume(read).array
    np.testing.assert_array_equal(expected.astype(np.int16), _anatomical()[0])  # intact: reads as it was written
    data = damaged.read_bytes()
    if damage == "100 bytes zeroed":
        damaged.write_bytes(_zero_middle(data))
    elif damage == "trailer cut":
        damaged.write_bytes(data[:-4])
    else:
        damaged.write_bytes(data[: len(data) // 2])
    message = read_error_line(read, "corrupt (gzip|zlib)-compressed data")
    assert "refusing to read damaged voxels" in message


def test_a_corrupt_nii_gz_is_refused_by_the_cli(tmp_path, capfd):
    corrupt = tmp_path / "ct.nii.gz"
    corrupt.write_bytes(_zero_middle(gzip.compress(ANATOMICAL.read_bytes())))
    out = tmp_path / "mask.nii.gz"
    assert main(["segment", str(corrupt), "--box", "1,1,1,4,4,4", "--out", str(out), "--variant", "tiny"]) == 2
    err = capfd.readouterr().err
    assert err.startswith("medsam: error: ") and err.count("\n") == 1 and "CRC check failed" in err
    assert not out.exists()


def test_a_truncated_raw_metaimage_is_one_line_without_metaio_text(tmp_path, capfd):
    array, affine = _anatomical()
    path = tmp_path / "raw.mha"
    sitk.WriteImage(mio.sitk_from_array(array, affine), str(path), False)  # uncompressed
    path.write_bytes(path.read_bytes()[:-100])
    capfd.readouterr()
    read_error_line(path, "unsupported or unreadable")
    assert capfd.readouterr().err == ""  # MetaIO's "data not read completely" stays off the terminal


# ------------------------------------------------------------------------------------------
# Complex voxels and unknown voxel sizes (issue 14.10)
# ------------------------------------------------------------------------------------------


def test_complex_voxels_are_refused(tmp_path):
    array, affine = _anatomical()
    complex_array = (array + 1j * array[::-1]).astype(np.complex64)
    nib.save(nib.Nifti1Image(complex_array, affine), tmp_path / "c.nii.gz")
    read_error_line(tmp_path / "c.nii.gz", r"complex-valued voxels \(complex64\).*save the magnitude")
    sitk.WriteImage(sitk.GetImageFromArray(complex_array.transpose(2, 1, 0)), str(tmp_path / "c.nrrd"))
    read_error_line(tmp_path / "c.nrrd", "complex-valued voxels")


def _with_pixdim(path: Path, axis: int, value: float) -> Path:
    """The file with header pixdim[axis] (1..3) overwritten in place, as a broken converter writes it."""
    data = bytearray(path.read_bytes())
    endian = ">" if struct.unpack("<i", data[:4])[0] != 348 else "<"
    data[76 + 4 * axis : 80 + 4 * axis] = struct.pack(f"{endian}f", value)
    path.write_bytes(bytes(data))
    return path


def _qform_only_copy(folder: Path) -> Path:
    header = nib.load(ANATOMICAL).header.copy()
    header.set_sform(None, code=0)
    path = folder / "qform_only.nii"
    nib.save(nib.Nifti1Image(_anatomical()[0], None, header), path)
    return path


@pytest.mark.parametrize("value", [0.0, -2.0, float("nan"), float("inf")])
def test_unknown_voxel_size_is_refused_not_taken_for_1_mm(tmp_path, capfd, value):
    path = _with_pixdim(_qform_only_copy(tmp_path), 3, value)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no Python warning either: it would print two lines on the terminal
        message = read_error_line(path, "voxel size \\(pixdim\\) .* along k and no sform; refusing to assume 1 mm")
    assert f"{value:g}" in message
    assert capfd.readouterr().err == ""  # nibabel's "setting 0 dims to 1" is not printed either


def test_a_zero_pixdim_beside_an_sform_is_harmless(tmp_path, capfd):
    path = tmp_path / "anat.nii"
    path.write_bytes(ANATOMICAL.read_bytes())
    _with_pixdim(path, 3, 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        volume = read_volume(path)
    np.testing.assert_allclose(volume.affine, nib.load(ANATOMICAL).affine)  # the sform gives the geometry
    assert capfd.readouterr().err == ""


def test_a_non_finite_affine_is_refused(tmp_path):
    header = nib.load(ANATOMICAL).header.copy()
    sform = header.get_sform()
    sform[2, 3] = np.nan
    header.set_sform(sform, code=2)
    nib.save(nib.Nifti1Image(_anatomical()[0], None, header), tmp_path / "nan.nii")
    read_error_line(tmp_path / "nan.nii", "no usable voxel-to-world geometry")


# ------------------------------------------------------------------------------------------
# NIfTI qform/sform codes kept in the label output (issue 13.7)
# ------------------------------------------------------------------------------------------


def _codes(path: Path) -> tuple[int, int]:
    header = nib.load(path).header
    return int(header["qform_code"]), int(header["sform_code"])


def _labels_like(path: Path, out: Path) -> Path:
    volume = read_volume(path)
    return write_label_volume(out, (volume.array > np.median(volume.array)).astype(np.uint8), volume.affine, nifti=volume.nifti)


@pytest.mark.parametrize("name", ["anatomical.nii", "standard.nii.gz", "reoriented_anat_moved.nii"])
def test_nibabel_files_keep_their_codes(tmp_path, name):
    source = NIBABEL_DATA / name
    out = _labels_like(source, tmp_path / "labels.nii.gz")
    assert _codes(out) == _codes(source)
    np.testing.assert_allclose(nib.load(out).affine, nib.load(source).affine, atol=1e-5)


def _header_with(codes: tuple[int, int], qform: np.ndarray, sform: np.ndarray) -> nib.Nifti1Header:
    header = nib.Nifti1Header()
    header.set_data_shape((6, 7, 8))
    header.set_data_dtype(np.int16)
    header.set_qform(qform, code=codes[0])
    header.set_sform(sform, code=codes[1])
    return header


OBLIQUE = np.array([[0.0, -2.0, 0.0, 10.0], [1.5, 0.0, 0.0, -20.0], [0.0, 0.0, 3.0, 5.0], [0.0, 0.0, 0.0, 1.0]])


@pytest.mark.parametrize("codes", [(1, 0), (0, 1), (2, 0), (0, 0), (1, 2), (3, 4)])
def test_crafted_codes_stay_as_they_were(tmp_path, codes):
    source = tmp_path / "source.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((6, 7, 8), np.int16), None, _header_with(codes, OBLIQUE, OBLIQUE)), source)
    out = _labels_like(source, tmp_path / "labels.nii")
    assert _codes(out) == codes
    np.testing.assert_allclose(read_volume(out).affine, read_volume(source).affine, atol=1e-5)


def test_a_qform_unlike_the_sform_is_kept_on_the_same_grid(tmp_path):
    qform = OBLIQUE.copy()
    qform[:3, 3] += (4.0, -3.0, 2.0)  # the scanner frame, shifted from the aligned sform
    source = tmp_path / "source.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((6, 7, 8), np.int16), None, _header_with((1, 2), qform, OBLIQUE)), source)
    written = nib.load(_labels_like(source, tmp_path / "labels.nii.gz"))
    np.testing.assert_allclose(written.get_qform(), qform, atol=1e-5)
    np.testing.assert_allclose(written.get_sform(), OBLIQUE, atol=1e-5)


def test_codes_never_cost_the_geometry(tmp_path):
    source = tmp_path / "source.nii"
    nib.save(nib.Nifti1Image(np.zeros((6, 7, 8), np.int16), None, _header_with((0, 0), OBLIQUE, OBLIQUE)), source)
    volume = read_volume(source)
    moved = volume.affine.copy()
    moved[:3, 3] += 7.0  # another grid: codes 0 would lose this origin
    out = write_label_volume(tmp_path / "labels.nii.gz", np.zeros(volume.shape, np.uint8), moved, nifti=volume.nifti)
    assert _codes(out) == (1, 1)
    np.testing.assert_allclose(read_volume(out).affine, moved, atol=1e-5)


def test_non_nifti_inputs_give_scanner_codes(tmp_path):
    array, affine = _anatomical()
    write_volume(tmp_path / "a.nrrd", array, affine)
    volume = read_volume(tmp_path / "a.nrrd")
    assert volume.nifti is None
    assert _codes(write_label_volume(tmp_path / "l.nii.gz", np.zeros(volume.shape, np.uint8), volume.affine)) == (1, 1)


def test_write_volume_keeps_the_codes_too(tmp_path):
    volume = read_volume(ANATOMICAL)
    out = write_volume(tmp_path / "copy.nii.gz", volume.array, volume.affine, nifti=volume.nifti)
    assert _codes(out) == (2, 2)


# ------------------------------------------------------------------------------------------
# Outputs checked before the run, messages with the user's path (issue 13.8)
# ------------------------------------------------------------------------------------------


@pytest.fixture
def a_file(tmp_path) -> Path:
    path = tmp_path / "notes.txt"
    path.write_text("a file, not a folder\n")
    return path


@pytest.mark.parametrize(
    "make_out, message",
    [
        (lambda f: Path("/proc/x.nii.gz"), "cannot write /proc/x.nii.gz: folder /proc is not writable"),
        (lambda f: f / "mask.nii.gz", "is a file, not a folder"),
        (lambda f: f / "deeper" / "mask.nrrd", "is a file, not a folder"),
        (lambda f: Path("/sys/x.mha"), "cannot write /sys/x.mha: folder /sys is not writable"),
        (lambda f: Path("/sys/new/x.mha"), "/sys/new cannot be created in /sys, which is not writable"),
    ],
)
def test_unwritable_outputs_are_found_before_the_run(a_file, make_out, message):
    out = make_out(a_file)
    with pytest.raises(ValueError, match=message):
        check_output_path(out)


def test_the_type_alone_can_be_checked_without_the_folder():
    assert mio.check_output_type("/proc/x.seg.nrrd") == ".seg.nrrd"
    with pytest.raises(ValueError, match="unsupported output type"):
        mio.check_output_type("/proc/x.png")


def test_a_missing_folder_passes_the_check_and_is_not_created(tmp_path):
    out = tmp_path / "new" / "dir" / "mask.nii.gz"
    assert check_output_path(out) == out
    assert not (tmp_path / "new").exists() and os.listdir(tmp_path) == []


@pytest.mark.parametrize("out", ["/proc/x.nii.gz", "/proc/x.nrrd", "/sys/x.seg.nrrd"])
def test_write_errors_name_the_users_path_never_a_temporary_one(out):
    with pytest.raises(ImageWriteError) as error:
        write_label_volume(out, np.zeros((3, 4, 5), np.uint8), np.eye(4))
    message = str(error.value)
    assert message.startswith(f"cannot write {out}: ") and ".tmp" not in message and "\n" not in message


def test_write_error_into_a_file_parent_names_it(a_file):
    with pytest.raises(ImageWriteError, match=f"cannot write {a_file}/m.nii.gz: {a_file} is a file, not a folder"):
        write_label_volume(a_file / "m.nii.gz", np.zeros((3, 4, 5), np.uint8), np.eye(4))


@pytest.mark.parametrize("out", ["/proc/x.nii.gz", "NOTES/mask.nii.gz"])
def test_cli_refuses_an_unwritable_output_before_the_model_loads(tmp_path, a_file, capfd, monkeypatch, out):
    import medsam_monai.cli.segment as segment_command

    monkeypatch.setattr(segment_command, "load_predictor", lambda args: pytest.fail("the model must not load"))
    out = out.replace("NOTES", str(a_file))
    assert main(["segment", str(ANATOMICAL), "--box", "1,1,1,4,4,4", "--out", out, "--variant", "tiny"]) == 2
    err = capfd.readouterr().err
    assert err.startswith(f"medsam: error: cannot write {out}: ") and err.count("\n") == 1


def test_cli_label_output_keeps_the_input_codes(tmp_path):
    out = tmp_path / "mask.nii.gz"
    assert (
        main(["segment", str(ANATOMICAL), "--box", "5,10,5,30,38,6", "--modality", "mr", "--out", str(out), "--variant", "tiny"])
        == 0
    )
    assert _codes(out) == _codes(ANATOMICAL) == (2, 2)
