"""`detco-bench run`: one checkpoint through a suite of jobs (transfer tasks and linear probes),
then the report.

The pipeline owns a folder:
  ROOT/pipeline.json         the plan and every job's status (atomically rewritten)
  ROOT/weights/cache/        the verified conversion (done once, before any job; the jobs reuse it)
  ROOT/jobs/<job>/           each job's own output folder (resumable by the job itself)
  ROOT/records/              transfer result records (linear records stay in their job folder)
  ROOT/report/               the final report (tables, Markdown, HTML, plots)

Each job runs as its own `detco-bench` process (a crash or a kill cannot corrupt the pipeline;
records are written atomically by the jobs). A job with a successful record is never rerun; a job
that fails is retried up to `max_retries` times. Killed and rerun, the pipeline resumes where it
stopped: interrupted jobs resume from their own folders.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from detco_bench.checkpoints import load_backbone, sha256_file
from detco_bench.engines import resolve_engine
from detco_bench.errors import UserError
from detco_bench.records import RecordError, read_record
from detco_bench.transfer.options import SlurmSpec, TransferOptions
from detco_bench.transfer.slurm import submit
from detco_bench.transfer.state import read_state
from detco_bench.transfer.weights import ensure_converted, weights_cache_path
from pretrain.atomic import atomic_write_json

STATE_FILE = "pipeline.json"
LINEAR_MODES = ("protocol", "fast", "knn", "stages")


@dataclass(frozen=True)
class Job:
    """One unit of work: a transfer task or a linear probe, with a seed and config overrides."""

    kind: str  # "transfer" | "linear"
    task: str  # transfer task name, or the linear mode
    seed: int = 0
    opts: tuple[str, ...] = ()  # transfer: --opts KEY VALUE ...; linear: extra CLI flags

    @property
    def name(self) -> str:
        base = self.task if self.kind == "transfer" else f"linear_{self.task}"
        return f"{base}-s{self.seed}"


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
SMOKE_LINEAR_OPTS: tuple[str, ...] = ("--epochs", "30", "--batch-size", "64", "--image-size", "64")

SUITES: dict[str, tuple[Job, ...]] = {
    "smoke": (Job("transfer", "coco_fpn_1x", opts=SMOKE_DETECTION_OPTS),
              Job("linear", "fast", opts=SMOKE_LINEAR_OPTS), Job("linear", "knn", opts=SMOKE_LINEAR_OPTS)),
    "paper": (*(Job("transfer", t) for t in (
        "coco_c4_1x", "coco_c4_2x", "coco_fpn_1x", "coco_fpn_2x", "retinanet_1x", "retinanet_2x",
        "keypoint_fpn_2x", "voc_c4_24k", "cityscapes_inst_fpn", "cityscapes_sem")),
        Job("linear", "protocol")),
}


def parse_suite(suite: str, seeds: int) -> list[Job]:
    """`smoke`, `paper`, or a comma list of task names and linear modes (`linear:fast`)."""
    from detco_bench.tasks import get_task

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
    return [Job(j.kind, j.task, seed, j.opts) for seed in range(seeds) for j in base]


@dataclass
class PipelineConfig:
    checkpoint: str
    suite: str
    seeds: int = 1
    engine: str = "auto"
    launcher: str = "local"
    device: str | None = None
    data_root: str | None = None  # detection datasets (DETECTRON2_DATASETS layout)
    linear_data: str | None = None  # ImageFolder root for the linear probes
    max_retries: int = 1
    method: str | None = None
    extra_opts: tuple[str, ...] = ()  # appended to every transfer job's --opts
    linear_flags: tuple[str, ...] = ()  # appended to every linear job's command line
    slurm: dict[str, Any] = field(default_factory=dict)


def _load_state(root: Path) -> dict[str, Any]:
    path = root / STATE_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise UserError(f"{path} is corrupt; move it away to start the pipeline afresh") from None


def _cli() -> list[str]:
    return [sys.executable, "-m", "detco_bench.cli"]


def job_command(job: Job, cfg: PipelineConfig, root: Path) -> list[str]:
    """The `detco-bench` command line that runs `job` (also what a Slurm job executes)."""
    out = root / "jobs" / job.name
    if job.kind == "linear":
        if not cfg.linear_data:
            raise UserError("linear probe jobs need --linear-data (an ImageFolder root)")
        # The original checkpoint (not its conversion), so every record of the suite carries its sha256.
        cmd = [*_cli(), "linear", "--checkpoint", cfg.checkpoint, "--data", cfg.linear_data, "--out", str(out),
               "--mode", job.task, "--seed", str(job.seed), "--resume", "--no-progress", *job.opts,
               *cfg.linear_flags]
        if cfg.method:
            cmd += ["--method", cfg.method]
        return cmd
    options = TransferOptions(
        task=job.task, checkpoint=Path(cfg.checkpoint), out=out, engine=cfg.engine, seed=job.seed,
        results_dir=root / "records", cache_dir=weights_cache_dir(root),
        data_root_dir=Path(cfg.data_root) if cfg.data_root else None, device=cfg.device, method=cfg.method,
        opts=[*job.opts, *cfg.extra_opts])
    return [*_cli(), "transfer", *options.to_argv()]


def weights_cache_dir(root: Path) -> Path:
    """The converted-weights cache shared by the pipeline's transfer jobs."""
    return root / "weights" / "cache"


