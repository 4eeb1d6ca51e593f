"""Transfer jobs: a task + a checkpoint -> a `TransferPlan` -> an engine run -> a result record.

`plan_transfer` resolves everything a run needs without running anything (the effective config
with every adaptation recorded, the datasets and what is missing, the output folder's state, the
batch / learning-rate rule for the number of GPUs); ``detco-bench transfer --dry-run`` prints it.
`run_transfer` executes a plan: it converts and verifies the checkpoint (cached by its sha256),
writes the plan into the output folder, then either calls the engine (`detco_bench.engines`) or
submits the job to Slurm through submitit. Engines report back through `finish_run` /
`fail_run`, which write the result record. docs/transfer.md describes the whole contract.
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import os
import shlex
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from detco_bench.errors import UserError
from detco_bench.tasks import COCO_FORMAT_FAMILIES, Task, check_subset, get_task, parse_subset, task_label
from detco_bench.transfer_config import (
    SYNC_BN_NAMES,
    apply_opts,
    effective_config,
    flatten,
    get_key,
    parse_opts,
    set_key,
    to_yaml,
)
from detco_bench.transfer_data import (
    DatasetSpec,
    builtin_dataset,
    check_dataset,
    custom_coco_dataset,
    data_root,
    keypoint_flip_map,
    read_coco_categories,
    synthetic_manifest,
)

#: The protocol's configs are written for 8 GPUs (2 images per GPU; 1 for Cityscapes instance).
REFERENCE_WORLD_SIZE = 8
SCALING_RULES: tuple[str, ...] = ("linear", "none")
LAUNCHERS: tuple[str, ...] = ("local", "slurm")
DEVICES: tuple[str, ...] = ("cpu", "cuda")

STATE_FILE = "transfer_state.json"
PLAN_FILE = "plan.json"
CONFIG_FILE = "config.yaml"
CACHE_ENV = "DETCO_BENCH_CACHE"
SUBMITIT_CLUSTER_ENV = "DETCO_BENCH_SUBMITIT_CLUSTER"

#: Solver keys counted in iterations: divided by the batch factor under the linear rule.
_ITER_KEYS = ("SOLVER.MAX_ITER", "SOLVER.WARMUP_ITERS", "SOLVER.CHECKPOINT_PERIOD", "TEST.EVAL_PERIOD")


@dataclass
class CheckpointSpec:
    """The checkpoint being transferred: identity (path + sha256) and what it says about itself."""

    path: str
    sha256: str
    format: str
    arch: str
    method: str
    pretrain_epochs: int | None


@dataclass
class SlurmSpec:
    partition: str | None = None
    time_min: int = 4320
    cpus_per_task: int = 10
    mem_gb: int | None = None
    job_name: str | None = None


@dataclass
class TransferPlan:
    """Everything one transfer run needs. Engines read it; `to_dict` / `from_dict` round-trip it
    through JSON (``<out>/plan.json``) and across processes.

    config: the final effective Detectron2-style config (nested dict): the task's YAML chain, then
    the adaptations (data, checkpoint arch, device), the batch/lr rule, then `opts`, literally.
    datasets: every name of config DATASETS.TRAIN / DATASETS.TEST -> its `DatasetSpec`.
    scaling: the batch/lr rule applied ({"rule", "reference_world_size", "world_size", "changes"}).
    adaptations: [{"key", "from", "to", "why"}] for every value changed from the task's config
    before `opts`.
    state: the output folder's state ("new", "resume", "finished", "conflict") and details.
    problems: what stops the run (missing data, bad device settings); `run_transfer` refuses
    a plan with problems, ``--dry-run`` lists them.
    """

    task: str
    task_label: str
    family: str
    evaluator: str
    metrics: list[str]
    engine: str
    checkpoint: CheckpointSpec | None
    weights: str | None
    out_dir: str
    results_dir: str
    config: dict[str, Any]
    opts: list[str]
    device: str
    gpus: int
    num_machines: int
    machine_rank: int
    dist_url: str
    launcher: str
    slurm: SlurmSpec
    seed: int
    data_root: str
    subset: str | None
    subset_seed: int | None
    datasets: dict[str, DatasetSpec]
    scaling: dict[str, Any]
    adaptations: list[dict[str, Any]]
    state: dict[str, Any]
    problems: list[str]
    run_id: str
    force: bool = False
    created_at: str = field(default_factory=lambda: _now_iso())

    @property
    def world_size(self) -> int:
        return self.num_machines * self.gpus

    @property
    def task_obj(self) -> Task:
        return get_task(self.task)

    @property
    def output_dir(self) -> Path:
        return Path(self.out_dir)

    @property
    def resume(self) -> bool:
        """Whether the engine should resume from the output folder (an interrupted run)."""
        return self.state.get("status") == "resume" and not self.force

    @property
    def record_path(self) -> Path:
        from detco_bench.records import record_filename

        return Path(self.results_dir) / record_filename(self.run_id)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["datasets"] = {k: v.to_dict() for k, v in self.datasets.items()}
        return json.loads(json.dumps(d))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TransferPlan:
        data = copy.deepcopy(data)
        ck = data.get("checkpoint")
        data["checkpoint"] = CheckpointSpec(**ck) if ck else None
        data["slurm"] = SlurmSpec(**(data.get("slurm") or {}))
        data["datasets"] = {k: DatasetSpec.from_dict(v) for k, v in data["datasets"].items()}
        return cls(**data)

    def transfer_meta(self) -> dict[str, Any]:
        """How this run's config came about (stored beside the config in the record)."""
        return {
            "task": self.task,
            "subset": self.subset,
            "subset_seed": self.subset_seed,
            "opts": list(self.opts),
            "scaling": self.scaling,
            "adaptations": self.adaptations,
            "device": self.device,
            "world_size": self.world_size,
            "launcher": self.launcher,
            "datasets": {k: v.to_dict() for k, v in self.datasets.items()},
            "checkpoint_format": self.checkpoint.format if self.checkpoint else None,
            "checkpoint_arch": self.checkpoint.arch if self.checkpoint else None,
        }

    def record_config(self) -> dict[str, Any]:
        """The ``config`` of the result record: the effective config plus a DETCO_BENCH section."""
        return {**copy.deepcopy(self.config), "DETCO_BENCH": self.transfer_meta()}

    def command(self) -> str:
        """A ``detco-bench transfer`` command line that plans the same run."""
        parts = ["detco-bench", "transfer", "--task", self.task]
        if self.checkpoint:
            parts += ["--checkpoint", self.checkpoint.path]
        parts += [
            "--out",
            self.out_dir,
            "--engine",
            self.engine,
            "--device",
            self.device,
            "--seed",
            str(self.seed),
            "--data-root",
            self.data_root,
        ]
        if self.device == "cuda":
            parts += ["--gpus", str(self.gpus)]
        if self.num_machines > 1:
            parts += [
                "--num-machines",
                str(self.num_machines),
                "--machine-rank",
                str(self.machine_rank),
                "--dist-url",
                self.dist_url,
            ]
        if self.launcher != "local":
            parts += ["--launcher", self.launcher]
            if self.slurm.partition:
                parts += ["--partition", self.slurm.partition]
            parts += ["--time", str(self.slurm.time_min)]
        if self.subset:
            parts += ["--subset", self.subset, "--subset-seed", str(self.subset_seed)]
        if self.scaling.get("rule") != "linear":
            parts += ["--scaling", str(self.scaling.get("rule"))]
        custom = {s.name: s for s in self.datasets.values() if s.custom}
        if custom:
            train, val = custom["custom_train"], custom["custom_val"]
            parts += [
                "--train-json",
                str(train.json_file),
                "--val-json",
                str(val.json_file),
                "--images",
                train.image_root,
            ]
            if val.image_root != train.image_root:
                parts += ["--val-images", val.image_root]
        if self.opts:
            parts += ["--opts", *self.opts]
        return " ".join(shlex.quote(p) for p in parts)


