"""Client of the MedSAM inference server (``medsam serve``), for 3D Slicer's Python.

Standard library and numpy only: it must not pull torch (or anything of ``medsam_monai``) into
Slicer. Volumes go in as 3D Slicer holds them (``slicer.util.arrayFromVolume``: indexed
``[k, j, i]``, with the volume's IJK-to-RAS matrix) and labels come back the same way, so the
caller never swaps axes; boxes and points are in IJK voxel indices.

    client = MedSAMClient("http://127.0.0.1:8123", token=None)
    session = client.create_session(array, ijk_to_ras, modality="ct")
    labels = client.segment(session, (i0, j0, k0, i1, j1, k1), axis="axial", progress=print)
    client.close_session(session)

The client keeps what it uploaded per session: when the server no longer knows a session
(restarted, session expired or dropped for room) it uploads the volume again, once, and retries.

Wire format (the server's ``medsam_monai/server/codec.py`` has the same few lines; they must
agree): an array is ``{"dtype", "shape", "compression", "data"}`` with ``data`` the base64 of the
zlib-compressed raw little-endian bytes, first index fastest, and ``shape`` the sizes along
i, j, k. A C-order ``[k, j, i]`` array's bytes are exactly that.
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import json
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = [
    "AuthError",
    "Cancelled",
    "ConnectionFailed",
    "InvalidRequest",
    "MedSAMClient",
    "MedSAMClientError",
    "NotFound",
    "PayloadTooLarge",
    "ServerBusy",
    "ServerError",
    "Timeout",
    "decode_labels",
    "encode_volume",
]

WIRE_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")
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
    """A Slicer array ``[k, j, i]`` as the wire's array object (shape listed as I, J, K)."""
    array = np.asarray(volume_kji)
    if array.ndim != 3:
        raise ValueError(f"expected a 3D volume array [k, j, i], got shape {array.shape}")
    array = array.astype(_wire_dtype(array.dtype), copy=False)
    raw = np.ascontiguousarray(array).tobytes(order="C")  # [k, j, i] in C order: i fastest
    return {
        "dtype": array.dtype.name,
        "shape": [int(n) for n in array.shape[::-1]],
        "compression": "zlib",
        "data": base64.b64encode(zlib.compress(raw, level)).decode("ascii"),
    }


