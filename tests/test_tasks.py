"""The task registry (transfer and reference-only tasks), the report sections derived from it, subsets."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from detco_bench.errors import UserError
from detco_bench.report.taxonomy import SECTIONS, headline_metric, section_of
from detco_bench.tasks import (
    FAMILIES,
    REFERENCE_TASKS,
    SUBSETS,
    TASK_NAMES,
    TASKS,
    check_subset,
    find_benchmark,
    get_task,
    normalize_subset,
    parse_subset,
    subset_image_ids,
    task_label,
    write_subset_json,
)
from detco_bench.transfer_config import config_path

ISSUE_TASKS = (
    "coco_c4_12k",
    "coco_c4_1x",
    "coco_c4_2x",
    "coco_fpn_12k",
    "coco_fpn_1x",
    "coco_fpn_2x",
    "retinanet_12k",
    "retinanet_1x",
    "retinanet_2x",
    "keypoint_fpn_2x",
    "voc_c4_24k",
    "cityscapes_inst_fpn",
    "cityscapes_sem",
)


def test_registry_has_exactly_the_issue_tasks() -> None:
    assert TASK_NAMES == ISSUE_TASKS
    for name in ISSUE_TASKS:
        task = get_task(name)
        assert task.name == name
        assert task.family in FAMILIES
        assert config_path(task.config).is_file(), task.config
        assert task.config.endswith("_moco.yaml")
        assert task.metrics and all("/" in m for m in task.metrics)


def paper_rows() -> list[dict[str, str]]:
    with (Path(__file__).resolve().parent.parent / "detco_bench" / "references" / "paper.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_reference_names_match_paper_csv() -> None:
    """Every task (and the subset spelling) is a task name of detco_bench/references/paper.csv."""
    rows = paper_rows()
    tasks = {r["task"] for r in rows}
    for name in ISSUE_TASKS:
        assert name in tasks, name
        refs = {r["source"] for r in rows if r["task"] == name}
        assert refs == {TASKS[name].reference}, (name, refs)
        metrics = {r["metric"] for r in rows if r["task"] == name}
        assert set(TASKS[name].metrics) <= metrics, (name, metrics)
    assert {"coco_fpn_12k@1%", "coco_fpn_12k@10%", "retinanet_12k@1%"} <= tasks


def test_reference_only_tasks_match_paper_csv_and_are_not_runnable() -> None:
    """The paper's benchmarks that no transfer engine runs: in paper.csv, never in TASKS."""
    rows = paper_rows()
    assert set(REFERENCE_TASKS) == {"linear_protocol", "voc07_svm", "densepose_fpn"}
    for name, task in REFERENCE_TASKS.items():
        assert name not in TASKS and find_benchmark(name) is task
        assert {r["source"] for r in rows if r["task"] == name} == {task.reference}
        assert {r["metric"] for r in rows if r["task"] == name} == set(task.metrics)
    assert find_benchmark("coco_fpn_1x") is TASKS["coco_fpn_1x"] and find_benchmark("coco_fpn_1x@1%") is None
    with pytest.raises(UserError, match="unknown task 'linear_protocol'"):
        get_task("linear_protocol")


BOX = ("bbox/AP", "bbox/AP50", "bbox/AP75")
MASK = ("segm/AP", "segm/AP50", "segm/AP75")
# The paper's tables as the report lays them out: (key, title, tasks, metrics, optional metrics).
PAPER_SECTIONS = [
    ("coco_c4", "COCO Mask R-CNN R50-C4", ("coco_c4_12k", "coco_c4_1x", "coco_c4_2x"), BOX + MASK, ()),
    ("coco_fpn", "COCO Mask R-CNN R50-FPN", ("coco_fpn_12k", "coco_fpn_1x", "coco_fpn_2x"), BOX + MASK, ()),
    ("retinanet", "COCO RetinaNet R50-FPN", ("retinanet_12k", "retinanet_1x", "retinanet_2x"), BOX, ()),
    ("keypoint", "COCO Keypoint R-CNN R50-FPN 2x", ("keypoint_fpn_2x",),
     ("keypoints/AP", "keypoints/AP50", "keypoints/AP75"), ()),
    ("voc", "PASCAL VOC07+12 Faster R-CNN R50-C4 (24k, VOC07 test)", ("voc_c4_24k",), BOX, ()),
    ("cityscapes", "Cityscapes (instance: Mask R-CNN R50-FPN; semantic: FCN)",
     ("cityscapes_inst_fpn", "cityscapes_sem"), ("segm/AP", "segm/AP50", "sem_seg/mIoU"), ()),
    ("linear", "ImageNet-1k linear classification", ("linear_protocol",), ("top1", "top5"),
     ("knn_top1", "knn_top5")),
    ("voc07_svm", "VOC07 SVM", ("voc07_svm",), ("mAP",), ()),
    ("densepose", "COCO DensePose", ("densepose_fpn",), ("densepose/AP", "densepose/AP50", "densepose/AP75"), ()),
    ("semi", "Semi-supervised COCO (12k iterations on a random subset)",
     ("coco_fpn_12k@1%", "coco_fpn_12k@10%", "retinanet_12k@1%", "retinanet_12k@10%"), BOX, ()),
]


