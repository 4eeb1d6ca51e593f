"""`plan_transfer`: a task + a checkpoint + options -> a `TransferPlan`, without side effects.

It resolves everything a run needs and writes nothing: the effective config with every adaptation
recorded, the datasets and what is missing, the output folder's state, and the batch /
learning-rate rule for the number of processes. ``detco-bench transfer --dry-run`` prints it.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch

from detco_bench.checkpoints import load_backbone, read_checkpoint, sha256_file
from detco_bench.datasets import builtin_dataset, check_dataset, data_root, synthetic_manifest
from detco_bench.engines import get_engine, resolve_engine
from detco_bench.errors import UserError
from detco_bench.paths import check_output_folder
from detco_bench.records import config_hash, default_results_dir, new_run_id
from detco_bench.task_label import TaskLabel
from detco_bench.tasks import Task, check_subset, get_task
from detco_bench.transfer.adapt import (
    ConfigChanges,
    adapt_checkpoint,
    adapt_device,
    adapt_workers,
    apply_scaling,
    check_settings,
    dataset_specs,
    fit_schedule,
)
from detco_bench.transfer.options import TransferOptions
from detco_bench.transfer.plan import CheckpointSpec, TransferPlan
from detco_bench.transfer.protocol import protocol_fidelity
from detco_bench.transfer.state import folder_state
from detco_bench.transfer.weights import weights_cache_path
from detco_bench.transfer_config import apply_opts, effective_config, get_key, parse_opts, set_key

LAUNCHERS: tuple[str, ...] = ("local", "slurm")
#: Set by the CLI when torchrun started the processes (`transfer.torchrun`): they are given, not spawned.
TORCHRUN = "torchrun"
DEVICES: tuple[str, ...] = ("cpu", "cuda")

#: --opts keys that do not change what a run measures (throughput and bookkeeping only).
NEUTRAL_OPTS = ("DATALOADER.", "SOLVER.CHECKPOINT_PERIOD", "TEST.EVAL_PERIOD", "CUDNN_BENCHMARK", "VIS_PERIOD")


def record_label(task: TaskLabel | str, root: Path, *, custom: bool, opts: list[str] | None) -> str:
    """The task label a record carries. Only a run on the task's real dataset with the protocol's
    settings keeps the plain name the paper's references use; on synthetic data the label gets
    the variant ``synthetic``, on custom jsons ``custom``, and with --opts that change the
    measurement ``+opts``, so such runs are never compared with the published numbers as if they
    were the same."""
    label = TaskLabel.parse(task) if isinstance(task, str) else task
    if synthetic_manifest(root) is not None:
        label = label.with_variant("synthetic")
    elif custom:
        label = label.with_variant("custom")
    keys = [key for key, _ in parse_opts(opts or [])]
    return str(label.with_opts(any(not key.startswith(NEUTRAL_OPTS) for key in keys)))


def run_identity(label: str, engine: str, checkpoint_sha: str | None, cfg: dict[str, Any],
                 eval_weights_sha: str | None = None) -> dict[str, Any]:
    """What makes two plans the same job (an output folder holds one job)."""
    core = copy.deepcopy(cfg)
    # Where the weights and outputs live, and how many loader workers this machine runs, are not the job.
    for key in ("MODEL.WEIGHTS", "OUTPUT_DIR", "DATALOADER.NUM_WORKERS"):
        if get_key(core, key, None) is not None:
            set_key(core, key, "")
    identity = {"task": label, "engine": engine, "checkpoint_sha256": checkpoint_sha, "config_hash": config_hash(core)}
    if eval_weights_sha is not None:
        identity["eval_weights_sha256"] = eval_weights_sha
    return identity


def eval_weights_spec(path: Path) -> dict[str, str]:
    """The fine-tuned model of an ``--eval-weights`` run: path and sha256, after checking that it
    loads safely and holds a model state dict (``{"model": {name: tensor}}`` or bare)."""
    data = read_checkpoint(path)
    state = data.get("model") if isinstance(data, dict) and isinstance(data.get("model"), dict) else data
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"--eval-weights {path}: not a model checkpoint (expected {{'model': state_dict}} "
                        "or a state dict of tensors)")
    resolved = path.expanduser().resolve()
    return {"path": str(resolved), "sha256": sha256_file(resolved)}


def _resolve_launch(options: TransferOptions, problems: list[str]) -> TransferOptions:
    """Check device / launcher / process counts; fill in the device and the GPU count."""
    if options.launcher not in (*LAUNCHERS, TORCHRUN):
        raise UserError(f"unknown --launcher {options.launcher!r}; choose one of {', '.join(LAUNCHERS)}")
    cuda = torch.cuda.is_available()
    device, gpus = options.device, options.gpus
    if device is None:
        device = "cuda" if (cuda or options.launcher == "slurm") else "cpu"
    if device not in DEVICES:
        raise UserError(f"unknown --device {device!r}; choose one of {', '.join(DEVICES)}")
    num_machines, machine_rank = options.num_machines, options.machine_rank
    if num_machines < 1 or not 0 <= machine_rank < num_machines:
        raise UserError(f"--machine-rank {machine_rank} must be in [0, --num-machines {num_machines})")
    if device == "cpu" and options.launcher == TORCHRUN:
        gpus = gpus or 1  # gloo processes started by torchrun
    elif device == "cpu":
        if gpus not in (None, 0, 1):
            raise UserError("--device cpu runs a single process; --gpus applies to --device cuda")
        if num_machines > 1:
            raise UserError("--device cpu runs a single process on one machine (no --num-machines)")
        gpus = 1
    else:
        gpus = 1 if gpus is None else gpus
        if gpus < 1:
            raise UserError(f"--gpus {gpus}: must be at least 1")
        if options.launcher == "local" and not cuda:
            problems.append("--device cuda: no CUDA device is visible here (use --device cpu for a CPU run)")
        elif options.launcher == "local" and gpus > torch.cuda.device_count():
            problems.append(f"--gpus {gpus}: only {torch.cuda.device_count()} CUDA device(s) visible")
    if num_machines > 1 and options.launcher == "local" and options.dist_url == "auto":
        raise UserError("--num-machines > 1 needs --dist-url tcp://HOST:PORT of machine 0 (the same on every machine)")
    return options.replace(device=device, gpus=gpus)


def _checkpoint_spec(options: TransferOptions) -> tuple[CheckpointSpec, str]:
    """The checkpoint's identity and architecture (loaded safely, nothing converted yet)."""
    assert options.checkpoint is not None
    loaded = load_backbone(options.checkpoint, options.checkpoint_format)
    meta = loaded.meta
    epochs = options.pretrain_epochs if options.pretrain_epochs is not None else meta.get("epoch")
    spec = CheckpointSpec(
        path=str(Path(options.checkpoint).expanduser().resolve()),
        sha256=sha256_file(options.checkpoint),
        format=loaded.format,
        arch=loaded.arch,
        method=options.method or str(meta.get("method") or "unknown"),
        pretrain_epochs=int(epochs) if isinstance(epochs, (int, float)) else None,
    )
    return spec, loaded.arch


