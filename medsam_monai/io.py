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

import os
import re
import secrets
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from .orientation import check_affine

PathType = str | PathLike[str]

# ITK/DICOM patient coordinates are LPS; this flips them to RAS (and back: it is its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

_NIBABEL_SUFFIXES = (".nii", ".nii.gz", ".mgz", ".mgh")

# Default segment colours (RGB in 0..1), the first entries of 3D Slicer's generic anatomy colours.
_PALETTE: tuple[tuple[float, float, float], ...] = (
    (0.501961, 0.682353, 0.501961),
    (0.945098, 0.839216, 0.568627),
    (0.694118, 0.478431, 0.396078),
    (0.435294, 0.721569, 0.823529),
    (0.847059, 0.396078, 0.309804),
    (0.866667, 0.509804, 0.396078),
    (0.564706, 0.933333, 0.564706),
    (0.752941, 0.407843, 0.345098),
    (0.862745, 0.960784, 0.078431),
    (0.305882, 0.247059, 0.0),
)


class ImageReadError(ValueError):
    """A volume could not be read; the message is one line naming the path and the reason."""


@dataclass
class Volume:
    """A 3D image: ``array[i, j, k]`` in file voxel order and the IJK -> RAS (mm) ``affine``."""

    array: np.ndarray
    affine: np.ndarray
    source: str = ""

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
# Reading
# --------------------------------------------------------------------------------------------


def _one_line(error: BaseException, path: Path | None = None) -> str:
    """A short single-line reason from an exception (ITK's messages span several lines)."""
    text = str(error)
    # Keep what follows ITK's "file.cxx:99: sitk::ERROR:" / "ITK ERROR: Reader(0x...):" preamble.
    match = re.search(r"(?:sitk::ERROR:|ITK ERROR:\s*\w+\(0x[0-9a-fA-F]+\):)\s*(.*)", text, flags=re.S)
    if match:
        text = match.group(1)
    if path is not None:
        # The message already starts with the full path; the name is enough here.
        text = text.replace(str(path), path.name)
    text = " ".join(text.split()) or type(error).__name__
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


def _name_has_suffix(path: Path, suffixes: Iterable[str]) -> bool:
    name = path.name.lower()
    return any(name.endswith(s) for s in suffixes)


def _read_nibabel(path: Path) -> Volume:
    try:
        # mmap=False: a memory map would keep the input file open (and locked on Windows).
        image = nib.load(str(path), mmap=False)
        # asanyarray(dataobj) keeps the stored dtype unless the header asks for scaling.
        array = np.asanyarray(image.dataobj)
        affine = np.asarray(image.affine, dtype=float)
    except Exception as error:  # nibabel raises many types for corrupt or foreign files
        raise ImageReadError(f"{path}: cannot read as NIfTI/MGH: {_one_line(error, path)}") from None
    return Volume(_native(_as_3d(array, path)), affine, str(path))


def _volume_from_sitk(image: sitk.Image, path: Path) -> Volume:
    """A Volume from a SimpleITK image, turning its [k, j, i(, c)] array into [i, j, k(, c)]."""
    if image.GetDimension() < 3:
        size = tuple(image.GetSize())
        raise ImageReadError(f"{path}: expected a 3D image, got shape {size}")
    array = sitk.GetArrayFromImage(image)
    spatial = image.GetDimension()
    order = tuple(reversed(range(spatial))) + tuple(range(spatial, array.ndim))
    return Volume(_as_3d(array.transpose(order), path), affine_from_sitk(image), str(path))


def _read_sitk_file(path: Path) -> Volume:
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise ImageReadError(f"{path}: unsupported or unreadable image file: {_one_line(error, path)}") from None
    return _volume_from_sitk(image, path)


def _position_along_normal(files: list[str]) -> list[float]:
    """Each file's ImagePositionPatient projected on the first file's slice normal (GDCM header)."""
    positions: list[float] = []
    normal: np.ndarray | None = None
    for name in files:
        reader = sitk.ImageFileReader()
        reader.SetFileName(name)
        reader.ReadImageInformation()
        if normal is None:
            # GDCM's direction columns are the row and column cosines and their cross product.
            normal = np.array(reader.GetDirection(), dtype=float).reshape(3, 3)[:, 2]
        positions.append(float(np.dot(reader.GetOrigin(), normal)))
    return positions


