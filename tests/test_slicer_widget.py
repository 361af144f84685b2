"""The module's Widget driven without Qt: stand-in widgets built from the .ui file, real MRML nodes.

Qt, CTK and the Slicer application do not exist outside 3D Slicer, so these tests replace the
widgets by small Python objects with the same names, properties and signals (one per widget in
MedSAM.ui, so the code can only use what the .ui defines), the timer by explicit polls, and the
dialogs by recorders. They check the panel's own logic: what is asked and when, what is shown,
that work runs in a BackgroundTask and is applied on the "main thread", that undo and shortcuts
reach the Logic. How the real Qt widgets look and behave is not tested here.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
import threading
import time
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="needs the slicer-core package (Linux, Python 3.11)")
import vtk  # noqa: E402

MODULE_DIR = Path(__file__).resolve().parents[1] / "slicer_extension" / "MedSAM"
sys.path.insert(0, str(MODULE_DIR))

import MedSAM  # noqa: E402
from MedSAMLib.testing import ThresholdClient  # noqa: E402
from test_slicer_logic import BOX_HIGH, BOX_LOW, LAYOUTS, VIEWS, add_volume, layout_of, phantom_ras  # noqa: E402


def accepted_arguments(slot, offered):
    """As PythonQt does: a Python slot taking fewer arguments than the signal gets the first ones."""
    parameters = inspect.signature(slot).parameters.values()
    if any(p.kind == p.VAR_POSITIONAL for p in parameters):
        return offered
    return min(offered, sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in parameters))


# Signals as PythonQt exposes them on a widget (``widget.currentIndexChanged.connect(slot)``), by the signature
# the old style names (``widget.connect("currentIndexChanged(int)", slot)``); both reach the same slots.
SIGNALS = {
    "currentIndexChanged": "currentIndexChanged(int)",
    "currentNodeChanged": "currentNodeChanged(vtkMRMLNode*)",
    "textChanged": "textChanged(QString)",
    "currentPathChanged": "currentPathChanged(QString)",
    "clicked": "clicked(bool)",
    "toggled": "toggled(bool)",
    "activated": "activated()",
    "timeout": "timeout()",
}


class BoundSignal:
    def __init__(self, widget, signature):
        self.widget, self.signature = widget, signature

    def connect(self, slot):
        self.widget.connect(self.signature, slot)

    def disconnect(self, slot):
        self.widget.disconnect(self.signature, slot)


class Widget:
    """A stand-in for any Qt widget: properties as attributes, signals as lists of slots.

    As Qt's, setting ``text`` (QLineEdit), ``value`` (spin boxes), ``checked`` (QCheckBox) or ``currentPath``
    (ctkPathLineEdit) to a new value emits the widget's change signal; ``property(name)`` returns the .ui file's
    dynamic properties (SlicerParameterName), ``className()`` the Qt class, as PythonQt's widgets do.
    """

    def __init__(self, name, cls, dynamic_properties=None):
        self._slots = {}
        self.name, self.cls = name, cls
        self._dynamic_properties = dict(dynamic_properties or {})
        self.enabled = True
        self.visible = True
        self.toolTip = ""
        self._text, self._value, self._path, self._checked = "", 0.0, "", False

    def className(self):
        return self.cls

    def connect(self, signal, slot):
        self._slots.setdefault(signal, []).append(slot)

    def disconnect(self, signal, slot=None):
        slots = self._slots.get(signal, [])
        if slot is None:
            slots.clear()
        elif slot in slots:
            slots.remove(slot)

    def emit(self, signal, *args):
        for slot in list(self._slots.get(signal, [])):
            slot(*args[: accepted_arguments(slot, len(args))])

    def __getattr__(self, name):
        if name == "valueChanged":
            return BoundSignal(self, "valueChanged(int)" if self.cls == "QSpinBox" else "valueChanged(double)")
        if name in SIGNALS:
            return BoundSignal(self, SIGNALS[name])
        raise AttributeError(name)

    @property
    def text(self):
        return self._text

    @text.setter
    def text(self, text):
        changed, self._text = text != self._text, text
        if changed:
            self.emit("textChanged(QString)", text)

    @property
    def value(self):
        return self._value

    @value.setter
    def value(self, value):
        changed, self._value = value != self._value, value
        if changed:
            self.emit("valueChanged(int)" if self.cls == "QSpinBox" else "valueChanged(double)", value)

    @property
    def checked(self):
        return self._checked

    @checked.setter
    def checked(self, checked):
        changed, self._checked = checked != self._checked, bool(checked)
        if changed:
            self.emit("toggled(bool)", self._checked)

    @property
    def currentPath(self):
        return self._path

    @currentPath.setter
    def currentPath(self, path):
        changed, self._path = path != self._path, path
        if changed:
            self.emit("currentPathChanged(QString)", path)

    def setMRMLScene(self, scene):
        self.scene = scene

    # QProgressBar
    def setRange(self, low, high):
        self.range = (low, high)

    def setValue(self, value):
        self.value = value

    # Last in the class body: from here on, the name "property" is this method, not the decorator.
    def property(self, name):
        return self._dynamic_properties.get(name)  # PythonQt: None for a property the widget does not have


class ComboBox(Widget):
    """QComboBox: currentIndexChanged(int) when the index changes (clear() included), unless signals are blocked."""

    def __init__(self, name, cls, dynamic_properties=None):
        super().__init__(name, cls, dynamic_properties)
        self.items, self._index, self._blocked = [], -1, False

    def clear(self):
        self.items = []
        self.setCurrentIndex(-1)

    def addItem(self, text, data=None):
        self.items.append((text, data))
        if self._index < 0:
            self.setCurrentIndex(0)

    def findData(self, data):
        return next((n for n, (_, d) in enumerate(self.items) if d == data), -1)

    def setCurrentIndex(self, index):
        changed, self._index = index != self._index, index
        if changed and not self._blocked:
            self.emit("currentIndexChanged(int)", index)

    def blockSignals(self, blocked):
        was, self._blocked = self._blocked, blocked
        return was

    @property
    def currentIndex(self):
        return self._index

    @currentIndex.setter
    def currentIndex(self, index):
        self.setCurrentIndex(index)

    @property
    def count(self):
        return len(self.items)

    @property
    def currentData(self):
        return self.items[self._index][1] if 0 <= self._index < len(self.items) else None


class NodeComboBox(Widget):
    """qMRMLNodeComboBox: currentNodeChanged(vtkMRMLNode*) when the current node changes."""

    def __init__(self, name, cls, dynamic_properties=None):
        super().__init__(name, cls, dynamic_properties)
        self._node = None
        self.nodeTypes = ()

    def currentNode(self):
        return self._node

    def setCurrentNode(self, node):
        changed, self._node = node is not self._node, node
        if changed:
            self.emit("currentNodeChanged(vtkMRMLNode*)", node)


class PlaceWidget(Widget):
    def setCurrentNode(self, node):
        self.node = node


def dynamic_properties(element):
    """The widget's properties that are not Qt's own (stdset="0" in a .ui file), as name: text."""
    return {p.get("name"): p.findtext("string") for p in element.findall("property") if p.get("stdset") == "0"}


def widgets_from_ui():
    classes = {"QComboBox": ComboBox, "qMRMLNodeComboBox": NodeComboBox, "qSlicerMarkupsPlaceWidget": PlaceWidget}
    root = ET.parse(MODULE_DIR / "Resources" / "UI" / "MedSAM.ui").getroot()
    return {
        w.get("name"): classes.get(w.get("class"), Widget)(w.get("name"), w.get("class"), dynamic_properties(w))
        for w in root.iter("widget")
    }


class FakeQt(types.SimpleNamespace):
    pass


SETTINGS_THREADS = []  # the thread of every QSettings use (QSettings belongs to the main thread)


def fake_qt(settings):
    class QSettings:
        def value(self, key, default=None):
            SETTINGS_THREADS.append(threading.current_thread())
            return settings.get(key, default)

        def setValue(self, key, value):
            SETTINGS_THREADS.append(threading.current_thread())
            settings[key] = value

    class QTimer(Widget):
        def __init__(self):
            super().__init__("timer", "QTimer")
            self.active = False

        def setInterval(self, msec):
            self.interval = msec

        def start(self):
            self.active = True

        def stop(self):
            self.active = False

    class QKeySequence:
        Undo = "Ctrl+Z"

        def __init__(self, keys):
            self.keys = keys

    class QShortcut(Widget):
        made = []

        def __init__(self, sequence, parent):
            super().__init__(sequence.keys, "QShortcut")
            QShortcut.made.append(self)

        def setEnabled(self, enabled):
            self.enabled = enabled

        def disconnect(self, signal):
            self._slots.pop(signal, None)

        def setParent(self, parent):
            self.parent = parent

    return FakeQt(QSettings=QSettings, QTimer=QTimer, QKeySequence=QKeySequence, QShortcut=QShortcut)


class Dialogs:
    def __init__(self):
        self.questions, self.errors, self.infos, self.answer = [], [], [], True

    def confirm(self, text, windowTitle=None, **kwargs):
        self.questions.append(text)
        return self.answer

    def error(self, text, windowTitle=None, **kwargs):
        self.errors.append(text)

    def info(self, text, windowTitle=None, **kwargs):
        self.infos.append(text)


class LayoutManager:
    """A stand-in for qSlicerLayoutManager: slice view names, their widgets, and layoutChanged(int)."""

    def __init__(self, slice_nodes):
        self.slice_nodes = slice_nodes
        self._slots = []

    def sliceViewNames(self):
        return list(self.slice_nodes)

    def sliceWidget(self, name):
        node = self.slice_nodes.get(name)
        return types.SimpleNamespace(mrmlSliceNode=lambda: node) if node is not None else None

    def connect(self, signal, slot):
        assert signal == "layoutChanged(int)"
        self._slots.append(slot)

    def disconnect(self, signal, slot):
        self._slots.remove(slot)

    def switch_layout(self, layout_id):
        """What a layout change does: new views exist, then layoutChanged(int) is emitted."""
        for slot in list(self._slots):
            slot(*(layout_id,)[: accepted_arguments(slot, 1)])


def add_slice_node(scene, name, orientation):
    """A slice node as Slicer's layout makes it: layout name (singleton tag) "Red" -> ID vtkMRMLSliceNodeRed."""
    node = slicer.vtkMRMLSliceNode()
    node.SetName(name)
    node.SetLayoutName(name)
    node.GetSliceToRAS().DeepCopy(MedSAM._matrix_from_array(VIEWS[orientation]))
    scene.AddNode(node)
    return node


