"""The ``medsam`` command line (foundation subcommands)."""

from __future__ import annotations

import subprocess
import sys

import torch

from medsam_monai.cli import main
from medsam_monai.networks import build_sam_variant


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medsam_monai.cli", *args], capture_output=True, text=True)


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
