"""Evaluation: Dice and NSD per case and label with MONAI's metrics, their means, saved as tables;
and the multimask IoUs of any run (:class:`MultimaskReport`, ``multimask_iou.csv``).

``metrics.csv`` (this bundle's table: one row per case and label, ``mean`` rows last) and, beside
it, the reports MONAI's ``MetricsSaver`` writes for Model Zoo bundles (``monai.handlers.utils.
write_metrics_reports``): ``dice_raw.csv`` / ``nsd_raw.csv`` (one row per case, one column per label
value, ``nan`` where a case has no such label) and ``dice_summary.csv`` / ``nsd_summary.csv`` (mean,
median, min, max, percentiles and count per label).
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
import tempfile
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.handlers.utils import write_metrics_reports
from monai.metrics import DiceMetric, compute_surface_dice
from monai.utils import convert_to_numpy

from ..transforms import BOXES_KEY, volume_of

logger = logging.getLogger(__name__)

#: The summary rows of the MONAI reports.
SUMMARY_OPS = ("mean", "median", "min", "max", "5percentile", "95percentile", "notnans")


def surface_scores(
    pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float], tolerance_mm: float = 2.0
) -> tuple[float, float]:
    """Dice and normalised surface Dice (NSD at ``tolerance_mm``) of two binary masks, with MONAI's metrics.

    ``spacing`` is the voxel size in mm along the masks' axes, so NSD measures distances in mm.
    """
    y_pred = torch.as_tensor(np.asarray(pred, dtype=bool))[None, None].float()
    y = torch.as_tensor(np.asarray(truth, dtype=bool))[None, None].float()
    dice = DiceMetric(include_background=True, reduction="none")(y_pred, y)
    nsd = compute_surface_dice(y_pred, y, class_thresholds=[float(tolerance_mm)], include_background=True, spacing=list(spacing))
    return float(dice.reshape(-1)[0]), float(nsd.reshape(-1)[0])


class SegmentationScorer:
    """Per-case Dice and NSD of each boxed label value, their means, into CSV tables and the log.

    Args:
        csv_path: where the table goes (columns case, image, label, dice, nsd; ``mean`` rows last);
            MONAI's per-case and summary reports go to the same folder.
        tolerance_mm: NSD tolerance (2 mm, as the MedSAM paper).
    """

    COLUMNS = ("case", "image", "label", "dice", "nsd")

    def __init__(
        self,
        csv_path: str | os.PathLike[str],
        tolerance_mm: float = 2.0,
        label_key: str = "label",
        boxes_key: str = BOXES_KEY,
    ) -> None:
        if not tolerance_mm > 0:
            raise ValueError(f"the NSD tolerance must be > 0 mm, got {tolerance_mm!r}")
        self.csv_path = Path(csv_path)
        self.tolerance_mm = float(tolerance_mm)
        self.label_key = label_key
        self.boxes_key = boxes_key
        self.rows: list[dict[str, Any]] = []

    def __call__(self, data: Mapping[Hashable, Any], name: str) -> list[dict[str, Any]]:
        """Score one case's prediction against its label; returns (and keeps) its rows."""
        truth = volume_of(data[self.label_key])
        pred = np.asarray(convert_to_numpy(data["pred"]))
        rows = []
        for value in sorted({box.label for box in data[self.boxes_key]}):
            dice, nsd = surface_scores(pred == value, truth.array == value, truth.spacing, self.tolerance_mm)
            rows.append({"case": name, "image": volume_of(data["image"]).source, "label": value, "dice": dice, "nsd": nsd})
        self.rows.extend(rows)
        scores = "; ".join(f"label {r['label']} Dice {r['dice']:.4f} NSD {r['nsd']:.4f}" for r in rows)
        logger.info(f"case {name}: {scores}")
        return rows

    def mean_rows(self) -> list[dict[str, Any]]:
        """Mean Dice and NSD per label value, then over all scored structures."""
        groups: dict[Any, list[dict[str, Any]]] = {}
        for row in self.rows:
            groups.setdefault(row["label"], []).append(row)
        if len(groups) > 1:
            groups["all"] = list(self.rows)
        return [
            {
                "case": "mean",
                "image": "",
                "label": label,
                "dice": float(np.mean([r["dice"] for r in rows])),
                "nsd": float(np.mean([r["nsd"] for r in rows])),
            }
            for label, rows in groups.items()
        ]

    def means(self) -> dict[str, float]:
        """``mean_dice`` and ``mean_nsd`` over all scored structures (the evaluator's ``state.metrics``)."""
        overall = self.mean_rows()[-1]
        return {"mean_dice": overall["dice"], "mean_nsd": overall["nsd"]}

    def report(self) -> Path:
        """Write the table and MONAI's reports (each file atomically) and log the means."""
        means = self.mean_rows()
        self.csv_path.parent.mkdir(parents=True, exist_ok=True)
        self.write_table(means)
        self.write_monai_reports()
        cases = len({row["case"] for row in self.rows})
        overall = means[-1]
        logger.info(
            f"mean over {len(self.rows)} structure(s) in {cases} case(s): Dice {overall['dice']:.4f} "
            f"NSD {overall['nsd']:.4f} (tolerance {self.tolerance_mm:g} mm); table in {self.csv_path}"
        )
        return self.csv_path

    def write_table(self, means: list[dict[str, Any]]) -> None:
        """``metrics.csv``: per case and label, then the means."""
        temporary = self.csv_path.with_name(f".{self.csv_path.name}.tmp")
        with open(temporary, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.COLUMNS)
            writer.writeheader()
            for row in self.rows + means:
                writer.writerow({**row, "dice": f"{row['dice']:.6f}", "nsd": f"{row['nsd']:.6f}"})
        os.replace(temporary, self.csv_path)

    def score_matrices(self) -> tuple[list[str], list[int], dict[str, np.ndarray]]:
        """Cases (in run order), label values (sorted), and per metric a (cases, labels) array, nan where not scored."""
        cases = list(dict.fromkeys(row["case"] for row in self.rows))
        labels = sorted({row["label"] for row in self.rows})
        matrices = {metric: np.full((len(cases), len(labels)), np.nan) for metric in ("dice", "nsd")}
        for row in self.rows:
            at = (cases.index(row["case"]), labels.index(row["label"]))
            for metric, matrix in matrices.items():
                matrix[at] = row[metric]
        return cases, labels, matrices

    def write_monai_reports(self) -> list[Path]:
        """``<metric>_raw.csv`` and ``<metric>_summary.csv`` by MONAI's writer, moved beside the table when complete."""
        cases, labels, matrices = self.score_matrices()
        folder = self.csv_path.parent
        staging = Path(tempfile.mkdtemp(prefix=".metrics.", dir=folder))  # same file system: os.replace is atomic
        try:
            write_metrics_reports(
                save_dir=staging,
                images=cases,
                metrics=None,
                metric_details=matrices,
                summary_ops=list(SUMMARY_OPS),
                deli=",",
                class_labels=[f"label_{v}" for v in labels],
            )
            written = []
            for file in sorted(staging.iterdir()):
                os.replace(file, folder / file.name)
                written.append(folder / file.name)
            return written
        finally:
            shutil.rmtree(staging, ignore_errors=True)


