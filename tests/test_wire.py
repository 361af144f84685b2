"""One wire format: MedSAMLib/wire.py is the source, medsam_monai/wire.py its generated copy.

The server (``medsam_monai.server.codec``, ``medsam_monai.orientation``) and the 3D Slicer client
(``MedSAMLib.client``, ``MedSAMLib.geometry``) run that one implementation of the array codec and
the RAS/IJK geometry; what it does is tested in test_server_upload.py, test_orientation.py,
test_slicer_geometry.py and test_client.py. Here: the copy is the source byte for byte, the sync
script's ``--check`` catches a stale copy, and neither side keeps an implementation of its own.
"""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import medsam_monai.wire
from medsam_monai import orientation
from medsam_monai.server import codec

REPOSITORY = Path(__file__).resolve().parents[1]
EXTENSION = REPOSITORY / "slicer_extension" / "MedSAM"
SCRIPT = REPOSITORY / "slicer_extension" / "release" / "sync_wire.py"
sys.path.insert(0, str(EXTENSION))

from MedSAMLib import client, geometry  # noqa: E402
from MedSAMLib import wire as slicer_wire  # noqa: E402


def load_script():
    spec = importlib.util.spec_from_file_location("sync_wire", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sync_wire = load_script()


def run_script(*arguments):
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, arguments)], capture_output=True, text=True, timeout=60, check=False
    )


def test_the_library_copy_is_the_slicer_source_byte_for_byte():
    assert sync_wire.SOURCE == EXTENSION / "MedSAMLib" / "wire.py"
    assert sync_wire.TARGET == Path(medsam_monai.wire.__file__)
    copy = sync_wire.TARGET.read_bytes()
    header = sync_wire.HEADER.encode()
    assert copy.startswith(header) and header.count(b"\n") == 1 and b"MedSAMLib/wire.py" in header
    assert copy[len(header) :] == sync_wire.SOURCE.read_bytes()
    assert sync_wire.source_of_copy(copy.decode()) == sync_wire.SOURCE.read_text()


def test_check_passes_on_the_repository():
    done = run_script("--check")
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    "stale",
    [
        lambda text: text.replace("TEXT_CHUNK = 4 << 20", "TEXT_CHUNK = 4 << 21"),  # an edit of the copy
        lambda text: text[len(sync_wire.HEADER) :],  # the header lost
        lambda text: text.replace("\n", "\r\n"),  # line endings changed
        None,  # no copy at all
    ],
    ids=["edited", "no header", "crlf", "missing"],
)
def test_check_fails_on_a_stale_copy_and_writing_makes_it_current(tmp_path, stale):
    target = tmp_path / "wire.py"
    if stale is not None:
        stale_text = stale(sync_wire.TARGET.read_text())
        assert stale_text != sync_wire.TARGET.read_text()
        target.write_bytes(stale_text.encode())
    done = run_script("--check", "--target", target)
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("sync_wire: error: ") and done.stderr.count("\n") == 1, done.stderr
    assert (target.read_bytes() == stale_text.encode()) if stale is not None else not target.exists()  # --check writes nothing

    assert run_script("--target", target).returncode == 0
    assert target.read_bytes() == sync_wire.TARGET.read_bytes()
    assert run_script("--check", "--target", target).returncode == 0
    again = run_script("--target", target)
    assert again.returncode == 0 and "already current" in again.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wire.py"]  # no temporary file left behind


def test_an_unreadable_source_is_one_error_line(tmp_path):
    done = run_script("--source", tmp_path / "absent.py", "--target", tmp_path / "wire.py")
    assert done.returncode == 2 and done.stderr.startswith("sync_wire: error: cannot read") and done.stderr.count("\n") == 1
    assert not (tmp_path / "wire.py").exists()


def test_both_sides_call_the_wire_and_keep_no_codec_or_box_search_of_their_own():
    assert codec.decode_array is medsam_monai.wire.decode_array and codec.encode_array is medsam_monai.wire.encode_array
    assert codec.CodecError is medsam_monai.wire.CodecError and codec.DTYPES is medsam_monai.wire.DTYPES
    assert geometry.ras_box_to_ijk is slicer_wire.ras_box_to_ijk and geometry.GeometryError is slicer_wire.GeometryError
    assert issubclass(geometry.ObliqueViewError, slicer_wire.GeometryError)
    assert client.wire is slicer_wire
    # No second implementation: none of these modules does base64/zlib or a box search itself.
    for path in (
        EXTENSION / "MedSAMLib" / "client.py",
        EXTENSION / "MedSAMLib" / "geometry.py",
        Path(codec.__file__),
        Path(orientation.__file__),
    ):
        tree = ast.parse(path.read_text())
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        defined = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        assert not imported & {"base64", "zlib", "binascii", "itertools"}, path.name
        assert not defined & {"_is_axis_aligned", "_inside_bounding_box", "_search_block", "_inflate_into", "check_shape"}


def test_the_wire_imports_only_the_standard_library_and_numpy():
    tree = ast.parse(sync_wire.SOURCE.read_text(), feature_version=(3, 9))
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported - set(sys.stdlib_module_names) == {"numpy"}
    assert not any(isinstance(n, ast.ImportFrom) and n.level for n in ast.walk(tree))  # no relative imports either


def test_the_library_messages_stay_the_librarys():
    # The shared check names the matrix it was given: "affine" in the library, IJK-to-RAS in Slicer.
    with pytest.raises(ValueError, match="^affine is singular"):
        orientation.check_affine(np.diag([1.0, 0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="^affine must be a finite 4x4 matrix"):
        orientation.check_affine(np.eye(3))
    with pytest.raises(geometry.GeometryError, match="^the IJK-to-RAS matrix is singular"):
        geometry.check_matrix(np.diag([1.0, 0.0, 1.0, 1.0]))
