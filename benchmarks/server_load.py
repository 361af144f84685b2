"""Load test of ``medsam serve``: N concurrent clients over loopback for a bounded time.

Each client (a thread with its own ``MedSAMClient``, the 3D Slicer extension's client) repeats
cycles until the time is up, always finishing at least one:

1. upload a phantom CT volume of its own (``upload``);
2. a box on one slice the server has not encoded yet (``first_box``: encoder + decoder, what a
   user feels on a new volume, background encoding off);
3. boxes on that same slice, each moved by a voxel or two (``cached_box``: decoder only, what a
   user feels while adjusting a box);
4. the first ``--job-clients`` clients: a 3D job over ``--job-slices`` slices none of which is
   encoded yet (``job_3d``: propagation, polled for progress as the extension does);
5. close the session.

It reports latency percentiles per request type, the errors (zero expected), and, when it started
the server itself, the server's memory: fresh (VmRSS once up), peak (VmHWM), and once every
session is closed (VmRSS a few seconds after the last client ended: what the server gives back).

``--upload-probe N`` first measures what one upload costs: zero-filled volumes declaring N million
voxels (a few hundred KB of zlib, the decompression bomb of issue 14), int16 CT and float32 MR,
each the server's peak resident memory over its resident memory just before (Linux: VmHWM is reset
through /proc/PID/clear_refs), per declared voxel.

    python benchmarks/server_load.py --variant tiny --clients 4 --duration 60
    python benchmarks/server_load.py --variant tiny --clients 16 --duration 20 --upload-probe 33.5
    python benchmarks/server_load.py --variant vit_b --checkpoint random --precision bf16 --clients 1 --duration 1
    python benchmarks/server_load.py --url http://gpu-box:8123 --token ... --clients 8   # a running server
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "slicer_extension" / "MedSAM"))

from MedSAMLib.client import MedSAMClient  # noqa: E402

from medsam_monai.phantom import ct_phantom  # noqa: E402


def random_checkpoint(variant: str) -> Path:
    """Random weights of ``variant`` saved once under the temp folder (timings need no training)."""
    import torch

    from medsam_monai.networks import build_sam_variant

    path = Path(tempfile.gettempdir()) / f"medsam_random_{variant}.pt"
    if not path.exists():
        torch.manual_seed(0)
        torch.save(build_sam_variant(variant).state_dict(), path)
    return path


class Server:
    """``medsam serve`` in a subprocess on a free loopback port."""

    def __init__(self, args: argparse.Namespace) -> None:
        checkpoint = random_checkpoint(args.variant) if args.checkpoint == "random" else args.checkpoint
        command = [
            sys.executable,
            "-m",
            "medsam_monai.cli",
            "serve",
            "--port",
            "0",
            "--variant",
            args.variant,
            "--device",
            args.device,
            "--precision",
            args.precision,
            "--prefetch-slices",
            "0",
            "--log-level",
            "warning",
            "--cache-mb",
            str(args.cache_mb),
        ]
        if checkpoint is not None:
            command += ["--checkpoint", str(checkpoint)]
        self.log = Path(tempfile.mkstemp(prefix="medsam-load-", suffix=".log")[1])
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 600
        while (found := re.search(r"listening on (http://\S+)", self.log.read_text(errors="replace"))) is None:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"medsam serve did not start:\n{self.log.read_text(errors='replace')}")
            time.sleep(0.2)
        self.url = found.group(1)

    def memory(self) -> dict[str, float]:
        """VmHWM (peak resident memory) and VmRSS of the server, in MB."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return {key: int(re.search(rf"{key}:\s+(\d+) kB", status).group(1)) / 1024 for key in ("VmHWM", "VmRSS")}

    def reset_peak(self) -> None:
        """Make VmHWM start again from VmRSS (Linux 4.0+)."""
        Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


