"""Stand-ins for tests and for using the module outside 3D Slicer: no network, no model, no application.

- :class:`ThresholdClient` answers like ``MedSAMClient`` (same methods and arguments) with "masks"
  that are the voxels above a threshold inside the box, on the box's slices along the requested
  axis. It lets the module's self-test and the Logic's tests check where results land, how they
  merge and how undo restores them, without a server. It is not a segmentation method: it is a stub,
  and so is its "segment everything" (nested intensity classes of the slice, see
  :meth:`ThresholdClient.segment_everything`), and its IoU scores are made up (1.0).
- The phantom (:func:`phantom_array_ras`, :func:`phantom_in_layout`): one generated CT-like image
  stored in several voxel orders, for the module's self-test (MedSAMTest) inside Slicer.
- Stand-ins for two Python modules of the Slicer application that the ``slicer-core`` package
  (MRML without Qt) lacks: ``slicer.ScriptedLoadableModule`` (the module base classes) and
  ``slicer.parameterNodeWrapper`` (typed access to a module's parameter node and its binding to
  widgets). MedSAM.py imports them from here only when Slicer's own are missing; they keep
  parameters in the parameter node exactly as Slicer's serializers do, so a scene saved with one is
  read by the other.

Nothing here imports Slicer, VTK or Qt: MRML nodes and widgets are used through the methods they
have (duck typing), so the library stays importable by any Python with numpy.
"""

from __future__ import annotations

