"""Every checkpoint format users have loads strictly; bad files fail with one clear error."""

from __future__ import annotations

import hashlib
import pickle

import pytest
import torch

from medsam_monai import CheckpointError, build_sam, detect_variant, load_state_dict
from medsam_monai.checkpoints import to_original_keys
from medsam_monai.download import ChecksumError
from medsam_monai.networks import build_sam_variant, count_parameters


@pytest.fixture(scope="module")
def tiny_state():
    torch.manual_seed(0)
    model = build_sam_variant("tiny")
    for p in model.parameters():
        p.data.normal_()
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_weights(model, state):
    loaded = model.state_dict()
    assert loaded.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key


@pytest.mark.parametrize(
    "wrap",
    [
        pytest.param(lambda sd: sd, id="original state dict"),
        pytest.param(lambda sd: {"model": sd, "optimizer": {"lr": 1e-4}, "epoch": 3}, id="MedSAM training checkpoint"),
        pytest.param(lambda sd: {"model": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, id="DDP module. prefix"),
        pytest.param(lambda sd: {"state_dict": {f"_orig_mod.{k}": v for k, v in sd.items()}}, id="torch.compile prefix"),
        pytest.param(lambda sd: {f"module.{k}": v for k, v in sd.items()}, id="bare module. prefix"),
    ],
)
def test_torch_formats_round_trip(tmp_path, tiny_state, wrap):
    path = tmp_path / "ckpt.pth"
    torch.save(wrap(tiny_state), path)
    model = build_sam("tiny", path)
    assert_same_weights(model, tiny_state)


def test_hugging_face_formats_load_the_same_weights(tmp_path, hf_tiny, hf_tiny_dir):
    from_folder = build_sam("tiny", hf_tiny_dir).state_dict()
    from_safetensors = build_sam("tiny", hf_tiny_dir / "model.safetensors").state_dict()
    torch.save(hf_tiny.state_dict(), tmp_path / "pytorch_model.bin")
    from_bin = build_sam("tiny", tmp_path / "pytorch_model.bin").state_dict()
    for key in from_folder:
        assert torch.equal(from_folder[key], from_safetensors[key]), key
        assert torch.equal(from_folder[key], from_bin[key]), key
    # The mapping keeps every value: transformers counts its (tied) positional matrix once as a
    # parameter, where SAM keeps it as a buffer.
    assert sum(v.numel() for v in from_bin.values()) == sum(p.numel() for p in hf_tiny.parameters())


@pytest.mark.parametrize("variant", ["vit_b", "vit_l", "vit_h"])
def test_every_real_variant_maps_from_hugging_face_by_key_and_shape(variant):
    """facebook/sam-vit-{base,large,huge} and medsam-vit-base key sets map onto ours exactly."""
    from transformers import SamModel

    from medsam_monai.testing import hf_config_for

    with torch.device("meta"):
        hf_state = SamModel(hf_config_for(variant)).state_dict()
        ours = build_sam_variant(variant).state_dict()
    mapped = to_original_keys(hf_state)
    assert {k: tuple(v.shape) for k, v in mapped.items()} == {k: tuple(v.shape) for k, v in ours.items()}
    assert detect_variant(mapped) == variant


def test_original_keys_and_parameter_counts_of_vit_b():
    """The numbers of the published SAM ViT-B / MedSAM checkpoint."""
    with torch.device("meta"):
        model = build_sam_variant("vit_b")
    state = model.state_dict()
    for key, shape in {
        "image_encoder.pos_embed": (1, 64, 64, 768),
        "image_encoder.patch_embed.proj.weight": (768, 3, 16, 16),
        "image_encoder.blocks.0.attn.rel_pos_h": (27, 64),
        "image_encoder.blocks.2.attn.rel_pos_h": (127, 64),
        "image_encoder.blocks.0.attn.qkv.weight": (2304, 768),
        "image_encoder.neck.0.weight": (256, 768, 1, 1),
        "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": (2, 128),
        "mask_decoder.output_upscaling.0.weight": (256, 64, 2, 2),
    }.items():
        assert tuple(state[key].shape) == shape, key
    assert "pixel_mean" not in state and "pixel_std" not in state
    assert count_parameters(model) == 93_735_472
    assert count_parameters(model.image_encoder) == 89_670_912
    assert count_parameters(model.mask_decoder) == 4_058_340
    assert count_parameters(model.prompt_encoder) == 6_220


def test_wrong_variant_names_the_keys_and_the_variant_that_fits(tmp_path, tiny_state):
    path = tmp_path / "tiny.pth"
    torch.save(tiny_state, path)
    with pytest.raises(CheckpointError) as info:
        build_sam("vit_b", path)
    message = str(info.value)
    assert "\n" not in message
    assert "missing keys" in message and "image_encoder.blocks.1" in message
    assert "other shapes" in message and "file (64, 64) vs model (768, 768)" in message
    assert "--variant tiny" in message
    assert build_sam("auto", path).variant == "tiny"


def test_missing_and_unexpected_keys_are_named(tmp_path, tiny_state):
    state = dict(tiny_state)
    del state["mask_decoder.iou_token.weight"]
    state["mask_decoder.extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(
        CheckpointError,
        match=r"1 missing keys \(mask_decoder.iou_token.weight\).*"
        r"1 unexpected keys \(mask_decoder.extra.weight\).*fits none",
    ):
        build_sam("tiny", tmp_path / "broken.pth")


class _Payload:
    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED_BY_CHECKPOINT",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path, tiny_state, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    torch.save({"model": tiny_state, "trap": _Payload()}, path)
    with pytest.raises(CheckpointError, match="refusing to load .*weights_only"):
        load_state_dict(path)
    assert not (tmp_path / "PWNED_BY_CHECKPOINT").exists()
    # A legacy (non-zip) pickle is refused the same way.
    with open(tmp_path / "evil_legacy.pkl", "wb") as f:
        pickle.dump(_Payload(), f)
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_state_dict(tmp_path / "evil_legacy.pkl")
    assert not (tmp_path / "PWNED_BY_CHECKPOINT").exists()


def test_sha256_is_verified_before_loading(tmp_path, tiny_state):
    path = tmp_path / "tiny.pth"
    torch.save(tiny_state, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert build_sam("tiny", path, sha256=digest.upper()).variant == "tiny"
    with pytest.raises(ChecksumError):
        build_sam("tiny", path, sha256="0" * 64)


@pytest.mark.parametrize(
    "content, match",
    [
        (b"", "not a checkpoint file: it looks like an empty file"),
        (b"this is not a checkpoint at all", "not a checkpoint file: it looks like a plain text file"),
        (b"\x10\x00\x00\x00\x00\x00\x00\x00{broken json", "not a readable safetensors file"),
        (b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19", "not a readable PyTorch checkpoint"),
        (b"PK\x03\x04 truncated zip", "damaged ZIP archive"),
        (b"\x10\x01\x02\x03", "neither a torch.save archive nor a pickle of tensors"),
    ],
)
def test_unreadable_files_give_one_line_errors(tmp_path, content, match):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match) as info:
        load_state_dict(path)
    assert "\n" not in str(info.value)


def test_file_without_sam_weights_and_missing_path(tmp_path):
    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="holds no SAM/MedSAM weights"):
        load_state_dict(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_state_dict(tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="folder without"):
        load_state_dict(tmp_path)
