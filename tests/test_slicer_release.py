"""The release export (slicer_extension/release/export_extension.py): a tree the Extensions Index accepts.

The checks mirror Slicer/ExtensionsIndex scripts/check_description_files.py (check_git_repository_name,
check_cmakelists_content, check_license_file, check_json_schema, ...); the Index builds from the root of
the repository in scm_url (build_subdirectory is "the inner build directory in case of superbuild based
extension", Slicer's Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
EXTENSION = REPOSITORY / "slicer_extension"
SCRIPT = EXTENSION / "release" / "export_extension.py"
SCREENSHOT = EXTENSION / "MedSAM" / "Resources" / "Icons" / "MedSAM.png"  # any PNG stands in for the real one


def load_exporter():
    spec = importlib.util.spec_from_file_location("export_extension", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


exporter = load_exporter()


def run_script(*arguments):
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, arguments)], capture_output=True, text=True, timeout=120, check=False
    )


def git(folder, *arguments):
    command = ["git", "-C", str(folder), "-c", "user.name=test", "-c", "user.email=test@example.org", *arguments]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


@pytest.fixture
def exported(tmp_path):
    out = tmp_path / "SlicerMedSAM"
    done = run_script(out, "--screenshot", SCREENSHOT)
    assert done.returncode == 0, done.stderr
    return out


def test_the_export_is_a_repository_root_the_index_checks_accept(exported):
    entry = json.loads((exported / "MedSAM.json").read_text())
    assert exporter.check_tree(exported, entry, "MedSAM", (exported / "MedSAM.json").read_text()) == []
    assert (exported / "CMakeLists.txt").read_text() == (EXTENSION / "CMakeLists.txt").read_text()
    assert (exported / "LICENSE").read_text().lstrip().startswith("Apache License")
    assert (exported / "MedSAM" / "MedSAM.py").is_file() and (exported / "MedSAM" / "MedSAMLib" / "client.py").is_file()
    assert (exported / "Screenshots" / "1.png").read_bytes() == SCREENSHOT.read_bytes()
    assert not (exported / "release").exists() and not list(exported.rglob("__pycache__"))
    _, name = exporter.repository_of(entry["scm_url"])
    assert name.startswith("Slicer") and entry["build_subdirectory"] == "."
    # Every file the module's CMakeLists installs is in the tree.
    module_cmake = (exported / "MedSAM" / "CMakeLists.txt").read_text().replace("${MODULE_NAME}", "MedSAM")
    for listed in module_cmake.split("set(MODULE_PYTHON_SCRIPTS")[1].split(")")[0].split():
        assert (exported / "MedSAM" / listed).is_file(), listed
    # The wire format's source travels with the extension, and the exported library works alone.
    assert (exported / "MedSAM" / "MedSAMLib" / "wire.py").read_bytes() == (
        EXTENSION / "MedSAM" / "MedSAMLib" / "wire.py"
    ).read_bytes()
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "import numpy as np; from MedSAMLib import client; assert client.__file__.startswith(sys.argv[1]); "
        "v = np.arange(24, dtype=np.int16).reshape(2, 3, 4); "
        "assert (client.decode_array_kji(client.encode_volume(v)) == v).all(); "
        "assert not [m for m in sys.modules if m.split('.')[0] in ('medsam_monai', 'torch')]; print('ok')"
    )
    done = subprocess.run(
        [sys.executable, "-B", "-c", code, str(exported / "MedSAM")], capture_output=True, text=True, timeout=60, cwd=exported
    )
    assert done.stdout.strip() == "ok", done.stderr


def test_this_repository_as_it_is_would_be_rejected():
    """The Index clones scm_url and builds from its root: this project's root is no Slicer extension."""
    entry = {**json.loads((EXTENSION / "MedSAM.json").read_text()), "scm_url": "https://github.com/medsam-monai/medsam-monai.git"}
    problems = " | ".join(exporter.check_tree(REPOSITORY, entry, "MedSAM"))
    assert "CMakeLists.txt file not found in repository root" in problems
    assert "git repository name should start with 'Slicer'" in problems