def application_scene():
    """A scene with what the Slicer application adds before any module widget exists.

    The "default" crosshair (qSlicerCoreApplication::setMRMLScene, Base/QTCore/qSlicerCoreApplication.cxx),
    the selection node singleton (vtkMRMLApplicationLogic) and the Markups logic observing the scene,
    which makes every markups node added the active place node (vtkSlicerMarkupsLogic::OnMRMLSceneNodeAdded).
    """
    scene = slicer.vtkMRMLScene()
    crosshair = slicer.vtkMRMLCrosshairNode()
    crosshair.SetCrosshairName("default")
    scene.AddNode(crosshair)
    selection = slicer.vtkMRMLSelectionNode()
    selection.SetSingletonTag("Singleton")
    scene.AddNode(selection)
    markups_logic = slicer.vtkSlicerMarkupsLogic()
    markups_logic.SetMRMLScene(scene)
    return scene, markups_logic


def make_panel(monkeypatch, main_window=True):
    """A MedSAMWidget set up on a fresh application-like scene with stand-in Qt, dialogs and slice views.

    Without ``main_window`` there is no layout manager and no slice view, as with --no-main-window.
    """
    scene, markups_logic = application_scene()
    settings, dialogs, ui = {}, Dialogs(), widgets_from_ui()
    slice_nodes = {}
    if main_window:
        for name, orientation in (("Red", "axial"), ("Yellow", "sagittal"), ("Green", "coronal")):
            slice_nodes[name] = add_slice_node(scene, name, orientation)
    layout_manager = LayoutManager(slice_nodes) if main_window else None
    app = types.SimpleNamespace(layoutManager=lambda: layout_manager, connect=lambda signal, slot: None)
    reloads = []

    class BaseWidget:
        """What ScriptedLoadableModuleWidget provides (reached through the module's global name)."""

        def __init__(self, parent=None):
            # qSlicerAbstractModuleWidget's isEntered: true between the application's enter() and exit().
            self.parent = parent or types.SimpleNamespace(isEntered=False)
            self.moduleName = "MedSAM"

        def setup(self):
            self.layout = types.SimpleNamespace(addWidget=lambda widget: None)
            self.resourcePath = lambda relative: str(MODULE_DIR / "Resources" / relative)

        def onReload(self):
            slicer.util.reloadScriptedModule(self.moduleName)

    monkeypatch.setattr(MedSAM, "qt", fake_qt(settings))
    monkeypatch.setattr(MedSAM, "ScriptedLoadableModuleWidget", BaseWidget)
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    monkeypatch.setattr(slicer, "app", app, raising=False)
    monkeypatch.setattr(slicer.util, "loadUI", lambda path: types.SimpleNamespace(setMRMLScene=lambda s: None))
    monkeypatch.setattr(slicer.util, "childWidgetVariables", lambda widget: types.SimpleNamespace(**ui))
    monkeypatch.setattr(slicer.util, "confirmYesNoDisplay", dialogs.confirm)
    monkeypatch.setattr(slicer.util, "errorDisplay", dialogs.error)
    monkeypatch.setattr(slicer.util, "infoDisplay", dialogs.info)
    monkeypatch.setattr(slicer.util, "mainWindow", lambda: None)
    monkeypatch.setattr(slicer.util, "reloadScriptedModule", reloads.append, raising=False)
    widget = MedSAM.MedSAMWidget()
    widget.setup()
    client = ThresholdClient(MedSAM_THRESHOLD)
    widget.logic.client_for = lambda url, token=None, timeout=600.0: client
    enter_module(widget)
    volume = add_volume(scene, *layout_of(phantom_ras(), LAYOUTS["permuted"]))
    ui["volumeSelector"].setCurrentNode(volume)
    roi = ui["roiSelector"].currentNode()
    roi.SetCenter(*((np.array(BOX_LOW) + np.array(BOX_HIGH)) / 2))
    roi.SetSize(*(np.array(BOX_HIGH) - np.array(BOX_LOW)))
    if main_window:
        ui["sliceViewComboBox"].setCurrentIndex(ui["sliceViewComboBox"].findData("Red"))
    return types.SimpleNamespace(
        widget=widget,
        ui=types.SimpleNamespace(**ui),
        scene=scene,
        volume=volume,
        roi=roi,
        client=client,
        dialogs=dialogs,
        settings=settings,
        slice_nodes=slice_nodes,
        layout_manager=layout_manager,
        markups_logic=markups_logic,
        reloads=reloads,
        crosshair=MedSAM.default_crosshair(scene),
    )


