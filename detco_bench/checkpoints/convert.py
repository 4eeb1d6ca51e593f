"""The whole conversion: load, rename, serialize, verify what was serialized, and only then write the
output atomically, with the ``<out>.verify.json`` report beside it in every case that got that far."""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import os
import pickle
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

import detco_bench
from detco_bench.checkpoints.archs import ARCHS
from detco_bench.checkpoints.backbone import LoadedBackbone, load_backbone
from detco_bench.checkpoints.detectron2_resnet import detectron2_import_error
from detco_bench.checkpoints.reference_forward import DEFAULT_INPUT_SIZE
from detco_bench.checkpoints.rename import Renamed, detectron2_payload, to_detectron2, to_torchvision
from detco_bench.checkpoints.verify import verify_detectron2, verify_torchvision
from detco_bench.errors import UserError
from detco_bench.paths import check_output_file
from detco_bench.records import sha256_file
from pretrain.atomic import atomic_write_bytes, atomic_write_json

TARGETS: tuple[str, ...] = ("detectron2", "torchvision")
Target = Literal["detectron2", "torchvision"]

REPORT_SCHEMA = "detco-bench.convert-report"
REPORT_SCHEMA_VERSION = 1

#: Settings the converted Detectron2 weights need (torchvision-style ResNet, RGB input in 0..255).
DETECTRON2_SETTINGS: dict[str, Any] = {
    "MODEL.RESNETS.STRIDE_IN_1X1": False,
    "INPUT.FORMAT": "RGB",
    "MODEL.PIXEL_MEAN": [123.675, 116.28, 103.53],
    "MODEL.PIXEL_STD": [58.395, 57.12, 57.375],
}


def report_path_for(out: str | os.PathLike) -> Path:
    """Where the JSON verification report of a converted file lives: beside it, ``<out>.verify.json``."""
    out = Path(out)
    return out.with_name(out.name + ".verify.json")


def summarize_dropped(dropped: Mapping[str, str]) -> list[dict[str, Any]]:
    """Dropped keys grouped by reason: [{"reason", "count", "keys"}], largest group first."""
    groups: dict[str, list[str]] = {}
    for key, reason in dropped.items():
        groups.setdefault(reason, []).append(key)
    return [{"reason": reason, "count": len(keys), "keys": sorted(keys)}
            for reason, keys in sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))]


@dataclass
class ConvertResult:
    """What `convert_checkpoint` did: the report (also written to `report_path`) and whether the
    converted weights passed verification (only then were they written to `out`)."""

    loaded: LoadedBackbone
    target: str
    out: Path
    report_path: Path
    report: dict[str, Any]
    passed: bool
    written: bool


def _serialize(target: str, renamed: Renamed) -> tuple[bytes, Renamed]:
    """The output file's bytes, and the weights read back from those bytes (what gets verified)."""
    if target == "detectron2":
        data = pickle.dumps(detectron2_payload(renamed.weights), protocol=pickle.HIGHEST_PROTOCOL)
        # Reading back our own just-made bytes; never an input file.
        back = pickle.loads(data)["model"]  # noqa: S301
        weights = {k: torch.from_numpy(v) for k, v in back.items()}
        return data, Renamed(weights, renamed.filled, renamed.dropped)
    buffer = io.BytesIO()
    torch.save(renamed.weights, buffer)
    data = buffer.getvalue()
    back = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    return data, Renamed(dict(back), renamed.filled, renamed.dropped)


def _versions() -> dict[str, str | None]:
    """The library versions the report records (detectron2: None when not importable)."""
    import torchvision  # deferred like in `archs`; the verification has imported it by now

    versions: dict[str, str | None] = {"python": platform.python_version(), "torch": torch.__version__,
                                       "torchvision": torchvision.__version__, "numpy": np.__version__,
                                       "detco_bench": detco_bench.__version__, "detectron2": None}
    if detectron2_import_error() is None:
        import detectron2

        versions["detectron2"] = detectron2.__version__
    return versions


