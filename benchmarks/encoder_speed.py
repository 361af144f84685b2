"""Image encoder speed and memory: this project against transformers' SamModel.

Both run side by side in one process on the same random weights (loaded into ours through the
Hugging Face checkpoint mapping) and the same 1024x1024 input, in fp32 and in bf16 autocast.
Timings alternate between the two implementations so that machine noise hits both alike; the
median of ``--repeats`` runs after one warm-up is reported, with the speed-up ratio and the
relative error of our embedding against the reference's. Peak memory is measured in a fresh
child process per implementation and precision that builds only that model (ru_maxrss after one
forward: interpreter and torch, the weights, and the forward's working memory), since one process
holding both models cannot tell whose peak it saw.

    python benchmarks/encoder_speed.py [--variant vit_b] [--repeats 3] [--device cpu]

Needs transformers (``pip install -e .[test]``). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch

from medsam_monai import autocast
from medsam_monai.checkpoints import build_sam, to_original_keys
from medsam_monai.testing import hf_config_for, randomize_

PRECISIONS = ("fp32", "bf16")


def build_pair(variant: str, device: str):
    from transformers import SamModel

    torch.manual_seed(0)
    reference = randomize_(SamModel(hf_config_for(variant)), seed=0).eval().to(device)
    ours = build_sam(variant, device=device)
    ours.load_state_dict(to_original_keys(reference.state_dict()), strict=True)
    return reference, ours


def encoders(reference, ours):
    return {"medsam_monai": ours.encode_image, "transformers": reference.get_image_embeddings}


def timed(fn, image, device: str, precision: str) -> tuple[float, torch.Tensor]:
    with torch.inference_mode(), autocast(device, precision):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn(image)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start, out


def compare(args: argparse.Namespace) -> dict:
    reference, ours = build_pair(args.variant, args.device)
    image = torch.rand(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(1)).to(args.device)
    fns = encoders(reference, ours)
    exact = None
    results = {}
    for precision in args.precisions:
        times: dict[str, list[float]] = {name: [] for name in fns}
        outputs = {}
        for run in range(args.repeats + 1):
            for name, fn in fns.items():
                seconds, outputs[name] = timed(fn, image, args.device, precision)
                if run > 0:  # the first run warms up allocators and kernels
                    times[name].append(seconds)
        if precision == "fp32":
            exact = outputs["transformers"].float()
        ours_s, ref_s = statistics.median(times["medsam_monai"]), statistics.median(times["transformers"])
        rel = lambda out: ((out.float() - exact).abs().max() / exact.abs().max()).item()  # noqa: E731
        results[precision] = {
            "medsam_monai_s": round(ours_s, 3),
            "transformers_s": round(ref_s, 3),
            "speedup": round(ref_s / ours_s, 2),
            "rel_err_ours_vs_reference_fp32": rel(outputs["medsam_monai"]),
            "rel_err_reference_vs_reference_fp32": rel(outputs["transformers"]),
            "all_times_s": {k: [round(t, 3) for t in v] for k, v in times.items()},
        }
        print(json.dumps({precision: results[precision]}), flush=True)
    return results


def child_peak_memory(args: argparse.Namespace) -> None:
    """Build one implementation alone, run one forward, print the process's peak RSS in MB."""
    if args.child_impl == "medsam_monai":
        model = randomize_(build_sam(args.variant, device=args.device))
        fn = model.encode_image
    else:
        from transformers import SamModel

        model = randomize_(SamModel(hf_config_for(args.variant))).eval().to(args.device)
        fn = model.get_image_embeddings
    image = torch.rand(1, 3, 1024, 1024).to(args.device)
    seconds, _ = timed(fn, image, args.device, args.child_precision)
    print(json.dumps({"peak_rss_mb": round(_peak_rss_mb()), "seconds_cold": round(seconds, 2)}))


def _peak_rss_mb() -> float:
    # VmHWM is this process's own high-water mark; ru_maxrss would carry the parent's peak over
    # the fork (Linux keeps it across exec).
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_memory(args: argparse.Namespace) -> dict:
    out = {}
    for precision in args.precisions:
        for impl in ("medsam_monai", "transformers"):
            cmd = [
                sys.executable,
                __file__,
                "--variant",
                args.variant,
                "--device",
                args.device,
                "--child-impl",
                impl,
                "--child-precision",
                precision,
            ]
            line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            out[f"{impl}/{precision}"] = json.loads(line)
            print(json.dumps({f"{impl}/{precision}": out[f"{impl}/{precision}"]}), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="vit_b")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory child processes")
    parser.add_argument("--child-impl", help=argparse.SUPPRESS)
    parser.add_argument("--child-precision", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.precisions = [p for p in args.precisions.split(",") if p]
    if args.child_impl:
        child_peak_memory(args)
        return
    print(
        json.dumps(
            {
                "machine": platform.processor() or platform.machine(),
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "variant": args.variant,
                "device": args.device,
            }
        ),
        flush=True,
    )
    compare(args)
    if not args.no_memory:
        peak_memory(args)


if __name__ == "__main__":
    main()
