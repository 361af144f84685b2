"""2D images (X-ray, ultrasound, endoscopy, dermoscopy, fundus, pathology) as MedSAM inputs, and 2D label images.

MedSAM was trained on ten modalities, most of them 2D. This module reads them as they are stored and
writes label images; it knows nothing of the network (MedSAM's 2D intensity rules are
:func:`medsam_monai.transforms.medsam_2d_intensity`).

What goes where (:func:`input_kind`):

- ``"image_2d"``: a raster file (:data:`IMAGE_2D_SUFFIXES`) or a DICOM file holding one frame (a
  radiograph, an ultrasound or endoscopy still, one CT/MR slice): :func:`read_image_2d`.
- ``"frames"``: a multi-frame *colour* DICOM (an ultrasound or endoscopy cine): its frames have no
  3D geometry and :func:`medsam_monai.io.read_volume` cannot hold colour, so :func:`read_image_frames`
  reads them as a stack (F, H, W, 3) and :func:`read_image_2d` reads one frame (``frame=``).
- ``"volume"``: anything else, a multi-frame *grey* DICOM included (enhanced CT/MR, RT dose, grey
  cines): :func:`medsam_monai.io.read_volume`, which keeps the geometry. :func:`read_image_2d` can
  still read one of its frames.

Readers, the real libraries only: Pillow for PNG/JPEG/TIFF/BMP (tifffile, scikit-image's own TIFF
reader, where Pillow would narrow the data: colour TIFFs above 8 bits per sample); pydicom for DICOM
(its own decoders, with SimpleITK's GDCM for transfer syntaxes pydicom has no installed decoder for,
such as JPEG Lossless and JPEG-LS without pylibjpeg). Pixel arrays are rows x columns as stored: the
box ``X0,Y0,X1,Y1`` of a 2D image is in these columns (x) and rows (y); EXIF orientation is not
applied (nor does MedSAM's ``skimage.io.imread``). Errors are one-line
:class:`~medsam_monai.io.ImageReadError` (a ValueError) naming the file.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pydicom
import SimpleITK as sitk
from PIL import Image, UnidentifiedImageError
from pydicom.pixels import apply_color_lut, apply_modality_lut, get_decoder

from .errors import one_line
from .io import (
    ImageReadError,
    PathType,
    check_writable_folder,
    is_same_file,
    native_output_captured,
    write_file_atomically,
)

#: Raster files read as 2D images (case-insensitive).
IMAGE_2D_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
#: Names that claim DICOM; a file without one is DICOM when it carries the ``DICM`` marker.
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
#: Label image types :func:`write_label_image` writes (lossless; JPEG is refused).
LABEL_IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".bmp")
#: Largest image read, in pixels per frame (2^28: 16384 x 16384); whole-slide pathology needs tiling first.
#: Pillow refuses rasters above twice its own ``Image.MAX_IMAGE_PIXELS`` (179 M pixels by default) earlier.
MAX_IMAGE_PIXELS = 1 << 28

#: :func:`input_kind` answers.
KIND_IMAGE_2D = "image_2d"
KIND_FRAMES = "frames"
KIND_VOLUME = "volume"

_PIXEL_DATA_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # PixelData, FloatPixelData, DoubleFloatPixelData
_COLOUR_PHOTOMETRICS = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_PARTIAL_420", "YBR_ICT", "YBR_RCT", "PALETTE COLOR")
_GREY_PHOTOMETRICS = ("MONOCHROME1", "MONOCHROME2")


@dataclass(eq=False)
class Image2D:
    """One 2D image as read.

    Attributes:
        array: (H, W) grey or (H, W, 3) RGB, rows x columns as stored; dtype as read: uint8, uint16
            (16-bit PNG/TIFF, DICOM), int16/int32 (DICOM; int32 after an integral rescale, e.g. CT
            HU), float32/float64 (float TIFF, DICOM with a fractional rescale).
        spacing: (row, column) pixel size in mm, or None: DICOM PixelSpacing, else ImagerPixelSpacing;
            TIFF X/YResolution in pixels per inch or cm; other rasters None.
        source: the path read.
        mode: how it was stored: Pillow's mode (``"L"``, ``"RGB"``, ``"I;16"``, ``"P->RGB"``,
            ``"RGBA->RGB"``) or the DICOM photometric interpretation (``"MONOCHROME2"``,
            ``"MONOCHROME1->MONOCHROME2"``, ``"YBR_FULL_422->RGB"``, ``"PALETTE COLOR->RGB"``).
        modality: the DICOM Modality (``"CT"``, ``"US"``, ``"CR"``, ...), None for rasters.
        frame: the frame read from a file holding several, else None.
        frame_count: how many frames (DICOM) or pages (TIFF) the file holds.
    """

    array: np.ndarray
    spacing: tuple[float, float] | None
    source: str
    mode: str
    modality: str | None = None
    frame: int | None = None
    frame_count: int = 1

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W): rows, columns."""
        return int(self.array.shape[0]), int(self.array.shape[1])

    @property
    def is_rgb(self) -> bool:
        return self.array.ndim == 3


