"""Reading CT/MR volumes and writing label volumes, with one geometry convention throughout.

A :class:`Volume` is an array indexed ``[i, j, k]`` in the file's own voxel order (the IJK that
ITK-SNAP and 3D Slicer show) plus a 4x4 ``affine`` mapping voxel centres (0-based) to RAS
millimetres, 3D Slicer's world frame. ITK and DICOM geometry is LPS; the conversion negates the x
and y rows. SimpleITK's ``GetArrayFromImage`` is ``[k, j, i]`` and is transposed here.

Readers: NIfTI and MGH (nibabel, whose ``img.affine`` is already RAS), NRRD, MetaImage and single
DICOM files (SimpleITK), and DICOM series folders (SimpleITK with GDCM series ids). Writers:
NIfTI, NRRD, MetaImage (``.mha``) and 3D Slicer segmentations (``.seg.nrrd``), always atomically.
"""

from __future__ import annotations

import gzip
import os
import re
import secrets
import sys
import tempfile
import threading
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any, BinaryIO

import nibabel as nib
import numpy as np
import pydicom
import SimpleITK as sitk

from .colours import palette_colour
from .errors import one_line
from .masks import mask_box
from .orientation import check_affine

PathType = str | PathLike[str]

# ITK/DICOM patient coordinates are LPS; this flips them to RAS (and back: it is its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

_NIBABEL_SUFFIXES = (".nii", ".nii.gz", ".mgz", ".mgh")


class ImageReadError(ValueError):
    """A volume could not be read; the message is one line naming the path and the reason."""


@dataclass(eq=False)
class NiftiForms:
    """The spatial codes of a source NIfTI header, so that outputs on its grid keep them.

    ``qform_code``/``sform_code`` are NIfTI xform codes (0 unknown, 1 scanner, 2 aligned, 3
    Talairach, 4 MNI, 5 template); ``qform`` is the header's qform as a 4x4 IJK -> RAS matrix (it
    may differ from the sform), ``affine`` the one nibabel reads (the sform when its code is set).
    """

    qform_code: int
    sform_code: int
    qform: np.ndarray
    affine: np.ndarray


@dataclass
class Volume:
    """A 3D image: ``array[i, j, k]`` in file voxel order and the IJK -> RAS (mm) ``affine``.

    ``nifti`` holds the source NIfTI header's qform/sform codes (None for other formats); pass it to
    :func:`write_label_volume` so that a NIfTI output keeps them.
    """

    array: np.ndarray
    affine: np.ndarray
    source: str = ""
    nifti: NiftiForms | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        """Voxel counts along i, j, k."""
        return tuple(int(n) for n in self.array.shape[:3])  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along i, j, k (column norms of the affine's 3x3 part)."""
        norms = np.linalg.norm(np.asarray(self.affine, float)[:3, :3], axis=0)
        return tuple(float(n) for n in norms)  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Geometry helpers
# --------------------------------------------------------------------------------------------


def affine_from_sitk(image: sitk.Image) -> np.ndarray:
    """The IJK -> RAS affine of a SimpleITK image (its first three dimensions)."""
    dim = image.GetDimension()
    direction = np.array(image.GetDirection(), dtype=float).reshape(dim, dim)[:3, :3]
    spacing = np.array(image.GetSpacing(), dtype=float)[:3]
    lps = np.eye(4)
    lps[:3, :3] = direction * spacing  # scales column c by spacing[c]
    lps[:3, 3] = np.array(image.GetOrigin(), dtype=float)[:3]
    return LPS_TO_RAS @ lps


def sitk_from_array(array: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """A SimpleITK image of ``array[i, j, k]`` with the LPS geometry of the RAS ``affine``."""
    if array.ndim != 3:
        raise ValueError(f"expected a 3D array, got shape {array.shape}")
    lps = LPS_TO_RAS @ check_affine(affine)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)), isVector=False)
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(x) for x in (lps[:3, :3] / spacing).ravel()])
    image.SetOrigin([float(x) for x in lps[:3, 3]])
    return image


# --------------------------------------------------------------------------------------------
# Reading: what the native libraries print, and compressed payloads
# --------------------------------------------------------------------------------------------

# One capture of the process's stderr at a time (it is a process-wide file descriptor).
_NATIVE_OUTPUT_LOCK = threading.RLock()


def _duplicate_stderr() -> int | None:
    """A duplicate of file descriptor 2 to restore it from, or None where there is none (a daemon)."""
    try:
        if sys.stderr is not None:
            sys.stderr.flush()  # Python's buffered text goes out before the redirection
        return os.dup(2)
    except (OSError, ValueError):
        return None


@contextmanager
def _native_output_captured() -> Iterator[list[str]]:
    """Keep ITK/GDCM/MetaIO output off the terminal while the ``with`` body runs.

    ITK warnings are switched off; what the C++ libraries write straight to file descriptor 2
    (MetaIO's "data not read completely", say) goes to a temporary file and comes back as the
    yielded list of lines once the body ends. Our own checks and one-line errors say what matters.
    """
    lines: list[str] = []
    with _NATIVE_OUTPUT_LOCK, tempfile.TemporaryFile() as sink:
        showing = sitk.ProcessObject_GetGlobalWarningDisplay()
        sitk.ProcessObject_SetGlobalWarningDisplay(False)
        saved = _duplicate_stderr()
        if saved is not None:
            os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            if saved is not None:
                os.dup2(saved, 2)
                os.close(saved)
            sitk.ProcessObject_SetGlobalWarningDisplay(showing)
            sink.seek(0)
            lines.extend(line for line in sink.read().decode(errors="replace").splitlines() if line.strip())


_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20


def _drain(read: Callable[[int], bytes]) -> None:
    """Read a decompressing stream to its end in bounded chunks (a small bomb never fills memory)."""
    while read(_CHUNK):
        pass


def _verify_gzip(handle: BinaryIO) -> None:
    """Decompress a gzip stream from the handle's position to the end: checks every CRC-32 and length."""
    with gzip.GzipFile(fileobj=handle, mode="rb") as stream:
        _drain(stream.read)


def _verify_zlib(handle: BinaryIO) -> None:
    """Inflate a zlib stream (MetaImage ``CompressedData``) to its end: checks its Adler-32."""
    inflater = zlib.decompressobj()
    while not inflater.eof:
        chunk = inflater.unconsumed_tail or handle.read(_CHUNK)
        if not chunk:
            raise EOFError("compressed data ends before its end-of-stream marker")
        inflater.decompress(chunk, _CHUNK)


