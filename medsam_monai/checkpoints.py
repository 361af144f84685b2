"""Loading SAM/MedSAM weights from every format users have, always without unpickling code.

Formats (detected from the file, not its name):

- the original state dict (``medsam_vit_b.pth``, ``sam_vit_{b,l,h}_*.pth``);
- training checkpoints that wrap it (``{"model": ...}``, ``{"state_dict": ...}``, ...), with or
  without the ``module.`` prefix of DistributedDataParallel or ``_orig_mod.`` of ``torch.compile``,
  including this project's own training checkpoints;
- Hugging Face ``SamModel`` weights (``pytorch_model.bin`` or ``model.safetensors``, or a folder
  holding one), whose keys are mapped back to the original names.
"""

from __future__ import annotations

import gzip
import json
import pickle
import re
import zipfile
import zlib
from collections.abc import Mapping
from os import PathLike
from pathlib import Path

import torch

from .download import verify_sha256
from .errors import one_line
from .networks import SAM_VARIANTS, Sam, build_sam_variant

StateDict = dict[str, torch.Tensor]

# The `tiny` model trained on synthetic CT phantoms by `python -m medsam_monai.training.demo_model`,
# shipped inside the package: the default weights of `--variant tiny` and of `medsam demo`. It knows
# phantoms, not anatomy.
TINY_DEMO_CHECKPOINT = Path(__file__).resolve().parent / "data" / "medsam_tiny_demo.safetensors"

ROOTS = ("image_encoder.", "prompt_encoder.", "mask_decoder.")
HF_ROOTS = ("vision_encoder.", "prompt_encoder.", "mask_decoder.", "shared_image_embedding.")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Keys under which training code commonly nests the model's state dict.
WRAPPER_KEYS = ("model", "state_dict", "model_state_dict", "network", "net", "module")

