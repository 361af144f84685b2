"""MONAI's bundle contract for bundles/medsam_vit_b: the properties MONAI tools read (Model Zoo CI, MONAI Label,
MONAI Deploy) exist and are working objects, the ``evaluator`` is an ignite engine that keeps a failed case to
itself, ``dataset_dir`` and ``series_uid`` reach the files, and evaluation saves MONAI's metric reports."""

from __future__ import annotations

import csv
import json
import shutil
import socket
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigWorkflow
from monai.data import Dataset, MetaTensor
from monai.engines import Evaluator, SupervisedEvaluator, SupervisedTrainer
from monai.transforms import Compose
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from medsam_monai.bundle import BoxPropagationInferer, CaseDataset, CaseEvaluator, load_cases
from medsam_monai.checkpoints import TINY_DEMO_CHECKPOINT, build_sam
from medsam_monai.io import read_volume
from medsam_monai.networks import Sam
from medsam_monai.predictor import MedSAMPredictor
from medsam_monai.transforms import IntensityForModality, VoxelBox, volume_to_metatensor

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "medsam_vit_b"
CONFIGS = BUNDLE / "configs"
ANATOMICAL = Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"  # 3D MR, 33x41x25
VOXEL_BOX = [5, 5, 10, 25, 30, 11]  # two axial slices: short runs of the tiny model

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.usefixtures("keep_root_logging")]


def two_series_folder(folder: Path) -> list[str]:
    """A DICOM folder with two series of three slices each, built from pydicom's CT_small.dcm; their UIDs.

    The second series lies 100 mm above the first, so the two give volumes with different affines.
    """
    folder.mkdir(parents=True)
    uids = []
    for series in range(2):
        uid = generate_uid()
        uids.append(uid)
        for n in range(3):
            ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
            ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.InstanceNumber = uid, generate_uid(), n + 1
            position = [float(v) for v in ds.ImagePositionPatient]
            position[2] += n * float(ds.SliceThickness) + 100.0 * series
            ds.ImagePositionPatient = position
            ds.save_as(folder / f"series{series}_{n}.dcm")
    return uids


def inference_workflow(configs, **overrides) -> ConfigWorkflow:
    settings = {"bundle_root": str(BUNDLE), "variant": "tiny", "device": "cpu", **overrides}
    files = [str(CONFIGS / name) for name in configs]
    workflow = ConfigWorkflow(
        config_file=files if len(files) > 1 else files[0], workflow_type="infer", logging_file=False, **settings
    )
    workflow.initialize()
    return workflow


# --------------------------------------------------------------------------------------------
# inference.json (and evaluate.json on top)
# --------------------------------------------------------------------------------------------


def test_inference_json_has_every_property_and_its_evaluator_is_an_engine_that_isolates_failures(tmp_path):
    series_dir = tmp_path / "data" / "ct_series"
    uids = two_series_folder(series_dir)
    datalist = {
        "testing": [
            {"image": "ct_series", "series_uid": uids[1], "box": [40, 40, 1, 90, 90, 1]},
            {"image": "missing.nii.gz", "box": VOXEL_BOX},
        ]
    }
    (tmp_path / "data" / "cases.json").write_text(json.dumps(datalist))
    out = tmp_path / "out"
    # the datalist's path is relative: it starts from dataset_dir
    workflow = inference_workflow(
        ["inference.json"], dataset_dir=str(tmp_path / "data"), datalist="cases.json", output_dir=str(out)
    )
    assert workflow.check_properties() == []

    assert workflow.bundle_root == str(BUNDLE) and workflow.device == "cpu"
    assert workflow.dataset_dir == str(tmp_path / "data")
    assert isinstance(workflow.network_def, Sam) and workflow.network_def.variant == "tiny"
    assert isinstance(workflow.inferer, BoxPropagationInferer)
    assert isinstance(workflow.preprocessing, Compose) and isinstance(workflow.postprocessing, Compose)
    dataset = workflow.dataset
    assert isinstance(dataset, Dataset) and len(dataset) == 2 and dataset.transform is workflow.preprocessing
    first = dataset[0]  # case 1 through the preprocessing: series 2 of the folder, its box, CT intensities
    assert isinstance(first["image"], MetaTensor) and first["image"].dtype == torch.uint8
    np.testing.assert_allclose(first["image"].affine.numpy(), read_volume(series_dir, series_uid=uids[1]).affine)
    assert first["voxel_boxes"] == [VoxelBox((40, 40, 1, 90, 90, 1), label=1)] and first["case_index"] == 0

    evaluator = workflow.evaluator
    assert isinstance(evaluator, CaseEvaluator) and isinstance(evaluator, Evaluator)  # an ignite engine
    outputs = []
    evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda engine: outputs.append(engine.state.output))
    with pytest.raises(SystemExit) as exit_info:
        workflow.run()
    workflow.finalize()
    assert exit_info.value.code == "medsam bundle: 1 of 2 cases failed: missing"
    assert evaluator.state.iteration == 2 and len(outputs) == 2  # the engine went on past the failed case
    assert "no such file" in outputs[1]["error"] and outputs[1]["case_index"] == 1
    written = read_volume(out / "ct_series_seg.nii.gz")
    assert (written.array > 0).any()
    np.testing.assert_allclose(written.affine, read_volume(series_dir, series_uid=uids[1]).affine, atol=1e-4)
    assert evaluator.finished == [{"case": "ct_series", "image": str(series_dir), "output": out / "ct_series_seg.nii.gz"}]