def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------------
# Planning


def default_cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "detco-bench"


def weights_cache_path(sha256: str, engine: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the converted weights of a checkpoint live: ``<cache>/converted/<sha256>.<target>``."""
    from detco_bench.engines import WEIGHTS_TARGET

    target = WEIGHTS_TARGET[engine]
    suffix = ".pkl" if target == "detectron2" else ".pth"
    base = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    return base / "converted" / f"{sha256}.{target}{suffix}"


def weights_cached(path: str | os.PathLike, sha256: str) -> bool:
    """True when `path` exists with a passing verification report for the checkpoint `sha256`."""
    from detco_bench.convert import report_path_for

    path = Path(path)
    report = report_path_for(path)
    if not (path.is_file() and report.is_file()):
        return False
    try:
        data = json.loads(report.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(data.get("passed")) and data.get("source", {}).get("sha256") == sha256


class _Changes:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.items: list[dict[str, Any]] = []

    def set(self, key: str, value: Any, why: str) -> None:
        old = get_key(self.cfg, key, None)
        if old == value:
            return
        set_key(self.cfg, key, value)
        self.items.append({"key": key, "from": old, "to": value, "why": why})


def _adapt_checkpoint(changes: _Changes, task: Task, arch: str) -> None:
    from detco_bench.convert import ARCHS

    spec = ARCHS[arch]
    changes.set("MODEL.RESNETS.DEPTH", spec.depth, f"checkpoint is a {arch}")
    if spec.block == "basic":
        if task.family in ("c4", "voc_c4"):
            raise UserError(
                f"{task.name} uses the C4 res5 RoI head, which needs a bottleneck ResNet "
                f"(resnet50/101/152); the checkpoint is a {arch}"
            )
        if task.family == "cityscapes_sem":
            raise UserError(
                f"{task.name} dilates res5, which detectron2 supports for bottleneck ResNets only; "
                f"the checkpoint is a {arch}"
            )
        changes.set("MODEL.RESNETS.RES2_OUT_CHANNELS", 64, f"{arch} has 64-channel res2 (basic blocks)")


def _adapt_device(changes: _Changes, device: str) -> None:
    changes.set("MODEL.DEVICE", device, f"--device {device}")
    if device == "cpu":
        for key, value in flatten(changes.cfg).items():
            if key.rsplit(".", 1)[-1] == "NORM" and value in SYNC_BN_NAMES:
                changes.set(
                    key,
                    "BN",
                    "--device cpu runs one process: synchronized BN becomes plain BN "
                    "(detectron2's SyncBN raises on CPU with a process group)",
                )


def apply_scaling(
    cfg: dict[str, Any], world_size: int, rule: str = "linear", reference: int = REFERENCE_WORLD_SIZE
) -> dict[str, Any]:
    """Apply the batch / learning-rate rule for `world_size` processes in place; returns what was done.

    "linear" (the default; Goyal et al.'s linear scaling rule, as detectron2's
    REFERENCE_WORLD_SIZE mechanism applies it): keep the images per GPU of the 8-GPU protocol,
    so IMS_PER_BATCH scales by world_size/8, BASE_LR by the same factor, and MAX_ITER, STEPS,
    WARMUP_ITERS, CHECKPOINT_PERIOD, EVAL_PERIOD by its inverse (same number of epochs).
    "none": keep the protocol's total batch and schedule (each process holds IMS_PER_BATCH /
    world_size images; needs the memory for it).
    """
    if rule not in SCALING_RULES:
        raise UserError(f"unknown --scaling {rule!r}; choose one of {', '.join(SCALING_RULES)}")
    info: dict[str, Any] = {
        "rule": rule,
        "reference_world_size": reference,
        "world_size": world_size,
        "changes": {},
    }
    batch = int(get_key(cfg, "SOLVER.IMS_PER_BATCH"))
    if rule == "none" or world_size == reference:
        if batch % world_size:
            raise UserError(
                f"SOLVER.IMS_PER_BATCH {batch} is not divisible by {world_size} processes "
                "(use --scaling linear or set SOLVER.IMS_PER_BATCH with --opts)"
            )
        info["per_process_batch"] = batch // world_size
        info["summary"] = (
            f"protocol batch kept: {batch} images over {world_size} process(es) "
            f"({batch // world_size} per process), lr {get_key(cfg, 'SOLVER.BASE_LR')}"
        )
        return info
    if batch % reference:
        raise UserError(f"SOLVER.IMS_PER_BATCH {batch} is not a multiple of the reference {reference} GPUs")
    per_gpu = batch // reference
    new_batch = per_gpu * world_size
    factor = new_batch / batch

    def change(key: str, value: Any) -> None:
        old = get_key(cfg, key, None)
        if old is None or old == value:
            return
        info["changes"][key] = [old, value]
        set_key(cfg, key, value)

    change("SOLVER.IMS_PER_BATCH", new_batch)
    change("SOLVER.BASE_LR", float(get_key(cfg, "SOLVER.BASE_LR")) * factor)
    for key in _ITER_KEYS:
        value = get_key(cfg, key, None)
        if isinstance(value, int) and value > 0:
            change(key, max(1, int(round(value / factor))))
    steps = get_key(cfg, "SOLVER.STEPS", None)
    if steps:
        change("SOLVER.STEPS", [max(1, int(round(s / factor))) for s in steps])
    info["per_process_batch"] = per_gpu
    info["factor"] = factor
    info["summary"] = (
        f"linear scaling rule: {reference} GPUs x {per_gpu} images -> {world_size} process(es) x "
        f"{per_gpu} images; " + ", ".join(f"{k.split('.', 1)[1]} {a} -> {b}" for k, (a, b) in info["changes"].items())
    )
    return info


def _dataset_specs(
    task: Task,
    cfg: dict[str, Any],
    changes: _Changes,
    root: Path,
    *,
    subset: str | None,
    subset_seed: int | None,
    train_json: str | None,
    val_json: str | None,
    images: str | None,
    val_images: str | None,
    out: Path,
) -> dict[str, DatasetSpec]:
    train_names = list(get_key(cfg, "DATASETS.TRAIN"))
    test_names = list(get_key(cfg, "DATASETS.TEST"))
    keypoints = task.family == "keypoint"
    specs: dict[str, DatasetSpec] = {}
    custom = train_json or val_json or images or val_images
    if custom:
        if not task.supports_custom_data:
            raise UserError(
                f"--train-json/--val-json/--images apply to COCO-format tasks; {task.name} uses "
                f"{', '.join(train_names)}"
            )
        if not (train_json and val_json and images):
            raise UserError(
                "a custom COCO-format dataset needs --train-json, --val-json and --images "
                "(--val-images defaults to --images)"
            )
        train = custom_coco_dataset("custom_train", Path(train_json).expanduser(), Path(images).expanduser(), keypoints)
        val = custom_coco_dataset(
            "custom_val", Path(val_json).expanduser(), Path(val_images or images).expanduser(), keypoints
        )
        specs = {"custom_train": train, "custom_val": val}
        changes.set("DATASETS.TRAIN", ["custom_train"], "--train-json/--images: custom COCO-format dataset")
        changes.set("DATASETS.TEST", ["custom_val"], "--val-json: custom COCO-format dataset")
        train_names, test_names = ["custom_train"], ["custom_val"]
    else:
        for name in dict.fromkeys(train_names + test_names):
            specs[name] = builtin_dataset(name, root)

    if subset:
        fraction = parse_subset(subset)
        assert fraction is not None
        seed = int(subset_seed if subset_seed is not None else 0)
        new_names = []
        for name in train_names:
            spec = specs.pop(name)
            pct = subset.rstrip("%")
            sub_name = f"{name}_subset{pct}pct_seed{seed}"
            stem = Path(spec.json_file or "train.json").stem
            spec.name = sub_name
            spec.subset = {"source": spec.json_file, "fraction": fraction, "seed": seed}
            spec.json_file = str(out / "datasets" / f"{stem}_subset{pct}pct_seed{seed}.json")
            specs[sub_name] = spec
            new_names.append(sub_name)
        changes.set("DATASETS.TRAIN", new_names, f"--subset {subset} (seed {seed}): semi-supervised setting")
    _adapt_metadata(task, changes, specs, root)
    return specs


def _adapt_metadata(task: Task, changes: _Changes, specs: dict[str, DatasetSpec], root: Path) -> None:
    """Class / keypoint metadata of synthetic or custom data (real datasets keep the protocol's)."""
    manifest = synthetic_manifest(root)
    coco_specs = [s for s in specs.values() if s.kind == "coco"]
    if task.family in COCO_FORMAT_FAMILIES and coco_specs:
        custom = [s for s in coco_specs if s.custom]
        if custom:
            cats = read_coco_categories(custom[0].json_file or "")
            where = f"categories of {custom[0].json_file}"
        elif manifest is not None:
            from detco_bench.synthetic_layouts import COCO_CATEGORIES, COCO_KEYPOINT_CATEGORY

            cats = [COCO_KEYPOINT_CATEGORY] if task.family == "keypoint" else list(COCO_CATEGORIES)
            where = f"synthetic dataset ({root / 'synthetic_dataset.json'})"
        else:
            return
        if task.family == "keypoint":
            names = list(cats[0].get("keypoints") or [])
            if not names:
                raise UserError(f"{where}: a keypoint task needs a category with a 'keypoints' list")
            changes.set("MODEL.ROI_HEADS.NUM_CLASSES", 1, f"{where}: one keypoint category")
            changes.set("MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS", len(names), f"{where}: {len(names)} keypoints")
            meta: dict[str, Any] = {"keypoint_names": names}
            if manifest is not None and not custom:
                from detco_bench.synthetic_layouts import (
                    KEYPOINT_FLIP_MAP,
                    KEYPOINT_OKS_SIGMAS,
                    KEYPOINT_SKELETON,
                )

                meta["keypoint_flip_map"] = [list(p) for p in KEYPOINT_FLIP_MAP]
                meta["keypoint_connection_rules"] = [
                    [names[a - 1], names[b - 1], [255, 255, 255]] for a, b in KEYPOINT_SKELETON
                ]
                sigmas = list(KEYPOINT_OKS_SIGMAS)
            elif len(names) == 17:
                from detco_bench.transfer_data import coco_person_keypoint_meta

                meta.update(coco_person_keypoint_meta())
                sigmas = []
            else:
                meta["keypoint_flip_map"] = keypoint_flip_map(names)
                sigmas = [0.05] * len(names)
            if sigmas:
                meta["keypoint_oks_sigmas"] = sigmas
                changes.set("TEST.KEYPOINT_OKS_SIGMAS", sigmas, f"{where}: OKS sigmas for {len(names)} keypoints")
            for s in coco_specs:
                s.meta.update(meta)
        else:
            key = "MODEL.RETINANET.NUM_CLASSES" if task.family == "retinanet" else "MODEL.ROI_HEADS.NUM_CLASSES"
            changes.set(key, len(cats), f"{where}: {len(cats)} categories")
    elif task.family == "voc_c4" and manifest is not None:
        classes = list(manifest.get("classes") or [])
        changes.set(
            "MODEL.ROI_HEADS.NUM_CLASSES",
            len(classes),
            f"synthetic dataset ({root / 'synthetic_dataset.json'}): {len(classes)} VOC classes",
        )
        for s in specs.values():
            s.meta["thing_classes"] = classes


def _identity(task_label_: str, engine: str, checkpoint_sha: str | None, cfg: dict[str, Any]) -> dict[str, Any]:
    from detco_bench.records import config_hash

    core = copy.deepcopy(cfg)
    for key in ("MODEL.WEIGHTS", "OUTPUT_DIR"):
        if get_key(core, key, None) is not None:
            set_key(core, key, "")
    return {
        "task": task_label_,
        "engine": engine,
        "checkpoint_sha256": checkpoint_sha,
        "config_hash": config_hash(core),
    }


def read_state(out: str | os.PathLike) -> dict[str, Any] | None:
    path = Path(out) / STATE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"status": "unreadable"}
    return data if isinstance(data, dict) else {"status": "unreadable"}