def enter_module(widget):
    """What the application does when the module is shown: isEntered, then the Python enter()."""
    widget.parent.isEntered = True
    widget.enter()


def exit_module(widget):
    widget.exit()
    widget.parent.isEntered = False


def close_panel(panel):
    if panel.widget._task is not None:
        panel.widget._task.wait(30)
    panel.widget.cleanup()  # removes the VTK observers before the scene goes
    panel.markups_logic.SetMRMLScene(None)


@pytest.fixture
def panel(monkeypatch):
    made = make_panel(monkeypatch)
    yield made
    close_panel(made)


MedSAM_THRESHOLD = 100.0


def finish(panel):
    """What the timer does: poll until the task is done (the work runs in its own thread)."""
    task = panel.widget._task
    assert task is not None, "no task was started"
    assert panel.widget._timer.active and panel.ui.cancelButton.visible and not panel.ui.segment3DButton.enabled
    assert task.wait(30)
    panel.widget._poll_task()
    assert panel.widget._task is None and not panel.widget._timer.active


def segments(panel):
    node = panel.ui.segmentationSelector.currentNode()
    segmentation = node.GetSegmentation()
    return [segmentation.GetSegment(segmentation.GetNthSegmentID(n)).GetName() for n in range(segmentation.GetNumberOfSegments())]


