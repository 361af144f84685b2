from __future__ import annotations

import logging

import pytest
import torch

from medsam_monai.testing import hf_config_for, randomize_


@pytest.fixture(scope="session")
def hf_tiny():
    """transformers SamModel with the architecture of our ``tiny`` variant and random weights."""
    from transformers import SamModel

    torch.manual_seed(0)
    return randomize_(SamModel(hf_config_for("tiny")), seed=1).eval()


@pytest.fixture(scope="session")
def hf_tiny_dir(hf_tiny, tmp_path_factory):
    """The same model saved by transformers itself (``model.safetensors`` + ``config.json``)."""
    folder = tmp_path_factory.mktemp("hf_tiny")
    hf_tiny.save_pretrained(folder)
    return folder


@pytest.fixture
def keep_root_logging():
    """A bundle run applies logging.conf to the root logger; give the tests after it theirs back.
    (Modules that run bundles use it with ``pytest.mark.usefixtures("keep_root_logging")``.)"""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