@dataclass(eq=False)
class ImageFrames:
    """The frames of a multi-frame DICOM: ``array`` (F, H, W) grey or (F, H, W, 3) RGB; the rest as :class:`Image2D`."""

    array: np.ndarray
    spacing: tuple[float, float] | None
    source: str
    mode: str
    modality: str | None = None

    @property
    def frame_count(self) -> int:
        return int(self.array.shape[0])


# --------------------------------------------------------------------------------------------
# What a path holds
# --------------------------------------------------------------------------------------------


def _has_suffix(path: Path, suffixes: Iterable[str]) -> bool:
    name = path.name.lower()
    return any(name.endswith(s) and len(name) > len(s) for s in suffixes)


def _head(path: Path) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(132)
    except OSError:
        return b""


def _has_dicom_marker(path: Path) -> bool:
    return _head(path)[128:132] == b"DICM"


def _claims_dicom(path: Path) -> bool:
    return _has_suffix(path, DICOM_SUFFIXES) or _has_dicom_marker(path)


@contextmanager
def _pydicom_quiet() -> Iterator[None]:
    """pydicom warns about odd header values as they are read (lazily, on access); what matters is checked here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def input_kind(path: PathType) -> str:
    """Which reader a path needs: :data:`KIND_IMAGE_2D`, :data:`KIND_FRAMES` or :data:`KIND_VOLUME` (see the module doc).

    Looks at the name and, for DICOM, the header only. A DICOM file whose header cannot be read is
    called a 2D image, so that :func:`read_image_2d` reports why; a folder is a volume (a DICOM series).
    """
    p = Path(path)
    if p.is_dir():
        return KIND_VOLUME
    if _has_suffix(p, IMAGE_2D_SUFFIXES):
        return KIND_IMAGE_2D
    if not p.is_file() or not _claims_dicom(p):
        return KIND_VOLUME
    try:
        with _pydicom_quiet():
            ds = pydicom.dcmread(p, stop_before_pixels=True, force=not _has_dicom_marker(p))
            frames = int(ds.get("NumberOfFrames", 1) or 1)
            samples = int(ds.get("SamplesPerPixel", 1) or 1)
            palette = str(ds.get("PhotometricInterpretation", "")).strip().upper() == "PALETTE COLOR"
    except Exception:  # pydicom raises many types for damaged files; read_image_2d names the reason
        return KIND_IMAGE_2D
    if frames <= 1:
        return KIND_IMAGE_2D
    return KIND_FRAMES if samples > 1 or palette else KIND_VOLUME


def is_2d_image(path: PathType) -> bool:
    """True for a raster file (:data:`IMAGE_2D_SUFFIXES`) or a one-frame DICOM file; see :func:`input_kind`."""
    return input_kind(path) == KIND_IMAGE_2D


# --------------------------------------------------------------------------------------------
# Checks shared by the readers
# --------------------------------------------------------------------------------------------


def _reason(error: BaseException) -> str:
    """An exception's message on one line, at most 200 characters (pydicom's list every plugin)."""
    text = one_line(error)
    return text[:200] + ("..." if len(text) > 200 else "")


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise ImageReadError(f"{path}: no such file")
    if path.is_dir():
        raise ImageReadError(f"{path}: is a folder, not a 2D image file")
    try:
        size = path.stat().st_size
    except OSError as error:
        raise ImageReadError(f"{path}: cannot read: {error.strerror or error}") from None
    if size == 0:
        raise ImageReadError(f"{path}: empty file (0 bytes)")


def _check_size(path: Path, rows: int, columns: int) -> None:
    if rows <= 0 or columns <= 0:
        raise ImageReadError(f"{path}: empty image ({rows} x {columns} pixels)")
    if rows * columns > MAX_IMAGE_PIXELS:
        raise ImageReadError(
            f"{path}: {columns} x {rows} pixels is too large for a 2D image (at most {MAX_IMAGE_PIXELS} pixels); "
            "downsample or tile it first"
        )


def _frame_index(path: Path, frame: int | None, count: int, unit: str) -> int:
    """The 0-based frame (DICOM) or page (TIFF) to read; a file of several needs ``frame``."""
    if frame is None:
        if count == 1:
            return 0
        hint = "" if unit == "frame" else "; save a 3D stack as a volume (.nii.gz, .nrrd, .mha)"
        raise ImageReadError(f"{path}: a stack of {count} {unit}s, not one 2D image: choose one ({unit} 0..{count - 1}){hint}")
    if isinstance(frame, bool) or not isinstance(frame, (int, np.integer)) or not 0 <= int(frame) < count:
        raise ImageReadError(f"{path}: no {unit} {frame!r}; it holds {count} ({unit} 0..{count - 1})")
    return int(frame)


def _native(array: np.ndarray) -> np.ndarray:
    """The same values in native byte order (big-endian arrays trouble torch and Pillow's writers)."""
    return array if array.dtype.isnative else array.astype(array.dtype.newbyteorder("="))


def _positive_pair(values: Any) -> tuple[float, float] | None:
    try:
        a, b = (float(v) for v in values)
    except (TypeError, ValueError):
        return None
    return (a, b) if all(math.isfinite(v) and v > 0 for v in (a, b)) else None


# --------------------------------------------------------------------------------------------
# Rasters: Pillow (tifffile for what Pillow would narrow)
# --------------------------------------------------------------------------------------------

# Pillow mode -> (mode converted to, how the mode string reads). Alpha is dropped (not composited):
# MedSAM's pre_grey_rgb.py keeps the first three channels too.
_PILLOW_CONVERSIONS = {
    "1": ("L", "1->L"),
    "LA": ("L", "LA->L"),
    "La": ("L", "La->L"),
    "P": ("RGB", "P->RGB"),
    "PA": ("RGB", "PA->RGB"),
    "RGBA": ("RGB", "RGBA->RGB"),
    "RGBa": ("RGB", "RGBa->RGB"),
    "RGBX": ("RGB", "RGBX->RGB"),
    "CMYK": ("RGB", "CMYK->RGB"),
    "YCbCr": ("RGB", "YCbCr->RGB"),
}
_PILLOW_KEPT = ("L", "RGB", "I", "F", "I;16", "I;16L", "I;16B", "I;16N")

# TIFF tag numbers (Pillow's tag_v2 keys; tifffile names them)
_TIFF_X_RESOLUTION, _TIFF_Y_RESOLUTION, _TIFF_RESOLUTION_UNIT = 282, 283, 296
_MM_PER_UNIT = {2: 25.4, 3: 10.0}  # ResolutionUnit: 2 inch, 3 cm (1 means no absolute unit)


def _pillow_array(image: Image.Image, path: Path) -> tuple[np.ndarray, str]:
    """The pixels of an opened Pillow image: (H, W) or (H, W, 3), and the mode string."""
    mode = image.mode
    if mode in _PILLOW_CONVERSIONS:
        target, described = _PILLOW_CONVERSIONS[mode]
        return np.asarray(image.convert(target)), described
    if mode not in _PILLOW_KEPT:
        raise ImageReadError(f"{path}: unsupported pixel mode {mode!r}; save it as grey or RGB")
    array = _native(np.asarray(image))
    return (array.astype(np.uint16) if mode.startswith("I;16") else array), mode


def _tiff_spacing(x_resolution: Any, y_resolution: Any, unit: Any) -> tuple[float, float] | None:
    """(row, column) mm from TIFF X/YResolution (pixels per unit, numbers or (numerator, denominator))."""
    mm = _MM_PER_UNIT.get(int(unit)) if isinstance(unit, (int, np.integer)) else None
    if mm is None:
        return None

    def ratio(value: Any) -> float:
        if isinstance(value, tuple) and len(value) == 2:
            return float(value[0]) / float(value[1]) if float(value[1]) else math.nan
        return float(value)

    try:
        per_row, per_column = ratio(y_resolution), ratio(x_resolution)
    except (TypeError, ValueError):
        return None
    return _positive_pair((mm / per_row, mm / per_column)) if per_row > 0 and per_column > 0 else None


def _pillow_spacing(image: Image.Image) -> tuple[float, float] | None:
    tags = getattr(image, "tag_v2", None)
    if tags is None:
        return None
    return _tiff_spacing(tags.get(_TIFF_X_RESOLUTION), tags.get(_TIFF_Y_RESOLUTION), tags.get(_TIFF_RESOLUTION_UNIT, 2))


def _tifffile() -> ModuleType | None:
    """tifffile (a scikit-image dependency, MedSAM's TIFF reader through ``skimage.io``), imported late: few files need it."""
    try:
        import tifffile
    except ImportError:  # pragma: no cover - installed with scikit-image
        return None
    return tifffile


def _tiff_page_checks(path: Path, page: Any) -> bool:
    """Refuse TIFF pages MedSAM cannot take; True when Pillow would narrow this page (colour above 8 bits)."""
    samples = int(page.samplesperpixel)
    if samples > 4:
        raise ImageReadError(f"{path}: {samples} channels per pixel; a 2D image has 1 (grey), 3 (RGB) or 4 (RGBA)")
    if int(getattr(page, "imagedepth", 1) or 1) > 1:
        raise ImageReadError(f"{path}: a 3D TIFF ({page.imagedepth} planes deep); save a volume as .nii.gz, .nrrd or .mha")
    grey = page.photometric in (0, 1)  # MINISWHITE, MINISBLACK
    if grey and samples > 2:
        raise ImageReadError(
            f"{path}: {samples} grey samples per pixel (a stack of planes, not a colour image); "
            "save a stack as a volume (.nii.gz, .nrrd, .mha) or one plane per file"
        )
    bits = page.bitspersample if isinstance(page.bitspersample, int) else max(page.bitspersample)
    return samples >= 3 and (bits > 8 or page.sampleformat == 3)


def _tiff_with_tifffile(path: Path, frame: int | None) -> Image2D | None:
    """A TIFF page read with tifffile when Pillow would narrow it, after the checks; None: Pillow reads it."""
    tifffile = _tifffile()
    if tifffile is None:
        return None
    try:
        with tifffile.TiffFile(path) as tif:
            count = len(tif.pages)
            index = _frame_index(path, frame, count, "page")
            page = tif.pages[index]
            if not _tiff_page_checks(path, page):
                return None
            if page.photometric != 2:  # RGB
                raise ImageReadError(f"{path}: colour TIFF with photometric {page.photometric!r}; save it as RGB")
            _check_size(path, int(page.imagelength), int(page.imagewidth))
            array = page.asarray()
            if page.axes.startswith("S"):  # planar configuration "separate": (S, H, W)
                array = np.moveaxis(array, 0, -1)
            tags = page.tags
            spacing = _tiff_spacing(
                *(tags[name].value if name in tags else None for name in ("XResolution", "YResolution")),
                int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2,
            )
    except ImageReadError:
        raise
    except Exception as error:  # tifffile raises many types for damaged files
        raise ImageReadError(f"{path}: cannot read the TIFF: {_reason(error)}") from None
    mode = f"RGB;{array.dtype.itemsize * 8}" if array.shape[-1] == 3 else f"RGBA;{array.dtype.itemsize * 8}->RGB"
    return Image2D(_native(array[..., :3]), spacing, str(path), mode, None, index if count > 1 else None, count)


def _read_raster(path: Path, frame: int | None) -> Image2D:
    if _has_suffix(path, (".tif", ".tiff")):
        read = _tiff_with_tifffile(path, frame)
        if read is not None:
            return read
    try:
        with warnings.catch_warnings():
            # Pillow's DecompressionBombWarning (the limit here is MAX_IMAGE_PIXELS) and palette notes
            warnings.simplefilter("ignore")
            with Image.open(path) as image:
                # Pages of a TIFF are a stack; a phone's JPEG (MPO) holds previews after its picture, which is frame 0.
                count = int(getattr(image, "n_frames", 1) or 1) if image.format == "TIFF" else 1
                index = _frame_index(path, frame, count, "page")
                if index:
                    image.seek(index)
                _check_size(path, image.height, image.width)
                image.load()  # decode now: a truncated file fails here, inside this try
                array, mode = _pillow_array(image, path)
                spacing = _pillow_spacing(image)
    except ImageReadError:
        raise
    except Image.DecompressionBombError:
        raise ImageReadError(f"{path}: too large for a 2D image (Pillow refuses it as a decompression bomb)") from None
    except UnidentifiedImageError:
        raise ImageReadError(f"{path}: not a readable image (unknown format or damaged {path.suffix or 'file'})") from None
    except PermissionError as error:
        raise ImageReadError(f"{path}: cannot read: {error.strerror or error}") from None
    except Exception as error:  # truncated or damaged data: OSError, SyntaxError, ValueError, zlib.error, ...
        raise ImageReadError(f"{path}: damaged or truncated image: {_reason(error)}") from None
    return Image2D(array, spacing, str(path), mode, None, index if count > 1 else None, count)


# --------------------------------------------------------------------------------------------
# DICOM: pydicom (SimpleITK's GDCM where pydicom has no decoder)
# --------------------------------------------------------------------------------------------


def _dicom_dataset(path: Path) -> Any:
    """The whole data set; a file without the DICM marker is read only because its name claims DICOM."""
    head = _head(path)
    # Without the marker, a bare data set starts with a group 0x0002 or 0x0008 tag (little- or big-endian).
    if head[128:132] != b"DICM" and head[:2] not in (b"\x02\x00", b"\x00\x02", b"\x08\x00", b"\x00\x08"):
        raise ImageReadError(f"{path}: not a DICOM file (no DICM marker, and it does not start like a DICOM data set)")
    try:
        ds = pydicom.dcmread(path, force=not _has_dicom_marker(path))
    except Exception as error:  # pydicom raises many types for damaged files
        raise ImageReadError(f"{path}: unreadable DICOM file: {_reason(error)}") from None
    if not any(tag in ds for tag in _PIXEL_DATA_TAGS):
        raise ImageReadError(f"{path}: no pixel data (not an image, or the file is cut short)")
    return ds


def _header_int(ds: Any, keyword: str, default: int, path: Path) -> int:
    value = ds.get(keyword, default)
    try:
        return int(value if value not in (None, "") else default)
    except (TypeError, ValueError):
        raise ImageReadError(f"{path}: bad {keyword} {str(value)!r} in the DICOM header") from None


def _dicom_layout(ds: Any, path: Path) -> tuple[int, str]:
    """(frame count, photometric interpretation) after checking size, channels and photometric."""
    rows, columns = _header_int(ds, "Rows", 0, path), _header_int(ds, "Columns", 0, path)
    _check_size(path, rows, columns)
    frames = _header_int(ds, "NumberOfFrames", 1, path)
    if frames < 1:
        raise ImageReadError(f"{path}: NumberOfFrames is {frames}")
    samples = _header_int(ds, "SamplesPerPixel", 1, path)
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    if samples > 4:
        raise ImageReadError(f"{path}: {samples} samples per pixel; a 2D image has 1 (grey) or 3 (colour)")
    if photometric not in _GREY_PHOTOMETRICS + _COLOUR_PHOTOMETRICS:
        raise ImageReadError(f"{path}: unsupported photometric interpretation {photometric or 'none'!r}")
    return frames, photometric


def _transfer_syntax(ds: Any) -> Any:
    return getattr(ds, "file_meta", {}).get("TransferSyntaxUID", pydicom.uid.ImplicitVRLittleEndian)


class _NoDecoder(Exception):
    """pydicom cannot decode this transfer syntax here; the message says why."""


def _decode_with_pydicom(ds: Any, index: int | None) -> tuple[np.ndarray, str]:
    """(pixels, photometric of the pixels) by pydicom; :class:`_NoDecoder` where none of its decoders can.

    ``as_rgb``: pydicom converts YBR_FULL/YBR_FULL_422 with its ``convert_color_space`` only where
    the codec left YCbCr (a JPEG decoder may have converted already), and reports the result.
    """
    try:
        decoder = get_decoder(_transfer_syntax(ds))
    except NotImplementedError:
        raise _NoDecoder("pydicom has no decoder for it") from None
    if not decoder.is_available:
        raise _NoDecoder("pydicom has no decoder installed for it")
    try:
        array, meta = decoder.as_array(ds, index=index, as_rgb=True)
    except RuntimeError as error:
        if "plugins" in str(error):  # every installed plugin refused (12-bit JPEG for Pillow, say)
            raise _NoDecoder(f"pydicom's decoders failed ({_reason(error)})") from None
        raise
    return array, str(meta.get("photometric_interpretation", ds.PhotometricInterpretation))


def _decode_with_sitk(path: Path, index: int | None, syntax: str, why_not_pydicom: str) -> np.ndarray:
    """All frames (index None) or one by SimpleITK's GDCM, which returns grey values rescaled (MONOCHROME1
    inverted) and colour as RGB already."""
    try:
        with native_output_captured():  # GDCM's codecs print what they tried to stderr
            stack = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))  # (F, H, W) or (F, H, W, 3), F = 1 for one frame
    except RuntimeError:  # ITK's message names its own source files, nothing a user can act on
        raise ImageReadError(
            f"{path}: cannot decode its {syntax} pixel data: {why_not_pydicom}, and SimpleITK's GDCM cannot either "
            "(damaged data, or a codec neither has); pylibjpeg (with pylibjpeg-libjpeg, pylibjpeg-openjpeg), "
            "pyjpegls or python-gdcm may help"
        ) from None
    return stack if index is None else stack[index]