def test_the_panel_segments_asks_once_and_undoes(panel):
    ui = panel.ui
    assert ui.modalityComboBox.currentData == "ct"  # guessed from the air in the volume
    assert ui.segmentComboBox.currentData == "" and ui.newSegmentNameLineEdit.enabled  # "New segment"
    ui.newSegmentNameLineEdit.text = "liver"
    ui.segment3DButton.emit("clicked(bool)", True)
    assert len(panel.dialogs.questions) == 1 and "127.0.0.1:8123" in panel.dialogs.questions[0]
    finish(panel)
    assert panel.dialogs.errors == []
    assert segments(panel) == ["liver"]
    assert ui.statusLabel.text.startswith("Segment 'liver':") and "axial slices" in ui.statusLabel.text
    assert ui.segmentComboBox.items[ui.segmentComboBox.currentIndex][0] == "liver"  # later runs go there
    assert ui.undoButton.enabled and not ui.cancelButton.visible
    assert panel.settings["MedSAM/ServerURL"] == "http://127.0.0.1:8123"
    assert "MedSAM/ConsentedServers" in panel.settings

    ui.mergeComboBox.setCurrentIndex(ui.mergeComboBox.findData("add"))
    ui.segmentSliceButton.emit("clicked(bool)", True)
    finish(panel)
    assert len(panel.dialogs.questions) == 1  # agreed once for this server
    assert segments(panel) == ["liver"]
    kinds = [call[0] for call in panel.client.calls]
    assert kinds == ["create_session", "segment", "segment"]
    assert panel.client.calls[-1][4] is False  # slice: no propagation

    undo = next(s for s in MedSAM.qt.QShortcut.made if s.name == "Ctrl+Z")
    undo.emit("activated()")
    assert ui.statusLabel.text.startswith("Undone: MedSAM slice")
    ui.undoButton.emit("clicked(bool)", True)
    assert segments(panel) == [] and not ui.undoButton.enabled
    ui.undoButton.emit("clicked(bool)", True)
    assert panel.dialogs.errors == []


def test_shortcuts_are_installed_while_the_module_is_shown(panel):
    made = MedSAM.qt.QShortcut.made
    active = {s.name: s for s in made if s._slots}
    assert set(active) == {MedSAM.SHORTCUT_SEGMENT_SLICE, MedSAM.SHORTCUT_SEGMENT_3D, "Ctrl+Z", MedSAM.SHORTCUT_CANCEL}
    assert not active[MedSAM.SHORTCUT_CANCEL].enabled  # Escape belongs to the views while idle
    active[MedSAM.SHORTCUT_SEGMENT_3D].emit("activated()")
    assert active[MedSAM.SHORTCUT_CANCEL].enabled
    finish(panel)
    assert not active[MedSAM.SHORTCUT_CANCEL].enabled
    panel.widget.exit()
    assert all(not s._slots for s in made)


def test_declining_sends_nothing(panel):
    panel.dialogs.answer = False
    panel.ui.segment3DButton.emit("clicked(bool)", True)
    assert panel.widget._task is None and panel.client.calls == []
    assert "Nothing was sent" in panel.ui.statusLabel.text
    assert panel.ui.segmentationSelector.currentNode().GetSegmentation().GetNumberOfSegments() == 0


def test_problems_end_in_a_message_and_change_nothing(panel):
    panel.roi.SetSize(0, 0, 10)
    panel.ui.segment3DButton.emit("clicked(bool)", True)
    assert panel.widget._task is None
    assert len(panel.dialogs.errors) == 1 and "has no area" in panel.dialogs.errors[0]
    assert panel.dialogs.questions == []  # nothing to send yet, so nothing asked

    panel.roi.SetSize(*(np.array(BOX_HIGH) - np.array(BOX_LOW)))
    panel.client.fail_on_segment = RuntimeError("server error 503: busy")
    panel.ui.segment3DButton.emit("clicked(bool)", True)
    finish(panel)
    assert "server error 503: busy" in panel.dialogs.errors[-1]
    assert panel.ui.segmentationSelector.currentNode().GetSegmentation().GetNumberOfSegments() == 0
    assert not panel.ui.undoButton.enabled


def test_cancel_stops_the_work_and_writes_nothing(panel):
    from MedSAMLib.client import Cancelled

    def segment_until_cancelled(
        session_id, box_ijk, axis="axial", propagate=True, points=None, progress=None, cancel=None, **kwargs
    ):
        progress(1, 5)
        while not cancel():  # the server working on slice 2 of 5
            time.sleep(0.01)
        raise Cancelled("segmentation cancelled")

    panel.client.segment = segment_until_cancelled
    panel.ui.segment3DButton.emit("clicked(bool)", True)
    task = panel.widget._task
    while task.progress() != (1, 5):
        time.sleep(0.01)
    panel.widget._poll_task()  # a timer tick: shows the progress, the task goes on
    assert panel.ui.progressBar.range == (0, 5) and panel.ui.progressBar.value == 1 and not task.done
    escape = next(s for s in MedSAM.qt.QShortcut.made if s.name == MedSAM.SHORTCUT_CANCEL and s._slots)
    escape.emit("activated()")
    finish(panel)
    assert panel.ui.statusLabel.text == "Cancelled; nothing was changed."
    assert panel.dialogs.errors == [] and not panel.widget.logic.can_undo()
    assert panel.ui.segmentationSelector.currentNode().GetSegmentation().GetNumberOfSegments() == 0


def test_the_view_under_the_mouse_sets_the_axis(panel):
    panel.crosshair.SetCursorPositionXYZ([10.0, 10.0, 0.0], panel.slice_nodes["Green"])
    panel.ui.sliceViewComboBox.setCurrentIndex(panel.ui.sliceViewComboBox.findData(""))
    panel.ui.segment3DButton.emit("clicked(bool)", True)
    finish(panel)
    assert panel.client.calls[-1][3] == "coronal"
    assert "coronal slices" in panel.ui.statusLabel.text