def check_output_path(checkpoint: str | os.PathLike, target: str, out: str | os.PathLike,
                      force: bool) -> Path:
    """Refuse outputs that would clobber something or that the target cannot read."""
    out, checkpoint = Path(out), Path(checkpoint)
    if target not in TARGETS:
        raise UserError(f"unknown target {target!r}; choose from {', '.join(TARGETS)}")
    if target == "detectron2" and out.suffix != ".pkl":
        raise UserError(f"--out {out}: Detectron2 weights must end in .pkl (detectron2's checkpointer "
                        "chooses the reader by file extension)")
    if out.exists() and out.is_dir():
        raise UserError(f"--out {out} is a directory; give a file path")
    check_output_file(out)
    if checkpoint.exists() and out.exists() and os.path.samefile(out, checkpoint):
        raise UserError(f"--out {out} is the input checkpoint; choose another path")
    if out.exists() and not force:
        raise UserError(f"output exists: {out} (use --force to replace it)")
    return out


def _report(checkpoint: str | os.PathLike, target: str, out: Path, loaded: LoadedBackbone, renamed: Renamed,
            data: bytes, verification: dict[str, Any]) -> dict[str, Any]:
    """The ``.verify.json`` content (docs/convert.md describes every field)."""
    passed = bool(verification["passed"])
    notes = list(loaded.notes)
    if target == "torchvision":
        notes.append("the output has no fc layer: load it with strict=False (only fc.weight / fc.bias "
                     "missing) or replace fc with your task head")
    report: dict[str, Any] = {
        "schema": REPORT_SCHEMA,
        "schema_version": REPORT_SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "passed": passed,
        "source": {
            "path": str(Path(checkpoint).resolve()),
            "sha256": sha256_file(checkpoint),
            "format": loaded.format,
            "format_detected": loaded.format_detected,
            "format_evidence": loaded.format_evidence,
            "arch": loaded.arch,
            "num_keys": loaded.source_num_keys,
            "backbone_keys": len(loaded.state_dict),
            "meta": loaded.meta,
        },
        "target": {
            "kind": target,
            "path": str(out.resolve()),
            "written": passed,
            "sha256": hashlib.sha256(data).hexdigest() if passed else None,
            "num_keys": len(renamed.weights),
            "naming": "detectron2" if target == "detectron2" else "torchvision (no fc)",
        },
        "dropped": summarize_dropped(loaded.dropped),
        "dropped_in_conversion": summarize_dropped(renamed.dropped),
        "verification": verification,
        "notes": notes,
        "versions": _versions(),
    }
    if target == "detectron2":
        spec = ARCHS[loaded.arch]
        report["detectron2_config"] = {"MODEL.WEIGHTS": str(out.resolve()),
                                       "MODEL.RESNETS.DEPTH": spec.depth,
                                       **({"MODEL.RESNETS.RES2_OUT_CHANNELS": 64} if spec.block == "basic" else {}),
                                       **DETECTRON2_SETTINGS}
    return report


def convert_checkpoint(checkpoint: str | os.PathLike, target: str, out: str | os.PathLike, fmt: str = "auto",
                       force: bool = False, input_size: int = DEFAULT_INPUT_SIZE,
                       use_detectron2: bool | None = None) -> ConvertResult:
    """Convert, verify, and (only if verification passed) atomically write `out`.

    The JSON report is written beside `out` (`report_path_for`) in every case that got as far as
    verification. Raises `UserError` for bad input before anything is written.
    """
    out = check_output_path(checkpoint, target, out, force)
    if input_size < 32:
        raise UserError(f"--input-size {input_size}: must be at least 32 (res5 has stride 32)")
    loaded = load_backbone(checkpoint, fmt)
    rename = to_detectron2 if target == "detectron2" else to_torchvision
    renamed = rename(loaded.state_dict)
    data, readback = _serialize(target, renamed)
    if target == "detectron2":
        verification = verify_detectron2(loaded.state_dict, loaded.arch, readback, input_size, use_detectron2)
    else:
        verification = verify_torchvision(loaded.state_dict, loaded.arch, readback, input_size)
    report = _report(checkpoint, target, out, loaded, renamed, data, verification)
    passed = bool(report["passed"])
    if passed:
        atomic_write_bytes(out, data)
    report_path = report_path_for(out)
    atomic_write_json(report_path, report)
    return ConvertResult(loaded=loaded, target=target, out=out, report_path=report_path, report=report,
                         passed=passed, written=passed)
