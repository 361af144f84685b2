"""Loading SAM/MedSAM weights from every format users have, always without unpickling code.

Formats (detected from the file, not its name):

- the original state dict (``medsam_vit_b.pth``, ``sam_vit_{b,l,h}_*.pth``);
- training checkpoints that wrap it (``{"model": ...}``, ``{"state_dict": ...}``, ...), with or
  without the ``module.`` prefix of DistributedDataParallel or ``_orig_mod.`` of ``torch.compile``,
  including this project's own training checkpoints;
- Hugging Face ``SamModel`` weights (``pytorch_model.bin`` or ``model.safetensors``, or a folder
  holding one), whose keys are mapped back to the original names.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Mapping
from os import PathLike
from pathlib import Path

import torch

from .download import verify_sha256
from .networks import SAM_VARIANTS, Sam, build_sam_variant

StateDict = dict[str, torch.Tensor]

# The `tiny` model trained on synthetic CT phantoms by `python -m medsam_monai.training.demo_model`,
# shipped inside the package: the default weights of `--variant tiny` and of `medsam demo`. It knows
# phantoms, not anatomy.
TINY_DEMO_CHECKPOINT = Path(__file__).resolve().parent / "data" / "medsam_tiny_demo.safetensors"

ROOTS = ("image_encoder.", "prompt_encoder.", "mask_decoder.")
HF_ROOTS = ("vision_encoder.", "prompt_encoder.", "mask_decoder.", "shared_image_embedding.")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Keys under which training code commonly nests the model's state dict.
WRAPPER_KEYS = ("model", "state_dict", "model_state_dict", "network", "net", "module")

# Hugging Face SamModel name -> original SAM name, applied in order to each key.
_HF_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^vision_encoder\.", "image_encoder."),
    (r"^image_encoder\.layers\.", "image_encoder.blocks."),
    (r"^image_encoder\.blocks\.(\d+)\.layer_norm(\d)\.", r"image_encoder.blocks.\1.norm\2."),
    (r"^image_encoder\.patch_embed\.projection\.", "image_encoder.patch_embed.proj."),
    (r"^image_encoder\.neck\.conv1\.", "image_encoder.neck.0."),
    (r"^image_encoder\.neck\.layer_norm1\.", "image_encoder.neck.1."),
    (r"^image_encoder\.neck\.conv2\.", "image_encoder.neck.2."),
    (r"^image_encoder\.neck\.layer_norm2\.", "image_encoder.neck.3."),
    (r"^prompt_encoder\.shared_embedding\.positional_embedding$", "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"),
    (r"^prompt_encoder\.mask_embed\.conv1\.", "prompt_encoder.mask_downscaling.0."),
    (r"^prompt_encoder\.mask_embed\.layer_norm1\.", "prompt_encoder.mask_downscaling.1."),
    (r"^prompt_encoder\.mask_embed\.conv2\.", "prompt_encoder.mask_downscaling.3."),
    (r"^prompt_encoder\.mask_embed\.layer_norm2\.", "prompt_encoder.mask_downscaling.4."),
    (r"^prompt_encoder\.mask_embed\.conv3\.", "prompt_encoder.mask_downscaling.6."),
    (r"^prompt_encoder\.point_embed\.", "prompt_encoder.point_embeddings."),
    (r"^mask_decoder\.transformer\.layers\.(\d+)\.layer_norm(\d)\.", r"mask_decoder.transformer.layers.\1.norm\2."),
    (r"^mask_decoder\.transformer\.layer_norm_final_attn\.", "mask_decoder.transformer.norm_final_attn."),
    (r"^mask_decoder\.upscale_conv1\.", "mask_decoder.output_upscaling.0."),
    (r"^mask_decoder\.upscale_layer_norm\.", "mask_decoder.output_upscaling.1."),
    (r"^mask_decoder\.upscale_conv2\.", "mask_decoder.output_upscaling.3."),
)
# The decoder's MLP heads: HF names them proj_in, layers.0..n-3, proj_out; SAM numbers them 0..n-1.
_HF_MLP_HEAD = re.compile(r"^(mask_decoder\.(?:output_hypernetworks_mlps\.\d+|iou_prediction_head))\.(proj_in|layers\.(\d+)|proj_out)\.(.+)$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message says why and what to do, on one line."""