_VERIFIERS: dict[str, Callable[[BinaryIO], None]] = {"gzip": _verify_gzip, "zlib": _verify_zlib}


def _verify_payload(path: Path, offset: int, codec: str, shown: Path) -> None:
    """Refuse a compressed payload whose checksum fails or that is cut short, before a reader sees it.

    Readers stop once they have the voxels they expect, so a damaged CRC, a zeroed block inside the
    stream or a lost trailer would otherwise go unnoticed and give corrupted voxels.
    """
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            _VERIFIERS[codec](handle)
    except FileNotFoundError:
        raise ImageReadError(f"{shown}: its data file {path.name} does not exist") from None
    except (OSError, EOFError, zlib.error, ValueError) as error:
        reason = "the file is truncated" if isinstance(error, EOFError) else _reason(error)
        raise ImageReadError(f"{shown}: corrupt {codec}-compressed data ({reason}); refusing to read damaged voxels") from None


def _header_lines(path: Path, limit: int = 1 << 20) -> tuple[list[bytes], int] | None:
    """The text header of an NRRD/MetaImage file (lines up to the blank line or ``ElementDataFile``, or
    the end of a detached header such as ``.nhdr``) and the byte offset where attached data starts;
    None if no header end is found in ``limit``."""
    with open(path, "rb") as handle:
        head = handle.read(limit)
    lines, offset = [], 0
    for raw in head.splitlines(keepends=True):
        if not raw.endswith(b"\n"):
            return None
        offset += len(raw)
        line = raw.rstrip(b"\r\n")
        if not line:  # NRRD: a blank line ends the header
            return lines, offset
        lines.append(line)
        if line.split(b"=", 1)[0].strip() == b"ElementDataFile":  # MetaImage: always the last field
            return lines, offset
    return (lines, offset) if len(head) < limit and offset == len(head) else None


def _data_file(header: Path, name: str) -> Path | None:
    """The one detached data file a header names, or None for lists and numbered patterns."""
    name = name.strip()
    if not name or name.upper().startswith("LIST") or "%" in name or " " in name:
        return None
    return header.parent / name


def _nrrd_payload(path: Path) -> tuple[Path, int, str] | None:
    found = _header_lines(path)
    if found is None or not found[0] or not found[0][0].startswith(b"NRRD000"):
        return None
    lines, offset = found
    fields: dict[str, str] = {}
    for line in lines[1:]:
        text = line.decode(errors="replace")
        # Comments and "key:=value" pairs are not fields; fields are "name: value".
        if text.startswith("#") or ": " not in text or (":=" in text and text.index(":=") < text.index(": ")):
            continue
        key, _, value = text.partition(": ")
        fields[key.strip().lower()] = value.strip()
    # SimpleITK reads NRRD gzip but not bzip2 (which it refuses itself).
    codec = {"gzip": "gzip", "gz": "gzip"}.get(fields.get("encoding", "raw").lower())
    if codec is None:
        return None
    detached = fields.get("data file", fields.get("datafile"))
    if detached is None:
        return path, offset, codec
    data = _data_file(path, detached)
    # Skipped lines before detached compressed data are rare: left to the reader.
    if data is None or fields.get("line skip", fields.get("lineskip", "0")).strip() not in ("", "0"):
        return None
    return data, 0, codec


def _metaimage_payload(path: Path) -> tuple[Path, int, str] | None:
    found = _header_lines(path)
    if found is None:
        return None
    lines, offset = found
    fields = {}
    for line in lines:
        key, _, value = line.decode(errors="replace").partition("=")
        fields[key.strip()] = value.strip()
    if fields.get("CompressedData", "False").lower() != "true" or "ElementDataFile" not in fields:
        return None
    if fields["ElementDataFile"].upper() == "LOCAL":
        return path, offset, "zlib"
    data = _data_file(path, fields["ElementDataFile"])
    return None if data is None else (data, 0, "zlib")


def _verify_compressed_input(path: Path) -> None:
    """Check the compressed payload of a gzip file (.nii.gz, .mgz), an NRRD or a MetaImage, if any."""
    with open(path, "rb") as handle:
        magic = handle.read(2)
    if magic == _GZIP_MAGIC:
        _verify_payload(path, 0, "gzip", path)
        return
    payload = None
    if _name_has_suffix(path, (".nrrd", ".nhdr")):
        payload = _nrrd_payload(path)
    elif _name_has_suffix(path, (".mha", ".mhd")):
        payload = _metaimage_payload(path)
    if payload is not None:
        _verify_payload(*payload, shown=path)


# --------------------------------------------------------------------------------------------
# Reading image files
# --------------------------------------------------------------------------------------------


def _reason(error: BaseException, path: Path | None = None) -> str:
    """An exception's reason as :func:`~medsam_monai.errors.one_line` prints it, without ITK's preamble
    (its messages span several lines), at most 200 characters."""
    text = str(error)
    # Keep what follows ITK's "file.cxx:99: sitk::ERROR:" / "ITK ERROR: Reader(0x...):" preamble.
    match = re.search(r"(?:sitk::ERROR:|ITK ERROR:\s*\w+\(0x[0-9a-fA-F]+\):)\s*(.*)", text, flags=re.S)
    if match:
        text = match.group(1)
    if path is not None:
        # The message already starts with the full path; the name is enough here.
        text = text.replace(str(path), path.name)
    text = one_line(text) or type(error).__name__
    return text[:200] + ("..." if len(text) > 200 else "")


def _native(array: np.ndarray) -> np.ndarray:
    """The same dtype in native byte order (NIfTI files are often big-endian; torch refuses those)."""
    return array if array.dtype.isnative else array.astype(array.dtype.newbyteorder("="))


def _as_3d(array: np.ndarray, path: Path) -> np.ndarray:
    """``array`` with trailing singleton dims dropped; errors unless exactly 3D remains."""
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise ImageReadError(f"{path}: expected a 3D image, got shape {tuple(int(n) for n in array.shape)}")
    return array