def write_state(out: str | os.PathLike, state: dict[str, Any]) -> None:
    from pretrain.atomic import atomic_write_json

    atomic_write_json(Path(out) / STATE_FILE, state)


def _folder_state(out: Path, identity: dict[str, Any]) -> dict[str, Any]:
    previous = read_state(out)
    if previous is None:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            return {
                "status": "conflict",
                "reason": f"--out {out} exists and is not a detco-bench transfer folder (no {STATE_FILE}); "
                "choose an empty or new folder (or --force to use it anyway)",
            }
        return {"status": "new"}
    if previous.get("status") == "unreadable":
        return {
            "status": "conflict",
            "reason": f"{out / STATE_FILE} is unreadable (use --force to start over)",
        }
    same = all(previous.get("identity", {}).get(k) == v for k, v in identity.items())
    if not same:
        diff = [k for k, v in identity.items() if previous.get("identity", {}).get(k) != v]
        return {
            "status": "conflict",
            "previous": previous,
            "reason": f"--out {out} holds another job ({previous.get('identity', {}).get('task')}, "
            f"differs in {', '.join(diff)}); choose another --out, or --force to replace it",
        }
    if previous.get("status") == "success":
        return {"status": "finished", "previous": previous, "record": previous.get("record")}
    last = out / "last_checkpoint"
    return {
        "status": "resume",
        "previous": previous,
        "checkpoint": last.read_text(encoding="utf-8").strip() if last.is_file() else None,
    }


