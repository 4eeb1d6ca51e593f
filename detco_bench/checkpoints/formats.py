"""Checkpoint formats: telling ours, MoCo, OpenSelfSup / MMSelfSup / DetCo and torchvision apart,
and taking the query backbone (torchvision naming) out of each, with a reason for every key left out."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detco_bench.checkpoints.messages import examples
from detco_bench.checkpoints.tensors import as_tensor
from detco_bench.errors import UserError

FORMATS: tuple[str, ...] = ("detco-bench", "moco", "openselfsup", "torchvision")
#: The ``format`` entry of our own pretrain checkpoints (pretrain/ writes it).
DETCO_BENCH_FORMAT = "detco-bench.pretrain"

# Why keys are dropped. The report groups dropped keys by these sentences.
REASON_KEY_ENCODER = (
    "momentum key encoder: a slowly-updated copy of the query encoder that only produces keys "
    "during pretraining; the query encoder is the one that is transferred"
)
REASON_QUEUE = "queue of negative keys: pretraining state, not weights"
REASON_PROJ_HEAD = (
    "projection head (MLP) used only by the contrastive loss, not part of the backbone"
)
REASON_NECK = "projection neck used only by the contrastive loss, not part of the backbone"
REASON_CLASSIFIER = "classifier head (fc): ImageNet-specific, not part of the backbone"
REASON_DUPLICATE = (
    "duplicate of the query backbone stored under a second name; the copy named 'backbone' is used"
)
REASON_OTHER = "not part of the ResNet backbone"

_KEY_ENCODER_NAMES = {"encoder_k", "backbone_k", "neck_k", "momentum_encoder", "target_net", "key_encoder",
                      "teacher", "model_k", "ema"}
_HEAD_NAMES = {"head", "heads", "global_heads", "local_heads", "projector", "predictor", "projection",
               "proj_head", "mlp"}
_NECK_NAMES = {"neck", "necks"}


def _strip_module(sd: Mapping[str, Any]) -> dict[str, Any]:
    """Remove DistributedDataParallel's ``module.`` prefix."""
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in sd.items()}


def _tensor_items(obj: Any) -> dict[str, Any]:
    """The tensor / array entries of `obj` when it is a mapping (optimizer state, config ... aside)."""
    if not isinstance(obj, Mapping):
        return {}
    return {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor | np.ndarray)}


def _raw_state_dict_of(obj: Any) -> tuple[dict[str, Any], str]:
    """The weights mapping in a checkpoint and where it was found ('state_dict', 'model', top level)."""
    if isinstance(obj, Mapping):
        for name in ("state_dict", "model"):
            inner = obj.get(name)
            if isinstance(inner, Mapping) and _tensor_items(inner):
                return _tensor_items(inner), f"'{name}'"
    return _tensor_items(obj), "top level"


def state_dict_of(obj: Any) -> tuple[dict[str, Any], str]:
    """`_raw_state_dict_of` with DistributedDataParallel's ``module.`` prefix removed."""
    sd, where = _raw_state_dict_of(obj)
    return _strip_module(sd), where


def _describe(obj: Any) -> str:
    """What a checkpoint without recognisable weights holds, for the error message."""
    if isinstance(obj, Mapping):
        return f"a dict with keys {examples([str(k) for k in obj.keys()])}"
    return f"a {type(obj).__name__}, not a dict of weights"


def not_resnet(path: Path, keys: list[str], obj: Any) -> UserError:
    """The error for a checkpoint `obj` at `path` whose weight `keys` hold no ResNet."""
    if not keys:
        return UserError(f"{path}: found no weights ({_describe(obj)}): not a ResNet checkpoint")
    return UserError(
        f"{path}: found {len(keys)} keys like {examples(keys)} and no 'conv1.weight' / "
        f"'layer1.0.conv1.weight': not a ResNet checkpoint")


def _looks_torchvision(keys: Iterable[str]) -> bool:
    """Whether `keys` have torchvision ResNet names: a stem conv and a first residual block."""
    keys = set(keys)
    return "conv1.weight" in keys and any(k.startswith("layer1.0.") for k in keys)


def detect_format(obj: Any, path: str | os.PathLike = "checkpoint") -> tuple[str, str]:
    """Detect the checkpoint format of an already-loaded checkpoint object.

    Returns (format, evidence) where format is one of `FORMATS` and evidence a short phrase for
    the user ("'state_dict' with 'module.encoder_q.' keys"). Raises `UserError` when no ResNet
    weights are recognisable.
    """
    path = Path(path)
    if isinstance(obj, Mapping) and obj.get("format") == DETCO_BENCH_FORMAT:
        return "detco-bench", f"'format': '{DETCO_BENCH_FORMAT}'"
    raw, where = _raw_state_dict_of(obj)
    prefix = "module." if any(k.startswith("module.") for k in raw) else ""
    keys = list(_strip_module(raw))
    # OpenSelfSup's MoCo registers the query backbone both as encoder_q.0 and as backbone, so the
    # 'backbone.' test comes before the 'encoder_q.' one.
    if any(k.startswith("backbone.") for k in keys) and _looks_torchvision(
            k[len("backbone."):] for k in keys if k.startswith("backbone.")):
        return "openselfsup", f"{where} with '{prefix}backbone.' keys"
    if any(k.startswith("encoder_q.") for k in keys):
        return "moco", f"{where} with '{prefix}encoder_q.' keys"
    if _looks_torchvision(keys):
        return "torchvision", f"{where} with torchvision ResNet keys ('{prefix}conv1.weight', ...)"
    raise not_resnet(path, keys, obj)