def _rescale(ds: Any) -> tuple[float, float]:
    try:
        return float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    except (TypeError, ValueError):
        return 1.0, 0.0


def _modality_values(ds: Any, stored: np.ndarray) -> np.ndarray:
    """Stored grey values -> modality values (CT HU, ...), through pydicom's ``apply_modality_lut``.

    An integral slope and intercept give int32 (what SimpleITK returns, exact); others float64.
    """
    slope, intercept = _rescale(ds)
    if "ModalityLUTSequence" not in ds and slope == 1 and intercept == 0:
        return stored
    values = apply_modality_lut(stored, ds)
    integral = slope.is_integer() and intercept.is_integer() and "ModalityLUTSequence" not in ds
    if integral and values.size and -(2**31) <= values.min() and values.max() < 2**31:
        return values.astype(np.int32)
    return values


def _stored_range(ds: Any) -> tuple[float, float]:
    """The range of modality values the header allows (stored bits through the rescale), sorted."""
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)) or 16)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    slope, intercept = _rescale(ds)
    a, b = low * slope + intercept, high * slope + intercept
    return (a, b) if a <= b else (b, a)


def _invert_monochrome1(ds: Any, values: np.ndarray) -> np.ndarray:
    """MONOCHROME1 (low values white) -> MONOCHROME2: ``low + high - v`` over the header's value range.

    The range, not the image's min/max, so the same file always maps the same way; an 8-bit image
    becomes ``255 - v``. A modality LUT has no stated range: its output's min/max stand in.
    """
    if "ModalityLUTSequence" in ds:
        low, high = float(values.min()), float(values.max())
    else:
        low, high = _stored_range(ds)
    total = low + high
    if np.issubdtype(values.dtype, np.integer) and float(total).is_integer():
        return (int(total) - values.astype(np.int64)).astype(values.dtype)
    return total - values.astype(np.float64)


