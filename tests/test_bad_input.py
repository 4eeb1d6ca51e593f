"""Bad input, command by command: one `error:` line on stderr, exit code 2, no traceback, and
nothing on disk created or changed. The cases are data (CASES); each runs the real console
entry point (`detco_bench.cli.main`) in-process.

Placeholders: {tmp} (the case's own folder, snapshotted: it holds `afile`, a non-empty foreign
`folder/` and `badpipe/` with a corrupt pipeline.json), {file} (= {tmp}/afile), {ck} (a random
ResNet-18), {truncated_ck}, {data} (a synthetic COCO root), {bad_images} / {no_annotations} /
{bad_category} / {corrupt_json} (that root, broken so), {imagefolder} (a small ImageFolder root),
{unreadable_images} (a folder of files that are not images) and {unwritable} (a path no process
can create: under /proc). Every case must be refused before any work: should validation let one
through, the stubs of `_stop_before_work` fail it at once instead of letting it train."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from detco_bench.cli import main
from detco_bench.synthetic import write_synthetic_dataset
from tests.conftest import save_random_resnet
from tests.test_linear import _easy_imagefolder

TRANSFER = ["transfer", "--task", "coco_fpn_1x", "--checkpoint", "{ck}", "--device", "cpu", "--engine",
            "torchvision", "--data-root", "{data}", "--cache-dir", "{tmp}/cache", "--results", "{tmp}/results"]
LINEAR = ["linear", "--checkpoint", "{ck}", "--data", "{imagefolder}", "--out", "{tmp}/o", "--mode", "knn"]
RUN_LINEAR = ["run", "--checkpoint", "{ck}", "--out", "{tmp}/p", "--suite", "linear:knn", "--linear-data",
              "{imagefolder}"]
RUN_TRANSFER = ["run", "--checkpoint", "{ck}", "--out", "{tmp}/p", "--suite", "coco_fpn_1x", "--data-root", "{data}",
                "--device", "cpu"]
CONVERT = ["convert", "{ck}", "--to", "torchvision"]
SYNTHETIC = ["data", "synthetic", "--layout", "coco"]
UNWRITABLE = "/proc/detco-bench-nowhere"


def _without_slurm(case: tuple[str, list[str], str]) -> Any:
    """A case that is bad input only where Slurm cannot be reached (no srun)."""
    return pytest.param(*case, id=case[0], marks=pytest.mark.skipif(shutil.which("srun") is not None,
                                                                    reason="this machine has srun"))


#: (case id, argv with {placeholders}, a fragment of the expected error line)
CASES: list[Any] = [
    # the parser itself, of every command and group
    ("no-command-args", ["convert"], "Missing argument"),
    ("bad-int", [*TRANSFER, "--out", "{tmp}/o", "--gpus", "abc"], "Invalid value for '--gpus'"),
    ("unknown-flag", ["report", "--no-such-flag"], "No such option"),
    ("unknown-command", ["nope"], "No such command 'nope'"),
    ("unknown-data-command", ["data", "nope"], "No such command 'nope'"),
    ("bad-float", ["report", "{tmp}/folder", "--k", "abc"], "Invalid value for '--k'"),
    ("option-without-value", ["transfer", "--task"], "requires an argument"),
    ("convert-unknown-flag", ["convert", "{ck}", "--bogus"], "No such option: --bogus"),
    ("data-unknown-flag", ["data", "synthetic", "--bogus"], "No such option: --bogus"),
    ("data-missing-out", ["data", "synthetic"], "Missing option '--out'"),
    ("demo-unknown-flag", ["demo", "--bogus"], "No such option: --bogus"),
    ("doctor-unknown-flag", ["doctor", "--bogus"], "No such option: --bogus"),
    # convert
    ("convert-missing-input", ["convert", "{tmp}/none.pth", "--to", "torchvision", "--out", "{tmp}/o.pth"],
     "not found"),
    ("convert-not-a-checkpoint", ["convert", "{file}", "--to", "torchvision", "--out", "{tmp}/o.pth"], "{file}"),
    ("convert-truncated-checkpoint", ["convert", "{truncated_ck}", "--to", "torchvision", "--out", "{tmp}/o.pth"],
     "truncated / corrupt"),
    ("convert-input-is-a-folder", ["convert", "{tmp}/folder", "--to", "torchvision", "--out", "{tmp}/o.pth"],
     "not a file"),
    ("convert-out-under-a-file", [*CONVERT, "--out", "{file}/x.pth"], "is not a folder"),
    ("convert-out-exists", [*CONVERT, "--out", "{file}"], "--force"),
    ("convert-out-is-a-folder", [*CONVERT, "--out", "{tmp}/folder"], "give a file path"),
    ("convert-out-is-the-input", [*CONVERT, "--out", "{ck}", "--force"], "is the input checkpoint"),
    ("convert-out-unwritable", [*CONVERT, "--out", f"{UNWRITABLE}/o.pth"], UNWRITABLE),
    ("convert-pkl-suffix", ["convert", "{ck}", "--to", "detectron2", "--out", "{tmp}/o.pth"], ".pkl"),
    ("convert-unknown-target", ["convert", "{ck}", "--to", "onnx", "--out", "{tmp}/o.pth"], "onnx"),
    ("convert-missing-target", ["convert", "{ck}", "--out", "{tmp}/o.pth"], "Missing option '--to'"),
    ("convert-unknown-format", [*CONVERT, "--out", "{tmp}/o.pth", "--format", "xyz"], "Invalid value for '--format'"),
    ("convert-input-size-too-small", [*CONVERT, "--out", "{tmp}/o.pth", "--input-size", "0"], "--input-size 0"),
    # transfer: options
    ("transfer-no-task", ["transfer", "--out", "{tmp}/o"], "--task is required"),
    ("transfer-unknown-task", ["transfer", "--task", "coco_fpn_3x", "--out", "{tmp}/o"], "unknown task"),
    ("transfer-no-checkpoint", ["transfer", "--task", "coco_fpn_1x", "--out", "{tmp}/o"], "--checkpoint"),
    ("transfer-missing-checkpoint", ["transfer", "--task", "coco_fpn_1x", "--checkpoint", "{tmp}/none.pth",
                                     "--out", "{tmp}/o"], "none.pth"),
    ("transfer-checkpoint-not-a-checkpoint", [*TRANSFER, "--out", "{tmp}/o", "--checkpoint", "{file}"],
     "not a PyTorch checkpoint"),
    ("transfer-checkpoint-truncated", [*TRANSFER, "--out", "{tmp}/o", "--checkpoint", "{truncated_ck}"],
     "truncated / corrupt"),
    ("transfer-checkpoint-is-a-folder", [*TRANSFER, "--out", "{tmp}/o", "--checkpoint", "{tmp}/folder"],
     "not a file"),
    ("transfer-unknown-checkpoint-format", [*TRANSFER, "--out", "{tmp}/o", "--format", "xyz"],
     "unknown checkpoint format 'xyz'"),
    ("transfer-unknown-device", [*TRANSFER, "--out", "{tmp}/o", "--device", "tpu"], "--device"),
    ("transfer-unknown-launcher", [*TRANSFER, "--out", "{tmp}/o", "--launcher", "pbs"], "--launcher"),
    ("transfer-unknown-engine", [*TRANSFER, "--out", "{tmp}/o", "--engine", "mmdet"], "engine"),
    ("transfer-unknown-scaling", [*TRANSFER, "--out", "{tmp}/o", "--scaling", "sqrt"], "--scaling"),
    ("transfer-bad-subset", [*TRANSFER, "--out", "{tmp}/o", "--subset", "3%"], "3%"),
    ("transfer-subset-not-coco", ["transfer", "--task", "voc_c4_24k", "--out", "{tmp}/o", "--subset", "1%",
                                  "--print-config"], "--subset applies to COCO tasks"),
    ("transfer-bad-subset-seed", [*TRANSFER, "--out", "{tmp}/o", "--subset-seed", "x"],
     "Invalid value for '--subset-seed'"),
    ("transfer-bad-seed", [*TRANSFER, "--out", "{tmp}/o", "--seed", "x"], "Invalid value for '--seed'"),
    ("transfer-gpus-on-cpu", [*TRANSFER, "--out", "{tmp}/o", "--gpus", "2"], "--device cpu runs a single"),
    ("transfer-zero-gpus", [*TRANSFER, "--out", "{tmp}/o", "--gpus", "0", "--device", "cuda"],
     "--gpus 0: must be at least 1"),
    ("transfer-machine-rank", [*TRANSFER, "--out", "{tmp}/o", "--machine-rank", "3"], "--machine-rank"),
    ("transfer-zero-machines", [*TRANSFER, "--out", "{tmp}/o", "--num-machines", "0"], "--num-machines 0"),
    ("transfer-machines-on-cpu", [*TRANSFER, "--out", "{tmp}/o", "--num-machines", "2"], "one machine"),
    _without_slurm(("transfer-slurm-without-a-cluster", [*TRANSFER, "--out", "{tmp}/o", "--launcher", "slurm"],
                    "--launcher slurm")),
    ("transfer-negative-keep-checkpoints", [*TRANSFER, "--out", "{tmp}/o", "--keep-checkpoints", "-1"],
     "--keep-checkpoints must be 0"),
    ("transfer-c4-needs-bottleneck", [*TRANSFER, "--out", "{tmp}/o", "--task", "coco_c4_1x"], "bottleneck"),
    ("transfer-custom-json-incomplete", [*TRANSFER, "--out", "{tmp}/o", "--train-json", "{file}"],
     "needs --train-json, --val-json and --images"),
    ("transfer-custom-json-missing", [*TRANSFER, "--out", "{tmp}/o", "--train-json", "{tmp}/none.json",
                                      "--val-json", "{tmp}/none.json", "--images", "{tmp}/folder"],
     "annotation file not found"),
    ("transfer-eval-weights-missing", [*TRANSFER, "--out", "{tmp}/o", "--eval-weights", "{tmp}/none.pth"],
     "none.pth"),
    ("transfer-eval-weights-not-a-model", [*TRANSFER, "--out", "{tmp}/o", "--eval-weights", "{file}"], "{file}"),
    ("transfer-data-root-is-a-file", [*TRANSFER, "--out", "{tmp}/o", "--data-root", "{file}"],
     "COCO images folder not found"),
    # transfer: the output folders
    ("transfer-out-is-a-file", [*TRANSFER, "--out", "{file}"], "exists and is not a folder"),
    ("transfer-out-is-a-file-force", [*TRANSFER, "--out", "{file}", "--force"], "exists and is not a folder"),
    ("transfer-out-under-a-file", [*TRANSFER, "--out", "{file}/job"], "is a file, not a folder"),
    ("transfer-out-foreign-folder", [*TRANSFER, "--out", "{tmp}/folder"], "not a detco-bench transfer folder"),
    ("transfer-out-unwritable", [*TRANSFER, "--out", UNWRITABLE], UNWRITABLE),
    ("transfer-results-under-a-file", [*TRANSFER, "--out", "{tmp}/o", "--results", "{file}/r"],
     "--results {file}/r"),
    ("transfer-cache-under-a-file", [*TRANSFER, "--out", "{tmp}/o", "--cache-dir", "{file}/c"], "--cache-dir"),
    # transfer: --opts
    ("opts-odd", [*TRANSFER, "--out", "{tmp}/o", "--opts", "SOLVER.MAX_ITER"], "odd number"),
    ("opts-unknown-key", [*TRANSFER, "--out", "{tmp}/o", "--opts", "SOLVER.MAX_ITR", "5"], "did you mean"),
    ("opts-unknown-section", [*TRANSFER, "--out", "{tmp}/o", "--opts", "NOPE.KEY", "1"], "unknown config key"),
    ("opts-bad-type", [*TRANSFER, "--out", "{tmp}/o", "--opts", "SOLVER.MAX_ITER", "abc"], "expects an int"),
    ("opts-bad-float", [*TRANSFER, "--out", "{tmp}/o", "--opts", "SOLVER.BASE_LR", "abc"], "expects a float"),
    ("opts-bad-list", [*TRANSFER, "--out", "{tmp}/o", "--opts", "SOLVER.STEPS", "abc"], "expects a list"),
    ("opts-zero-iterations", [*TRANSFER, "--out", "{tmp}/o", "--opts", "SOLVER.MAX_ITER", "0"],
     "at least one iteration"),
    ("opts-negative-lr", [*TRANSFER, "--out", "{tmp}/o", "--opts", "SOLVER.BASE_LR", "-0.1"],
     "learning rate must be positive"),
    ("opts-decreasing-steps", [*TRANSFER, "--out", "{tmp}/o", "--opts", "SOLVER.STEPS", "(100, 50)"],
     "positive and increasing"),
    ("opts-no-such-depth", [*TRANSFER, "--out", "{tmp}/o", "--opts", "MODEL.RESNETS.DEPTH", "7"],
     "MODEL.RESNETS.DEPTH 7"),
    ("opts-negative-train-size", [*TRANSFER, "--out", "{tmp}/o", "--opts", "INPUT.MIN_SIZE_TRAIN", "(-1,)"],
     "training sizes must be positive"),
    ("opts-negative-iterations", [*TRANSFER, "--out", "{tmp}/o", "--opts", "SOLVER.MAX_ITER", "-5"],
     "at least one iteration"),
    ("opts-negative-batch", [*TRANSFER, "--out", "{tmp}/o", "--opts", "SOLVER.IMS_PER_BATCH", "-2"],
     "at least one image"),
    ("opts-warmup-longer-than-run", [*TRANSFER, "--out", "{tmp}/o", "--opts", "SOLVER.MAX_ITER", "5",
                                     "SOLVER.WARMUP_ITERS", "50"], "never leave warm-up"),
    ("opts-unknown-dataset", [*TRANSFER, "--out", "{tmp}/o", "--opts", "DATASETS.TEST", "('nope',)"], "nope"),
    ("opts-unknown-train-dataset", [*TRANSFER, "--out", "{tmp}/o", "--opts", "DATASETS.TRAIN", "('nope',)"],
     "unknown dataset 'nope'"),
    ("opts-without-marker", [*TRANSFER, "--out", "{tmp}/o", "SOLVER.MAX_ITER", "5"], "after --opts"),
    ("opts-unbalanced-quote", [*TRANSFER, "--out", "{tmp}/o", "--opts", "SOLVER.MAX_ITER '5"],
     "no closing quotation"),
    ("opts-unbalanced-quote-protocol", ["transfer", "--task", "coco_fpn_1x", "--protocol", "--opts",
                                        "SOLVER.MAX_ITER '5"], "no closing quotation"),
    # transfer: settings the torchvision engine refuses, found at plan time (engines/torchvision/check.py)
    ("opts-torchvision-detection-crop", [*TRANSFER, "--out", "{tmp}/o", "--opts", "INPUT.CROP.ENABLED", "True",
                                         "INPUT.CROP.TYPE", "centre"], "INPUT.CROP.TYPE 'centre'"),
    ("opts-torchvision-clip-gradients", [*TRANSFER, "--out", "{tmp}/o", "--opts", "SOLVER.CLIP_GRADIENTS.ENABLED",
                                         "True"], "SOLVER.CLIP_GRADIENTS is not supported"),
    ("opts-torchvision-box-head", [*TRANSFER, "--out", "{tmp}/o", "--opts", "MODEL.ROI_BOX_HEAD.NUM_FC", "1"],
     "2-FC box head"),
    ("opts-torchvision-lr-scheduler", [*TRANSFER, "--out", "{tmp}/o", "--opts", "SOLVER.LR_SCHEDULER_NAME",
                                       "WarmupPolyLR"], "WarmupMultiStepLR or WarmupCosineLR"),
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
    # linear
    ("linear-missing-checkpoint-option", ["linear", "--data", "{imagefolder}", "--out", "{tmp}/o"],
     "Missing option '--checkpoint'"),
    ("linear-missing-data", [*LINEAR[:3], "--data", "{tmp}/none", *LINEAR[5:]], "does not exist"),
    ("linear-data-is-a-file", [*LINEAR[:3], "--data", "{file}", *LINEAR[5:]], "is a file, not a folder"),
    ("linear-data-not-an-imagefolder", [*LINEAR[:3], "--data", "{tmp}/folder", *LINEAR[5:]], "train is missing"),
    ("linear-missing-checkpoint", ["linear", "--checkpoint", "{tmp}/none.pth", *LINEAR[3:]], "none.pth"),
    ("linear-not-a-checkpoint", ["linear", "--checkpoint", "{file}", *LINEAR[3:]], "not a PyTorch checkpoint"),
    ("linear-unknown-checkpoint-format", [*LINEAR, "--format", "xyz"], "unknown checkpoint format"),
    ("linear-unknown-mode", [*LINEAR, "--mode", "svm"], "unknown mode 'svm'"),
    ("linear-zero-epochs", [*LINEAR, "--epochs", "0"], "--epochs must be positive"),
    ("linear-negative-batch", [*LINEAR, "--batch-size", "-4"], "--batch-size must be positive"),
    ("linear-lr-not-a-number", [*LINEAR, "--lr", "abc"], "Invalid value for '--lr'"),
    ("linear-negative-lr", [*LINEAR, "--lr", "-1"], "--lr must be positive"),
    ("linear-zero-knn-k", [*LINEAR, "--knn-k", "0"], "--knn-k must be positive"),
    ("linear-negative-aug-copies", [*LINEAR, "--aug-copies", "-2"], "--aug-copies must be 0 or more"),
    ("linear-unknown-fast-head", [*LINEAR, "--fast-head", "svm"], "unknown --fast-head"),
    ("linear-unknown-cache-dtype", [*LINEAR, "--cache-dtype", "int8"], "--cache-dtype"),
    ("linear-zero-image-size", [*LINEAR, "--image-size", "0"], "--image-size must be positive"),
    ("linear-negative-workers", [*LINEAR, "--workers", "-1"], "--workers must be 0 or more"),
    ("linear-out-is-a-file", [*LINEAR[:5], "--out", "{file}", *LINEAR[7:]], "exists and is not a folder"),
    ("linear-out-under-a-file", [*LINEAR[:5], "--out", "{file}/o", *LINEAR[7:]], "is a file, not a folder"),
    ("linear-out-not-empty", [*LINEAR[:5], "--out", "{tmp}/folder", *LINEAR[7:]], "not empty"),
    ("linear-out-unwritable", [*LINEAR[:5], "--out", UNWRITABLE, *LINEAR[7:]], UNWRITABLE),
    # pretrain (the command line here; pretrain/'s own tests cover its internals)
    ("pretrain-missing-out", ["pretrain", "--preset", "smoke"], "Missing option '--out'"),
    ("pretrain-unknown-preset", ["pretrain", "--out", "{tmp}/o", "--preset", "nope"], "unknown preset 'nope'"),
    ("pretrain-missing-data", ["pretrain", "--out", "{tmp}/o", "--data", "{tmp}/none"], "does not exist"),
    ("pretrain-data-is-a-file", ["pretrain", "--out", "{tmp}/o", "--data", "{file}"], "is not a folder"),
    ("pretrain-data-without-images", ["pretrain", "--out", "{tmp}/o", "--data", "{tmp}/folder"], "no images found"),
    ("pretrain-data-unreadable-images", ["pretrain", "--out", "{tmp}/o", "--data", "{unreadable_images}"],
     "can be read"),
    ("pretrain-zero-epochs", ["pretrain", "--out", "{tmp}/o", "--epochs", "0"], "epochs must be positive"),
    ("pretrain-epochs-not-a-number", ["pretrain", "--out", "{tmp}/o", "--epochs", "x"],
     "Invalid value for '--epochs'"),
    ("pretrain-negative-batch", ["pretrain", "--out", "{tmp}/o", "--batch-size", "-2"],
     "batch_size must be positive"),
    ("pretrain-zero-batch", ["pretrain", "--out", "{tmp}/o", "--batch-size", "0"], "batch_size must be positive"),
    ("pretrain-batch-larger-than-data", ["pretrain", "--out", "{tmp}/o", "--synthetic-images", "2"],
     "fewer than one global batch"),
    ("pretrain-queue-not-a-multiple", ["pretrain", "--out", "{tmp}/o", "--queue-size", "100"],
     "not a multiple of the global batch"),
    ("pretrain-unknown-arch", ["pretrain", "--out", "{tmp}/o", "--arch", "resnet7"], "unknown arch"),
    ("pretrain-stage-weights-not-numbers", ["pretrain", "--out", "{tmp}/o", "--stage-weights", "a,b"],
     "--stage-weights must be 4"),
    ("pretrain-stage-weights-too-few", ["pretrain", "--out", "{tmp}/o", "--stage-weights", "1,2"], "needs 4 values"),
    ("pretrain-zero-image-size", ["pretrain", "--out", "{tmp}/o", "--image-size", "0"],
     "image_size must be positive"),
    ("pretrain-out-is-a-file", ["pretrain", "--out", "{file}"], "exists and is not a folder"),
    ("pretrain-out-under-a-file", ["pretrain", "--out", "{file}/o"], "{file}/o"),
    ("pretrain-out-not-empty", ["pretrain", "--out", "{tmp}/folder"], "not empty"),
    ("pretrain-out-unwritable", ["pretrain", "--out", UNWRITABLE], UNWRITABLE),
    ("pretrain-negative-lr", ["pretrain", "--out", "{tmp}/o", "--base-lr", "-1"], "--base-lr"),
    ("pretrain-negative-workers", ["pretrain", "--out", "{tmp}/o", "--workers", "-1"], "--workers"),
    ("pretrain-negative-max-steps", ["pretrain", "--out", "{tmp}/o", "--max-steps", "-1"], "--max-steps"),
    # data
    ("data-unknown-layout", ["data", "synthetic", "--layout", "xml", "--out", "{tmp}/d"], "unknown layout"),
    ("data-out-is-a-file", [*SYNTHETIC, "--out", "{file}"], "not a folder"),
    ("data-out-under-a-file", [*SYNTHETIC, "--out", "{file}/d"], "is a file"),
    ("data-out-not-empty", [*SYNTHETIC, "--out", "{tmp}/folder"], "not empty"),
    ("data-out-unwritable", [*SYNTHETIC, "--out", UNWRITABLE], UNWRITABLE),
    ("data-bad-size", [*SYNTHETIC, "--out", "{tmp}/d", "--size", "0x0"], "size"),
    ("data-size-not-hxw", [*SYNTHETIC, "--out", "{tmp}/d", "--size", "abc"], "--size must look like"),
    ("data-size-and-height", [*SYNTHETIC, "--out", "{tmp}/d", "--size", "64x64", "--height", "32"],
     "not both"),
    ("data-height-too-small", [*SYNTHETIC, "--out", "{tmp}/d", "--height", "1"], "out of range"),
    ("data-zero-images", [*SYNTHETIC, "--out", "{tmp}/d", "--num-train", "0"], "num_train"),
    ("data-count-not-a-number", [*SYNTHETIC, "--out", "{tmp}/d", "--num-val", "x"],
     "Invalid value for '--num-val'"),
    ("data-prepare-not-cityscapes", ["data", "prepare", "cityscapes", "--root", "{tmp}/folder"],
     "not a Cityscapes root"),
    ("data-prepare-missing-root", ["data", "prepare", "cityscapes", "--root", "{tmp}/none"],
     "not a Cityscapes root"),
    # run
    ("run-missing-checkpoint-option", ["run", "--out", "{tmp}/p"], "Missing option '--checkpoint'"),
    ("run-missing-checkpoint", ["run", "--checkpoint", "{tmp}/none.pth", *RUN_LINEAR[3:]], "does not exist"),
    ("run-not-a-checkpoint", ["run", "--checkpoint", "{file}", *RUN_LINEAR[3:]], "not a PyTorch checkpoint"),
    ("run-unknown-suite", ["run", "--checkpoint", "{ck}", "--out", "{tmp}/p", "--suite", "nope"], "unknown task"),
    ("run-unknown-linear-mode", [*RUN_LINEAR, "--suite", "linear:svm"], "unknown linear mode"),
    ("run-empty-suite", [*RUN_LINEAR, "--suite", ","], "names no jobs"),
    ("run-zero-seeds", [*RUN_LINEAR, "--seeds", "0"], "--seeds must be at least 1"),
    ("run-seeds-not-a-number", [*RUN_LINEAR, "--seeds", "x"], "Invalid value for '--seeds'"),
    ("run-unknown-engine", [*RUN_LINEAR, "--engine", "mmdet"], "unknown engine 'mmdet'"),
    ("run-unknown-launcher", [*RUN_LINEAR, "--launcher", "pbs"], "unknown --launcher"),
    ("run-unknown-device", [*RUN_TRANSFER, "--device", "tpu"], "unknown --device"),
    _without_slurm(("run-slurm-without-a-cluster", [*RUN_LINEAR, "--launcher", "slurm"], "--launcher slurm")),
    ("run-linear-without-data", ["run", "--checkpoint", "{ck}", "--out", "{tmp}/p", "--suite", "linear:knn"],
     "give --linear-data"),
    ("run-linear-data-missing", [*RUN_LINEAR[:7], "--linear-data", "{tmp}/none"], "does not exist"),
    ("run-linear-data-is-a-file", [*RUN_LINEAR[:7], "--linear-data", "{file}"], "is a file, not a folder"),
    ("run-transfer-data-missing", [*RUN_TRANSFER, "--data-root", "{tmp}/nodata"], "job coco_fpn_1x-s0"),
    ("run-transfer-unknown-category", [*RUN_TRANSFER, "--data-root", "{bad_category}"], "unknown category id"),
    ("run-out-under-a-file", ["run", "--checkpoint", "{ck}", "--out", "{file}/p", "--suite", "linear:knn",
                              "--linear-data", "{tmp}"], "is a file"),
    ("run-out-is-a-file", [*RUN_LINEAR[:3], "--out", "{file}", *RUN_LINEAR[5:]], "exists and is not a folder"),
    ("run-out-unwritable", [*RUN_LINEAR[:3], "--out", UNWRITABLE, *RUN_LINEAR[5:]], UNWRITABLE),
    ("run-corrupt-state", [*RUN_LINEAR[:3], "--out", "{tmp}/badpipe", *RUN_LINEAR[5:]], "pipeline.json is corrupt"),
    ("run-bad-retries", ["run", "--checkpoint", "{ck}", "--out", "{tmp}/p", "--suite", "linear:knn",
                         "--linear-data", "{imagefolder}", "--max-retries", "-1"], "--max-retries"),
    ("run-bad-reference", ["run", "--checkpoint", "{ck}", "--out", "{tmp}/p", "--suite", "linear:knn",
                           "--linear-data", "{imagefolder}", "--check", "bogusref"], "bogusref"),
    ("run-bad-baseline", ["run", "--checkpoint", "{ck}", "--out", "{tmp}/p", "--suite", "linear:knn",
                          "--linear-data", "{imagefolder}", "--baselines", "supervised:{tmp}/none.pth"], "none.pth"),
    ("run-baseline-not-a-checkpoint", [*RUN_LINEAR, "--baselines", "supervised:{file}"], "not a PyTorch checkpoint"),
    ("run-baseline-label-twice", [*RUN_LINEAR, "--baselines", "random,random"], "names a label twice"),
    ("run-opts-unbalanced-quote", [*RUN_TRANSFER, "--opts", "SOLVER.MAX_ITER '5"], "no closing quotation"),
    ("run-opts-odd", [*RUN_TRANSFER, "--opts", "SOLVER.MAX_ITER"], "odd number"),
    ("run-opts-unknown-key", [*RUN_TRANSFER, "--opts", "SOLVER.MAX_ITR", "5"], "did you mean SOLVER.MAX_ITER"),
    ("run-opts-negative-batch", [*RUN_TRANSFER, "--opts", "SOLVER.IMS_PER_BATCH", "-2"], "at least one image"),
    ("run-opts-without-marker", [*RUN_TRANSFER, "SOLVER.MAX_ITER", "5"], "after --opts"),
    ("run-linear-flags-unbalanced-quote", [*RUN_LINEAR, "--linear-flags", "--epochs '3"], "no closing quotation"),
    ("run-linear-flags-bad-value", [*RUN_LINEAR, "--linear-flags", "--epochs many"], "Invalid value for '--epochs'"),
    ("run-linear-flags-unknown", [*RUN_LINEAR, "--linear-flags", "--no-such-flag"], "No such option"),
    ("run-linear-flags-invalid-setting", [*RUN_LINEAR, "--linear-flags", "--knn-k 0"], "--knn-k must be positive"),
    # report
    ("report-bad-reference", ["report", "{tmp}/folder", "--check", "--reference", "bogusref"], "bogusref"),
    ("report-reference-not-a-table", ["report", "{tmp}/folder", "--check", "--reference", "{file}"],
     "missing column(s)"),
    ("report-reference-file-missing", ["report", "{tmp}/folder", "--check", "--reference", "{tmp}/none.csv"],
     "unknown reference"),
    ("report-unknown-format", ["report", "{tmp}/folder", "--format", "docx"], "docx"),
    ("report-no-format", ["report", "{tmp}/folder", "--format", ""], "names no format"),
    ("report-missing-source", ["report", "{tmp}/none"], "none"),
    ("report-negative-k", ["report", "{tmp}/folder", "--k", "-1"], "--k must be >= 0"),
    ("report-nan-k", ["report", "{tmp}/folder", "--k", "nan"], "--k must be >= 0"),
    ("report-out-is-a-file", ["report", "{tmp}/folder", "--out", "{file}"], "exists and is not a folder"),
    ("report-out-under-a-file", ["report", "{tmp}/folder", "--out", "{file}/r"], "is a file, not a folder"),
    ("report-out-unwritable", ["report", "{tmp}/folder", "--out", UNWRITABLE], UNWRITABLE),
    # demo
    ("demo-out-is-a-file", ["demo", "--out", "{file}"], "exists and is not a folder"),
    ("demo-out-under-a-file", ["demo", "--out", "{file}/d"], "is a file, not a folder"),
    ("demo-out-unwritable", ["demo", "--out", UNWRITABLE], UNWRITABLE),
]


def _case_id(case: Any) -> str:
    return case.id if hasattr(case, "id") else case[0]


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
    ck = save_random_resnet(base / "r18.pth")
    truncated = base / "truncated.pth"
    truncated.write_bytes(ck.read_bytes()[:5000])
    unreadable = base / "unreadable"
    unreadable.mkdir()
    for i in range(3):
        (unreadable / f"{i}.jpg").write_bytes(b"not an image")
    values = {"data": str(good), "ck": str(ck), "truncated_ck": str(truncated), "unreadable_images": str(unreadable),
              "imagefolder": str(_easy_imagefolder(base / "easy", per_class_train=2, per_class_val=1))}
    for key, how in (("bad_images", "images"), ("no_annotations", "annotations"), ("bad_category", "category"),
                     ("corrupt_json", "corrupt")):
        shutil.copytree(good, base / key)
        values[key] = str(_break_coco(base / key, how))
    return values


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


@pytest.fixture(autouse=True)
def _stop_before_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bad input never gets as far as the work: where each command would start it (a transfer's
    engine, a linear probe's extraction, pretraining's loop, a pipeline's jobs, the demo's data),
    fail the case at once instead of letting it run for minutes."""
    import detco_bench.engines
    import detco_bench.linear.job
    import detco_bench.pipeline.demo
    import detco_bench.pipeline.runner
    import pretrain.train

    def reached(what: str) -> Any:
        def stop(*args: Any, **kwargs: Any) -> None:
            raise AssertionError(f"validation let this input through to {what}")
        return stop

    monkeypatch.setattr(detco_bench.engines._ModuleEngine, "run", reached("the transfer engine"))
    monkeypatch.setattr(detco_bench.linear.job, "_run_locked", reached("the linear probe"))
    monkeypatch.setattr(pretrain.train, "_train_locked", reached("pretraining"))
    monkeypatch.setattr(detco_bench.pipeline.runner, "_run_jobs", reached("the pipeline's jobs"))
    monkeypatch.setattr(detco_bench.pipeline.demo, "prepare_demo", reached("the demo"))


@pytest.mark.parametrize("case,argv,expected", CASES, ids=[_case_id(c) for c in CASES])
def test_bad_input_is_one_line_and_exit_2(case: str, argv: list[str], expected: str, fixtures: dict[str, str],
                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "afile").write_text("not a folder, not a checkpoint")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "notes.txt").write_text("someone else's")
    (tmp_path / "badpipe").mkdir()
    (tmp_path / "badpipe" / "pipeline.json").write_text('{"config": ')
    monkeypatch.delenv("DETCO_BENCH_SUBMITIT_CLUSTER", raising=False)  # the real Slurm cluster, or none
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
    assert not Path(UNWRITABLE).exists()


def test_the_case_table_is_data() -> None:
    ids = [_case_id(c) for c in CASES]
    assert len(ids) == len(set(ids)) >= 193
