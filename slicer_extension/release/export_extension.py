"""Export the 3D Slicer extension as the root of its own repository, the way the Extensions Index builds it.

The Extensions Index clones the repository named in the catalog entry's ``scm_url`` and builds from
its root (``build_subdirectory`` names the inner *build* folder of a superbuild, not a source folder:
Slicer's Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json, "Name of the inner build directory
in case of superbuild based extension"). Its pull-request checks (scripts/check_description_files.py in
Slicer/ExtensionsIndex) then want, among others, a repository whose name starts with ``Slicer``, the
extension's CMakeLists.txt and a LICENSE at that root, a non-empty EXTENSION_SCREENSHOTURLS, and the
GitHub topic ``3d-slicer-extension``. This project keeps the extension in ``slicer_extension/``, so
a release copies that folder, the license and the screenshots into a ``Slicer``-named repository::

    python slicer_extension/release/export_extension.py ../SlicerMedSAM --screenshot panel.png
    cd ../SlicerMedSAM && git add -A && git commit -m "MedSAM 0.1.0" && git push

``OUT`` is a new or empty folder, or a clone of that repository without uncommitted changes (its
``.git`` is kept, everything else replaced). The tree is built beside ``OUT`` and checked first; on
any problem nothing in ``OUT`` changes. The screenshot (a PNG taken in a real 3D Slicer) is copied
to the path its EXTENSION_SCREENSHOTURLS address names. Bad input ends with one
``export_extension: error: ...`` line and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
from pathlib import Path
from typing import Dict, List, Optional, Sequence

EXTENSION_DIR = Path(__file__).resolve().parents[1]
ENTRY_FILE = EXTENSION_DIR / "MedSAM.json"
LICENSE_FILE = EXTENSION_DIR / "LICENSE"

# What is not part of the exported extension: this release tooling and build/editor leftovers.
EXCLUDED_NAMES = {"release", "__pycache__", ".pytest_cache", ".DS_Store"}
EXCLUDED_SUFFIXES = {".pyc", ".pyo"}

# Facts from Slicer/ExtensionsIndex scripts/check_description_files.py (checked against main, 2025).
LICENSE_NAMES = ("LICENSE", "LICENCE", "License.txt", "license.txt", "LICENSE.txt", "COPYING", "COPYING.txt")
REPOSITORY_PREFIX = "Slicer"  # check_git_repository_name: "Slicer", "Slicer-", "SlicerExtension-", ... all start so
REPOSITORY_TOPIC = "3d-slicer-extension"  # check_git_repository_topics (a GitHub setting, not a file)
SIZE_LIMIT_MB = 100  # check_repository_size
ACCEPTED_CATEGORIES = (
    "Active Learning",
    "Analysis",
    "Auto3dgm",
    "BigImage",
    "Cardiac",
    "Chest Imaging Platform",
    "Conda",
    "Converters",
    "DICOM",
    "DSCI",
    "Developer Tools",
    "Diffusion",
    "Examples",
    "Exporter",
    "FTV Segmentation",
    "Filtering",
    "Filtering.Morphology",
    "Filtering.Vesselness",
    "Holographic Display",
    "Image Synthesis",
    "IGT",
    "Informatics",
    "Netstim",
    "Neuroimaging",
    "Nuclear Medicine",
    "Orthodontics",
    "Osteotomy Planning",
    "Otolaryngology",
    "Photogrammetry",
    "Pipelines",
    "Planning",
    "Printing",
    "Quantification",
    "Radiotherapy",
    "Registration",
    "Remote",
    "Rendering",
    "SPHARM",
    "Segmentation",
    "Sequences",
    "Shape Analysis",
    "Shape Regression",
    "Shape Visualization",
    "Simulation",
    "SlicerCMF",
    "SlicerMorph",
    "Spectral Imaging",
    "Supervisely",
    "Surface Models",
    "SurfaceLearner",
    "Tomographic Reconstruction",
    "Tracking",
    "Tractography",
    "Training",
    "Ultrasound",
    "Utilities",
    "Vascular Modeling Toolkit",
    "Virtual Reality",
    "VisSimTools",
    "Web System Tools",
    "Wizards",
)
# The catalog entry schema (Slicer's Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json): key -> type.
ENTRY_KEYS = {
    "$schema": str,
    "category": str,
    "scm_url": str,
    "scm_revision": str,
    "scm_type": str,
    "build_dependencies": list,
    "build_subdirectory": str,
    "enabled": bool,
    "tier": int,
}
ENTRY_REQUIRED = ("$schema", "category", "scm_url")
# Slicer 5.10's extension template (Utilities/Templates/Extensions/Default/CMakeLists.txt).
CMAKE_MINIMUM = "cmake_minimum_required(VERSION 3.20.6...3.22.6 FATAL_ERROR)"
IMAGE_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a")


class ExportError(RuntimeError):
    """Something the person releasing can fix; the message is one line."""


# ----- reading the extension's metadata ---------------------------------------------------------


def read_entry(entry_file: Path = ENTRY_FILE) -> dict:
    """The catalog entry (what is submitted to the Extensions Index as ``<extension name>.json``)."""
    try:
        return json.loads(entry_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ExportError(f"cannot read the catalog entry {entry_file}: {error}") from None


def cmake_setting(cmake_text: str, name: str) -> Optional[str]:
    """The quoted value of ``set(NAME "value")`` in a CMakeLists.txt, or None."""
    match = re.search(rf'set\s*\(\s*{name}\s+"([^"]*)"\s*\)', cmake_text, re.IGNORECASE)
    return match.group(1) if match else None


def repository_of(scm_url: str) -> tuple:
    """``(owner, name)`` of a GitHub clone address (``https://github.com/owner/name.git``)."""
    parts = urllib.parse.urlsplit(scm_url.strip().rstrip("/"))
    path = [p for p in parts.path.split("/") if p]
    if len(path) < 2:
        raise ExportError(f"scm_url {scm_url!r} does not name a repository (https://github.com/OWNER/NAME.git)")
    return path[-2], os.path.splitext(path[-1])[0]


def raw_base_url(entry: dict) -> str:
    """Where GitHub serves the files of the entry's revision (icon and screenshot addresses point there)."""
    owner, name = repository_of(entry["scm_url"])
    return f"https://raw.githubusercontent.com/{owner}/{name}/{entry.get('scm_revision') or 'main'}/"


def screenshot_urls(cmake_text: str) -> List[str]:
    return (cmake_setting(cmake_text, "EXTENSION_SCREENSHOTURLS") or "").split()


# ----- the checks the Extensions Index makes, offline ------------------------------------------------


def check_tree(root: Path, entry: dict, extension_name: str = "MedSAM", entry_text: Optional[str] = None) -> List[str]:
    """Problems the Extensions Index checks would report for this tree as the repository root; [] if none.

    Offline stand-ins for Slicer/ExtensionsIndex scripts/check_description_files.py: check_json_schema,
    check_json_file_format, check_extension_name, check_category, check_git_repository_name,
    check_scm_url_syntax, check_cmakelists_content, check_license_file and check_repository_size. Where
    those download an address (icon, screenshots), the file the address names in this tree must be an
    image. The repository topic is a GitHub setting and cannot be checked here.
    """
    problems = check_entry(entry, extension_name, entry_text)
    cmake_file = root / "CMakeLists.txt"
    if not cmake_file.is_file():
        return [*problems, "CMakeLists.txt file not found in repository root"]
    cmake_text = cmake_file.read_text(encoding="utf-8", errors="ignore")
    problems += check_cmake(cmake_text, extension_name)
    problems += check_addresses(root, cmake_text, entry)
    if not any((root / name).is_file() for name in LICENSE_NAMES):
        problems.append("No license file found in repository root.")
    size_mb = sum(f.stat().st_size for f in root.rglob("*") if f.is_file() and ".git" not in f.parts) / 2**20
    if size_mb > SIZE_LIMIT_MB:
        problems.append(f"Repository size {size_mb:.1f} MB exceeds the {SIZE_LIMIT_MB} MB limit.")
    return problems


def check_entry(entry: dict, extension_name: str, entry_text: Optional[str] = None) -> List[str]:
    """The catalog entry's schema, line endings, name, category and repository address."""
    problems = []
    for key in ENTRY_REQUIRED:
        if key not in entry:
            problems.append(f"the catalog entry has no {key!r}")
    for key, value in entry.items():
        if key not in ENTRY_KEYS:
            problems.append(f"the catalog entry has an unknown key {key!r} (the schema allows no others)")
        elif not isinstance(value, ENTRY_KEYS[key]) or (ENTRY_KEYS[key] is int and isinstance(value, bool)):
            problems.append(f"the catalog entry's {key!r} must be a {ENTRY_KEYS[key].__name__}")
    if entry.get("scm_type", "git") not in ("git", "local"):
        problems.append("the catalog entry's scm_type must be git or local")
    if isinstance(entry.get("tier"), int) and not 1 <= entry["tier"] <= 5:
        problems.append("the catalog entry's tier must be 1 to 5")
    if entry_text is not None and "\r" in entry_text:
        problems.append("the catalog entry has CR or CRLF line endings; use LF only")
    if extension_name.lower().startswith("slicer"):
        problems.append(f"extension name {extension_name!r} should not start with 'Slicer'")
    if entry.get("category") not in ACCEPTED_CATEGORIES:
        problems.append(f"category {entry.get('category')!r} is not one the Extensions Index knows")
    scm_url = str(entry.get("scm_url", ""))
    if "://" not in scm_url or urllib.parse.urlsplit(scm_url).scheme not in ("git", "https"):
        problems.append(f"scm_url {scm_url!r} must be a git:// or https:// address")
    else:
        try:
            _, name = repository_of(scm_url)
        except ExportError as error:
            problems.append(str(error))
        else:
            if not name.startswith(REPOSITORY_PREFIX):
                problems.append(f"git repository name should start with 'Slicer', not {name!r}")
    return problems


def check_cmake(cmake_text: str, extension_name: str) -> List[str]:
    """The top-level CMakeLists.txt: project name, icon and screenshot settings, 5.10 template conventions."""
    problems = []
    # The Index's own patterns (check_cmakelists_content): the first project(...) names the extension;
    # the screenshot pattern wants the closing parenthesis right after the quote.
    project = re.findall(r"project\s*\(\s*([^\s\)\n\r]+)", cmake_text, re.IGNORECASE | re.MULTILINE)
    if not project:
        problems.append("No project() declaration found in CMakeLists.txt")
    elif project[0].strip("\"'") != extension_name:
        problems.append(f"project name {project[0]!r} in CMakeLists.txt does not match the extension name {extension_name!r}")
    if not re.findall(r'set\s*\(EXTENSION_ICONURL\s*"([^"]+)"[ ]*\)', cmake_text, re.IGNORECASE | re.MULTILINE):
        problems.append("No EXTENSION_ICONURL found in CMakeLists.txt.")
    if not re.findall(r'set\s*\(EXTENSION_SCREENSHOTURLS\s*"([^"]+)"\)', cmake_text, re.IGNORECASE | re.MULTILINE):
        problems.append("No EXTENSION_SCREENSHOTURLS found in CMakeLists.txt (it must not be empty).")
    if CMAKE_MINIMUM not in cmake_text:
        problems.append(f"CMakeLists.txt does not start with Slicer 5.10's {CMAKE_MINIMUM}")
    return problems


def check_addresses(root: Path, cmake_text: str, entry: dict) -> List[str]:
    """The icon and screenshot addresses point into this repository's revision, at image files."""
    problems = []
    base = raw_base_url(entry) if "scm_url" in entry else ""
    named = [("EXTENSION_ICONURL", url) for url in (cmake_setting(cmake_text, "EXTENSION_ICONURL") or "").split()]
    named += [("EXTENSION_SCREENSHOTURLS", url) for url in screenshot_urls(cmake_text)]
    for setting, url in named:
        if not url.startswith(base):
            problems.append(f"{setting} {url} is not a file of {base} (the repository and revision of scm_url)")
            continue
        path = root / urllib.parse.unquote(url[len(base) :])
        if not path.is_file():
            problems.append(f"{setting} {url} names {path.relative_to(root)}, which the tree does not have")
        elif not path.read_bytes()[:8].startswith(IMAGE_SIGNATURES):
            problems.append(f"{setting} {url} is not a PNG, JPEG or GIF image")
    return problems


# ----- building the tree -----------------------------------------------------------------------------


def copy_extension(destination: Path, screenshots: Dict[str, Path]) -> None:
    """``slicer_extension/`` (without the release tooling), the license and the screenshots into ``destination``."""

    def ignore(folder, names):
        return [n for n in names if n in EXCLUDED_NAMES or os.path.splitext(n)[1] in EXCLUDED_SUFFIXES]

    shutil.copytree(EXTENSION_DIR, destination, ignore=ignore, dirs_exist_ok=True)
    if not LICENSE_FILE.is_file():
        raise ExportError(f"{LICENSE_FILE} is missing")
    for relative, source in screenshots.items():
        target = destination / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)


