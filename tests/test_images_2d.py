"""2D images: reading rasters and DICOM (medsam_monai.images), MedSAM's 2D intensities
(medsam_monai.transforms.images), writing label images.

Real files only: scikit-image's bundled images saved by Pillow/tifffile, and pydicom's test files.
The references are independent reads (scikit-image's ``io.imread``, which MedSAM uses, SimpleITK's
GDCM, pydicom's own pixel functions) and a copy of MedSAM's ``utils/pre_grey_rgb.py`` below.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import skimage.data
import skimage.io
import tifffile
import torch
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.pixels import convert_color_space, pixel_array

from medsam_monai import images
from medsam_monai.images import (
    KIND_FRAMES,
    KIND_IMAGE_2D,
    KIND_VOLUME,
    check_label_image_path,
    input_kind,
    is_2d_image,
    read_image_2d,
    read_image_frames,
    write_label_image,
)
from medsam_monai.io import ImageReadError, ImageWriteError, read_volume
from medsam_monai.transforms import Medsam2DIntensity, Medsam2DIntensityd, medsam_2d_intensity

# --------------------------------------------------------------------------------------------
# references
# --------------------------------------------------------------------------------------------


def pre_grey_rgb(image_data: np.ndarray, do_intensity_cutoff: bool = False) -> np.ndarray:
    """MedSAM's ``utils/pre_grey_rgb.py`` (bowang-lab/MedSAM, main) for one image: the loop body from
    ``io.imread`` to ``image_data_pre``, its statements as written there."""
    if np.max(image_data) > 255.0:
        image_data = np.uint8((image_data - image_data.min()) / (np.max(image_data) - np.min(image_data)) * 255.0)
    if len(image_data.shape) == 2:
        image_data = np.repeat(np.expand_dims(image_data, -1), 3, -1)
    assert len(image_data.shape) == 3, "image data is not three channels"
    if image_data.shape[-1] > 3:
        image_data = image_data[:, :, :3]
    if do_intensity_cutoff:
        lower_bound, upper_bound = (
            np.percentile(image_data[image_data > 0], 0.5),
            np.percentile(image_data[image_data > 0], 99.5),
        )
        image_data_pre = np.clip(image_data, lower_bound, upper_bound)
        image_data_pre = (image_data_pre - np.min(image_data_pre)) / (np.max(image_data_pre) - np.min(image_data_pre)) * 255.0
        image_data_pre[image_data == 0] = 0
        image_data_pre = np.uint8(image_data_pre)
    else:
        image_data_pre = image_data.copy()
    return image_data_pre


def sitk_pixels(path: str | Path) -> np.ndarray:
    """SimpleITK's (GDCM's) read of a DICOM file: (F, H, W) or (F, H, W, 3)."""
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def dicom_test_file(name: str) -> str:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom's test file {name} is not installed")
    return path


def monochrome1_file() -> str:
    """A MONOCHROME1 computed radiograph among pydicom's test files (dicomdirtests/.../CR1/6154)."""
    root = Path(dicom_test_file("CT_small.dcm")).parent
    found = sorted(root.glob("dicomdirtests/**/CR1/6154"))
    if not found:
        pytest.skip("pydicom's MONOCHROME1 test file is not installed")
    return str(found[0])


def png_with_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width`` x ``height`` grey pixels (its data is one empty row)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b""))
    return path


def assert_one_line_naming(error: pytest.ExceptionInfo, path: Path | str) -> None:
    message = str(error.value)
    assert "\n" not in message and str(path) in message, message


# --------------------------------------------------------------------------------------------
# rasters
# --------------------------------------------------------------------------------------------