def _palette_rgb(ds: Any, indices: np.ndarray) -> np.ndarray:
    """PALETTE COLOR -> RGB uint8 via pydicom's ``apply_color_lut``; 16-bit entries keep their high byte, as GDCM."""
    rgb = apply_color_lut(indices, ds)
    return (rgb >> 8).astype(np.uint8) if rgb.dtype.itemsize > 1 else rgb.astype(np.uint8)


def _dicom_spacing(ds: Any) -> tuple[float, float] | None:
    """(row, column) mm: PixelSpacing (at the patient), else ImagerPixelSpacing (at the detector), also per-frame groups."""
    sources = [ds]
    for group in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        items = ds.get(group) or []
        if items and "PixelMeasuresSequence" in items[0] and items[0].PixelMeasuresSequence:
            sources.append(items[0].PixelMeasuresSequence[0])
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        for source in sources:
            pair = _positive_pair(source.get(keyword)) if keyword in source else None
            if pair is not None:
                return pair
    return None


def _dicom_pixels(ds: Any, path: Path, index: int | None, photometric: str) -> tuple[np.ndarray, str]:
    """(pixels, mode): grey modality values (MONOCHROME1 inverted) or RGB; one frame or all (index None)."""
    try:
        array, result_photometric = _decode_with_pydicom(ds, index)
        modality_applied = False
    except _NoDecoder as why_not:
        syntax = getattr(_transfer_syntax(ds), "name", str(_transfer_syntax(ds)))
        array = _decode_with_sitk(path, index, syntax, str(why_not))
        result_photometric = "RGB" if array.shape[-1:] == (3,) and photometric not in _GREY_PHOTOMETRICS else photometric
        modality_applied = True
    except Exception as error:  # damaged data: truncated pixel data, bad fragments, ...
        raise ImageReadError(f"{path}: cannot decode its pixel data: {_reason(error)}") from None
    array = _native(np.asarray(array))
    if photometric in _GREY_PHOTOMETRICS:
        if photometric == "MONOCHROME2":
            return (array if modality_applied else _modality_values(ds, array)), photometric
        # GDCM (SimpleITK) has rescaled and inverted MONOCHROME1 already, the same way as here
        values = array if modality_applied else _invert_monochrome1(ds, _modality_values(ds, array))
        return values, "MONOCHROME1->MONOCHROME2"
    if result_photometric == "PALETTE COLOR":
        return _palette_rgb(ds, array), "PALETTE COLOR->RGB"
    if result_photometric != "RGB" or array.shape[-1] != 3:
        raise ImageReadError(f"{path}: colour pixels came out as {result_photometric} {array.shape}; cannot convert to RGB")
    return array, photometric if photometric == "RGB" else f"{photometric}->RGB"


