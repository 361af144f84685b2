"""The module's parameter node (issue 16 item 9): the scene's choices in a vtkMRMLScriptedModuleNode.

Slicer's scripted-module template keeps a module's state in a parameter node wrapped by
``slicer.parameterNodeWrapper``; slicer-core (MRML without Qt) has no such module, so MedSAM.py takes
MedSAMLib.testing's stand-in then. These tests check the stand-in keeps values where and how Slicer's
serializers keep them (Base/Python/slicer/parameterNodeWrapper/serializers.py, v5.8.0 and v5.10.0), so a
scene saved outside Slicer opens in Slicer, and that the Logic works from the parameter node alone. The
panel's side is in test_slicer_widget.py.
"""

from __future__ import annotations

import ast
import sys
import types
import unittest
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="needs the slicer-core package (Linux, Python 3.11)")

MODULE_DIR = Path(__file__).resolve().parents[1] / "slicer_extension" / "MedSAM"
sys.path.insert(0, str(MODULE_DIR))

import MedSAM  # noqa: E402
from MedSAMLib import consent  # noqa: E402
from MedSAMLib import testing as stand_ins  # noqa: E402
from MedSAMLib.testing import ThresholdClient  # noqa: E402
from test_slicer_logic import (  # noqa: E402
    BOX_HIGH,
    BOX_LOW,
    LAYOUTS,
    THRESHOLD,
    URL,
    VIEWS,
    add_roi,
    add_volume,
    expected_mask_ras,
    layout_of,
    phantom_ras,
    to_ras_order,
)


@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


@pytest.fixture
def logic(scene):
    store = consent.ConsentStore.in_memory()
    store.grant(URL)
    return MedSAM.MedSAMLogic(scene, store)


def add_slice_view(scene, name, orientation):
    """A slice node named as the layout names its views ("Red", "Green"...), for sliceView to find."""
    node = slicer.vtkMRMLSliceNode()
    node.SetName(name)
    node.SetLayoutName(name)
    node.GetSliceToRAS().DeepCopy(MedSAM._matrix_from_array(VIEWS[orientation]))
    scene.AddNode(node)
    return node


def test_the_module_uses_slicer_core_without_slicers_wrapper():
    """What these tests exercise: slicer-core has neither application module, so the stand-ins are in use."""
    assert MedSAM.parameterNodeWrapper is stand_ins.parameterNodeWrapper
    assert MedSAM.ScriptedLoadableModuleLogic is stand_ins.ScriptedLoadableModuleLogic
    assert stand_ins.isParameterNodeWrapper(MedSAM.MedSAMParameterNode)


def test_values_are_kept_as_slicers_serializers_keep_them(scene):
    """Number, str and bool members are one text parameter; a node member is a node reference of that name plus
    an empty parameter (NodeSerializer), so None and "never written" differ."""
    raw = scene.AddNode(slicer.vtkMRMLScriptedModuleNode())
    parameters = MedSAM.MedSAMParameterNode(raw)
    assert raw.GetParameter("merge") == "replace" and raw.GetParameter("windowWidth") == "400.0"  # defaults
    assert raw.HasParameter("inputVolume") and raw.GetParameter("inputVolume") == ""
    assert raw.GetNodeReferenceID("inputVolume") is None and parameters.inputVolume is None
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    parameters.inputVolume = volume
    parameters.windowLevel = -600
    assert raw.GetNodeReferenceID("inputVolume") == volume.GetID() and parameters.inputVolume is volume
    assert raw.GetParameter("windowLevel") == "-600" and parameters.windowLevel == -600.0
    parameters.inputVolume = None
    assert raw.GetNodeReferenceID("inputVolume") is None and raw.HasParameter("inputVolume")

    @stand_ins.parameterNodeWrapper
    class Flags:
        shown: bool = True
        count: int = 3

    flags = Flags(scene.AddNode(slicer.vtkMRMLScriptedModuleNode()))
    assert flags.parameterNode.GetParameter("shown") == "True" and flags.parameterNode.GetParameter("count") == "3"
    flags.shown = False
    assert flags.parameterNode.GetParameter("shown") == "False" and flags.shown is False