RASTERS = {
    "camera": skimage.data.camera(),  # grey (512, 512)
    "chelsea": skimage.data.chelsea(),  # RGB (300, 451, 3): not square, so rows and columns cannot swap unseen
}


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp", ".tif"])
@pytest.mark.parametrize("name", list(RASTERS))
def test_rasters_read_as_scikit_image_reads_them(tmp_path, name, suffix):
    path = tmp_path / f"{name}{suffix}"
    Image.fromarray(RASTERS[name]).save(path)
    image = read_image_2d(path)
    reference = skimage.io.imread(path)  # MedSAM_Inference.py's reader
    assert image.array.dtype == reference.dtype and np.array_equal(image.array, reference)
    assert image.shape == RASTERS[name].shape[:2] and image.is_rgb == (RASTERS[name].ndim == 3)
    assert image.source == str(path) and image.frame is None and image.frame_count == 1 and image.modality is None
    assert is_2d_image(path) and input_kind(path) == KIND_IMAGE_2D


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_grey_stays_uint16(tmp_path, suffix):
    values = skimage.data.camera().astype(np.uint16) * 257 + 7  # above 255: MedSAM min-maxes these
    path = tmp_path / f"grey16{suffix}"
    Image.fromarray(values).save(path)
    image = read_image_2d(path)
    assert image.array.dtype == np.uint16 and np.array_equal(image.array, values)
    assert np.array_equal(image.array, skimage.io.imread(path))


@pytest.mark.parametrize("planar", ["contig", "separate"])
def test_16_bit_rgb_tiff_is_not_narrowed_to_8_bits(tmp_path, planar):
    # Pillow alone reads these as 8-bit RGB; scikit-image (MedSAM) reads uint16
    values = skimage.data.chelsea().astype(np.uint16) * 250 + 3
    path = tmp_path / "rgb16.tif"
    tifffile.imwrite(path, values if planar == "contig" else np.moveaxis(values, -1, 0), photometric="rgb", planarconfig=planar)
    image = read_image_2d(path)
    assert image.array.dtype == np.uint16 and np.array_equal(image.array, values)
    assert np.array_equal(image.array, skimage.io.imread(path))


def test_palette_alpha_and_bilevel_modes(tmp_path):
    rgb = skimage.data.chelsea()
    Image.fromarray(rgb).convert("P").save(tmp_path / "palette.png")
    Image.fromarray(rgb).convert("RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(rgb[..., 0]).convert("LA").save(tmp_path / "la.png")
    Image.fromarray(rgb[..., 0]).convert("1").save(tmp_path / "bilevel.png")

    palette = read_image_2d(tmp_path / "palette.png")
    assert palette.mode == "P->RGB" and np.array_equal(palette.array, skimage.io.imread(tmp_path / "palette.png"))
    rgba = read_image_2d(tmp_path / "rgba.png")
    assert rgba.mode == "RGBA->RGB" and np.array_equal(rgba.array, skimage.io.imread(tmp_path / "rgba.png")[..., :3])
    la = read_image_2d(tmp_path / "la.png")
    assert la.array.ndim == 2 and np.array_equal(la.array, skimage.io.imread(tmp_path / "la.png")[..., 0])
    bilevel = read_image_2d(tmp_path / "bilevel.png")
    assert bilevel.array.dtype == np.uint8 and np.array_equal(bilevel.array, skimage.io.imread(tmp_path / "bilevel.png") * 255)


def test_float_tiff_and_its_resolution_as_spacing(tmp_path):
    values = skimage.data.camera().astype(np.float32) / 255.0
    Image.fromarray(values).save(tmp_path / "per_cm.tif", resolution=200.0, resolution_unit="cm")
    Image.fromarray(values).save(tmp_path / "per_inch.tif", resolution=254.0, resolution_unit="inch")
    per_cm = read_image_2d(tmp_path / "per_cm.tif")
    assert per_cm.array.dtype == np.float32 and np.array_equal(per_cm.array, values)
    assert per_cm.spacing == pytest.approx((0.05, 0.05))
    assert read_image_2d(tmp_path / "per_inch.tif").spacing == pytest.approx((0.1, 0.1))
    Image.fromarray(skimage.data.camera()).save(tmp_path / "plain.png")
    assert read_image_2d(tmp_path / "plain.png").spacing is None


def test_a_multi_page_tiff_needs_a_page(tmp_path):
    pages = [Image.fromarray(skimage.data.camera()), Image.fromarray(skimage.data.camera()[::-1].copy())]
    path = tmp_path / "stack.tif"
    pages[0].save(path, save_all=True, append_images=pages[1:])
    with pytest.raises(ImageReadError, match="a stack of 2 pages") as error:
        read_image_2d(path)
    assert_one_line_naming(error, path)
    second = read_image_2d(path, frame=1)
    assert np.array_equal(second.array, skimage.data.camera()[::-1]) and (second.frame, second.frame_count) == (1, 2)
    with pytest.raises(ImageReadError, match="no page 2"):
        read_image_2d(path, frame=2)


def test_broken_raster_files_are_one_line_errors(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(skimage.data.camera()).save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    jpeg = tmp_path / "good.jpg"
    Image.fromarray(skimage.data.chelsea()).save(jpeg)
    truncated_jpeg = tmp_path / "truncated.jpg"
    truncated_jpeg.write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 2])
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    five = tmp_path / "five.tif"
    tifffile.imwrite(five, np.zeros((20, 30, 5), np.uint8), photometric="minisblack", planarconfig="contig")
    huge = png_with_header(tmp_path / "huge.png", 17000, 17000)  # 289 M pixels > 2^28
    cases = {
        truncated: "truncated",
        truncated_jpeg: "truncated",
        corrupt: "not a readable image",
        empty: "empty file",
        five: "5 channels",
        huge: "too large",
        tmp_path / "missing.png": "no such file",
        tmp_path: "is a folder",
    }
    for path, reason in cases.items():
        with pytest.raises(ValueError, match=reason) as error:
            read_image_2d(path)
        assert_one_line_naming(error, path)


