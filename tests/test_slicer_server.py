"""The Slicer module against a real ``medsam serve`` (tiny model, random weights, CPU).

The server is started the way the module's "Start local server" does (MedSAMLib.server_process),
and the Logic runs on MRML nodes built with slicer-core. Results are compared voxel for voxel with
``medsam segment`` for the same box, and the same physical box on a volume stored RAS, LPS and
with permuted axes must give the same physical segmentation.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="needs the slicer-core package (Linux, Python 3.11)")
pytest.importorskip("fastapi", reason="needs medsam-monai[serve]")
pytest.importorskip("uvicorn", reason="needs medsam-monai[serve]")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "slicer_extension" / "MedSAM"))

import MedSAM  # noqa: E402
from MedSAMLib import consent, server_process, tasks  # noqa: E402
from MedSAMLib.client import Cancelled, MedSAMClient, NotFound  # noqa: E402
from MedSAMLib.testing import stored_in_layout  # noqa: E402
from test_slicer_logic import LAYOUTS, VIEWS, add_roi, add_volume, to_ras_order  # noqa: E402

from medsam_monai.checkpoints import TINY_DEMO_CHECKPOINT  # noqa: E402
from medsam_monai.cli import main as medsam_main  # noqa: E402
from medsam_monai.io import read_volume, write_volume  # noqa: E402
from medsam_monai.phantom import ct_phantom  # noqa: E402

SPACING = (3.0, 3.0, 5.0)


@pytest.fixture(scope="module")
def tiny_checkpoint():
    """The packaged tiny demo model (trained on phantoms), so that masks are meaningful as well as equal."""
    return TINY_DEMO_CHECKPOINT


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tmp_path_factory):
    """``python -m medsam_monai.cli serve --variant tiny --checkpoint ... --port <free>``, started and stopped
    by the module's own process management."""
    settings = server_process.ServerSettings(
        python=sys.executable,
        port=server_process.free_port(),
        variant="tiny",
        checkpoint=str(tiny_checkpoint),
        # No background encoding: the tests' two CPU cores go to the slices they ask for.
        extra_arguments=("--prefetch-slices", "0"),
    )
    local = server_process.LocalServer(settings, log_path=str(tmp_path_factory.mktemp("log") / "server.log"))
    local.start()
    try:
        health = local.wait_until_ready(timeout=180, interval=0.2)
        assert health["variant"] == "tiny"
        yield local
    finally:
        local.stop()
    assert not local.is_running()


@pytest.fixture(scope="module")
def phantom():
    """An abdomen-like CT in RAS voxel order, and an RAS box around its organ spanning 3 axial slices."""
    volume = ct_phantom(shape=(40, 36, 9), spacing=SPACING).volume
    array = volume.array
    i0, j0, _, i1, j1, _ = ct_phantom(shape=(40, 36, 9), spacing=SPACING).organ_box
    centre = np.array(SPACING) * (np.array(array.shape) - 1) / 2  # the test layouts put RAS 0 at the centre
    low = np.array([i0, j0, 3]) * SPACING - centre - 0.4 * np.array(SPACING)
    high = np.array([i1, j1, 5]) * SPACING - centre + 0.4 * np.array(SPACING)
    return array, low, high


@pytest.fixture
def logic(server):
    store = consent.ConsentStore.in_memory()
    store.grant(server.url)
    return MedSAM.MedSAMLogic(slicer.vtkMRMLScene(), store)