def test_values_that_do_not_fit_are_refused_and_nothing_changes(scene):
    parameters = MedSAM.MedSAMParameterNode(scene.AddNode(slicer.vtkMRMLScriptedModuleNode()))
    before = parameters.parameterNode.GetParameterNamesAsCommaSeparatedList(), parameters.merge
    with pytest.raises(ValueError, match="must be in one of"):
        parameters.merge = "sideways"
    with pytest.raises(ValueError, match="within range"):
        parameters.windowWidth = 0.0
    with pytest.raises(TypeError, match="must be of type"):
        parameters.inputVolume = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    with pytest.raises(ValueError, match="Cannot find a param"):
        parameters.getValue("serverUrl")
    assert (parameters.parameterNode.GetParameterNamesAsCommaSeparatedList(), parameters.merge) == before
    assert parameters.inputVolume is None and parameters.windowWidth == 400.0

    with pytest.raises(TypeError, match="member thing"):

        @stand_ins.parameterNodeWrapper
        class Broken:
            thing: complex  # no serializer, in Slicer's wrapper either


def test_a_saved_scene_brings_the_choices_back(scene, logic, tmp_path):
    """The point of a parameter node: the choices are saved with the scene (MRML) and come back when it opens."""
    parameters = logic.getParameterNode()
    parameters.inputVolume = add_volume(scene, *layout_of(phantom_ras(), LAYOUTS["lps"]), name="abdomen CT")
    logic.ensure_prompt_nodes(parameters)
    parameters.segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "liver work")
    parameters.merge, parameters.sliceView, parameters.windowPreset, parameters.windowWidth = "add", "Green", "custom", 350.0
    scene.SetURL(str(tmp_path / "scene.mrml"))
    assert scene.Commit()

    loaded = slicer.vtkMRMLScene()
    loaded.SetURL(str(tmp_path / "scene.mrml"))
    assert loaded.Connect()
    again = MedSAM.MedSAMLogic(loaded).getParameterNode()
    assert again.parameterNode is not parameters.parameterNode
    assert (again.merge, again.sliceView, again.windowPreset, again.windowWidth) == ("add", "Green", "custom", 350.0)
    assert again.inputVolume.GetName() == "abdomen CT" and again.inputVolume.GetScene() is loaded
    assert again.segmentation.GetName() == "liver work"
    assert [again.getValue(m).GetName() for m in ("box", "includePoints", "excludePoints")] == [
        "MedSAM box",
        "MedSAM include",
        "MedSAM exclude",
    ]


def test_one_parameter_node_per_scene_reset_when_the_scene_closes(scene, logic):
    """ScriptedLoadableModuleLogic.getParameterNode's rules (Base/Python/slicer/ScriptedLoadableModule.py): one
    singleton vtkMRMLScriptedModuleNode tagged with the module name; a scene close resets it."""
    first = logic.getParameterNode({"windowPreset": "lung"})
    assert first.parameterNode.GetSingletonTag() == "MedSAM" and first.parameterNode.GetAttribute("ModuleName") == "MedSAM"
    assert first.windowPreset == "lung"  # a new node takes the defaults given
    first.windowPreset = "bone"
    again = logic.getParameterNode({"windowPreset": "lung"})
    assert again.parameterNode is first.parameterNode and again.windowPreset == "bone"  # an existing one keeps its own
    assert scene.GetNumberOfNodesByClass("vtkMRMLScriptedModuleNode") == 1

    first.inputVolume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    scene.Clear(0)  # File > Close Scene: singletons stay, reset
    after = logic.getParameterNode({"windowPreset": "lung"})
    assert after.parameterNode is first.parameterNode
    assert after.parameterNode.GetAttribute("ModuleName") == "MedSAM"
    assert after.inputVolume is None and after.merge == "replace" and after.windowPreset == "lung"