# --------------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "MR_small_bigendian.dcm", "MR_small_jp2klossless.dcm"]
)
def test_grey_dicom_equals_simpleitk(name):
    path = dicom_test_file(name)
    image = read_image_2d(path)
    reference = sitk_pixels(path)[0]
    assert image.array.shape == reference.shape and image.array.dtype.isnative
    assert np.array_equal(image.array, reference)
    assert image.mode == "MONOCHROME2" and image.modality == pydicom.dcmread(path).Modality
    assert is_2d_image(path)


def test_ct_slice_is_in_hounsfield_units_with_its_spacing():
    path = dicom_test_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    image = read_image_2d(path)
    expected = ds.pixel_array.astype(np.int64) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
    assert image.array.dtype == np.int32 and np.array_equal(image.array, expected)
    assert image.spacing == pytest.approx(tuple(float(v) for v in ds.PixelSpacing)) and image.modality == "CT"


def test_monochrome1_is_inverted_so_bright_means_dense():
    path = monochrome1_file()
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    image = read_image_2d(path)
    stored = ds.pixel_array.astype(np.float64)
    slope, intercept, top = float(ds.RescaleSlope), float(ds.RescaleIntercept), 2**ds.BitsStored - 1
    assert image.mode == "MONOCHROME1->MONOCHROME2"
    assert np.allclose(image.array, intercept + slope * (top - stored))  # the stored range, flipped, then rescaled
    assert np.allclose(image.array, sitk_pixels(path)[0])  # GDCM inverts MONOCHROME1 the same way
    assert np.corrcoef(image.array.ravel(), stored.ravel())[0, 1] < -0.99


