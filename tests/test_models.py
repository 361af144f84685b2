"""medsam_monai.models: which weights a variant uses, shared by the CLI, the server and the bundle.

The official weights are hundreds of MB behind the network, so ``fetch_weights`` is stubbed where
their resolution is tested (only the download, the network logic, is replaced; nothing is fetched).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medsam_monai import download, models
from medsam_monai.checkpoints import TINY_DEMO_CHECKPOINT, build_sam
from medsam_monai.predictor import MedSAMPredictor


@pytest.fixture
def no_download(monkeypatch):
    """fetch_weights replaced by a recorder (stub of the network logic): returns a path named after the request."""
    asked: list[str] = []

    def fake_fetch(name_or_url, cache_dir=None, sha256=None, progress=None, max_bytes=None):
        asked.append(name_or_url)
        return Path("/cache") / f"{name_or_url}.pth"

    monkeypatch.setattr(download, "fetch_weights", fake_fetch)
    return asked


def test_tiny_defaults_to_the_packaged_demo_model_without_a_download(no_download):
    assert models.packaged_checkpoint("tiny") == TINY_DEMO_CHECKPOINT and TINY_DEMO_CHECKPOINT.is_file()
    assert models.resolve_checkpoint("tiny") == TINY_DEMO_CHECKPOINT
    assert models.resolve_checkpoint("tiny", "") == TINY_DEMO_CHECKPOINT  # an empty config value counts as unset
    assert models.uses_packaged_weights("tiny", None) and no_download == []


@pytest.mark.parametrize("variant", ["vit_b", "vit_l", "vit_h"])
def test_sam_variants_default_to_their_registered_official_weights(no_download, variant):
    path = models.resolve_checkpoint(variant)
    assert no_download == [models.OFFICIAL_WEIGHTS[variant]] and path == Path("/cache") / f"{no_download[0]}.pth"
    assert no_download[0] in download.KNOWN_WEIGHTS  # a name the downloader knows, with its hash
    assert models.packaged_checkpoint(variant) is None and not models.uses_packaged_weights(variant, None)


@pytest.mark.parametrize("variant", models.MODEL_VARIANTS)
def test_an_explicit_checkpoint_always_wins(no_download, tmp_path, variant):
    mine = tmp_path / "mine.pth"
    assert models.resolve_checkpoint(variant, mine) == mine and models.resolve_checkpoint(variant, str(mine)) == mine
    assert no_download == [] and not models.uses_packaged_weights(variant, mine)


def test_an_unknown_variant_is_one_value_error_naming_the_known_ones(no_download):
    with pytest.raises(ValueError, match="unknown variant 'vit_x': use one of vit_b, vit_l, vit_h, tiny"):
        models.resolve_checkpoint("vit_x")
    assert no_download == []


def test_load_predictor_builds_the_variant_with_the_resolved_weights():
    predictor = models.load_predictor("tiny", device="cpu")
    expected = build_sam("tiny", TINY_DEMO_CHECKPOINT).state_dict()
    assert isinstance(predictor, MedSAMPredictor) and predictor.device.type == "cpu" and predictor.precision == "fp32"
    loaded = predictor.model.state_dict()
    assert loaded.keys() == expected.keys() and all(torch.equal(loaded[k], expected[k]) for k in expected)


def test_load_predictor_refuses_a_checkpoint_of_another_variant():
    from medsam_monai.checkpoints import CheckpointError

    with pytest.raises(CheckpointError):
        models.load_predictor("vit_b", TINY_DEMO_CHECKPOINT, device="cpu")


# ----- the image pipeline follows the checkpoint ----------------------------------------------


@pytest.mark.parametrize(
    ("variant", "checkpoint", "expected"),
    [
        ("vit_b", None, "medsam"),  # the default vit_b weights are MedSAM's
        ("vit_l", None, "sam"),
        ("vit_h", None, "sam"),
        ("tiny", None, "medsam"),
        ("vit_b", "/weights/sam_vit_b_01ec64.pth", "sam"),  # SAM's registered ViT-B file
        ("vit_h", "/weights/sam_vit_h_4b8939.pth", "sam"),
        ("vit_b", "/weights/medsam_vit_b.pth", "medsam"),  # any other vit_b file: MedSAM's
        ("vit_l", "/weights/finetuned.pth", "sam"),  # only SAM publishes ViT-L weights
    ],
)
def test_the_default_preprocessing_follows_the_checkpoint(variant, checkpoint, expected):
    assert models.default_preprocessing(variant, checkpoint) == expected


def test_a_safetensors_file_records_its_preprocessing_and_it_wins(tmp_path):
    from safetensors.torch import save_file

    state = build_sam("tiny", TINY_DEMO_CHECKPOINT).state_dict()
    path = tmp_path / "sam_vit_b_01ec64.pth"  # a name that would say "sam"; the metadata wins
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata={"preprocessing": "medsam"})
    assert models.default_preprocessing("tiny", path) == "medsam"
    assert models.load_predictor("tiny", path, device="cpu").preprocessing == "medsam"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata={"preprocessing": "sam"})
    assert models.load_predictor("tiny", path, device="cpu").preprocessing == "sam"


def test_the_demo_weights_record_medsams_pipeline_and_an_explicit_choice_wins():
    assert models.load_predictor("tiny", device="cpu").preprocessing == "medsam"
    assert models.load_predictor("tiny", device="cpu", preprocessing="sam").preprocessing == "sam"
    with pytest.raises(ValueError, match="unknown preprocessing 'imagenet'; choose one of medsam, sam"):
        models.load_predictor("tiny", device="cpu", preprocessing="imagenet")
