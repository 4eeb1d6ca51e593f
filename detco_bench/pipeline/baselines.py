"""In-harness baselines: checkpoints run through the same suite, seeds and settings as the one
evaluated, so that its deltas are measured here and not only read from a paper.

``--baselines random,supervised:PATH,mocov2:PATH,PATH``
  random        a random-init torchvision ResNet of the evaluated checkpoint's architecture
                (torchvision's initialisation, seed 0), written once into ROOT/baselines/
  LABEL:PATH    the checkpoint at PATH, recorded with method LABEL (supervised, mocov2, ...)
  PATH          the checkpoint at PATH, with the method its own metadata names
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision

from detco_bench.checkpoints import load_backbone
from detco_bench.errors import UserError
from pretrain.atomic import atomic_torch_save

RANDOM = "random"
RANDOM_INIT_SEED = 0
_LABEL = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class Subject:
    """A checkpoint the suite runs on. name: "" for the evaluated checkpoint, else the baseline's
    (the folder of its jobs); method: the record's method label (None: from the checkpoint)."""

    name: str
    checkpoint: str
    method: str | None


def parse_baselines(text: str | None) -> list[tuple[str, str | None]]:
    """``random,supervised:PATH,PATH`` -> [(label or "", path or None)], checked for form only."""
    specs: list[tuple[str, str | None]] = []
    for item in (s.strip() for s in (text or "").split(",")):
        if not item:
            continue
        if item == RANDOM:
            specs.append((RANDOM, None))
            continue
        label, sep, path = item.partition(":")
        if sep and _LABEL.match(label):
            specs.append((label, path))
        else:
            specs.append(("", item))
    labels = [label for label, _ in specs if label]
    if len(labels) != len(set(labels)):
        raise UserError(f"--baselines names a label twice: {text}")
    return specs


def check_baselines(specs: list[tuple[str, str | None]]) -> None:
    """Every baseline checkpoint given exists and reads (nothing is written)."""
    for _, path in specs:
        if path is None:
            continue
        if not Path(path).is_file():
            raise UserError(f"--baselines: checkpoint {path} does not exist")
        load_backbone(path)


def random_init_checkpoint(arch: str, folder: Path) -> Path:
    """The random-init baseline of `arch` (made once; the same file on every rerun)."""
    path = folder / f"random_{arch}.pth"
    if not path.is_file():
        generator_state = torch.get_rng_state()
        torch.manual_seed(RANDOM_INIT_SEED)
        model = getattr(torchvision.models, arch)(weights=None)
        torch.set_rng_state(generator_state)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(path, model.state_dict())
    return path


def baseline_subjects(specs: list[tuple[str, str | None]], checkpoint: str, root: Path) -> list[Subject]:
    """The baselines as subjects with their checkpoint files (the random one written if needed);
    `check_baselines` has checked the others."""
    subjects: list[Subject] = []
    for i, (label, path) in enumerate(specs):
        if path is None:
            arch = load_backbone(checkpoint).arch
            subjects.append(Subject(RANDOM, str(random_init_checkpoint(arch, root / "baselines")), RANDOM))
            continue
        subjects.append(Subject(label or f"baseline{i + 1}", str(Path(path).resolve()), label or None))
    return subjects
