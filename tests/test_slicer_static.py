"""Static checks of the 3D Slicer extension: CMake lists, .ui file, imports, ASCII, catalog entry."""

from __future__ import annotations

import ast
import json
import re
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

EXTENSION = Path(__file__).resolve().parents[1] / "slicer_extension"
MODULE = EXTENSION / "MedSAM"
LIBRARY = MODULE / "MedSAMLib"

# What the module may import besides the standard library: what 3D Slicer's Python already has.
ALLOWED_THIRD_PARTY = {"numpy", "vtk", "slicer", "qt", "ctk", "MedSAMLib", "MedSAM"}


def cmake_list(path: Path, variable: str) -> list[str]:
    text = path.read_text()
    match = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert match, f"{variable} is not set in {path}"
    return [item.replace("${MODULE_NAME}", "MedSAM") for item in match.group(1).split()]


def module_sources() -> list[Path]:
    return sorted(p for p in MODULE.rglob("*.py") if "Testing" not in p.parts and "__pycache__" not in p.parts)


def imports_of(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            if node.module == "MedSAMLib":
                names.update(f"MedSAMLib.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 1:
            names.update(f"MedSAMLib.{node.module or alias.name}" for alias in node.names)
    return names


def test_every_python_file_and_resource_is_listed_in_cmake():
    scripts = cmake_list(MODULE / "CMakeLists.txt", "MODULE_PYTHON_SCRIPTS")
    resources = cmake_list(MODULE / "CMakeLists.txt", "MODULE_PYTHON_RESOURCES")
    on_disk = {str(p.relative_to(MODULE)) for p in module_sources()}
    assert set(scripts) == on_disk, f"not listed: {on_disk - set(scripts)}; listed but missing: {set(scripts) - on_disk}"
    resource_files = {str(p.relative_to(MODULE)) for p in (MODULE / "Resources").rglob("*") if p.is_file()}
    assert set(resources) == resource_files
    assert len(scripts) == len(set(scripts))


def test_every_imported_module_is_listed_and_nothing_heavy_is_imported():
    scripts = set(cmake_list(MODULE / "CMakeLists.txt", "MODULE_PYTHON_SCRIPTS"))
    standard = set(sys.stdlib_module_names)
    for path in module_sources():
        for name in imports_of(path):
            top = name.split(".")[0]
            assert top in standard or top in ALLOWED_THIRD_PARTY, f"{path.name} imports {name}"
            if top == "MedSAMLib" and "." in name:
                assert f"MedSAMLib/{name.split('.')[1]}.py" in scripts, f"{path.name} imports unlisted {name}"


def test_module_imports_without_slicers_gui_torch_or_medsam_monai():
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import MedSAM, MedSAMLib.client, MedSAMLib.testing; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('qt', 'ctk', 'torch', 'medsam_monai', 'PythonQt')); "
        "assert not bad, bad; "
        "assert MedSAM.qt is None; "
        "print('ok', MedSAM.MedSAMLogic.__name__, MedSAM.MedSAMWidget.__name__, MedSAM.MedSAMTest.__name__)"
    )
    done = subprocess.run([sys.executable, "-c", code, str(MODULE)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok MedSAMLogic MedSAMWidget MedSAMTest")


def test_ui_file_is_valid_and_names_every_widget_the_code_uses():
    tree = ET.parse(MODULE / "Resources" / "UI" / "MedSAM.ui")
    root = tree.getroot()
    widgets = {w.get("name"): w.get("class") for w in root.iter("widget")}
    used = set(re.findall(r"self\.ui\.([A-Za-z_][A-Za-z0-9_]*)", (MODULE / "MedSAM.py").read_text()))
    assert used, "the widget uses no .ui widgets?"
    assert used <= set(widgets), f"missing in the .ui: {sorted(used - set(widgets))}"
    # Custom (non-Qt) classes are declared, and every MRML widget gets the scene.
    custom = {c.findtext("class") for c in root.iter("customwidget")}
    for name, cls in widgets.items():
        if not cls.startswith("Q"):
            assert cls in custom, f"{name}: class {cls} is not declared in <customwidgets>"
    receivers = {c.findtext("receiver") for c in root.iter("connection")}
    mrml = {name for name, cls in widgets.items() if cls in ("qMRMLNodeComboBox", "qSlicerMarkupsPlaceWidget")}
    assert mrml <= receivers
    assert receivers <= set(widgets)
    assert widgets[root.findtext("class")] == "qMRMLWidget"
    names = [w.get("name") for w in root.iter("widget")]
    assert len(names) == len(set(names)), "duplicate widget names"


def test_sources_are_ascii_and_parse_as_python_3_9():
    files = [p for p in EXTENSION.rglob("*") if p.is_file() and p.suffix in (".py", ".txt", ".ui", ".json", ".md")]
    assert len(files) > 10
    for path in files:
        data = path.read_bytes()
        assert all(b < 128 for b in data), f"{path} is not ASCII"
        if path.suffix == ".py":
            # 3D Slicer 5.0-5.8 ship Python 3.9.
            ast.parse(data.decode(), str(path), feature_version=(3, 9))


def test_top_level_cmake_has_the_extension_variables():
    """Slicer 5.10's template (Utilities/Templates/Extensions/Default/CMakeLists.txt at v5.10.0): CMake
    3.20.6...3.22.6, and no EXTENSION_CATEGORY (since Slicer commit 437e33804d, "the category is now
    expected to be defined in the extension catalog entry file")."""
    text = (EXTENSION / "CMakeLists.txt").read_text()
    assert text.startswith("cmake_minimum_required(VERSION 3.20.6...3.22.6 FATAL_ERROR)\n")
    assert re.search(r"project\(MedSAM\)", text)
    for name in ("HOMEPAGE", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS", "DEPENDS"):
        assert re.search(rf'set\(EXTENSION_{name} "[^"]+"\)', text), f"EXTENSION_{name} is not set"
    assert "EXTENSION_CATEGORY" not in text
    assert "find_package(Slicer REQUIRED)" in text and "add_subdirectory(MedSAM)" in text
    assert "${Slicer_EXTENSION_GENERATE_CONFIG}" in text and "${Slicer_EXTENSION_CPACK}" in text
    module = (MODULE / "CMakeLists.txt").read_text()
    assert "slicerMacroBuildScriptedModule(" in module and "add_subdirectory(Testing)" in module
    testing = (MODULE / "Testing" / "Python" / "CMakeLists.txt").read_text()
    for script in re.findall(r"SCRIPT\s+(\S+)\)", testing):
        assert (MODULE / "Testing" / "Python" / script).exists()


# The catalog entry schema of the ExtensionsIndex (Slicer's Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json).
CATALOG_SCHEMA = {
    "type": "object",
    "required": ["$schema", "category", "scm_url"],
    "additionalProperties": False,
    "properties": {
        "$schema": {"type": "string"},
        "category": {"type": "string"},
        "scm_url": {"type": "string"},
        "scm_revision": {"type": "string"},
        "scm_type": {"type": "string", "enum": ["git", "local"]},
        "build_dependencies": {"type": "array", "items": {"type": "string"}},
        "build_subdirectory": {"type": "string"},
        "enabled": {"type": "boolean"},
        "tier": {"type": "integer", "minimum": 1, "maximum": 5},
    },
}


def test_extensions_index_entry_is_valid():
    jsonschema = pytest.importorskip("jsonschema")
    entry = json.loads((EXTENSION / "MedSAM.json").read_text())
    jsonschema.validate(entry, CATALOG_SCHEMA)
    assert entry["$schema"].endswith("slicer-extension-catalog-entry-schema-v1.0.1.json#")
    assert entry["category"] == "Segmentation"


def test_icon_is_a_128_pixel_png():
    data = (MODULE / "Resources" / "Icons" / "MedSAM.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (128, 128)


def test_the_build_time_library_test_passes():
    import importlib.util
    import unittest

    sys.path.insert(0, str(MODULE))
    spec = importlib.util.spec_from_file_location("MedSAMLibTest", MODULE / "Testing" / "Python" / "MedSAMLibTest.py")
    test_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(test_module)
    suite = unittest.defaultTestLoader.loadTestsFromModule(test_module)
    assert suite.countTestCases() == 5
    outcome = unittest.TextTestRunner(verbosity=0).run(suite)
    assert outcome.wasSuccessful(), outcome.failures + outcome.errors