class Recorder:
    """Latencies per request type and errors, from all client threads."""

    def __init__(self) -> None:
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.errors: list[str] = []
        self._lock = threading.Lock()

    def timed(self, kind: str, call):
        start = time.perf_counter()
        try:
            result = call()
        except Exception as err:  # noqa: BLE001 - every failure is counted and shown
            with self._lock:
                self.errors.append(f"{kind}: {type(err).__name__}: {err}")
            return None
        with self._lock:
            self.latencies[kind].append(time.perf_counter() - start)
        return result


def client_cycles(index: int, url: str, args: argparse.Namespace, deadline: float, record: Recorder) -> None:
    client = MedSAMClient(url, token=args.token, timeout=3600)
    phantom = ct_phantom(shape=tuple(args.shape), spacing=(0.8, 0.8, 2.5), seed=index)
    volume, affine = np.ascontiguousarray(phantom.volume.array.transpose(2, 1, 0)), phantom.volume.affine
    i0, j0, _, i1, j1, _ = phantom.organ_box
    depth = args.shape[2]
    first_slice = depth // 4
    rng = np.random.default_rng(index)
    cycle = 0
    while cycle == 0 or time.monotonic() < deadline:
        cycle += 1
        session = record.timed("upload", lambda: client.create_session(volume, affine, prefetch=False))
        if session is None:
            return
        box = (i0, j0, first_slice, i1, j1, first_slice)
        record.timed("first_box", lambda: client.segment(session, box, propagate=False))
        for _ in range(args.boxes):
            di, dj = rng.integers(-2, 3, size=2)
            moved = (i0 + di, j0 + dj, first_slice, i1 + di, j1 + dj, first_slice)
            record.timed("cached_box", lambda: client.segment(session, moved, propagate=False))
        if index < args.job_clients and args.job_slices > 0:
            k0 = min(first_slice + 1, depth - args.job_slices)
            job_box = (i0, j0, k0, i1, j1, k0 + args.job_slices - 1)
            record.timed("job_3d", lambda: client.segment(session, job_box, progress=lambda done, total: None))
        client.close_session(session)