def test_rgb_and_ybr_dicom_become_rgb():
    rgb_path = dicom_test_file("SC_rgb_rle.dcm")
    rgb = read_image_2d(rgb_path)
    assert rgb.mode == "RGB" and np.array_equal(rgb.array, pixel_array(rgb_path))

    ybr_path = dicom_test_file("SC_ybr_full_422_uncompressed.dcm")
    ybr = read_image_2d(ybr_path)
    raw = pixel_array(ybr_path, raw=True)  # the decoder upsamples 4:2:2 to YBR_FULL
    assert ybr.mode == "YBR_FULL_422->RGB" and np.array_equal(ybr.array, convert_color_space(raw, "YBR_FULL", "RGB"))
    assert np.array_equal(ybr.array, sitk_pixels(ybr_path)[0])
    # the same picture as the RGB file, within the rounding of a colour space round trip
    assert np.abs(ybr.array.astype(int) - rgb.array).mean() < 1.5

    jpeg_path = dicom_test_file("SC_rgb_dcmtk_+eb+cy+np.dcm")  # JPEG baseline, YBR_FULL_422
    jpeg = read_image_2d(jpeg_path)
    assert jpeg.mode == "YBR_FULL_422->RGB" and np.array_equal(jpeg.array, sitk_pixels(jpeg_path)[0])
    assert np.abs(jpeg.array.astype(int) - rgb.array).mean() < 5  # lossy, but no second colour conversion


def test_palette_colour_dicom_becomes_rgb_as_gdcm_does():
    path = dicom_test_file("examples_palette.dcm")
    image = read_image_2d(path)
    assert image.mode == "PALETTE COLOR->RGB" and image.array.dtype == np.uint8
    assert np.array_equal(image.array, sitk_pixels(path)[0])


def test_multi_frame_colour_is_frames_and_multi_frame_grey_a_volume():
    cine = dicom_test_file("examples_ybr_color.dcm")  # 30 frames of ultrasound, YBR_FULL_422 JPEG
    assert input_kind(cine) == KIND_FRAMES and not is_2d_image(cine)
    with pytest.raises(ImageReadError, match="a stack of 30 frames") as error:
        read_image_2d(cine)
    assert_one_line_naming(error, cine)
    frames = read_image_frames(cine)
    assert frames.array.shape == (30, 240, 320, 3) and frames.frame_count == 30 and frames.mode == "YBR_FULL_422->RGB"
    assert np.array_equal(frames.array, sitk_pixels(cine))
    fifth = read_image_2d(cine, frame=5)
    assert np.array_equal(fifth.array, frames.array[5]) and (fifth.frame, fifth.frame_count) == (5, 30)

    dose = dicom_test_file("rtdose.dcm")  # 15 grey frames with a grid
    assert input_kind(dose) == KIND_VOLUME and read_volume(dose).shape == (10, 10, 15)
    ds = pydicom.dcmread(dose)
    expected = ds.pixel_array[3]  # no rescale tags: the stored values, as read_volume holds them
    assert np.array_equal(read_image_2d(dose, frame=3).array, expected)
    assert np.array_equal(read_image_frames(dose).array, ds.pixel_array)


def test_transfer_syntaxes_pydicom_cannot_decode_go_through_simpleitk():
    # JPEG-LS and JPEG Lossless need pylibjpeg/gdcm in pydicom; SimpleITK's GDCM decodes them (or pydicom does, if installed)
    lossless = read_image_2d(dicom_test_file("MR_small_jpeg_ls_lossless.dcm"))
    assert np.array_equal(lossless.array, read_image_2d(dicom_test_file("MR_small.dcm")).array)
    rgb_lossless = read_image_2d(dicom_test_file("SC_rgb_jpeg_gdcm.dcm"))
    assert np.array_equal(rgb_lossless.array, read_image_2d(dicom_test_file("SC_rgb_rle.dcm")).array)