def _refuse_complex(dtype: np.dtype, path: Path) -> None:
    """Complex voxels (MR k-space or phase data) have no intensity MedSAM could use; casting would drop
    the imaginary part without a word, so they are refused with what to do instead."""
    if np.issubdtype(dtype, np.complexfloating):
        raise ImageReadError(
            f"{path}: complex-valued voxels ({np.dtype(dtype).name}); MedSAM needs real intensities: "
            "save the magnitude (abs) as a real-valued image and segment that"
        )


def _name_has_suffix(path: Path, suffixes: Iterable[str]) -> bool:
    name = path.name.lower()
    return any(name.endswith(s) for s in suffixes)


@contextmanager
def _nibabel_quiet() -> Iterator[None]:
    """Keep nibabel's header-fix messages ("setting 0 dims to 1") and numeric warnings off stderr; what
    matters is checked and refused here. Disabling the logger, not removing its handler: a record
    would still reach logging's last-resort handler."""
    logger = nib.imageglobals.logger
    disabled = logger.disabled
    logger.disabled = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.disabled = disabled


def _raw_nifti_header(path: Path, header_class: type) -> Any:
    """The header as stored, before nibabel's load-time fixes (which turn a 0 pixdim into 1 quietly)."""
    with nib.openers.ImageOpener(str(path)) as handle:
        return header_class.from_fileobj(handle, check=False)


def _check_nifti_voxel_sizes(header: Any, path: Path) -> None:
    """Refuse zero, negative or non-finite pixdim[1..3] where the geometry rests on them.

    With sform_code 0 the affine is the qform (or the fallback), built from pixdim: a 0 there means the
    voxel size is unknown, and nibabel and ITK would silently assume 1 mm. With an sform the pixdim
    values are not used for the geometry and are left alone.
    """
    if int(header["sform_code"]) != 0:
        return
    for axis, size in zip("ijk", np.asarray(header["pixdim"][1:4], dtype=float), strict=True):
        if not np.isfinite(size) or size <= 0:
            raise ImageReadError(
                f"{path}: the NIfTI header gives voxel size (pixdim) {size:g} along {axis} and no sform; "
                "refusing to assume 1 mm: fix the header's voxel sizes (e.g. nibabel header.set_zooms)"
            )


def _nifti_forms(image: Any, affine: np.ndarray) -> NiftiForms | None:
    """The qform/sform codes and qform of a NIfTI image (None for formats without them, e.g. MGH)."""
    header = image.header
    if not isinstance(header, nib.Nifti1Header):  # Nifti2Header derives from it
        return None
    qform = header.get_qform() if int(header["qform_code"]) > 0 else affine
    return NiftiForms(int(header["qform_code"]), int(header["sform_code"]), np.asarray(qform, float), affine.copy())


def _read_nibabel(path: Path) -> Volume:
    _verify_compressed_input(path)
    try:
        # mmap=False: a memory map would keep the input file open (and locked on Windows).
        with _nibabel_quiet():
            image = nib.load(str(path), mmap=False)
            if isinstance(image.header, nib.Nifti1Header):
                _check_nifti_voxel_sizes(_raw_nifti_header(path, type(image.header)), path)
            _refuse_complex(image.get_data_dtype(), path)
            # asanyarray(dataobj) keeps the stored dtype unless the header asks for scaling.
            array = np.asanyarray(image.dataobj)
            affine = np.asarray(image.affine, dtype=float)
            forms = _nifti_forms(image, affine)
    except ImageReadError:
        raise
    except Exception as error:  # nibabel raises many types for corrupt or foreign files
        raise ImageReadError(f"{path}: cannot read as NIfTI/MGH: {_reason(error, path)}") from None
    try:
        check_affine(affine)
    except ValueError as error:
        raise ImageReadError(f"{path}: the header gives no usable voxel-to-world geometry: {error}") from None
    return Volume(_native(_as_3d(array, path)), affine, str(path), nifti=forms)


_COMPLEX_PIXEL_IDS = {sitk.sitkComplexFloat32: np.complex64, sitk.sitkComplexFloat64: np.complex128}


def _volume_from_sitk(image: sitk.Image, path: Path) -> Volume:
    """A Volume from a SimpleITK image, turning its [k, j, i(, c)] array into [i, j, k(, c)]."""
    if image.GetPixelID() in _COMPLEX_PIXEL_IDS:
        _refuse_complex(np.dtype(_COMPLEX_PIXEL_IDS[image.GetPixelID()]), path)
    if image.GetDimension() < 3:
        size = tuple(image.GetSize())
        raise ImageReadError(f"{path}: expected a 3D image, got shape {size}")
    array = sitk.GetArrayFromImage(image)
    spatial = image.GetDimension()
    order = tuple(reversed(range(spatial))) + tuple(range(spatial, array.ndim))
    affine = affine_from_sitk(image)
    try:
        check_affine(affine)
    except ValueError as error:
        raise ImageReadError(f"{path}: the header gives no usable voxel-to-world geometry: {error}") from None
    return Volume(_as_3d(array.transpose(order), path), affine, str(path))


def _read_sitk_file(path: Path) -> Volume:
    _verify_compressed_input(path)
    try:
        with _native_output_captured():
            image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise ImageReadError(f"{path}: unsupported or unreadable image file: {_reason(error, path)}") from None
    return _volume_from_sitk(image, path)


# --------------------------------------------------------------------------------------------
# Reading DICOM folders: find the series, check the files, check the geometry
# --------------------------------------------------------------------------------------------

# Bounds on the search of a study folder: a whole archive is not what anyone means to segment.
DICOM_SEARCH_MAX_FILES = 20000
DICOM_SEARCH_MAX_DEPTH = 6

_DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
_PIXEL_DATA_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # PixelData, FloatPixelData, DoubleFloatPixelData
_UNDEFINED_LENGTH = 0xFFFFFFFF

# Geometry tolerances: DICOM decimal strings carry rounding noise well below these.
_ORIENTATION_TOLERANCE = 1e-3  # direction cosines (about 0.06 degrees)
_POSITION_TOLERANCE_MM = 0.02  # absolute part of the in-plane and spacing checks
_SPACING_TOLERANCE = 0.01  # relative part of the spacing check (1% of the slice step)


@dataclass(eq=False)
class DicomFile:
    """What the folder scan learns from one image file's header (LPS millimetres, DICOM order)."""

    path: Path
    series_uid: str
    description: str
    modality: str
    rows: int
    columns: int
    frames: int
    orientation: np.ndarray | None  # (6,) row then column direction cosines
    position: np.ndarray | None  # (3,) ImagePositionPatient
    pixel_spacing: np.ndarray | None  # (2,) row spacing, column spacing


