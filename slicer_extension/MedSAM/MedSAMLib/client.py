"""Client of the MedSAM inference server (``medsam serve``), for 3D Slicer's Python.

Standard library and numpy only: it must not pull torch (or anything of ``medsam_monai``) into
Slicer. Volumes go in as 3D Slicer holds them (``slicer.util.arrayFromVolume``: indexed
``[k, j, i]``, with the volume's IJK-to-RAS matrix) and labels come back the same way, so the
caller never swaps axes; boxes and points are in IJK voxel indices.

    client = MedSAMClient("http://127.0.0.1:8123", token=None)
    session = client.create_session(array, ijk_to_ras, modality="ct")
    labels = client.segment(session, (i0, j0, k0, i1, j1, k1), axis="axial", progress=print)
    refined = client.segment_result(session, None, mask_prompt=MaskPrompt(labels), multimask=True)
    masks = client.segment_everything(session, "axial", ijk=(0, 0, k), progress=print)  # one slice
    client.close_session(session)

The client keeps what it uploaded per session: when the server no longer knows a session
(restarted, session expired or dropped for room) it uploads the volume again, once, and retries.

Wire format (``MedSAMLib/wire.py``, the code the server runs too, as ``medsam_monai/wire.py``):
an array is ``{"dtype", "shape", "compression", "data"}`` with ``data`` the base64 of the
zlib-compressed raw little-endian bytes, first index fastest, and ``shape`` the sizes along
i, j, k. A C-order ``[k, j, i]`` array's bytes are exactly that.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import math
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import everything, wire
from .everything import EverythingResult

__all__ = [
    "AuthError",
    "Cancelled",
    "ConnectionFailed",
    "EverythingResult",
    "InvalidRequest",
    "MaskPrompt",
    "MedSAMClient",
    "MedSAMClientError",
    "NotFound",
    "PayloadTooLarge",
    "ServerBusy",
    "SegmentAnswer",
    "ServerError",
    "Timeout",
    "decode_everything",
    "decode_labels",
    "decode_segment_result",
    "encode_mask_prompt",
    "encode_volume",
]

AXES = ("axial", "coronal", "sagittal")

ProgressCallback = Callable[[int, int], None]
CancelCheck = Union[Callable[[], bool], threading.Event]
BoxIJK = Sequence[int]
PointIJK = Tuple[Sequence[float], bool]


# ----- errors ---------------------------------------------------------------------------------


class MedSAMClientError(Exception):
    """Anything that went wrong talking to the server."""


class ConnectionFailed(MedSAMClientError, ConnectionError):
    """The server could not be reached, or dropped the connection."""


class Timeout(MedSAMClientError, TimeoutError):
    """The server did not answer within the client's timeout."""


class Cancelled(MedSAMClientError):
    """The caller cancelled a segmentation (the server stopped the job)."""


class ServerError(MedSAMClientError):
    """The server answered with an error; ``message`` is its explanation, ``status`` the HTTP
    status and ``code`` its machine-readable kind (``invalid_request``, ``session_not_found``...)."""

    def __init__(self, status: int, message: str, code: str = "") -> None:
        super().__init__(f"server error {status}: {message}")
        self.status = status
        self.message = message
        self.code = code


class AuthError(ServerError):
    """Missing or wrong token (401), or a request for a host the server does not serve (403)."""


class NotFound(ServerError):
    """Unknown session or job."""


class InvalidRequest(ServerError):
    """The server refused the request's content (400/422): a box outside the volume, say."""


class PayloadTooLarge(ServerError):
    """The volume is larger than the server accepts (413)."""


class ServerBusy(ServerError):
    """The server has no room right now (429/503): try again later."""


def _error_for(status: int, message: str, code: str) -> ServerError:
    kind = {
        401: AuthError,
        403: AuthError,
        404: NotFound,
        400: InvalidRequest,
        422: InvalidRequest,
        413: PayloadTooLarge,
        429: ServerBusy,
        503: ServerBusy,
    }.get(status, ServerError)
    return kind(status, message, code)