def test_test_connection_shows_the_server(panel):
    panel.ui.testConnectionButton.emit("clicked(bool)", True)
    finish(panel)
    assert panel.ui.connectionStatusLabel.text == "Connected: version test, variant threshold, device none"
    panel.ui.serverUrlLineEdit.text = "not a url"
    panel.ui.testConnectionButton.emit("clicked(bool)", True)
    assert "server address" in panel.dialogs.errors[-1]


def test_forget_agreement_asks_again(panel):
    panel.ui.segment3DButton.emit("clicked(bool)", True)
    finish(panel)
    panel.ui.forgetConsentButton.emit("clicked(bool)", True)
    assert "asked again" in panel.ui.connectionStatusLabel.text
    panel.ui.segment3DButton.emit("clicked(bool)", True)
    finish(panel)
    assert len(panel.dialogs.questions) == 2


def test_closing_the_scene_drops_a_running_result_and_the_history(panel):
    panel.ui.segment3DButton.emit("clicked(bool)", True)
    finish(panel)
    assert panel.widget.logic.can_undo()
    panel.ui.segment3DButton.emit("clicked(bool)", True)
    panel.widget.onSceneStartClose(None, None)
    finish(panel)
    assert panel.ui.statusLabel.text == "The scene was closed; the result was discarded."
    assert not panel.widget.logic.can_undo()


def test_starting_a_local_server_needs_a_python(panel):
    panel.ui.pythonPathLineEdit.currentPath = ""
    panel.ui.startServerButton.emit("clicked(bool)", True)
    assert "choose the Python" in panel.dialogs.errors[-1]
    assert panel.widget._task is None


def test_a_server_that_lost_the_image_gets_it_again_once(panel):
    panel.ui.segment3DButton.emit("clicked(bool)", True)
    finish(panel)
    panel.client.forget_all_sessions()  # the server restarted
    panel.ui.segment3DButton.emit("clicked(bool)", True)
    lost = panel.widget._task
    assert lost.wait(30)
    panel.widget._poll_task()  # fails with the lost session and starts the retry at once
    assert panel.widget._task is not None and panel.widget._task is not lost
    finish(panel)
    assert panel.dialogs.errors == []
    assert [c[0] for c in panel.client.calls].count("create_session") == 2
    assert panel.ui.statusLabel.text.startswith("Segment 'MedSAM':")


@pytest.mark.skipif(sys.platform == "win32", reason="uses a shell-script launcher")
def test_the_local_server_is_started_shown_and_stopped(panel, tmp_path, monkeypatch):
    from MedSAMLib import server_process
    from test_slicer_lib import FAKE_SERVER

    script = tmp_path / "fake_server.py"
    script.write_text(FAKE_SERVER)
    launcher = tmp_path / "python"
    launcher.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{script}" "$@"\n')
    launcher.chmod(0o755)
    environment = {"PATH": "/usr/bin:/bin", "FAKE_RECORD": str(tmp_path / "record.json"), "PYTHONHOME": "/slicer"}
    monkeypatch.setattr(slicer.util, "startupEnvironment", lambda: environment, raising=False)
    panel.ui.pythonPathLineEdit.currentPath = str(launcher)
    panel.ui.portSpinBox.value = server_process.free_port()
    panel.ui.variantComboBox.setCurrentIndex(panel.ui.variantComboBox.findData("tiny"))
    panel.ui.startServerButton.emit("clicked(bool)", True)
    assert "Starting the server" in panel.ui.statusLabel.text
    finish(panel)
    assert panel.dialogs.errors == []
    assert panel.ui.serverStateLabel.text.startswith("Running at http://127.0.0.1:")
    assert panel.ui.serverUrlLineEdit.text == panel.widget._local_server.url
    assert panel.ui.connectionStatusLabel.text == "Connected: variant fake"
    assert panel.ui.stopServerButton.enabled
    assert panel.settings["MedSAM/ServerPython"] == str(launcher)
    panel.ui.showServerLogButton.emit("clicked(bool)", True)
    assert "fake server starting" in panel.dialogs.infos[-1]
    server = panel.widget._local_server
    panel.ui.stopServerButton.emit("clicked(bool)", True)
    assert not server.is_running() and panel.ui.serverStateLabel.text == "Stopped."
    assert not panel.ui.stopServerButton.enabled


# -- issue 15: the extension inside a real 3D Slicer -------------------------------------------------


def test_a_quick_request_is_applied_in_the_tick_that_polls_it(panel):
    """Item 1: each timer tick waits on the task (GIL released, tasks.BackgroundTask.poll), so a request
    that ends within WORKER_TIME_PER_TICK_S is shown by that tick, not the next one 100 ms later."""
    health = panel.client.health
    panel.client.health = lambda: (time.sleep(0.005), health())[1]
    panel.ui.testConnectionButton.emit("clicked(bool)", True)
    panel.widget._poll_task()  # the first tick, right after the start
    assert panel.widget._task is None
    assert panel.ui.connectionStatusLabel.text.startswith("Connected:")