import abc
import dataclasses
import itertools
import logging
import os
import sys
import typing
import unittest
from typing import Any, Callable, Dict, Optional, Tuple

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
        self.options: list = []  # per segment call: {"multimask", "mask_prompt"}
        self.everything_levels: Tuple[float, ...] = ()
        self._volumes: dict = {}
        self._counter = itertools.count(1)

    def _session(self, session_id: str):
        if session_id not in self._volumes:
            raise SessionNotFound(f"server error 404: no session {session_id!r}")
        return self._volumes[session_id]

    def health(self) -> dict:
        self.calls.append(("health",))
        return {"status": "ok", "version": "test", "variant": "threshold", "device": "none"}

    def create_session(self, volume, ijk_to_ras, modality: str = "ct", window=None, **_ignored) -> str:
        session = f"session-{next(self._counter)}"
        self._volumes[session] = (np.array(volume, copy=True), np.asarray(ijk_to_ras, dtype=float))
        self.calls.append(("create_session", session, modality, window))
        return session

    def segment(
        self,
        session_id: str,
        box_ijk,
        axis: str = "axial",
        propagate: bool = True,
        points=None,
        progress: Optional[Callable[[int, int], None]] = None,
        cancel: Optional[Callable[[], bool]] = None,
        multimask: bool = False,
        mask_prompt=None,
        **_ignored,
    ) -> np.ndarray:
        self.calls.append(("segment", session_id, tuple(int(v) for v in box_ijk), axis, propagate, points))
        # What the real client would send besides (a MaskPrompt's labels, offset and value), for the tests to check.
        self.options.append({"multimask": bool(multimask), "mask_prompt": mask_prompt})
        if self.fail_on_segment is not None:
            raise self.fail_on_segment
        volume, ijk_to_ras = self._session(session_id)
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

    def segment_result(self, session_id: str, box_ijk, axis: str = "axial", propagate: bool = True, **options):
        """:meth:`segment` (however it is set on this object) as the client's SegmentAnswer; made-up IoU 1.0 per
        segmented slice (one candidate, or three with ``multimask``: the first kept)."""
        from .client import SegmentAnswer

        labels = self.segment(session_id, box_ijk, axis, propagate, **options)
        volume, ijk_to_ras = self._session(session_id)
        voxel_axis = geometry.slicing_voxel_axis(ijk_to_ras, axis)
        first, last = geometry.box_slice_range(box_ijk, voxel_axis)
        if not propagate:
            first = last = first + (last - first) // 2
        candidates = 3 if options.get("multimask") else 1
        scores = [{"index": index, "iou": [1.0] * candidates, "kept": 0} for index in range(first, last + 1)]
        return SegmentAnswer(labels, scores, first + (last - first) // 2)

    def segment_everything(
        self,
        session_id: str,
        axis: str = "axial",
        ijk=None,
        ras=None,
        slice_index=None,
        parameters=None,
        progress: Optional[Callable[[int, int], None]] = None,
        cancel: Optional[Callable[[], bool]] = None,
    ):
        """A stub of the server's "segment everything": mask n is the slice's voxels above the n-th of
        :attr:`everything_levels` (default ``(-500, threshold)``) that any voxel passes: nested masks, the larger
        painted first and the smaller on top, as the server paints SAM's. Records carry made-up scores (IoU 0.9,
        0.8...); ``parameters`` are recorded, not used."""
        from .everything import EverythingResult

        self.calls.append(("segment_everything", session_id, axis, ijk, ras, slice_index, dict(parameters or {})))
        if self.fail_on_segment is not None:
            raise self.fail_on_segment
        volume, ijk_to_ras = self._session(session_id)
        voxel_axis = geometry.slicing_voxel_axis(ijk_to_ras, axis)
        if ijk is None:
            raise ValueError("this stand-in takes the slice as ijk only")
        index = int(ijk[voxel_axis])
        plane = volume[geometry.slab(voxel_axis, index, index)]
        levels = self.everything_levels or (-500.0, self.threshold)
        labels = np.zeros(plane.shape, dtype=np.uint16)
        records = []
        for label, level in enumerate(levels, start=1):
            mask = plane > float(level)
            if cancel is not None and cancel():
                raise RuntimeError("cancelled")
            if progress is not None:
                progress(label, len(levels))
            if not mask.any():
                continue
            labels[mask] = len(records) + 1
            records.append({"label": len(records) + 1, "area": int(mask.sum()), "predicted_iou": 0.9 - 0.1 * len(records)})
        offset = [0, 0, 0]
        offset[voxel_axis] = index
        shape_ijk = volume.shape[::-1]
        return EverythingResult(labels, tuple(offset), tuple(shape_ijk), voxel_axis, index, axis, records, len(records))

    def close_session(self, session_id: str) -> None:
        self.calls.append(("close_session", session_id))
        self._volumes.pop(session_id, None)

    def forget_all_sessions(self) -> None:
        """What a server restart does."""
        self._volumes.clear()


# -- The self-test's phantom ---------------------------------------------------------------------------

# The same physical image stored in other voxel orders: (permutation of the RAS-ordered array's axes, flips after it).
PHANTOM_LAYOUTS: Dict[str, Tuple[Tuple[int, int, int], Tuple[bool, bool, bool]]] = {
    "ras": ((0, 1, 2), (False, False, False)),
    "lps": ((0, 1, 2), (True, True, False)),
    "permuted": ((2, 0, 1), (False, True, True)),  # and flipped
}


def phantom_array_ras(shape: Tuple[int, int, int] = (24, 20, 12)) -> np.ndarray:
    """A bright ellipsoid (200) in a darker body (40) on air (-1000): int16, indexed [i, j, k] in RAS order."""
    i, j, k = np.meshgrid(*(np.arange(n, dtype=float) for n in shape), indexing="ij")
    centre = [(n - 1) / 2 for n in shape]
    body = ((i - centre[0]) / (0.45 * shape[0])) ** 2 + ((j - centre[1]) / (0.45 * shape[1])) ** 2 <= 1
    organ = (((i - centre[0] - 2) / 5.0) ** 2 + ((j - centre[1] + 1) / 4.0) ** 2 + ((k - centre[2]) / 3.0) ** 2) <= 1
    values = np.full(shape, -1000.0)
    values[body] = 40.0
    values[organ] = 200.0
    return values.astype(np.int16)


def phantom_in_layout(layout, spacing: Tuple[float, float, float] = (2.0, 2.0, 3.0)) -> Tuple[np.ndarray, np.ndarray]:
    """``(array, ijk_to_ras)``: the phantom stored in ``layout`` (one of PHANTOM_LAYOUTS), centred on RAS 0.

    ``array`` is indexed [i, j, k] of that layout (shape a permutation of (24, 20, 12)); ``ijk_to_ras`` is
    the 4x4 matrix that puts each voxel where the RAS-ordered phantom has it, so both are the same image.
    """
    return stored_in_layout(phantom_array_ras(), layout, spacing)


def stored_in_layout(
    array: np.ndarray, layout, spacing: Tuple[float, float, float] = (2.0, 2.0, 3.0)
) -> Tuple[np.ndarray, np.ndarray]:
    """``(array, ijk_to_ras)``: an RAS-ordered ``array`` [i, j, k] stored in ``layout`` (a permutation and
    flips), centred on RAS 0, with the 4x4 matrix that keeps every voxel where it was."""
    ijk_to_ras = np.diag([*spacing, 1.0])
    ijk_to_ras[:3, 3] = -np.array(spacing) * (np.array(array.shape) - 1) / 2
    return relayout(array, ijk_to_ras, layout)


def relayout(array: np.ndarray, ijk_to_ras: np.ndarray, layout) -> Tuple[np.ndarray, np.ndarray]:
    """``(array, ijk_to_ras)`` of the same image stored in another voxel order: ``layout`` is
    ``(permutation, flips)``, new axis ``d`` being old axis ``permutation[d]``, reversed where ``flips[d]``.
    The 4x4 matrix changes with the array, so every voxel keeps its place in RAS. (The one rule of the
    tests that store a phantom in several voxel orders, the library's tests included.)"""
    permutation, flips = layout
    array = array.transpose(permutation)
    ijk_to_ras = np.array(ijk_to_ras, dtype=float)[:, list(permutation) + [3]]
    for axis, flip in enumerate(flips):
        if flip:
            array = np.flip(array, axis)
            ijk_to_ras[:3, 3] += ijk_to_ras[:3, axis] * (array.shape[axis] - 1)
            ijk_to_ras[:3, axis] *= -1
    return np.ascontiguousarray(array), ijk_to_ras


def to_ras_order(mask_kji: np.ndarray, layout) -> np.ndarray:
    """A [k, j, i] mask of a phantom in ``layout`` back in the RAS-ordered phantom's [i, j, k] order."""
    permutation, flips = layout
    mask = mask_kji.transpose(2, 1, 0)
    for axis, flip in enumerate(flips):
        if flip:
            mask = np.flip(mask, axis)
    return mask.transpose(np.argsort(permutation))


def axial_slice_to_ras() -> np.ndarray:
    """SliceToRAS (4x4) of Slicer's Red (axial) slice view through RAS 0."""
    return np.array([[-1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])


# -- Stand-in for slicer.ScriptedLoadableModule (Base/Python/slicer/ScriptedLoadableModule.py) -----------


def _module_name(instance, suffix: str) -> str:
    """The module name Slicer's base classes derive: the class name without its Widget/Logic suffix."""
    name = type(instance).__name__
    return name[: -len(suffix)] if suffix and name.endswith(suffix) else name


class ScriptedLoadableModule:
    """The module's description holder; Slicer's also sets the icon and registers the self-test."""

    def __init__(self, parent) -> None:
        self.parent = parent
        self.moduleName = _module_name(self, "")


class ScriptedLoadableModuleWidget:
    """The panel's base: Slicer's builds a qMRMLWidget when there is no parent and adds the developer section."""

    def __init__(self, parent=None) -> None:
        self.moduleName = _module_name(self, "Widget")
        self.parent = parent
        self.layout = parent.layout() if parent is not None and hasattr(parent, "layout") else None

    def resourcePath(self, filename: str) -> str:
        """``Resources/<filename>`` next to the module's file, as Slicer's (there: slicer.util.modulePath)."""
        module_file = getattr(sys.modules.get(type(self).__module__), "__file__", None) or ""
        return os.path.join(os.path.dirname(module_file), "Resources", filename)

    def setup(self) -> None:
        """Nothing to add: Slicer's adds the Reload/Test buttons in developer mode."""

    def cleanup(self) -> None:
        """Nothing to release."""


class ScriptedLoadableModuleLogic:
    """The Logic's base: the module name and a singleton parameter node (Slicer's default)."""

    def __init__(self, parent=None) -> None:
        self.moduleName = _module_name(self, "Logic")
        self.isSingletonParameterNode = True


class ScriptedLoadableModuleTest(unittest.TestCase):
    """The self-test's base; Slicer's delayDisplay shows each message in a dialog for a while."""

    def delayDisplay(self, message, requestedDelay=None, msec=None) -> None:
        logging.info(message)


# -- Stand-in for slicer.parameterNodeWrapper (Base/Python/slicer/parameterNodeWrapper/) -----------------
#
# What the module uses of it, with Slicer's semantics (v5.8.0 and v5.10.0): @parameterNodeWrapper classes with
# str, int, float, bool and MRML node members (defaults, Annotated validators), values kept in the
# vtkMRMLScriptedModuleNode as serializers.py keeps them, getValue/setValue, connectGui/connectParametersToGui/
# disconnectGui with the connectors of guiConnectors.py for the widget classes the module binds, and the node's
# StartModify/EndModify/AddObserver/RemoveObserver/Modified. Unlike Slicer's, values are read from the node each
# time instead of being cached (the same values; Slicer refreshes its cache on every ModifiedEvent).

SlicerParameterNamePropertyName = "SlicerParameterName"

# vtkCommand::ModifiedEvent by name: VTK's AddObserver takes event names as well as numbers.
_MODIFIED_EVENT = "ModifiedEvent"


class Validator(abc.ABC):
    """Checks a value before it is written (validators.py)."""

    @abc.abstractmethod
    def validate(self, value) -> None:
        """Raise ValueError or TypeError when ``value`` may not be written."""


class NotNone(Validator):
    def validate(self, value) -> None:
        if value is None:
            raise ValueError("Value must not be None")


class IsInstance(Validator):
    def __init__(self, classtype) -> None:
        self.classtype = classtype

    def validate(self, value) -> None:
        if value is not None and not isinstance(value, self.classtype):
            raise TypeError(f"Value must be of type '{self.classtype}', is type '{type(value)}' value '{value}'")


class WithinRange(Validator):
    def __init__(self, minimum, maximum) -> None:
        self.minimum, self.maximum = minimum, maximum

    def validate(self, value) -> None:
        if not self.minimum <= value <= self.maximum:
            raise ValueError(f"Value must be within range [{self.minimum}, {self.maximum}], is {value}")


class Choice(Validator):
    def __init__(self, choices) -> None:
        self.choices = choices

    def validate(self, value) -> None:
        if value not in self.choices:
            raise ValueError(f"Value is {value}, but must be in one of the following: {self.choices}")


def _split_annotations(datatype) -> Tuple[Any, tuple]:
    """``(type, annotations)`` of a possibly ``Annotated`` type (util.splitAnnotations)."""
    arguments = typing.get_args(typing.Annotated[datatype, "stub annotation"])
    return arguments[0], arguments[1:-1]


def _is_mrml_node_class(datatype) -> bool:
    """True for vtkMRMLNode and its subclasses, told by methods every MRML node class has (no Slicer import)."""
    return isinstance(datatype, type) and all(hasattr(datatype, name) for name in ("GetNodeTagName", "GetID", "GetScene"))


class _ScalarSerializer:
    """str, int, float and bool as serializers.py keeps them: one text parameter ("True"/"False" for bool)."""

    def __init__(self, datatype) -> None:
        self.datatype = datatype

    def default(self):
        return {str: "", bool: False}.get(self.datatype, 0)

    def validators(self) -> list:
        allowed = (int, float) if self.datatype is float else self.datatype
        return [NotNone(), IsInstance(allowed)]

    def is_in(self, node, name: str) -> bool:
        return bool(node.HasParameter(name))

    def write(self, node, name: str, value) -> None:
        node.SetParameter(name, ("True" if value else "False") if self.datatype is bool else str(value))

    def read(self, node, name: str):
        text = node.GetParameter(name)
        if self.datatype is bool:
            return text == "True"
        return text if self.datatype is str else self.datatype(text)


class _NodeSerializer:
    """An MRML node as serializers.NodeSerializer keeps it: a node reference, and an empty parameter that tells
    a member set to None from a member never written."""

    def __init__(self, datatype) -> None:
        self.datatype = datatype

    def default(self):
        return None

    def validators(self) -> list:
        return [IsInstance(self.datatype)]

    def is_in(self, node, name: str) -> bool:
        return bool(node.HasParameter(name))

    def write(self, node, name: str, value) -> None:
        node.SetParameter(name, "")
        node.SetNodeReferenceID(name, value.GetID() if value is not None else None)

    def read(self, node, name: str):
        return node.GetNodeReference(name)


def _serializer_for(datatype):
    if datatype in (str, int, float, bool):
        return _ScalarSerializer(datatype)
    if _is_mrml_node_class(datatype):
        return _NodeSerializer(datatype)
    raise TypeError(f"Unable to create serializer for type: {datatype} (this stand-in has str, int, float, bool, MRML nodes)")


@dataclasses.dataclass
class _ParameterInfo:
    name: str
    datatype: Any  # as annotated, Annotated[...] included
    serializer: Any
    validators: list
    default: Any


class GuiConnector(abc.ABC):
    """Adapts one widget to one parameter value (guiConnectors.GuiConnector, the same abstract methods)."""

    @staticmethod
    @abc.abstractmethod
    def canRepresent(widget, datatype) -> bool:
        """Whether this connector can show ``datatype`` in ``widget``."""

    @staticmethod
    @abc.abstractmethod
    def create(widget, datatype):
        """A connector for ``widget`` and ``datatype``, or None."""

    def __init__(self) -> None:
        super().__init__()
        self._callback: Optional[Callable[[], None]] = None

    def onChanged(self, callback: Optional[Callable[[], None]]) -> None:
        self._callback = callback
        if callback is None:
            self._disconnect()
        else:
            self._connect()

    def changed(self) -> None:
        if self._callback:
            self._callback()

    @abc.abstractmethod
    def _connect(self) -> None:
        """Connect to the widget's change signal."""

    @abc.abstractmethod
    def _disconnect(self) -> None:
        """Disconnect from it."""

    @abc.abstractmethod
    def widget(self):
        """The widget."""

    @abc.abstractmethod
    def read(self):
        """The widget's value as the parameter's type."""

    @abc.abstractmethod
    def write(self, value) -> None:
        """Show ``value`` in the widget."""


class _SignalConnector(GuiConnector):
    """A connector for a widget that reports changes with one signal; Slicer's connectors are all of this kind.

    Subclasses name the widget classes (Qt class names: Slicer compares ``type(widget)`` with PythonQt's classes),
    the parameter types, the signal and the widget property holding the value.
    """

    widget_classes: Tuple[str, ...] = ()
    datatypes: Tuple[Any, ...] = ()
    signal = ""
    value_property = ""

    @classmethod
    def canRepresent(cls, widget, datatype) -> bool:
        return widget.className() in cls.widget_classes and _split_annotations(datatype)[0] in cls.datatypes

    @classmethod
    def create(cls, widget, datatype):
        return cls(widget, datatype) if cls.canRepresent(widget, datatype) else None

    def __init__(self, widget, datatype) -> None:
        super().__init__()
        self._widget = widget

    def _connect(self) -> None:
        getattr(self._widget, self.signal).connect(self.changed)

    def _disconnect(self) -> None:
        getattr(self._widget, self.signal).disconnect(self.changed)

    def widget(self):
        return self._widget

    def read(self):
        return getattr(self._widget, self.value_property)

    def write(self, value) -> None:
        if getattr(self._widget, self.value_property) != value:
            setattr(self._widget, self.value_property, value)


class _CheckBoxToBoolConnector(_SignalConnector):
    widget_classes, datatypes, signal, value_property = ("QCheckBox", "ctkCheckBox"), (bool,), "toggled", "checked"


class _SpinBoxToIntConnector(_SignalConnector):
    widget_classes, datatypes, signal, value_property = ("QSpinBox", "QSlider"), (int,), "valueChanged", "value"


class _LineEditToStrConnector(_SignalConnector):
    widget_classes, datatypes, signal, value_property = ("QLineEdit",), (str,), "textChanged", "text"


class _DoubleSpinBoxToFloatConnector(_SignalConnector):
    """Like Slicer's, it sets the widget's range from a WithinRange annotation, or makes it unbounded."""

    widget_classes = ("QDoubleSpinBox", "ctkDoubleSpinBox", "ctkSliderWidget", "qMRMLSliderWidget", "qMRMLSpinBox")
    datatypes, signal, value_property = (float,), "valueChanged", "value"

    def __init__(self, widget, datatype) -> None:
        super().__init__(widget, datatype)
        bounds = next((a for a in _split_annotations(datatype)[1] if isinstance(a, WithinRange)), None)
        if bounds is None and widget.className() in ("ctkSliderWidget", "qMRMLSliderWidget"):
            raise RuntimeError("Cannot have a connection to ctkSliderWidget where the float types is unbounded.")
        widget.minimum = bounds.minimum if bounds is not None else float("-inf")
        widget.maximum = bounds.maximum if bounds is not None else float("inf")


class _NodeComboBoxToNodeConnector(_SignalConnector):
    """Like Slicer's, it makes the selector offer the parameter's node class (its nodeTypes)."""

    widget_classes, signal = ("qMRMLNodeComboBox",), "currentNodeChanged"

    @classmethod
    def canRepresent(cls, widget, datatype) -> bool:
        return widget.className() in cls.widget_classes and _is_mrml_node_class(_split_annotations(datatype)[0])

    def __init__(self, widget, datatype) -> None:
        super().__init__(widget, datatype)
        widget.nodeTypes = (_split_annotations(datatype)[0].__name__,)

    def read(self):
        return self._widget.currentNode()

    def write(self, value) -> None:
        self._widget.setCurrentNode(value)


_GUI_CONNECTORS = (
    _CheckBoxToBoolConnector,
    _SpinBoxToIntConnector,
    _DoubleSpinBoxToFloatConnector,
    _LineEditToStrConnector,
    _NodeComboBoxToNodeConnector,
)


def createGuiConnector(widget, datatype) -> GuiConnector:
    """The connector for ``widget`` and ``datatype``; RuntimeError when there is none (as Slicer's)."""
    for connector in _GUI_CONNECTORS:
        if connector.canRepresent(widget, datatype):
            return connector.create(widget, datatype)
    raise RuntimeError(f"Unable to create GUI connector from datatype '{datatype}' to widget type '{widget.className()}'.")


class _NodeModify:
    """slicer.util.NodeModify: one ModifiedEvent for everything written inside."""

    def __init__(self, node) -> None:
        self.node = node

    def __enter__(self):
        self.was_modifying = self.node.StartModify()
        return self.node

    def __exit__(self, *exc_info) -> None:
        self.node.EndModify(self.was_modifying)


def _parameter_info(wrapper, name: str) -> _ParameterInfo:
    try:
        return wrapper.allParameters[name]
    except KeyError:
        raise ValueError(
            f"Cannot find a param with the given name: {name}\n  Found parameters {list(wrapper.allParameters)}"
        ) from None


def _init_wrapper(self, parameterNode) -> None:
    """Wrap ``parameterNode``: members it does not hold yet get their defaults (wrapper._initMethod)."""
    self.parameterNode = parameterNode
    self._parameterGUIs: Dict[int, Dict[str, GuiConnector]] = {}
    self._nextParameterGUIsTag = 0
    self._updatingGUIFromParameterNode = False
    self._guiObserverTag = None
    for info in self.allParameters.values():
        if not info.serializer.is_in(parameterNode, info.name):
            _write_value(self, info, info.default)


def _write_value(wrapper, info: _ParameterInfo, value) -> None:
    for validator in info.validators:
        validator.validate(value)
    with _NodeModify(wrapper.parameterNode):
        info.serializer.write(wrapper.parameterNode, info.name, value)


def _get_value(self, name: str):
    info = _parameter_info(self, name)
    if not info.serializer.is_in(self.parameterNode, info.name):
        _write_value(self, info, info.default)  # a member removed from the node meanwhile
    return info.serializer.read(self.parameterNode, info.name)


def _set_value(self, name: str, value) -> None:
    _write_value(self, _parameter_info(self, name), value)


def _update_gui_from_parameter_node(self) -> None:
    if self._updatingGUIFromParameterNode:
        return
    self._updatingGUIFromParameterNode = True
    try:
        with _NodeModify(self):
            for mapping in list(self._parameterGUIs.values()):
                for name, connector in mapping.items():
                    connector.write(self.getValue(name))
    finally:
        self._updatingGUIFromParameterNode = False


def _gui_to_parameter_callback(self, name: str, connector: GuiConnector) -> Callable[[], None]:
    def callback() -> None:
        with _NodeModify(self):
            if not self._updatingGUIFromParameterNode:
                self.setValue(name, connector.read())

    return callback


def _connect_parameters_to_gui(self, mapping: Dict[str, Any]) -> int:
    """Bind ``{parameter name: widget or GuiConnector}``; returns the tag for disconnectGui."""
    for name in mapping:
        _parameter_info(self, name)
    connectors = {
        name: value if isinstance(value, GuiConnector) else createGuiConnector(value, self.dataType(name))
        for name, value in mapping.items()
    }
    tag = self._nextParameterGUIsTag
    self._nextParameterGUIsTag += 1
    self._parameterGUIs[tag] = connectors
    for name, connector in connectors.items():
        connector.write(self.getValue(name))
        connector.onChanged(_gui_to_parameter_callback(self, name, connector))
    if self._guiObserverTag is None:
        # Slicer adds one such observer per connection and never removes it; one is enough for the same effect.
        self._guiObserverTag = self.parameterNode.AddObserver(
            _MODIFIED_EVENT, lambda caller, event: _update_gui_from_parameter_node(self)
        )
    return tag


def _connect_gui(self, gui) -> None:
    """Bind the widgets of ``gui`` that have a SlicerParameterName property to those parameters.

    Returns None, as Slicer 5.4-5.8 do (wrapper.py at v5.8.0: ``_connectParametersToGui(self, paramNameToWidget)``
    without ``return``; v5.10.0 returns the tag): code that must disconnect uses connectParametersToGui.
    """
    widgets = [w for w in vars(gui).values() if hasattr(w, "property")]
    _connect_parameters_to_gui(
        self, {w.property(SlicerParameterNamePropertyName): w for w in widgets if w.property(SlicerParameterNamePropertyName)}
    )


def _disconnect_gui(self, tag) -> None:
    for connector in self._parameterGUIs.pop(tag, {}).values():
        connector.onChanged(None)


def _data_type_function(classtype):
    def dataType(name: str):
        return _parameter_info(classtype, name).datatype

    return staticmethod(dataType)


def _parameter_property(name: str) -> property:
    return property(lambda self: self.getValue(name), lambda self, value: self.setValue(name, value))


def _wrap_class(classtype):
    """Turn the annotated members of ``classtype`` into typed properties kept in the wrapped parameter node."""
    parameters: Dict[str, _ParameterInfo] = {}
    for name, datatype in typing.get_type_hints(classtype, include_extras=True).items():
        base, annotations = _split_annotations(datatype)
        try:
            serializer = _serializer_for(base)
        except TypeError as error:
            raise TypeError(f"Unable to create serializer for {classtype} member {name}") from error
        validators = serializer.validators() + [a for a in annotations if isinstance(a, Validator)]
        default = getattr(classtype, name) if hasattr(classtype, name) else serializer.default()
        parameters[name] = _ParameterInfo(name, datatype, serializer, validators, default)
        setattr(classtype, name, _parameter_property(name))
    methods = {
        "allParameters": parameters,
        "_is_parameter_node_wrapper": True,
        "dataType": _data_type_function(classtype),
        "getValue": _get_value,
        "setValue": _set_value,
        "connectGui": _connect_gui,
        "connectParametersToGui": _connect_parameters_to_gui,
        "disconnectGui": _disconnect_gui,
        "StartModify": lambda self: self.parameterNode.StartModify(),
        "EndModify": lambda self, wasModified: self.parameterNode.EndModify(wasModified),
        "AddObserver": lambda self, event, callback, priority=0.0: self.parameterNode.AddObserver(event, callback, priority),
        "RemoveObserver": lambda self, tag: self.parameterNode.RemoveObserver(tag),
        "Modified": lambda self: self.parameterNode.Modified(),
    }
    for attribute, value in methods.items():
        if hasattr(classtype, attribute):
            raise ValueError(f"Cannot use reserved name '{attribute}' in a parameterNodeWrapper")
        setattr(classtype, attribute, value)
    classtype.__init__ = _init_wrapper
    return classtype


def parameterNodeWrapper(classtype=None):
    """Class decorator: typed access to a vtkMRMLScriptedModuleNode (``@parameterNodeWrapper`` or ``(...)()``)."""
    if classtype is None:
        return _wrap_class
    return _wrap_class(classtype)


def isParameterNodeWrapper(class_or_object) -> bool:
    return getattr(class_or_object, "_is_parameter_node_wrapper", False)
