"""The ``medsam`` command line (foundation subcommands)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import torch

import medsam_monai
from medsam_monai.cli import main
from medsam_monai.networks import build_sam_variant


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medsam_monai.cli", *args], check=False, capture_output=True, text=True)


def test_help_lists_the_subcommands():
    result = run_cli("--help")
    assert result.returncode == 0
    assert "download" in result.stdout and "inspect-checkpoint" in result.stdout


def test_inspect_checkpoint_names_the_variant(tmp_path, capsys):
    path = tmp_path / "model.pt"
    torch.save({"model": build_sam_variant("tiny").state_dict()}, path)
    assert main(["inspect-checkpoint", str(path)]) == 0
    assert "variant: tiny" in capsys.readouterr().out


def test_bad_checkpoint_is_one_line_and_exit_2(tmp_path):
    path = tmp_path / "broken.pth"
    path.write_bytes(b"garbage")
    result = run_cli("inspect-checkpoint", str(path))
    assert result.returncode == 2
    assert result.stderr.startswith("medsam: error: ") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr


def test_download_of_a_local_file_url(tmp_path, capsys):
    source = tmp_path / "weights.bin"
    source.write_bytes(b"0123456789")
    cache = tmp_path / "cache"
    assert main(["download", source.as_uri(), "--cache-dir", str(cache)]) == 0
    assert (cache / "weights.bin").read_bytes() == b"0123456789"
    assert main(["download", (tmp_path / "missing.bin").as_uri(), "--cache-dir", str(cache)]) == 2
    assert "--checkpoint" in capsys.readouterr().err


# ----- the package's shape: no import circle, no private names across modules ------------------------

PACKAGE = Path(medsam_monai.__file__).parent


def _imports(path: Path) -> list[tuple[str, str]]:
    """(absolute module, imported name) for each ``from X import name`` in ``path``, relative ones resolved."""
    package = ".".join(("medsam_monai", *path.relative_to(PACKAGE).with_suffix("").parts))
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            found += [(module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, "") for alias in node.names]
    return found


def test_the_cli_and_model_resolution_import_no_private_name():
    files = [*(PACKAGE / "cli").glob("*.py"), PACKAGE / "models.py"]
    private = [
        (f.name, module, name)
        for f in files
        for module, name in _imports(f)
        if name.startswith("_") and not name.startswith("__")
    ]
    assert len(files) > 5 and private == []


def test_nothing_outside_the_cli_imports_it():
    """The server (and every other module) stands below the CLI: importing it can never import the CLI back."""
    outside = [f for f in PACKAGE.rglob("*.py") if (PACKAGE / "cli") not in f.parents and f.name != "__main__.py"]
    upward = [
        (str(f.relative_to(PACKAGE)), module)
        for f in outside
        for module, name in _imports(f)
        if module == "medsam_monai.cli" or module.startswith("medsam_monai.cli.") or (module == "medsam_monai" and name == "cli")
    ]
    assert len(outside) > 20 and upward == []
