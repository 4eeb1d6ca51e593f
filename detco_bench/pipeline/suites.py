"""Suites: which jobs `detco-bench run` runs (transfer tasks and linear probes, times seeds)."""

from __future__ import annotations

from dataclasses import dataclass

from detco_bench.errors import UserError
from detco_bench.linear.config import MODES as LINEAR_MODES
from detco_bench.linear.naming import probe_name
from detco_bench.tasks import get_task


@dataclass(frozen=True)
class Job:
    """One unit of work: a transfer task or a linear probe, with a seed and config overrides.

    subject: "" for the checkpoint the pipeline evaluates, else the name of the in-harness
    baseline the job runs on (its jobs live under ``jobs/<subject>/``)."""

    kind: str  # "transfer" | "linear"
    task: str  # transfer task name, or the linear mode
    seed: int = 0
    opts: tuple[str, ...] = ()  # transfer: --opts KEY VALUE ...; linear: extra CLI flags
    subject: str = ""

    @property
    def name(self) -> str:
        base = self.task if self.kind == "transfer" else probe_name(self.task)
        return f"{self.subject}/{base}-s{self.seed}" if self.subject else f"{base}-s{self.seed}"


# Small enough that the whole smoke suite (with its linear probes) runs on 2 CPU cores in minutes;
# the images are the synthetic generator's 128 px scenes.
SMOKE_DETECTION_OPTS: tuple[str, ...] = (
    "SOLVER.MAX_ITER", "100", "SOLVER.IMS_PER_BATCH", "4", "SOLVER.BASE_LR", "0.02", "SOLVER.STEPS", "(80,)",
    "SOLVER.WARMUP_ITERS", "10", "SOLVER.CHECKPOINT_PERIOD", "25",
    "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "128",
    "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128", "TEST.PRECISE_BN.ENABLED", "False",
    # Fewer proposals and sampled RoIs: the mask head on 512 RoIs per image dominates a CPU step.
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "1000", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "300",
    "MODEL.RPN.PRE_NMS_TOPK_TEST", "500", "MODEL.RPN.POST_NMS_TOPK_TEST", "200",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "128", "DATALOADER.NUM_WORKERS", "1",
)
# --aug-copies 0: the centre-crop cache the smoke references were measured with (detco_bench/references/smoke.csv).
SMOKE_LINEAR_OPTS: tuple[str, ...] = ("--epochs", "30", "--batch-size", "64", "--image-size", "64",
                                      "--aug-copies", "0")

SUITES: dict[str, tuple[Job, ...]] = {
    "smoke": (Job("transfer", "coco_fpn_1x", opts=SMOKE_DETECTION_OPTS),
              Job("linear", "fast", opts=SMOKE_LINEAR_OPTS), Job("linear", "knn", opts=SMOKE_LINEAR_OPTS)),
    "paper": (*(Job("transfer", t) for t in (
        "coco_c4_1x", "coco_c4_2x", "coco_fpn_1x", "coco_fpn_2x", "retinanet_1x", "retinanet_2x",
        "keypoint_fpn_2x", "voc_c4_24k", "cityscapes_inst_fpn", "cityscapes_sem")),
        Job("linear", "protocol")),
}


def parse_suite(suite: str, seeds: int, subject: str = "") -> list[Job]:
    """`smoke`, `paper`, or a comma list of task names and linear modes (`linear:fast`)."""
    if seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {seeds}")
    if suite in SUITES:
        base = list(SUITES[suite])
    else:
        base = []
        for item in (s.strip() for s in suite.split(",")):
            if not item:
                continue
            if item.startswith("linear"):
                mode = item.partition(":")[2] or "protocol"
                if mode not in LINEAR_MODES:
                    raise UserError(f"unknown linear mode {mode!r} in --suite; use one of {', '.join(LINEAR_MODES)}")
                base.append(Job("linear", mode))
            else:
                get_task(item)  # raises UserError listing the task names
                base.append(Job("transfer", item))
        if not base:
            raise UserError(f"--suite {suite!r} names no jobs; use smoke, paper or TASK,TASK,...")
    return [Job(j.kind, j.task, seed, j.opts, subject) for seed in range(seeds) for j in base]


