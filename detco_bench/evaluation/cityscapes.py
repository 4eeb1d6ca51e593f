"""Cityscapes evaluation with cityscapesScripts, for any engine.

Predictions are written in the official result formats into a work folder, then scored by
cityscapesScripts' own evaluation code (``evalPixelLevelSemanticLabeling`` /
``evalInstanceLevelSemanticLabeling``), exactly as its command-line tools would:

* semantic: one ``<city>_<seq>_<frame>_pred.png`` per image holding Cityscapes *label ids*
  (trainIds are mapped back with `CITYSCAPES_TRAINID_TO_ID`); metrics ``mIoU`` (class IoU
  average), ``iIoU``, ``IoU_sup`` / ``iIoU_sup`` (categories), all in percent.
* instance: per image a ``<city>_<seq>_<frame>_pred.txt`` listing ``mask.png label_id score``
  lines and one binary mask PNG per instance; metrics ``AP`` and ``AP50`` in percent.

Several processes of one job may write predictions into the same folder (distinct file names);
one process then calls ``evaluate``.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from detco_bench.datasets.cityscapes import CITYSCAPES_THING_IDS, CITYSCAPES_TRAINID_TO_ID


def _quiet_args(cs: Any, pred_dir: Path) -> Any:
    """cityscapesscripts' module-level evaluation args, pointed at our predictions, no console output."""
    args = cs.args
    args.predictionPath = str(pred_dir.resolve())
    args.predictionWalk = None
    args.JSONOutput = False
    args.colorized = False
    args.quiet = True
    return args


class _NumpyCompat:
    """numpy for cityscapesScripts 2.3: it calls ``np.in1d``, which numpy 2.4 removed; this
    forwards everything to numpy and provides in1d as the flattened ``np.isin`` it was."""

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)

    @staticmethod
    def in1d(ar1: Any, ar2: Any, assume_unique: bool = False, invert: bool = False) -> np.ndarray:
        return np.isin(np.asarray(ar1).ravel(), ar2, assume_unique=assume_unique, invert=invert)


def _write_dict_json(data: Any, path: str) -> None:
    """cityscapesScripts' writeDict2JSON, also accepting numpy scalars (numpy 2's count_nonzero
    returns np.int64, which its ``default=lambda o: o.__dict__`` cannot serialize)."""

    def default(o: Any) -> Any:
        return o.item() if isinstance(o, np.generic) else o.__dict__

    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(data, default=default, sort_keys=True, indent=4))


def _cityscapes_module(name: str) -> Any:
    """A cityscapesScripts evaluation module, made to work with numpy 2 (module-local patches:
    ``np.in1d``, removed in numpy 2.4, and JSON dumps of numpy scalars). Imported by name when
    first evaluated: these modules read $CITYSCAPES_DATASET and build their args at import."""
    module = importlib.import_module(f"cityscapesscripts.evaluation.{name}")
    if not hasattr(np, "in1d") and not isinstance(module.np, _NumpyCompat):
        module.np = _NumpyCompat()
    if hasattr(module, "writeDict2JSON"):
        module.writeDict2JSON = _write_dict_json
    return module


def _stem(image_file: str | os.PathLike) -> str:
    name = Path(image_file).name
    return name[: -len("_leftImg8bit.png")] if name.endswith("_leftImg8bit.png") else Path(name).stem


@contextlib.contextmanager
def _cityscapes_call(work_dir: Path) -> Iterator[io.StringIO]:
    """Run cityscapesScripts code quietly inside `work_dir` (it writes matches.json into the cwd),
    turning its printError/sys.exit into a RuntimeError with its message."""
    out = io.StringIO()
    cwd = os.getcwd()
    os.chdir(work_dir)
    try:
        with contextlib.redirect_stdout(out):
            yield out
    except SystemExit:
        lines = [ln for ln in out.getvalue().splitlines() if ln.strip()]
        raise RuntimeError(f"cityscapesScripts evaluation failed: {lines[-1] if lines else 'exit'}") from None
    finally:
        os.chdir(cwd)


