"""What the bundle's training configs need beyond MONAI's own classes: the batch preparation for
(image, box) pairs, the dataset with a choice of cache, and resuming an interrupted run.

Checkpoints are MONAI ``CheckpointSaver`` files (ignite unwraps DDP, and :class:`MedSAMTrainNet`
has SAM's own key names), so the loader (:func:`medsam_monai.build_sam`, ``medsam segment
--checkpoint``, the inference bundle's ``ckpt_path``) reads them as they are:

- ``<ckpt_dir>/model.pt``: the weights with the best validation Dice, a plain state dict (the
  format of ``sam_vit_b_01ec64.pth``, which upstream SAM and MedSAM code load too);
- ``<ckpt_dir>/checkpoint_epoch=N.pt``: the last epoch's model, optimizer, schedule, best-model
  bookkeeping and trainer state (``{"model": ..., "optimizer": ..., ...}``), for resuming.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.data import CacheDataset, Dataset, PersistentDataset
from monai.engines.utils import PrepareBatch
from monai.handlers import CheckpointLoader, CheckpointSaver

logger = logging.getLogger(__name__)

_EPOCH_CHECKPOINT = re.compile(r"^checkpoint_epoch=(\d+)\.pt$")


class PrepareBoxBatch(PrepareBatch):
    """Batch -> (images, masks, (boxes,), {}) for ``SupervisedTrainer``/``SupervisedEvaluator``.

    Like ``PrepareBatchExtraInput("box")``, with the K prompts of each slice flattened so that the
    network's (B * K, 1, H, W) logits meet (B * K, 1, H, W) masks: images (B, C, 1024, 1024),
    ``label`` (B, K, 1024, 1024) -> (B * K, 1, 1024, 1024), ``box`` (B, K, 4) -> (B * K, 4).
    """

    def __call__(
        self,
        batchdata: Mapping[str, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, dict]:
        images = torch.as_tensor(batchdata["image"]).to(device=device, non_blocking=non_blocking, **kwargs)
        masks = torch.as_tensor(batchdata["label"])
        masks = masks.reshape(-1, 1, *masks.shape[-2:]).to(device=device, non_blocking=non_blocking, **kwargs)
        boxes = torch.as_tensor(batchdata["box"]).reshape(-1, 4).to(device=device, non_blocking=non_blocking, **kwargs)
        return images, masks, (boxes,), {}


def slice_dataset(
    data: Sequence[Mapping[str, Any]],
    transform: Callable,
    cache: str = "memory",
    cache_dir: str | Path | None = None,
    cache_rate: float = 1.0,
    num_workers: int | None = 1,
) -> Dataset:
    """The dataset of slice items, caching what precedes the first random transform.

    Args:
        cache: ``memory`` (``CacheDataset``: about 5 MB per slice: a 1024x1024 float32 image and
            its labels), ``disk`` (``PersistentDataset`` in ``cache_dir``, kept between runs;
            clear it when the intensity settings change) or ``none`` (every draw reads its volume
            and resizes: for small tests).
        cache_rate: share of the items kept in memory (``memory`` only).
        num_workers: threads that fill the memory cache.
    """
    if cache == "memory":
        return CacheDataset(data, transform, cache_rate=cache_rate, num_workers=num_workers)
    if cache == "disk":
        if cache_dir is None:
            raise ValueError("cache='disk' needs a cache_dir")
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        return PersistentDataset(data, transform, cache_dir=cache_dir)
    if cache == "none":
        return Dataset(data, transform)
    raise ValueError(f"unknown cache {cache!r}; choose memory, disk or none")


def latest_checkpoint(ckpt_dir: str | Path) -> Path | None:
    """The ``checkpoint_epoch=N.pt`` with the largest N in ``ckpt_dir``, or None."""
    folder = Path(ckpt_dir)
    if not folder.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _EPOCH_CHECKPOINT.match(p.name))]
    return max(found)[1] if found else None


class TrainingStateSaver:
    """Trainer handler: save ``save_dict`` and the trainer's own state every ``interval`` epochs.

    ``<save_dir>/checkpoint_epoch=N.pt``, the previous one removed: what :class:`ResumeTraining`
    continues from. (MONAI's ``CheckpointSaver`` with the trainer added when attached: a config
    cannot name the trainer inside the trainer's own handler list.) Attach it on rank 0 only.
    """

    def __init__(self, save_dir: str | Path, save_dict: Mapping[str, Any], interval: int = 1) -> None:
        self.save_dir, self.save_dict, self.interval = str(save_dir), dict(save_dict), int(interval)

    def attach(self, engine) -> None:
        saver = CheckpointSaver(self.save_dir, {**self.save_dict, "trainer": engine}, save_interval=self.interval, n_saved=1)
        saver.attach(engine)


class BestModelState:
    """The evaluator's best-model bookkeeping as one stateful object, saved in the training checkpoint.

    Holds the key-metric ``CheckpointSaver``'s list of saved scores and the evaluator's best metric
    and epoch, so that a resumed run keeps comparing against the best score so far (and
    ``model.pt`` stays a plain state dict).
    """

    def __init__(self, saver: CheckpointSaver, evaluator: Any) -> None:
        self.saver, self.evaluator = saver, evaluator

    def state_dict(self) -> dict[str, Any]:
        tracker = self.saver._key_metric_checkpoint  # ignite's Checkpoint: no public accessor in MONAI
        return {
            "checkpointer": tracker.state_dict() if tracker is not None else {},
            "best_metric": float(self.evaluator.state.best_metric),
            "best_metric_epoch": int(self.evaluator.state.best_metric_epoch),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("checkpointer"):
            self.saver.load_state_dict(state["checkpointer"])
        self.evaluator.state.best_metric = state["best_metric"]
        self.evaluator.state.best_metric_epoch = state["best_metric_epoch"]


class ResumeTraining:
    """Trainer handler: continue an interrupted run from ``ckpt_dir`` (no-op unless ``enabled``).

    Restores ``load_dict`` (model, optimizer, schedule, best-model bookkeeping) and the trainer
    (epoch and iteration) from the latest ``checkpoint_epoch=N.pt``. Attach it on every rank.

    Args:
        enabled: resume (``true``) or start afresh (``false``).
        ckpt_dir: where the run saved its checkpoints.
        load_dict: the objects :class:`TrainingStateSaver` saved, by the same names.
        map_location: where tensors go (each rank's device).
    """

    def __init__(self, enabled: bool, ckpt_dir: str | Path, load_dict: Mapping[str, Any], map_location: Any = None) -> None:
        self.enabled = bool(enabled)
        self.ckpt_dir = Path(ckpt_dir)
        self.load_dict = dict(load_dict)
        self.map_location = map_location

    def attach(self, engine) -> None:
        if not self.enabled:
            return
        last = latest_checkpoint(self.ckpt_dir)
        if last is None:
            logger.warning("resume: no checkpoint_epoch=N.pt in %s; starting from the beginning", self.ckpt_dir)
            return
        logger.info("resume: continuing from %s", last)
        CheckpointLoader(str(last), {**self.load_dict, "trainer": engine}, map_location=self.map_location).attach(engine)


class WarmupCosine:
    """Learning-rate factor per iteration: linear warm-up, then cosine decay to ``final`` of the peak.

    A picklable callable for ``LambdaLR`` (its ``state_dict`` keeps the numbers, so a resumed run
    continues the same curve).
    """

    def __init__(self, warmup: int, total: int, final: float = 0.05) -> None:
        if total < 1 or not 0 <= warmup < total:
            raise ValueError(f"need 0 <= warmup < total, got warmup={warmup}, total={total}")
        self.warmup, self.total, self.final = int(warmup), int(total), float(final)

    def __call__(self, iteration: int) -> float:
        if iteration < self.warmup:
            return (iteration + 1) / (self.warmup + 1)
        progress = min(1.0, (iteration - self.warmup) / max(1, self.total - self.warmup))
        return self.final + (1 - self.final) * 0.5 * (1 + math.cos(math.pi * progress))


def lr_scheduler(
    optimizer: torch.optim.Optimizer, schedule: str = "constant", warmup: int = 0, total: int = 1
) -> torch.optim.lr_scheduler.LambdaLR:
    """The per-iteration learning-rate schedule: ``constant`` (MedSAM's recipe) or ``warmup_cosine``
    (``warmup`` iterations up to the learning rate, cosine down over the rest of ``total``)."""
    if schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, _constant)
    if schedule == "warmup_cosine":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup, total))
    raise ValueError(f"unknown lr schedule {schedule!r}; choose constant or warmup_cosine")


def _constant(iteration: int) -> float:
    return 1.0