@dataclass(eq=False)
class DicomScan:
    """Image files by series, damaged files with their reason, and how many other files were seen."""

    series: dict[str, list[DicomFile]]
    damaged: list[tuple[Path, str | None, str]]  # (file, its series UID if its header told, reason)
    other_files: int = 0


class _DamagedDicom(Exception):
    """A file that is or claims to be DICOM but cannot be used; the message is the reason."""

    def __init__(self, reason: str, series_uid: str | None = None) -> None:
        super().__init__(reason)
        self.series_uid = series_uid


def _numbers(ds: Any, keyword: str, count: int) -> np.ndarray | None:
    """A multi-valued decimal tag as floats, None if absent or empty; a malformed value is damage."""
    if keyword not in ds or ds[keyword].value in (None, "", []):
        return None
    try:
        values = np.array([float(v) for v in ds[keyword].value], dtype=float)
    except (TypeError, ValueError):
        raise _DamagedDicom(f"unreadable {keyword} {ds[keyword].value!r}", ds.get("SeriesInstanceUID")) from None
    if values.shape != (count,) or not np.all(np.isfinite(values)):
        raise _DamagedDicom(f"{keyword} must hold {count} finite numbers, got {list(values)}", ds.get("SeriesInstanceUID"))
    return values


def _transfer_syntax(ds: Any) -> str:
    return str(getattr(ds, "file_meta", {}).get("TransferSyntaxUID", ""))


def _check_pixel_data_length(ds: Any, path: Path, series_uid: str) -> None:
    """Refuse a file cut short inside its pixel data (GDCM would skip it and leave a hole in the stack)."""
    element = next((ds.get_item(tag, keep_deferred=True) for tag in _PIXEL_DATA_TAGS if tag in ds), None)
    declared = getattr(element, "length", None)  # a raw element; a converted one was read whole
    if element is None or declared is None or declared == _UNDEFINED_LENGTH:
        return  # encapsulated (compressed) pixel data: its decoder checks it
    if element.value is None and _transfer_syntax(ds) == pydicom.uid.DeflatedExplicitVRLittleEndian:
        return  # a deflated data set: value_tell counts inflated bytes, not the file's
    # A deferred value lies in the file from value_tell on; a read one is in memory.
    available = path.stat().st_size - int(element.value_tell) if element.value is None else len(element.value)
    if declared > available:
        raise _DamagedDicom(f"truncated: its pixel data needs {declared} bytes, the file holds {max(available, 0)}", series_uid)
    length = declared
    if str(ds.get("PhotometricInterpretation", "")).startswith("YBR_FULL_422"):
        return  # chroma subsampled: fewer bytes than rows x columns x samples
    bits = int(ds.get("BitsAllocated", 0) or 0)
    needed = int(ds.get("Rows", 0)) * int(ds.get("Columns", 0)) * int(ds.get("SamplesPerPixel", 1) or 1)
    needed = needed * int(ds.get("NumberOfFrames", 1) or 1) * bits // 8
    if bits and length < needed:
        raise _DamagedDicom(f"its pixel data holds {length} bytes, {needed} are needed", series_uid)


def _read_dicom_header(path: Path) -> DicomFile | None:
    """The header of one file: a DicomFile for an image, None for a file that is not a DICOM image
    (notes, DICOMDIR, structured reports); raises _DamagedDicom for a DICOM file that cannot be used."""
    with open(path, "rb") as handle:
        head = handle.read(132)
    claims_dicom = head[128:132] == b"DICM" or _name_has_suffix(path, _DICOM_SUFFIXES)
    if claims_dicom and not head:
        raise _DamagedDicom("empty file")
    # Files without the DICM marker are read only if they start like a bare DICOM data set (group 8).
    if not claims_dicom and head[:2] != b"\x08\x00":
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about odd values; damage is judged below
            ds = pydicom.dcmread(path, defer_size=1024, force=head[128:132] != b"DICM")
            if str(getattr(ds, "file_meta", {}).get("MediaStorageSOPClassUID", "")) == _DICOMDIR_SOP_CLASS:
                return None
            return _dicom_file(ds, path, claims_dicom)
    except _DamagedDicom:
        raise
    except Exception as error:  # pydicom raises many types for damaged files
        if not claims_dicom:
            return None
        raise _DamagedDicom(f"unreadable DICOM ({_reason(error, path)})") from None


def _dicom_file(ds: Any, path: Path, claims_dicom: bool) -> DicomFile | None:
    uid = str(ds.get("SeriesInstanceUID", "") or "")
    has_pixels = any(tag in ds for tag in _PIXEL_DATA_TAGS)
    sop_class = ds.get("SOPClassUID", getattr(ds, "file_meta", {}).get("MediaStorageSOPClassUID", ""))
    is_image_class = "Image Storage" in getattr(pydicom.uid.UID(str(sop_class)), "name", "")
    if not has_pixels:
        if claims_dicom and (is_image_class or not uid):
            # An image's pixel data comes last: a header that ends early (cut or overwritten) loses it.
            raise _DamagedDicom("no pixel data: the file is cut short, its header is damaged or it holds no image", uid or None)
        return None  # a structured report, presentation state, RT structure set, ...
    if not uid:
        raise _DamagedDicom("no SeriesInstanceUID in its header")
    _check_pixel_data_length(ds, path, uid)
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows <= 0 or columns <= 0:
        raise _DamagedDicom(f"image size {rows}x{columns} in its header", uid)
    return DicomFile(
        path=path,
        series_uid=uid,
        description=one_line(ds.get("SeriesDescription", "") or ""),
        modality=str(ds.get("Modality", "") or "?"),
        rows=rows,
        columns=columns,
        frames=int(ds.get("NumberOfFrames", 1) or 1),
        orientation=_numbers(ds, "ImageOrientationPatient", 6),
        position=_numbers(ds, "ImagePositionPatient", 3),
        pixel_spacing=_numbers(ds, "PixelSpacing", 2),
    )