def _drop_reason(key: str, fmt: str) -> str:
    """Why a key that is not part of the query backbone is dropped."""
    parts = key.split(".")
    first = parts[0]
    if first in _KEY_ENCODER_NAMES:
        return REASON_KEY_ENCODER
    if first.startswith("queue"):
        return REASON_QUEUE
    if first in _NECK_NAMES:
        return REASON_NECK
    if first in _HEAD_NAMES:
        return REASON_PROJ_HEAD
    if first == "fc":
        return REASON_CLASSIFIER if fmt in ("torchvision", "openselfsup", "detco-bench") else REASON_PROJ_HEAD
    if first == "encoder_q" and len(parts) > 1:
        second = parts[1]
        if second == "fc" or second in _HEAD_NAMES:
            return REASON_PROJ_HEAD
        if second == "1":  # OpenSelfSup: encoder_q = Sequential(backbone, neck)
            return REASON_NECK
        if second in ("0", "backbone"):
            return REASON_DUPLICATE
    return REASON_OTHER


def _take(sd: Mapping[str, Any], prefix: str, fmt: str) -> tuple[dict[str, Any], dict[str, str]]:
    """Split `sd` into the backbone (keys under `prefix`, prefix removed) and dropped keys."""
    kept: dict[str, Any] = {}
    dropped: dict[str, str] = {}
    for key, value in sd.items():
        if key.startswith(prefix):
            sub = key[len(prefix):]
            if sub.split(".")[0] == "fc":
                # A classifier (torchvision) or the MoCo MLP head (fc.0 / fc.2) inside the encoder.
                dropped[key] = REASON_PROJ_HEAD if fmt == "moco" else REASON_CLASSIFIER
            else:
                kept[sub] = value
        else:
            dropped[key] = _drop_reason(key, fmt)
    return kept, dropped


def _extract_detco_bench(obj: Any, path: Path) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """`extract_backbone` for our pretrain checkpoints: the 'backbone' entry, else 'model''s query backbone."""
    if not isinstance(obj, Mapping) or obj.get("format") != DETCO_BENCH_FORMAT:
        raise UserError(f"{path}: --format detco-bench needs 'format': '{DETCO_BENCH_FORMAT}' "
                        f"in the checkpoint; found {_describe(obj)}")
    notes: list[str] = []
    model = _strip_module(_tensor_items(obj.get("model")))
    backbone_entry = _tensor_items(obj.get("backbone"))
    if backbone_entry:
        kept, dropped = _take(_strip_module(backbone_entry), "", "detco-bench")
        for key in model:
            dropped[key] = _drop_reason(key, "detco-bench")
            if key.startswith("encoder_q.backbone."):
                twin = kept.get(key[len("encoder_q.backbone."):])
                if twin is not None and not torch.equal(as_tensor(twin), as_tensor(model[key])):
                    notes.append(f"'model' entry {key} differs from the 'backbone' entry; "
                                 "the 'backbone' entry is used")
    else:
        kept, dropped = _take(model, "encoder_q.backbone.", "detco-bench")
        notes.append("no 'backbone' entry: the query backbone was taken from 'model' "
                     "(encoder_q.backbone.*)")
    if not kept:
        raise not_resnet(path, list(model), obj)
    return kept, dropped, notes


def _wrong_layout(path: Path, fmt: str, needs: str, sd: Mapping[str, Any], where: str) -> UserError:
    """The error for a `--format fmt` checkpoint whose weights (found at `where`) lack the `needs` keys."""
    return UserError(f"{path}: --format {fmt} needs {needs} keys in {where}; "
                     f"found {len(sd)} keys like {examples(list(sd))}")


def extract_backbone(obj: Any, fmt: str, path: str | os.PathLike = "checkpoint"
                     ) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """Take the query backbone (torchvision naming) out of a loaded checkpoint of format `fmt`.

    Returns (backbone, dropped, notes): backbone maps torchvision names to tensors as stored,
    dropped maps every unused weight key to the reason it is not used, notes are remarks for the
    report. Raises `UserError` when the checkpoint does not have the layout of `fmt`.
    """
    path = Path(path)
    if fmt not in FORMATS:
        raise UserError(f"unknown checkpoint format {fmt!r}; choose from {', '.join(FORMATS)}")
    if fmt == "detco-bench":
        return _extract_detco_bench(obj, path)

    sd, where = state_dict_of(obj)
    if fmt == "moco":
        if not any(k.startswith("encoder_q.") for k in sd):
            raise _wrong_layout(path, "moco", "'encoder_q.'", sd, where)
        prefix = "encoder_q."
        if "encoder_q.backbone.conv1.weight" in sd:  # a DetCo/MoCo model that wraps its backbone
            prefix = "encoder_q.backbone."
        kept, dropped = _take(sd, prefix, "moco")
    elif fmt == "openselfsup":
        if not any(k.startswith("backbone.") for k in sd):
            raise _wrong_layout(path, "openselfsup", "'backbone.'", sd, where)
        kept, dropped = _take(sd, "backbone.", "openselfsup")
    else:  # torchvision
        if not _looks_torchvision(sd):
            raise _wrong_layout(path, "torchvision", "'conv1.weight' and 'layer1.0.*'", sd, where)
        # Everything but the classifier is backbone: a key torchvision's ResNet does not have is
        # reported by the validation instead of being dropped here.
        kept, dropped = _take(sd, "", "torchvision")
    return kept, dropped, []