# Hugging Face SamModel name -> original SAM name, applied in order to each key.
_HF_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^vision_encoder\.", "image_encoder."),
    (r"^image_encoder\.layers\.", "image_encoder.blocks."),
    (r"^image_encoder\.blocks\.(\d+)\.layer_norm(\d)\.", r"image_encoder.blocks.\1.norm\2."),
    (r"^image_encoder\.patch_embed\.projection\.", "image_encoder.patch_embed.proj."),
    (r"^image_encoder\.neck\.conv1\.", "image_encoder.neck.0."),
    (r"^image_encoder\.neck\.layer_norm1\.", "image_encoder.neck.1."),
    (r"^image_encoder\.neck\.conv2\.", "image_encoder.neck.2."),
    (r"^image_encoder\.neck\.layer_norm2\.", "image_encoder.neck.3."),
    (r"^prompt_encoder\.shared_embedding\.positional_embedding$", "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"),
    (r"^prompt_encoder\.mask_embed\.conv1\.", "prompt_encoder.mask_downscaling.0."),
    (r"^prompt_encoder\.mask_embed\.layer_norm1\.", "prompt_encoder.mask_downscaling.1."),
    (r"^prompt_encoder\.mask_embed\.conv2\.", "prompt_encoder.mask_downscaling.3."),
    (r"^prompt_encoder\.mask_embed\.layer_norm2\.", "prompt_encoder.mask_downscaling.4."),
    (r"^prompt_encoder\.mask_embed\.conv3\.", "prompt_encoder.mask_downscaling.6."),
    (r"^prompt_encoder\.point_embed\.", "prompt_encoder.point_embeddings."),
    (r"^mask_decoder\.transformer\.layers\.(\d+)\.layer_norm(\d)\.", r"mask_decoder.transformer.layers.\1.norm\2."),
    (r"^mask_decoder\.transformer\.layer_norm_final_attn\.", "mask_decoder.transformer.norm_final_attn."),
    (r"^mask_decoder\.upscale_conv1\.", "mask_decoder.output_upscaling.0."),
    (r"^mask_decoder\.upscale_layer_norm\.", "mask_decoder.output_upscaling.1."),
    (r"^mask_decoder\.upscale_conv2\.", "mask_decoder.output_upscaling.3."),
)
# The decoder's MLP heads: HF names them proj_in, layers.0..n-3, proj_out; SAM numbers them 0..n-1.
_HF_MLP_HEAD = re.compile(
    r"^(mask_decoder\.(?:output_hypernetworks_mlps\.\d+|iou_prediction_head))\.(proj_in|layers\.(\d+)|proj_out)\.(.+)$"
)


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message says why and what to do, on one line."""


def load_state_dict(path: str | PathLike[str], sha256: str | None = None) -> StateDict:
    """Read any supported checkpoint file (or Hugging Face folder) into an original-format state dict.

    Args:
        path: a ``.pth``/``.pt``/``.bin``/``.safetensors`` file or a folder holding Hugging Face weights.
        sha256: expected hash of the file, checked before anything is read from it.

    Returns:
        ``{name: tensor}`` with the original SAM parameter names.
    """
    file = _resolve_weights_file(Path(path))
    if sha256 is not None:
        if file.is_dir():
            raise CheckpointError(f"--sha256 checks one file, but {file} is a folder of shards: give one weights file")
        verify_sha256(file, sha256)
    raw = _read_safetensors(file) if _is_safetensors(file) else _read_torch_file(file)
    return to_original_keys(raw, source=str(file))


def to_original_keys(obj: object, source: str = "checkpoint") -> StateDict:
    """Unwrap a loaded checkpoint object and name its tensors as the original SAM does."""
    state = _find_state_dict(obj, source)
    state = {_strip_wrapper_prefixes(k): v for k, v in state.items()}
    if any(k.startswith(("vision_encoder.", "shared_image_embedding.")) for k in state):
        state = _from_hugging_face(state)
    return state


def load_checkpoint_into(model: Sam, path: str | PathLike[str], sha256: str | None = None) -> Sam:
    """Load a checkpoint into ``model`` with strict key and shape matching."""
    state = load_state_dict(path, sha256=sha256)
    check_state_dict_fits(model, state, source=str(path))
    model.load_state_dict(state, strict=True)
    return model


def build_sam(
    variant: str = "vit_b",
    checkpoint: str | PathLike[str] | None = None,
    sha256: str | None = None,
    device: str | torch.device = "cpu",
) -> Sam:
    """Build SAM/MedSAM ``variant`` and load ``checkpoint`` (any supported format) strictly.

    Args:
        variant: a key of :data:`~medsam_monai.networks.SAM_VARIANTS` (``vit_b`` for MedSAM), or
            ``"auto"`` to take the variant the checkpoint fits.
        checkpoint: path of the weights; None leaves the model with random weights.
        sha256: expected hash of the checkpoint file, verified before loading when given.
        device: where the model is put.

    Returns:
        The model in eval mode.
    """
    state = load_state_dict(checkpoint, sha256=sha256) if checkpoint is not None else None
    if variant == "auto":
        if state is None:
            raise ValueError("variant='auto' needs a checkpoint to infer the variant from")
        variant = detect_variant(state) or _raise_no_variant(state, str(checkpoint))
    model = build_sam_variant(variant)
    if state is not None:
        check_state_dict_fits(model, state, source=str(checkpoint))
        model.load_state_dict(state, strict=True)
    return model.to(device).eval()


def detect_variant(state: Mapping[str, torch.Tensor]) -> str | None:
    """The registered variant whose parameter names and shapes are exactly those of ``state``."""
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    for name, expected in _variant_shapes().items():
        if expected == shapes:
            return name
    return None


def check_state_dict_fits(model: Sam, state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Raise one :class:`CheckpointError` naming missing, unexpected and mis-shaped keys, if any."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    given = {k: tuple(v.shape) for k, v in state.items()}
    missing = sorted(expected.keys() - given.keys())
    unexpected = sorted(given.keys() - expected.keys())
    misshaped = sorted(k for k in expected.keys() & given.keys() if expected[k] != given[k])
    if not (missing or unexpected or misshaped):
        return
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys ({_first(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({_first(unexpected)})")
    if misshaped:
        shown = ", ".join(f"{k}: file {given[k]} vs model {expected[k]}" for k in misshaped[:2])
        problems.append(f"{len(misshaped)} keys with other shapes ({shown}{', ...' if len(misshaped) > 2 else ''})")
    fitting = detect_variant(state)
    hint = (
        f"it fits variant {fitting!r}: use --variant {fitting}"
        if fitting
        else "it fits none of the variants " + ", ".join(SAM_VARIANTS)
    )
    variant = getattr(model, "variant", "") or "this model"
    raise CheckpointError(f"{source} does not fit variant {variant!r}: {'; '.join(problems)}; {hint}")


def _raise_no_variant(state: Mapping[str, torch.Tensor], source: str) -> str:
    raise CheckpointError(
        f"{source} fits none of the variants {', '.join(SAM_VARIANTS)} ({len(state)} tensors; e.g. {_first(sorted(state))})"
    )


def _first(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")


_VARIANT_SHAPES: dict[str, dict[str, tuple[int, ...]]] = {}


def _variant_shapes() -> dict[str, dict[str, tuple[int, ...]]]:
    # Built on the meta device: shapes without allocating any weights.
    if not _VARIANT_SHAPES:
        with torch.device("meta"):
            for name in SAM_VARIANTS:
                _VARIANT_SHAPES[name] = {k: tuple(v.shape) for k, v in build_sam_variant(name).state_dict().items()}
    return _VARIANT_SHAPES


def _resolve_weights_file(path: Path) -> Path:
    if path.is_dir():
        for name in ("model.safetensors", "pytorch_model.bin", "model.pt", "model.pth"):
            if (path / name).is_file():
                return path / name
        if (path / SAFETENSORS_INDEX).is_file() or (path / TORCH_INDEX).is_file():
            return path
        raise CheckpointError(f"{path} is a folder without model.safetensors, pytorch_model.bin or model.pt")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    return path


def _is_safetensors(path: Path) -> bool:
    if path.is_dir():
        return (path / SAFETENSORS_INDEX).is_file()
    with open(path, "rb") as f:
        head = f.read(9)
    # A safetensors file starts with the 8-byte little-endian length of its JSON header, then "{". The length
    # check (safetensors itself refuses headers over 100 MB) keeps out text files whose 9th character is "{":
    # eight text bytes read as a length are above 2**61.
    header_length = int.from_bytes(head[:8], "little")
    return len(head) == 9 and head[8:9] == b"{" and header_length <= _MAX_SAFETENSORS_HEADER


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    files = _index_shards(path, SAFETENSORS_INDEX) if path.is_dir() else [path]
    state: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            state.update(load_file(str(file)))
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{file} is not a readable safetensors file: {one_line(err)}") from None
    return state


def recorded_preprocessing(path: str | PathLike[str]) -> str | None:
    """The ``preprocessing`` a safetensors checkpoint records in its metadata (our own files write
    it), or None: not safetensors, no such key, or unreadable (the load reports that)."""
    path = Path(path)
    if not path.is_file() or not _is_safetensors(path):
        return None
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError):
        return None
    return metadata.get("preprocessing")


def _read_torch_file(path: Path) -> object:
    if path.is_dir():
        state: dict[str, object] = {}
        for shard in _index_shards(path, TORCH_INDEX):
            part = _read_torch_file(shard)
            state.update(part if isinstance(part, Mapping) else {})
        return state
    if _starts_with(path, _ZIP_MAGIC):
        _check_torch_archive(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for a corrupt file
        raise _torch_load_error(path, err) from None


def _torch_load_error(path: Path, err: Exception) -> CheckpointError:
    """The one-line error for a file torch.load refused: a pickle with code in it, another kind of file, or damage."""
    detail = _torch_error_detail(err)
    if isinstance(err, pickle.UnpicklingError) and _FORBIDDEN_PICKLE.search(detail):
        return CheckpointError(
            f"refusing to load {path}: it holds pickled Python objects, not only weights ({detail}); "
            "only weights are loaded (weights_only=True). If you trust the file, re-save its state_dict with torch.save"
        )
    protocol = _pickle_protocol(path)
    if isinstance(err, pickle.UnpicklingError) and protocol is not None:
        return CheckpointError(
            f"refusing to load {path}: it is a Python pickle (protocol {protocol}) that the weights-only loader cannot "
            f"read ({detail}); only weights are loaded (weights_only=True). If you trust the file, re-save its "
            "state_dict with torch.save"
        )
    kind = describe_file_type(path)
    if kind is not None:
        return _not_a_checkpoint(path, kind)
    if isinstance(err, pickle.UnpicklingError):
        return CheckpointError(
            f"{path} is not a PyTorch checkpoint: neither a torch.save archive nor a pickle of tensors ({detail})"
        )
    return CheckpointError(f"{path} is not a readable PyTorch checkpoint: {detail}")


def _torch_error_detail(err: Exception) -> str:
    """The line of a torch.load error that says what is wrong, without torch's advice around it."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(_TORCH_ADVICE)]
    return (useful or lines or [type(err).__name__])[0]