def _modality(ds: Any) -> str | None:
    return str(ds.get("Modality", "") or "").strip() or None


def _read_dicom(path: Path, frame: int | None) -> Image2D:
    with _pydicom_quiet():
        return _read_dicom_frame(path, frame)


def _read_dicom_frame(path: Path, frame: int | None) -> Image2D:
    ds = _dicom_dataset(path)
    count, photometric = _dicom_layout(ds, path)
    index = _frame_index(path, frame, count, "frame")
    array, mode = _dicom_pixels(ds, path, index, photometric)
    if array.ndim != (2 if photometric in _GREY_PHOTOMETRICS else 3):
        raise ImageReadError(f"{path}: pixel data of shape {array.shape} is not one 2D image")
    return Image2D(array, _dicom_spacing(ds), str(path), mode, _modality(ds), index if count > 1 else None, count)


# --------------------------------------------------------------------------------------------
# Public readers
# --------------------------------------------------------------------------------------------


def read_image_2d(path: PathType, frame: int | None = None) -> Image2D:
    """Read one 2D image: a PNG/JPEG/TIFF/BMP file or one frame of a DICOM file.

    Rasters (Pillow): modes L, I;16 (uint16), I (int32), F (float32) and RGB are kept; 1 -> L
    (0/255), LA -> L, P/PA -> RGB (the palette applied), RGBA/RGBX -> RGB (alpha dropped), CMYK and
    YCbCr -> RGB. TIFF pages in colour above 8 bits per sample go through tifffile (Pillow would
    keep only 8), so a 16-bit RGB TIFF stays uint16 as in MedSAM's ``skimage.io.imread``. A 16-bit
    RGB PNG comes out 8-bit from Pillow, as from ``skimage.io.imread``.

    DICOM (pydicom; SimpleITK's GDCM where pydicom has no installed decoder): grey values go through
    the modality LUT (RescaleSlope/Intercept: CT in HU), MONOCHROME1 is inverted to MONOCHROME2 so
    bright means dense; RGB is kept; YBR_FULL/YBR_FULL_422 (and JPEG 2000's YBR_RCT/ICT) become RGB;
    PALETTE COLOR becomes RGB uint8.

    Args:
        path: the file.
        frame: which frame of a multi-frame DICOM (or page of a multi-page TIFF) to read, 0-based;
            needed when the file holds several, else None (or 0).

    Returns:
        :class:`Image2D`, ``array`` (H, W) or (H, W, 3).

    Raises:
        ImageReadError (a ValueError), one line naming the file: missing, empty, unreadable, damaged
        or truncated; more than 4 channels; a stack (several pages or frames and no ``frame``, a 3D
        TIFF); more than :data:`MAX_IMAGE_PIXELS` pixels; no decoder for the DICOM's pixel data.
    """
    p = Path(path)
    _check_readable(p)
    if _has_suffix(p, IMAGE_2D_SUFFIXES) or not _claims_dicom(p):
        return _read_raster(p, frame)
    return _read_dicom(p, frame)


