"""Undo for MedSAM actions: what one action overwrote in one segment, so it can be put back.

Each action changes one segment on a run of voxel slices (the box's slices). Before writing, the
segment's voxels on those slices are saved here, packed 8 voxels to a byte; undoing writes them
back and leaves every other slice alone, so edits made meanwhile elsewhere (Segment Editor, say)
survive. An action that created its segment is undone by removing the segment. An action that made
several segments at once ("Segment everything": one per mask) is one :class:`UndoGroup`, undone in one step.

Nothing here imports Slicer; the caller reads and writes the segment.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np


@dataclass(frozen=True)
class UndoEntry:
    """The state of one segment's slices before one action."""

    description: str
    segmentation_node_id: str
    segment_id: str
    created_segment: bool
    voxel_axis: int
    first_slice: int
    last_slice: int
    slab_shape: tuple
    packed: bytes
    volume_node_id: str = ""

    @classmethod
    def capture(
        cls,
        description: str,
        segmentation_node_id: str,
        segment_id: str,
        created_segment: bool,
        voxel_axis: int,
        first_slice: int,
        last_slice: int,
        slab_before: np.ndarray,
        volume_node_id: str = "",
    ) -> "UndoEntry":
        """An entry holding ``slab_before`` (the segment on the slices, nonzero = inside).

        ``volume_node_id`` names the volume whose voxel grid the slices are on.
        """
        values = np.ascontiguousarray(np.asarray(slab_before) > 0)
        return cls(
            description,
            segmentation_node_id,
            segment_id,
            created_segment,
            int(voxel_axis),
            int(first_slice),
            int(last_slice),
            tuple(values.shape),
            np.packbits(values).tobytes(),
            volume_node_id,
        )

    @classmethod
    def created(cls, description: str, segmentation_node_id: str, segment_id: str, volume_node_id: str = "") -> "UndoEntry":
        """An entry for a segment the action made: undoing removes it, so nothing of it is saved."""
        return cls(description, segmentation_node_id, segment_id, True, 0, 0, -1, (0, 0, 0), b"", volume_node_id)

    def slab_before(self) -> np.ndarray:
        """The saved slices as a uint8 array (0/1) of the original shape."""
        count = int(np.prod(self.slab_shape))
        bits = np.unpackbits(np.frombuffer(self.packed, dtype=np.uint8), count=count)
        return bits.reshape(self.slab_shape)

    @property
    def size_bytes(self) -> int:
        return len(self.packed)


@dataclass(frozen=True)
class UndoGroup:
    """Entries of one action on one segmentation, undone together as one step (the last entry first)."""

    description: str
    entries: tuple

    @classmethod
    def of(cls, description: str, entries: Sequence[UndoEntry]) -> "UndoGroup":
        entries = tuple(entries)
        if not entries:
            raise ValueError("an undo group needs at least one entry")
        if len({entry.segmentation_node_id for entry in entries}) != 1:
            raise ValueError("an undo group's entries are all of one segmentation")
        return cls(description, entries)

    @property
    def segmentation_node_id(self) -> str:
        return self.entries[0].segmentation_node_id

    @property
    def size_bytes(self) -> int:
        return sum(entry.size_bytes for entry in self.entries)


UndoStep = Union[UndoEntry, UndoGroup]


class UndoStack:
    """Last-in first-out undo steps (entries or groups), the oldest dropped beyond ``max_entries`` or ``max_bytes``."""

    def __init__(self, max_entries: int = 50, max_bytes: int = 256 * 1024 * 1024):
        self.max_entries = int(max_entries)
        self.max_bytes = int(max_bytes)
        self._entries: deque = deque()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return sum(entry.size_bytes for entry in self._entries)

    def push(self, entry: UndoStep) -> None:
        self._entries.append(entry)
        while len(self._entries) > 1 and (len(self._entries) > self.max_entries or self.size_bytes > self.max_bytes):
            self._entries.popleft()

    def peek(self) -> Optional[UndoStep]:
        return self._entries[-1] if self._entries else None

    def pop(self) -> Optional[UndoStep]:
        return self._entries.pop() if self._entries else None

    def clear(self) -> None:
        self._entries.clear()

    def forget_segmentation(self, segmentation_node_id: str) -> None:
        """Drop the entries of a segmentation that is gone (node removed, scene closed)."""
        self._entries = deque(e for e in self._entries if e.segmentation_node_id != segmentation_node_id)
