"""What the server shares between requests: the model gate, the embedding cache, the prefetcher.

The model runs one request at a time (a CPU has no cores to spare for two, a GPU no memory):
requests pass the :class:`ModelGate`, where background encoding always yields to a waiting
request. Slice embeddings are cached per ``(session id, axis)`` in one byte-bounded cache.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterator
from contextlib import contextmanager

from ..embedding_cache import EmbeddingCache
from ..orientation import ijk_to_display_index
from ..predictor import Cancelled, MedSAMPredictor
from .sessions import Session

log = logging.getLogger("medsam_monai.server")


class ModelGate:
    """Who may run the network now. Three ways in:

    - ``model_call()``: one network call of a request (an encoder batch or a decoder call);
      such calls run one at a time, so concurrent requests take turns slice by slice;
    - ``request()``: held around a whole request: background work does not start while any
      request is under way, so prefetching never slows a user's job down;
    - ``background()``: one prefetch batch, only when no request is under way or waiting.

    A user's request thus waits at most for the one network call already running.
    ``refuse_waiting()`` (the server is stopping) ends every wait with :class:`Cancelled`.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._busy = False  # a network call is running
        self._waiting = 0  # request calls waiting for the network
        self._requests = 0  # requests under way
        self._refusing = False

    def refuse_waiting(self) -> None:
        """From now on, a call that would wait for the network raises :class:`Cancelled` instead."""
        with self._cond:
            self._refusing = True
            self._cond.notify_all()

    @contextmanager
    def request(self) -> Iterator[None]:
        with self._cond:
            self._requests += 1
        try:
            yield
        finally:
            with self._cond:
                self._requests -= 1
                self._cond.notify_all()

    @contextmanager
    def model_call(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            try:
                while self._busy:
                    if self._refusing:
                        raise Cancelled("the server is shutting down")
                    self._cond.wait()
            finally:
                self._waiting -= 1
            self._busy = True
        try:
            yield
        finally:
            self._release()

    @contextmanager
    def background(self, give_up: threading.Event | None = None) -> Iterator[bool]:
        """Yields True once held, or False when ``give_up`` was set while waiting."""
        with self._cond:
            while self._busy or self._waiting or self._requests or self._refusing:
                if self._refusing or (give_up is not None and give_up.is_set()):
                    break
                self._cond.wait(timeout=0.5)  # closing a session does not notify: look again
            held = not (self._busy or self._waiting or self._requests or self._refusing)
            if held:
                self._busy = True
        try:
            yield held
        finally:
            if held:
                self._release()

    def _release(self) -> None:
        with self._cond:
            self._busy = False
            self._cond.notify_all()


class GatedPredictor(MedSAMPredictor):
    """A predictor whose network calls pass ``gate.model_call()``: built on the same network,
    device, precision, preprocessing and embedding cache as ``predictor`` (shared, not copied), so that the
    predictor's own 3D propagation takes turns with other requests between slices. ``predictor``
    itself stays unguarded: prefetching holds the gate around whole batches with it."""

    def __init__(self, predictor: MedSAMPredictor, gate: ModelGate) -> None:  # noqa: D107
        super().__init__(
            predictor.model,
            predictor.device,
            predictor.precision,
            encode_batch_size=predictor.encode_batch_size,
            cache=predictor.cache,
            call_guard=gate.model_call,
            # the same image pipeline, so that requests find (and make) the embeddings prefetching makes
            preprocessing=predictor.preprocessing,
            uint8_after_resize=predictor.uint8_after_resize,
        )
        self.gate = gate


class SessionEmbeddingCache(EmbeddingCache):
    """The embedding cache with what a multi-session server needs: drop one session's
    embeddings when it closes, count them, and tell the free room (prefetching never evicts)."""

    def discard_session(self, session_id: str) -> None:
        self.drop(lambda key: _session_of(key) == session_id)

    def count(self, session_id: str, axis: str) -> int:
        return self.count_matching(lambda key: isinstance(key, tuple) and key[0] == (session_id, axis))


def _session_of(key: Hashable) -> object:
    """Cache keys are ``((session id, axis), slice)``."""
    return key[0][0] if isinstance(key, tuple) and isinstance(key[0], tuple) else None


def embedding_key(session: Session, axis: str) -> tuple[str, str]:
    """The ``volume_key`` of a session's display volume along ``axis`` in the predictor's cache."""
    return (session.id, axis)


def nearest_first(count: int, focus: int, limit: int) -> list[int]:
    """Slice indices 0..count-1 by distance to ``focus`` (the next one up before the next one
    down), at most ``limit`` of them."""
    order = sorted(range(count), key=lambda z: (abs(z - focus), z < focus))
    return order[:limit]


class Prefetcher:
    """Encodes slices of sessions in the background, nearest to their focus slice first.

    One thread; the most recently focused session goes first. It encodes only while the cache
    has free room (never evicting), holds the gate one batch at a time, and stops on a session
    as soon as it closes.
    """

    def __init__(self, predictor: MedSAMPredictor, gate: ModelGate, max_slices: int) -> None:
        self.predictor = predictor
        self.gate = gate
        self.max_slices = max_slices
        self._plans: OrderedDict[str, tuple[Session, str, list[int]]] = OrderedDict()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._embedding_bytes = 0  # learnt from the first embedding
        self._working = False
        self._thread = threading.Thread(target=self._run, name="medsam-prefetch", daemon=True)
        self._thread.start()

    def focus(self, session: Session, axis: str, ijk: tuple[int, int, int]) -> None:
        """(Re)start encoding ``session`` along ``axis`` from the slice through voxel ``ijk``."""
        if self.max_slices == 0:
            return
        layout = session.layout(axis)
        centre = ijk_to_display_index(ijk, session.shape, layout)[0]
        count = session.shape[layout.permutation[0]]
        with self._cond:
            self._plans[session.id] = (session, axis, nearest_first(count, centre, self.max_slices))
            self._plans.move_to_end(session.id)
            self._cond.notify_all()

    def forget(self, session_id: str) -> None:
        with self._cond:
            self._plans.pop(session_id, None)

    def pending(self, session_id: str) -> int:
        with self._cond:
            plan = self._plans.get(session_id)
            return 0 if plan is None else len(plan[2])

    def idle(self) -> bool:
        with self._cond:
            return not self._plans and not self._working

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._plans.clear()
            self._cond.notify_all()
        self._thread.join(timeout=30)

    def _next_batch(self) -> tuple[Session, str, list[int]] | None:
        """Take the next slices to encode, or None when stopping."""
        with self._cond:
            while not self._plans and not self._stop.is_set():
                self._working = False
                self._cond.wait()
            if self._stop.is_set():
                return None
            self._working = True
            session_id, (session, axis, order) = next(reversed(self._plans.items()))
            cache = self.predictor.cache
            key = embedding_key(session, axis)
            batch: list[int] = []
            while order and len(batch) < self.predictor.encode_batch_size:
                z = order.pop(0)
                if ((key, z)) not in cache:
                    batch.append(z)
            if not order:
                del self._plans[session_id]
            return session, axis, batch

    def _run(self) -> None:
        while (item := self._next_batch()) is not None:
            session, axis, batch = item
            if not batch:
                continue
            if not self._has_room(len(batch)):
                self.forget(session.id)  # the cache is full: prefetching more would evict
                continue
            try:
                self._encode(session, axis, batch)
            except Cancelled:  # the session closed between the check and the encoding
                self.forget(session.id)
            except Exception:  # noqa: BLE001 - background work must never kill the thread
                log.exception("background encoding of session %s failed; it stops", session.id)
                self.forget(session.id)

    def _has_room(self, slices: int) -> bool:
        return self.predictor.cache.free_bytes >= slices * self._embedding_bytes

    def _encode(self, session: Session, axis: str, batch: list[int]) -> None:
        with self.gate.background(give_up=session.closed) as held:
            if not held or session.closed.is_set():
                return
            _, display = session.display(axis)
            embeddings = self.predictor.slice_embeddings(display, batch, volume_key=embedding_key(session, axis))
        if session.closed.is_set() and isinstance(self.predictor.cache, SessionEmbeddingCache):
            self.predictor.cache.discard_session(session.id)  # it closed while this batch ran
        self._embedding_bytes = embeddings[0].numel() * embeddings[0].element_size()