def read_image_frames(path: PathType) -> ImageFrames:
    """Every frame of a DICOM file as a stack (F, H, W) grey or (F, H, W, 3) RGB, each frame as :func:`read_image_2d`.

    For multi-frame colour DICOM (:data:`KIND_FRAMES`: ultrasound/endoscopy cines), which
    :func:`medsam_monai.io.read_volume` cannot hold; a one-frame file gives F = 1. The size limit
    (:data:`MAX_IMAGE_PIXELS`) applies to each frame.
    """
    p = Path(path)
    _check_readable(p)
    if _has_suffix(p, IMAGE_2D_SUFFIXES) or not _claims_dicom(p):
        raise ImageReadError(f"{p}: frames are read from DICOM files; read a raster image with read_image_2d")
    with _pydicom_quiet():
        ds = _dicom_dataset(p)
        count, photometric = _dicom_layout(ds, p)
        array, mode = _dicom_pixels(ds, p, None, photometric)
        spacing, modality = _dicom_spacing(ds), _modality(ds)
    grey = photometric in _GREY_PHOTOMETRICS
    if array.ndim == (2 if grey else 3):
        array = array[None]  # one frame
    if array.ndim != (3 if grey else 4) or array.shape[0] != count:
        raise ImageReadError(f"{p}: pixel data of shape {array.shape} does not hold its {count} frames")
    return ImageFrames(array, spacing, str(p), mode, modality)


