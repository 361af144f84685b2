"""Estimate the GPU memory of one MedSAM training step without a GPU (and without using memory).

    python -m medsam_monai.training.memory_estimate --variant vit_b --batch-size 2

The training forward (:class:`MedSAMTrainNet` plus MedSAM's Dice + BCE loss at 1024) runs under
``FakeTensorMode``: tensors have shapes and dtypes but no storage, so a ViT-B step costs seconds
and no RAM. Every tensor autograd saves for the backward pass is recorded (once per storage,
parameters excluded): that is the activation memory held at the start of the backward pass, the
peak of a training step.

The run is on CPU, where attention takes PyTorch's math path and saves the (heads, L, L)
probabilities. On a CUDA GPU the encoder's attention goes through the memory-efficient SDPA kernel,
which keeps the (heads, L, L) relative-position bias instead (same size, as the bias gets a
gradient), so the count carries over. Not counted: the CUDA context and cuBLAS workspaces (about
0.5-1 GB), the allocator's fragmentation, and the transient buffers of the backward pass (a few
hundred MB: one chunk's bias gradient, a block's activation gradients).
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

from ..networks import build_sam_variant
from .network import MedSAMTrainNet

GIB = 2**30


def _medsam_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Dice (sigmoid, squared denominator) + BCE, written out: MONAI's DiceLoss needs real values."""
    probs = torch.sigmoid(logits)
    dims = tuple(range(2, logits.ndim))
    dice = 1 - (2 * (probs * target).sum(dims) + 1e-5) / ((probs * probs).sum(dims) + (target * target).sum(dims) + 1e-5)
    return dice.mean() + F.binary_cross_entropy_with_logits(logits, target)


def training_step_memory(variant: str = "vit_b", batch_size: int = 2, amp: bool = False) -> dict[str, float]:
    """Bytes (in GiB) of a training step's parts: weights, gradients, AdamW state, saved activations."""
    saved: dict[int, torch.Tensor] = {}

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        saved[id(tensor)] = tensor
        return tensor

    with FakeTensorMode():
        net = MedSAMTrainNet(build_sam_variant(variant)).train()
        images = torch.rand(batch_size, 1, 1024, 1024)
        boxes = torch.tensor([[100.0, 120.0, 600.0, 700.0]] * batch_size)
        target = torch.rand(batch_size, 1, 1024, 1024)
        # CPU autocast in bf16 stands for CUDA AMP: same 2-byte activations, same op lists in the main
        precision = torch.autocast("cpu", dtype=torch.bfloat16) if amp else contextlib.nullcontext()
        with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor), precision:
            _medsam_loss(net(images, boxes), target)
        weights = {p.untyped_storage()._cdata for p in net.parameters()}
        attention_elements, other = 0, 0
        seen: set[int] = set()
        for tensor in saved.values():
            storage = tensor.untyped_storage()
            if storage._cdata in weights or storage._cdata in seen:
                continue
            seen.add(storage._cdata)
            if tensor.ndim >= 2 and tensor.shape[-1] == tensor.shape[-2] and tensor.shape[-1] in (196, 4096):
                attention_elements += tensor.numel()  # (heads, L, L): windows of 14x14 or the global 64x64 grid
            else:
                other += storage.nbytes()
        all_params = sum(p.numel() for p in net.parameters())
        trainable = sum(p.numel() for p in net.trainable_parameters())
    return {
        "weights": all_params * 4 / GIB,
        "gradients": trainable * 4 / GIB,
        "adamw_state": 2 * trainable * 4 / GIB,
        "activations": other / GIB,
        # CUDA AMP runs SDPA in fp16, bias included; CPU autocast keeps attention in fp32, so count it here
        "attention_LxL": attention_elements * (2 if amp else 4) / GIB,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", default="vit_b")
    parser.add_argument("--batch-size", type=int, default=2)
    args = parser.parse_args(argv)
    for amp in (False, True):
        parts = training_step_memory(args.variant, args.batch_size, amp)
        total = sum(parts.values())
        detail = ", ".join(f"{name} {value:.2f}" for name, value in parts.items())
        print(
            f"{args.variant} batch {args.batch_size} {'AMP (16-bit activations)' if amp else 'fp32'}: "
            f"{total:.1f} GiB before CUDA context and allocator overhead ({detail})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
