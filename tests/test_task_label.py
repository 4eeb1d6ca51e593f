"""The task label grammar TASK[@SUBSET][.VARIANT][+opts]: parsing, formatting, what is comparable."""

from __future__ import annotations

import pytest

from detco_bench.reference import default_spread
from detco_bench.task_label import TaskLabel
from detco_bench.tasks import SUBSETS, TASK_NAMES, task_label


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("coco_fpn_1x", ("coco_fpn_1x", None, None, False)),
        ("coco_fpn_12k@1%", ("coco_fpn_12k", "1%", None, False)),
        ("coco_fpn_12k@10%.synthetic", ("coco_fpn_12k", "10%", "synthetic", False)),
        ("coco_fpn_1x.synthetic+opts", ("coco_fpn_1x", None, "synthetic", True)),
        ("retinanet_12k@1%+opts", ("retinanet_12k", "1%", None, True)),
        ("coco_fpn_1x+opts", ("coco_fpn_1x", None, None, True)),
        ("linear_fast.imagenet-4classes", ("linear_fast", None, "imagenet-4classes", False)),
        ("linear_protocol.my.data", ("linear_protocol", None, "my.data", False)),  # a dotted dataset name
        ("coco_fpn_12k@2.5%.custom", ("coco_fpn_12k", "2.5%", "custom", False)),  # the subset keeps its dot
    ],
)
def test_parse_and_format_round_trip(text: str, parts: tuple) -> None:
    label = TaskLabel.parse(text)
    assert (label.base, label.subset, label.variant, label.opts) == parts
    assert str(label) == text
    assert TaskLabel.parse(str(label)) == label
    assert TaskLabel(*parts) == label


@pytest.mark.parametrize(
    "text", ["", "@1%", "coco@", "coco@1", "coco@one%", "coco.", "coco.+opts", "+opts", ".synthetic"]
)
def test_invalid_labels(text: str) -> None:
    with pytest.raises(ValueError, match="not a task label"):
        TaskLabel.parse(text)
    assert TaskLabel.try_parse(text) is None


def test_reference_name_and_protocol_measurement() -> None:
    plain = TaskLabel.parse("coco_fpn_12k@1%")
    assert plain.is_protocol_measurement and plain.reference_name == "coco_fpn_12k@1%"
    for text in ("coco_fpn_12k@1%.synthetic", "coco_fpn_12k@1%+opts", "coco_fpn_12k@1%.custom+opts"):
        label = TaskLabel.parse(text)
        assert not label.is_protocol_measurement and label.reference_name == "coco_fpn_12k@1%"


def test_with_variant_and_opts() -> None:
    label = TaskLabel("coco_fpn_1x")
    assert str(label.with_variant("synthetic").with_opts()) == "coco_fpn_1x.synthetic+opts"
    assert str(label.with_opts().with_opts(False)) == "coco_fpn_1x"
    assert label.with_variant("custom").with_variant(None) == label


def test_every_registry_task_and_subset_is_a_label() -> None:
    for name in TASK_NAMES:
        assert TaskLabel.parse(name) == TaskLabel(name)
        for subset in SUBSETS:
            assert TaskLabel.parse(task_label(name, subset)) == TaskLabel(name, subset)


def test_default_spread_reads_the_task_label() -> None:
    # the schedule is the task's, whatever the label adds; a name outside the grammar is a bare task
    assert default_spread("coco_fpn_12k.synthetic", "bbox/AP") == default_spread("coco_fpn_12k", "bbox/AP") == 0.5
    assert default_spread("coco_fpn_1x.synthetic+opts", "bbox/AP75") == 0.6
    assert default_spread("voc_c4_24k.custom", "bbox/AP") == 0.2
    assert default_spread("not a label@", "bbox/AP") == 0.3
