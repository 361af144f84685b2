"""Fine-tuning: the training data equal inference's preparation, MedSAM's loss, the bundle's
train.json (loss going down, resume) and multi_gpu_train.json (2 processes, gloo), and checkpoints
that load everywhere (build_sam, `medsam segment --checkpoint`)."""

from __future__ import annotations

import itertools
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medsam_monai.checkpoints import build_sam, load_state_dict
from medsam_monai.cli import main as medsam_main
from medsam_monai.io import read_volume, write_label_volume, write_volume
from medsam_monai.networks import build_sam_variant
from medsam_monai.orientation import display_layout, to_display
from medsam_monai.phantom import label_box, random_ct_phantom
from medsam_monai.predictor import MedSAMPredictor
from medsam_monai.segment import normalized_volume
from medsam_monai.training import (
    LoadSliced,
    MedSAMTrainNet,
    PrepareBoxBatch,
    RandBoxPromptd,
    foreground_slices,
    latest_checkpoint,
    load_training_splits,
)
from medsam_monai.training.demo_model import write_phantom_dataset
from medsam_monai.transforms import (
    BoxesFromLabeld,
    case_name,
    display_volumes,
    prepare_slice,
    scale_box_to_model,
    volume_to_metatensor,
)

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "medsam_vit_b"
TRAIN_JSON = BUNDLE / "configs" / "train.json"
MULTI_GPU_JSON = BUNDLE / "configs" / "multi_gpu_train.json"
# Small phantoms: the network always sees 1024x1024, so only the slice count costs time.
SMALL = {"shape": (40, 40, 6), "spacing": (1.5, 1.5, 4.0)}
# An override of this value is dropped: the config's own default applies.
CONFIG_DEFAULT = object()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Two training phantoms and one validation phantom, stored in random voxel orders."""
    folder = tmp_path_factory.mktemp("phantoms")
    return write_phantom_dataset(folder, train_seeds=[1, 2], val_seeds=[3], **SMALL)


def _slice_item(datalist: Path) -> dict:
    cases = load_training_splits(datalist)
    return foreground_slices(cases["training"])[0]


# ----- data ----------------------------------------------------------------------------------


def test_sample_is_prepared_as_at_inference(dataset):
    item = _slice_item(dataset)
    sample = LoadSliced(keys=("image", "label"))(item)
    phantom = random_ct_phantom(1, **SMALL)  # the case the item comes from
    layout = display_layout(phantom.volume.affine, "axial")
    display = to_display(normalized_volume(phantom.volume, "ct"), layout)
    labels = to_display(phantom.labels, layout)
    z = item["slice"]
    assert torch.equal(sample["image"], prepare_slice(display[z])[:1])  # same function, same values
    rows = sample["label_boxes"].numpy()
    assert set(rows[:, 0].astype(int)) == set(np.unique(labels[z][labels[z] > 0]))
    for value, *box in rows:
        ys, xs = np.nonzero(labels[z] == value)
        tight = scale_box_to_model([xs.min(), ys.min(), xs.max(), ys.max()], labels[z].shape)
        assert np.allclose(box, tight)


def test_boxes_move_outward_by_0_to_20_px_and_are_seeded(dataset):
    loaded = LoadSliced(keys=("image", "label"))(_slice_item(dataset))
    tight = {int(r[0]): r[1:] for r in loaded["label_boxes"].numpy()}
    shifts = []
    for seed in range(20):
        sample = RandBoxPromptd(keys="label", seed=seed)(loaded)
        again = RandBoxPromptd(keys="label", seed=seed)(loaded)
        assert torch.equal(sample["box"], again["box"]) and torch.equal(sample["label_id"], again["label_id"])
        value = int(sample["label_id"][0])
        outward = (sample["box"][0].double().numpy() - tight[value]) * np.array([-1, -1, 1, 1])
        clipped = np.isin(sample["box"][0].numpy(), [0, 1023])
        assert np.all((outward >= -1e-4) & ((outward <= 20 + 1e-4) | clipped))
        assert torch.equal(sample["label"][0], (loaded["label"] == value).float())
        shifts.append(outward)
    assert np.ptp(np.array(shifts)) > 10  # the jitter does vary


def test_validation_prompts_take_every_label_without_jitter(dataset):
    loaded = LoadSliced(keys=("image", "label"))(_slice_item(dataset))
    sample = RandBoxPromptd(keys="label", bbox_shift=0, prompts_per_slice="all")(loaded)
    rows = loaded["label_boxes"].numpy()
    assert sample["label_id"].tolist() == rows[:, 0].astype(int).tolist()
    assert np.allclose(sample["box"].numpy(), rows[:, 1:], atol=1e-4)


def test_cases_from_datalist_and_folder_layouts(tmp_path):
    phantom = random_ct_phantom(5, shape=(16, 16, 4), spacing=(2.0, 2.0, 4.0))
    for layout, image_name in (("msd", "case{}.nii.gz"), ("nnunet", "case{}_0000.nii.gz")):
        root = tmp_path / layout
        for n in range(5):
            write_volume(root / "imagesTr" / image_name.format(n), phantom.volume.array, phantom.volume.affine)
            write_label_volume(root / "labelsTr" / f"case{n}.nii.gz", phantom.labels, phantom.volume.affine)
        cases = load_training_splits(root, val_fraction=0.2, seed=0)
        assert len(cases["training"]) == 4 and len(cases["validation"]) == 1
        for case in cases["training"] + cases["validation"]:
            assert Path(case["label"]).name == Path(case["image"]).name.replace("_0000", "")
    (tmp_path / "msd" / "list.json").write_text(
        json.dumps(
            {
                "training": [{"image": "imagesTr/case0.nii.gz", "label": "labelsTr/case0.nii.gz"}],
                "validation": [{"image": "imagesTr/case1.nii.gz", "label": "labelsTr/case1.nii.gz"}],
            }
        )
    )
    cases = load_training_splits(tmp_path / "msd" / "list.json")
    assert [Path(c["image"]).name for c in cases["validation"]] == ["case1.nii.gz"]
    with pytest.raises(FileNotFoundError, match="imagesTr"):
        load_training_splits(tmp_path)


def test_a_folder_pairs_and_names_cases_with_the_image_suffixes_evaluation_uses(tmp_path):
    """One suffix list: a ``.mgh`` label (an image suffix of the library) pairs with its image, and the
    slice items name each case as the bundle names its output (``case_name``)."""
    phantom = random_ct_phantom(5, shape=(16, 16, 4), spacing=(2.0, 2.0, 4.0))
    root = tmp_path / "folder"
    write_volume(root / "imagesTr" / "Liver_7.NII.GZ", phantom.volume.array, phantom.volume.affine)
    (root / "labelsTr").mkdir(parents=True)
    nib.save(nib.MGHImage(phantom.labels.astype(np.int32), phantom.volume.affine), str(root / "labelsTr" / "Liver_7.mgh"))
    (root / "labelsTr" / "notes.txt").write_text("not an image")
    cases = load_training_splits(root, val_fraction=0.0)
    assert [(Path(c["image"]).name, Path(c["label"]).name) for c in cases["training"]] == [("Liver_7.NII.GZ", "Liver_7.mgh")]
    items = foreground_slices(cases["training"])
    assert items and {item["case"] for item in items} == {case_name(cases["training"][0]["image"])} == {"Liver_7"}


@pytest.mark.parametrize("shift_mm", [0.5, 0.005])
def test_a_label_on_another_grid_fails_training_as_it_fails_evaluation(tmp_path, shift_mm):
    """One grid rule: training refuses a label its image's grid does not hold, as evaluation does
    (it used to warn beyond 0.01 mm and take the image's affine; 0.005 mm passed unnoticed)."""
    phantom = random_ct_phantom(5, shape=(16, 16, 4), spacing=(2.0, 2.0, 4.0))
    shifted = phantom.volume.affine.copy()
    shifted[0, 3] += shift_mm
    image = write_volume(tmp_path / f"ct_{shift_mm}.nii.gz", phantom.volume.array, phantom.volume.affine)
    label = write_label_volume(tmp_path / f"label_{shift_mm}.nii.gz", phantom.labels, shifted)
    with pytest.raises(ValueError, match="another grid") as training:
        display_volumes(str(image), str(label))
    as_loaded = {key: volume_to_metatensor(read_volume(path)) for key, path in (("image", image), ("label", label))}
    with pytest.raises(ValueError, match="another grid") as evaluation:
        BoxesFromLabeld(keys="label")(as_loaded)
    assert str(training.value) == str(evaluation.value) and "\n" not in str(training.value)
    assert str(label) in str(training.value)
    same = write_label_volume(tmp_path / f"same_{shift_mm}.nii.gz", phantom.labels, phantom.volume.affine)
    assert np.array_equal(np.unique(display_volumes(str(image), str(same))[1]), np.unique(phantom.labels))  # on the grid: read


def test_prepare_batch_pairs_each_box_with_its_mask():
    batch = {"image": torch.rand(2, 1, 8, 8), "label": torch.rand(2, 3, 8, 8), "box": torch.rand(2, 3, 4)}
    images, masks, (boxes,), kwargs = PrepareBoxBatch()(batch)
    assert images.shape == (2, 1, 8, 8) and masks.shape == (6, 1, 8, 8) and boxes.shape == (6, 4) and not kwargs
    assert torch.equal(masks[4, 0], batch["label"][1, 1]) and torch.equal(boxes[4], batch["box"][1, 1])


# ----- network and loss ----------------------------------------------------------------------


def test_train_net_keeps_sam_keys_and_freezes_the_prompt_encoder():
    sam = build_sam_variant("tiny")
    net = MedSAMTrainNet(sam)
    assert net.state_dict().keys() == sam.state_dict().keys()  # checkpoints need no key mapping
    trainable = {id(p) for p in net.trainable_parameters()}
    assert not any(id(p) in trainable for p in net.prompt_encoder.parameters())
    assert all(id(p) in trainable for p in [*net.image_encoder.parameters(), *net.mask_decoder.parameters()])


def test_train_net_trains_the_model_as_is():
    """No process-wide replacement of the encoder's attention: the network itself is differentiable."""
    from medsam_monai import training
    from medsam_monai.networks import image_encoder

    attention = image_encoder.attention_with_rel_pos
    sam = build_sam_variant("tiny")
    net = MedSAMTrainNet(sam)
    assert image_encoder.attention_with_rel_pos is attention
    assert not hasattr(training, "enable_encoder_training")
    assert net.image_encoder is sam.image_encoder
    logits = net(
        torch.rand(1, 1, 1024, 1024, generator=torch.Generator().manual_seed(0)), torch.tensor([[100.0, 150.0, 600.0, 700.0]])
    )
    assert logits.shape == (1, 1, 1024, 1024)
    logits.mean().backward()
    for block in net.image_encoder.blocks:
        assert block.attn.rel_pos_h.grad is not None and block.attn.rel_pos_h.grad.abs().sum() > 0


def test_dice_ce_loss_is_medsams_dice_plus_bce():
    from monai.losses import DiceCELoss, DiceLoss

    logits, target = torch.randn(4, 1, 32, 32), (torch.rand(4, 1, 32, 32) > 0.5).float()
    medsam = DiceLoss(sigmoid=True, squared_pred=True, reduction="mean")(
        logits, target
    ) + torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    ours = DiceCELoss(sigmoid=True, squared_pred=True, reduction="mean")(logits, target)
    assert torch.allclose(ours, medsam, atol=1e-6)
    assert json.loads(TRAIN_JSON.read_text())["loss"] == {
        "_target_": "DiceCELoss",
        "sigmoid": True,
        "squared_pred": True,
        "reduction": "mean",
    }


# ----- the bundle's training configs -----------------------------------------------------------


def _workflow(bundle_root: Path, datalist: Path, **overrides):
    from monai.bundle import ConfigWorkflow

    settings = {
        "bundle_root": str(bundle_root),
        "data_source": str(datalist),
        "variant": "tiny",
        "ckpt_path": None,
        "num_workers": 0,
        "cache": "none",
        "learning_rate": 2e-3,
        **overrides,
    }
    settings = {key: value for key, value in settings.items() if value is not CONFIG_DEFAULT}
    workflow = ConfigWorkflow(config_file=str(TRAIN_JSON), logging_file=False, workflow_type=None, **settings)
    workflow.initialize()
    return workflow


def test_train_json_device_and_starting_weights_settings(tmp_path):
    """`device` auto by default (CUDA, else MPS, else CPU), checked before any data is read; AMP follows the
    device; `--variant tiny` starts from the packaged weights unless `ckpt_path` says otherwise."""
    from medsam_monai.checkpoints import TINY_DEMO_CHECKPOINT
    from medsam_monai.devices import resolve_device

    nowhere = tmp_path / "no_data_here"
    with pytest.raises(SystemExit, match="^medsam bundle: error: unknown device 'gpu'; use auto"):
        _workflow(tmp_path, nowhere, device="gpu")
    default = _workflow(tmp_path, nowhere, ckpt_path=CONFIG_DEFAULT)
    assert default.parser.get_parsed_content("run_device") == torch.device(resolve_device("auto"))
    assert default.parser.get_parsed_content("amp") == torch.device(resolve_device("auto")).type.startswith("cuda")
    assert default.parser.get_parsed_content("ckpt_path") == str(TINY_DEMO_CHECKPOINT)
    on_cpu = _workflow(tmp_path, nowhere, device="cpu", variant="vit_b", ckpt_path=CONFIG_DEFAULT)
    assert on_cpu.parser.get_parsed_content("amp") is False
    assert on_cpu.parser.get_parsed_content("ckpt_path") == str(tmp_path / "models" / "model.pt")


def _run_recording_losses(workflow) -> list[float]:
    from ignite.engine import Events

    losses: list[float] = []
    trainer = workflow.parser.get_parsed_content("train#trainer")
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda engine: losses.append(float(engine.state.output["loss"])))
    workflow.run()
    workflow.finalize()
    return losses


