"""Reference numbers (the paper's tables, CI smoke references, any CSV of the same schema).

A reference file is a CSV with one row per published number (see detco_bench/references/README.md)::

    method,pretrain_epochs,task,schedule,engine,metric,value,spread,source

- ``method``: random | supervised | mocov2 | detco | detco_aa | any other checkpoint method name.
- ``pretrain_epochs``: int, or empty where it does not apply (random init). A record whose
  ``checkpoint.pretrain_epochs`` is null matches when the reference has exactly one epochs value
  for that method and task; an empty reference value matches any record.
- ``task``: a task label (`detco_bench.task_label`), e.g. a registry name; semi-supervised subsets
  are ``<task>@<percent>%`` (coco_fpn_12k@1%).
- ``engine``: the engine that produced the number (detectron2 for the paper's detection rows).
  Records from another engine are "not comparable" against it.
- ``spread``: the expected run-to-run standard deviation; empty means :func:`default_spread`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from detco_bench.errors import UserError
from detco_bench.package_data import package_data_dir
from detco_bench.task_label import TaskLabel
from detco_bench.tasks import Task, find_benchmark

REFERENCE_COLUMNS = ["method", "pretrain_epochs", "task", "schedule", "engine", "metric", "value",
                     "spread", "source"]
REQUIRED_COLUMNS = ["method", "task", "engine", "metric", "value"]
KEY_COLUMNS = ["method", "pretrain_epochs", "task", "engine", "metric"]
PAPER_REFERENCE = "paper"  # the published protocol's numbers (adapted runs are not compared with them)
BUILTIN_REFERENCES = (PAPER_REFERENCE, "smoke")
REFERENCE_DIR_ENV = "DETCO_BENCH_REFERENCE_DIR"

# The MoCo protocol's measured VOC07+12 spread (std over 5 trials): AP, AP50, AP75.
VOC_SPREAD = {"AP": 0.2, "AP50": 0.2, "AP75": 0.4}
# Multipliers of the VOC pattern for COCO-protocol tasks, whose paper numbers are single runs.
FULL_SCHEDULE_SCALE = 1.5   # 1x / 2x schedules, keypoints, DensePose: 0.3 / 0.3 / 0.6
SHORT_SCHEDULE_SCALE = 2.5  # 12k schedules and semi-supervised subsets: 0.5 / 0.5 / 1.0
SHORT_SCHEDULE_MAX_ITER = 12_000  # a registry task of at most this many iterations has a short schedule
CITYSCAPES_INST_SPREAD = {"AP": 0.8, "AP50": 1.2}
MIOU_SPREAD = 0.5
CLASSIFICATION_SPREAD = 0.2
FALLBACK_SPREAD = 0.5


def default_spread(task: str, metric: str) -> float:
    """The documented default run-to-run spread for a (task, metric) (detco_bench/references/README.md),
    by the metric and the task's model family and schedule in the task registry (`detco_bench.tasks`)."""
    # A name outside the label grammar is taken as a bare task name: reference files may hold any.
    label = TaskLabel.try_parse(task) or TaskLabel(task)
    benchmark = find_benchmark(label.base)
    family = benchmark.family if isinstance(benchmark, Task) else None  # reference-only tasks have none
    leaf = metric.rsplit("/", 1)[-1]
    if leaf == "mIoU":
        return MIOU_SPREAD
    if leaf in ("top1", "top5", "mAP") or metric.startswith(("top", "knn")):  # classification (VOC07 SVM: mAP)
        return CLASSIFICATION_SPREAD
    if family == "voc_c4":
        return VOC_SPREAD.get(leaf, VOC_SPREAD["AP75"])
    if family == "cityscapes_inst":
        return CITYSCAPES_INST_SPREAD.get(leaf, CITYSCAPES_INST_SPREAD["AP50"])
    if leaf.startswith("AP"):
        short = bool(label.subset) or (isinstance(benchmark, Task) and benchmark.max_iter <= SHORT_SCHEDULE_MAX_ITER)
        scale = SHORT_SCHEDULE_SCALE if short else FULL_SCHEDULE_SCALE
        return round(VOC_SPREAD.get(leaf, VOC_SPREAD["AP75"]) * scale, 3)
    return FALLBACK_SPREAD