# --------------------------------------------------------------------------------------------
# Writing label images
# --------------------------------------------------------------------------------------------

_LOSSY_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif", ".jp2", ".webp")
_PILLOW_FORMATS = {".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP"}


def label_image_suffix(path: PathType) -> str:
    """The lower-case label image suffix of ``path`` (one of :data:`LABEL_IMAGE_SUFFIXES`), or a one-line ValueError."""
    p = Path(path)
    name = p.name.lower()
    for suffix in LABEL_IMAGE_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return suffix
    if any(name.endswith(s) for s in _LOSSY_SUFFIXES):
        raise ValueError(f"{p}: a lossy format would change label values; write the labels as .png")
    raise ValueError(f"{p}: unsupported label image type; use one of {', '.join(LABEL_IMAGE_SUFFIXES)}")


def check_label_image_path(path: PathType, protect: Iterable[PathType] = ()) -> Path:
    """Validate a 2D label output before any work (before a model loads): its type, not a protected
    input, not a folder, a folder that can take it. Raises a one-line ValueError; returns the path."""
    out = Path(path)
    label_image_suffix(out)
    for other in protect:
        if is_same_file(out, other):
            raise ValueError(f"{out}: refusing to overwrite a protected input file")
    if out.is_dir():
        raise ValueError(f"{out} is a folder; give a file name such as mask.png")
    check_writable_folder(out)
    return out