def plan_options(options: TransferOptions) -> TransferPlan:
    """Resolve a transfer run (nothing is written). Raises `UserError` for invalid input;
    problems that only matter when running (missing data, GPUs) go to ``plan.problems``."""
    if options.task is None or options.out is None:
        raise UserError("--task and --out are required")
    task: Task = get_task(options.task)
    subset = check_subset(task, options.subset)
    engine = resolve_engine(options.engine)
    opts = list(options.opts)
    parse_opts(opts)  # fail early on malformed overrides
    problems: list[str] = []
    options = _resolve_launch(options, problems)
    out = check_output_folder(Path(options.out).expanduser().resolve())
    root = data_root(options.data_root_dir).resolve()
    subset_seed = (options.subset_seed if options.subset_seed is not None else options.seed) if subset else None

    cfg = effective_config(task, [])
    changes = ConfigChanges(cfg)
    ck_spec: CheckpointSpec | None = None
    weights: str | None = None
    evaluated = eval_weights_spec(Path(options.eval_weights)) if options.eval_weights is not None else None
    if options.checkpoint is not None:
        ck_spec, arch = _checkpoint_spec(options)
        adapt_checkpoint(changes, task, arch)
        weights = str(weights_cache_path(ck_spec.sha256, engine, options.cache_dir))
        changes.set("MODEL.WEIGHTS", weights, "the converted, verified checkpoint (cached by sha256)")
    datasets = dataset_specs(
        task, cfg, changes, root, subset=subset, subset_seed=subset_seed, train_json=options.train_json,
        val_json=options.val_json, images=options.images, val_images=options.val_images, out=out)
    for spec in datasets.values():
        problems.extend(check_dataset(spec))
    adapt_device(changes, str(options.device))
    if options.launcher == "local":  # a Slurm job's machine is not this one
        adapt_workers(changes, int(options.gpus or 1))
    changes.set("SEED", int(options.seed), "--seed")
    changes.set("OUTPUT_DIR", str(out), "--out")
    assert options.gpus is not None
    scaling_info = apply_scaling(cfg, options.num_machines * options.gpus, options.scaling)
    final = apply_opts(cfg, opts)
    opts_keys = {key for key, _ in parse_opts(opts)}
    changes.items.extend(fit_schedule(cfg, final, opts_keys))
    check_settings(final)
    problems.extend(get_engine(engine).config_problems(final, task.family))
    for key in ("DATASETS.TRAIN", "DATASETS.TEST"):
        for name in get_key(final, key):
            if name not in datasets:
                try:
                    datasets[name] = builtin_dataset(name, root)
                except UserError as exc:
                    raise UserError(f"--opts {key}: {exc}") from None
                problems.extend(check_dataset(datasets[name]))

    label = record_label(TaskLabel(task.name, subset), root, custom=bool(options.train_json or options.val_json),
                         opts=opts)
    fidelity = protocol_fidelity(
        effective_config(task, []), final, world_size=options.num_machines * options.gpus, scaling=scaling_info,
        adaptations=changes.items, opts_keys=opts_keys, variant=TaskLabel.parse(label).variant, subset=subset)
    if evaluated is not None:
        fidelity["protocol"] = "adapted"
        fidelity["differences"].insert(0, (
            f"evaluation only: the fine-tuned model {evaluated['path']} (sha256 {evaluated['sha256'][:12]}) was "
            "trained elsewhere; this record does not describe its training"))
        fidelity["eval_weights"] = evaluated
    identity = run_identity(label, engine, ck_spec.sha256 if ck_spec else None, final,
                            evaluated["sha256"] if evaluated else None)
    state = folder_state(out, identity)
    state["identity"] = identity
    if state["status"] == "conflict" and not options.force:
        problems.append(state["reason"])
    run_id = new_run_id()
    if state["status"] == "resume" and not options.force and state.get("previous", {}).get("run_id"):
        run_id = state["previous"]["run_id"]
    results = Path(options.results_dir).expanduser() if options.results_dir else default_results_dir()
    resolved = options.replace(
        task=task.name, engine=engine, out=out, data_root_dir=root, subset=subset, subset_seed=subset_seed,
        results_dir=results.resolve(), seed=int(options.seed), opts=opts,
        checkpoint=Path(ck_spec.path) if ck_spec else None,
        eval_weights=Path(evaluated["path"]) if evaluated else None)
    return TransferPlan(
        options=resolved,
        task_label=label,
        family=task.family,
        evaluator=task.evaluator,
        metrics=list(task.metrics),
        checkpoint=ck_spec,
        weights=weights,
        config=final,
        datasets=datasets,
        scaling=scaling_info,
        adaptations=changes.items,
        protocol=fidelity,
        state=state,
        problems=problems,
        run_id=run_id,
    )


def plan_transfer(task: str | Task, checkpoint: str | os.PathLike | None, out: str | os.PathLike,
                  **options: Any) -> TransferPlan:
    """`plan_options` with the options as keyword arguments (the fields of `TransferOptions`)."""
    name = task.name if isinstance(task, Task) else task
    opts = options.pop("opts", None) or []
    return plan_options(TransferOptions(
        task=name, checkpoint=Path(checkpoint) if checkpoint is not None else None, out=Path(out),
        opts=list(opts), **options))
