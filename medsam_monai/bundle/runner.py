"""Running the cases: the bundle's ``evaluator``, an ignite engine (a MONAI ``Evaluator``) over the cases.

Each iteration is one case: load and prepare it (the dataset's preprocessing), segment it (the
inferer), write it (the postprocessing) and, when evaluating, score it. A case that fails is logged
in one line naming it and the run goes on to the next; once all cases ran, a run where any case
failed ends with :class:`CasesFailed` (a summary line, exit status 1).

Why go on past a failed case: a datalist is a batch job, often of hundreds of volumes run
unattended; one unreadable file or mistyped box must not throw away the hours spent on the others,
nor stop the cases after it. The outputs of the cases that worked are complete (each is written
atomically), the log names every failure with its reason, and the exit status still tells a
script that the run was not clean.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from ignite.engine import Events
from monai.engines import Evaluator
from monai.inferers import Inferer
from monai.utils import convert_to_numpy

from ..download import DownloadError
from ..errors import one_line
from ..predictor import MedSAMPredictor
from ..transforms import BOXES_KEY, CASE_INDEX_KEY, PROMPTS_KEY
from .cases import CaseDataset, case_name, image_of, name_or_none
from .metrics import MultimaskReport, SegmentationScorer
from .settings import BundleExit

logger = logging.getLogger(__name__)

#: Exceptions that mean "bad input" (reported in one line), as the ``medsam`` command treats them.
USER_ERRORS = (ValueError, OSError, DownloadError)


class CasesFailed(BundleExit):
    """Ends a run in which some cases failed: one summary line naming them, exit status 1.

    The cases that worked have written their outputs by then; each failure was logged in its own line.
    """

    #: Names listed in the summary line before "and N more", so it stays one readable line.
    MAX_NAMES = 10

    def __init__(self, failed: Sequence[str], total: int) -> None:
        self.failed = list(failed)
        shown = ", ".join(self.failed[: self.MAX_NAMES])
        if len(self.failed) > self.MAX_NAMES:
            shown += f" and {len(self.failed) - self.MAX_NAMES} more"
        SystemExit.__init__(self, f"medsam bundle: {len(self.failed)} of {total} cases failed: {shown}")


def root_cause(error: BaseException) -> BaseException:
    """The original exception: MONAI's Compose re-raises each as RuntimeError('applying transform ...')."""
    while error.__cause__ is not None:
        error = error.__cause__
    return error


def case_tag(index: int, count: int, entry: Any) -> str:
    """How the log names a case: ``case 2/5 (path)``, or ``case 2/5`` when it has no image."""
    try:
        return f"case {index + 1}/{count} ({image_of(entry)})"
    except ValueError:
        return f"case {index + 1}/{count}"


def failed_name(index: int, entry: Any, cases: Sequence[Any]) -> str:
    """How the summary names a failed case: its case name, with its number where that name is not unique."""
    name = name_or_none(entry)
    if name is None:
        return f"case {index + 1}"
    same = sum(1 for other in cases if name_or_none(other) == name)
    return name if same == 1 else f"{name} (case {index + 1})"


def report_failure(tag: str, error: Exception) -> None:
    """Log a failed case in one line; a failure that is not the input's fault keeps its traceback."""
    cause = root_cause(error)
    if isinstance(cause, USER_ERRORS):
        logger.error(f"{tag} failed: {one_line(cause)}")
    else:  # not the input's fault: keep the traceback for the bug report
        logger.error(f"{tag} failed: {type(cause).__name__}: {one_line(cause)}", exc_info=error)


def labels_summary(data: Mapping[Hashable, Any]) -> str:
    """``wrote <file>: label 1 123 voxels, ...`` for a finished case."""
    labels = np.asarray(convert_to_numpy(data["pred"]))
    values, counts = np.unique(labels[labels > 0], return_counts=True)
    voxels = ", ".join(f"label {v} {c} voxels" for v, c in zip(values, counts, strict=True)) or "empty"
    written = data.get("pred_file")
    return (f"wrote {written}: " if written else "") + voxels