def _label_image_array(labels: Any, path: Path, suffix: str) -> np.ndarray:
    """``labels`` (H, W) as uint8 (values < 256) or uint16; bool becomes 0/1."""
    array = np.asarray(labels)
    if array.ndim != 2 or 0 in array.shape:
        raise ValueError(f"a label image is a 2D array (H, W), got shape {array.shape}")
    if array.dtype == bool:
        return array.astype(np.uint8)
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {array.dtype}")
    low, high = int(array.min()), int(array.max())
    if low < 0 or high > 65535:
        raise ValueError(f"label values must lie in 0..65535, got {low}..{high}")
    if high > 255 and suffix == ".bmp":
        raise ValueError(f"{path}: BMP holds labels up to 255, got {high}; write a 16-bit .png")
    return array.astype(np.uint8 if high <= 255 else np.uint16)


def write_label_image(path: PathType, labels: Any, protect: Iterable[PathType] = ()) -> Path:
    """Write a 2D label image (0 background, 1..N), atomically; returns the path.

    ``labels`` is (H, W), rows x columns as the image was read; integer (0..65535) or bool. PNG and
    TIFF are 8-bit grey for labels up to 255, 16-bit grey above; BMP 8-bit only; JPEG (lossy) is
    refused. The file is written beside ``path`` under a temporary name and renamed over it (the
    mode follows the umask), so a failure never leaves a partial output. Raises ValueError for a
    bad type, bad labels or a protected input (``protect``: the input image, say), and
    :class:`~medsam_monai.io.ImageWriteError` (an OSError naming ``path``) when the write fails.
    """
    out = Path(path)
    suffix = label_image_suffix(out)
    array = _label_image_array(labels, out, suffix)
    for other in protect:
        if is_same_file(out, other):
            raise ValueError(f"{out}: refusing to overwrite a protected input file")
    image = Image.fromarray(array)  # mode "L" (uint8) or "I;16" (uint16)
    actual_suffix = out.name[-len(suffix) :]
    return write_file_atomically(out, actual_suffix, lambda temporary: image.save(temporary, format=_PILLOW_FORMATS[suffix]))