def test_the_logic_segments_from_the_parameter_node_alone(scene, logic):
    """No widget: what the panel's buttons do, from the parameter node's choices (MedSAMLogic.segment_with_parameters)."""
    array_ras = phantom_ras()
    parameters = logic.getParameterNode()
    parameters.inputVolume = add_volume(scene, *layout_of(array_ras, LAYOUTS["permuted"]))
    parameters.box = add_roi(scene, BOX_LOW, BOX_HIGH)
    for name, orientation in (("Red", "axial"), ("Green", "coronal")):
        add_slice_view(scene, name, orientation)
    parameters.sliceView = "Green"
    parameters.newSegmentName = "  organ "
    client = ThresholdClient(THRESHOLD)

    first = logic.segment_with_parameters(client, parameters, MedSAM.ACTION_3D, server_url=URL)
    assert (first.segment_name, first.axis, first.created_segment) == ("organ", "coronal", True)
    assert parameters.segmentation.GetName() == "MedSAM segmentation"  # made, as none was chosen
    assert parameters.segmentID == first.segment_id
    mask = to_ras_order(
        logic.read_segment(parameters.segmentation, first.segment_id, parameters.inputVolume).transpose(2, 1, 0),
        LAYOUTS["permuted"],
    )
    np.testing.assert_array_equal(mask, expected_mask_ras(array_ras, BOX_LOW, BOX_HIGH))
    sent = client.calls[-1]
    assert sent[0] == "segment" and sent[3] == "coronal" and sent[4] is True
    assert client.calls[0][2:] == ("ct", "abdomen")

    parameters.sliceView = ""  # the view the mouse was last in, else Red
    parameters.merge, parameters.modality = "add", "mr"
    second = logic.segment_with_parameters(client, parameters, MedSAM.ACTION_SLICE, server_url=URL, last_slice_node_id=None)
    assert second.segment_id == first.segment_id and not second.created_segment and second.axis == "axial"
    assert [c[2:] for c in client.calls if c[0] == "create_session"][-1] == ("mr", None)
    green = scene.GetFirstNodeByName("Green")
    third = logic.segment_with_parameters(
        client, parameters, MedSAM.ACTION_SLICE, server_url=URL, last_slice_node_id=green.GetID()
    )
    assert third.axis == "coronal"


def test_parameter_node_problems_are_explained(scene, logic):
    parameters = logic.getParameterNode()
    with pytest.raises(MedSAM.MedSAMError, match="Select a volume"):
        logic.prepare_from_parameters(parameters, MedSAM.ACTION_3D, URL)
    assert parameters.segmentation is None  # nothing made without a volume
    parameters.inputVolume = add_volume(scene, *layout_of(phantom_ras(), LAYOUTS["ras"]))
    parameters.box = add_roi(scene, BOX_LOW, BOX_HIGH)
    with pytest.raises(MedSAM.MedSAMError, match="no slice view named Red"):
        logic.prepare_from_parameters(parameters, MedSAM.ACTION_3D, URL)
    parameters.sliceView = "Slice4"
    with pytest.raises(MedSAM.MedSAMError, match="no slice view named Slice4"):
        logic.prepare_from_parameters(parameters, MedSAM.ACTION_3D, URL)
    add_slice_view(scene, "Slice4", "sagittal")
    parameters.segmentID = "gone"
    with pytest.raises(MedSAM.MedSAMError, match="no longer in"):
        logic.prepare_from_parameters(parameters, MedSAM.ACTION_3D, URL)
    parameters.segmentID = ""
    assert logic.prepare_from_parameters(parameters, MedSAM.ACTION_3D, URL).axis == "sagittal"


