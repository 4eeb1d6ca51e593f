"""`run_pipeline`: one checkpoint (and its in-harness baselines) through a suite of jobs, each its
own `detco-bench` process; resumable, with retries, one job per visible GPU, or on Slurm."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from detco_bench.checkpoints import load_backbone, sha256_file
from detco_bench.engines import resolve_engine
from detco_bench.errors import UserError
from detco_bench.linear.data import validate_imagefolder
from detco_bench.paths import check_output_folder, make_output_folder
from detco_bench.pipeline.baselines import Subject, baseline_subjects, check_baselines, parse_baselines
from detco_bench.pipeline.config import STATE_FILE, PipelineConfig, load_state
from detco_bench.pipeline.jobs import cli, job_command, submit_job, successful_record, weights_cache_dir
from detco_bench.pipeline.reuse import record_differences, requested_linear_config
from detco_bench.pipeline.suites import Job, parse_suite
from detco_bench.pipeline.validate import validate_jobs
from detco_bench.records import read_record
from detco_bench.transfer.slurm import slurm_executor
from detco_bench.transfer.weights import ensure_converted, weights_cache_path
from pretrain.atomic import atomic_write_json
from pretrain.lock import folder_lock


def convert_once(checkpoint: str, engine: str, root: Path, log: Callable[[str], None]) -> Path:
    """Verify and convert a checkpoint once, before any job: a checkpoint that does not convert
    cleanly stops the suite here instead of failing every job. The conversion goes where the
    transfer jobs look for it (the shared cache, keyed by the checkpoint's sha256 and the engine),
    so they reuse it instead of converting again."""
    loaded = load_backbone(checkpoint)
    sha = sha256_file(checkpoint)
    engine = resolve_engine(engine)
    out = ensure_converted(checkpoint, loaded.format, sha, engine, weights_cache_path(sha, engine,
                                                                                     weights_cache_dir(root)))
    log(f"converted and verified: {out}")
    return out


def gpu_slots(cfg: PipelineConfig) -> list[str | None]:
    """One slot per visible GPU (jobs then run side by side, one GPU each); one slot on the CPU."""
    if cfg.device == "cpu" or not torch.cuda.is_available():
        return [None]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        ids = [i.strip() for i in visible.split(",") if i.strip()]
    else:
        ids = [str(i) for i in range(torch.cuda.device_count())]
    return list(ids) or [None]


def _settings_changed(previous: dict[str, Any], cfg: PipelineConfig) -> list[str]:
    """The settings in which a pipeline folder's recorded run differs from `cfg`."""
    ignored = {"max_retries", "slurm", "launcher"}  # how jobs run, not what they measure
    now = asdict(cfg)
    return [k for k in now if k not in ignored and k in previous and _jsonable(previous[k]) != _jsonable(now[k])]


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _replace_folder(root: Path, job: Job) -> None:
    """--force reruns a job with new settings: its old folder is kept aside, never deleted."""
    folder = root / "jobs" / job.name
    if folder.exists():
        os.replace(folder, folder.with_name(f"{folder.name}.replaced-{time.strftime('%Y%m%dT%H%M%S')}"))


def _check_folder(state: dict[str, Any], cfg: PipelineConfig, root: Path, force: bool) -> None:
    """Refuse a pipeline folder of another checkpoint, or (without `force`) of other settings."""
    if not state:
        return
    if state.get("config", {}).get("checkpoint") not in (None, cfg.checkpoint):
        raise UserError(f"{root} belongs to a pipeline of checkpoint {state['config']['checkpoint']}; "
                        "use another --out")
    changed = _settings_changed(state.get("config", {}), cfg)
    if changed and not force:
        raise UserError(f"{root} holds a pipeline with other settings ({', '.join(changed)}); use another --out, "
                        "or --force to rerun the jobs whose settings changed")


def run_pipeline(cfg: PipelineConfig, root: Path, log: Callable[[str], None] = print,
                 force: bool = False) -> dict[str, Any]:
    """Plan, run (or submit) every job not yet done, and return the final state.

    A folder holding a pipeline of other settings (suite, seeds, --opts, flags, ...) is refused
    unless `force`; with it, jobs whose settings changed rerun in fresh folders (the old ones
    are kept aside). A job is skipped only when its record was made with the requested settings
    (`reuse.record_differences`)."""
    if not Path(cfg.checkpoint).is_file():
        raise UserError(f"checkpoint {cfg.checkpoint} does not exist")
    if cfg.launcher not in ("local", "slurm"):
        raise UserError(f"unknown --launcher {cfg.launcher!r}; choose local or slurm")
    specs = parse_baselines(cfg.baselines)
    jobs = parse_suite(cfg.suite, cfg.seeds)
    if any(j.kind == "linear" for j in jobs) and not cfg.linear_data:
        raise UserError("the suite has linear-probe jobs: give --linear-data (an ImageFolder root)")
    check_output_folder(root)
    # What every job would refuse, refused once before the first one starts.
    resolve_engine(cfg.engine)
    load_backbone(cfg.checkpoint)
    if cfg.launcher == "slurm":
        slurm_executor(root / "slurm")  # no srun / submitit
    validate_jobs(cfg, jobs, root)
    _check_linear_settings(cfg, jobs, root)
    if cfg.linear_data and any(j.kind == "linear" for j in jobs):
        validate_imagefolder(cfg.linear_data)
    check_baselines(specs)
    _check_folder(load_state(root), cfg, root, force)  # early, so that nothing is created for a refusal
    make_output_folder(root)
    with folder_lock(root):  # one pipeline per folder
        return _run_jobs(cfg, root, jobs, specs, log, force)


def _check_linear_settings(cfg: PipelineConfig, jobs: list[Job], root: Path) -> None:
    """Each linear job's flags make a valid `LinearConfig` (``--knn-k 0`` parses, but the job
    would refuse it)."""
    for job in jobs:
        if job.kind == "linear":
            try:
                requested_linear_config(job, cfg, root)
            except UserError as exc:
                raise UserError(f"job {job.name}: --linear-flags: {exc}") from None


def _stale_jobs(cfg: PipelineConfig, root: Path, jobs: list[Job], subjects: dict[str, Subject],
                force: bool) -> set[str]:
    """The jobs whose successful record was made with other settings than asked now; without
    `force` the first one is refused (nothing has been written yet)."""
    shas = {name: sha256_file(subject.checkpoint) for name, subject in subjects.items()}
    stale: set[str] = set()
    for job in jobs:
        done = successful_record(root, job)
        if done is None:
            continue
        diffs = record_differences(read_record(done), job, cfg, root, subjects[job.subject], shas[job.subject])
        if diffs and not force:
            raise UserError(f"job {job.name}: its record {done} was made with other settings ({', '.join(diffs)}); "
                            "use another --out, or --force to rerun it in a fresh folder")
        if diffs:
            stale.add(job.name)
    return stale


def _run_jobs(cfg: PipelineConfig, root: Path, jobs: list[Job], specs: list[tuple[str, str | None]],
              log: Callable[[str], None], force: bool) -> dict[str, Any]:
    """Run or submit the jobs not done yet (under the folder's lock); returns the final state."""
    state = load_state(root)  # as it is now that this process is the folder's writer
    _check_folder(state, cfg, root, force)  # another pipeline may have written it since the first check
    subjects = {"": Subject("", cfg.checkpoint, cfg.method)}
    subjects.update((b.name, b) for b in baseline_subjects(specs, cfg.checkpoint, root))
    jobs += [job for name in subjects if name for job in parse_suite(cfg.suite, cfg.seeds, subject=name)]
    stale = _stale_jobs(cfg, root, jobs, subjects, force)
    state.setdefault("jobs", {})
    state["config"] = asdict(cfg)
    state["plan"] = [j.name for j in jobs]
    state["subjects"] = {name: asdict(subject) for name, subject in subjects.items()}

    def save() -> None:
        atomic_write_json(root / STATE_FILE, state)

    save()
    for subject in subjects.values():
        convert_once(subject.checkpoint, cfg.engine, root, log)
    pending: list[Job] = []
    for job in jobs:
        entry = state["jobs"].setdefault(job.name, {"status": "pending", "attempts": 0})
        entry["attempts"] = 0 if entry.get("status") != "running" else entry.get("attempts", 0)
        command = job_command(job, cfg, root, subjects[job.subject])[len(cli()):]
        done = successful_record(root, job)
        if job.name in stale or (done is None and entry.get("command") not in (None, command)):
            # Only reached with --force (other settings were refused above): a fresh folder.
            _replace_folder(root, job)
            entry.update(status="pending", record=None)
            done = None
        entry["command"] = command
        if done is not None:
            entry.update(status="success", record=str(done))
            log(f"[skip] {job.name}: already has a successful record of these settings")
        elif cfg.launcher == "slurm":
            entry.update(status="submitted", job_id=submit_job(job, cfg, root, subjects[job.subject]))
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
            running[slot] = (job, subprocess.Popen(job_command(job, cfg, root, subjects[job.subject]),
                                                        env=env), time.time())
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


def _files(folder: Path) -> dict[Path, tuple[int, int]]:
    """(inode, mtime) of every file under `folder`: an atomic rewrite always makes a new inode."""
    return {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def run_report(root: Path, formats: str = "terminal,md,html,png", check: str | None = None
               ) -> tuple[int, Path | None]:
    """Run `detco-bench report` over the pipeline's records only. Returns its exit code and the
    report folder, or None when it wrote no file (no records yet, or it refused its input)."""
    sources = [str(p) for p in (root / "records", root / "jobs") if p.is_dir()]
    if not sources:  # never fall back to the default results store: the report is of this pipeline
        print(f"no records in {root} yet: nothing to report")
        return 1, None
    folder = root / "report"
    before = _files(folder)
    cmd = [*cli(), "report", *sources, "--out", str(folder), "--format", formats]
    if check:
        cmd += ["--check", "--reference", check]
    code = subprocess.run(cmd, check=False).returncode
    return code, folder if _files(folder).items() - before.items() else None


def make_report(root: Path, formats: str = "terminal,md,html,png", check: str | None = None) -> int:
    """Run `detco-bench report` over the pipeline's records; returns its exit code."""
    return run_report(root, formats, check)[0]


def summarize(state: dict[str, Any]) -> Sequence[tuple[str, str, str]]:
    return [(name, job.get("status", "?"), job.get("record") or job.get("job_id") or "")
            for name, job in state.get("jobs", {}).items() if name in state.get("plan", [])]