def _files_under(folder: Path) -> list[Path]:
    """Every file below ``folder`` down to DICOM_SEARCH_MAX_DEPTH levels, sorted, symlinked folders not followed."""
    found: list[Path] = []
    for root, dirs, files in os.walk(folder):
        depth = len(Path(root).relative_to(folder).parts)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if depth < DICOM_SEARCH_MAX_DEPTH else []
        # Regular files only: opening a FIFO or a device found in the tree would block or never end.
        found.extend(Path(root) / name for name in sorted(files) if not name.startswith(".") and (Path(root) / name).is_file())
        if len(found) > DICOM_SEARCH_MAX_FILES:
            raise ImageReadError(
                f"{folder}: more than {DICOM_SEARCH_MAX_FILES} files below this folder; give the folder of one study or series"
            )
    return found


def scan_dicom_folder(folder: PathType) -> DicomScan:
    """Read the header of every file below ``folder`` (and its subfolders) and group the images by series.

    Only headers are read (pixel data is deferred); files that are not DICOM are counted and
    skipped, DICOM files that cannot be used are listed in ``damaged`` with the reason.
    """
    root = Path(folder)
    scan = DicomScan(series={}, damaged=[])
    for path in _files_under(root):
        try:
            found = _read_dicom_header(path)
        except _DamagedDicom as damage:
            scan.damaged.append((path, damage.series_uid, str(damage)))
            continue
        except OSError as error:
            scan.damaged.append((path, None, f"cannot open: {error.strerror or error}"))
            continue
        if found is None:
            scan.other_files += 1
        else:
            scan.series.setdefault(found.series_uid, []).append(found)
    return scan


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root)) or "."
    except ValueError:
        return str(path)


def describe_series(files: list[DicomFile], root: Path) -> str:
    """One entry of the series list: UID, modality, description, files, size, where it lies."""
    first = files[0]
    folders = sorted({_relative(f.path.parent, root) for f in files})
    where = folders[0] if len(folders) == 1 else f"{len(folders)} folders"
    size = f"{first.columns}x{first.rows}" + (f"x{first.frames} frames" if first.frames > 1 else "")
    description = f" '{first.description}'" if first.description else ""
    plural = "s" if len(files) > 1 else ""
    return f"{first.series_uid} ({first.modality}{description}, {len(files)} file{plural} of {size}, in {where})"


def _series_list(scan: DicomScan, root: Path, limit: int = 20) -> str:
    ordered = sorted(scan.series.values(), key=lambda files: (_relative(files[0].path.parent, root), files[0].series_uid))
    entries = [describe_series(files, root) for files in ordered[:limit]]
    if len(ordered) > limit:
        entries.append(f"... and {len(ordered) - limit} more")
    return "; ".join(entries)


def _choose_series(folder: Path, series_uid: str | None, scan: DicomScan) -> list[DicomFile]:
    """The requested series, or the only one; several without a choice is an error that lists them."""
    if not scan.series:
        if scan.damaged:
            path, _, reason = scan.damaged[0]
            raise ImageReadError(f"{folder}: no readable DICOM image; damaged DICOM file {_relative(path, folder)}: {reason}")
        if not any(folder.iterdir()):
            raise ImageReadError(f"{folder}: empty folder")
        raise ImageReadError(
            f"{folder}: no DICOM series found in folder or its subfolders, {DICOM_SEARCH_MAX_DEPTH} levels "
            f"down ({scan.other_files} files, none a DICOM image)"
        )
    if series_uid is not None:
        if series_uid not in scan.series:
            raise ImageReadError(
                f"{folder}: no DICOM series {series_uid!r} among the {len(scan.series)} found: {_series_list(scan, folder)}"
            )
        return scan.series[series_uid]
    if len(scan.series) > 1:
        raise ImageReadError(
            f"{folder} holds {len(scan.series)} DICOM series; choose one with --series-uid UID "
            f"(series_uid in Python and bundle datalists): {_series_list(scan, folder)}"
        )
    return next(iter(scan.series.values()))


def _refuse_damaged_files(folder: Path, files: list[DicomFile], scan: DicomScan) -> None:
    """A damaged file of the chosen series, or one beside its files whose series is unknown, is an error:
    reading on without it would stack the others across the hole it leaves."""
    uid = files[0].series_uid
    folders = {f.path.parent for f in files}
    suspects = [
        (path, reason) for path, series, reason in scan.damaged if series == uid or (series is None and path.parent in folders)
    ]
    if suspects:
        path, reason = suspects[0]
        more = f" (and {len(suspects) - 1} more damaged files)" if len(suspects) > 1 else ""
        raise ImageReadError(
            f"{folder}: damaged DICOM file {_relative(path, folder)} in series {uid}: {reason}{more}; repair or remove it"
        )


def _plane_name(orientation: np.ndarray) -> str:
    """'axial', 'coronal', 'sagittal' (within 10 degrees) or 'oblique' for a slice orientation."""
    normal = np.cross(orientation[:3], orientation[3:])
    axis = int(np.argmax(np.abs(normal)))
    name = ("sagittal", "coronal", "axial")[axis]
    return name if abs(normal[axis]) >= np.cos(np.radians(10)) * np.linalg.norm(normal) else f"oblique ({name}-like)"


def _check_same_frame(files: list[DicomFile], folder: Path) -> None:
    """One image size, one pixel spacing, positions and orientations present in every file."""
    for f in files:
        if f.frames > 1:
            raise ImageReadError(
                f"{folder}: {_relative(f.path, folder)} is a multi-frame file in a series of "
                f"{len(files)} files; give that file instead of the folder"
            )
        if f.orientation is None or f.position is None:
            raise ImageReadError(
                f"{folder}: {_relative(f.path, folder)} has no ImageOrientationPatient/ImagePositionPatient: "
                "its slices cannot be placed in space"
            )
    sizes = {(f.columns, f.rows): f for f in files}
    if len(sizes) > 1:
        shown = ", ".join(f"{c}x{r} ({_relative(f.path, folder)})" for (c, r), f in list(sizes.items())[:3])
        raise ImageReadError(f"{folder}: slices of different sizes in one series: {shown}")
    spacings = [f.pixel_spacing for f in files if f.pixel_spacing is not None]
    if spacings and any(not np.allclose(s, spacings[0], rtol=1e-4, atol=1e-6) for s in spacings):
        raise ImageReadError(f"{folder}: slices with different pixel spacings in one series")