def screenshot_targets(cmake_text: str, entry: dict, files: Sequence[Path]) -> Dict[str, Path]:
    """Each screenshot file under the path its EXTENSION_SCREENSHOTURLS address names, in order."""
    urls = screenshot_urls(cmake_text)
    if len(files) != len(urls):
        raise ExportError(
            f"CMakeLists.txt lists {len(urls)} screenshot address(es) but {len(files)} --screenshot "
            "file(s) were given; take them in a real 3D Slicer and pass one per address"
        )
    base = raw_base_url(entry)
    targets = {}
    for url, path in zip(urls, files, strict=True):
        if not url.startswith(base):
            raise ExportError(f"screenshot address {url} is not under {base}")
        if not Path(path).is_file():
            raise ExportError(f"screenshot {path} does not exist")
        targets[urllib.parse.unquote(url[len(base) :])] = Path(path)
    return targets


def prepare_output(out: Path) -> None:
    """Refuse an output folder whose content would be lost: only new, empty or clean git clones."""
    if out == EXTENSION_DIR or EXTENSION_DIR in out.parents:
        raise ExportError(f"{out} is inside {EXTENSION_DIR}, which is what is exported; choose a folder outside it")
    if not out.exists():
        return
    if not out.is_dir():
        raise ExportError(f"{out} exists and is not a folder")
    entries = [p for p in out.iterdir() if p.name != ".git"]
    if not (out / ".git").exists():
        if entries:
            raise ExportError(f"{out} is not empty and not a git clone; nothing was changed (use a new folder)")
        return
    status = subprocess.run(["git", "-C", str(out), "status", "--porcelain"], capture_output=True, text=True, check=False)
    if status.returncode != 0:
        raise ExportError(f"{out} has a .git but git cannot read it: {status.stderr.strip().splitlines()[-1:]}")
    if status.stdout.strip():
        raise ExportError(f"{out} has uncommitted changes; commit or discard them first (nothing was changed)")