def plan_transfer(
    task: str | Task,
    checkpoint: str | os.PathLike | None,
    out: str | os.PathLike,
    *,
    engine: str = "auto",
    opts: list[str] | None = None,
    device: str | None = None,
    gpus: int | None = None,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str = "auto",
    launcher: str = "local",
    slurm: SlurmSpec | None = None,
    seed: int = 0,
    data_root_dir: str | os.PathLike | None = None,
    subset: str | None = None,
    subset_seed: int | None = None,
    train_json: str | None = None,
    val_json: str | None = None,
    images: str | None = None,
    val_images: str | None = None,
    method: str | None = None,
    pretrain_epochs: int | None = None,
    results_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    scaling: str = "linear",
    force: bool = False,
    checkpoint_format: str = "auto",
) -> TransferPlan:
    """Resolve a transfer run (nothing is written). Raises `UserError` for invalid input;
    problems that only matter when running (missing data, GPUs) go to ``plan.problems``."""
    import torch

    from detco_bench.engines import resolve_engine
    from detco_bench.records import default_results_dir, new_run_id

    task = task if isinstance(task, Task) else get_task(task)
    subset = check_subset(task, subset)
    engine = resolve_engine(engine)
    opts = list(opts or [])
    parse_opts(opts)  # fail early on malformed overrides
    if launcher not in LAUNCHERS:
        raise UserError(f"unknown --launcher {launcher!r}; choose one of {', '.join(LAUNCHERS)}")
    problems: list[str] = []
    cuda = torch.cuda.is_available()
    if device is None:
        device = "cuda" if (cuda or launcher == "slurm") else "cpu"
    if device not in DEVICES:
        raise UserError(f"unknown --device {device!r}; choose one of {', '.join(DEVICES)}")
    if num_machines < 1 or not 0 <= machine_rank < num_machines:
        raise UserError(f"--machine-rank {machine_rank} must be in [0, --num-machines {num_machines})")
    if device == "cpu":
        if gpus not in (None, 0, 1):
            raise UserError("--device cpu runs a single process; --gpus applies to --device cuda")
        if num_machines > 1:
            raise UserError("--device cpu runs a single process on one machine (no --num-machines)")
        gpus = 1
    else:
        gpus = 1 if gpus is None else gpus
        if gpus < 1:
            raise UserError(f"--gpus {gpus}: must be at least 1")
        if launcher == "local" and not cuda:
            problems.append("--device cuda: no CUDA device is visible here (use --device cpu for a CPU run)")
        elif launcher == "local" and gpus > torch.cuda.device_count():
            problems.append(f"--gpus {gpus}: only {torch.cuda.device_count()} CUDA device(s) visible")
    if num_machines > 1 and launcher == "local" and dist_url == "auto":
        raise UserError("--num-machines > 1 needs --dist-url tcp://HOST:PORT of machine 0 (the same on every machine)")
    world_size = num_machines * gpus
    out = Path(out).expanduser().resolve()
    root = data_root(data_root_dir).resolve()

    cfg = effective_config(task, [])
    changes = _Changes(cfg)
    ck_spec: CheckpointSpec | None = None
    weights: str | None = None
    if checkpoint is not None:
        from detco_bench.convert import load_backbone, sha256_file

        loaded = load_backbone(checkpoint, checkpoint_format)
        sha = sha256_file(checkpoint)
        meta = loaded.meta
        epochs = pretrain_epochs if pretrain_epochs is not None else meta.get("epoch")
        ck_spec = CheckpointSpec(
            path=str(Path(checkpoint).expanduser().resolve()),
            sha256=sha,
            format=loaded.format,
            arch=loaded.arch,
            method=method or str(meta.get("method") or "unknown"),
            pretrain_epochs=int(epochs) if isinstance(epochs, (int, float)) else None,
        )
        _adapt_checkpoint(changes, task, loaded.arch)
        weights = str(weights_cache_path(sha, engine, cache_dir))
        changes.set("MODEL.WEIGHTS", weights, "the converted, verified checkpoint (cached by sha256)")
    if subset_seed is None and subset:
        subset_seed = seed
    datasets = _dataset_specs(
        task,
        cfg,
        changes,
        root,
        subset=subset,
        subset_seed=subset_seed,
        train_json=train_json,
        val_json=val_json,
        images=images,
        val_images=val_images,
        out=out,
    )
    for spec in datasets.values():
        problems.extend(check_dataset(spec))
    _adapt_device(changes, device)
    changes.set("SEED", int(seed), "--seed")
    changes.set("OUTPUT_DIR", str(out), "--out")
    scaling_info = apply_scaling(cfg, world_size, scaling)
    final = apply_opts(cfg, opts)
    for key in ("DATASETS.TRAIN", "DATASETS.TEST"):
        for name in get_key(final, key):
            if name not in datasets:
                try:
                    datasets[name] = builtin_dataset(name, root)
                except UserError as exc:
                    raise UserError(f"--opts {key}: {exc}") from None
                problems.extend(check_dataset(datasets[name]))

    label = record_label(task_label(task, subset), root, custom=bool(train_json or val_json), opts=opts)
    identity = _identity(label, engine, ck_spec.sha256 if ck_spec else None, final)
    state = _folder_state(out, identity)
    state["identity"] = identity
    if state["status"] == "conflict" and not force:
        problems.append(state["reason"])
    run_id = new_run_id()
    if state["status"] == "resume" and not force and state.get("previous", {}).get("run_id"):
        run_id = state["previous"]["run_id"]
    results = Path(results_dir).expanduser() if results_dir else default_results_dir()
    return TransferPlan(
        task=task.name,
        task_label=label,
        family=task.family,
        evaluator=task.evaluator,
        metrics=list(task.metrics),
        engine=engine,
        checkpoint=ck_spec,
        weights=weights,
        out_dir=str(out),
        results_dir=str(results.resolve()),
        config=final,
        opts=opts,
        device=device,
        gpus=gpus,
        num_machines=num_machines,
        machine_rank=machine_rank,
        dist_url=dist_url,
        launcher=launcher,
        slurm=slurm or SlurmSpec(),
        seed=int(seed),
        data_root=str(root),
        subset=subset,
        subset_seed=subset_seed if subset else None,
        datasets=datasets,
        scaling=scaling_info,
        adaptations=changes.items,
        state=state,
        problems=problems,
        run_id=run_id,
        force=force,
    )


