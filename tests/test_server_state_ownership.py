"""Issue 16 item 7: no state cloning. The predictor's call guard, the cache's public drop, and a
source check that no server module reaches into another object's private state."""

from __future__ import annotations

import ast
import contextlib
import threading
from pathlib import Path

import numpy as np
import torch

import medsam_monai.server as server_package
from medsam_monai.embedding_cache import EmbeddingCache
from medsam_monai.networks import build_sam_variant
from medsam_monai.predictor import MedSAMPredictor
from medsam_monai.server.runtime import GatedPredictor, ModelGate, SessionEmbeddingCache

SERVER_DIR = Path(server_package.__file__).parent


def tensor(nbytes_per_float32: int) -> torch.Tensor:
    return torch.zeros(nbytes_per_float32 // 4, dtype=torch.float32)


# ----- the cache's public drop ----------------------------------------------------------------


def test_drop_removes_the_matching_entries_and_gives_back_their_bytes():
    cache = EmbeddingCache(max_bytes=10_000)
    sizes = {("a", 0): 400, ("a", 1): 800, ("b", 0): 1200, ("b", 1): 40}
    for key, size in sizes.items():
        cache.put(key, tensor(size))
    assert cache.nbytes == 2440 and cache.free_bytes == 10_000 - 2440

    freed = cache.drop(lambda key: key[0] == "a")

    assert freed == 400 + 800
    assert cache.nbytes == 1240 and cache.free_bytes == 10_000 - 1240 and len(cache) == 2
    assert ("a", 0) not in cache and ("a", 1) not in cache
    assert cache.get(("b", 0)) is not None and cache.get(("b", 1)) is not None
    assert cache.count_matching(lambda key: key[0] == "b") == 2
    assert cache.drop(lambda key: key[0] == "a") == 0 and cache.nbytes == 1240  # nothing left to drop


def test_after_a_drop_the_freed_room_is_used_before_anything_is_evicted():
    cache = EmbeddingCache(max_bytes=1200)
    for n in range(3):
        cache.put(("a", n), tensor(400))
    cache.drop(lambda key: key == ("a", 1))
    cache.put(("b", 0), tensor(400))  # fits in the dropped entry's room: no eviction
    assert ("a", 0) in cache and ("a", 2) in cache and ("b", 0) in cache and cache.nbytes == 1200


def test_discarding_a_session_drops_only_its_embeddings_on_every_axis():
    cache = SessionEmbeddingCache(max_bytes=10_000)
    for session in ("s1", "s2"):
        for axis in ("axial", "coronal"):
            for z in range(2):
                cache.put(((session, axis), z), tensor(100))
    cache.discard_session("s1")
    assert cache.count("s1", "axial") == cache.count("s1", "coronal") == 0
    assert cache.count("s2", "axial") == cache.count("s2", "coronal") == 2 and cache.nbytes == 400


# ----- the predictor's call guard -------------------------------------------------------------


class RecordingGuard:
    """Counts entries and tells whether a network call runs inside the guard."""

    def __init__(self) -> None:
        self.entered = 0
        self.inside = False

    @contextlib.contextmanager
    def __call__(self):
        self.entered += 1
        self.inside = True
        try:
            yield
        finally:
            self.inside = False


def watch_network(model, guard: RecordingGuard) -> list[tuple[str, bool]]:
    """Wrap the tiny network's encoder and decoder to record (which, ran inside the guard)."""
    calls: list[tuple[str, bool]] = []
    for name in ("encode_image", "decode"):
        original = getattr(model, name)

        def watched(*args, _original=original, _name=name, **kwargs):
            calls.append((_name, guard.inside))
            return _original(*args, **kwargs)

        setattr(model, name, watched)
    return calls


def test_each_encoder_batch_and_decoder_call_runs_inside_the_call_guard():
    guard = RecordingGuard()
    model = build_sam_variant("tiny")
    calls = watch_network(model, guard)
    predictor = MedSAMPredictor(model, encode_batch_size=2, call_guard=guard)
    volume = np.random.default_rng(0).integers(0, 256, (5, 32, 32), dtype=np.uint8)

    predictor.slice_embeddings(volume, [0, 1, 2])  # two encoder batches: [0, 1] and [2]
    predictor.predict_slice(volume, 0, box=[4, 4, 20, 20])  # cached embedding: one decoder call

    assert calls == [("encode_image", True), ("encode_image", True), ("decode", True)]
    assert guard.entered == 3 and not guard.inside


def test_a_predictor_without_a_guard_runs_its_network_unguarded():
    predictor = MedSAMPredictor(build_sam_variant("tiny"))
    assert predictor.call_guard is contextlib.nullcontext


def test_gated_predictor_shares_the_network_and_cache_and_leaves_the_original_unguarded():
    predictor = MedSAMPredictor(build_sam_variant("tiny"), encode_batch_size=3)
    predictor.cache = SessionEmbeddingCache(1 << 20)
    gate = ModelGate()
    gated = GatedPredictor(predictor, gate)
    assert gated.model is predictor.model and gated.cache is predictor.cache
    assert gated.device == predictor.device and gated.precision == predictor.precision and gated.encode_batch_size == 3
    assert predictor.call_guard is contextlib.nullcontext  # prefetching holds the gate itself
    with gate.background() as held:  # the original predictor can run while the gate is held
        assert held
        predictor.encode(np.zeros((1, 32, 32), dtype=np.uint8))


def test_a_gated_predictor_waits_for_the_gate_before_its_network_call():
    gate = ModelGate()
    gated = GatedPredictor(MedSAMPredictor(build_sam_variant("tiny")), gate)
    volume = np.random.default_rng(1).integers(0, 256, (3, 32, 32), dtype=np.uint8)
    results: list[object] = []

    def predict():
        results.append(gated.predict_slice(volume, 1, box=[4, 4, 20, 20]))

    with gate.model_call():  # another request holds the network
        worker = threading.Thread(target=predict, daemon=True)
        worker.start()
        worker.join(1.0)
        assert worker.is_alive() and not results, "the network ran while the gate was held"
    worker.join(60)
    assert len(results) == 1 and results[0].masks.shape == (1, 32, 32)


# ----- no reaching into other objects' state --------------------------------------------------


def private_attribute_violations(source: str, filename: str) -> list[str]:
    """Where a module uses ``vars(...).update``, changes a ``_private`` attribute of an object
    other than ``self``/``cls`` (assigns or deletes it, assigns into it, or calls a method on
    it), or uses ``self._private`` state its own class never sets (i.e. a parent class's).
    Reading another object's private value or calling its private method is not state editing
    and is left to review."""
    tree = ast.parse(source, filename)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found: list[str] = []
    for node in ast.walk(tree):
        if _is_vars_update(node):
            found.append(f"{filename}:{node.lineno}: vars(...).update")
        if isinstance(node, ast.Attribute) and _is_private(node.attr) and not _is_self(node.value):
            if _is_changed(node, parents):
                found.append(f"{filename}:{node.lineno}: changes {ast.unparse(node)}")
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        own = _attributes_set_by(cls)
        for node in ast.walk(cls):
            if (
                isinstance(node, ast.Attribute)
                and _is_private(node.attr)
                and _is_self(node.value)
                and node.attr not in own
                and not _is_called(node, parents)  # a parent's private method is behaviour, not state
            ):
                found.append(f"{filename}:{node.lineno}: {cls.name} uses inherited {ast.unparse(node)}")
    return found


def _is_vars_update(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "update"
        and isinstance(node.func.value, ast.Call)
        and isinstance(node.func.value.func, ast.Name)
        and node.func.value.func.id == "vars"
    )


def _is_called(node: ast.Attribute, parents: dict[ast.AST, ast.AST]) -> bool:
    parent = parents.get(node)
    return isinstance(parent, ast.Call) and parent.func is node


def _is_changed(node: ast.Attribute, parents: dict[ast.AST, ast.AST]) -> bool:
    """``obj._x = ...``, ``del obj._x``, ``obj._x[k] = ...``, ``obj._x.y = ...`` or ``obj._x.pop(...)``."""
    if isinstance(node.ctx, (ast.Store, ast.Del)):
        return True
    parent = parents.get(node)
    if isinstance(parent, (ast.Subscript, ast.Attribute)) and isinstance(parent.ctx, (ast.Store, ast.Del)):
        return True
    return isinstance(parent, ast.Attribute) and _is_called(parent, parents)


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _is_self(node: ast.expr) -> bool:
    return isinstance(node, ast.Name) and node.id in ("self", "cls")


def _attributes_set_by(cls: ast.ClassDef) -> set[str]:
    """Names a class defines itself: its body's assignments and methods, and ``self.x = ...`` in them."""
    own: set[str] = set()
    for node in ast.walk(cls):
        if isinstance(node, (ast.Assign, ast.AnnAssign)):  # `self._x -= 1` edits, it does not define
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for part in ast.walk(target):
                    if isinstance(part, ast.Name):
                        own.add(part.id)
                    elif isinstance(part, ast.Attribute) and _is_self(part.value) and isinstance(part.ctx, ast.Store):
                        own.add(part.attr)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            own.add(node.name)
    return own


def test_the_source_check_catches_cloning_and_edits_of_a_parents_private_fields():
    cloning = "class G(P):\n    def __init__(self, p):\n        vars(self).update(vars(p))\n"
    parent_edit = "class C(E):\n    def drop(self, k):\n        self._bytes -= self._items.pop(k)\n"
    other_edits = "def f(c):\n    c._items.clear()\n    c._n = 1\n    c._d[0] = 2\n    del c._e\n"
    reads = "def g(c):\n    return c._n + c._helper()\n"
    own_state = "class D:\n    def __init__(self):\n        self._n = 0\n    def bump(self):\n        self._n += 1\n"
    assert len(private_attribute_violations(cloning, "x.py")) == 1
    assert len(private_attribute_violations(parent_edit, "x.py")) == 2
    assert len(private_attribute_violations(other_edits, "x.py")) == 4
    assert private_attribute_violations(reads, "x.py") == []
    assert private_attribute_violations(own_state, "x.py") == []


def test_no_server_module_clones_state_or_reaches_into_private_attributes():
    modules = sorted(SERVER_DIR.glob("*.py"))
    assert len(modules) > 5
    found = [v for path in modules for v in private_attribute_violations(path.read_text(), path.name)]
    assert found == []