def successful_record(root: Path, job: Job) -> Path | None:
    """The job's successful result record, if it has one that reads back valid.

    Transfer jobs say so in their folder's state file; linear jobs write the record in their folder.
    """
    out = root / "jobs" / job.name
    if job.kind == "transfer":
        state = read_state(out) or {}
        candidates = [Path(state["record"])] if state.get("status") == "success" and state.get("record") else []
    else:
        candidates = sorted(out.glob("*.record.json"))
    for path in candidates:
        try:
            if read_record(path).status == "success":
                return path
        except (RecordError, OSError):
            continue
    return None


def convert_once(cfg: PipelineConfig, root: Path, log: Callable[[str], None]) -> Path:
    """Verify and convert the checkpoint once, before any job: a checkpoint that does not convert
    cleanly stops the suite here instead of failing every job. The conversion goes where the
    transfer jobs look for it (the shared cache, keyed by the checkpoint's sha256 and the engine),
    so they reuse it instead of converting again."""
    loaded = load_backbone(cfg.checkpoint)
    sha = sha256_file(cfg.checkpoint)
    engine = resolve_engine(cfg.engine)
    out = ensure_converted(cfg.checkpoint, loaded.format, sha, engine,
                           weights_cache_path(sha, engine, weights_cache_dir(root)))
    log(f"converted and verified: {out}")
    return out


def gpu_slots(cfg: PipelineConfig) -> list[str | None]:
    """One slot per visible GPU (jobs then run side by side, one GPU each); one slot on the CPU."""
    import torch

    if cfg.device == "cpu" or not torch.cuda.is_available():
        return [None]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        ids = [i.strip() for i in visible.split(",") if i.strip()]
    else:
        ids = [str(i) for i in range(torch.cuda.device_count())]
    return list(ids) or [None]