def _segment_with(checkpoint: Path, tmp_path: Path, bundle_inference: bool = False) -> None:
    """`medsam segment --checkpoint` (and the bundle's inference.json with ``ckpt_path``) run with the file as it is."""
    phantom = random_ct_phantom(7, **SMALL)
    image = write_volume(tmp_path / "ct.nii.gz", phantom.volume.array, phantom.volume.affine)
    box = label_box(phantom.labels, 1)
    out = tmp_path / "mask.nii.gz"
    code = medsam_main(
        [
            "segment",
            str(image),
            "--box",
            ",".join(map(str, box)),
            "--variant",
            "tiny",
            "--checkpoint",
            str(checkpoint),
            "--out",
            str(out),
        ]
    )
    assert code == 0 and out.is_file()
    if bundle_inference:
        from monai.bundle import ConfigWorkflow

        workflow = ConfigWorkflow(
            config_file=str(BUNDLE / "configs" / "inference.json"),
            logging_file=False,
            workflow_type=None,
            bundle_root=str(BUNDLE),
            ckpt_path=str(checkpoint),
            variant="tiny",
            device="cpu",
            input_dict={"image": str(image), "box": list(box)},
            output_dir=str(tmp_path / "bundle_out"),
        )
        workflow.initialize()
        workflow.run()
        workflow.finalize()
        assert list((tmp_path / "bundle_out").glob("*.nii.gz"))