# --------------------------------------------------------------------------------------------
# Describing a plan


#: --opts keys that do not change what a run measures (throughput and bookkeeping only).
NEUTRAL_OPTS = ("DATALOADER.", "SOLVER.CHECKPOINT_PERIOD", "TEST.EVAL_PERIOD", "CUDNN_BENCHMARK", "VIS_PERIOD")


def record_label(label: str, root: Path, *, custom: bool, opts: list[str] | None) -> str:
    """The task name a record carries. Only a run on the task's real dataset with the protocol's
    settings keeps the plain name the paper's references use; on synthetic data the name gets
    ``.synthetic``, on custom jsons ``.custom``, and with --opts that change the measurement
    ``+opts``, so such runs are never compared with the published numbers as if they were the same."""
    if synthetic_manifest(root) is not None:
        label += ".synthetic"
    elif custom:
        label += ".custom"
    keys = [key for key, _ in parse_opts(opts or [])]
    if any(not key.startswith(NEUTRAL_OPTS) for key in keys):
        label += "+opts"
    return label


def describe_plan(plan: TransferPlan) -> list[str]:
    """Human-readable lines for ``--dry-run`` (the config is printed separately)."""
    from detco_bench.engines import get_engine

    lines = [f"task        {plan.task_label} ({plan.family}; {plan.task_obj.description})"]
    why = get_engine(plan.engine).available()
    lines.append(f"engine      {plan.engine}" + (f"  [NOT USABLE: {why}]" if why else ""))
    if plan.checkpoint:
        ck = plan.checkpoint
        lines.append(
            f"checkpoint  {ck.path} (sha256 {ck.sha256[:12]}..., {ck.format}, {ck.arch}, method "
            f"{ck.method}, epochs {ck.pretrain_epochs})"
        )
        cached = weights_cached(plan.weights or "", ck.sha256)
        how = "cached, verified" if cached else "will be converted and verified"
        lines.append(f"weights     {plan.weights} ({how})")
    else:
        lines.append("checkpoint  (none given)")
    st = plan.state
    detail = {
        "new": "new job",
        "finished": f"finished (record {st.get('record')}); rerun needs --force",
        "resume": f"interrupted job, resumes from {st.get('checkpoint') or 'its start'}",
        "conflict": st.get("reason", ""),
    }.get(st["status"], st["status"])
    if plan.force and st["status"] in ("finished", "conflict", "resume"):
        detail += "  [--force: starts over]"
    lines.append(f"output      {plan.out_dir}  ({detail})")
    lines.append(f"record      {plan.record_path}")
    where = (
        f"{plan.device}, {plan.gpus} process(es) per machine x {plan.num_machines} machine(s) = world size "
        f"{plan.world_size}"
    )
    if plan.launcher == "slurm":
        s = plan.slurm
        where += f"; Slurm via submitit (partition {s.partition or 'default'}, {s.time_min} min)"
    elif plan.world_size > 1:
        where += f"; one process per GPU, dist-url {plan.dist_url}"
    lines.append(f"launch      {where}")
    lines.append(f"batch/lr    {plan.scaling['summary']}")
    lines.append(f"data root   {plan.data_root}")
    for name, spec in plan.datasets.items():
        path = spec.json_file or spec.voc_dir or spec.gt_dir
        extra = f" (subset of {spec.subset['source']})" if spec.subset else ""
        lines.append(f"  dataset   {name}: {spec.kind} {spec.image_root} | {path}{extra}")
    if plan.problems:
        for p in plan.problems:
            lines.append(f"  PROBLEM   {p}")
    else:
        lines.append("  check     ok: every dataset folder and file the task needs is present")
    for a in plan.adaptations:
        lines.append(f"adapted     {a['key']}: {a['from']!r} -> {a['to']!r} ({a['why']})")
    if plan.opts:
        lines.append(f"opts        {' '.join(plan.opts)}")
    lines.append(f"command     {plan.command()}")
    return lines