def test_prompt_nodes_are_made_once(scene, logic):
    parameters = logic.getParameterNode()
    assert logic.ensure_prompt_nodes(parameters)
    made = [parameters.getValue(m) for m in ("box", "includePoints", "excludePoints")]
    assert [type(n).__name__ for n in made] == [
        "vtkMRMLMarkupsROINode",
        "vtkMRMLMarkupsFiducialNode",
        "vtkMRMLMarkupsFiducialNode",
    ]
    assert made[1].GetDisplayNode().GetSelectedColor() != made[2].GetDisplayNode().GetSelectedColor()
    assert not logic.ensure_prompt_nodes(parameters)
    assert scene.GetNumberOfNodesByClass("vtkMRMLMarkupsNode") == 3


def test_the_self_test_segments_through_the_parameter_node():
    outcome = unittest.TextTestRunner(verbosity=0).run(MedSAM.MedSAMTest("test_parameter_node_drives_a_segmentation"))
    assert outcome.wasSuccessful() and outcome.testsRun == 1, outcome.failures + outcome.errors


def test_the_stand_ins_and_the_phantom_live_outside_the_module_file():
    """Item 9: MedSAM.py holds the module (Module, ParameterNode, Logic, Widget, Test) and no stand-in or phantom;
    MedSAMLib/testing.py, which has them, imports nothing of Slicer, VTK or Qt."""
    tree = ast.parse((MODULE_DIR / "MedSAM.py").read_text())
    fallbacks = [node for node in ast.walk(tree) if isinstance(node, ast.Try)]
    defined_in_fallbacks = [
        n.name for t in fallbacks for h in t.handlers for n in ast.walk(h) if isinstance(n, (ast.ClassDef, ast.FunctionDef))
    ]
    assert defined_in_fallbacks == []
    top_level = {node.name for node in tree.body if isinstance(node, (ast.ClassDef, ast.FunctionDef))}
    assert not {name for name in top_level if "phantom" in name.lower() or name.startswith("ScriptedLoadable")}
    assert {"MedSAM", "MedSAMParameterNode", "MedSAMLogic", "MedSAMWidget", "MedSAMTest"} <= top_level
    library = ast.parse((MODULE_DIR / "MedSAMLib" / "testing.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(library) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(library) if isinstance(node, ast.ImportFrom) and node.module}
    assert not imported & {"slicer", "vtk", "vtkmodules", "qt", "ctk"}


class UiWidget:
    """The least a connector needs of a widget: its Qt class name and the properties it sets."""

    def __init__(self, cls):
        self.cls = cls

    def className(self):
        return self.cls


def test_every_parameter_is_shown_by_one_widget_that_can_show_it():
    """The .ui file's SlicerParameterName properties and the panel's combo box connectors together cover every member
    of MedSAMParameterNode once, each with a widget class the wrapper can connect (as Slicer's, by class)."""
    root = ET.parse(MODULE_DIR / "Resources" / "UI" / "MedSAM.ui").getroot()
    by_ui = {
        p.findtext("string"): w.get("class")
        for w in root.iter("widget")
        for p in w.findall("property")
        if p.get("name") == "SlicerParameterName"
    }
    assert all(p.get("stdset") == "0" for p in root.iter("property") if p.get("name") == "SlicerParameterName")
    panel = types.SimpleNamespace(
        ui=types.SimpleNamespace(**{w.get("name"): UiWidget(w.get("class")) for w in root.iter("widget")})
    )
    by_combo_box = MedSAM.MedSAMWidget._combo_box_connectors(panel)
    assert not set(by_ui) & set(by_combo_box)
    assert set(by_ui) | set(by_combo_box) == set(MedSAM.MedSAMParameterNode.allParameters)
    for name, cls in by_ui.items():
        stand_ins.createGuiConnector(UiWidget(cls), MedSAM.MedSAMParameterNode.dataType(name))  # raises if none fits
    for name, connector in by_combo_box.items():
        assert connector.widget().className() == "QComboBox"
        assert MedSAM.ComboBoxDataConnector.canRepresent(
            types.SimpleNamespace(findData=None), MedSAM.MedSAMParameterNode.dataType(name)
        )