def test_train_json_loss_goes_down_and_resumes(dataset, tmp_path):
    # One fixed batch (the first slice, every label, no jitter): the loss must fall as the model fits it.
    one_slice = "$medsam_monai.training.foreground_slices(@cases['training'], @axis, @min_pixels)[:1]"
    first = _workflow(
        tmp_path,
        dataset,
        epochs=4,
        val_interval=100,
        batch_size=1,
        bbox_shift=0,
        prompts_per_slice="all",
        **{"train#slices": one_slice},
    )
    initial = {k: v.clone() for k, v in first.parser.get_parsed_content("network_def").state_dict().items()}
    losses = _run_recording_losses(first)
    assert len(losses) == 4
    assert all(b < a for a, b in itertools.pairwise(losses)) and losses[-1] < 0.95 * losses[0], losses
    after = first.parser.get_parsed_content("network_def").state_dict()
    changed = {k for k in initial if not torch.equal(initial[k], after[k])}
    assert "image_encoder.blocks.1.attn.rel_pos_h" in changed  # gradients reach the encoder's attention
    assert "mask_decoder.output_upscaling.0.weight" in changed
    assert not any(k.startswith("prompt_encoder.") for k in changed)  # frozen, as MedSAM
    ckpt_dir = tmp_path / "models" / "fine_tuned"
    assert latest_checkpoint(ckpt_dir).name == "checkpoint_epoch=4.pt"

    # The same command with resume: epoch 5 continues the run (weights and optimizer restored), then validates.
    second = _workflow(
        tmp_path,
        dataset,
        epochs=5,
        val_interval=5,
        batch_size=1,
        bbox_shift=0,
        prompts_per_slice="all",
        resume=True,
        **{"train#slices": one_slice},
    )
    resumed = _run_recording_losses(second)
    assert len(resumed) == 1 and resumed[0] < losses[-1]  # where the first run stopped, not from scratch
    assert second.parser.get_parsed_content("train#trainer").state.iteration == 5
    best = ckpt_dir / "model.pt"
    assert latest_checkpoint(ckpt_dir).name == "checkpoint_epoch=5.pt" and best.is_file()

    trained = second.parser.get_parsed_content("network_def").state_dict()
    for checkpoint in (best, latest_checkpoint(ckpt_dir)):  # both written after the last epoch's training
        model = build_sam("tiny", checkpoint)
        assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items())
    assert MedSAMPredictor.from_checkpoint(best, variant="tiny").model.variant == "tiny"
    _segment_with(best, tmp_path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_multi_gpu_train_json_runs_two_processes_with_gloo(dataset, tmp_path):
    two_slices = "$medsam_monai.training.foreground_slices(@cases['training'], @axis, @min_pixels)[:4]"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        f"['{TRAIN_JSON}','{MULTI_GPU_JSON}']",
        "--logging_file",
        str(BUNDLE / "configs" / "logging.conf"),
        "--backend",
        "gloo",
        "--bundle_root",
        str(tmp_path),
        "--data_source",
        str(dataset),
        "--variant",
        "tiny",
        "--ckpt_path",
        "$None",
        "--num_workers",
        "0",
        "--cache",
        "none",
        "--batch_size",
        "1",
        "--epochs",
        "1",
        "--train#slices",
        two_slices,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=400, cwd=BUNDLE, check=False)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    # each rank trains on its half of the 4 slices: 2 iterations of batch 1, not 4
    assert re.search(r"Epoch: 1/1, Iter: 2/2 ", log), log[-3000:]
    ckpt_dir = tmp_path / "models" / "fine_tuned"
    for checkpoint in (ckpt_dir / "model.pt", ckpt_dir / "checkpoint_epoch=1.pt"):
        state = load_state_dict(checkpoint)
        assert not any(k.startswith("module.") for k in state)  # saved without the DDP wrapper
        build_sam("tiny", checkpoint)
    _segment_with(ckpt_dir / "model.pt", tmp_path, bundle_inference=True)