# --------------------------------------------------------------------------------------------
# Running


@dataclass
class TransferOutcome:
    status: str  # "finished" (already done), "success", "submitted"
    record: Path | None = None
    job_id: str | None = None
    plan: TransferPlan | None = None


def prepare_weights(plan: TransferPlan) -> Path:
    """Convert + verify the checkpoint for the plan's engine unless the cache already has it."""
    from detco_bench.convert import convert_checkpoint, failure_summary
    from detco_bench.engines import WEIGHTS_TARGET

    assert plan.checkpoint is not None and plan.weights is not None
    out = Path(plan.weights)
    if weights_cached(out, plan.checkpoint.sha256):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    result = convert_checkpoint(
        plan.checkpoint.path, WEIGHTS_TARGET[plan.engine], out, fmt=plan.checkpoint.format, force=True
    )
    if not result.passed:
        lines = failure_summary(result.report["verification"])
        raise UserError(
            f"{plan.checkpoint.path}: the converted weights failed verification "
            f"({'; '.join(lines[:3])}); report: {result.report_path}"
        )
    return out


def prepare_datasets(plan: TransferPlan) -> None:
    """Write the semi-supervised subset json files the plan refers to (deterministic, cached)."""
    from detco_bench.tasks import write_subset_json

    for spec in plan.datasets.values():
        if spec.subset and spec.json_file and not Path(spec.json_file).is_file():
            write_subset_json(spec.subset["source"], spec.json_file, spec.subset["fraction"], spec.subset["seed"])


