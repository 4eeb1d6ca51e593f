"""The pretraining loop: SGD + cosine, AMP, DDP via torchrun, atomic checkpoints, exact resume.

A step whose loss is not finite stops the run (NonFiniteLossError) before anything of it is written.
Everything that can be checked without training (data, output folder, checkpoint to resume, split-BN
groups) is checked before anything is written. Rank 0 holds the folder's lock (pretrain.lock) for
the whole run, so a second run on the same folder is refused.

Run folder layout:
  config.json      the effective PretrainConfig
  checkpoint.pth   latest training state (atomically replaced; see CHECKPOINT_FORMAT)
  metrics.jsonl    one JSON object per logged step
  tb/              TensorBoard event files
  .detco-bench.lock  the one-writer lock (empty of content; a folder holding only it counts as empty)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torchvision
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch.utils.data import DataLoader

from pretrain import distributed as dist_utils
from pretrain.atomic import atomic_torch_save, atomic_write_json, atomic_write_text
from pretrain.config import PretrainConfig
from pretrain.data import ContrastiveViews, EpochSampler, ImageSource, build_source
from pretrain.detco import DetCo
from pretrain.errors import NonFiniteLossError, PretrainInputError
from pretrain.heap import freed_memory_kept
from pretrain.lock import folder_lock, is_lock_file
from pretrain.optim import pretrain_optimizer
from pretrain.split_bn import describe_bn, resolve_bn_splits
from pretrain.summary import RunSummary

CHECKPOINT_FORMAT = "detco-bench.pretrain"
CHECKPOINT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.pth"
# Settings that may change between a run and its resumption without changing what is learned.
RESUMABLE_OVERRIDES = {"workers", "log_every", "save_every_steps", "max_steps", "amp", "channels_last"}


def check_run_dir(out: Path, resume: bool) -> None:
    """Check the output folder without creating anything (whether it can be created and written
    shows when `folder_lock` creates it and its lock file).

    A non-empty folder is only reused with `resume`, so an earlier run is never overwritten.
    """
    if out.exists() and not out.is_dir():
        raise PretrainInputError(f"output path {out} exists and is not a folder")
    if out.is_dir() and not resume and any(not is_lock_file(p) for p in out.iterdir()):
        raise PretrainInputError(
            f"output folder {out} is not empty; pass --resume to continue that run or choose another --out")


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a pretraining checkpoint safely (tensors and plain containers only)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated, corrupt or unsafe: all mean "cannot resume"
        raise PretrainInputError(f"cannot load checkpoint {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise PretrainInputError(f"{path} is not a detco-bench pretraining checkpoint")
    return state


def resolve_resume_config(requested: PretrainConfig, saved: dict[str, Any]) -> PretrainConfig:
    """The saved run's config, with only the harmless runtime settings taken from `requested`."""
    saved_cfg = PretrainConfig.from_dict(saved)
    req = requested.to_dict()
    diffs = [f"{k}: run has {v!r}, asked {req[k]!r}" for k, v in saved_cfg.to_dict().items()
             if k not in RESUMABLE_OVERRIDES and req[k] != v]
    if diffs:
        raise PretrainInputError("cannot resume with a different configuration (" + "; ".join(diffs) + ")")
    return dataclasses.replace(saved_cfg, **{k: getattr(requested, k) for k in RESUMABLE_OVERRIDES})