def run_pipeline(cfg: PipelineConfig, root: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Plan, run (or submit) every job not yet done, and return the final state."""
    if not Path(cfg.checkpoint).is_file():
        raise UserError(f"checkpoint {cfg.checkpoint} does not exist")
    if cfg.launcher not in ("local", "slurm"):
        raise UserError(f"unknown --launcher {cfg.launcher!r}; choose local or slurm")
    jobs = parse_suite(cfg.suite, cfg.seeds)
    if any(j.kind == "linear" for j in jobs) and not cfg.linear_data:
        raise UserError("the suite has linear-probe jobs: give --linear-data (an ImageFolder root)")
    root.mkdir(parents=True, exist_ok=True)
    state = _load_state(root)
    if state and state.get("config", {}).get("checkpoint") not in (None, cfg.checkpoint):
        raise UserError(f"{root} belongs to a pipeline of checkpoint {state['config']['checkpoint']}; "
                        "use another --out")
    state.setdefault("jobs", {})
    state["config"] = asdict(cfg)
    state["plan"] = [j.name for j in jobs]

    def save() -> None:
        atomic_write_json(root / STATE_FILE, state)

    save()
    convert_once(cfg, root, log)
    pending: list[Job] = []
    for job in jobs:
        entry = state["jobs"].setdefault(job.name, {"status": "pending", "attempts": 0})
        entry["attempts"] = 0 if entry.get("status") != "running" else entry.get("attempts", 0)
        done = successful_record(root, job)
        if done is not None:
            entry.update(status="success", record=str(done))
            log(f"[skip] {job.name}: already has a successful record")
        elif cfg.launcher == "slurm":
            entry.update(status="submitted", job_id=submit_job(job, cfg, root))
            log(f"[slurm] {job.name}: submitted as job {entry['job_id']}")
        else:
            pending.append(job)
        save()

    slots = gpu_slots(cfg)
    running: dict[str | None, tuple[Job, subprocess.Popen[bytes], float]] = {}
    while pending or running:
        for slot in slots:
            if slot in running or not pending:
                continue
            job = pending.pop(0)
            entry = state["jobs"][job.name]
            entry.update(status="running", attempts=entry["attempts"] + 1, gpu=slot)
            save()
            env = dict(os.environ)
            if slot is not None:
                env["CUDA_VISIBLE_DEVICES"] = slot
            log(f"[run] {job.name} (attempt {entry['attempts']}{'' if slot is None else f', GPU {slot}'})")
            running[slot] = (job, subprocess.Popen(job_command(job, cfg, root), env=env), time.time())
        time.sleep(0.2)
        for slot, (job, proc, started) in list(running.items()):
            code = proc.poll()
            if code is None:
                continue
            del running[slot]
            entry = state["jobs"][job.name]
            record = successful_record(root, job) if code == 0 else None
            if record is not None:
                entry.update(status="success", record=str(record), wall_clock_s=time.time() - started)
                log(f"[done] {job.name}")
            else:
                entry.update(status="failed", exit_code=code)
                retry = entry["attempts"] <= cfg.max_retries
                log(f"[fail] {job.name}: exit code {code}" + ("; retrying" if retry else ""))
                if retry:
                    pending.insert(0, job)
            save()
    return state


def submit_job(job: Job, cfg: PipelineConfig, root: Path) -> str:
    """Submit one job's command line to Slurm through submitit; returns the job id."""
    try:
        import submitit
    except ImportError:
        raise UserError("--launcher slurm needs submitit (pip install submitit)") from None

    spec = SlurmSpec(partition=cfg.slurm.get("partition"), time_min=int(cfg.slurm.get("time", 4320)),
                     cpus_per_task=int(cfg.slurm.get("cpus_per_task", 10)))
    command = submitit.helpers.CommandFunction(job_command(job, cfg, root))
    return submit(command, root / "slurm" / job.name, name=f"detco-{job.name}", spec=spec,
                  gpus_per_node=int(cfg.slurm.get("gpus_per_node", 1)))


def make_report(root: Path, formats: str = "terminal,md,html,png", check: str | None = None) -> int:
    """Run `detco-bench report` over the pipeline's records; returns its exit code."""
    sources = [str(p) for p in (root / "records", root / "jobs") if p.is_dir()]
    cmd = [*_cli(), "report", *sources, "--out", str(root / "report"), "--format", formats]
    if check:
        cmd += ["--check", "--reference", check]
    return subprocess.run(cmd, check=False).returncode


def summarize(state: dict[str, Any]) -> Sequence[tuple[str, str, str]]:
    return [(name, job.get("status", "?"), job.get("record") or job.get("job_id") or "")
            for name, job in state.get("jobs", {}).items() if name in state.get("plan", [])]


def prepare_demo(out: Path, log: Callable[[str], None] = print) -> tuple[Path, Path, Path]:
    """Synthetic detection + classification datasets and the DetCo smoke checkpoint (each made
    once; a rerun reuses them). Returns (checkpoint, detection root, ImageFolder root)."""
    from detco_bench.synthetic_layouts import write_synthetic_dataset
    from pretrain.config import preset
    from pretrain.train import train

    detection, classification = out / "data" / "detection", out / "data" / "classification"
    for folder, layout, kwargs in ((detection, "coco", DEMO_COCO), (classification, "imagefolder", DEMO_IMAGEFOLDER)):
        if not (folder / "synthetic_dataset.json").is_file():
            write_synthetic_dataset(folder, layout, force=True, **kwargs)
            log(f"[data] synthetic {layout} dataset: {folder}")
    checkpoint = train(preset("smoke", data="synthetic"), out / "pretrain", resume=True)
    log(f"[pretrain] checkpoint: {checkpoint}")
    return checkpoint, detection, classification / "imagenet"


def run_demo(out: Path, check: bool = False, log: Callable[[str], None] = print) -> int:
    """The README's main job: everything on the embedded default, CPU only, resumable.

    Returns the exit code: 0, or 1 when a job failed or (with `check`) a metric regressed
    against results/reference/smoke.csv.
    """
    checkpoint, detection, classification = prepare_demo(out, log)
    cfg = PipelineConfig(checkpoint=str(checkpoint), suite="smoke", device="cpu", data_root=str(detection),
                         linear_data=str(classification))
    state = run_pipeline(cfg, out / "suite", log=log)
    failed = [name for name, status, _ in summarize(state) if status != "success"]
    code = make_report(out / "suite", check="smoke" if check else None)
    report = out / "suite" / "report"
    log(f"[report] {report / 'report.md'}  {report / 'report.html'}  plots: {report}")
    if failed:
        log(f"[demo] failed jobs: {', '.join(failed)}")
    return 1 if failed or code else 0


DEMO_COCO: dict[str, Any] = {"num_train": 64, "num_val": 16, "seed": 0, "image_size": (128, 128)}
DEMO_IMAGEFOLDER: dict[str, Any] = {"num_train": 200, "num_val": 80, "seed": 0, "image_size": (64, 64)}