@pytest.mark.parametrize("view, axis", [("Yellow", "sagittal"), ("Green", "coronal")])
def test_the_last_view_under_the_mouse_is_remembered_after_the_mouse_left_it(panel, view, axis):
    """Item 2: vtkMRMLSliceViewInteractorStyle sets the cursor on MouseMoveEvent (SetCursorPositionXYZ with
    the view's slice node) and clears it on LeaveEvent (SetCursorPositionInvalid: slice node null;
    Libs/MRML/DisplayableManager/vtkMRMLSliceViewInteractorStyle.cxx, Slicer 5.6-5.10). Moving to the
    panel's button leaves the view, so the click must use the last view the mouse was in."""
    panel.ui.sliceViewComboBox.setCurrentIndex(panel.ui.sliceViewComboBox.findData(""))
    panel.crosshair.SetCursorPositionXYZ([20.0, 15.0, 0.0], panel.slice_nodes[view])  # drawing the box there
    panel.crosshair.SetCursorPositionInvalid()  # the mouse leaves the view for the panel
    assert panel.crosshair.GetCursorPositionXYZ([0.0, 0.0, 0.0]) is None
    panel.ui.segment3DButton.emit("clicked(bool)", True)
    finish(panel)
    assert panel.dialogs.errors == []
    assert panel.client.calls[-1][3] == axis
    assert f"{axis} slices" in panel.ui.statusLabel.text


def test_results_show_in_a_segmentation_made_by_the_selector(panel):
    """Item 4: the selector's "Create new Segmentation" (qMRMLNodeComboBox::addNode through
    qMRMLNodeFactory::createNode) adds a segmentation without display node; results must still show."""
    created = panel.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")  # what the node factory does
    assert created.GetDisplayNode() is None
    panel.ui.segmentationSelector.setCurrentNode(created)
    panel.ui.segment3DButton.emit("clicked(bool)", True)
    finish(panel)
    assert created.GetSegmentation().GetNumberOfSegments() == 1
    assert isinstance(created.GetDisplayNode(), slicer.vtkMRMLSegmentationDisplayNode)
    assert created.GetDisplayNode().GetVisibility()


def test_the_panel_works_without_a_main_window(monkeypatch):
    """Item 6: Slicer's generic module test builds the widget with --no-main-window
    (slicerMacroBuildScriptedModule WITH_GENERIC_TESTS, CMake/SlicerMacroBuildScriptedModule.cmake;
    qSlicerModuleGenericTest.py.in test_widgetRepresentation), where qSlicerApplication::layoutManager()
    is null: only qSlicerMainWindow sets it (Base/QTApp/qSlicerMainWindow.cxx)."""
    panel = make_panel(monkeypatch, main_window=False)
    try:
        combo = panel.ui.sliceViewComboBox
        assert [data for _, data in combo.items] == [""]  # only "Last view under the mouse"
        panel.ui.segment3DButton.emit("clicked(bool)", True)
        assert panel.widget._task is None
        assert len(panel.dialogs.errors) == 1 and "no slice view named Red" in panel.dialogs.errors[0]
        assert "Segment 3D:" in panel.ui.boxRangeLabel.text
    finally:
        close_panel(panel)


def test_slice_views_of_a_new_layout_are_listed(panel):
    """Item 6: qMRMLLayoutManager emits layoutChanged(int) after building the new layout's views
    (Libs/MRML/Widgets/qMRMLLayoutManager.cxx, setLayoutInternal): the list follows, keeping the choice."""
    combo = panel.ui.sliceViewComboBox
    assert [data for _, data in combo.items] == ["", "Red", "Yellow", "Green"]
    panel.slice_nodes["Slice4"] = add_slice_node(panel.scene, "Slice4", "coronal")
    panel.layout_manager.switch_layout(6)
    assert [data for _, data in combo.items] == ["", "Red", "Yellow", "Green", "Slice4"]
    assert combo.currentData == "Red"
    combo.setCurrentIndex(combo.findData("Slice4"))
    panel.ui.segment3DButton.emit("clicked(bool)", True)
    finish(panel)
    assert panel.client.calls[-1][3] == "coronal"
    panel.widget.cleanup()
    assert panel.layout_manager._slots == []  # a reloaded or closed panel is not called any more


def test_qt_settings_are_used_on_the_main_thread_only(panel):
    """Item 7: consent lives in QSettings, checked by prepare() on the main thread; the worker must not
    read it (the stand-in QSettings records the thread of every use)."""
    SETTINGS_THREADS.clear()
    panel.ui.segment3DButton.emit("clicked(bool)", True)
    finish(panel)
    assert panel.dialogs.errors == [] and panel.widget.logic.can_undo()
    assert SETTINGS_THREADS and set(SETTINGS_THREADS) == {threading.main_thread()}


def test_entering_the_module_makes_the_box_the_active_place_node(panel):
    """Item 8: vtkSlicerMarkupsLogic::OnMRMLSceneNodeAdded makes every markups node added the active place
    node (SetActiveList; Modules/Loadable/Markups/Logic, Slicer 5.6-5.10), so after the box and the two
    point lists the exclude points would be placed by the Markups toolbar. The box must be."""
    selection = panel.scene.GetNodeByID("vtkMRMLSelectionNodeSingleton")
    assert selection.GetActivePlaceNodeID() == panel.roi.GetID()
    assert selection.GetActivePlaceNodeClassName() == "vtkMRMLMarkupsROINode"
    # Re-entering with the nodes in place keeps what the user chose meanwhile.
    exclude = panel.ui.excludePointsSelector.currentNode()
    MedSAM.make_active_place_node(panel.scene, exclude)
    panel.widget.exit()
    panel.widget.enter()
    assert selection.GetActivePlaceNodeID() == exclude.GetID()