def _sorted_series(files: list[str], folder: Path) -> list[str]:
    """Files sorted by position along the slice normal (ties keep file-name order)."""
    try:
        positions = _position_along_normal(files)
    except RuntimeError as error:
        raise ImageReadError(f"{folder}: unreadable DICOM file in series: {_one_line(error)}") from None
    ordered = sorted(zip(positions, files))
    if len({round(p, 4) for p, _ in ordered}) < len(ordered):
        warnings.warn(f"{folder}: several DICOM slices share a position; the volume may be wrong", stacklevel=4)
    return [name for _, name in ordered]


# Warnings name the caller of read_volume: read_volume -> _read_dicom_folder -> helper -> warn.
def _choose_series(folder: Path, series_uid: str | None) -> tuple[str, list[str]]:
    """The requested series, or the one with most files (with a warning if there are several)."""
    ids = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    if not ids:
        if not any(folder.iterdir()):
            raise ImageReadError(f"{folder}: empty folder")
        raise ImageReadError(f"{folder}: no DICOM series found in folder")
    files = {uid: list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)) for uid in ids}
    if series_uid is not None:
        if series_uid not in files:
            raise ImageReadError(f"{folder}: no DICOM series {series_uid!r} (found {len(ids)} series)")
        return series_uid, files[series_uid]
    chosen = max(ids, key=lambda uid: len(files[uid]))
    if len(ids) > 1:
        warnings.warn(
            f"{folder} holds {len(ids)} DICOM series; reading {chosen} ({len(files[chosen])} files), "
            "the one with most files; pass series_uid to choose another",
            stacklevel=4,
        )
    return chosen, files[chosen]


def _read_dicom_folder(folder: Path, series_uid: str | None) -> Volume:
    uid, files = _choose_series(folder, series_uid)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(_sorted_series(files, folder))
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise ImageReadError(f"{folder}: cannot read DICOM series {uid}: {_one_line(error, folder)}") from None
    return _volume_from_sitk(image, folder)


def read_volume(path: PathType, series_uid: str | None = None) -> Volume:
    """Read a 3D image file or DICOM series folder as a :class:`Volume` (original dtype kept).

    Files: ``.nii``, ``.nii.gz``, ``.mgz``/``.mgh`` (nibabel); ``.nrrd``/``.nhdr``, ``.mha``/``.mhd``
    and anything else SimpleITK reads, such as a single DICOM file. A folder is read as a DICOM
    series, sorted by position along the slice normal; ``series_uid`` picks one of several series,
    otherwise the largest is read with a warning. A trailing dim of 1 (a 4D image holding one
    volume) is dropped. Raises :class:`ImageReadError` with a one-line message.
    """
    p = Path(path)
    if not p.exists():
        raise ImageReadError(f"{p}: no such file or folder")
    if p.is_dir():
        return _read_dicom_folder(p, series_uid)
    if _name_has_suffix(p, _NIBABEL_SUFFIXES):
        return _read_nibabel(p)
    return _read_sitk_file(p)


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


def check_output_path(path: PathType, protect: Iterable[PathType] = ()) -> Path:
    """Validate an output path before any work is done: supported type, not a protected input."""
    out = Path(path)
    _output_suffix(out)
    for other in protect:
        if _same_file(out, Path(other)):
            raise ValueError(f"{out}: refusing to overwrite a protected input file")
    if out.is_dir():
        raise ValueError(f"{out} is a folder; give a file name such as mask.nii.gz")
    return out


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
    path.parent.mkdir(parents=True, exist_ok=True)
    stem = path.name[: -len(suffix)]
    temporary = path.with_name(f".{stem}.{secrets.token_hex(6)}.tmp{suffix}")
    try:
        write(temporary)
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _write_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    image = nib.Nifti1Image(array, affine)
    image.header.set_data_dtype(array.dtype)
    image.header.set_xyzt_units("mm")
    # Both forms, code 1 (scanner): readers differ in which one they prefer.
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, str(path))