def test_the_checks_catch_what_the_index_rejects(exported):
    entry = json.loads((exported / "MedSAM.json").read_text())
    cmake = exported / "CMakeLists.txt"
    original = cmake.read_text()

    def problems(tree_entry=entry, name="MedSAM", text=None):
        return " | ".join(exporter.check_tree(exported, tree_entry, name, text))

    cmake.write_text(original.replace(exporter.screenshot_urls(original)[0], ""))
    assert "No EXTENSION_SCREENSHOTURLS found" in problems()
    cmake.write_text(original.replace("project(MedSAM)", "project(MedSam)"))
    assert "does not match the extension name" in problems()
    cmake.write_text(original.replace("3.20.6...3.22.6", "3.16.3...3.19.7"))
    assert "Slicer 5.10" in problems()
    cmake.write_text(original)
    (exported / "Screenshots" / "1.png").write_text("not an image")
    assert "is not a PNG, JPEG or GIF image" in problems()
    (exported / "Screenshots" / "1.png").unlink()
    assert "which the tree does not have" in problems()
    shutil.copyfile(SCREENSHOT, exported / "Screenshots" / "1.png")
    (exported / "LICENSE").rename(exported / "LICENSE.md")
    assert "No license file found in repository root." in problems()
    (exported / "LICENSE.md").rename(exported / "LICENSE")
    assert "should start with 'Slicer'" in problems({**entry, "scm_url": "https://github.com/medsam-monai/MedSAM.git"})
    assert "is not a file of" in problems({**entry, "scm_revision": "v0.1.0"})  # addresses point at main
    assert "unknown key 'build_folder'" in problems({**entry, "build_folder": "MedSAM"})
    assert "is not one the Extensions Index knows" in problems({**entry, "category": "AI"})
    assert "should not start with 'Slicer'" in problems(name="SlicerMedSAM")
    assert "CRLF" in problems(text=(exported / "MedSAM.json").read_text().replace("\n", "\r\n"))
    assert problems() == ""


def test_a_missing_screenshot_is_one_error_line_and_nothing_is_written(tmp_path):
    out = tmp_path / "SlicerMedSAM"
    done = run_script(out)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("export_extension: error: CMakeLists.txt lists 1")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    not_an_image = tmp_path / "shot.png"
    not_an_image.write_text("a text file")
    done = run_script(out, "--screenshot", not_an_image)  # built and checked beside OUT, then refused
    assert done.returncode == 2 and "would fail the Extensions Index checks" in done.stderr
    assert "is not a PNG, JPEG or GIF image" in done.stderr and done.stderr.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shot.png"]


def test_a_folder_with_other_files_is_refused_untouched(tmp_path):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "mine.txt").write_text("the user's")
    done = run_script(out, "--screenshot", SCREENSHOT)
    assert done.returncode == 2 and "not empty and not a git clone" in done.stderr
    assert [p.name for p in out.iterdir()] == ["mine.txt"] and (out / "mine.txt").read_text() == "the user's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes"]  # no half-built tree left beside it
    inside = EXTENSION / "MedSAM" / "SlicerMedSAM"
    done = run_script(inside, "--screenshot", SCREENSHOT)
    assert done.returncode == 2 and "choose a folder outside it" in done.stderr and not inside.exists()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_a_clone_is_updated_keeping_its_history_and_uncommitted_work(tmp_path):
    clone = tmp_path / "SlicerMedSAM"
    clone.mkdir()
    git(clone, "init", "-q")
    (clone / "OLD.md").write_text("from the previous release")
    git(clone, "add", "-A")
    git(clone, "commit", "-q", "-m", "previous release")
    (clone / "OLD.md").write_text("an edit not committed yet")
    done = run_script(clone, "--screenshot", SCREENSHOT)
    assert done.returncode == 2 and "uncommitted changes" in done.stderr
    assert (clone / "OLD.md").read_text() == "an edit not committed yet"

    git(clone, "checkout", "-q", "--", "OLD.md")
    done = run_script(clone, "--screenshot", SCREENSHOT)
    assert done.returncode == 0, done.stderr
    assert "3d-slicer-extension" in done.stdout
    assert not (clone / "OLD.md").exists() and (clone / "CMakeLists.txt").is_file()
    assert "previous release" in git(clone, "log", "--oneline")
    status = git(clone, "status", "--porcelain")
    assert "D OLD.md" in status and "?? CMakeLists.txt" in status
