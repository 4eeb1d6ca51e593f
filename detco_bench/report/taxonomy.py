"""The report's vocabulary: which table a task goes in, and the order of tasks, metrics and methods.

Every section (one paper-style table) is derived from the task registry (`detco_bench.tasks`):
the sections of runnable tasks collect the tasks of one or more model families (`Task.family`),
the others hold the paper's reference-only tasks (`REFERENCE_TASKS`), and the semi-supervised
section holds the paper's subsets of two registry tasks. A section's title is the reference table
its tasks share unless it says otherwise, and its metric columns are its tasks' metrics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from detco_bench.task_label import TaskLabel
from detco_bench.tasks import BOX, REFERENCE_TASKS, TASKS, ReferenceTask, Task, find_benchmark


@dataclass(frozen=True)
class ReportSection:
    """One table of the report: its key (``ReportTable.key``), title, tasks in row order, the
    metric columns, and optional columns shown only when some result has them."""

    key: str
    title: str
    tasks: tuple[str, ...]
    metrics: tuple[str, ...]
    optional_metrics: tuple[str, ...] = ()


def _section(key: str, tasks: Sequence[Task | ReferenceTask], title: str | None = None,
             optional_metrics: tuple[str, ...] = ()) -> ReportSection:
    if title is None:
        (title,) = {t.reference for t in tasks}  # tasks of one section share one paper table
    metrics = tuple(dict.fromkeys(m for t in tasks for m in t.metrics))
    return ReportSection(key, title, tuple(t.name for t in tasks), metrics, optional_metrics)


def _of_families(*families: str) -> list[Task]:
    return [t for t in TASKS.values() if t.family in families]


# The paper's semi-supervised table: 1% and 10% subsets of these 12k tasks, box AP only.
SEMI_SUPERVISED_TASKS = ("coco_fpn_12k", "retinanet_12k")
PAPER_SUBSETS = ("1%", "10%")

SEMI_SUPERVISED = ReportSection(
    "semi", "Semi-supervised COCO (12k iterations on a random subset)",
    # TASKS[t]: a renamed registry task fails here, at import, not as a silently empty table.
    tuple(str(TaskLabel(TASKS[t].name, s)) for t in SEMI_SUPERVISED_TASKS for s in PAPER_SUBSETS), BOX,
)
SECTIONS: tuple[ReportSection, ...] = (
    _section("coco_c4", _of_families("c4")),
    _section("coco_fpn", _of_families("fpn")),
    _section("retinanet", _of_families("retinanet")),
    _section("keypoint", _of_families("keypoint")),
    _section("voc", _of_families("voc_c4"), title="PASCAL VOC07+12 Faster R-CNN R50-C4 (24k, VOC07 test)"),
    _section("cityscapes", _of_families("cityscapes_inst", "cityscapes_sem"),
             title="Cityscapes (instance: Mask R-CNN R50-FPN; semantic: FCN)"),
    _section("linear", [REFERENCE_TASKS["linear_protocol"]], optional_metrics=("knn_top1", "knn_top5")),
    _section("voc07_svm", [REFERENCE_TASKS["voc07_svm"]]),
    _section("densepose", [REFERENCE_TASKS["densepose_fpn"]]),
    SEMI_SUPERVISED,
)
#: The key of the table of tasks no section knows ("Other tasks").
OTHER_SECTION_KEY = "other"
DEFAULT_HEADLINE_METRIC = "bbox/AP"

_SECTION_OF_TASK = {t: s for s in SECTIONS for t in s.tasks}
TASK_ORDER = tuple(_SECTION_OF_TASK)
_METRIC_ORDER = tuple(dict.fromkeys(m for s in SECTIONS for m in s.metrics + s.optional_metrics))


def section_of(task: str) -> ReportSection | None:
    """The section a task label is tabulated in; any subset label goes with the semi-supervised
    ones. None: the "Other tasks" table (variants, linear probes other than the protocol...)."""
    section = _SECTION_OF_TASK.get(task)
    if section is None:
        label = TaskLabel.try_parse(task)
        if label is not None and label.subset:
            return SEMI_SUPERVISED
    return section


def headline_metric(task: str) -> str:
    """The metric the plots show for a task: the first of its benchmark's metrics."""
    label = TaskLabel.try_parse(task)
    benchmark = find_benchmark(label.base) if label else None
    return benchmark.metrics[0] if benchmark else DEFAULT_HEADLINE_METRIC


def task_sort_key(task: str) -> tuple:
    section = section_of(task)
    section_idx = SECTIONS.index(section) if section else len(SECTIONS)
    idx = section.tasks.index(task) if section and task in section.tasks else len(TASK_ORDER)
    return (section_idx, idx, task)


def metric_sort_key(metric: str) -> tuple:
    return (_METRIC_ORDER.index(metric) if metric in _METRIC_ORDER else len(_METRIC_ORDER), metric)


# --------------------------------------------------------------------------- methods

METHOD_ORDER = ("random", "supervised", "mocov2", "detco", "detco_aa")
METHOD_LABELS = {
    "random": "Random init",
    "supervised": "Supervised",
    "mocov2": "MoCo v2",
    "detco": "DetCo",
    "detco_aa": "DetCo+AA",
}


def method_sort_key(method: str) -> tuple:
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


def method_label(method: str, epochs: int | None) -> str:
    label = METHOD_LABELS.get(method, method)
    return f"{label} {epochs}ep" if epochs is not None else label