def _check_one_orientation(files: list[DicomFile], folder: Path) -> None:
    planes: list[tuple[np.ndarray, DicomFile]] = []
    for f in files:
        if not any(np.max(np.abs(f.orientation - o)) <= _ORIENTATION_TOLERANCE for o, _ in planes):
            planes.append((f.orientation, f))
    if len(planes) > 1:
        shown = ", ".join(f"{_plane_name(o)} in {_relative(f.path, folder)}" for o, f in planes[:4])
        more = ", ..." if len(planes) > 4 else ""
        raise ImageReadError(
            f"{folder}: mixed orientations: {len(planes)} different slice planes among {len(files)} files "
            f"({shown}{more}); a localizer or radial set, not one volume"
        )


def _sorted_along_normal(files: list[DicomFile], folder: Path) -> tuple[list[DicomFile], np.ndarray]:
    """Files sorted by position along the slice normal, and those positions (mm); refuses slices shifted
    within their plane (gantry tilt, mixed stacks), which no regular grid can hold."""
    row, col = files[0].orientation[:3], files[0].orientation[3:]
    normal = np.cross(row, col)
    normal = normal / np.linalg.norm(normal)
    along = np.array([float(f.position @ normal) for f in files])
    in_plane = np.array([f.position - a * normal for f, a in zip(files, along, strict=True)])
    spacing = files[0].pixel_spacing if files[0].pixel_spacing is not None else np.ones(2)
    shift = float(np.max(np.linalg.norm(in_plane - in_plane[0], axis=1)))
    if shift > max(_POSITION_TOLERANCE_MM, 0.1 * float(np.min(spacing))):
        raise ImageReadError(
            f"{folder}: slices are not stacked along their normal (shifted by up to {shift:.2f} mm within "
            "their plane: a gantry tilt or several stacks); not one regular volume"
        )
    order = np.argsort(along, kind="stable")
    return [files[n] for n in order], along[order]


def _check_slice_steps(files: list[DicomFile], along: np.ndarray, folder: Path) -> None:
    """Refuse repeated positions and uneven steps (a missing slice shows as a gap)."""
    if len(files) < 2:
        return
    steps = np.diff(along)
    same = int(np.argmin(steps))
    if steps[same] <= _POSITION_TOLERANCE_MM:
        count = int(np.sum(steps <= _POSITION_TOLERANCE_MM)) + 1
        raise ImageReadError(
            f"{folder}: {count} slices share positions ({_relative(files[same].path, folder)} and "
            f"{_relative(files[same + 1].path, folder)} at {along[same]:.2f} mm along the normal): "
            "several echoes, phases or repeats, not one volume"
        )
    step = float(np.median(steps))
    off = np.abs(steps - step) > max(_POSITION_TOLERANCE_MM, _SPACING_TOLERANCE * step)
    if off.any():
        n = int(np.argmax(np.abs(steps - step)))
        kind = "a gap" if steps[n] > step else "uneven spacing"
        between = f"{_relative(files[n].path, folder)} and {_relative(files[n + 1].path, folder)}"
        raise ImageReadError(
            f"{folder}: {kind} at position {along[n]:.2f} mm along the slice normal: {steps[n]:.2f} mm to "
            f"the next slice where the others are {step:.2f} mm apart (between {between}; "
            f"{int(off.sum())} uneven step{'s' if off.sum() > 1 else ''}); missing slices?"
        )


def check_series_geometry(files: list[DicomFile], folder: PathType = "") -> list[DicomFile]:
    """The files of one series in slice order, after checking that they form one regular volume.

    One size and pixel spacing, one orientation (direction cosines within 1e-3), positions along
    the slice normal (no in-plane shift beyond 0.02 mm or 0.1 pixel), no repeated position, and
    uniform steps (within 0.02 mm or 1%). Raises ImageReadError saying what is wrong.
    """
    where = Path(folder)
    if len(files) == 1:
        return list(files)
    _check_same_frame(files, where)
    _check_one_orientation(files, where)
    ordered, along = _sorted_along_normal(files, where)
    _check_slice_steps(ordered, along, where)
    return ordered


def _read_dicom_folder(folder: Path, series_uid: str | None) -> Volume:
    scan = scan_dicom_folder(folder)
    files = _choose_series(folder, series_uid, scan)
    _refuse_damaged_files(folder, files, scan)
    ordered = check_series_geometry(files, folder)
    uid = files[0].series_uid
    try:
        with _native_output_captured():
            if len(ordered) == 1:
                image = sitk.ReadImage(str(ordered[0].path))
            else:
                reader = sitk.ImageSeriesReader()
                reader.SetFileNames([str(f.path) for f in ordered])
                image = reader.Execute()
    except RuntimeError as error:
        raise ImageReadError(f"{folder}: cannot read DICOM series {uid}: {_reason(error, folder)}") from None
    return _volume_from_sitk(image, folder)


def read_volume(path: PathType, series_uid: str | None = None) -> Volume:
    """Read a 3D image file or DICOM series folder as a :class:`Volume` (original dtype kept).

    Files: ``.nii``, ``.nii.gz``, ``.mgz``/``.mgh`` (nibabel); ``.nrrd``/``.nhdr``, ``.mha``/``.mhd``
    and anything else SimpleITK reads, such as a single DICOM file. Compressed data (gzip, NRRD
    gzip, MetaImage zlib) is decompressed to its end first, so a failed checksum or a
    truncated file is refused. Complex voxels and NIfTI voxel sizes of 0 are refused.

    A folder is searched with its subfolders (:data:`DICOM_SEARCH_MAX_DEPTH` levels,
    :data:`DICOM_SEARCH_MAX_FILES` files) for DICOM images grouped by SeriesInstanceUID;
    ``series_uid`` picks one series, and is needed when there are several (the error lists them).
    A damaged file of the series is refused by name, and the series must form one volume (see
    :func:`check_series_geometry`). A trailing dim of 1 (a 4D image holding one volume) is dropped.
    Raises :class:`ImageReadError` with a one-line message.
    """
    p = Path(path)
    if not p.exists():
        raise ImageReadError(f"{p}: no such file or folder")
    if series_uid is not None and not p.is_dir():
        raise ImageReadError(f"{p}: a series UID chooses among the DICOM series of a folder; this is a file")
    try:
        if p.is_dir():
            return _read_dicom_folder(p, series_uid)
        if _name_has_suffix(p, _NIBABEL_SUFFIXES):
            return _read_nibabel(p)
        return _read_sitk_file(p)
    except PermissionError as error:
        raise ImageReadError(f"{p}: cannot read: {error.strerror or error}") from None


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------