def reference_dir() -> Path:
    """Folder of the built-in references: $DETCO_BENCH_REFERENCE_DIR, else the package's own
    ``detco_bench/references/`` (package data: a wheel carries it like a checkout)."""
    return package_data_dir("references", REFERENCE_DIR_ENV)


def resolve_reference(name_or_path: str | os.PathLike) -> tuple[str, Path]:
    """("paper" | "smoke" | the file's stem, path). Raises UserError for an unknown name. (A file
    called paper.csv elsewhere is named "paper" too: `load_reference` marks the built-ins.)"""
    text = os.fspath(name_or_path)
    if text in BUILTIN_REFERENCES:
        path = reference_dir() / f"{text}.csv"
        if not path.is_file():
            raise UserError(f"built-in reference '{text}' not found at {path}")
        return text, path
    path = Path(text).expanduser()
    if path.is_file():
        return path.stem, path
    raise UserError(
        f"unknown reference '{text}': use 'paper', 'smoke' or the path of a reference CSV file"
    )


def empty_reference() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in REFERENCE_COLUMNS})


def load_reference(name_or_path: str | os.PathLike) -> pd.DataFrame:
    """Load and validate a reference CSV. Empty spreads are filled with default_spread();
    `pretrain_epochs` becomes a nullable Int64 column. Raises UserError for a malformed file.
    attrs: name, path, and builtin (the built-in's name, else None)."""
    name, path = resolve_reference(name_or_path)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, comment=None)
    except pd.errors.EmptyDataError:
        df = empty_reference()
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise UserError(f"reference {path}: cannot read CSV ({exc})") from None
    df.columns = [c.strip() for c in df.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise UserError(f"reference {path}: missing column(s) {', '.join(missing)}")
    for col in REFERENCE_COLUMNS:
        if col not in df.columns:
            df[col] = ""
    df = df[REFERENCE_COLUMNS].copy()
    for col in df.columns:
        df[col] = df[col].astype(str).str.strip()
    for col in ("method", "task", "engine", "metric"):
        bad = df.index[df[col] == ""]
        if len(bad):
            raise UserError(f"reference {path}: empty '{col}' on data row {bad[0] + 1}")

    def numbers(col: str, allow_empty: bool) -> pd.Series:
        raw = df[col]
        out = pd.to_numeric(raw.where(raw != "", None), errors="coerce").astype(float)
        bad = df.index[out.isna() & ((raw != "") | (not allow_empty))]
        if len(bad):
            raise UserError(f"reference {path}: '{col}' is not a number on data row {bad[0] + 1}: "
                            f"{raw[bad[0]]!r}")
        return out

    df["value"] = numbers("value", allow_empty=False)
    epochs = numbers("pretrain_epochs", allow_empty=True)
    if ((epochs.dropna() % 1) != 0).any():
        raise UserError(f"reference {path}: 'pretrain_epochs' must be integers")
    df["pretrain_epochs"] = epochs.astype("Int64")
    spread = numbers("spread", allow_empty=True)
    if (spread.dropna() < 0).any():
        raise UserError(f"reference {path}: 'spread' must be >= 0")
    defaults = [default_spread(t, m) for t, m in zip(df["task"], df["metric"], strict=True)]
    df["spread"] = spread.fillna(pd.Series(defaults, index=df.index, dtype=float)).astype(float)
    dup = df.duplicated(KEY_COLUMNS, keep=False)
    if dup.any():
        row = df[dup].iloc[0]
        raise UserError(
            f"reference {path}: duplicate entry for {row['method']} / {row['task']} / "
            f"{row['engine']} / {row['metric']}"
        )
    df.attrs["name"] = name
    df.attrs["path"] = str(path)
    df.attrs["builtin"] = name if os.fspath(name_or_path) in BUILTIN_REFERENCES else None
    return df.reset_index(drop=True)