def load_state_dict(path: str | PathLike[str], sha256: str | None = None) -> StateDict:
    """Read any supported checkpoint file (or Hugging Face folder) into an original-format state dict.

    Args:
        path: a ``.pth``/``.pt``/``.bin``/``.safetensors`` file or a folder holding Hugging Face weights.
        sha256: expected hash of the file, checked before anything is read from it.

    Returns:
        ``{name: tensor}`` with the original SAM parameter names.
    """
    file = _resolve_weights_file(Path(path))
    if sha256 is not None:
        verify_sha256(file, sha256)
    raw = _read_safetensors(file) if _is_safetensors(file) else _read_torch_file(file)
    return to_original_keys(raw, source=str(file))


def to_original_keys(obj: object, source: str = "checkpoint") -> StateDict:
    """Unwrap a loaded checkpoint object and name its tensors as the original SAM does."""
    state = _find_state_dict(obj, source)
    state = {_strip_wrapper_prefixes(k): v for k, v in state.items()}
    if any(k.startswith(("vision_encoder.", "shared_image_embedding.")) for k in state):
        state = _from_hugging_face(state)
    return state


def load_checkpoint_into(model: Sam, path: str | PathLike[str], sha256: str | None = None) -> Sam:
    """Load a checkpoint into ``model`` with strict key and shape matching."""
    state = load_state_dict(path, sha256=sha256)
    check_state_dict_fits(model, state, source=str(path))
    model.load_state_dict(state, strict=True)
    return model


def build_sam(
    variant: str = "vit_b",
    checkpoint: str | PathLike[str] | None = None,
    sha256: str | None = None,
    device: str | torch.device = "cpu",
) -> Sam:
    """Build SAM/MedSAM ``variant`` and load ``checkpoint`` (any supported format) strictly.

    Args:
        variant: a key of :data:`~medsam_monai.networks.SAM_VARIANTS` (``vit_b`` for MedSAM), or
            ``"auto"`` to take the variant the checkpoint fits.
        checkpoint: path of the weights; None leaves the model with random weights.
        sha256: expected hash of the checkpoint file, verified before loading when given.
        device: where the model is put.

    Returns:
        The model in eval mode.
    """
    state = load_state_dict(checkpoint, sha256=sha256) if checkpoint is not None else None
    if variant == "auto":
        if state is None:
            raise ValueError("variant='auto' needs a checkpoint to infer the variant from")
        variant = detect_variant(state) or _raise_no_variant(state, str(checkpoint))
    model = build_sam_variant(variant)
    if state is not None:
        check_state_dict_fits(model, state, source=str(checkpoint))
        model.load_state_dict(state, strict=True)
    return model.to(device).eval()


def detect_variant(state: Mapping[str, torch.Tensor]) -> str | None:
    """The registered variant whose parameter names and shapes are exactly those of ``state``."""
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    for name, expected in _variant_shapes().items():
        if expected == shapes:
            return name
    return None