_OUTPUT_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha")


def _output_suffix(path: Path) -> str:
    """The recognised output suffix of ``path`` (longest match first)."""
    name = path.name.lower()
    for suffix in _OUTPUT_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return suffix
    if name.endswith(".mhd"):
        # .mhd keeps the voxels in a separate .raw file; two files cannot be replaced atomically.
        raise ValueError(f"{path}: write .mha instead of .mhd (a single file, replaced atomically)")
    raise ValueError(f"{path}: unsupported output type; use one of {', '.join(_OUTPUT_SUFFIXES)}")


def check_output_type(path: PathType) -> str:
    """The output type (suffix) of ``path``, or ValueError for one that cannot be written; no file system check."""
    return _output_suffix(Path(path))


class ImageWriteError(OSError):
    """An output could not be written; the message is one line naming the user's path, never a temporary one."""


def check_output_path(path: PathType, protect: Iterable[PathType] = ()) -> Path:
    """Validate an output path before any work is done (before a model loads, say).

    Refuses an unsupported type, a protected input, a folder, and a path whose folder cannot hold
    it: an ancestor that is a file, or a folder (or the nearest existing ancestor of a missing
    one) in which a file cannot be created, tried by creating and removing one. Raises ValueError.
    """
    out = Path(path)
    _output_suffix(out)
    for other in protect:
        if _same_file(out, Path(other)):
            raise ValueError(f"{out}: refusing to overwrite a protected input file")
    if out.is_dir():
        raise ValueError(f"{out} is a folder; give a file name such as mask.nii.gz")
    check_writable_folder(out)
    return out


def _nearest_existing(folder: Path) -> Path:
    while not os.path.lexists(folder) and folder != folder.parent:
        folder = folder.parent
    return folder


def check_writable_folder(out: PathType) -> None:
    """Refuse ``out`` unless its folder exists as a folder (or can be created) and takes a new file."""
    out = Path(out)
    parent = out.parent
    existing = _nearest_existing(parent)
    if not existing.is_dir():
        raise ValueError(f"cannot write {out}: {existing} is a file, not a folder")
    try:
        # A real file, not os.access: read-only mounts, /proc and ACLs answer only to a try.
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".medsam-write-check-"):
            pass
    except OSError as error:
        where = f"folder {existing}" if existing == parent else f"{parent} cannot be created in {existing}, which"
        raise ValueError(f"cannot write {out}: {where} is not writable ({error.strerror or error})") from None


def _label_array(labels: np.ndarray) -> np.ndarray:
    """``labels`` as uint8/uint16 [i, j, k]; other integer types are narrowed if their values fit."""
    array = np.asarray(labels)
    if array.ndim != 3:
        raise ValueError(f"labels must be a 3D array [i, j, k], got shape {array.shape}")
    if array.dtype in (np.uint8, np.uint16):
        return array
    if array.dtype == bool:
        return array.astype(np.uint8)
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {array.dtype}")
    low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
    if low < 0 or high > 65535:
        raise ValueError(f"label values must lie in 0..65535, got {low}..{high}")
    return array.astype(np.uint8 if high < 256 else np.uint16)


def _same_file(a: Path, b: Path) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _atomic_write(path: Path, suffix: str, write: Callable[[Path], None]) -> None:
    """Run ``write`` on a hidden temporary file beside ``path``, then rename it over ``path``.

    The temporary name keeps ``suffix`` because nibabel and SimpleITK pick the format from it. A
    rename within one directory is atomic, so readers see the old file or the whole new one.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        existing = _nearest_existing(path.parent)
        reason = (
            f"{existing} is a file, not a folder"
            if not existing.is_dir()
            else (f"cannot create its folder {path.parent} ({error.strerror or error})")
        )
        raise ImageWriteError(f"cannot write {path}: {reason}") from None
    stem = path.name[: -len(suffix)]
    temporary = path.with_name(f".{stem}.{secrets.token_hex(6)}.tmp{suffix}")
    try:
        write(temporary)
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        _remove_quietly(temporary)
        if isinstance(error, Exception) and not isinstance(error, ImageWriteError):
            # The user never named the temporary file: the message names their path.
            raise ImageWriteError(f"cannot write {path}: {_write_failure(error, temporary, path)}") from None
        raise


def _remove_quietly(path: Path) -> None:
    with suppress(OSError):
        path.unlink(missing_ok=True)


def _write_failure(error: Exception, temporary: Path, path: Path) -> str:
    """The reason of a failed write, the temporary file's name replaced by the user's."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return _reason(error).replace(str(temporary), str(path)).replace(temporary.name, path.name)


def _nifti_header(array: np.ndarray, affine: np.ndarray, forms: NiftiForms | None) -> nib.Nifti1Header:
    """A header with both forms set: the source's codes (and its qform, on the source's own grid), else code 1.

    Readers differ in which form they prefer, so both hold the geometry. Codes that would lose it (both 0
    off the source grid, a qform-only header for a sheared affine) give way to code 1: the geometry first.
    """
    header = nib.Nifti1Header()
    header.set_data_shape(array.shape)
    header.set_data_dtype(array.dtype)
    header.set_xyzt_units("mm")
    qform_code, sform_code = (forms.qform_code, forms.sform_code) if forms is not None else (1, 1)
    on_source_grid = forms is not None and np.allclose(affine, forms.affine, atol=1e-5)
    header.set_qform(forms.qform if on_source_grid and qform_code > 0 else affine, code=qform_code)
    header.set_sform(affine, code=sform_code)
    if not np.allclose(header.get_best_affine(), affine, atol=1e-4):
        header.set_qform(affine, code=1)
        header.set_sform(affine, code=1)
    return header


def _write_nifti(path: Path, array: np.ndarray, affine: np.ndarray, forms: NiftiForms | None = None) -> None:
    # No affine given to the image: nibabel would otherwise rewrite the forms of a header that has codes 0.
    nib.save(nib.Nifti1Image(array, None, _nifti_header(array, affine, forms)), str(path))


def _write_sitk(path: Path, image: sitk.Image) -> None:
    writer = sitk.ImageFileWriter()
    writer.SetFileName(str(path))
    writer.SetUseCompression(True)
    with _native_output_captured():
        writer.Execute(image)