def _write_sitk(path: Path, image: sitk.Image) -> None:
    writer = sitk.ImageFileWriter()
    writer.SetFileName(str(path))
    writer.SetUseCompression(True)
    writer.Execute(image)


def _segment_extent(labels: np.ndarray, value: int) -> str:
    """Slicer's ``SegmentN_Extent``: inclusive 'i0 i1 j0 j1 k0 k1' of the segment, '0 -1 ...' if empty."""
    mask = labels == value
    ij = mask.any(axis=2)
    if not ij.any():
        return "0 -1 0 -1 0 -1"
    i = np.flatnonzero(ij.any(axis=1))
    j = np.flatnonzero(ij.any(axis=0))
    k = np.flatnonzero(mask.any(axis=(0, 1)))
    return f"{i[0]} {i[-1]} {j[0]} {j[-1]} {k[0]} {k[-1]}"


def _clean(text: str) -> str:
    """A header-safe value: NRRD key-value lines end at a newline."""
    return " ".join(str(text).split())


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
        color = rgb.get(value, _PALETTE[n % len(_PALETTE)])
        meta.update({
            f"Segment{n}_ID": f"Segment_{value}",
            f"Segment{n}_Name": _clean(names.get(value, f"Segment_{value}")),
            f"Segment{n}_NameAutoGenerated": "0" if value in names else "1",
            f"Segment{n}_Color": " ".join(f"{float(c):.6g}" for c in color),
            f"Segment{n}_ColorAutoGenerated": "0" if value in rgb else "1",
            f"Segment{n}_LabelValue": str(value),
            f"Segment{n}_Layer": "0",
            f"Segment{n}_Extent": _segment_extent(labels, value),
        })
    return meta


def write_label_volume(
    path: PathType,
    labels: np.ndarray,
    affine: np.ndarray,
    segment_names: dict[int, str] | None = None,
    colors: dict[int, tuple[float, float, float]] | None = None,
    protect: Iterable[PathType] = (),
) -> Path:
    """Write a label volume ``labels[i, j, k]`` with the IJK -> RAS ``affine``; returns the path.

    The type follows the name: ``.nii``/``.nii.gz`` (qform and sform both set, code 1),
    ``.nrrd`` and ``.mha`` (gzip/zlib compressed), ``.seg.nrrd`` (a 3D Slicer segmentation with
    ``segment_names`` and ``colors``; other types ignore those). The file is written beside the
    output under a temporary name and renamed over it, so a crash never leaves a partial output;
    missing folders are created. Raises ValueError when ``path`` is one of ``protect`` (the input
    image, say) or has an unsupported suffix.
    """
    array = _label_array(labels)
    metadata = slicer_segment_metadata(array, segment_names, colors)
    return _write_array(path, array, affine, protect, segmentation_metadata=metadata)


def write_volume(path: PathType, array: np.ndarray, affine: np.ndarray, protect: Iterable[PathType] = ()) -> Path:
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
    return _write_array(path, values, affine, protect)


def _write_array(
    path: PathType,
    array: np.ndarray,
    affine: np.ndarray,
    protect: Iterable[PathType],
    segmentation_metadata: Mapping[str, str] | None = None,
) -> Path:
    out = Path(path)
    for other in protect:
        if _same_file(out, Path(other)):
            raise ValueError(f"{out}: refusing to overwrite a protected input file")
    suffix = _output_suffix(out)
    a = check_affine(affine)
    if suffix in (".nii", ".nii.gz"):
        _atomic_write(out, suffix, lambda tmp: _write_nifti(tmp, array, a))
        return out
    image = sitk_from_array(array, a)
    if suffix == ".seg.nrrd":
        for key, value in (segmentation_metadata or {}).items():
            image.SetMetaData(key, value)
    _atomic_write(out, suffix, lambda tmp: _write_sitk(tmp, image))
    return out
