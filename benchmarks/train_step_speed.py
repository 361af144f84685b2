"""Training-step time of the ``tiny`` variant: windowed attention only (the shipped ``tiny``) against
the same widths with SAM's two global-attention blocks (the ``tiny`` of earlier versions).

One step is what ``configs/train.json`` runs per iteration: the training forward of
:class:`medsam_monai.training.MedSAMTrainNet` on ``--batch`` 1024x1024 slices with ``--prompts``
boxes each, the decoder's logits upsampled to 1024, ``DiceCELoss(sigmoid=True, squared_pred=True)``,
backward and an AdamW step. Both models run alternately in one process on the same inputs; the
median of ``--repeats`` steps after one warm-up is reported, with the ratio.

    python benchmarks/train_step_speed.py [--batch 2] [--prompts 8] [--repeats 5]

Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from dataclasses import replace

import torch
from monai.losses import DiceCELoss

from medsam_monai.networks.registry import SAM_VARIANTS, build_sam_from_spec
from medsam_monai.training.network import MedSAMTrainNet


def training_models() -> dict[str, MedSAMTrainNet]:
    windowed = SAM_VARIANTS["tiny"]
    with_global = replace(windowed, encoder_global_attn_indexes=(1, 3), window_size=14)
    torch.manual_seed(0)
    return {
        "tiny (windowed only)": MedSAMTrainNet(build_sam_from_spec(windowed, "tiny").train()),
        "tiny + 2 global blocks": MedSAMTrainNet(build_sam_from_spec(with_global, "tiny").train()),
    }


def step_function(net: MedSAMTrainNet, images: torch.Tensor, boxes: torch.Tensor, masks: torch.Tensor):
    optimizer = torch.optim.AdamW(net.trainable_parameters(), lr=1e-4, weight_decay=0.01)
    loss_function = DiceCELoss(sigmoid=True, squared_pred=True)

    def step() -> float:
        start = time.perf_counter()
        optimizer.zero_grad()
        loss_function(net(images, boxes), masks).backward()
        optimizer.step()
        return time.perf_counter() - start

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=8, help="boxes per slice (the demo's prompts_per_slice)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(args.batch, 1, 1024, 1024, generator=generator)
    count = args.batch * args.prompts
    corners = torch.randint(0, 600, (count, 2), generator=generator).float()
    boxes = torch.cat([corners, corners + 300], dim=1)
    masks = torch.zeros(count, 1, 1024, 1024)
    for n, (x0, y0, x1, y1) in enumerate(boxes.long().tolist()):
        masks[n, 0, y0 + 30 : y1 - 30, x0 + 30 : x1 - 30] = 1
    steps = {name: step_function(net, images, boxes, masks) for name, net in training_models().items()}
    times: dict[str, list[float]] = {name: [] for name in steps}
    for run in range(args.repeats + 1):
        for name, step in steps.items():
            seconds = step()
            if run > 0:  # the first step warms up allocators and kernels
                times[name].append(seconds)
    medians = {name: statistics.median(t) for name, t in times.items()}
    windowed, with_global = medians.values()
    print(
        json.dumps(
            {
                "machine": (
                    f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
                ),
                "batch": args.batch,
                "prompts_per_slice": args.prompts,
                "median_step_s": {k: round(v, 3) for k, v in medians.items()},
                "global_over_windowed": round(with_global / windowed, 2),
                "all_step_s": {k: [round(t, 3) for t in v] for k, v in times.items()},
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