def test_evaluation_puts_its_means_in_the_engine_state_and_writes_monai_metric_reports(tmp_path):
    image = nib.load(str(ANATOMICAL))
    label = np.zeros(image.shape, np.uint8)
    label[8:20, 10:25, 10:12] = 1
    label[20:28, 12:22, 10:12] = 2
    shutil.copy(ANATOMICAL, tmp_path / "anatomical.nii")
    nib.save(nib.Nifti1Image(label, image.affine), str(tmp_path / "label.nii.gz"))
    out = tmp_path / "out"
    # relative image and label of --input_dict start from dataset_dir
    workflow = inference_workflow(
        ["inference.json", "evaluate.json"],
        modality="mr",
        dataset_dir=str(tmp_path),
        input_dict={"image": "anatomical.nii", "label": "label.nii.gz"},
        output_dir=str(out),
    )
    assert workflow.check_properties() == []
    workflow.run()
    workflow.finalize()

    with open(out / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    per_label = {int(r["label"]): r for r in rows if r["case"] == "anatomical"}
    overall = next(r for r in rows if r["case"] == "mean" and r["label"] == "all")
    metrics = workflow.evaluator.state.metrics
    assert metrics["mean_dice"] == pytest.approx(float(overall["dice"]), abs=1e-6)
    assert metrics["mean_nsd"] == pytest.approx(float(overall["nsd"]), abs=1e-6)
    for metric in ("dice", "nsd"):  # MONAI's MetricsSaver layout: one row per case, one column per label
        with open(out / f"{metric}_raw.csv", newline="") as handle:
            raw = list(csv.DictReader(handle))
        assert [r["filename"] for r in raw] == ["anatomical"]
        for value, row in per_label.items():
            assert float(raw[0][f"label_{value}"]) == pytest.approx(float(row[metric]), abs=1e-4)
        with open(out / f"{metric}_summary.csv", newline="") as handle:
            summary = {r["class"]: r for r in csv.DictReader(handle)}
        assert float(summary["label_1"]["mean"]) == pytest.approx(float(per_label[1][metric]), abs=1e-4)
        assert float(summary["label_2"]["notnans"]) == 1.0
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no staging files left


def test_check_settings_reads_the_dataset_data_a_tool_sets(tmp_path):
    """MONAI tools set ``dataset#data`` rather than the bundle's own ``input_dict``/``datalist``."""
    shutil.copy(ANATOMICAL, tmp_path / "anatomical.nii")
    config = ConfigWorkflow(
        config_file=str(CONFIGS / "inference.json"),
        workflow_type="infer",
        logging_file=False,
        bundle_root=str(BUNDLE),
        variant="tiny",
        device="cpu",
        modality="mr",
        output_dir=str(tmp_path / "out"),
        **{"dataset#data": [{"image": str(tmp_path / "anatomical.nii"), "box": VOXEL_BOX}]},
    )
    config.initialize()  # no --input_dict, no --datalist: the cases come from dataset#data
    assert config.check_properties() == []
    config.run()
    assert (tmp_path / "out" / "anatomical_seg.nii.gz").is_file()


def test_relative_datalist_and_input_dict_paths_start_from_dataset_dir(tmp_path):
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "cases.json").write_text(json.dumps({"testing": [{"image": "images/a.nii.gz", "box": VOXEL_BOX}]}))
    cases = load_cases(datalist="lists/cases.json", dataset_dir=str(tmp_path))
    assert cases[0]["image"] == str(tmp_path / "lists" / "images" / "a.nii.gz")  # inside a datalist: its own folder
    one = load_cases(input_dict={"image": "ct.nii.gz", "label": "/abs/label.nii.gz", "box": VOXEL_BOX}, dataset_dir=str(tmp_path))
    assert one[0]["image"] == str(tmp_path / "ct.nii.gz") and one[0]["label"] == "/abs/label.nii.gz"
    assert load_cases(input_dict={"image": "ct.nii.gz"})[0]["image"] == "ct.nii.gz"  # the default: the current folder