def _device_description(plan: TransferPlan) -> str:
    if plan.device == "cpu":
        return "cpu"
    try:
        import torch

        name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cuda"
    except Exception:  # noqa: BLE001 - only a label
        name = "cuda"
    return f"cuda:{name} x{plan.world_size}"


def _checkpoint_info(plan: TransferPlan) -> dict[str, Any]:
    ck = plan.checkpoint
    assert ck is not None
    return {"path": ck.path, "sha256": ck.sha256, "method": ck.method, "pretrain_epochs": ck.pretrain_epochs}


def _write_record(
    plan: TransferPlan,
    *,
    status: str,
    metrics: dict[str, float],
    error: str | None,
    wall_clock_s: float,
    started_at: str,
    finished: bool,
) -> Path:
    from detco_bench.records import ResultRecord, collect_provenance, write_record

    out = plan.output_dir
    record = ResultRecord.create(
        task=plan.task_label,
        engine=plan.engine,
        metrics=metrics,
        checkpoint=_checkpoint_info(plan),
        seed=plan.seed,
        config=plan.record_config(),
        provenance=collect_provenance(
            _device_description(plan), wall_clock_s, started_at, _now_iso() if finished else None
        ),
        status=status,
        error=error,
        run_id=plan.run_id,
        artifacts={
            "output_dir": str(out),
            "plan": str(out / PLAN_FILE),
            "config": str(out / CONFIG_FILE),
            # Detectron2's JSONWriter writes metrics.json; the torchvision engine metrics.jsonl.
            "metrics_log": str(out / ("metrics.json" if plan.engine == "detectron2" else "metrics.jsonl")),
        },
    )
    return write_record(plan.results_dir, record)


def _previous_wall(plan: TransferPlan) -> float:
    state = read_state(plan.out_dir) or {}
    return float(state.get("wall_clock_s_before", 0.0)) if state.get("run_id") == plan.run_id else 0.0


def finish_run(plan: TransferPlan, metrics: dict[str, float], wall_clock_s: float) -> Path:
    """Called by an engine (global rank 0) after evaluation: write the success record and mark the
    output folder finished. `wall_clock_s`: this process's training + evaluation time; time spent
    by earlier, interrupted attempts of the same run is added. Returns the record path."""
    state = read_state(plan.out_dir) or {}
    total = _previous_wall(plan) + float(wall_clock_s)
    started = state.get("started_at") or _now_iso()
    path = _write_record(
        plan,
        status="success",
        metrics=metrics,
        error=None,
        wall_clock_s=total,
        started_at=started,
        finished=True,
    )
    state.update(
        status="success",
        record=str(path),
        finished_at=_now_iso(),
        wall_clock_s=total,
        metrics=metrics,
        run_id=plan.run_id,
    )
    write_state(plan.out_dir, state)
    return path


def fail_run(plan: TransferPlan, error: BaseException | str, wall_clock_s: float = 0.0) -> Path | None:
    """Record a failed run (status "failed" with the error); the output folder stays resumable."""
    message = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    message = " ".join(str(message).split())[:2000]
    state = read_state(plan.out_dir) or {}
    total = _previous_wall(plan) + float(wall_clock_s)
    try:
        path = _write_record(
            plan,
            status="failed",
            metrics={},
            error=message,
            wall_clock_s=total,
            started_at=state.get("started_at") or _now_iso(),
            finished=True,
        )
    except Exception:  # noqa: BLE001 - never hide the original error behind a record problem
        path = None
    state.update(
        status="failed",
        error=message,
        record=str(path) if path else None,
        wall_clock_s_before=total,
        run_id=plan.run_id,
    )
    write_state(plan.out_dir, state)
    return path


def _start(plan: TransferPlan) -> None:
    """Write plan.json / config.yaml and the 'running' state and record (machine rank 0 only)."""
    from pretrain.atomic import atomic_write_json, atomic_write_text

    out = plan.output_dir
    out.mkdir(parents=True, exist_ok=True)
    last = out / "last_checkpoint"
    if plan.force and last.exists():
        # --force starts over: move the resume pointer aside so no engine resumes the old run.
        os.replace(last, out / f"last_checkpoint.replaced-by-{plan.run_id}")
    atomic_write_json(out / PLAN_FILE, plan.to_dict())
    atomic_write_text(out / CONFIG_FILE, to_yaml(plan.config))
    previous = read_state(out) or {}
    same_run = previous.get("run_id") == plan.run_id
    state = {
        "status": "running",
        "run_id": plan.run_id,
        "identity": plan.state["identity"],
        "task": plan.task_label,
        "engine": plan.engine,
        "record": str(plan.record_path),
        "started_at": previous.get("started_at") if same_run and previous.get("started_at") else _now_iso(),
        "wall_clock_s_before": float(previous.get("wall_clock_s_before", 0.0)) if same_run else 0.0,
        "attempts": int(previous.get("attempts", 0)) + 1 if same_run else 1,
    }
    write_state(out, state)
    _write_record(
        plan,
        status="running",
        metrics={},
        error=None,
        wall_clock_s=state["wall_clock_s_before"],
        started_at=state["started_at"],
        finished=False,
    )