# ----- the wire codec -------------------------------------------------------------------------


def encode_volume(volume_kji: np.ndarray, level: int = 1) -> Dict[str, object]:
    """A Slicer array ``[k, j, i]`` as the wire's array object (shape listed as I, J, K), in the
    dtype that keeps its values (:func:`wire.sendable_dtype`: bool -> uint8, float16 -> float32...)."""
    array = np.asarray(volume_kji)
    if array.ndim != 3:
        raise ValueError(f"expected a 3D volume array [k, j, i], got shape {array.shape}")
    array = array.astype(wire.sendable_dtype(array.dtype), copy=False)
    # [i, j, k] with i fastest is the [k, j, i] array's own C-order memory: a view, no reordering.
    return wire.encode_array(array.transpose(2, 1, 0), level=level)


def decode_array_kji(encoded: Dict[str, object], max_bytes: Optional[int] = None) -> np.ndarray:
    """A wire array (shape I, J, K; i fastest) as a read-only ``[k, j, i]`` numpy array (C order).

    ``max_bytes`` refuses larger declared sizes before anything is allocated (None: no limit)."""
    try:
        array_ijk = wire.decode_array(encoded, sys.maxsize if max_bytes is None else max_bytes)
    except wire.CodecError as error:
        raise MedSAMClientError(f"the server sent an array that does not decode: {error}") from None
    return array_ijk.T  # [k, j, i]: the first index fastest is C order of the reversed axes


def decode_labels(result: Dict[str, object]) -> np.ndarray:
    """A segmentation result as a uint8 label array ``[k, j, i]`` of the whole volume (zero
    outside the segmented slices)."""
    i_size, j_size, k_size = (int(n) for n in result["volume_shape"])  # type: ignore[union-attr]
    # The block lies inside the volume: never more voxels than it, of at most 8 bytes each.
    block = decode_array_kji(result["labels"], max(1, math.prod((i_size, j_size, k_size))) * 8)  # type: ignore[arg-type]
    i0, j0, k0 = (int(n) for n in result["offset"])  # type: ignore[union-attr]
    labels = np.zeros((k_size, j_size, i_size), dtype=np.uint8)
    nk, nj, ni = block.shape
    labels[k0 : k0 + nk, j0 : j0 + nj, i0 : i0 + ni] = block
    return labels


@dataclass
class SegmentAnswer:
    """A segmentation's labels and what the network said of them.

    labels - uint8 ``[k, j, i]`` of the whole volume (as :func:`decode_labels`).
    scores - per slice the network segmented, in increasing index along the slice axis:
        ``{"index": slice index, "iou": [predicted IoU of each candidate], "kept": index of the one written}``
        (three candidates with ``multimask``, one without); empty from a server that does not report them.
    key_index - the slice that got the user's box (None when the server does not say).
    """

    labels: np.ndarray
    scores: List[Dict[str, object]] = field(default_factory=list)
    key_index: Optional[int] = None

    def kept_iou(self, index: Optional[int] = None) -> Optional[float]:
        """The predicted IoU of the mask written on slice ``index`` (default the key slice); None if unknown."""
        wanted = self.key_index if index is None else index
        for score in self.scores:
            if score.get("index") == wanted:
                return float(score["iou"][int(score.get("kept", 0))])  # type: ignore[index]
        return None


def decode_segment_result(result: Dict[str, object]) -> SegmentAnswer:
    """A segmentation result (``segment``'s answer, a job's ``result``) as labels and scores."""
    key = result.get("key_index")
    return SegmentAnswer(
        labels=decode_labels(result),
        scores=[dict(score) for score in result.get("scores") or []],  # type: ignore[union-attr]
        key_index=int(key) if key is not None else None,  # type: ignore[arg-type]
    )