def check_state_dict_fits(model: Sam, state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Raise one :class:`CheckpointError` naming missing, unexpected and mis-shaped keys, if any."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    given = {k: tuple(v.shape) for k, v in state.items()}
    missing = sorted(expected.keys() - given.keys())
    unexpected = sorted(given.keys() - expected.keys())
    misshaped = sorted(k for k in expected.keys() & given.keys() if expected[k] != given[k])
    if not (missing or unexpected or misshaped):
        return
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys ({_first(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({_first(unexpected)})")
    if misshaped:
        shown = ", ".join(f"{k}: file {given[k]} vs model {expected[k]}" for k in misshaped[:2])
        problems.append(f"{len(misshaped)} keys with other shapes ({shown}{', ...' if len(misshaped) > 2 else ''})")
    fitting = detect_variant(state)
    hint = (
        f"it fits variant {fitting!r}: use --variant {fitting}"
        if fitting
        else "it fits none of the variants " + ", ".join(SAM_VARIANTS)
    )
    variant = getattr(model, "variant", "") or "this model"
    raise CheckpointError(f"{source} does not fit variant {variant!r}: {'; '.join(problems)}; {hint}")


def _raise_no_variant(state: Mapping[str, torch.Tensor], source: str) -> str:
    raise CheckpointError(
        f"{source} fits none of the variants {', '.join(SAM_VARIANTS)} "
        f"({len(state)} tensors; e.g. {_first(sorted(state))})"
    )


def _first(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")


_VARIANT_SHAPES: dict[str, dict[str, tuple[int, ...]]] = {}


def _variant_shapes() -> dict[str, dict[str, tuple[int, ...]]]:
    # Built on the meta device: shapes without allocating any weights.
    if not _VARIANT_SHAPES:
        with torch.device("meta"):
            for name in SAM_VARIANTS:
                _VARIANT_SHAPES[name] = {k: tuple(v.shape) for k, v in build_sam_variant(name).state_dict().items()}
    return _VARIANT_SHAPES


def _resolve_weights_file(path: Path) -> Path:
    if path.is_dir():
        for name in ("model.safetensors", "pytorch_model.bin", "model.pt", "model.pth"):
            if (path / name).is_file():
                return path / name
        if (path / "model.safetensors.index.json").is_file() or (path / "pytorch_model.bin.index.json").is_file():
            return path
        raise CheckpointError(f"{path} is a folder without model.safetensors, pytorch_model.bin or model.pt")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    return path


def _is_safetensors(path: Path) -> bool:
    if path.is_dir():
        return (path / "model.safetensors.index.json").is_file()
    with open(path, "rb") as f:
        head = f.read(9)
    # A safetensors file starts with the 8-byte length of its JSON header, then "{".
    return len(head) == 9 and head[8:9] == b"{"


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    files = [path]
    if path.is_dir():
        index = json.loads((path / "model.safetensors.index.json").read_text())
        files = sorted({path / name for name in index["weight_map"].values()})
    state: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            state.update(load_file(str(file)))
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{file} is not a readable safetensors file: {err}") from None
    return state


def _read_torch_file(path: Path) -> object:
    if path.is_dir():
        index = json.loads((path / "pytorch_model.bin.index.json").read_text())
        state: dict[str, object] = {}
        for name in sorted(set(index["weight_map"].values())):
            part = _read_torch_file(path / name)
            state.update(part if isinstance(part, Mapping) else {})
        return state
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = str(err).strip().splitlines()
        detail = next((line for line in reason if "GLOBAL" in line or "Unsupported" in line), reason[0] if reason else "")
        raise CheckpointError(
            f"refusing to load {path}: it holds pickled Python objects, not only weights ({detail.strip()}); "
            "only weights are loaded (weights_only=True). If you trust the file, re-save its state_dict with torch.save"
        ) from None
    except Exception as err:  # noqa: BLE001 - torch raises many types for a corrupt file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {first}") from None


def _looks_like_state_dict(obj: object) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) for k in obj)
        and any(_strip_wrapper_prefixes(k).startswith(ROOTS + HF_ROOTS) for k in obj)
    )


def _find_state_dict(obj: object, source: str) -> StateDict:
    if _looks_like_state_dict(obj):
        return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}  # type: ignore[union-attr]
    if isinstance(obj, Mapping):
        for key in WRAPPER_KEYS:
            if key in obj and _looks_like_state_dict(obj[key]):
                return _find_state_dict(obj[key], source)
    what = f"keys {_first(sorted(map(str, obj)))}" if isinstance(obj, Mapping) else type(obj).__name__
    raise CheckpointError(f"{source} holds no SAM/MedSAM weights (found {what})")


def _strip_wrapper_prefixes(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix) :], True
    return key


def _from_hugging_face(state: Mapping[str, torch.Tensor]) -> StateDict:
    head_depths = _hf_mlp_head_depths(state)
    out: StateDict = {}
    for key, value in state.items():
        if key == "shared_image_embedding.positional_embedding":
            # transformers ties this to prompt_encoder.shared_embedding and may save either copy.
            if "prompt_encoder.shared_embedding.positional_embedding" in state:
                continue
            key = "prompt_encoder.shared_embedding.positional_embedding"
        for pattern, replacement in _HF_RENAMES:
            key = re.sub(pattern, replacement, key)
        match = _HF_MLP_HEAD.match(key)
        if match:
            head, part, hidden, rest = match.groups()
            index = 0 if part == "proj_in" else head_depths[head] - 1 if part == "proj_out" else int(hidden) + 1
            key = f"{head}.layers.{index}.{rest}"
        out[key] = value
    return out


def _hf_mlp_head_depths(state: Mapping[str, torch.Tensor]) -> dict[str, int]:
    hidden_layers: dict[str, set[int]] = {}
    for key in state:
        match = _HF_MLP_HEAD.match(key)
        if match:
            head, _, hidden, _ = match.groups()
            hidden_layers.setdefault(head, set())
            if hidden is not None:
                hidden_layers[head].add(int(hidden))
    return {head: len(layers) + 2 for head, layers in hidden_layers.items()}
