"""Any supported checkpoint -> its query backbone in torchvision naming, checked against torchvision's
ResNet: the canonical intermediate that the converter, the linear probe and the transfer engines use."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from detco_bench.checkpoints.archs import ARCHS, LAYER_KEY, detect_arch, torchvision_backbone_shapes
from detco_bench.checkpoints.formats import FORMATS, detect_format, extract_backbone, not_resnet, state_dict_of
from detco_bench.checkpoints.messages import examples
from detco_bench.checkpoints.safe_load import read_checkpoint
from detco_bench.checkpoints.tensors import as_tensor
from detco_bench.errors import UserError


@dataclass
class LoadedBackbone:
    """A checkpoint's query backbone in torchvision naming, and how it was found.

    state_dict: ``torchvision.models.<arch>()`` state-dict keys except ``fc.*``; float32 CPU
    tensors (conv weights [out, in, k, k], BN weight/bias/running_mean/running_var [C]) and int64
    scalar ``num_batches_tracked`` buffers.
    """

    path: Path
    state_dict: dict[str, torch.Tensor]
    arch: str
    format: str
    format_evidence: str
    format_detected: bool
    dropped: dict[str, str]
    notes: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    source_num_keys: int = 0


def _validate_backbone(sd: dict[str, Any], arch: str, path: Path
                       ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Check a torchvision-named backbone against torchvision's model; return fp32 tensors and notes.

    Missing ``num_batches_tracked`` buffers (checkpoints saved before PyTorch 0.4.1, e.g. the
    original torchvision ImageNet weights) are filled with 0; anything else missing, extra or of
    the wrong shape is a `UserError`: converting it would silently change the network.
    """
    expected = torchvision_backbone_shapes(arch)
    notes: list[str] = []
    missing = [k for k in expected if k not in sd]
    filled_counters = [k for k in missing if k.endswith("num_batches_tracked")]
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in expected]
    if missing:
        raise UserError(f"{path}: the {arch} backbone is missing {len(missing)} of {len(expected)} keys "
                        f"({examples(missing)}): truncated or not a complete {arch}")
    if unexpected:
        raise UserError(f"{path}: the backbone has {len(unexpected)} keys that torchvision's {arch} does not "
                        f"have ({examples(unexpected)}): not a plain ResNet, refusing to drop them silently")
    out: dict[str, torch.Tensor] = {}
    casts: set[str] = set()
    bad_shapes: list[str] = []
    for key, shape in expected.items():
        if key in filled_counters:
            out[key] = torch.tensor(0, dtype=torch.long)
            continue
        tensor = as_tensor(sd[key])
        if tuple(tensor.shape) != shape:
            bad_shapes.append(f"{key} {tuple(tensor.shape)} != {shape}")
            continue
        tensor = tensor.detach().cpu()
        if tensor.is_floating_point() and tensor.dtype != torch.float32:
            casts.add(str(tensor.dtype).replace("torch.", ""))
            tensor = tensor.float()
        out[key] = tensor.contiguous()
    if bad_shapes:
        raise UserError(f"{path}: {len(bad_shapes)} backbone tensors do not have {arch}'s shapes "
                        f"({'; '.join(bad_shapes[:3])}): a different network (wide / ResNeXt?)")
    if filled_counters:
        notes.append(f"{len(filled_counters)} BatchNorm num_batches_tracked buffers were absent "
                     "(checkpoint from before PyTorch 0.4.1) and were filled with 0; they do not "
                     "affect the output")
    if casts:
        notes.append(f"weights stored as {', '.join(sorted(casts))} were cast to float32")
    return out, notes


def _meta_of(obj: Any) -> dict[str, Any]:
    """Scalar facts a checkpoint states about itself (method, epoch, declared arch ...)."""
    meta: dict[str, Any] = {}
    if isinstance(obj, Mapping):
        for key in ("format_version", "method", "arch", "epoch", "step", "epochs", "finished"):
            value = obj.get(key)
            if isinstance(value, str | int | float | bool):
                meta[key] = value
    return meta


def load_backbone(path: str | os.PathLike, fmt: str = "auto") -> LoadedBackbone:
    """Read any supported ResNet checkpoint and return its query backbone in torchvision naming.

    `fmt` is "auto" or one of `FORMATS` ("detco-bench", "moco", "openselfsup", "torchvision").
    Raises `UserError` for unreadable, unsafe, non-ResNet or incomplete checkpoints.
    """
    path = Path(path)
    if fmt != "auto" and fmt not in FORMATS:
        raise UserError(f"unknown checkpoint format {fmt!r}; choose from auto, {', '.join(FORMATS)}")
    obj = read_checkpoint(path)
    if fmt == "auto":
        fmt, evidence = detect_format(obj, path)
        detected = True
    else:
        evidence, detected = "given with --format", False
    backbone, dropped, notes = extract_backbone(obj, fmt, path)
    if not backbone:
        sd, _ = state_dict_of(obj)
        raise not_resnet(path, list(sd), obj)
    if "conv1.weight" not in backbone and not any(LAYER_KEY.match(k) for k in backbone):
        raise not_resnet(path, list(backbone), obj)
    arch = detect_arch(backbone)
    state_dict, more_notes = _validate_backbone(backbone, arch, path)
    notes += more_notes
    meta = _meta_of(obj)
    declared = meta.get("arch")
    if isinstance(declared, str) and declared in ARCHS and declared != arch:
        notes.append(f"the checkpoint says arch {declared!r} but its weights are a {arch}; using {arch}")
    if meta.get("finished") is False:
        notes.append(f"the checkpoint is from an unfinished run (epoch {meta.get('epoch', '?')})")
    return LoadedBackbone(path=path, state_dict=state_dict, arch=arch, format=fmt, format_evidence=evidence,
                          format_detected=detected, dropped=dropped, notes=notes, meta=meta,
                          source_num_keys=len(backbone) + len(dropped))


def load_backbone_state_dict(path: str | os.PathLike, fmt: str = "auto"
                             ) -> tuple[dict[str, torch.Tensor], str, str, dict[str, str]]:
    """(torchvision_state_dict, arch, detected_format, dropped_keys_with_reasons) of a checkpoint.

    The state dict has torchvision ResNet names without ``fc.*`` (load it with ``strict=False``
    and expect only fc missing), float32 tensors; arch is "resnet18" / "resnet34" / "resnet50" /
    "resnet101" / "resnet152"; dropped maps each unused source key to why it was not used.
    """
    loaded = load_backbone(path, fmt)
    return loaded.state_dict, loaded.arch, loaded.format, loaded.dropped