def _not_a_checkpoint(path: Path, kind: str) -> CheckpointError:
    return CheckpointError(
        f"{path} is not a checkpoint file: it looks like {kind}; give SAM/MedSAM weights "
        "(.pth, .pt, .bin or .safetensors) or a Hugging Face model folder"
    )


# --------------------------------------------------------------------------- #
# Sharded Hugging Face folders: an index names the shard holding each tensor
# --------------------------------------------------------------------------- #

_MAX_SAFETENSORS_HEADER = 100 << 20
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_INDEX = "pytorch_model.bin.index.json"
# The index of even a ViT-H checkpoint is a few tens of kB: anything near this is not an index.
_MAX_INDEX_BYTES = 16 << 20


def _index_shards(folder: Path, index_name: str) -> list[Path]:
    """The shard files named by ``folder/index_name``, each checked to lie inside ``folder``.

    Returns:
        the distinct shard paths, sorted, each an existing file.
    """
    index_path = folder / index_name
    weight_map = _read_weight_map(index_path)
    bad = sorted({repr(name) for name in weight_map.values() if not isinstance(name, str) or not name})
    if bad:
        raise CheckpointError(
            f"{index_path} is not a valid index: its weight_map has shard names that are not file names ({_first(bad)})"
        )
    return sorted({_checked_shard(folder, index_path, name) for name in weight_map.values()})