@dataclass
class MaskPrompt:
    """An earlier result to refine, sent with a segmentation as its mask prompt.

    On each segmented slice where the mask has voxels, the server makes it that slice's dense prompt (SAM's
    low-resolution mask input) besides the box and points; without a box, the box is the mask's tight box.

    labels - integer (or bool) ``[k, j, i]`` block of the volume's grid starting at voxel ``offset_ijk`` (the
        whole volume with the default offset); the mask is ``labels == label_value``.
    """

    labels: np.ndarray
    offset_ijk: Sequence[int] = (0, 0, 0)
    label_value: int = 1

    @classmethod
    def cropped(cls, mask_kji: np.ndarray, offset_ijk: Sequence[int] = (0, 0, 0)) -> "MaskPrompt":
        """The prompt of a 0/1 (or bool) ``[k, j, i]`` mask, cut to the mask's tight block so that only that
        travels; ValueError when the mask is empty."""
        mask = np.asarray(mask_kji) > 0
        if mask.ndim != 3:
            raise ValueError(f"a mask prompt is a 3D [k, j, i] array, got shape {mask.shape}")
        if not mask.any():
            raise ValueError("the mask prompt has no voxels")
        low = [int(np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))[0]) for axis in range(3)]
        high = [int(np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))[-1]) for axis in range(3)]
        block = mask[low[0] : high[0] + 1, low[1] : high[1] + 1, low[2] : high[2] + 1].astype(np.uint8)
        i0, j0, k0 = (int(v) for v in offset_ijk)
        return cls(block, (i0 + low[2], j0 + low[1], k0 + low[0]), 1)


def encode_mask_prompt(prompt: MaskPrompt) -> Dict[str, object]:
    """The request's ``mask_prompt`` object: ``{"labels": wire array (shape I, J, K), "offset", "label_value"}``."""
    labels = np.asarray(prompt.labels)
    if labels.dtype.kind not in "biu":
        raise ValueError(f"a mask prompt holds integer labels, got dtype {labels.dtype}")
    offset = [int(v) for v in prompt.offset_ijk]
    if len(offset) != 3 or min(offset) < 0:
        raise ValueError(f"a mask prompt's offset is three voxel indices >= 0, got {list(prompt.offset_ijk)}")
    label_value = int(prompt.label_value)
    if label_value < 1:
        raise ValueError(f"a mask prompt's label_value is >= 1, got {label_value}")
    return {"labels": encode_volume(labels), "offset": offset, "label_value": label_value}


def decode_everything(result: Dict[str, object]) -> EverythingResult:
    """A "segment everything" job's ``result`` as an :class:`EverythingResult` (labels as a uint16 block)."""
    try:
        volume_shape = tuple(int(n) for n in result["volume_shape"])  # type: ignore[union-attr]
        offset = tuple(int(n) for n in result["offset"])  # type: ignore[union-attr]
        slice_axis = int(result["slice_axis"])  # type: ignore[arg-type]
        first, last = (int(n) for n in result["slice_range"])  # type: ignore[union-attr]
        records = [dict(record) for record in result.get("records") or []]  # type: ignore[union-attr]
        encoded = result["labels"]
    except (KeyError, TypeError, ValueError) as error:
        raise MedSAMClientError(f"the server's segment-everything result is incomplete: {error!r}") from None
    if len(volume_shape) != 3 or len(offset) != 3 or slice_axis not in (0, 1, 2) or first != last:
        raise MedSAMClientError("the server's segment-everything result is not one slice of the volume")
    # One slice of the volume, at most 8 bytes a voxel: nothing larger is allocated.
    block = decode_array_kji(encoded, max(1, math.prod(volume_shape)) * 8)  # type: ignore[arg-type]
    if block.dtype.kind not in "iu":
        raise MedSAMClientError(f"the server sent segment-everything labels of dtype {block.dtype}")
    return EverythingResult(
        labels=block.astype(np.uint16),
        offset_ijk=offset,  # type: ignore[arg-type]
        volume_shape_ijk=volume_shape,  # type: ignore[arg-type]
        slice_axis=slice_axis,
        slice_index=first,
        axis=str(result.get("axis", "")),
        records=records,
        generated=int(result.get("generated", len(records)) or 0),  # type: ignore[arg-type]
        seconds=float(result.get("seconds", 0.0) or 0.0),  # type: ignore[arg-type]
    )