class CaseEvaluator(Evaluator):
    """The bundle's inference and evaluation engine: one iteration per case, failures kept to their case.

    A MONAI ``Evaluator`` (an ignite ``Engine``), so MONAI's handlers (``val_handlers``), metrics
    (``key_val_metric``) and tools that expect the bundle's ``evaluator`` to be an engine work with it.
    Unlike ``SupervisedEvaluator`` it reads each case itself, inside the iteration (its data is the
    case numbers), because an error raised by a data loader would end the whole run.

    Args:
        device: the run's device (the predictor holds the network on it).
        dataset: the cases through the preprocessing (:class:`~medsam_monai.bundle.cases.CaseDataset`).
        predictor: the network, wrapped for inference.
        inferer: ``inferer(image, predictor, boxes, prompts=..., iou_rows=[])`` -> labels
            (:class:`~medsam_monai.bundle.inferer.BoxPropagationInferer`).
        postprocessing: applied to each case's data (``pred`` added) inside its iteration, so that a
            failed write fails that case only.
        scorer: scores each case and writes the tables at the end (evaluation); its means go to
            ``state.metrics`` as ``mean_dice`` and ``mean_nsd``.
        iou_report: keeps the multimask IoUs of each case and writes them at the end.

    After :meth:`run`, ``finished`` lists each finished case's name, image and output file, and
    ``failed`` the names of the cases that failed.
    """

    def __init__(
        self,
        device: Any,
        dataset: CaseDataset,
        predictor: MedSAMPredictor,
        inferer: Inferer,
        postprocessing: Any = None,
        scorer: SegmentationScorer | None = None,
        val_handlers: Sequence[Any] | None = None,
        key_val_metric: dict[str, Any] | None = None,
        additional_metrics: dict[str, Any] | None = None,
        boxes_key: str = BOXES_KEY,
        iou_report: MultimaskReport | None = None,
    ) -> None:
        self.dataset = dataset
        super().__init__(
            device=device,
            val_data_loader=range(len(dataset)),
            key_val_metric=key_val_metric,
            additional_metrics=additional_metrics,
            val_handlers=val_handlers,
            decollate=False,  # one case per iteration, as a dict: nothing to decollate
        )
        self.predictor = predictor
        self.network = predictor.model
        self.inferer = inferer
        self.case_postprocessing = postprocessing
        self.scorer = scorer
        self.boxes_key = boxes_key
        self.iou_report = iou_report
        self.finished: list[dict[str, Any]] = []
        self.failed: list[str] = []
        self.owners: dict[str, int] = {}
        self.add_event_handler(Events.STARTED, self.start_cases)
        self.add_event_handler(Events.EPOCH_COMPLETED, self.summarise)

    def run(self, global_epoch: int = 1) -> list[dict[str, Any]]:  # type: ignore[override]
        """Run every case; returns the finished ones; raises :class:`CasesFailed` when any failed."""
        super().run(global_epoch)
        if self.failed:
            raise CasesFailed(self.failed, len(self.dataset))
        return self.finished

    def start_cases(self, engine: Evaluator) -> None:
        """A run starts with no case finished, failed or owning an output name, and no IoUs kept."""
        self.finished, self.failed, self.owners = [], [], {}
        if self.iou_report is not None:
            self.iou_report.reset()

    def _iteration(self, engine: Evaluator, index: int) -> dict[Hashable, Any]:  # ignite's per-batch hook
        cases = self.dataset.data
        entry = cases[index]
        tag = case_tag(index, len(cases), entry)
        try:
            data = self.run_case(index, entry)
        except Exception as error:  # noqa: BLE001 - one case's failure must not stop the others
            report_failure(tag, error)
            self.failed.append(failed_name(index, entry, cases))
            return {CASE_INDEX_KEY: index, "error": one_line(root_cause(error))}
        logger.info(f"{tag}: {self.case_summary(data)}")
        # Keep names only: holding every case's volumes would grow with the datalist.
        self.finished.append({"case": case_name(image_of(entry)), "image": image_of(entry), "output": data.get("pred_file")})
        return data

    def run_case(self, index: int, entry: Any) -> dict[Hashable, Any]:
        """Prepare, segment, write and score one case; its data with ``pred`` (and ``pred_file``)."""
        name = case_name(image_of(entry))
        self.claim_output_name(name, index)
        data = self.dataset[index]
        rows: list[dict[str, Any]] = []
        data["pred"] = self.inferer(
            data["image"], self.predictor, data[self.boxes_key], prompts=data.get(PROMPTS_KEY), iou_rows=rows
        )
        if self.case_postprocessing is not None:
            data = self.case_postprocessing(data)
        if self.scorer is not None:
            self.scorer(data, name)
        if rows and self.iou_report is not None:  # after the write: a failed case reports nothing
            self.iou_report(name, image_of(entry), rows)
        return data

    def claim_output_name(self, name: str, index: int) -> None:
        """Case ``index`` writes under ``name``; a one-line ValueError when an earlier case of the run did."""
        if name in self.owners:
            raise ValueError(
                f"its output name {name!r} is already used by case {self.owners[name] + 1}; give the images distinct names"
            )
        self.owners[name] = index

    def case_summary(self, data: Mapping[Hashable, Any]) -> str:
        """The log line's text for a finished case (what was written)."""
        return labels_summary(data)

    def summarise(self, engine: Evaluator) -> None:
        """After the last case: the scorer's tables and means, the multimask IoUs, and one line of how many cases ran."""
        total = len(self.dataset)
        if self.scorer is not None and self.finished:
            self.scorer.report()
            self.state.metrics.update(self.scorer.means())
        if self.iou_report is not None:
            self.iou_report.report()
        failed = total - len(self.finished)
        logger.info(f"{len(self.finished)} of {total} case(s) done" + (f", {failed} failed" if failed else ""))