def _file_id(path: Path) -> tuple[int, int, int] | None:
    """(inode, size, mtime) of a file, None when absent: an atomic replace changes it."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def effective_config(requested: PretrainConfig, state: dict[str, Any] | None,
                     world: int) -> tuple[PretrainConfig, str | None]:
    """The config the run trains with (bn_splits resolved), and a note when split-BN fell back.

    New run: bn_splits from the request (automatic: 8 on one process, 1 under DDP). Resumed run: the
    saved config (see `resolve_resume_config`); an automatic bn_splits continues with the run's.
    """
    batch_per_process = requested.batch_size // world
    if state is None:
        splits = resolve_bn_splits(requested.bn_splits, batch_per_process, world)
        return dataclasses.replace(requested, bn_splits=splits.splits), splits.note
    saved = dict(state["config"])
    saved["bn_splits"] = saved.get("bn_splits") or 1  # runs from before split-BN: one BN group
    if requested.bn_splits is None:
        requested = dataclasses.replace(requested, bn_splits=saved["bn_splits"])
    cfg = resolve_resume_config(requested, saved)
    resolve_bn_splits(cfg.bn_splits, batch_per_process, world)  # still valid for this world size
    return cfg, None


def cosine_lr(base: float, step: int, total: int) -> float:
    return base * 0.5 * (1.0 + math.cos(math.pi * step / max(total, 1)))


def environment(device: torch.device) -> dict[str, Any]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {"torch": str(torch.__version__), "torchvision": str(torchvision.__version__),
            "python": platform.python_version(), "device": f"{device.type}:{name}",
            "world_size": dist_utils.world_size(), "hostname": platform.node()}


def _autocast(cfg: PretrainConfig, device: torch.device) -> tuple[Any, torch.dtype | None]:
    if not cfg.amp:
        return nullcontext(), None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.float16), torch.float16
    return torch.autocast(device.type, dtype=torch.bfloat16), torch.bfloat16


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def check_finite(loss: torch.Tensor, terms: dict[str, torch.Tensor], step: int,
                 checkpoint_step: int | None) -> float:
    """The total loss (a scalar) averaged over processes; raises NonFiniteLossError when it or any
    of its terms (scalars, "res5/g2g": ...) is inf or NaN on any process.

    Averaging the whole vector over processes makes every rank see the same verdict (a NaN on one
    rank is a NaN in the mean), so all ranks stop together instead of waiting on a dead one.
    """
    names = ["loss", *terms]
    values = torch.stack([loss.detach().float(), *(v.detach().float() for v in terms.values())])
    averaged = dist_utils.all_reduce_mean(values).tolist()  # one host sync per step
    bad = [name for name, v in zip(names, averaged, strict=True) if not math.isfinite(v)]
    if bad:
        term = next((name for name in bad if name != "loss"), "loss")  # the term is the useful clue
        raise NonFiniteLossError(step, term, averaged[names.index(term)], checkpoint_step)
    return averaged[0]


def _keep_metric_lines_up_to(path: Path, step: int) -> None:
    """Drop metric lines logged after the checkpoint we resume from (a killed run wrote them)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a line cut by the kill
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def train(cfg: PretrainConfig, out: str | os.PathLike, resume: bool = False, show_progress: bool = True,
          console: Console | None = None) -> Path:
    """Pretrain with `cfg` into run folder `out`; returns the path of the final checkpoint."""
    return train_run(cfg, out, resume=resume, show_progress=show_progress, console=console).checkpoint