def _read_weight_map(index_path: Path) -> Mapping[str, object]:
    size = index_path.stat().st_size
    if size > _MAX_INDEX_BYTES:
        raise CheckpointError(f"{index_path} is not a valid index: {size:,} bytes, more than any index holds")
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{index_path} is not a valid index: not JSON ({one_line(err)})") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(
            f'{index_path} is not a valid index: it needs a non-empty "weight_map" object of tensor name -> shard file'
        )
    return weight_map


def _checked_shard(folder: Path, index_path: Path, name: str) -> Path:
    """``folder/name`` with symlinks resolved, refused unless it is a file inside ``folder``."""
    shard = folder / name
    target = shard.resolve()
    if Path(name).is_absolute() or not any(target.is_relative_to(root) for root in _shard_roots(folder)):
        raise CheckpointError(f"{index_path} names shard {name!r}, which lies outside {folder}: refused")
    if not target.is_file():
        raise CheckpointError(f"{index_path} names shard {name!r}, which is missing from {folder}")
    # The checked target itself is returned, so a symlink swapped after the check is not followed.
    return target


def _shard_roots(folder: Path) -> list[Path]:
    """Where the shards of ``folder`` may really live (after resolving symlinks).

    A Hugging Face hub cache keeps ``models--org--name/snapshots/<revision>/`` as symlinks into the
    repository's ``blobs/`` folder, so a snapshot's shards legitimately resolve there.
    """
    real = folder.resolve()
    roots = [real]
    if real.parent.name == "snapshots" and (real.parent.parent / "blobs").is_dir():
        roots.append(real.parent.parent / "blobs")
    return roots


# --------------------------------------------------------------------------- #
# ZIP archives (torch.save's format): refuse bombs and foreign archives before torch inflates anything
# --------------------------------------------------------------------------- #

_ZIP_MAGIC = b"PK\x03\x04"
# torch.save stores its entries uncompressed, so together they inflate to less than the file's size; a factor
# leaves room for an archive someone re-zipped with deflate (weights barely compress) while a deflate bomb
# (up to ~1000:1) is refused from its directory alone.
_MAX_ZIP_INFLATION = 4
# The weights_only unpickler's words for a pickle that would build objects other than tensors, and the advice
# torch wraps around every such error.
_FORBIDDEN_PICKLE = re.compile(r"GLOBAL|allowlist|Can only (create|build)")
_TORCH_ADVICE = ("Weights only load failed", "Please file an issue", "Check the documentation")