class MultimaskReport:
    """The predicted IoUs of SAM's three candidates, per case, object and slice, of the cases run with multimask.

    ``multimask_iou.csv`` (``csv_path``): columns case, image, label, axis, voxel_axis, slice (the
    file's own voxel index along ``axis``), key (1 on the object's key slice, where its prompt starts),
    iou_1, iou_2, iou_3 and kept (the candidate written: the highest IoU). Written atomically once
    the run ends, only when some case used multimask; the key slice's IoUs are also logged per case.
    """

    COLUMNS = ("case", "image", "label", "axis", "voxel_axis", "slice", "key", "iou_1", "iou_2", "iou_3", "kept")

    def __init__(self, csv_path: str | os.PathLike[str]) -> None:
        self.csv_path = Path(csv_path)
        self.rows: list[dict[str, Any]] = []

    def reset(self) -> None:
        """Forget the rows kept (a new run starts)."""
        self.rows = []

    def __call__(self, name: str, image: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """Keep one case's rows (those of :func:`medsam_monai.bundle.inferer.iou_rows_of`) and log its key slices."""
        for row in rows:
            self.rows.append({"case": name, "image": image, **row})
            if row["key"]:
                ious = " ".join(f"{v:.2f}" for v in row["iou"])
                logger.info(
                    f"case {name}: object {row['label']}: IoU {ious} (kept mask {row['kept']}) on its key slice "
                    f"{row['voxel_axis']} = {row['slice']}"
                )

    def report(self) -> Path | None:
        """Write the table (atomically); None when no case used multimask."""
        if not self.rows:
            return None
        self.csv_path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.csv_path.with_name(f".{self.csv_path.name}.tmp")
        with open(temporary, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.COLUMNS)
            writer.writeheader()
            for row in self.rows:
                ious = {f"iou_{m}": f"{v:.6f}" for m, v in enumerate(row["iou"], start=1)}
                fields = {k: row[k] for k in self.COLUMNS if k in row and not k.startswith("iou_")}
                writer.writerow({**fields, "key": int(row["key"]), **ious})
        os.replace(temporary, self.csv_path)
        logger.info(f"multimask IoUs of {len({r['case'] for r in self.rows})} case(s) in {self.csv_path}")
        return self.csv_path