def zero_upload(dtype: str, voxels: int, modality: str) -> tuple[dict, np.ndarray]:
    """An upload body of ``voxels`` zeros (about a cube), compressed as far as zlib goes, and its affine."""
    side = round(voxels ** (1 / 3))
    shape = [side, side, max(1, voxels // (side * side))]
    raw = zlib.compress(bytes(int(np.prod(shape)) * np.dtype(dtype).itemsize), 9)
    volume = {"dtype": dtype, "shape": shape, "compression": "zlib", "data": base64.b64encode(raw).decode()}
    return {
        "volume": volume,
        "ijk_to_ras": np.diag([0.5, 0.5, 0.5, 1.0]).tolist(),
        "modality": modality,
        "prefetch": False,
    }, np.prod(shape)


def upload_probe(server: Server, token: str | None, million_voxels: float) -> list[dict[str, object]]:
    """Peak memory one zero-filled upload costs the server, per declared voxel."""
    results = []
    for dtype, modality in (("int16", "ct"), ("float32", "mr")):
        body, voxels = zero_upload(dtype, int(million_voxels * 1e6), modality)
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
        time.sleep(1.0)
        server.reset_peak()
        before = server.memory()["VmRSS"]
        start = time.perf_counter()
        request = urllib.request.Request(server.url + "/sessions", data=data, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=600) as answer:
                status, session = answer.status, json.loads(answer.read())["session_id"]
        except urllib.error.HTTPError as err:
            status, session = err.code, None
        seconds = time.perf_counter() - start
        peak = server.memory()["VmHWM"] - before
        if session is not None:
            urllib.request.urlopen(
                urllib.request.Request(f"{server.url}/sessions/{session}", method="DELETE", headers=headers), timeout=60
            )
        results.append(
            {
                "dtype": dtype,
                "modality": modality,
                "voxels": int(voxels),
                "request_kb": round(len(data) / 1024),
                "status": status,
                "seconds": round(seconds, 2),
                "peak_mb": round(peak),
                "bytes_per_voxel": round(peak * 2**20 / voxels, 2),
            }
        )
    return results


def percentiles(values: list[float]) -> dict[str, float]:
    data = np.asarray(values)
    return {
        "n": len(data),
        "p50": float(np.percentile(data, 50)),
        "p90": float(np.percentile(data, 90)),
        "p99": float(np.percentile(data, 99)),
        "max": float(data.max()),
        "mean": float(data.mean()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running server (default: start medsam serve here)")
    parser.add_argument("--token", default=os.environ.get("MEDSAM_SERVER_TOKEN"))
    parser.add_argument("--variant", default="tiny", choices=["tiny", "vit_b", "vit_l", "vit_h"])
    parser.add_argument("--checkpoint", default="random", help="weights, or 'random' (saved to the temp folder)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--cache-mb", type=float, default=1024)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--duration", type=float, default=60, help="seconds; cycles under way finish")
    parser.add_argument("--boxes", type=int, default=5, help="cached-slice boxes per cycle")
    parser.add_argument("--job-slices", type=int, default=20)
    parser.add_argument("--job-clients", type=int, default=1, help="clients that also run a 3D job per cycle")
    parser.add_argument("--shape", type=int, nargs=3, default=[256, 256, 48], metavar=("I", "J", "K"))
    parser.add_argument(
        "--upload-probe",
        type=float,
        default=0,
        metavar="MVOXELS",
        help="first measure the server's peak memory for zero-filled uploads of this many million voxels",
    )
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if args.shape[2] < args.job_slices + 2:
        parser.error(f"--shape needs at least {args.job_slices + 2} slices along k for the 3D job")

    server = None if args.url else Server(args)
    url = args.url or server.url
    probe: list[dict[str, object]] = []
    try:
        health = MedSAMClient(url, token=args.token, timeout=600).health()
        fresh = server.memory() if server is not None else {}
        if server is not None and args.upload_probe > 0:
            probe = upload_probe(server, args.token, args.upload_probe)
        record = Recorder()
        started = time.monotonic()
        deadline = started + args.duration
        threads = [threading.Thread(target=client_cycles, args=(n, url, args, deadline, record)) for n in range(args.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.monotonic() - started
        if server is not None:
            time.sleep(5.0)  # every session is closed: what stays is what the server keeps
            memory = {"fresh_MB": fresh["VmRSS"], "peak_MB": server.memory()["VmHWM"], "closed_MB": server.memory()["VmRSS"]}
        else:
            memory = {}
    finally:
        if server is not None:
            server.stop()

    report = {
        "server": {k: health.get(k) for k in ("variant", "device", "precision", "version")},
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "clients": args.clients,
        "wall_s": round(wall, 1),
        "shape": args.shape,
        "job_slices": args.job_slices,
        "latency_s": {kind: percentiles(values) for kind, values in sorted(record.latencies.items())},
        "errors": len(record.errors),
        "error_samples": record.errors[:5],
        "server_memory_mb": memory,
        "upload_probe": probe,
    }
    print(f"{report['server']} | {args.clients} clients | {wall:.0f} s | volume {args.shape} | errors {len(record.errors)}")
    print(f"{'request':12s} {'n':>4s} {'p50':>8s} {'p90':>8s} {'p99':>8s} {'max':>8s}")
    for kind, stats in report["latency_s"].items():
        print(f"{kind:12s} {stats['n']:4d} " + " ".join(f"{stats[q]:7.3f}s" for q in ("p50", "p90", "p99", "max")))
    if memory:
        print(
            f"server memory: fresh {memory['fresh_MB']:.0f} MB, peak (VmHWM) {memory['peak_MB']:.0f} MB, "
            f"all sessions closed {memory['closed_MB']:.0f} MB"
        )
    for row in probe:
        print(
            f"upload probe: {row['dtype']} {row['modality']}, {row['voxels'] / 1e6:.1f}M zero voxels in "
            f"{row['request_kb']} KB: {row['status']}, peak +{row['peak_mb']} MB = {row['bytes_per_voxel']} bytes per voxel"
        )
    for sample in record.errors[:5]:
        print("error:", sample)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 1 if record.errors else 0


if __name__ == "__main__":
    sys.exit(main())