def test_sections_derived_from_the_registry_are_the_paper_tables() -> None:
    assert [(s.key, s.title, s.tasks, s.metrics, s.optional_metrics) for s in SECTIONS] == PAPER_SECTIONS
    # every task of paper.csv has a table
    assert all(section_of(r["task"]) is not None for r in paper_rows())


def test_section_and_headline_of_labels() -> None:
    assert section_of("coco_c4_12k@5%").key == "semi"  # any subset goes with the semi-supervised tables
    assert section_of("coco_fpn_1x.synthetic+opts") is None  # not the protocol: "Other tasks"
    assert section_of("linear_fast.imagenet-4classes") is None and section_of("x@y") is None
    assert headline_metric("coco_fpn_12k@1%") == "bbox/AP" and headline_metric("voc07_svm") == "mAP"
    assert headline_metric("cityscapes_inst_fpn") == "segm/AP" and headline_metric("linear_protocol") == "top1"
    assert headline_metric("cityscapes_sem.synthetic") == "sem_seg/mIoU"
    assert headline_metric("linear_fast.imagenet-4classes") == "bbox/AP" == headline_metric("mystery")


def test_unknown_task_names_every_task() -> None:
    with pytest.raises(UserError) as exc:
        get_task("coco_fpn_3x")
    message = str(exc.value)
    assert "unknown task 'coco_fpn_3x'" in message
    for name in ISSUE_TASKS:
        assert name in message


@pytest.mark.parametrize(
    "text, fraction, canonical", [("1%", 0.01, "1%"), ("2", 0.02, "2%"), ("5%", 0.05, "5%"), ("10%", 0.10, "10%")]
)
def test_subset_parsing(text: str, fraction: float, canonical: str) -> None:
    assert parse_subset(text) == pytest.approx(fraction)
    assert normalize_subset(text) == canonical
    assert task_label("coco_fpn_12k", text) == f"coco_fpn_12k@{canonical}"


def test_subset_rejects_other_values_and_tasks() -> None:
    assert SUBSETS == ("1%", "2%", "5%", "10%")
    assert parse_subset(None) is None and task_label("voc_c4_24k") == "voc_c4_24k"
    with pytest.raises(UserError, match="unknown --subset"):
        parse_subset("3%")
    with pytest.raises(UserError, match="--subset applies to COCO tasks"):
        check_subset(get_task("voc_c4_24k"), "1%")
    assert check_subset(get_task("retinanet_12k"), "10") == "10%"


def test_subset_sampling_is_deterministic_nested_and_sized() -> None:
    ids = list(range(1, 1001))
    one = subset_image_ids(ids, 0.01, seed=0)
    assert sorted(subset_image_ids(list(reversed(ids)), 0.01, seed=0)) == one  # independent of the order
    assert len(one) == 10 and one == sorted(one)  # original order kept
    assert subset_image_ids(ids, 0.01, seed=0) == one  # deterministic
    assert subset_image_ids(ids, 0.01, seed=1) != one  # the seed matters
    ten = subset_image_ids(ids, 0.10, seed=0)
    assert len(ten) == 100 and set(one) <= set(ten)  # nested
    assert len(subset_image_ids([7], 0.01, seed=3)) == 1  # at least one image
    # Pinned values: the rule must not change silently between versions.
    assert one == [70, 302, 357, 443, 628, 777, 808, 894, 924, 974]


def test_write_subset_json_keeps_only_chosen_images(tmp_path: Path) -> None:
    data = {
        "info": {"description": "x"},
        "images": [{"id": i, "file_name": f"{i}.jpg", "height": 8, "width": 8} for i in range(1, 41)],
        "annotations": [
            {"id": 100 + i, "image_id": i, "category_id": 1, "bbox": [0, 0, 2, 2], "area": 4, "iscrowd": 0}
            for i in range(1, 41)
        ],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    }
    src = tmp_path / "train.json"
    src.write_text(json.dumps(data))
    summary = write_subset_json(src, tmp_path / "sub" / "train_10pct.json", 0.10, seed=5)
    out = json.loads((tmp_path / "sub" / "train_10pct.json").read_text())
    chosen = subset_image_ids(list(range(1, 41)), 0.10, 5)
    assert [im["id"] for im in out["images"]] == chosen
    assert sorted(a["image_id"] for a in out["annotations"]) == chosen
    assert out["categories"] == data["categories"]
    assert out["info"]["detco_bench_subset"]["fraction"] == 0.10
    assert summary["images"] == 4 and summary["of_images"] == 40
    with pytest.raises(UserError, match="not found"):
        write_subset_json(tmp_path / "missing.json", tmp_path / "x.json", 0.1, 0)
