"""Bad input, command by command: one `error:` line on stderr, exit code 2, no traceback, and
nothing on disk created or changed. The cases are data (CASES); each runs the real console
entry point (`detco_bench.cli.main`) in-process."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from detco_bench.cli import main
from detco_bench.synthetic import write_synthetic_dataset
from tests.conftest import save_random_resnet

TRANSFER = ["transfer", "--task", "coco_fpn_1x", "--checkpoint", "{ck}", "--device", "cpu", "--engine",
            "torchvision", "--data-root", "{data}", "--cache-dir", "{tmp}/cache", "--results", "{tmp}/results"]

#: (case id, argv with {placeholders}, a fragment of the expected error line)
CASES: list[tuple[str, list[str], str]] = [
    # the parser itself
    ("no-command-args", ["convert"], "Missing argument"),
    ("bad-int", [*TRANSFER, "--out", "{tmp}/o", "--gpus", "abc"], "Invalid value for '--gpus'"),
    ("unknown-flag", ["report", "--no-such-flag"], "No such option"),
    # convert
    ("convert-missing-input", ["convert", "{tmp}/none.pth", "--to", "torchvision", "--out", "{tmp}/o.pth"],
     "not found"),
    ("convert-not-a-checkpoint", ["convert", "{file}", "--to", "torchvision", "--out", "{tmp}/o.pth"], "{file}"),
    ("convert-out-under-a-file", ["convert", "{ck}", "--to", "torchvision", "--out", "{file}/x.pth"],
     "is not a folder"),
    ("convert-out-exists", ["convert", "{ck}", "--to", "torchvision", "--out", "{file}"], "--force"),
    ("convert-out-is-a-folder", ["convert", "{ck}", "--to", "torchvision", "--out", "{tmp}/folder"],
     "give a file path"),
    ("convert-pkl-suffix", ["convert", "{ck}", "--to", "detectron2", "--out", "{tmp}/o.pth"], ".pkl"),
    ("convert-unknown-target", ["convert", "{ck}", "--to", "onnx", "--out", "{tmp}/o.pth"], "onnx"),
    # transfer: options
    ("transfer-no-task", ["transfer", "--out", "{tmp}/o"], "--task is required"),
    ("transfer-unknown-task", ["transfer", "--task", "coco_fpn_3x", "--out", "{tmp}/o"], "unknown task"),
    ("transfer-no-checkpoint", ["transfer", "--task", "coco_fpn_1x", "--out", "{tmp}/o"], "--checkpoint"),
    ("transfer-missing-checkpoint", ["transfer", "--task", "coco_fpn_1x", "--checkpoint", "{tmp}/none.pth",
                                     "--out", "{tmp}/o"], "none.pth"),
    ("transfer-unknown-device", [*TRANSFER, "--out", "{tmp}/o", "--device", "tpu"], "--device"),
    ("transfer-unknown-launcher", [*TRANSFER, "--out", "{tmp}/o", "--launcher", "pbs"], "--launcher"),
    ("transfer-unknown-engine", [*TRANSFER, "--out", "{tmp}/o", "--engine", "mmdet"], "engine"),
    ("transfer-unknown-scaling", [*TRANSFER, "--out", "{tmp}/o", "--scaling", "sqrt"], "--scaling"),
    ("transfer-bad-subset", [*TRANSFER, "--out", "{tmp}/o", "--subset", "3%"], "3%"),
    ("transfer-subset-not-coco", ["transfer", "--task", "voc_c4_24k", "--out", "{tmp}/o", "--subset", "1%",
                                  "--print-config"], "--subset applies to COCO tasks"),
    ("transfer-gpus-on-cpu", [*TRANSFER, "--out", "{tmp}/o", "--gpus", "2"], "--device cpu runs a single"),
    ("transfer-machine-rank", [*TRANSFER, "--out", "{tmp}/o", "--machine-rank", "3"], "--machine-rank"),
    ("transfer-c4-needs-bottleneck", [*TRANSFER, "--out", "{tmp}/o", "--task", "coco_c4_1x"], "bottleneck"),
    ("transfer-custom-json-incomplete", [*TRANSFER, "--out", "{tmp}/o", "--train-json", "{file}"],
     "needs --train-json, --val-json and --images"),
    # transfer: the output folder
    ("transfer-out-is-a-file", [*TRANSFER, "--out", "{file}"], "exists and is not a folder"),
    ("transfer-out-is-a-file-force", [*TRANSFER, "--out", "{file}", "--force"], "exists and is not a folder"),
    ("transfer-out-under-a-file", [*TRANSFER, "--out", "{file}/job"], "is a file, not a folder"),
    ("transfer-out-foreign-folder", [*TRANSFER, "--out", "{tmp}/folder"], "not a detco-bench transfer folder"),
    # transfer: --opts
    ("opts-odd", [*TRANSFER, "--out", "{tmp}/o", "--opts", "SOLVER.MAX_ITER"], "odd number"),
    ("opts-unknown-key", [*TRANSFER, "--out", "{tmp}/o", "--opts", "SOLVER.MAX_ITR", "5"], "did you mean"),
    ("opts-bad-type", [*TRANSFER, "--out", "{tmp}/o", "--opts", "SOLVER.MAX_ITER", "abc"], "expects an int"),
    ("opts-zero-iterations", [*TRANSFER, "--out", "{tmp}/o", "--opts", "SOLVER.MAX_ITER", "0"],
     "at least one iteration"),
    ("opts-negative-batch", [*TRANSFER, "--out", "{tmp}/o", "--opts", "SOLVER.IMS_PER_BATCH", "-2"],
     "at least one image"),
    ("opts-warmup-longer-than-run", [*TRANSFER, "--out", "{tmp}/o", "--opts", "SOLVER.MAX_ITER", "5",
                                     "SOLVER.WARMUP_ITERS", "50"], "never leave warm-up"),
    ("opts-unknown-dataset", [*TRANSFER, "--out", "{tmp}/o", "--opts", "DATASETS.TEST", "('nope',)"], "nope"),
    ("opts-without-marker", [*TRANSFER, "--out", "{tmp}/o", "SOLVER.MAX_ITER", "5"], "after --opts"),
    # transfer: dataset contents, found at plan time
    ("data-missing", [*TRANSFER, "--out", "{tmp}/o", "--data-root", "{tmp}/nodata"],
     "annotation file not found"),
    ("data-missing-images", [*TRANSFER, "--out", "{tmp}/o", "--data-root", "{bad_images}"],
     "image file(s) of"),
    ("data-no-annotations", [*TRANSFER, "--out", "{tmp}/o", "--data-root", "{no_annotations}"],
     "has no annotations"),
    ("data-unknown-category", [*TRANSFER, "--out", "{tmp}/o", "--data-root", "{bad_category}"],
     "unknown category id"),
    ("data-corrupt-json", [*TRANSFER, "--out", "{tmp}/o", "--data-root", "{corrupt_json}"], "cannot read"),
    # data
    ("data-unknown-layout", ["data", "synthetic", "--layout", "xml", "--out", "{tmp}/d"], "unknown layout"),
    ("data-out-is-a-file", ["data", "synthetic", "--layout", "coco", "--out", "{file}"], "not a folder"),
    ("data-out-under-a-file", ["data", "synthetic", "--layout", "coco", "--out", "{file}/d"], "is a file"),
    ("data-bad-size", ["data", "synthetic", "--layout", "coco", "--out", "{tmp}/d", "--size", "0x0"],
     "size"),
    # run
    ("run-unknown-suite", ["run", "--checkpoint", "{ck}", "--out", "{tmp}/p", "--suite", "nope"], "unknown task"),
    ("run-out-under-a-file", ["run", "--checkpoint", "{ck}", "--out", "{file}/p", "--suite", "linear:knn",
                              "--linear-data", "{tmp}"], "is a file"),
    ("run-bad-retries", ["run", "--checkpoint", "{ck}", "--out", "{tmp}/p", "--suite", "linear:knn",
                         "--linear-data", "{tmp}", "--max-retries", "-1"], "--max-retries"),
    ("run-bad-reference", ["run", "--checkpoint", "{ck}", "--out", "{tmp}/p", "--suite", "linear:knn",
                           "--linear-data", "{tmp}", "--check", "bogusref"], "bogusref"),
    ("run-bad-baseline", ["run", "--checkpoint", "{ck}", "--out", "{tmp}/p", "--suite", "linear:knn",
                          "--linear-data", "{tmp}", "--baselines", "supervised:{tmp}/none.pth"], "none.pth"),
    # report
    ("report-bad-reference", ["report", "{tmp}/folder", "--check", "--reference", "bogusref"], "bogusref"),
    ("report-unknown-format", ["report", "{tmp}/folder", "--format", "docx"], "docx"),
    ("report-missing-source", ["report", "{tmp}/none"], "none"),
]


def _break_coco(root: Path, how: str) -> Path:
    ann = root / "coco" / "annotations" / "instances_train2017.json"
    data = json.loads(ann.read_text())
    if how == "images":
        (root / "coco" / "train2017" / data["images"][0]["file_name"]).unlink()
    elif how == "annotations":
        data["annotations"] = []
    elif how == "category":
        data["annotations"][0]["category_id"] = 999
    if how == "corrupt":
        ann.write_text('{"images": [')
    else:
        ann.write_text(json.dumps(data))
    return root


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    base = tmp_path_factory.mktemp("bad")
    good = base / "data"
    write_synthetic_dataset(good, "coco", num_train=4, num_val=2, seed=0, image_size=(64, 64))
    values = {"data": str(good), "ck": str(save_random_resnet(base / "r18.pth"))}
    for key, how in (("bad_images", "images"), ("no_annotations", "annotations"), ("bad_category", "category"),
                     ("corrupt_json", "corrupt")):
        shutil.copytree(good, base / key)
        values[key] = str(_break_coco(base / key, how))
    return values


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("case,argv,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(case: str, argv: list[str], expected: str, fixtures: dict[str, str],
                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "afile").write_text("not a folder, not a checkpoint")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "notes.txt").write_text("someone else's")
    values = {**fixtures, "tmp": str(tmp_path), "file": str(tmp_path / "afile")}
    args = [a.format(**values) for a in argv]
    before = _snapshot(tmp_path)
    monkeypatch.setattr(sys, "argv", ["detco-bench", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expected.format(**values) in lines[0]
    assert _snapshot(tmp_path) == before, "bad input must not create or change anything"


def test_the_case_table_is_data() -> None:
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids)) >= 50