def _wire_dtype(dtype: np.dtype) -> np.dtype:
    """The little-endian dtype an array is sent as; values are kept (bool -> uint8, float16 ->
    float32, 64-bit integers -> float64, which holds CT and MR values exactly)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        dtype = np.dtype(np.uint8)
    elif dtype.kind == "f" and dtype.itemsize < 4:
        dtype = np.dtype(np.float32)
    elif dtype.kind in "iu" and dtype.itemsize == 8:
        dtype = np.dtype(np.float64)
    wire = dtype.newbyteorder("<")
    if wire.name not in WIRE_DTYPES:
        raise ValueError(f"cannot send a volume of dtype {dtype}; use one of {', '.join(WIRE_DTYPES)}")
    return wire


def decode_array_kji(encoded: Dict[str, object]) -> np.ndarray:
    """A wire array (shape I, J, K; i fastest) as a ``[k, j, i]`` numpy array."""
    dtype = str(encoded["dtype"])
    if dtype not in WIRE_DTYPES:
        raise MedSAMClientError(f"the server sent an array of unknown dtype {dtype!r}")
    shape = [int(n) for n in encoded["shape"]]  # type: ignore[union-attr]
    raw = base64.b64decode(str(encoded["data"]))
    if encoded.get("compression", "zlib") == "zlib":
        raw = zlib.decompress(raw)
    expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if len(raw) != expected:
        raise MedSAMClientError(f"the server sent {len(raw)} bytes for a {dtype} array of shape {shape}")
    return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape[::-1])


def decode_labels(result: Dict[str, object]) -> np.ndarray:
    """A segmentation result as a uint8 label array ``[k, j, i]`` of the whole volume (zero
    outside the segmented slices)."""
    i_size, j_size, k_size = (int(n) for n in result["volume_shape"])  # type: ignore[union-attr]
    block = decode_array_kji(result["labels"])  # type: ignore[arg-type]
    i0, j0, k0 = (int(n) for n in result["offset"])  # type: ignore[union-attr]
    labels = np.zeros((k_size, j_size, i_size), dtype=np.uint8)
    nk, nj, ni = block.shape
    labels[k0 : k0 + nk, j0 : j0 + nj, i0 : i0 + ni] = block
    return labels


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
    ) -> np.ndarray:
        """Segment a box; returns uint8 labels ``[k, j, i]`` of the whole volume, zero outside the
        segmented slices.

        Args:
            box_ijk: ``(i0, j0, k0, i1, j1, k1)``, voxel indices, both corners inclusive.
            axis: the slicing axis (``axial``, ``coronal`` or ``sagittal``).
            propagate: segment all the box's slices along ``axis`` (MedSAM's 3D propagation from
                the middle one, exactly as ``medsam segment``); otherwise its middle slice only.
            points: ``[((i, j, k), positive), ...]`` prompts, each on one of the segmented slices.
            progress: called with (slices done, slices in all) while a 3D segmentation runs.
            cancel: an Event or a callable; once set/true the server stops and
                :class:`Cancelled` is raised.
            label: the value of the segmented voxels (1..255).
        """
        body = _segment_body(box_ijk, axis, propagate, points, label)
        if not propagate and progress is None and cancel is None:
            answer = self._in_session(session_id, lambda sid: self._request("POST", f"/sessions/{sid}/segment", body))
            return decode_labels(answer)
        return self._in_session(session_id, lambda sid: self._run_job(sid, body, progress, cancel))

    def start_job(
        self,
        session_id: str,
        box_ijk: BoxIJK,
        axis: str = "axial",
        propagate: bool = True,
        points: Optional[Sequence[PointIJK]] = None,
        label: int = 1,
    ) -> str:
        """Start a segmentation in the background; returns its job id (see :meth:`job_status`)."""
        body = _segment_body(box_ijk, axis, propagate, points, label)
        answer = self._in_session(session_id, lambda sid: self._request("POST", f"/sessions/{sid}/jobs", body))
        return str(answer["job_id"])

    def job_status(self, session_id: str, job_id: str) -> Dict[str, object]:
        """``{"state": queued|running|done|failed|cancelled, "done", "total", "detail", "result"}``;
        turn a done job's ``result`` into labels with :func:`decode_labels`."""
        return self._request("GET", f"/sessions/{_quote(self._server_id(session_id))}/jobs/{_quote(job_id)}")

    def cancel_job(self, session_id: str, job_id: str) -> Dict[str, object]:
        """Ask the server to stop a job (before its next slice); returns its status."""
        return self._request("DELETE", f"/sessions/{_quote(self._server_id(session_id))}/jobs/{_quote(job_id)}")

    # ----- internals ------------------------------------------------------------------------

    def _run_job(
        self, server_id: str, body: Dict[str, object], progress: Optional[ProgressCallback], cancel: Optional[CancelCheck]
    ) -> np.ndarray:
        base = f"/sessions/{server_id}/jobs"
        status = self._request("POST", base, body)
        job = f"{base}/{_quote(str(status['job_id']))}"
        shown = None
        pause = min(0.02, self.poll_interval)
        while True:
            if _cancel_requested(cancel):
                self._request("DELETE", job)
                raise Cancelled("segmentation cancelled")
            if progress is not None and (status["done"], status["total"]) != shown:
                shown = (status["done"], status["total"])
                progress(int(status["done"]), int(status["total"]))
            if status["state"] == "done":
                return decode_labels(status["result"])  # type: ignore[arg-type]
            if status["state"] == "cancelled":
                raise Cancelled(f"segmentation cancelled: {status.get('detail')}")
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
    box_ijk: BoxIJK, axis: str, propagate: bool, points: Optional[Sequence[PointIJK]], label: int
) -> Dict[str, object]:
    box = [int(v) for v in box_ijk]
    if len(box) != 6:
        raise ValueError(f"box_ijk has 6 numbers (i0, j0, k0, i1, j1, k1), got {len(box)}")
    if axis not in AXES:
        raise ValueError(f"axis {axis!r} is not one of {', '.join(AXES)}")
    wire_points: List[Dict[str, object]] = []
    for position, positive in points or []:
        wire_points.append({"ijk": [int(round(float(v))) for v in position], "positive": bool(positive)})
    return {"box": box, "axis": axis, "propagate": bool(propagate), "points": wire_points, "label": int(label)}


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