def test_case_dataset_numbers_its_items_and_fails_a_bad_entry_alone():
    dataset = CaseDataset(data=[{"image": "a.nii"}, "not a case", {"box": VOXEL_BOX}])
    assert dataset[0] == {"image": "a.nii", "case_index": 0}
    with pytest.raises(ValueError, match="a case is a dict with 'image'"):
        dataset[1]
    with pytest.raises(ValueError, match="no 'image' given"):
        dataset[2]


def test_inferer_takes_the_bare_network_as_monai_tools_pass_it():
    sam = build_sam("tiny", TINY_DEMO_CHECKPOINT).eval()
    image = volume_to_metatensor(read_volume(ANATOMICAL), source=ANATOMICAL)
    image = IntensityForModality("mr")(image)
    boxes = [VoxelBox(tuple(VOXEL_BOX), label=1)]
    inferer = BoxPropagationInferer("axial")
    with torch.inference_mode():
        from_module = inferer(image, sam, boxes)
        from_predictor = inferer(image, MedSAMPredictor(sam), boxes)
    assert (np.asarray(from_module) > 0).any()
    np.testing.assert_array_equal(np.asarray(from_module), np.asarray(from_predictor))
    np.testing.assert_array_equal(from_module.affine.numpy(), image.affine.numpy())


# --------------------------------------------------------------------------------------------
# train.json and multi_gpu_train.json
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    from medsam_monai.training.demo_model import write_phantom_dataset

    folder = tmp_path_factory.mktemp("phantoms")
    return write_phantom_dataset(folder, train_seeds=[1], val_seeds=[2], shape=(40, 40, 4), spacing=(1.5, 1.5, 4.0))


def train_workflow(configs, bundle_root: Path, dataset: Path, **overrides) -> ConfigWorkflow:
    files = [str(CONFIGS / name) for name in configs]
    workflow = ConfigWorkflow(
        config_file=files if len(files) > 1 else files[0],
        workflow_type="train",
        logging_file=False,
        bundle_root=str(bundle_root),
        dataset_dir=str(dataset),
        variant="tiny",
        ckpt_path=None,
        device="cpu",
        num_workers=0,
        cache="none",
        epochs=3,
        **overrides,
    )
    workflow.initialize()
    return workflow


def check_train_properties(workflow: ConfigWorkflow, dataset: Path) -> None:
    assert workflow.check_properties() == []
    assert workflow.dataset_dir == str(dataset)
    assert isinstance(workflow.trainer, SupervisedTrainer) and workflow.max_epochs == 3
    assert workflow.trainer.state.max_epochs == 3
    assert len(workflow.train_dataset) > 0 and workflow.train_inferer is not None
    assert isinstance(workflow.evaluator, SupervisedEvaluator) and workflow.val_interval == 1


def test_train_json_has_every_training_property(phantoms, tmp_path):
    check_train_properties(train_workflow(["train.json"], tmp_path, phantoms), phantoms)


def test_multi_gpu_train_json_has_every_training_property(phantoms, tmp_path, monkeypatch):
    """On a CPU with gloo, one process: what torchrun would give rank 0."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
    }.items():
        monkeypatch.setenv(key, value)
    workflow = train_workflow(["train.json", "multi_gpu_train.json"], tmp_path, phantoms, backend="gloo")
    try:
        check_train_properties(workflow, phantoms)
        assert isinstance(workflow.parser.get_parsed_content("network"), torch.nn.parallel.DistributedDataParallel)
    finally:
        workflow.finalize()
    assert not torch.distributed.is_initialized()
