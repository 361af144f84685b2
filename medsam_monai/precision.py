"""Numerical precision of inference and training: ``fp32`` (exact) or ``bf16`` (autocast)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str) -> str:
    """Return ``precision`` if supported, else raise a ValueError listing the choices."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return precision


@contextlib.contextmanager
def autocast(device: str | torch.device, precision: str) -> Iterator[None]:
    """Run the enclosed network calls at ``precision`` on ``device`` (CPU or CUDA).

    ``fp32`` also switches off any autocast the caller had enabled, so it is always the exact mode.
    """
    device_type = torch.device(device).type
    if check_precision(precision) == "bf16":
        with torch.autocast(device_type=device_type, dtype=torch.bfloat16):
            yield
    else:
        with torch.autocast(device_type=device_type, enabled=False):
            yield
