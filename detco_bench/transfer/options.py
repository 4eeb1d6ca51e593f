"""The options of a transfer run, defined once.

`TransferOptions` is what a user asks for. Every field carries its command-line flag and help
text, and everything else is derived from it: the ``detco-bench transfer`` CLI options
(`cli_parameters`), the planner's keyword arguments (`plan_transfer(task, checkpoint, out,
**options)`), the command line a plan prints (`to_argv`) and the job command of ``detco-bench
run``. Adding an option is adding one field here.
"""

from __future__ import annotations

import dataclasses
import inspect
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from detco_bench.errors import UserError

#: ``--opts`` come last on the command line: KEY VALUE pairs handed to the config literally.
OPTS_FLAG = "--opts"


def option(default: Any, flag: str, help: str, *, replay: bool = True, always: bool = False) -> Any:
    """A dataclass field with its CLI flag. `replay`: part of the command line that re-plans
    the run; `always`: written even when equal to its default (the identity of a run)."""
    return field(default=default, metadata={"flag": flag, "help": help, "replay": replay, "always": always})


@dataclass(frozen=True)
class SlurmSpec:
    """Resources of a Slurm job (``--launcher slurm``)."""

    partition: str | None = option(None, "--partition", "Slurm partition.")
    time_min: int = option(4320, "--time", "Slurm time limit in minutes.")
    cpus_per_task: int = option(10, "--cpus-per-task", "Slurm CPUs per task (per GPU).")
    mem_gb: int | None = option(None, "--mem-gb", "Slurm memory per node in GB.")
    job_name: str | None = field(default=None, metadata={"cli": False})


@dataclass(frozen=True)
class TransferOptions:
    """Everything a user can ask of one transfer run (see each field's help)."""

    task: str | None = option(None, "--task", "Task name (see --list).", always=True)
    checkpoint: Path | None = option(
        None, "--checkpoint",
        "Any checkpoint `detco-bench convert` accepts; converted and verified on the fly (cached by its sha256).",
        always=True)
    out: Path | None = option(None, "--out", "Output folder of the job (resumable).", always=True)
    eval_weights: Path | None = option(
        None, "--eval-weights",
        "Evaluate this fine-tuned model instead of training: a model_final.pth written by either engine "
        "(Detectron2's checkpointer or the torchvision engine); the record says so.", always=True)
    engine: str = option("auto", "--engine", "auto|detectron2|torchvision (auto: detectron2 when importable).",
                         always=True)
    device: str | None = option(None, "--device", "cpu|cuda (default cuda when available).", always=True)
    seed: int = option(0, "--seed", "Training seed (recorded).", always=True)
    data_root_dir: Path | None = option(None, "--data-root",
                                        "Datasets root (default $DETECTRON2_DATASETS or ./datasets).", always=True)
    gpus: int | None = option(None, "--gpus", "GPUs (processes) per machine.")
    num_machines: int = option(1, "--num-machines", "Machines of a multi-node job.")
    machine_rank: int = option(0, "--machine-rank", "This machine's rank.")
    dist_url: str = option("auto", "--dist-url", "tcp://HOST:PORT of machine 0 (multi-node).")
    launcher: str = option("local", "--launcher", "local|slurm (Slurm through submitit).")
    slurm: SlurmSpec = field(default_factory=SlurmSpec)
    subset: str | None = option(None, "--subset", "Semi-supervised COCO: 1%|2%|5%|10%.")
    subset_seed: int | None = option(None, "--subset-seed", "Seed of the subset (default --seed).")
    scaling: str = option("linear", "--scaling",
                          "Batch/lr rule when not on 8 GPUs: linear (keep images per GPU; scale lr and schedule) "
                          "or none (keep the protocol's batch).")
    train_json: str | None = option(None, "--train-json", "Custom COCO-format training json.")
    val_json: str | None = option(None, "--val-json", "Custom COCO-format validation json.")
    images: str | None = option(None, "--images", "Image folder of the custom jsons.")
    val_images: str | None = option(None, "--val-images", "Image folder of --val-json (default --images).")
    method: str | None = option(None, "--method",
                                "Method label of the checkpoint for the record (detco, mocov2, ...; default: from "
                                "the checkpoint).")
    pretrain_epochs: int | None = option(None, "--pretrain-epochs", "Pretraining epochs label.")
    baseline: bool = option(False, "--baseline",
                            "Record the checkpoint as an in-harness baseline (detco-bench run --baselines sets it): "
                            "the report takes every method's delta against it.")
    checkpoint_format: str = option("auto", "--format", "Checkpoint format (see convert).")
    results_dir: Path | None = option(None, "--results",
                                      "Results store for the record (default $DETCO_BENCH_RESULTS or results/runs).")
    cache_dir: Path | None = option(None, "--cache-dir",
                                    "Converted-weights cache (default $DETCO_BENCH_CACHE or ~/.cache/detco-bench).")
    keep_checkpoints: int = option(
        1, "--keep-checkpoints",
        "Periodic checkpoints (model_<iter>.pth) kept: the newest K, older ones deleted after each save; "
        "model_final.pth is always kept. 0 keeps them all.")
    force: bool = option(False, "--force", "Rerun a finished job / replace another job's folder.", replay=False)
    opts: list[str] = field(default_factory=list, metadata={"cli": False})

    def __post_init__(self) -> None:
        if self.keep_checkpoints < 0:
            raise UserError(f"--keep-checkpoints must be 0 (keep all) or more, got {self.keep_checkpoints}")

    def replace(self, **changes: Any) -> TransferOptions:
        return dataclasses.replace(self, **changes)

    def to_argv(self, replay_only: bool = True) -> list[str]:
        """The ``detco-bench transfer`` arguments that ask for these options (no program name).

        Flags are written when their value differs from the default (or the field is marked
        `always`); `replay_only` leaves out flags that act on the folder rather than on what is
        planned (--force). ``--opts`` comes last."""
        argv: list[str] = []
        for spec, value in _flat_values(self):
            meta = spec.metadata
            if value is None or (replay_only and not meta["replay"]):
                continue
            if value == spec.default and not meta["always"]:
                continue
            if isinstance(value, bool):
                argv += [meta["flag"]] if value else []
            else:
                argv += [meta["flag"], str(value)]
        if self.opts:
            argv += [OPTS_FLAG, *self.opts]
        return argv

    def command(self) -> str:
        """The shell command line that plans these options."""
        return " ".join(shlex.quote(p) for p in ["detco-bench", "transfer", *self.to_argv()])

    @classmethod
    def from_cli(cls, values: dict[str, Any], opts: list[str] | tuple[str, ...] = ()) -> TransferOptions:
        """Options from the keyword arguments of `cli_parameters` (flat, Slurm fields included)."""
        slurm_names = {f.name for f in dataclasses.fields(SlurmSpec)}
        slurm = SlurmSpec(**{k: v for k, v in values.items() if k in slurm_names})
        own = {k: v for k, v in values.items() if k not in slurm_names}
        return cls(**own, slurm=slurm, opts=list(opts))