class _PredictionFolder:
    """A work folder whose ``pred/`` subfolder collects the official result files of one job."""

    def __init__(self, work_dir: str | os.PathLike) -> None:
        self.work_dir = Path(work_dir)
        self.pred_dir = self.work_dir / "pred"
        self.pred_dir.mkdir(parents=True, exist_ok=True)

    def _ground_truths(self, pred_suffix: str, what: str, gt_dir: str | os.PathLike, gt_kind: str) -> list[str]:
        """The gtFine file of every prediction written so far (``<city>_<seq>_<frame>`` + suffix):
        there must be at least one prediction, and every ground truth must exist."""
        preds = sorted(self.pred_dir.glob(f"*{pred_suffix}"))
        if not preds:
            raise RuntimeError(f"no {what} predictions in {self.pred_dir}")
        gts = []
        for p in preds:
            stem = p.name[: -len(pred_suffix)]
            gts.append(str(Path(gt_dir) / stem.split("_")[0] / f"{stem}_gtFine_{gt_kind}.png"))
        missing = [g for g in gts if not Path(g).is_file()]
        if missing:
            raise RuntimeError(f"{len(missing)} ground-truth {gt_kind} files missing, e.g. {missing[0]}")
        return gts


class SemanticWriter(_PredictionFolder):
    """Collects semantic predictions (trainId maps) and scores them with cityscapesScripts."""

    def __init__(self, work_dir: str | os.PathLike) -> None:
        super().__init__(work_dir)
        self._lut = np.full(256, 0, dtype=np.uint8)
        for train_id, label_id in enumerate(CITYSCAPES_TRAINID_TO_ID):
            self._lut[train_id] = label_id

    def add(self, image_file: str | os.PathLike, train_ids: np.ndarray) -> Path:
        train_ids = np.asarray(train_ids)
        label_ids = self._lut[np.clip(train_ids, 0, 255).astype(np.uint8)]
        path = self.pred_dir / f"{_stem(image_file)}_pred.png"
        Image.fromarray(label_ids).save(path)
        return path

    def evaluate(self, gt_dir: str | os.PathLike, image_files: list[str] | None = None) -> dict[str, float]:
        """Score every prediction written so far against ``gt_dir/<city>/*_gtFine_labelIds.png``."""
        cs = _cityscapes_module("evalPixelLevelSemanticLabeling")
        gts = self._ground_truths("_pred.png", "semantic", gt_dir, "labelIds")
        args = _quiet_args(cs, self.pred_dir)
        args.bold = args.nocol = ""
        args.evalInstLevelScore = all(Path(g.replace("labelIds", "instanceIds")).is_file() for g in gts)
        pred_list = [cs.getPrediction(args, g) for g in gts]
        with _cityscapes_call(self.work_dir):
            results = cs.evaluateImgLists(pred_list, gts, args)
        metrics = {
            "mIoU": 100.0 * float(results["averageScoreClasses"]),
            "IoU_sup": 100.0 * float(results["averageScoreCategories"]),
        }
        if args.evalInstLevelScore:
            metrics["iIoU"] = 100.0 * float(results["averageScoreInstClasses"])
            metrics["iIoU_sup"] = 100.0 * float(results["averageScoreInstCategories"])
        return metrics


class InstanceWriter(_PredictionFolder):
    """Collects instance predictions and scores them with cityscapesScripts (AP, AP50)."""

    def add(self, image_file: str | os.PathLike, masks: np.ndarray, classes: np.ndarray, scores: np.ndarray) -> Path:
        """masks: N x H x W bool; classes: indices into CITYSCAPES_THING_CLASSES; scores: N."""
        stem = _stem(image_file)
        lines = []
        for i, (mask, cls, score) in enumerate(zip(masks, classes, scores, strict=True)):
            name = f"{stem}_{i}.png"
            Image.fromarray((np.asarray(mask) > 0).astype(np.uint8) * 255).save(self.pred_dir / name)
            lines.append(f"{name} {CITYSCAPES_THING_IDS[int(cls)]} {float(score)}\n")
        path = self.pred_dir / f"{stem}_pred.txt"
        path.write_text("".join(lines), encoding="utf-8")
        return path

    def evaluate(self, gt_dir: str | os.PathLike) -> dict[str, Any]:
        """Score every prediction written so far against ``gt_dir/<city>/*_gtFine_instanceIds.png``."""
        cs = _cityscapes_module("evalInstanceLevelSemanticLabeling")
        gts = self._ground_truths("_pred.txt", "instance", gt_dir, "instanceIds")
        args = _quiet_args(cs, self.pred_dir)
        args.gtInstancesFile = str((self.work_dir / "gtInstances.json").resolve())
        if os.path.exists(args.gtInstancesFile):
            os.unlink(args.gtInstancesFile)
        pred_list = [cs.getPrediction(g, args) for g in gts]
        with _cityscapes_call(self.work_dir):
            results = cs.evaluateImgLists(pred_list, gts, args)["averages"]
        return {"AP": 100.0 * float(results["allAp"]), "AP50": 100.0 * float(results["allAp50%"])}