# ----- the client -----------------------------------------------------------------------------


class _Upload:
    """What a session was created from, to create it again when the server lost it."""

    def __init__(self, body: bytes, server_id: str) -> None:
        self.body = body
        self.server_id = server_id
        self.lock = threading.Lock()


class MedSAMClient:
    """Talks to one ``medsam serve``. Thread-safe; one instance can serve several sessions."""

    def __init__(
        self, url: str = "http://127.0.0.1:8123", token: Optional[str] = None, timeout: float = 60.0, poll_interval: float = 0.1
    ) -> None:
        """
        Args:
            url: the server's address, e.g. ``http://127.0.0.1:8123``.
            token: the server's token, if it has one (sent as ``Authorization: Bearer``).
            timeout: seconds to wait for each answer (uploads and one-slice segmentations
                included; 3D segmentations run as jobs and are polled, so they may take longer).
            poll_interval: longest pause between two polls of a running job.
        """
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"server url {url!r} must look like http://HOST:PORT")
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = float(timeout)
        self.poll_interval = float(poll_interval)
        # A proxy configured for the web must not see requests to this computer.
        proxies = {} if _is_local(parts.hostname) else None
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler(proxies))
        self._uploads: Dict[str, _Upload] = {}
        self._lock = threading.Lock()
        self._limits: Optional[Dict[str, object]] = None

    # ----- server ---------------------------------------------------------------------------

    def health(self) -> Dict[str, object]:
        """The server's status: ``{"status": "ok", "variant", "device", "precision", "version", ...}``."""
        return self._request("GET", "/health")

    # ----- sessions -------------------------------------------------------------------------

    def create_session(
        self,
        volume: np.ndarray,
        ijk_to_ras: Sequence[Sequence[float]],
        modality: str = "ct",
        window: Union[str, Sequence[float], None] = None,
        focus_ijk: Optional[Sequence[int]] = None,
        focus_axis: str = "axial",
        prefetch: bool = True,
    ) -> str:
        """Upload a volume once; returns the session id that the other calls take.

        Args:
            volume: the voxels as ``slicer.util.arrayFromVolume`` returns them, indexed [k, j, i].
            ijk_to_ras: the volume's 4x4 IJK-to-RAS matrix.
            modality: ``"ct"`` (windowed) or ``"mr"`` (percentile normalisation).
            window: CT window: ``"abdomen"`` (default), ``"lung"``, ``"brain"``, ``"mediastinum"``,
                ``"bone"``, ``"LEVEL,WIDTH"`` or ``(level, width)``.
            focus_ijk: the voxel whose slice the server encodes first (e.g. the slice in view);
                default the centre.
            focus_axis: the slicing axis of that background encoding.
            prefetch: encode slices in the background at all.
        """
        matrix = np.asarray(ijk_to_ras, dtype=float)
        if matrix.shape != (4, 4):
            raise ValueError(f"ijk_to_ras must be a 4x4 matrix, got shape {matrix.shape}")
        body: Dict[str, object] = {
            "volume": encode_volume(volume),
            "ijk_to_ras": matrix.tolist(),
            "modality": modality,
            "window": list(window) if isinstance(window, (tuple, list)) else window,
            "prefetch": bool(prefetch),
            "focus_axis": focus_axis,
        }
        if focus_ijk is not None:
            body["focus_ijk"] = [int(v) for v in focus_ijk]
        payload = json.dumps(body).encode()
        self._check_upload_size(len(payload))
        answer = self._request("POST", "/sessions", raw_body=payload)
        session_id = str(answer["session_id"])
        with self._lock:
            self._uploads[session_id] = _Upload(payload, session_id)
        return session_id

    def session_info(self, session_id: str) -> Dict[str, object]:
        """Shape, modality, seconds to expiry and encoded slices per axis of a session."""
        return self._in_session(session_id, lambda sid: self._request("GET", f"/sessions/{sid}"))

    def prefetch(self, session_id: str, ijk: Sequence[int], axis: str = "axial") -> Dict[str, object]:
        """Have the server encode the slices nearest to voxel ``ijk``'s slice first."""
        body = {"ijk": [int(v) for v in ijk], "axis": axis}
        return self._in_session(session_id, lambda sid: self._request("POST", f"/sessions/{sid}/prefetch", body))

    def close_session(self, session_id: str) -> None:
        """Close a session on the server and forget its upload (a session already gone is fine)."""
        with self._lock:
            upload = self._uploads.pop(session_id, None)
        server_id = upload.server_id if upload is not None else session_id
        try:
            self._request("DELETE", f"/sessions/{_quote(server_id)}")
        except NotFound:
            pass

    # ----- segmentation ---------------------------------------------------------------------

    def segment(
        self,
        session_id: str,
        box_ijk: BoxIJK,
        axis: str = "axial",
        propagate: bool = True,
        points: Optional[Sequence[PointIJK]] = None,
        progress: Optional[ProgressCallback] = None,
        cancel: Optional[CancelCheck] = None,
        label: int = 1,
        multimask: bool = False,
        mask_prompt: Optional[MaskPrompt] = None,
    ) -> np.ndarray:
        """Segment a box; returns uint8 labels ``[k, j, i]`` of the whole volume, zero outside the
        segmented slices (:meth:`segment_result` also returns the network's IoU scores).

        Args:
            box_ijk: ``(i0, j0, k0, i1, j1, k1)``, voxel indices, both corners inclusive; may be None
                with a ``mask_prompt`` (the box is then the mask's tight box).
            axis: the slicing axis (``axial``, ``coronal`` or ``sagittal``).
            propagate: segment all the box's slices along ``axis`` (MedSAM's 3D propagation from
                the middle one, exactly as ``medsam segment``); otherwise its middle slice only.
            points: ``[((i, j, k), positive), ...]`` prompts, each on one of the segmented slices.
            progress: called with (slices done, slices in all) while a 3D segmentation runs.
            cancel: an Event or a callable; once set/true the server stops and
                :class:`Cancelled` is raised.
            label: the value of the segmented voxels (1..255).
            multimask: have SAM propose three masks per slice and keep the one of highest predicted IoU.
            mask_prompt: an earlier result to refine (:class:`MaskPrompt`).
        """
        return self.segment_result(
            session_id, box_ijk, axis, propagate, points, progress, cancel, label, multimask, mask_prompt
        ).labels

    def segment_result(
        self,
        session_id: str,
        box_ijk: Optional[BoxIJK],
        axis: str = "axial",
        propagate: bool = True,
        points: Optional[Sequence[PointIJK]] = None,
        progress: Optional[ProgressCallback] = None,
        cancel: Optional[CancelCheck] = None,
        label: int = 1,
        multimask: bool = False,
        mask_prompt: Optional[MaskPrompt] = None,
    ) -> SegmentAnswer:
        """:meth:`segment`, returning the labels with the predicted IoU of each slice's candidates."""
        body = _segment_body(box_ijk, axis, propagate, points, label, multimask, mask_prompt)
        if not propagate and progress is None and cancel is None:
            answer = self._in_session(session_id, lambda sid: self._request("POST", f"/sessions/{sid}/segment", body))
            return decode_segment_result(answer)
        result = self._in_session(session_id, lambda sid: self._run_job(sid, "jobs", body, progress, cancel))
        return decode_segment_result(result)

    def start_job(
        self,
        session_id: str,
        box_ijk: BoxIJK,
        axis: str = "axial",
        propagate: bool = True,
        points: Optional[Sequence[PointIJK]] = None,
        label: int = 1,
        multimask: bool = False,
        mask_prompt: Optional[MaskPrompt] = None,
    ) -> str:
        """Start a segmentation in the background; returns its job id (see :meth:`job_status`)."""
        body = _segment_body(box_ijk, axis, propagate, points, label, multimask, mask_prompt)
        answer = self._in_session(session_id, lambda sid: self._request("POST", f"/sessions/{sid}/jobs", body))
        return str(answer["job_id"])

    def job_status(self, session_id: str, job_id: str) -> Dict[str, object]:
        """``{"state": queued|running|done|failed|cancelled, "done", "total", "detail", "result"}``;
        turn a done job's ``result`` into labels with :func:`decode_labels`."""
        return self._request("GET", f"/sessions/{_quote(self._server_id(session_id))}/jobs/{_quote(job_id)}")

    def cancel_job(self, session_id: str, job_id: str) -> Dict[str, object]:
        """Ask the server to stop a job (before its next slice); returns its status."""
        return self._request("DELETE", f"/sessions/{_quote(self._server_id(session_id))}/jobs/{_quote(job_id)}")

    # ----- segment everything -----------------------------------------------------------------

    def segment_everything(
        self,
        session_id: str,
        axis: str = "axial",
        ijk: Optional[Sequence[int]] = None,
        ras: Optional[Sequence[float]] = None,
        slice_index: Optional[int] = None,
        parameters: Optional[Dict[str, object]] = None,
        progress: Optional[ProgressCallback] = None,
        cancel: Optional[CancelCheck] = None,
    ) -> EverythingResult:
        """SAM's automatic masks on one slice: a label block (labels 1..N) and one record per label.

        Args:
            axis: the slicing axis (``axial``, ``coronal`` or ``sagittal``).
            ijk, ras, slice_index: the slice, exactly one of: through voxel ``ijk`` (only its index along the
                slice axis matters), through the voxel nearest an RAS point (mm), or the server's display index.
            parameters: SAM's automatic-mask parameters by SAM's names, and the medical filters
                ``min_area_mm2``, ``max_area_fraction`` (:func:`everything.check_parameters`; SAM's defaults).
            progress: called with (point batches done, point batches in all).
            cancel: an Event or a callable; once set/true the server stops and :class:`Cancelled` is raised.
        """
        body = _everything_body(axis, ijk, ras, slice_index, parameters)
        result = self._in_session(session_id, lambda sid: self._run_job(sid, "everything", body, progress, cancel))
        return decode_everything(result)

    def start_everything(
        self,
        session_id: str,
        axis: str = "axial",
        ijk: Optional[Sequence[int]] = None,
        ras: Optional[Sequence[float]] = None,
        slice_index: Optional[int] = None,
        parameters: Optional[Dict[str, object]] = None,
    ) -> str:
        """Start :meth:`segment_everything` in the background; returns its job id (see :meth:`everything_status`)."""
        body = _everything_body(axis, ijk, ras, slice_index, parameters)
        answer = self._in_session(session_id, lambda sid: self._request("POST", f"/sessions/{sid}/everything", body))
        return str(answer["job_id"])

    def everything_status(self, session_id: str, job_id: str) -> Dict[str, object]:
        """``{"state", "done", "total", "detail", "result"}`` of a segment-everything job; turn a done job's
        ``result`` into labels and records with :func:`decode_everything`."""
        return self._request("GET", f"/sessions/{_quote(self._server_id(session_id))}/everything/{_quote(job_id)}")

    def cancel_everything(self, session_id: str, job_id: str) -> Dict[str, object]:
        """Ask the server to stop a segment-everything job (before its next point batch); returns its status."""
        return self._request("DELETE", f"/sessions/{_quote(self._server_id(session_id))}/everything/{_quote(job_id)}")

    # ----- internals ------------------------------------------------------------------------

    def _run_job(
        self,
        server_id: str,
        kind: str,
        body: Dict[str, object],
        progress: Optional[ProgressCallback],
        cancel: Optional[CancelCheck],
    ) -> Dict[str, object]:
        """Start a job of ``kind`` (``jobs``: segmentation, ``everything``), poll it, return its ``result``."""
        base = f"/sessions/{server_id}/{kind}"
        what = "segmentation" if kind == "jobs" else "segment everything"
        status = self._request("POST", base, body)
        job = f"{base}/{_quote(str(status['job_id']))}"
        shown = None
        pause = min(0.02, self.poll_interval)
        while True:
            if _cancel_requested(cancel):
                self._request("DELETE", job)
                raise Cancelled(f"{what} cancelled")
            if progress is not None and (status["done"], status["total"]) != shown:
                shown = (status["done"], status["total"])
                progress(int(status["done"]), int(status["total"]))
            if status["state"] == "done":
                return status["result"]  # type: ignore[return-value]
            if status["state"] == "cancelled":
                raise Cancelled(f"{what} cancelled: {status.get('detail')}")
            if status["state"] == "failed":
                raise ServerError(500, str(status.get("detail")), "job_failed")
            time.sleep(pause)
            pause = min(pause * 1.5, self.poll_interval)  # quick answers for 2D, fewer polls for 3D
            status = self._request("GET", job)

    def _in_session(self, session_id: str, call: Callable[[str], object]):
        """``call(server id)``; when the server lost the session, upload it again and retry once."""
        upload = self._upload(session_id)
        server_id = upload.server_id if upload is not None else session_id
        try:
            return call(_quote(server_id))
        except NotFound as err:
            if err.code != "session_not_found" or upload is None:
                raise
        return call(_quote(self._upload_again(upload, server_id)))

    def _upload_again(self, upload: _Upload, lost_id: str) -> str:
        with upload.lock:  # threads that lost the same session upload it once
            if upload.server_id == lost_id:
                answer = self._request("POST", "/sessions", raw_body=upload.body)
                upload.server_id = str(answer["session_id"])
            return upload.server_id

    def _upload(self, session_id: str) -> Optional[_Upload]:
        with self._lock:
            return self._uploads.get(session_id)

    def _server_id(self, session_id: str) -> str:
        upload = self._upload(session_id)
        return upload.server_id if upload is not None else session_id

    def _check_upload_size(self, size: int) -> None:
        """Refuse locally what the server would refuse (a server that closes the connection on
        a too-large body may never let the client read its 413)."""
        if self._limits is None:
            self._limits = self.health()
        limit = int(self._limits.get("max_upload_bytes", 0) or 0)  # type: ignore[arg-type]
        if limit and size > limit:
            raise PayloadTooLarge(
                413,
                f"the volume's upload is {size / 2**20:.1f} MB but the server accepts at most "
                f"{limit / 2**20:.1f} MB (medsam serve --max-upload-mb)",
                "payload_too_large",
            )

    def _request(
        self, method: str, path: str, body: Optional[Dict[str, object]] = None, raw_body: Optional[bytes] = None
    ) -> Dict[str, object]:
        data = raw_body if raw_body is not None else (json.dumps(body).encode() if body is not None else None)
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                text = response.read()
        except urllib.error.HTTPError as err:
            raise _server_error(err) from None
        except urllib.error.URLError as err:
            if isinstance(err.reason, (socket.timeout, TimeoutError)):
                raise Timeout(f"{self.url} did not answer {method} {path} within {self.timeout:g} s") from None
            raise ConnectionFailed(f"cannot reach the MedSAM server at {self.url}: {err.reason}") from None
        except (socket.timeout, TimeoutError):
            raise Timeout(f"{self.url} did not answer {method} {path} within {self.timeout:g} s") from None
        except (ConnectionError, http.client.HTTPException, OSError) as err:
            raise ConnectionFailed(f"the connection to {self.url} failed during {method} {path}: {err}") from None
        if not text:
            return {}
        try:
            return json.loads(text)
        except ValueError:
            raise MedSAMClientError(f"{self.url} answered {method} {path} with something other than JSON") from None