def test_the_panel_shows_the_slices_segment_3d_will_cover(panel):
    """Item 9: a box drawn in one slice view (two control points in that plane) gets a depth equal to its
    shortest in-plane side (vtkMRMLMarkupsROINode::UpdateBoxROIFromControlPoints, Libs/MRML/Core, run here
    by slicer-core's MRML). The panel shows the slices that depth covers before anything is sent, and
    follows the box as it is resized."""
    roi = panel.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "drawn in Red")
    roi.AddControlPoint(vtk.vtkVector3d(-8.0, -6.0, 1.0))  # the two corners, clicked on the axial slice z = 1
    roi.AddControlPoint(vtk.vtkVector3d(14.0, 3.0, 1.0))
    assert roi.GetSize()[2] == pytest.approx(9.0)  # the shortest in-plane side (22 x 9 mm)
    panel.ui.roiSelector.setCurrentNode(roi)
    shown = panel.ui.boxRangeLabel.text
    assert "axial slices" in shown and "9.0 mm deep" in shown
    panel.ui.segment3DButton.emit("clicked(bool)", True)
    finish(panel)
    result = panel.ui.statusLabel.text
    covered = result.split("axial slices ")[1].split(" ")[0].rstrip(".")
    assert f"axial slices {covered} " in shown  # what was shown is what Segment 3D did
    roi.SetSize(22.0, 9.0, 24.0)  # resized in a perpendicular view
    assert panel.ui.boxRangeLabel.text != shown and "24.0 mm deep" in panel.ui.boxRangeLabel.text
    panel.ui.sliceViewComboBox.setCurrentIndex(panel.ui.sliceViewComboBox.findData("Yellow"))
    assert "sagittal slices" in panel.ui.boxRangeLabel.text


def test_reload_reloads_the_library_too(panel, monkeypatch):
    """Item 10: slicer.util.reloadScriptedModule re-executes MedSAM.py only (Base/Python/slicer/util.py,
    Slicer 5.6-5.10), whose imports would get the MedSAMLib modules already loaded."""
    saved = {name: module for name, module in sys.modules.items() if name.split(".")[0] in ("MedSAM", "MedSAMLib")}

    def reload_like_slicer(module_name):
        """What reloadScriptedModule does to the code (Slicer 5.10: importlib from the module's file)."""
        spec = importlib.util.spec_from_file_location(module_name, MODULE_DIR / f"{module_name}.py")
        reloaded = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = reloaded
        spec.loader.exec_module(reloaded)

    def failing_reload(module_name):
        raise SyntaxError("a bad edit in MedSAMLib/geometry.py")

    try:
        old_geometry = sys.modules["MedSAMLib.geometry"]
        monkeypatch.setattr(slicer.util, "reloadScriptedModule", reload_like_slicer)
        panel.widget.onReload()
        assert sys.modules["MedSAMLib.geometry"] is not old_geometry
        assert sys.modules["MedSAM"].geometry is sys.modules["MedSAMLib.geometry"]

        working = {name: module for name, module in sys.modules.items() if name.startswith("MedSAMLib")}
        monkeypatch.setattr(slicer.util, "reloadScriptedModule", failing_reload)
        with pytest.raises(SyntaxError):
            panel.widget.onReload()
        assert {name: module for name, module in sys.modules.items() if name.startswith("MedSAMLib")} == working
    finally:
        for name in [name for name in sys.modules if name.split(".")[0] in ("MedSAM", "MedSAMLib")]:
            del sys.modules[name]
        sys.modules.update(saved)


# -- issue 16 item 9: the module per Slicer's scripted-module template ---------------------------------------


def test_the_panels_choices_are_the_parameter_nodes(panel):
    """The widgets write into the parameter node and show what it holds (whoever changed it: a script here)."""
    ui, parameters = panel.ui, panel.widget._parameterNode
    raw = parameters.parameterNode
    assert raw.GetSingletonTag() == "MedSAM" and panel.scene.GetNodeByID(raw.GetID()) is raw
    assert parameters.inputVolume is panel.volume and parameters.box is panel.roi and parameters.sliceView == "Red"
    assert parameters.modality == "ct"  # guessed when the volume was chosen
    ui.mergeComboBox.setCurrentIndex(ui.mergeComboBox.findData("add"))
    ui.windowComboBox.setCurrentIndex(ui.windowComboBox.findData("custom"))
    ui.windowLevelSpinBox.value = -600.0
    ui.newSegmentNameLineEdit.text = "left lung"
    assert (
        raw.GetParameter("merge"),
        raw.GetParameter("windowPreset"),
        raw.GetParameter("windowLevel"),
        raw.GetParameter("newSegmentName"),
    ) == ("add", "custom", "-600.0", "left lung")
    assert ui.windowLevelSpinBox.enabled and (ui.windowLevelSpinBox.minimum, ui.windowLevelSpinBox.maximum) == (
        MedSAM.WINDOW_LEVEL_RANGE
    )

    parameters.modality = "mr"
    parameters.sliceView = "Green"
    other = panel.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "other")
    other.GetSegmentation().AddEmptySegment("kidney", "kidney")
    parameters.segmentation = other
    parameters.segmentID = "kidney"
    assert ui.modalityComboBox.currentData == "mr" and not ui.windowComboBox.enabled
    assert ui.sliceViewComboBox.currentData == "Green" and "coronal slices" in ui.boxRangeLabel.text
    assert ui.segmentationSelector.currentNode() is other
    assert ui.segmentComboBox.currentData == "kidney" and not ui.newSegmentNameLineEdit.enabled
    ui.segment3DButton.emit("clicked(bool)", True)
    finish(panel)
    assert panel.dialogs.errors == [] and panel.client.calls[-1][3] == "coronal"
    assert [c[2:] for c in panel.client.calls if c[0] == "create_session"] == [("mr", None)]
    assert other.GetSegmentation().GetNumberOfSegments() == 1 and "Segment 'kidney'" in ui.statusLabel.text


