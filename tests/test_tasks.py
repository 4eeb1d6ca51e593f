"""The transfer task registry and the semi-supervised subsets (no detectron2 needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from detco_bench.errors import UserError
from detco_bench.tasks import (
    FAMILIES,
    SUBSETS,
    TASK_NAMES,
    TASKS,
    check_subset,
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


def test_reference_names_match_paper_csv() -> None:
    """Every task (and the subset spelling) is a task name of results/reference/paper.csv."""
    import csv

    paper = Path(__file__).resolve().parent.parent / "results" / "reference" / "paper.csv"
    with paper.open(newline="") as f:
        rows = list(csv.DictReader(f))
    tasks = {r["task"] for r in rows}
    for name in ISSUE_TASKS:
        assert name in tasks, name
        refs = {r["source"] for r in rows if r["task"] == name}
        assert refs == {TASKS[name].reference}, (name, refs)
        metrics = {r["metric"] for r in rows if r["task"] == name}
        assert set(TASKS[name].metrics) <= metrics, (name, metrics)
    assert {"coco_fpn_12k@1%", "coco_fpn_12k@10%", "retinanet_12k@1%"} <= tasks


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
