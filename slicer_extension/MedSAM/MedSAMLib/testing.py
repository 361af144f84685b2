"""A stand-in for the MedSAM client in tests: no network, no model, predictable masks.

:class:`ThresholdClient` answers like ``MedSAMClient`` (same methods and arguments) with "masks"
that are the voxels above a threshold inside the box, on the box's slices along the requested
axis. It lets the module's self-test and the Logic's tests check where results land, how they
merge and how undo restores them, without a server. It is not a segmentation method.
"""

from __future__ import annotations

import itertools
from typing import Callable, Optional

import numpy as np

from . import geometry


class SessionNotFound(RuntimeError):
    """Like the client's error for a session the server does not know (``code`` as the server's)."""

    code = "session_not_found"
    status = 404


class ThresholdClient:
    """``segment`` marks box voxels brighter than ``threshold``; records every call."""

    def __init__(self, threshold: float = 0.0, fail_on_segment: Optional[BaseException] = None):
        self.threshold = float(threshold)
        self.fail_on_segment = fail_on_segment
        self.calls: list = []
        self._volumes: dict = {}
        self._counter = itertools.count(1)

    def health(self) -> dict:
        self.calls.append(("health",))
        return {"status": "ok", "version": "test", "variant": "threshold", "device": "none"}

    def create_session(self, volume, ijk_to_ras, modality: str = "ct", window=None, **_ignored) -> str:
        session = f"session-{next(self._counter)}"
        self._volumes[session] = (np.array(volume, copy=True), np.asarray(ijk_to_ras, dtype=float))
        self.calls.append(("create_session", session, modality, window))
        return session

    def segment(self, session_id: str, box_ijk, axis: str = "axial", propagate: bool = True, points=None,
                progress: Optional[Callable[[int, int], None]] = None,
                cancel: Optional[Callable[[], bool]] = None, **_ignored) -> np.ndarray:
        self.calls.append(("segment", session_id, tuple(int(v) for v in box_ijk), axis, propagate, points))
        if self.fail_on_segment is not None:
            raise self.fail_on_segment
        if session_id not in self._volumes:
            raise SessionNotFound(f"server error 404: no session {session_id!r}")
        volume, ijk_to_ras = self._volumes[session_id]
        voxel_axis = geometry.slicing_voxel_axis(ijk_to_ras, axis)
        i0, j0, k0, i1, j1, k1 = (int(v) for v in box_ijk)
        first, last = geometry.box_slice_range(box_ijk, voxel_axis)
        if not propagate:
            # Like the server: only the box's middle slice.
            first = last = first + (last - first) // 2
        labels = np.zeros(volume.shape, dtype=np.uint8)
        region = [slice(k0, k1 + 1), slice(j0, j1 + 1), slice(i0, i1 + 1)]
        region[2 - voxel_axis] = slice(first, last + 1)
        total = last - first + 1
        labels[tuple(region)] = volume[tuple(region)] > self.threshold
        for done in range(1, total + 1):
            if cancel is not None and cancel():
                raise RuntimeError("cancelled")
            if progress is not None:
                progress(done, total)
        return labels

    def close_session(self, session_id: str) -> None:
        self.calls.append(("close_session", session_id))
        self._volumes.pop(session_id, None)

    def forget_all_sessions(self) -> None:
        """What a server restart does."""
        self._volumes.clear()