def _server_error(err: urllib.error.HTTPError) -> ServerError:
    """The server's ``{"detail", "code"}`` answer as the matching exception."""
    try:
        payload = json.loads(err.read() or b"{}")
        message, code = str(payload.get("detail", err.reason)), str(payload.get("code", ""))
    except (ValueError, AttributeError, OSError):
        message, code = str(err.reason), ""
    return _error_for(err.code, message, code)


def _segment_body(
    box_ijk: Optional[BoxIJK],
    axis: str,
    propagate: bool,
    points: Optional[Sequence[PointIJK]],
    label: int,
    multimask: bool = False,
    mask_prompt: Optional[MaskPrompt] = None,
) -> Dict[str, object]:
    if axis not in AXES:
        raise ValueError(f"axis {axis!r} is not one of {', '.join(AXES)}")
    wire_points: List[Dict[str, object]] = []
    for position, positive in points or []:
        wire_points.append({"ijk": [int(round(float(v))) for v in position], "positive": bool(positive)})
    body: Dict[str, object] = {"axis": axis, "propagate": bool(propagate), "points": wire_points, "label": int(label)}
    if box_ijk is not None:
        box = [int(v) for v in box_ijk]
        if len(box) != 6:
            raise ValueError(f"box_ijk has 6 numbers (i0, j0, k0, i1, j1, k1), got {len(box)}")
        body["box"] = box
    elif mask_prompt is None:
        raise ValueError("give a box (i0, j0, k0, i1, j1, k1), a mask prompt, or both")
    # Sent only when used, so that a server without them (older medsam) still takes plain requests.
    if multimask:
        body["multimask"] = True
    if mask_prompt is not None:
        body["mask_prompt"] = encode_mask_prompt(mask_prompt)
    return body