def test_client_talks_to_the_server(server, logic, phantom):
    client = MedSAMClient(server.url, timeout=60)
    health = client.health()
    assert health["status"] == "ok" and health["variant"] == "tiny" and health["auth_required"] is False
    assert server_process.probe_health(server.url)["variant"] == "tiny"
    # The Logic's uploads are closed on the server when it forgets them (scene closed).
    array_ras, low, high = phantom
    volume = add_volume(logic.scene, *stored_in_layout(array_ras, LAYOUTS["ras"], SPACING))
    segmentation = logic.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    request = logic.prepare(
        volume, segmentation, add_roi(logic.scene, low, high), VIEWS["axial"], MedSAM.ACTION_SLICE, server_url=server.url
    )
    created = []

    class RecordingClient(MedSAMClient):
        def create_session(self, *args, **kwargs):
            created.append(super().create_session(*args, **kwargs))
            return created[-1]

    logic.run(RecordingClient(server.url, timeout=60), request)
    (session_id,) = created
    assert client.session_info(session_id)["shape"] == list(array_ras.shape)
    logic.forget_sessions(close_on_server=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            client.session_info(session_id)
        except NotFound:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the session was not closed on the server")


def test_the_logic_writes_what_medsam_segment_writes_in_every_voxel_order(server, logic, phantom, tiny_checkpoint, tmp_path):
    array_ras, low, high = phantom
    scene = logic.scene
    client = logic.client_for(server.url)
    masks = {}
    for name in ("permuted", "lps", "ras"):
        array, ijk_to_ras = stored_in_layout(array_ras, LAYOUTS[name], SPACING)
        volume = add_volume(scene, array, ijk_to_ras, name)
        segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        request = logic.prepare(
            volume,
            segmentation,
            add_roi(scene, low, high),
            VIEWS["axial"],
            MedSAM.ACTION_3D,
            new_segment_name="organ",
            server_url=server.url,
        )
        assert request.slice_range[1] - request.slice_range[0] == 2  # three axial slices
        labels = logic.run(client, request)
        result = logic.apply(request, labels)
        mask_ijk = logic.read_segment(segmentation, result.segment_id, volume).transpose(2, 1, 0)
        masks[name] = to_ras_order(mask_ijk, LAYOUTS[name])
        if name == "permuted":
            # `medsam segment` on the same voxels, file and box: the same voxels, one for one.
            image = tmp_path / "permuted.nii.gz"
            write_volume(image, array, ijk_to_ras)
            out = tmp_path / "cli.seg.nrrd"
            box = ",".join(str(v) for v in request.box_ijk)
            assert (
                medsam_main(
                    [
                        "segment",
                        str(image),
                        "--box",
                        box,
                        "--axis",
                        "axial",
                        "--modality",
                        "ct",
                        "--window",
                        "abdomen",
                        "--variant",
                        "tiny",
                        "--checkpoint",
                        str(tiny_checkpoint),
                        "--out",
                        str(out),
                    ]
                )
                == 0
            )
            cli_labels = read_volume(out).array
            np.testing.assert_array_equal(mask_ijk, (cli_labels > 0).astype(np.uint8))
            # Saved by Slicer as .seg.nrrd and loaded again: the same voxels.
            saved = tmp_path / "slicer.seg.nrrd"
            storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
            storage.SetFileName(str(saved))
            assert storage.WriteData(segmentation)
            loaded = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
            reader = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
            reader.SetFileName(str(saved))
            assert reader.ReadData(loaded)
            loaded_id = loaded.GetSegmentation().GetSegmentIdBySegmentName("organ")
            np.testing.assert_array_equal(logic.read_segment(loaded, loaded_id, volume).transpose(2, 1, 0), mask_ijk)
    assert masks["permuted"].sum() > 0
    np.testing.assert_array_equal(masks["lps"], masks["permuted"])
    np.testing.assert_array_equal(masks["ras"], masks["permuted"])


def test_segment_slice_in_a_worker_thread_equals_the_3d_key_slice(server, logic, phantom):
    array_ras, low, high = phantom
    scene = logic.scene
    array, ijk_to_ras = stored_in_layout(array_ras, LAYOUTS["lps"], SPACING)
    volume = add_volume(scene, array, ijk_to_ras)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    roi = add_roi(scene, low, high)
    client = logic.client_for(server.url)
    three_d = logic.segment(
        client, volume, segmentation, roi, VIEWS["axial"], MedSAM.ACTION_3D, new_segment_name="3d", server_url=server.url
    )
    key_slice = (three_d.first_slice + three_d.last_slice) // 2
    view = VIEWS["axial"].copy()
    view[2, 3] = (key_slice - (array.shape[2] - 1) / 2) * SPACING[2]  # the view on the key slice

    # As the module's panel does it: prepare here, run in a thread polled for progress, apply here.
    request = logic.prepare(volume, segmentation, roi, view, MedSAM.ACTION_SLICE, new_segment_name="slice", server_url=server.url)
    seen = []
    task = tasks.BackgroundTask(lambda progress, cancelled: logic.run(client, request, progress, cancelled)).start()
    while not task.wait(0.05):
        seen.append(task.progress())
    one = logic.apply(request, task.result())
    assert (one.first_slice, one.last_slice) == (key_slice, key_slice)
    assert task.progress() == (1, 1)

    slice_mask = logic.read_segment(segmentation, one.segment_id, volume)
    full_mask = logic.read_segment(segmentation, three_d.segment_id, volume)
    assert slice_mask[key_slice].sum() > 0
    # The key slice of 3D propagation gets the user's box exactly as a single-slice request does.
    np.testing.assert_array_equal(slice_mask[key_slice], full_mask[key_slice])
    assert slice_mask.sum() == slice_mask[key_slice].sum()


def test_cancelling_leaves_the_segment_as_it_was(server, logic, phantom):
    array_ras, low, high = phantom
    scene = logic.scene
    volume = add_volume(scene, *stored_in_layout(array_ras, LAYOUTS["ras"], SPACING))
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    segment = segmentation.GetSegmentation().AddEmptySegment("", "mine")
    painted = np.zeros(slicer.util.arrayFromVolume(volume).shape, np.uint8)
    painted[3:6, 10:20, 10:20] = 1
    logic.write_segment(segmentation, segment, volume, painted)
    with pytest.raises(Cancelled):
        logic.segment(
            logic.client_for(server.url),
            volume,
            segmentation,
            add_roi(scene, low, high),
            VIEWS["axial"],
            MedSAM.ACTION_3D,
            segment_id=segment,
            server_url=server.url,
            cancel=lambda: True,
        )
    np.testing.assert_array_equal(logic.read_segment(segmentation, segment, volume), painted)
    assert not logic.can_undo()