def _check_torch_archive(path: Path) -> None:
    """Refuse a ZIP that is not a torch.save archive, or whose entries declare more bytes than it can hold.

    Only the central directory is read (declared sizes), nothing is decompressed.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: damaged ZIP archive ({one_line(err)})") from None
    names = [entry.filename for entry in entries]
    if not _is_torch_archive(names):
        raise _not_a_checkpoint(path, _foreign_zip_kind(names))
    file_size = path.stat().st_size
    declared = sum(entry.file_size for entry in entries)
    limit = _MAX_ZIP_INFLATION * file_size
    if declared > limit:
        largest = max(entries, key=lambda entry: entry.file_size)
        raise CheckpointError(
            f"refusing to load {path}: its ZIP entries declare {declared:,} bytes uncompressed in a {file_size:,}-byte file "
            f"(largest: {largest.filename}, {largest.file_size:,} bytes), more than {_MAX_ZIP_INFLATION}x its size; "
            "torch.save never compresses, so this is a decompression bomb or not a checkpoint torch wrote"
        )


def _zip_kind(path: Path) -> str | None:
    """None for a torch.save archive (a checkpoint, maybe), else what kind of ZIP it is."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return "a damaged ZIP archive"
    return None if _is_torch_archive(names) else _foreign_zip_kind(names)


def _is_torch_archive(names: list[str]) -> bool:
    return any(re.fullmatch(r"[^/]+/data\.pkl", name) for name in names)


def _foreign_zip_kind(names: list[str]) -> str:
    if names and all(name.endswith(".npy") for name in names):
        return "a NumPy .npz archive"
    return f"a ZIP archive that is not a PyTorch checkpoint (no data.pkl; holds {_first(sorted(names)) or 'nothing'})"


# --------------------------------------------------------------------------- #
# What a file that is not a checkpoint looks like, from its first bytes
# --------------------------------------------------------------------------- #

# (offset, magic bytes, what the file is), checked in order.
_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"NRRD000", "an NRRD image (.nrrd)"),
    (128, b"DICM", "a DICOM file (.dcm)"),
    (0, b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (0, b"\xff\xd8\xff", "a JPEG image"),
    (0, b"GIF8", "a GIF image"),
    (0, b"II*\x00", "a TIFF image"),
    (0, b"MM\x00*", "a TIFF image"),
    (0, b"%PDF", "a PDF document"),
    (0, b"\x89HDF\r\n\x1a\n", "an HDF5 file (.h5, .hdf5, MINC-2 .mnc)"),
    (0, b"\x93NUMPY", "a NumPy array (.npy)"),
    (0, b"ObjectType", "a MetaImage (.mha/.mhd)"),
    (0, b"PK\x05\x06", "an empty ZIP archive"),
    (257, b"ustar", "a tar archive"),
    (0, b"BZh", "a bzip2-compressed file (.bz2)"),
    (0, b"\xfd7zXZ\x00", "an xz-compressed file (.xz)"),
    (0, b"\x28\xb5\x2f\xfd", "a zstd-compressed file (.zst)"),
    (0, b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
)
_GZIP_MAGIC = b"\x1f\x8b"
_SNIFF_BYTES = 1024


def describe_file_type(path: str | PathLike[str]) -> str | None:
    """Name what a file looks like from its first bytes (``"a NIfTI-1 image (.nii)"``), or None if unknown.

    Used to tell users who pass an image (or anything else) as a checkpoint what they passed instead.
    """
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
    if not head:
        return "an empty file"
    if head.startswith(_GZIP_MAGIC):
        return _gzip_kind(_gunzip_head(Path(path)))
    if head.startswith(_ZIP_MAGIC):
        return _zip_kind(Path(path))
    return _describe_bytes(head)


def _gzip_kind(inner: bytes | None) -> str:
    kind = _describe_bytes(inner) if inner else None
    if kind is None or kind in ("a plain text file", "a JSON text file"):
        return "a gzip-compressed file (.gz)"
    if kind == "a NIfTI-1 image (.nii)" or kind == "a NIfTI-2 image (.nii)":
        return f"a gzip-compressed {kind[2:-7]} (.nii.gz)"
    if kind == "a tar archive":
        return "a gzip-compressed tar archive (.tar.gz)"
    return f"a gzip-compressed file holding {kind}"


def _describe_bytes(head: bytes) -> str | None:
    nifti = _nifti_kind(head)
    if nifti is not None:
        return nifti
    for offset, magic, kind in _SIGNATURES:
        if head[offset : offset + len(magic)] == magic:
            return kind
    # Analyze has no magic, only its header size: checked after every format that has one.
    if len(head) >= 348 and 348 in _header_sizes(head):
        return "an Analyze 7.5 header (.hdr)"
    return _text_kind(head)


def _nifti_kind(head: bytes) -> str | None:
    """NIfTI-1/-2 headers: sizeof_hdr (348 or 540, either byte order) and the magic string."""
    sizes = _header_sizes(head)
    if 540 in sizes and head[4:8] in (b"n+2\x00", b"ni2\x00"):
        return "a NIfTI-2 image (.nii)" if head[4:8] == b"n+2\x00" else "a NIfTI-2 header (.hdr)"
    if 348 in sizes and head[344:348] in (b"n+1\x00", b"ni1\x00"):
        return "a NIfTI-1 image (.nii)" if head[344:348] == b"n+1\x00" else "a NIfTI-1 header (.hdr)"
    return None


def _header_sizes(head: bytes) -> set[int]:
    return {int.from_bytes(head[:4], order) for order in ("little", "big")}


def _text_kind(head: bytes) -> str | None:
    # The sniffed head may end inside a multi-byte character: ignore at most its last 3 bytes.
    for cut in range(4):
        try:
            text = head[: len(head) - cut].decode("utf-8")
            break
        except UnicodeDecodeError:
            continue
    else:
        return None
    if not text or any(not (char.isprintable() or char in "\t\r\n\f") for char in text):
        return None
    return "a JSON text file" if text.lstrip().startswith(("{", "[")) else "a plain text file"


def _gunzip_head(path: Path) -> bytes | None:
    """The first bytes of a gzip file's content (a bounded read: never the whole stream)."""
    try:
        with gzip.open(path, "rb") as f:
            return f.read(_SNIFF_BYTES)
    except (OSError, EOFError, zlib.error):
        return None


def _pickle_protocol(path: Path) -> int | None:
    """The protocol of a file that starts as a binary pickle does (PROTO opcode 0x80, then 2 to 5), else None."""
    with open(path, "rb") as f:
        head = f.read(2)
    return head[1] if len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= pickle.HIGHEST_PROTOCOL else None


def _starts_with(path: Path, magic: bytes) -> bool:
    with open(path, "rb") as f:
        return f.read(len(magic)) == magic


def _looks_like_state_dict(obj: object) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) for k in obj)
        and any(_strip_wrapper_prefixes(k).startswith(ROOTS + HF_ROOTS) for k in obj)
    )