@pytest.mark.parametrize("name", ["CT_small.dcm", "SC_ybr_full_422_uncompressed.dcm", "examples_palette.dcm", "MONOCHROME1"])
def test_the_simpleitk_path_gives_what_the_pydicom_path_gives(monkeypatch, name):
    path = monochrome1_file() if name == "MONOCHROME1" else dicom_test_file(name)
    by_pydicom = read_image_2d(path)

    def no_decoder(ds, index):  # as if pydicom had no decoder installed
        raise images._NoDecoder("pydicom has no decoder installed for it")

    monkeypatch.setattr(images, "_decode_with_pydicom", no_decoder)
    by_sitk = read_image_2d(path)
    assert by_sitk.mode == by_pydicom.mode and by_sitk.array.shape == by_pydicom.array.shape
    assert np.allclose(by_sitk.array, by_pydicom.array)


def test_dicom_without_a_suffix_and_imager_pixel_spacing(tmp_path):
    ds = pydicom.dcmread(dicom_test_file("CT_small.dcm"))
    del ds.PixelSpacing
    ds.ImagerPixelSpacing = [0.2, 0.3]
    path = tmp_path / "IM0001"  # no suffix: the DICM marker says DICOM
    ds.save_as(path)
    assert is_2d_image(path)
    image = read_image_2d(path)
    assert image.spacing == pytest.approx((0.2, 0.3))
    assert np.array_equal(image.array, read_image_2d(dicom_test_file("CT_small.dcm")).array)


def test_broken_dicom_files_are_one_line_errors(tmp_path):
    huge, five, zero = (pydicom.dcmread(dicom_test_file("CT_small.dcm")) for _ in range(3))
    huge.Rows = huge.Columns = 20000
    five.SamplesPerPixel = 5
    zero.Rows = 0
    for name, ds in {"huge.dcm": huge, "five.dcm": five, "zero.dcm": zero}.items():
        ds.save_as(tmp_path / name)
    undecodable = tmp_path / "undecodable.dcm"
    ls = pydicom.dcmread(dicom_test_file("MR_small_jpeg_ls_lossless.dcm"))
    ls.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8" + b"\0" * 64])  # a JPEG-LS frame that is not one
    ls.save_as(undecodable)
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(np.random.default_rng(1).integers(0, 256, 2048, dtype=np.uint8).tobytes())
    cases = {
        tmp_path / "huge.dcm": "too large",
        tmp_path / "five.dcm": "5 samples per pixel",
        tmp_path / "zero.dcm": "empty image",
        Path(dicom_test_file("MR_truncated.dcm")): "cannot decode its pixel data",
        Path(dicom_test_file("rtstruct.dcm")): "no pixel data",
        garbage: "DICOM",
    }
    if not pydicom.pixels.get_decoder(ls.file_meta.TransferSyntaxUID).is_available:
        cases[undecodable] = "pydicom has no decoder installed for it, and SimpleITK's GDCM cannot either"
    for path, reason in cases.items():
        with pytest.raises(ImageReadError, match=reason) as error:
            read_image_2d(path)
        assert_one_line_naming(error, path)


def test_input_kind_of_volumes_and_folders(tmp_path):
    nifti = tmp_path / "ct.nii.gz"
    nifti.write_bytes(b"\0")
    assert input_kind(nifti) == KIND_VOLUME and input_kind(tmp_path) == KIND_VOLUME
    assert input_kind(tmp_path / "photo.JPG") == KIND_IMAGE_2D  # by name; reading says what is wrong


# --------------------------------------------------------------------------------------------
# MedSAM's 2D intensities
# --------------------------------------------------------------------------------------------


def intensity_inputs() -> dict[str, np.ndarray]:
    camera, chelsea = skimage.data.camera(), skimage.data.chelsea()
    ct = sitk_pixels(dicom_test_file("CT_small.dcm"))[0]  # int32 HU, negative and above 255
    return {
        "grey uint8": camera,
        "rgb uint8": chelsea,
        "rgba uint8": np.dstack([chelsea, np.full(chelsea.shape[:2], 200, np.uint8)]),
        "grey uint16": camera.astype(np.uint16) * 200 + 11,
        "rgb uint16": chelsea.astype(np.uint16) * 250,
        "grey uint16 within 8 bits": camera.astype(np.uint16),
        "ct int32": ct,
        "float32 above 255": camera.astype(np.float32) * 3.7 + 0.25,
    }