def opts_from_argv(tokens: list[str]) -> list[str]:
    """The KEY VALUE tokens after ``--opts`` on a command line (what click leaves over). A token
    holding spaces is split like a shell would, so ``--opts 'SOLVER.MAX_ITER 100'`` and
    ``--opts SOLVER.MAX_ITER 100`` mean the same in every command."""
    if tokens and tokens[0] != OPTS_FLAG:
        raise UserError(f"unexpected argument {tokens[0]!r} (config overrides go after {OPTS_FLAG} KEY VALUE ...)")
    opts = list(tokens[1:])
    # One quoted string holding every pair; a single token with spaces among several is a value
    # such as "(640, 672)" and stays whole.
    if len(opts) == 1 and any(c.isspace() for c in opts[0]):
        opts = split_words(opts[0], OPTS_FLAG)
    return opts


def split_words(text: str, flag: str) -> list[str]:
    """`text` split like a shell would (quotes group words); an unbalanced quote is a `UserError`
    naming `flag`."""
    try:
        return shlex.split(text)
    except ValueError as exc:  # "No closing quotation", "No escaped character"
        raise UserError(f"{flag} {text!r}: {str(exc).lower()}") from None


def _flat_fields() -> list[tuple[type, dataclasses.Field[Any]]]:
    """(owner class, field) for every CLI field of TransferOptions, Slurm's fields in place of `slurm`."""
    out: list[tuple[type, dataclasses.Field[Any]]] = []
    for f in dataclasses.fields(TransferOptions):
        if f.name == "slurm":
            out += [(SlurmSpec, s) for s in dataclasses.fields(SlurmSpec) if s.metadata.get("cli", True)]
        elif f.metadata.get("cli", True):
            out.append((TransferOptions, f))
    return out


def _flat_values(options: TransferOptions) -> list[tuple[dataclasses.Field[Any], Any]]:
    return [(f, getattr(options.slurm if owner is SlurmSpec else options, f.name)) for owner, f in _flat_fields()]


def cli_parameters() -> list[inspect.Parameter]:
    """One typer option per flat field, for a command built with `inspect.Signature`."""
    import typer

    params = []
    hints = {SlurmSpec: get_type_hints(SlurmSpec), TransferOptions: get_type_hints(TransferOptions)}
    for owner, f in _flat_fields():
        default = f.default
        params.append(inspect.Parameter(
            f.name, inspect.Parameter.KEYWORD_ONLY, annotation=hints[owner][f.name],
            default=typer.Option(default, f.metadata["flag"], help=f.metadata["help"])))
    return params