def _find_state_dict(obj: object, source: str) -> StateDict:
    if _looks_like_state_dict(obj):
        return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}  # type: ignore[union-attr]
    if isinstance(obj, Mapping):
        for key in WRAPPER_KEYS:
            if key in obj and _looks_like_state_dict(obj[key]):
                return _find_state_dict(obj[key], source)
    what = f"keys {_first(sorted(map(str, obj)))}" if isinstance(obj, Mapping) else type(obj).__name__
    raise CheckpointError(f"{source} holds no SAM/MedSAM weights (found {what})")


def _strip_wrapper_prefixes(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix) :], True
    return key


def _from_hugging_face(state: Mapping[str, torch.Tensor]) -> StateDict:
    head_depths = _hf_mlp_head_depths(state)
    out: StateDict = {}
    for key, value in state.items():
        if key == "shared_image_embedding.positional_embedding":
            # transformers ties this to prompt_encoder.shared_embedding and may save either copy.
            if "prompt_encoder.shared_embedding.positional_embedding" in state:
                continue
            key = "prompt_encoder.shared_embedding.positional_embedding"
        for pattern, replacement in _HF_RENAMES:
            key = re.sub(pattern, replacement, key)
        match = _HF_MLP_HEAD.match(key)
        if match:
            head, part, hidden, rest = match.groups()
            index = 0 if part == "proj_in" else head_depths[head] - 1 if part == "proj_out" else int(hidden) + 1
            key = f"{head}.layers.{index}.{rest}"
        out[key] = value
    return out


def _hf_mlp_head_depths(state: Mapping[str, torch.Tensor]) -> dict[str, int]:
    hidden_layers: dict[str, set[int]] = {}
    for key in state:
        match = _HF_MLP_HEAD.match(key)
        if match:
            head, _, hidden, _ = match.groups()
            hidden_layers.setdefault(head, set())
            if hidden is not None:
                hidden_layers[head].add(int(hidden))
    return {head: len(layers) + 2 for head, layers in hidden_layers.items()}