def test_a_parameter_node_changed_while_hidden_shows_on_enter_and_keeps_its_modality(panel):
    """A scene loaded (or a script run) while the module is not shown: entering shows the node's choices; the
    modality chosen in it is kept, not guessed again from the volume (a CT volume segmented as MR here)."""
    exit_module(panel.widget)
    segmentation = panel.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "saved")
    kept = segmentation.GetSegmentation().AddEmptySegment("", "spleen")
    stored = MedSAM.MedSAMParameterNode(panel.widget._parameterNode.parameterNode)  # another wrapper, as a loader's
    loaded_volume = add_volume(panel.scene, *layout_of(phantom_ras(), LAYOUTS["lps"]), name="loaded")  # air: CT-like
    stored.inputVolume, stored.modality = loaded_volume, "mr"
    stored.segmentation, stored.segmentID, stored.sliceView = segmentation, kept, "Yellow"
    assert panel.ui.modalityComboBox.currentData == "ct"  # the hidden panel does not follow
    enter_module(panel.widget)
    ui = panel.ui
    assert ui.volumeSelector.currentNode() is loaded_volume and ui.modalityComboBox.currentData == "mr"
    assert ui.segmentationSelector.currentNode() is segmentation and ui.segmentComboBox.currentData == kept
    assert ui.sliceViewComboBox.currentData == "Yellow"
    assert [text for text, _ in ui.segmentComboBox.items] == ["spleen", "New segment"]


def test_leaving_the_module_stops_the_panel_writing_into_the_parameter_node(panel):
    """The template's connectGui returns no tag before Slicer 5.10 (wrapper.py at v5.8.0), so its exit() could
    not disconnect; the panel connects with connectParametersToGui and disconnects on exit."""
    parameters = panel.widget._parameterNode
    exit_module(panel.widget)
    panel.ui.mergeComboBox.setCurrentIndex(panel.ui.mergeComboBox.findData("add"))
    panel.ui.newSegmentNameLineEdit.text = "typed while hidden"
    assert parameters.merge == "replace" and parameters.newSegmentName == MedSAM.DEFAULT_SEGMENT_NAME
    enter_module(panel.widget)
    assert panel.ui.mergeComboBox.currentData == "replace"  # the node's value is shown again
    assert panel.ui.newSegmentNameLineEdit.text == MedSAM.DEFAULT_SEGMENT_NAME


def test_closing_the_scene_gives_the_panel_a_fresh_parameter_node(panel):
    """scene.Clear(0) (File > Close Scene) invokes StartCloseEvent, resets the singleton parameter node and
    invokes EndCloseEvent: the shown panel starts again on the reset node, with new nodes to draw with."""
    panel.ui.mergeComboBox.setCurrentIndex(panel.ui.mergeComboBox.findData("add"))
    panel.ui.segment3DButton.emit("clicked(bool)", True)
    finish(panel)
    old_box, raw = panel.roi, panel.widget._parameterNode.parameterNode
    assert panel.widget.logic.can_undo()
    panel.scene.Clear(0)
    parameters = panel.widget._parameterNode
    assert parameters is not None and parameters.parameterNode is raw
    assert parameters.inputVolume is None and parameters.segmentation is None and parameters.merge == "replace"
    assert parameters.box is not None and parameters.box is not old_box and parameters.box.GetScene() is panel.scene
    assert panel.ui.roiSelector.currentNode() is parameters.box and panel.ui.roiPlaceWidget.node is parameters.box
    assert panel.ui.mergeComboBox.currentData == "replace" and not panel.ui.segment3DButton.enabled
    assert not panel.widget.logic.can_undo()
    panel.ui.mergeComboBox.setCurrentIndex(panel.ui.mergeComboBox.findData("add"))
    assert parameters.merge == "add"  # the panel writes into the new scene's node


def test_a_closed_scene_is_not_reinitialized_while_the_module_is_hidden(panel):
    exit_module(panel.widget)
    panel.scene.Clear(0)
    assert panel.widget._parameterNode is None
    assert panel.scene.GetNumberOfNodesByClass("vtkMRMLMarkupsROINode") == 0  # nothing made behind the user's back
    enter_module(panel.widget)
    assert panel.widget._parameterNode is not None and panel.ui.roiSelector.currentNode() is not None


def test_a_new_scene_starts_with_the_last_ct_window(panel):
    """The CT window the user last segmented with is a preference (Qt settings); a scene without MedSAM choices
    starts with it, a scene with its own keeps its own."""
    panel.ui.windowComboBox.setCurrentIndex(panel.ui.windowComboBox.findData("lung"))
    panel.ui.segment3DButton.emit("clicked(bool)", True)
    finish(panel)
    assert panel.settings["MedSAM/CTWindow"] == "lung"
    panel.scene.Clear(0)
    assert panel.widget._parameterNode.windowPreset == "lung"
    assert panel.ui.windowComboBox.currentData == "lung"
    panel.settings["MedSAM/CTWindow"] = "no such window"  # from another version: ignored
    panel.scene.Clear(0)
    assert panel.widget._parameterNode.windowPreset == "abdomen"


def test_a_segment_that_is_gone_gives_way_to_new_segment(panel):
    panel.ui.segment3DButton.emit("clicked(bool)", True)
    finish(panel)
    parameters = panel.widget._parameterNode
    assert parameters.segmentID and panel.ui.segmentComboBox.currentData == parameters.segmentID
    panel.ui.undoButton.emit("clicked(bool)", True)  # undoing the action that made the segment removes it
    assert parameters.segmentID == "" and panel.ui.segmentComboBox.currentData == ""
    assert panel.ui.newSegmentNameLineEdit.enabled