def _everything_body(
    axis: str,
    ijk: Optional[Sequence[int]],
    ras: Optional[Sequence[float]],
    slice_index: Optional[int],
    parameters: Optional[Dict[str, object]],
) -> Dict[str, object]:
    if axis not in AXES:
        raise ValueError(f"axis {axis!r} is not one of {', '.join(AXES)}")
    given = [name for name, value in (("ijk", ijk), ("ras", ras), ("slice", slice_index)) if value is not None]
    if len(given) != 1:
        raise ValueError("give the slice as exactly one of ijk (a voxel on it), ras (a point, mm) or slice_index")
    body: Dict[str, object] = {"axis": axis}
    if ijk is not None:
        body["ijk"] = [int(v) for v in ijk]
        if len(body["ijk"]) != 3 or min(body["ijk"]) < 0:  # type: ignore[arg-type]
            raise ValueError(f"ijk is three voxel indices >= 0, got {list(ijk)}")
    elif ras is not None:
        body["ras"] = [float(v) for v in ras]
        if len(body["ras"]) != 3 or not all(math.isfinite(v) for v in body["ras"]):  # type: ignore[arg-type]
            raise ValueError(f"ras is three finite coordinates (mm), got {list(ras)}")
    else:
        body["slice"] = int(slice_index)  # type: ignore[arg-type]
    body.update(everything.check_parameters(parameters))
    return body


def _cancel_requested(cancel: Optional[CancelCheck]) -> bool:
    if cancel is None:
        return False
    return cancel.is_set() if isinstance(cancel, threading.Event) else bool(cancel())


def _quote(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def _is_local(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