@pytest.mark.parametrize("percentile_clip", [False, True])
@pytest.mark.parametrize("name", list(intensity_inputs()))
def test_intensity_equals_medsam_pre_grey_rgb(name, percentile_clip):
    image = intensity_inputs()[name]
    ours = medsam_2d_intensity(image, percentile_clip=percentile_clip)
    reference = pre_grey_rgb(image, do_intensity_cutoff=percentile_clip)
    assert ours.dtype == np.uint8 and ours.shape == image.shape[:2] + (3,)
    assert np.array_equal(ours, reference.astype(np.uint8))


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif"])
def test_read_then_intensity_equals_medsam_reading_the_file(tmp_path, suffix):
    for name, values in {
        "grey": skimage.data.camera(),
        "rgb": skimage.data.chelsea(),
        "grey16": skimage.data.camera() * np.uint16(200),
    }.items():
        if suffix == ".jpg" and values.dtype != np.uint8:
            continue
        path = tmp_path / f"{name}{suffix}"
        Image.fromarray(values).save(path)
        ours = medsam_2d_intensity(read_image_2d(path).array)
        assert np.array_equal(ours, pre_grey_rgb(skimage.io.imread(path))), path


def test_intensity_where_medsam_gives_no_uint8_image():
    camera = skimage.data.camera()
    unit = camera.astype(np.float64) / 255.0  # fractions: min-maxed, not truncated to zeros
    expected = np.uint8((unit - unit.min()) / (unit.max() - unit.min()) * 255.0)
    assert np.array_equal(medsam_2d_intensity(unit)[..., 1], expected)
    negative = camera.astype(np.int16) - 100  # MedSAM's uint8 cast would wrap these
    assert np.array_equal(medsam_2d_intensity(negative)[..., 0], medsam_2d_intensity(camera)[..., 0])
    assert not medsam_2d_intensity(np.full((8, 9), 4000, np.uint16)).any()  # constant above 255 (MedSAM: 0 / 0)
    assert not medsam_2d_intensity(np.zeros((8, 9), np.uint8), percentile_clip=True).any()  # nothing > 0
    assert np.array_equal(medsam_2d_intensity(camera > 128)[..., 2], (camera > 128) * np.uint8(255))
    assert np.array_equal(medsam_2d_intensity(camera[..., None]), medsam_2d_intensity(camera))


def test_intensity_refuses_what_is_not_a_2d_image():
    bad = {
        "NaN": np.array([[1.0, np.nan], [0.0, 2.0]]),
        "got shape \\(4, 5, 2\\)": np.zeros((4, 5, 2)),
        "got shape \\(4, 5, 5\\)": np.zeros((4, 5, 5)),
        "got shape \\(2, 4, 5, 3\\)": np.zeros((2, 4, 5, 3)),
        "empty image": np.zeros((0, 5)),
    }
    for reason, image in bad.items():
        with pytest.raises(ValueError, match=reason) as error:
            medsam_2d_intensity(image)
        assert "\n" not in str(error.value)


def test_intensity_transforms_keep_the_container_and_keys():
    chelsea = skimage.data.chelsea()
    grey16 = skimage.data.camera().astype(np.uint16) * 200
    tensor = Medsam2DIntensity()(torch.from_numpy(grey16.astype(np.int32)))
    assert isinstance(tensor, torch.Tensor) and tensor.dtype == torch.uint8
    assert np.array_equal(tensor.numpy(), pre_grey_rgb(grey16))
    clipped = Medsam2DIntensity(percentile_clip=True)(grey16)
    assert isinstance(clipped, np.ndarray) and np.array_equal(clipped, pre_grey_rgb(grey16, do_intensity_cutoff=True))

    transform = Medsam2DIntensityd(keys=["image", "other"], allow_missing_keys=True)
    out = transform({"image": chelsea, "label": np.ones((2, 2))})
    assert np.array_equal(out["image"], chelsea) and out["image"] is not chelsea and "other" not in out
    assert np.array_equal(out["label"], np.ones((2, 2)))
    with pytest.raises(KeyError):
        Medsam2DIntensityd(keys=["other"])({"image": chelsea})