def run_transfer(plan: TransferPlan, log: Any = print) -> TransferOutcome:
    """Execute a plan: refuse problems, honour the output folder's state, convert the checkpoint,
    then run the engine here (local launcher) or submit it to Slurm. Returns what happened."""
    from detco_bench.engines import get_engine

    if plan.problems:
        raise UserError("; ".join(plan.problems))
    if plan.checkpoint is None:
        raise UserError("--checkpoint is required to run a transfer job")
    status = plan.state["status"]
    if status == "finished" and not plan.force:
        return TransferOutcome(
            "finished", record=Path(plan.state["record"]) if plan.state.get("record") else None, plan=plan
        )
    engine = get_engine(plan.engine)
    reason = engine.available()
    if reason is not None:
        raise UserError(f"engine {plan.engine}: {reason}")
    if plan.machine_rank == 0:
        prepare_datasets(plan)
    prepare_weights(plan)
    if plan.machine_rank == 0:
        _start(plan)
    # --opts are applied after the rule: say so, or the printed batch / lr / schedule may not be the run's.
    log(f"batch/lr: {plan.scaling['summary']}" + (f"; then --opts {' '.join(plan.opts)}" if plan.opts else ""))
    if plan.launcher == "slurm":
        job_id = submit_slurm(plan)
        state = read_state(plan.out_dir) or {}
        state.update(status="submitted", job_id=job_id)
        write_state(plan.out_dir, state)
        return TransferOutcome("submitted", record=plan.record_path, job_id=job_id, plan=plan)
    t0 = time.monotonic()
    try:
        record = engine.run(plan)
    except KeyboardInterrupt:
        raise  # the folder stays "running": the next call resumes
    except Exception as exc:
        if plan.machine_rank == 0:
            fail_run(plan, exc, time.monotonic() - t0)
        raise
    return TransferOutcome("success", record=record, plan=plan)


# --------------------------------------------------------------------------------------------
# Slurm (submitit)


class SlurmJob:
    """What a Slurm task runs: the engine on the plan, with torch.distributed's environment set by
    submitit (MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE). Requeued on
    preemption / timeout; the engine then resumes from the output folder."""

    def __init__(self, plan: dict[str, Any]) -> None:
        self.plan = plan

    def __call__(self) -> str | None:
        import submitit

        from detco_bench.engines import get_engine

        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        plan = TransferPlan.from_dict(self.plan)
        rank = int(os.environ.get("RANK", "0"))
        t0 = time.monotonic()
        if rank == 0:
            state = read_state(plan.out_dir) or {}
            state.update(status="running", job_id=os.environ.get("SLURM_JOB_ID", state.get("job_id")))
            write_state(plan.out_dir, state)
        try:
            path = get_engine(plan.engine).run(plan)
        except Exception as exc:
            if rank == 0:
                fail_run(plan, exc, time.monotonic() - t0)
            raise
        return str(path) if path is not None else None

    def checkpoint(self) -> Any:
        import submitit

        plan = dict(self.plan)
        plan["state"] = dict(plan.get("state") or {}, status="resume")
        return submitit.helpers.DelayedSubmission(SlurmJob(plan))


def submit_slurm(plan: TransferPlan) -> str:
    """Submit the plan through submitit (Slurm, or the cluster named by
    $DETCO_BENCH_SUBMITIT_CLUSTER: "local" / "debug" for tests); returns the job id."""
    try:
        import submitit
    except ImportError:
        raise UserError("--launcher slurm needs submitit (pip install submitit)") from None
    cluster = os.environ.get(SUBMITIT_CLUSTER_ENV) or "slurm"
    folder = plan.output_dir / "slurm"
    try:
        executor = submitit.AutoExecutor(folder=folder / "%j", cluster=cluster)
    except RuntimeError as exc:  # submitit checks for srun
        raise UserError(f"--launcher slurm: {exc}") from None
    params: dict[str, Any] = {
        "name": plan.slurm.job_name or f"detco-{plan.task_label}",
        "nodes": plan.num_machines,
        "tasks_per_node": plan.gpus,
        "cpus_per_task": plan.slurm.cpus_per_task,
        "timeout_min": plan.slurm.time_min,
    }
    if plan.device == "cuda":
        params["gpus_per_node"] = plan.gpus
    if plan.slurm.mem_gb:
        params["mem_gb"] = plan.slurm.mem_gb
    if cluster == "slurm":
        if plan.slurm.partition:
            params["slurm_partition"] = plan.slurm.partition
        params["slurm_signal_delay_s"] = 120
    executor.update_parameters(**params)
    plan_dict = plan.to_dict()
    # Whatever --force meant was done at submission (_start); a requeued task resumes.
    plan_dict["state"] = dict(plan_dict["state"], status="resume")
    plan_dict["force"] = False
    try:
        job = executor.submit(SlurmJob(plan_dict))
    except Exception as exc:  # sbatch missing or refusing the job
        raise UserError(f"Slurm submission failed: {' '.join(str(exc).split())[:300]}") from None
    return str(job.job_id)
