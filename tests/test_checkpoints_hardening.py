"""Hostile or mistaken checkpoint inputs: malformed or escaping Hugging Face indexes, ZIP bombs, files that are
not checkpoints at all. Each ends in one CheckpointError line (``medsam: error: ...``, exit 2 from the CLI)."""

from __future__ import annotations

import collections
import io
import json
import os
import pickle
import re
import struct
import subprocess
import sys
import textwrap
import zipfile
import zlib
from pathlib import Path

import nibabel
import pydicom.data
import pytest
import skimage.data
import torch
from safetensors.torch import save_file

from medsam_monai import CheckpointError, build_sam, load_state_dict
from medsam_monai.checkpoints import SAFETENSORS_INDEX, TORCH_INDEX, describe_file_type
from medsam_monai.cli import main
from medsam_monai.networks import build_sam_variant

NIBABEL_DATA = Path(nibabel.__file__).parent / "tests" / "data"
SKIMAGE_DATA = Path(skimage.data.__file__).parent


@pytest.fixture(scope="module")
def tiny_state():
    torch.manual_seed(0)
    model = build_sam_variant("tiny")
    for p in model.parameters():
        p.data.normal_()
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_cli_error(argv: list[str], capsys, *fragments: str) -> str:
    """Run the CLI in-process: exit 2 and exactly one ``medsam: error:`` line holding ``fragments``."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("medsam: error: ") and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err, err
    return err


def write_shards(folder: Path, state: dict, index_name: str, shard_names: tuple[str, str]) -> None:
    """Split ``state`` over two shard files (safetensors or torch.save) and write their index."""
    folder.mkdir(parents=True, exist_ok=True)
    keys = sorted(state)
    halves = (keys[: len(keys) // 2], keys[len(keys) // 2 :])
    weight_map = {}
    for name, half in zip(shard_names, halves):
        part = {k: state[k].contiguous() for k in half}
        if index_name == SAFETENSORS_INDEX:
            save_file(part, str(folder / name))
        else:
            torch.save(part, folder / name)
        weight_map.update(dict.fromkeys(half, name))
    (folder / index_name).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


# --------------------------------------------------------------------------- #
# 11. Malformed index files
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("index_name", [SAFETENSORS_INDEX, TORCH_INDEX])
@pytest.mark.parametrize(
    "content, match",
    [
        pytest.param("{}", 'non-empty "weight_map"', id="empty object"),
        pytest.param("[]", 'non-empty "weight_map"', id="a list"),
        pytest.param('{"weight_map": {}}', 'non-empty "weight_map"', id="empty weight_map"),
        pytest.param('{"weight_map": ["a.safetensors"]}', 'non-empty "weight_map"', id="weight_map a list"),
        pytest.param('{"weight_map": {"a": 3}}', r"not file names \(3\)", id="int shard name"),
        pytest.param('{"weight_map": {"a": null}}', r"not file names \(None\)", id="null shard name"),
        pytest.param('{"weight_map": {"a": [1]}}', r"not file names \(\[1\]\)", id="unhashable shard name"),
        pytest.param('{"weight_map": {"a": ""}}', r"not file names \(''\)", id="empty shard name"),
        pytest.param("{not json", "not JSON", id="not JSON"),
    ],
)
def test_malformed_index_is_one_line(tmp_path, capsys, index_name, content, match):
    (tmp_path / index_name).write_text(content)
    with pytest.raises(CheckpointError, match=match) as info:
        load_state_dict(tmp_path)
    assert "\n" not in str(info.value) and "not a valid index" in str(info.value)
    assert_cli_error(["inspect-checkpoint", str(tmp_path)], capsys, "not a valid index")


def test_sharded_folders_load_the_same_weights(tmp_path, tiny_state):
    """The valid case the index checks must keep working, for both index kinds."""
    for index_name, suffix in ((SAFETENSORS_INDEX, "safetensors"), (TORCH_INDEX, "bin")):
        folder = tmp_path / suffix
        write_shards(folder, tiny_state, index_name, (f"model-00001-of-00002.{suffix}", f"model-00002-of-00002.{suffix}"))
        loaded = build_sam("tiny", folder).state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in tiny_state.items())


def test_sha256_of_a_sharded_folder_is_one_line(tmp_path, tiny_state):
    write_shards(tmp_path, tiny_state, SAFETENSORS_INDEX, ("a.safetensors", "b.safetensors"))
    with pytest.raises(CheckpointError, match="checks one file"):
        load_state_dict(tmp_path, sha256="0" * 64)


# --------------------------------------------------------------------------- #
# 12. Shards outside the folder
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("index_name, suffix", [(SAFETENSORS_INDEX, "safetensors"), (TORCH_INDEX, "bin")])
@pytest.mark.parametrize("how", ["parent", "absolute", "symlink", "nested parent"])
def test_shard_outside_the_folder_is_refused(tmp_path, capsys, tiny_state, index_name, suffix, how):
    # Real, loadable shards wait outside the folder: only the containment check can refuse them.
    outside = tmp_path / "elsewhere"
    write_shards(outside, tiny_state, index_name, (f"a.{suffix}", f"b.{suffix}"))
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    names = {
        "parent": f"../elsewhere/a.{suffix}",
        "absolute": str(outside / f"a.{suffix}"),
        "symlink": f"link.{suffix}",
        "nested parent": f"sub/../../elsewhere/a.{suffix}",
    }
    if how == "symlink":
        (folder / f"link.{suffix}").symlink_to(outside / f"a.{suffix}")
    keys = sorted(tiny_state)
    (folder / index_name).write_text(json.dumps({"weight_map": dict.fromkeys(keys, names[how])}))
    with pytest.raises(CheckpointError, match="lies outside .*refused") as info:
        load_state_dict(folder)
    assert "\n" not in str(info.value)
    assert_cli_error(["inspect-checkpoint", str(folder)], capsys, "lies outside")


def test_shard_in_a_subfolder_and_hub_cache_symlinks_are_allowed(tmp_path, tiny_state):
    """Inside the folder is fine, and so is a hub cache snapshot whose shards are symlinks into ``blobs/``."""
    nested = tmp_path / "nested"
    write_shards(nested / "weights", tiny_state, SAFETENSORS_INDEX, ("a.safetensors", "b.safetensors"))
    (nested / "weights" / SAFETENSORS_INDEX).rename(nested / SAFETENSORS_INDEX)
    index = json.loads((nested / SAFETENSORS_INDEX).read_text())
    index["weight_map"] = {k: f"weights/{v}" for k, v in index["weight_map"].items()}
    (nested / SAFETENSORS_INDEX).write_text(json.dumps(index))
    assert load_state_dict(nested).keys() == tiny_state.keys()

    repo = tmp_path / "hub" / "models--org--sam"
    write_shards(repo / "blobs", tiny_state, SAFETENSORS_INDEX, ("1111", "2222"))
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    index = json.loads((repo / "blobs" / SAFETENSORS_INDEX).read_text())
    renamed = {"1111": "model-00001-of-00002.safetensors", "2222": "model-00002-of-00002.safetensors"}
    for blob, name in renamed.items():
        (snapshot / name).symlink_to(Path("../../blobs") / blob)
    index["weight_map"] = {k: renamed[v] for k, v in index["weight_map"].items()}
    (snapshot / SAFETENSORS_INDEX).write_text(json.dumps(index))
    assert load_state_dict(snapshot).keys() == tiny_state.keys()


def test_missing_shard_is_named(tmp_path):
    (tmp_path / SAFETENSORS_INDEX).write_text(json.dumps({"weight_map": {"a": "absent.safetensors"}}))
    with pytest.raises(CheckpointError, match="'absent.safetensors', which is missing"):
        load_state_dict(tmp_path)


# --------------------------------------------------------------------------- #
# 13. ZIP (deflate) bombs
# --------------------------------------------------------------------------- #


class _StorageRef:
    def __init__(self, numel: int) -> None:
        self.numel = numel


class _TensorOfStorage:
    """Pickles as torch.save pickles a float32 tensor of ``numel`` values held in storage ``data/0``."""

    def __init__(self, numel: int) -> None:
        self.numel = numel

    def __reduce__(self):
        args = (_StorageRef(self.numel), 0, (self.numel,), (1,), False, collections.OrderedDict())
        return (torch._utils._rebuild_tensor_v2, args)


class _TorchPickler(pickle.Pickler):
    def persistent_id(self, obj):
        # torch.save's storage record: ("storage", storage type, key, location, numel).
        return ("storage", torch.FloatStorage, "0", "cpu", obj.numel) if isinstance(obj, _StorageRef) else None


def _zeros_deflate(mib: int) -> tuple[bytes, int]:
    """A raw deflate stream of ``mib`` MiB of zeros, and its CRC-32, without compressing ``mib`` MiB.

    After a full flush the compressor forgets its history, so every further identical MiB compresses to the
    same bytes: compressing three MiB is enough to build the whole stream.
    """
    chunk = bytes(1 << 20)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    repeat = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    assert compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH) == repeat
    crc = 0
    for _ in range(mib):
        crc = zlib.crc32(chunk, crc)
    return first + repeat * (mib - 1) + compressor.flush(), crc


def _write_zip(path: Path, entries: list[tuple[str, int, bytes, int, int]]) -> None:
    """A ZIP of (name, method, stored bytes, crc, uncompressed size) entries, written field by field so that a
    deflate stream can be stored as it is."""
    out, central = bytearray(), bytearray()
    for name, method, data, crc, size in entries:
        encoded, offset = name.encode(), len(out)
        out += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, method, 0, 33, crc, len(data), size, len(encoded), 0)
        out += encoded + data
        central += struct.pack(
            "<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, method, 0, 33, crc, len(data), size, len(encoded), 0, 0, 0, 0, 0, offset
        )
        central += encoded
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(entries), len(entries), len(central), len(out), 0)
    path.write_bytes(bytes(out + central + end))


def make_deflate_bomb(path: Path, mib: int = 1024) -> Path:
    """A ~1 MB torch.save-layout archive whose one SAM-named tensor inflates to ``mib`` MiB of zeros."""
    buffer = io.BytesIO()
    _TorchPickler(buffer, protocol=2).dump({"image_encoder.pos_embed": _TensorOfStorage(mib << 18)})
    pickled = buffer.getvalue()
    data, crc = _zeros_deflate(mib)
    _write_zip(
        path,
        [
            ("archive/data.pkl", 0, pickled, zlib.crc32(pickled), len(pickled)),
            ("archive/data/0", 8, data, crc, mib << 20),
            ("archive/version", 0, b"3\n", zlib.crc32(b"3\n"), 2),
        ],
    )
    return path


@pytest.fixture(scope="module")
def deflate_bomb(tmp_path_factory):
    return make_deflate_bomb(tmp_path_factory.mktemp("bomb") / "bomb.pth")


_MEASURE = textwrap.dedent(
    """
    import json, resource, sys, time
    from medsam_monai.checkpoints import CheckpointError, load_state_dict

    def peak_mb():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    before, start = peak_mb(), time.perf_counter()
    try:
        load_state_dict(sys.argv[1])
        message = None
    except CheckpointError as err:
        message = str(err)
    print(json.dumps({"seconds": time.perf_counter() - start, "before_mb": before, "after_mb": peak_mb(),
                      "message": message}))
    """
)


def test_deflate_bomb_is_refused_quickly_with_bounded_memory(deflate_bomb):
    assert deflate_bomb.stat().st_size < 2 << 20
    with zipfile.ZipFile(deflate_bomb) as archive:
        assert archive.getinfo("archive/data/0").file_size == 1 << 30
    # A fresh process, so that its peak resident memory (VmHWM) measures this load alone.
    command = [sys.executable, "-c", _MEASURE, str(deflate_bomb)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert figures["message"] is not None and "decompression bomb" in figures["message"]
    assert "\n" not in figures["message"]
    assert figures["seconds"] < 2.0, figures
    assert figures["after_mb"] - figures["before_mb"] < 64, figures


def test_deflate_bomb_cli_is_one_line(deflate_bomb, capsys):
    assert_cli_error(["inspect-checkpoint", str(deflate_bomb)], capsys, "refusing to load", "1,073,741,824 bytes")


def test_a_rezipped_deflated_checkpoint_still_loads(tmp_path, tiny_state):
    """The bound is derived from the file: a legitimately compressed archive is under it."""
    torch.save(tiny_state, tmp_path / "stored.pth")
    with (
        zipfile.ZipFile(tmp_path / "stored.pth") as source,
        zipfile.ZipFile(tmp_path / "deflated.pth", "w", zipfile.ZIP_DEFLATED) as out,
    ):
        for entry in source.infolist():
            out.writestr(entry.filename, source.read(entry))
    loaded = build_sam("tiny", tmp_path / "deflated.pth").state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in tiny_state.items())


# --------------------------------------------------------------------------- #
# 13.15 Files that are not checkpoints say what they look like
# --------------------------------------------------------------------------- #


def _nrrd_written_by_simpleitk(folder: Path) -> Path:
    import SimpleITK as sitk

    path = folder / "volume.nrrd"
    sitk.WriteImage(sitk.Image(4, 4, 2, sitk.sitkInt16), str(path))
    return path


@pytest.mark.parametrize(
    "locate, kind",
    [
        pytest.param(lambda tmp: NIBABEL_DATA / "anatomical.nii", "a NIfTI-1 image (.nii)", id="nifti1"),
        pytest.param(lambda tmp: NIBABEL_DATA / "example4d.nii.gz", "a gzip-compressed NIfTI-1 image (.nii.gz)", id="nii.gz"),
        pytest.param(
            lambda tmp: NIBABEL_DATA / "example_nifti2.nii.gz", "a gzip-compressed NIfTI-2 image (.nii.gz)", id="nifti2.gz"
        ),
        pytest.param(lambda tmp: NIBABEL_DATA / "row_major.dconn.nii", "a NIfTI-2 image (.nii)", id="nifti2"),
        pytest.param(lambda tmp: NIBABEL_DATA / "nifti1.hdr", "a NIfTI-1 header (.hdr)", id="nifti1 hdr"),
        pytest.param(lambda tmp: NIBABEL_DATA / "analyze.hdr", "an Analyze 7.5 header (.hdr)", id="analyze"),
        pytest.param(lambda tmp: NIBABEL_DATA / "small.mnc", "an HDF5 file", id="minc2"),
        pytest.param(lambda tmp: NIBABEL_DATA / "0.dcm", "a DICOM file (.dcm)", id="nibabel dicom"),
        pytest.param(lambda tmp: NIBABEL_DATA / "README.rst", "a plain text file", id="text"),
        pytest.param(lambda tmp: pydicom.data.get_testdata_file("CT_small.dcm"), "a DICOM file (.dcm)", id="dicom"),
        pytest.param(
            lambda tmp: pydicom.data.get_testdata_file("zipMR.gz"), "a gzip-compressed file holding a DICOM", id="dicom.gz"
        ),
        pytest.param(lambda tmp: pydicom.data.get_testdata_file("test1.json"), "a JSON text file", id="json"),
        pytest.param(lambda tmp: SKIMAGE_DATA / "camera.png", "a PNG image", id="png"),
        pytest.param(lambda tmp: SKIMAGE_DATA / "retina.jpg", "a JPEG image", id="jpeg"),
        pytest.param(lambda tmp: SKIMAGE_DATA / "multipage.tif", "a TIFF image", id="tiff"),
        pytest.param(lambda tmp: SKIMAGE_DATA / "lfw_subset.npy", "a NumPy array (.npy)", id="npy"),
        pytest.param(lambda tmp: SKIMAGE_DATA / "motorcycle_disp.npz", "a NumPy .npz archive", id="npz"),
        pytest.param(_nrrd_written_by_simpleitk, "an NRRD image (.nrrd)", id="nrrd"),
    ],
)
def test_a_file_that_is_not_a_checkpoint_says_what_it_looks_like(tmp_path, capsys, locate, kind):
    path = Path(locate(tmp_path))
    assert describe_file_type(path).startswith(kind)
    with pytest.raises(CheckpointError, match="is not a checkpoint file: it looks like " + re.escape(kind)):
        load_state_dict(path)
    err = assert_cli_error(["inspect-checkpoint", str(path)], capsys, "not a checkpoint file", kind)
    assert "pickled" not in err


def test_a_foreign_zip_names_what_it_holds(tmp_path):
    with zipfile.ZipFile(tmp_path / "notes.pth", "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(CheckpointError, match=r"ZIP archive that is not a PyTorch checkpoint \(no data.pkl; holds readme.txt\)"):
        load_state_dict(tmp_path / "notes.pth")


def test_text_with_a_brace_ninth_is_not_taken_for_safetensors(tmp_path):
    """Only the 9th byte was checked: a text file with "{" there was read as a broken safetensors file."""
    path = tmp_path / "settings.pth"
    path.write_text('settings{"lr": 0.1}\n')
    with pytest.raises(CheckpointError, match="looks like a plain text file"):
        load_state_dict(path)


def test_a_pickle_with_code_is_still_called_one(tmp_path):
    """Telling other files apart must not hide the refusal of a real pickle that would run code."""
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps(os.system, protocol=2))
    with pytest.raises(CheckpointError, match="holds pickled Python objects"):
        load_state_dict(path)