# --------------------------------------------------------------------------------------------
# label images
# --------------------------------------------------------------------------------------------


def labels_of(shape: tuple[int, int], top: int) -> np.ndarray:
    labels = np.zeros(shape, np.int64)
    labels[5:40, 10:60] = 1
    labels[50:90, 30:120] = top
    return labels


@pytest.mark.parametrize("suffix", [".png", ".tif", ".tiff", ".bmp"])
@pytest.mark.parametrize("top", [2, 300])
def test_label_images_round_trip(tmp_path, suffix, top):
    labels = labels_of((100, 151), top)
    path = tmp_path / "sub" / f"mask{suffix}"  # the missing folder is created
    if suffix == ".bmp" and top > 255:
        with pytest.raises(ValueError, match="BMP holds labels up to 255"):
            write_label_image(path, labels)
        return
    assert write_label_image(path, labels) == path
    with Image.open(path) as written:
        assert written.mode == ("L" if top <= 255 else "I;16")
        assert np.array_equal(np.asarray(written), labels)
    assert np.array_equal(skimage.io.imread(path), labels)  # what MedSAM's scripts read labels with
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


def test_label_image_types_and_values_are_checked(tmp_path):
    labels = labels_of((100, 151), 2)
    refused = {
        tmp_path / "mask.jpg": "lossy",
        tmp_path / "mask.JPEG": "lossy",
        tmp_path / "mask.gif": "unsupported label image type",
    }
    for path, reason in refused.items():
        with pytest.raises(ValueError, match=reason):
            write_label_image(path, labels)
    bad_labels = [
        (labels.astype(np.float32), "integers"),
        (labels - 1, "0..65535"),
        (labels + 70000, "0..65535"),
        (labels[None], "2D array"),
    ]
    for bad, reason in bad_labels:
        with pytest.raises(ValueError, match=reason):
            write_label_image(tmp_path / "mask.png", bad)
    write_label_image(tmp_path / "bool.png", labels > 0)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "bool.png")), labels > 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bool.png"]


def test_label_image_writes_are_atomic_and_follow_the_umask(tmp_path, monkeypatch):
    path = tmp_path / "mask.png"
    previous = os.umask(0o027)
    try:
        write_label_image(path, labels_of((100, 151), 2))
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o640
    before = path.read_bytes()

    def failing_save(self, target, *args, **kwargs):
        Path(target).write_bytes(b"half a PNG")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(ImageWriteError, match="No space left") as error:
        write_label_image(path, labels_of((100, 151), 3))
    assert str(path) in str(error.value) and ".tmp" not in str(error.value)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["mask.png"]


def test_label_image_paths_are_checked_before_work(tmp_path):
    source = tmp_path / "image.png"
    Image.fromarray(skimage.data.camera()).save(source)
    before = source.read_bytes()
    with pytest.raises(ValueError, match="protected input"):
        write_label_image(source, labels_of((512, 512), 1), protect=[source])
    with pytest.raises(ValueError, match="protected input"):
        check_label_image_path(tmp_path / "." / "image.png", protect=[source])
    assert source.read_bytes() == before
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(ValueError, match="is a folder"):
        check_label_image_path(tmp_path / "folder.png")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        check_label_image_path(source / "mask.png")
    with pytest.raises(ValueError, match="lossy"):
        check_label_image_path(tmp_path / "mask.jpg")
    assert check_label_image_path(tmp_path / "new" / "mask.png") == tmp_path / "new" / "mask.png"
    assert not (tmp_path / "new").exists()