def train_run(cfg: PretrainConfig, out: str | os.PathLike, resume: bool = False, show_progress: bool = True,
              console: Console | None = None) -> RunSummary:
    """Pretrain with `cfg` into run folder `out`; returns what the run did (`RunSummary`).

    Launched by torchrun, every process calls this; rank 0 holds the folder's lock and writes it.
    """
    out = Path(out)
    cfg.validate()
    device = dist_utils.init_from_env()
    rank, world = dist_utils.rank(), dist_utils.world_size()
    is_main = rank == 0
    console = console or Console(stderr=True)
    if cfg.batch_size % world:
        raise PretrainInputError(f"global batch size {cfg.batch_size} is not divisible by {world} processes")

    # Everything below up to the lock only reads: a run that cannot start leaves no trace.
    source = build_source(cfg)
    if len(source) // cfg.batch_size == 0:
        raise PretrainInputError(
            f"{len(source)} images are fewer than one global batch of {cfg.batch_size}; lower --batch-size")
    if is_main:
        check_run_dir(out, resume)
    ckpt = out / CHECKPOINT_NAME
    loaded_id = _file_id(ckpt) if resume else None
    state = load_checkpoint(ckpt) if loaded_id is not None else None
    requested = cfg
    cfg, bn_note = effective_config(requested, state, world)
    if state is not None and state.get("finished"):
        if is_main:
            console.print(f"run in {out} already finished ({state['epoch']} epochs)", soft_wrap=True)
        return _summary_of_finished(state, out, ckpt)

    # CPU steps re-fault their freed memory from the kernel every step otherwise (pretrain.heap).
    with folder_lock(out) if is_main else nullcontext(), freed_memory_kept() if device.type == "cpu" else nullcontext():
        if is_main:
            check_run_dir(out, resume)  # again: the folder may have changed before we held the lock
            if resume and _file_id(ckpt) != loaded_id:  # another run wrote it after we read it
                state = load_checkpoint(ckpt) if ckpt.is_file() else None
                cfg, bn_note = effective_config(requested, state, world)
        if is_main:  # on stdout: stderr is kept for the progress bar and for errors
            for line in filter(None, (bn_note, describe_bn(cfg.bn_splits or 1, cfg.batch_size // world, world))):
                print(line, flush=True)
        return _train_locked(cfg, source, out, state, device, console, show_progress)


def _summary_of_finished(state: dict[str, Any], out: Path, ckpt: Path) -> RunSummary:
    """The summary of a finished run as its checkpoint `state` records it."""
    cfg = state["config"]
    wall = float(state.get("wall_clock_s", 0.0))
    steps = int(state["step"])
    loss = state.get("loss")
    return RunSummary(
        out=out, checkpoint=ckpt, method=str(state["method"]), arch=str(state["arch"]), steps=steps,
        epochs=float(state["epoch"]), planned_epochs=int(state["epochs"]),
        final_loss=None if loss is None else float(loss),
        img_per_s=steps * int(cfg["batch_size"]) / wall if wall > 0 else 0.0, wall_clock_s=wall,
        bn_splits=int(state.get("bn_splits") or cfg.get("bn_splits") or 1),
        world_size=int(state.get("environment", {}).get("world_size", 1)), bad_images=int(state.get("bad_images", 0)),
        already_finished=True)


def _train_locked(cfg: PretrainConfig, source: ImageSource, out: Path, state: dict[str, Any] | None,
                  device: torch.device, console: Console, show_progress: bool) -> RunSummary:
    """The training loop proper, with `cfg` final (bn_splits resolved) and the folder ready."""
    rank, world = dist_utils.rank(), dist_utils.world_size()
    is_main = rank == 0
    dataset = ContrastiveViews(source, cfg)
    sampler = EpochSampler(len(dataset), cfg.batch_size, rank, world, seed=cfg.seed)
    steps_per_epoch = sampler.steps_per_epoch()
    total_steps = steps_per_epoch * cfg.epochs

    torch.manual_seed(cfg.seed)
    model = DetCo(cfg).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = pretrain_optimizer(model, cfg)  # torch's SGD, slice by slice on the CPU (pretrain.optim)
    autocast, amp_dtype = _autocast(cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    step, bad_images, elapsed_before = 0, 0, 0.0
    last_loss: float | None = None  # the last step's loss, for the summary and the checkpoint
    saved_step: int | None = None  # the step checkpoint.pth holds, for the message of a failed run
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        step, bad_images = int(state["step"]), int(state.get("bad_images", 0))
        saved_step = step
        elapsed_before = float(state.get("wall_clock_s", 0.0))
        last_loss = state.get("loss")
    net: torch.nn.Module = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                        else None)

    metrics_path = out / "metrics.jsonl"
    writer = None
    if is_main:
        atomic_write_json(out / "config.json", cfg.to_dict() | {"method": cfg.method})
        _keep_metric_lines_up_to(metrics_path, step)
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tb"), purge_step=step if step else None)

    def save(finished: bool) -> Path:
        nonlocal saved_step
        path = out / CHECKPOINT_NAME
        if is_main:
            atomic_torch_save(path, {
                "format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, "method": cfg.method,
                "arch": cfg.arch, "epoch": step // steps_per_epoch, "step": step, "epochs": cfg.epochs,
                "config": cfg.to_dict(), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler.is_enabled() else None, "rng": _rng_state(),
                "backbone": model.backbone_state_dict(), "finished": finished, "bad_images": bad_images,
                "bn_splits": model.bn_splits, "loss": last_loss,
                "wall_clock_s": elapsed_before + time.time() - started, "environment": environment(device)})
        saved_step = step
        return path

    started = time.time()
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[stats]}"), TimeRemainingColumn(), console=console,
                        disable=not (show_progress and is_main))
    model.train()
    stop_at = min(total_steps, cfg.max_steps) if cfg.max_steps else total_steps
    # The writer is closed on the way out of a failed run too, so the events logged before it are kept.
    with progress, writer if writer is not None else nullcontext():
        task = progress.add_task(f"{cfg.method} {cfg.arch}", total=total_steps, completed=step, stats="")
        window_start, window_images = time.time(), 0
        while step < stop_at:
            epoch, in_epoch = divmod(step, steps_per_epoch)
            dataset.epoch = epoch
            sampler.set_epoch(epoch, skip_steps=in_epoch)
            # Its own generator, so creating the loader leaves the global RNG (saved in checkpoints)
            # untouched and a resumed run draws the same random numbers as an uninterrupted one.
            loader = DataLoader(dataset, batch_size=cfg.batch_size // world, sampler=sampler,
                                num_workers=cfg.workers, drop_last=True, pin_memory=device.type == "cuda",
                                generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch))
            for batch in loader:
                views = {k: v.to(device, non_blocking=True) for k, v in batch.items() if k != "bad"}
                if cfg.channels_last:
                    views = {k: v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v
                             for k, v in views.items()}
                bad_images += int(batch["bad"].sum())
                lr = cosine_lr(cfg.lr, step, total_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                with autocast:
                    loss, terms = net(**views)
                # Checked before backward: no weight update, metric line or checkpoint of a
                # non-finite step ever exists, so the last checkpoint stays a good one to resume.
                loss_mean = last_loss = check_finite(loss, terms, step + 1, saved_step)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                step += 1
                window_images += cfg.batch_size
                if step % cfg.log_every == 0 or step == stop_at:
                    now = time.time()
                    img_s = window_images / max(now - window_start, 1e-9)
                    window_start, window_images = now, 0
                    record = {"step": step, "epoch": step / steps_per_epoch, "lr": lr, "loss": loss_mean,
                              "img_per_s": img_s, "bad_images": bad_images, "bn_splits": model.bn_splits,
                              **{f"loss/{k}": float(v) for k, v in terms.items()}}
                    if is_main:
                        with open(metrics_path, "a") as f:
                            f.write(json.dumps(record) + "\n")
                        assert writer is not None
                        for k, v in record.items():
                            if k not in ("step", "bn_splits"):  # bn_splits is a setting, not a curve
                                writer.add_scalar(f"train/{k}", v, step)
                    progress.update(task, completed=step, stats=(
                        f"loss {loss_mean:.4f}  lr {lr:.4g}  {img_s:.1f} img/s  epoch {epoch + 1}/{cfg.epochs}"))
                else:
                    progress.update(task, completed=step)
                if cfg.save_every_steps and step % cfg.save_every_steps == 0:
                    save(finished=False)
                if step >= stop_at:
                    break
            if step % steps_per_epoch == 0 or step >= stop_at:
                save(finished=step >= total_steps)
    if is_main and bad_images:
        console.print(f"[yellow]skipped {bad_images} unreadable image(s)[/yellow]")
    wall = elapsed_before + time.time() - started
    return RunSummary(
        out=out, checkpoint=out / CHECKPOINT_NAME, method=cfg.method, arch=cfg.arch, steps=step,
        epochs=step / steps_per_epoch, planned_epochs=cfg.epochs, final_loss=last_loss,
        img_per_s=step * cfg.batch_size / wall if wall > 0 else 0.0, wall_clock_s=wall, bn_splits=model.bn_splits,
        world_size=world, bad_images=bad_images, already_finished=False)