def _segment_extent(labels: np.ndarray, value: int) -> str:
    """Slicer's ``SegmentN_Extent``: inclusive 'i0 i1 j0 j1 k0 k1' of the segment, '0 -1 ...' if empty."""
    mask = labels == value
    if not mask.any():
        return "0 -1 0 -1 0 -1"
    (i0, j0, k0), (i1, j1, k1) = mask_box(mask)
    return f"{i0} {i1} {j0} {j1} {k0} {k1}"


def slicer_segment_metadata(
    labels: np.ndarray,
    segment_names: Mapping[int, str] | None = None,
    colors: Mapping[int, tuple[float, float, float]] | None = None,
) -> dict[str, str]:
    """3D Slicer ``.seg.nrrd`` key-values for a one-layer labelmap.

    Segments are the non-zero labels present plus every label named in ``segment_names``; unnamed
    ones are called ``Segment_<label>``, uncoloured ones get a palette colour.
    """
    names = dict(segment_names or {})
    rgb = dict(colors or {})
    values = sorted({int(v) for v in np.unique(labels) if v != 0} | {int(v) for v in names})
    if any(v <= 0 for v in values):
        raise ValueError("segment label values must be positive (0 is background)")
    meta = {
        "Segmentation_ContainedRepresentationNames": "Binary labelmap|",
        # Slicer >= 5.4 reads SourceRepresentation, older versions MasterRepresentation.
        "Segmentation_MasterRepresentation": "Binary labelmap",
        "Segmentation_SourceRepresentation": "Binary labelmap",
        "Segmentation_ReferenceImageExtentOffset": "0 0 0",
    }
    for n, value in enumerate(values):
        color = rgb.get(value, palette_colour(n))
        meta.update(
            {
                f"Segment{n}_ID": f"Segment_{value}",
                f"Segment{n}_Name": one_line(names.get(value, f"Segment_{value}")),  # NRRD key-value lines end at a newline
                f"Segment{n}_NameAutoGenerated": "0" if value in names else "1",
                f"Segment{n}_Color": " ".join(f"{float(c):.6g}" for c in color),
                f"Segment{n}_ColorAutoGenerated": "0" if value in rgb else "1",
                f"Segment{n}_LabelValue": str(value),
                f"Segment{n}_Layer": "0",
                f"Segment{n}_Extent": _segment_extent(labels, value),
            }
        )
    return meta


def write_label_volume(
    path: PathType,
    labels: np.ndarray,
    affine: np.ndarray,
    segment_names: dict[int, str] | None = None,
    colors: dict[int, tuple[float, float, float]] | None = None,
    protect: Iterable[PathType] = (),
    nifti: NiftiForms | None = None,
) -> Path:
    """Write a label volume ``labels[i, j, k]`` with the IJK -> RAS ``affine``; returns the path.

    The type follows the name: ``.nii``/``.nii.gz`` (qform and sform both set; with ``nifti``, the
    source volume's :attr:`Volume.nifti`, they keep the source's codes, else code 1),
    ``.nrrd`` and ``.mha`` (gzip/zlib compressed), ``.seg.nrrd`` (a 3D Slicer segmentation with
    ``segment_names`` and ``colors``; other types ignore those). The file is written beside the
    output under a temporary name and renamed over it, so a crash never leaves a partial output;
    missing folders are created. Raises ValueError when ``path`` is one of ``protect`` (the input
    image, say) or has an unsupported suffix, and :class:`ImageWriteError` (an OSError naming
    ``path``) when the write fails.
    """
    array = _label_array(labels)
    metadata = slicer_segment_metadata(array, segment_names, colors)
    return _write_array(path, array, affine, protect, segmentation_metadata=metadata, nifti=nifti)


def write_volume(
    path: PathType,
    array: np.ndarray,
    affine: np.ndarray,
    protect: Iterable[PathType] = (),
    nifti: NiftiForms | None = None,
) -> Path:
    """Write an image ``array[i, j, k]`` (any numeric dtype) with its IJK -> RAS ``affine``, atomically.

    Same types and guarantees as :func:`write_label_volume` except ``.seg.nrrd`` (labels only).
    """
    values = np.asarray(array)
    if values.ndim != 3 or not (np.issubdtype(values.dtype, np.number) or values.dtype == bool):
        raise ValueError(f"an image must be a 3D numeric array [i, j, k], got shape {values.shape}, dtype {values.dtype}")
    if _output_suffix(Path(path)) == ".seg.nrrd":
        raise ValueError(f"{path}: .seg.nrrd holds segmentations; write an image as .nii.gz, .nrrd or .mha")
    if values.dtype == bool:
        values = values.astype(np.uint8)
    return _write_array(path, values, affine, protect, nifti=nifti)


def _write_array(
    path: PathType,
    array: np.ndarray,
    affine: np.ndarray,
    protect: Iterable[PathType],
    segmentation_metadata: Mapping[str, str] | None = None,
    nifti: NiftiForms | None = None,
) -> Path:
    out = Path(path)
    for other in protect:
        if _same_file(out, Path(other)):
            raise ValueError(f"{out}: refusing to overwrite a protected input file")
    suffix = _output_suffix(out)
    a = check_affine(affine)
    if suffix in (".nii", ".nii.gz"):
        _atomic_write(out, suffix, lambda tmp: _write_nifti(tmp, array, a, nifti))
        return out
    image = sitk_from_array(array, a)
    if suffix == ".seg.nrrd":
        for key, value in (segmentation_metadata or {}).items():
            image.SetMetaData(key, value)
    _atomic_write(out, suffix, lambda tmp: _write_sitk(tmp, image))
    return out


def write_file_atomically(path: PathType, suffix: str, write: Callable[[Path], None]) -> Path:
    """For writers of other formats (2D label images): ``write`` fills a hidden temporary file beside
    ``path`` whose name ends in ``suffix`` (the real ending of ``path``), which is then renamed over
    ``path``, as this module's own writers do; raises :class:`ImageWriteError` naming ``path``. Returns ``path``."""
    out = Path(path)
    _atomic_write(out, suffix, write)
    return out


def is_same_file(a: PathType, b: PathType) -> bool:
    """Whether two paths name one file (the same resolved path, or the same file through a link)."""
    return _same_file(Path(a), Path(b))


@contextmanager
def native_output_captured() -> Iterator[list[str]]:
    """For other modules' SimpleITK calls: ITK/GDCM output kept off the terminal (see :func:`_native_output_captured`)."""
    with _native_output_captured() as lines:
        yield lines