def replace_tree(built: Path, out: Path) -> None:
    """Move the built tree into ``out``, keeping ``out/.git`` (its history has the old files)."""
    if not out.exists():
        built.rename(out)
        return
    for old in out.iterdir():
        if old.name == ".git":
            continue
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        else:
            old.unlink()
    for new in built.iterdir():
        new.rename(out / new.name)
    built.rmdir()


def export(out: Path, screenshots: Sequence[Path], entry_file: Path = ENTRY_FILE) -> List[str]:
    """Build, check and write the tree; returns the reminders for what a file cannot carry."""
    out = Path(out).absolute()
    entry_text = entry_file.read_text(encoding="utf-8") if entry_file.is_file() else None
    entry = read_entry(entry_file)
    cmake_text = (EXTENSION_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    targets = screenshot_targets(cmake_text, entry, screenshots)
    prepare_output(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    built = Path(tempfile.mkdtemp(prefix=f".{out.name}-export-", dir=out.parent))
    try:
        copy_extension(built, targets)
        problems = check_tree(built, entry, entry_file.stem, entry_text)
        if problems:
            raise ExportError("the exported tree would fail the Extensions Index checks: " + "; ".join(problems))
        replace_tree(built, out)
    finally:
        if built.exists():
            shutil.rmtree(built)
    owner, name = repository_of(entry["scm_url"])
    return [
        f"push it to {entry['scm_url']} (branch or tag {entry.get('scm_revision') or 'main'})",
        f"give github.com/{owner}/{name} the topic '{REPOSITORY_TOPIC}' (Settings > About > Topics)",
        f"submit {entry_file.name} to https://github.com/Slicer/ExtensionsIndex (a pull request)",
    ]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="export_extension", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="new or empty folder, or a clean clone of the extension's repository")
    parser.add_argument(
        "--screenshot",
        type=Path,
        action="append",
        default=[],
        help="a screenshot taken in 3D Slicer, one per EXTENSION_SCREENSHOTURLS address, in order",
    )
    args = parser.parse_args(argv)
    try:
        reminders = export(args.out, args.screenshot)
    except ExportError as error:
        print(f"export_extension: error: {error}", file=sys.stderr)
        return 2
    print(f"Wrote the extension's repository tree to {args.out}; the Extensions Index checks pass. Now:")
    for reminder in reminders:
        print(f"- {reminder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
