"""Checkpoint conversion and verification: any ResNet checkpoint -> Detectron2 / torchvision weights.

The most common silent failure in self-supervised detection benchmarks is a wrong conversion:
keys that do not match, heads loaded as backbone, AP quietly lower. Everything here is built so
that such a conversion cannot pass unnoticed:

* Inputs are untrusted. They are only read with ``torch.load(weights_only=True)``; a file that
  needs arbitrary unpickling is refused (`UserError`, exit code 2 on the CLI).
* The input format is detected (our own pretrain checkpoints, MoCo, OpenSelfSup / MMSelfSup /
  DetCo releases, plain torchvision state dicts) and every key that is not used is reported with
  the reason it was dropped.
* Torchvision naming is the canonical intermediate (``conv1.weight``, ``layer1.0.bn2.running_var``
  ...). `load_backbone_state_dict` returns it; the linear probe and the transfer engines reuse it.
* The converted weights are verified before they are written: every parameter and buffer of the
  target backbone is filled exactly once (checked against a key set derived independently of the
  renamer, or against detectron2's own model when detectron2 is importable), and the source and
  converted backbones produce the same res2..res5 features on the same input.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import os
import pickle
import pickletools
import platform
import re
import warnings
import zipfile
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from detco_bench.errors import UserError
from detco_bench.records import sha256_file  # noqa: F401 - re-exported: part of this module's API

FORMATS: tuple[str, ...] = ("detco-bench", "moco", "openselfsup", "torchvision")
TARGETS: tuple[str, ...] = ("detectron2", "torchvision")
Target = Literal["detectron2", "torchvision"]

DETCO_BENCH_FORMAT = "detco-bench.pretrain"
REPORT_SCHEMA = "detco-bench.convert-report"
REPORT_SCHEMA_VERSION = 1

#: Relative tolerance of the numerical check: max|a - b| / max(1, max|a|) per stage (fp32).
TOLERANCE = 1e-4
#: Side of the square random input of the numerical check (every stage sees >= 2x2 at 64).
DEFAULT_INPUT_SIZE = 128
STAGES: tuple[str, ...] = ("res2", "res3", "res4", "res5")

#: Settings the converted Detectron2 weights need (torchvision-style ResNet, RGB input in 0..255).
DETECTRON2_SETTINGS: dict[str, Any] = {
    "MODEL.RESNETS.STRIDE_IN_1X1": False,
    "INPUT.FORMAT": "RGB",
    "MODEL.PIXEL_MEAN": [123.675, 116.28, 103.53],
    "MODEL.PIXEL_STD": [58.395, 57.12, 57.375],
}


@dataclass(frozen=True)
class ArchSpec:
    """A ResNet family member: block type and number of blocks in res2..res5 (layer1..layer4)."""

    depth: int
    block: Literal["basic", "bottleneck"]
    blocks: tuple[int, int, int, int]


ARCHS: dict[str, ArchSpec] = {
    "resnet18": ArchSpec(18, "basic", (2, 2, 2, 2)),
    "resnet34": ArchSpec(34, "basic", (3, 4, 6, 3)),
    "resnet50": ArchSpec(50, "bottleneck", (3, 4, 6, 3)),
    "resnet101": ArchSpec(101, "bottleneck", (3, 4, 23, 3)),
    "resnet152": ArchSpec(152, "bottleneck", (3, 8, 36, 3)),
}

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
REASON_NUM_BATCHES = (
    "BatchNorm num_batches_tracked: a training counter that does not affect the output; "
    "detectron2's BN / FrozenBN do not need it"
)

_KEY_ENCODER_NAMES = {"encoder_k", "backbone_k", "neck_k", "momentum_encoder", "target_net", "key_encoder",
                      "teacher", "model_k", "ema"}
_HEAD_NAMES = {"head", "heads", "global_heads", "local_heads", "projector", "predictor", "projection",
               "proj_head", "mlp"}
_NECK_NAMES = {"neck", "necks"}


# --------------------------------------------------------------------------------------------
# Small utilities


def report_path_for(out: str | os.PathLike) -> Path:
    """Where the JSON verification report of a converted file lives: beside it, ``<out>.verify.json``."""
    out = Path(out)
    return out.with_name(out.name + ".verify.json")


def _examples(keys: list[str] | tuple[str, ...] | set[str], n: int = 3) -> str:
    keys = sorted(keys) if isinstance(keys, set) else list(keys)
    shown = ", ".join(repr(k) for k in keys[:n])
    return shown + (", ..." if len(keys) > n else "")


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------------------------
# Reading untrusted files


def _numpy_safe_globals() -> list[Any]:
    """Numpy array reconstruction, allowed so that checkpoints holding plain numpy arrays or RNG
    states load under weights_only. These build arrays from raw bytes and run no user code; an
    object-dtype array still needs its elements' classes, which stay refused."""
    core = getattr(np, "_core", None) or np.core  # numpy 2 / numpy 1
    allowed: list[Any] = [np.ndarray, np.dtype, core.multiarray._reconstruct, core.multiarray.scalar]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        allowed += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    return allowed


def _pickle_globals(data: bytes) -> list[str] | None:
    """The names the first pickle in `data` would import, read from its opcodes without executing
    anything; None when `data` is not a complete pickle."""
    names: list[str] = []
    pushed: list[str | None] = []  # what each opcode left on top: a string, or None for anything else
    memo: dict[Any, str | None] = {}
    try:
        for op, arg, _pos in pickletools.genops(io.BytesIO(data)):
            if op.name in ("GLOBAL", "INST"):
                names.append(str(arg).replace(" ", "."))
                pushed.append(None)
            elif op.name == "STACK_GLOBAL":
                module, qualname = (pushed[-2:] if len(pushed) >= 2 else [None, None])
                names.append(f"{module or '?'}.{qualname or '?'}")
                pushed.append(None)
            elif "UNICODE" in op.name or op.name.endswith("STRING"):
                pushed.append(str(arg))
            elif op.name == "MEMOIZE":
                memo[len(memo)] = pushed[-1] if pushed else None
            elif op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = pushed[-1] if pushed else None
            elif op.name in ("GET", "BINGET", "LONG_BINGET"):
                pushed.append(memo.get(arg))
            else:
                pushed.append(None)
    except Exception:  # any parse failure means "not a (complete) pickle"
        return None
    return sorted(set(names))


def _weights_only_detail(message: str) -> str:
    """The informative line of torch's long weights_only error message."""
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    for ln in lines:
        if "GLOBAL" in ln:
            return _one_line(ln.split(" Please use")[0], 160).rstrip(".")
    for i, ln in enumerate(lines):
        if "WeightsUnpickler error" in ln:
            rest = ln.split("WeightsUnpickler error:", 1)[-1].strip()
            if not rest and i + 1 < len(lines):
                rest = lines[i + 1]
            return _one_line(rest, 160)
    return _one_line(lines[-1] if lines else message, 160)


_CORRUPT = "not a PyTorch checkpoint, or truncated / corrupt"
_HARMLESS_GLOBALS = {"numpy.ndarray", "numpy.dtype", "collections.OrderedDict", "builtins.set",
                     "numpy._core.multiarray._reconstruct", "numpy.core.multiarray._reconstruct",
                     "numpy._core.multiarray.scalar", "numpy.core.multiarray.scalar"}


def read_checkpoint(path: str | os.PathLike) -> Any:
    """Load an untrusted checkpoint with ``torch.load(weights_only=True)`` on the CPU.

    Raises `UserError` (one line) for a missing file, a truncated / corrupt / non-PyTorch file, and
    a file that needs arbitrary unpickling (code execution) to load, which is refused.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise UserError(f"checkpoint is not a file: {path}")
    if path.stat().st_size == 0:
        raise UserError(f"cannot read {path}: the file is empty")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()), warnings.catch_warnings():
            # torch warns about pickle protocols it may not support; a failure is reported below.
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        message = str(exc)
        if "Weights only load failed" not in message:
            raise UserError(f"cannot read {path}: {_CORRUPT} ({_one_line(message, 160)})") from None
        detail = _weights_only_detail(message)
        names: list[str] = []
        if zipfile.is_zipfile(path):
            parsed = True
            try:
                names = list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
            except Exception:  # listing is only for the message; the refusal stands without it
                names = []
        else:
            # Not a zip archive: a legacy torch.save file or a plain pickle. Read its opcodes
            # (never execute them) to name what it would import.
            found = _pickle_globals(path.read_bytes())
            parsed = found is not None
            names = found or []
        harmless = all(n in _HARMLESS_GLOBALS or n.startswith("numpy.dtypes.") for n in names)
        if names and harmless and not zipfile.is_zipfile(path):
            # Only numpy arrays inside a plain pickle, e.g. a Detectron2 .pkl (what this command
            # writes): safe in itself, but not a torch.save checkpoint.
            raise UserError(
                f"cannot read {path}: a plain Python pickle of numpy arrays (a Detectron2 .pkl?), not a "
                "PyTorch checkpoint; convert the checkpoint it came from instead") from None
        if names or "GLOBAL" in detail:
            imports = f"; it imports {', '.join(names[:5])}" if names else ""
            raise UserError(
                f"refusing to unpickle {path}: the file needs arbitrary code execution to load "
                f"(weights_only=True failed: {detail}{imports})") from None
        if parsed:
            raise UserError(
                f"cannot read {path}: a plain Python pickle, not a PyTorch checkpoint written by "
                f"torch.save (weights_only=True failed: {detail})") from None
        raise UserError(f"cannot read {path}: {_CORRUPT} ({detail})") from None
    except Exception as exc:
        # torch raises many types for files that are not complete torch.save archives:
        # RuntimeError ("PytorchStreamReader failed reading zip archive", "Invalid magic number"),
        # EOFError, KeyError, IndexError, struct.error ...
        reason = _one_line(str(exc) or "unexpected end of file", 140)
        raise UserError(f"cannot read {path}: {_CORRUPT} ({type(exc).__name__}: {reason})") from None


# --------------------------------------------------------------------------------------------
# Format detection and extraction of the backbone (torchvision naming)


def _strip_module(sd: Mapping[str, Any]) -> dict[str, Any]:
    """Remove DistributedDataParallel's ``module.`` prefix."""
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in sd.items()}


def _tensor_items(obj: Any) -> dict[str, Any]:
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


def _state_dict_of(obj: Any) -> tuple[dict[str, Any], str]:
    """`_raw_state_dict_of` with DistributedDataParallel's ``module.`` prefix removed."""
    sd, where = _raw_state_dict_of(obj)
    return _strip_module(sd), where


def _describe(obj: Any) -> str:
    if isinstance(obj, Mapping):
        return f"a dict with keys {_examples([str(k) for k in obj.keys()])}"
    return f"a {type(obj).__name__}, not a dict of weights"


def _not_resnet(path: Path, keys: list[str], obj: Any) -> UserError:
    if not keys:
        return UserError(f"{path}: found no weights ({_describe(obj)}): not a ResNet checkpoint")
    return UserError(
        f"{path}: found {len(keys)} keys like {_examples(keys)} and no 'conv1.weight' / "
        f"'layer1.0.conv1.weight': not a ResNet checkpoint")


def _looks_torchvision(keys: Iterable[str]) -> bool:
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
    raise _not_resnet(path, keys, obj)


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
    notes: list[str] = []
    if fmt == "detco-bench":
        if not isinstance(obj, Mapping) or obj.get("format") != DETCO_BENCH_FORMAT:
            raise UserError(f"{path}: --format detco-bench needs 'format': '{DETCO_BENCH_FORMAT}' "
                            f"in the checkpoint; found {_describe(obj)}")
        model = _strip_module(_tensor_items(obj.get("model")))
        backbone_entry = _tensor_items(obj.get("backbone"))
        if backbone_entry:
            kept, dropped = _take(_strip_module(backbone_entry), "", "detco-bench")
            for key in model:
                dropped[key] = _drop_reason(key, "detco-bench")
                if key.startswith("encoder_q.backbone."):
                    twin = kept.get(key[len("encoder_q.backbone."):])
                    if twin is not None and not torch.equal(_as_tensor(twin), _as_tensor(model[key])):
                        notes.append(f"'model' entry {key} differs from the 'backbone' entry; "
                                     "the 'backbone' entry is used")
        else:
            kept, dropped = _take(model, "encoder_q.backbone.", "detco-bench")
            notes.append("no 'backbone' entry: the query backbone was taken from 'model' "
                         "(encoder_q.backbone.*)")
        if not kept:
            raise _not_resnet(path, list(model), obj)
        return kept, dropped, notes

    sd, where = _state_dict_of(obj)
    if fmt == "moco":
        if not any(k.startswith("encoder_q.") for k in sd):
            raise UserError(f"{path}: --format moco needs 'encoder_q.' keys in {where}; "
                            f"found {len(sd)} keys like {_examples(list(sd))}")
        prefix = "encoder_q."
        if "encoder_q.backbone.conv1.weight" in sd:  # a DetCo/MoCo model that wraps its backbone
            prefix = "encoder_q.backbone."
        kept, dropped = _take(sd, prefix, "moco")
    elif fmt == "openselfsup":
        if not any(k.startswith("backbone.") for k in sd):
            raise UserError(f"{path}: --format openselfsup needs 'backbone.' keys in {where}; "
                            f"found {len(sd)} keys like {_examples(list(sd))}")
        kept, dropped = _take(sd, "backbone.", "openselfsup")
    else:  # torchvision
        if not _looks_torchvision(sd):
            raise UserError(f"{path}: --format torchvision needs 'conv1.weight' and 'layer1.0.*' keys in "
                            f"{where}; found {len(sd)} keys like {_examples(list(sd))}")
        # Everything but the classifier is backbone: a key torchvision's ResNet does not have is
        # reported by the validation instead of being dropped here.
        kept, dropped = _take(sd, "", "torchvision")
    return kept, dropped, notes


# --------------------------------------------------------------------------------------------
# Architecture detection and validation against torchvision's ResNet


@cache
def torchvision_backbone_shapes(arch: str) -> dict[str, tuple[int, ...]]:
    """Every state-dict key of ``torchvision.models.<arch>()`` except ``fc.*``, with its shape.

    Built on the meta device, so it allocates nothing.
    """
    import torchvision

    with torch.device("meta"):
        model = getattr(torchvision.models, arch)(weights=None)
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith("fc.")}


_LAYER_KEY = re.compile(r"^layer([1-4])\.(\d+)\.")


def detect_arch(sd: Mapping[str, Any]) -> str:
    """ResNet depth from a torchvision-named state dict: Bottleneck blocks have conv3, and the
    number of blocks per layer tells 18 from 34 and 50 / 101 / 152 apart."""
    counts = [0, 0, 0, 0]
    for key in sd:
        m = _LAYER_KEY.match(key)
        if m:
            layer, block = int(m.group(1)) - 1, int(m.group(2))
            counts[layer] = max(counts[layer], block + 1)
    bottleneck = any(re.match(r"^layer[1-4]\.\d+\.conv3\.weight$", k) for k in sd)
    kind = "bottleneck" if bottleneck else "basic"
    for name, spec in ARCHS.items():
        if spec.block == kind and tuple(counts) == spec.blocks:
            return name
    if counts == [0, 0, 0, 0]:
        raise UserError(f"found {len(sd)} backbone keys like {_examples(list(sd))} with no "
                        "'layer1..4' blocks: not a ResNet checkpoint")
    raise UserError(f"unsupported ResNet: {kind} blocks {counts} per stage; supported: "
                    + ", ".join(f"{n} ({s.block} {list(s.blocks)})" for n, s in ARCHS.items()))


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
                        f"({_examples(missing)}): truncated or not a complete {arch}")
    if unexpected:
        raise UserError(f"{path}: the backbone has {len(unexpected)} keys that torchvision's {arch} does not "
                        f"have ({_examples(unexpected)}): not a plain ResNet, refusing to drop them silently")
    out: dict[str, torch.Tensor] = {}
    casts: set[str] = set()
    bad_shapes: list[str] = []
    for key, shape in expected.items():
        if key in filled_counters:
            out[key] = torch.tensor(0, dtype=torch.long)
            continue
        value = sd[key]
        tensor = torch.from_numpy(np.asarray(value)) if isinstance(value, np.ndarray) else value
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
        sd, _ = _state_dict_of(obj)
        raise _not_resnet(path, list(sd), obj)
    if "conv1.weight" not in backbone and not any(_LAYER_KEY.match(k) for k in backbone):
        raise _not_resnet(path, list(backbone), obj)
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


def summarize_dropped(dropped: Mapping[str, str]) -> list[dict[str, Any]]:
    """Dropped keys grouped by reason: [{"reason", "count", "keys"}], largest group first."""
    groups: dict[str, list[str]] = {}
    for key, reason in dropped.items():
        groups.setdefault(reason, []).append(key)
    return [{"reason": reason, "count": len(keys), "keys": sorted(keys)}
            for reason, keys in sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))]


# --------------------------------------------------------------------------------------------
# Renaming to detectron2


_TV_BLOCK = re.compile(r"^layer([1-4])\.(\d+)\.(.+)$")
_BN_FIELDS = ("weight", "bias", "running_mean", "running_var")


def detectron2_name(key: str) -> str | None:
    """Detectron2 name of a torchvision ResNet key; None when detectron2 has no such tensor.

    conv1 -> stem.conv1, bn1 -> stem.conv1.norm, layerN.B.convK -> res{N+1}.B.convK,
    layerN.B.bnK -> res{N+1}.B.convK.norm, layerN.B.downsample.0/1 -> res{N+1}.B.shortcut(.norm).
    ``num_batches_tracked`` -> None (see `REASON_NUM_BATCHES`). Unknown keys are returned
    unchanged so that the key check reports them instead of them vanishing.
    """
    if key.endswith(".num_batches_tracked"):
        return None
    if key.startswith("conv1."):
        return "stem." + key
    if key.startswith("bn1."):
        return "stem.conv1.norm." + key[len("bn1."):]
    m = _TV_BLOCK.match(key)
    if not m:
        return key
    stage, block, rest = int(m.group(1)) + 1, m.group(2), m.group(3)
    bn = re.match(r"^bn(\d)\.(.+)$", rest)
    if bn:
        rest = f"conv{bn.group(1)}.norm.{bn.group(2)}"
    elif rest.startswith("downsample.0."):
        rest = "shortcut." + rest[len("downsample.0."):]
    elif rest.startswith("downsample.1."):
        rest = "shortcut.norm." + rest[len("downsample.1."):]
    return f"res{stage}.{block}.{rest}"


@dataclass
class Renamed:
    """Converted weights plus how often each target name was written (to prove "exactly once")."""

    weights: dict[str, torch.Tensor]
    filled: Counter[str]
    dropped: dict[str, str]


def to_detectron2(sd: Mapping[str, torch.Tensor]) -> Renamed:
    """Rename a torchvision backbone to detectron2's ResNet names (tensors unchanged)."""
    weights: dict[str, torch.Tensor] = {}
    filled: Counter[str] = Counter()
    dropped: dict[str, str] = {}
    for key, value in sd.items():
        name = detectron2_name(key)
        if name is None:
            dropped[key] = REASON_NUM_BATCHES
            continue
        filled[name] += 1
        weights[name] = value
    return Renamed(weights, filled, dropped)


def to_torchvision(sd: Mapping[str, torch.Tensor]) -> Renamed:
    """The torchvision output: the canonical backbone itself (no fc), every key kept."""
    return Renamed(dict(sd), Counter(sd.keys()), {})


def detectron2_payload(weights: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The object stored in a Detectron2 ``.pkl``: numpy arrays in detectron2 naming; the
    checkpointer's name-matching heuristics add the ``backbone.bottom_up.`` prefix of FPN/C4."""
    return {"model": {k: v.detach().cpu().numpy() for k, v in weights.items()},
            "__author__": "detco-bench", "matching_heuristics": True}


def detectron2_expected_shapes(arch: str) -> dict[str, tuple[int, ...]]:
    """Every parameter / BN buffer of detectron2's ResNet (as built by ``build_resnet_backbone``,
    norm BN, without ``num_batches_tracked``) and its shape, derived from the architecture alone.

    This follows detectron2's construction (BasicStem, BasicBlock / BottleneckBlock, a shortcut
    where in_channels != out_channels), not the torchvision->detectron2 renamer, so a renamer bug
    shows up as a missing or unexpected key.
    """
    spec = ARCHS[arch]
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name: str, out_ch: int, in_ch: int, k: int) -> None:
        shapes[f"{name}.weight"] = (out_ch, in_ch, k, k)
        for f in _BN_FIELDS:
            shapes[f"{name}.norm.{f}"] = (out_ch,)

    conv("stem.conv1", 64, 3, 7)
    in_ch = 64
    out_ch = 64 if spec.block == "basic" else 256  # MODEL.RESNETS.RES2_OUT_CHANNELS
    bottleneck = 64
    for i, n_blocks in enumerate(spec.blocks):
        for b in range(n_blocks):
            p = f"res{i + 2}.{b}"
            cin = in_ch if b == 0 else out_ch
            if cin != out_ch:
                conv(f"{p}.shortcut", out_ch, cin, 1)
            if spec.block == "basic":
                conv(f"{p}.conv1", out_ch, cin, 3)
                conv(f"{p}.conv2", out_ch, out_ch, 3)
            else:
                conv(f"{p}.conv1", bottleneck, cin, 1)
                conv(f"{p}.conv2", bottleneck, bottleneck, 3)
                conv(f"{p}.conv3", out_ch, bottleneck, 1)
        in_ch, out_ch, bottleneck = out_ch, out_ch * 2, bottleneck * 2
    return shapes


# --------------------------------------------------------------------------------------------
# Forward passes for the numerical check


def verification_input(size: int = DEFAULT_INPUT_SIZE, seed: int = 0) -> torch.Tensor:
    """A fixed fp32 input [1, 3, size, size] (standard-normal, like a normalized image)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(1, 3, size, size, generator=gen)


@torch.no_grad()
def torchvision_features(sd: Mapping[str, torch.Tensor], arch: str, x: torch.Tensor
                         ) -> dict[str, torch.Tensor]:
    """res2..res5 outputs ([1, C, H/4..H/32, ...]) of ``torchvision.models.<arch>()`` with `sd`
    loaded (eval mode, BN uses running statistics). Raises ValueError when `sd` does not fill
    every backbone key of the model exactly (fc aside)."""
    import torchvision

    with torch.device("meta"):
        model = getattr(torchvision.models, arch)(weights=None)
    # assign=True replaces the meta tensors, so the model costs no random initialisation.
    result = model.load_state_dict(dict(sd), strict=False, assign=True)
    missing = [k for k in result.missing_keys if not k.startswith("fc.")]
    if missing or result.unexpected_keys:
        raise ValueError(f"torchvision {arch} load: missing {_examples(missing)}, "
                         f"unexpected {_examples(result.unexpected_keys)}")
    model.eval()
    h = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    out: dict[str, torch.Tensor] = {}
    for stage, layer in zip(STAGES, (model.layer1, model.layer2, model.layer3, model.layer4), strict=True):
        h = layer(h)
        out[stage] = h
    return out


def _as_tensor(value: Any) -> torch.Tensor:
    return torch.from_numpy(np.asarray(value)) if not isinstance(value, torch.Tensor) else value


@torch.no_grad()
def detectron2_reference_features(weights: Mapping[str, Any], arch: str, x: torch.Tensor
                                  ) -> dict[str, torch.Tensor]:
    """res2..res5 of detectron2's ResNet computed in plain torch from detectron2-named weights.

    Mirrors ``build_resnet_backbone`` with STRIDE_IN_1X1=False, NORM="BN" in eval mode,
    RES5_DILATION=1: stem conv7x7/2 + BN + ReLU + maxpool3x3/2; blocks stride on conv2 (3x3) of
    Bottleneck / conv1 of BasicBlock, projection shortcut where channels change. The structure comes
    from `ARCHS`, so a weight missing under its detectron2 name raises KeyError.
    """
    spec = ARCHS[arch]
    w = {k: _as_tensor(v) for k, v in weights.items()}

    def conv_norm(h: torch.Tensor, name: str, stride: int = 1) -> torch.Tensor:
        kernel = w[f"{name}.weight"]
        h = F.conv2d(h, kernel, stride=stride, padding=kernel.shape[-1] // 2)
        return F.batch_norm(h, w[f"{name}.norm.running_mean"], w[f"{name}.norm.running_var"],
                            w[f"{name}.norm.weight"], w[f"{name}.norm.bias"], training=False, eps=1e-5)

    h = F.relu(conv_norm(x, "stem.conv1", stride=2))
    h = F.max_pool2d(h, kernel_size=3, stride=2, padding=1)
    out: dict[str, torch.Tensor] = {}
    in_ch, out_ch = 64, (64 if spec.block == "basic" else 256)
    for i, n_blocks in enumerate(spec.blocks):
        for b in range(n_blocks):
            p = f"res{i + 2}.{b}"
            stride = 2 if (b == 0 and i > 0) else 1
            cin = in_ch if b == 0 else out_ch
            shortcut = conv_norm(h, f"{p}.shortcut", stride) if cin != out_ch else h
            if spec.block == "basic":
                y = F.relu(conv_norm(h, f"{p}.conv1", stride))
                y = conv_norm(y, f"{p}.conv2")
            else:
                y = F.relu(conv_norm(h, f"{p}.conv1"))  # STRIDE_IN_1X1=False: not here ...
                y = F.relu(conv_norm(y, f"{p}.conv2", stride))  # ... but on the 3x3 conv
                y = conv_norm(y, f"{p}.conv3")
            h = F.relu(y + shortcut)
        out[STAGES[i]] = h
        in_ch, out_ch = out_ch, out_ch * 2
    return out


def detectron2_import_error() -> str | None:
    """None when detectron2's ResNet backbone can be imported, else why not (one line)."""
    try:
        import detectron2.modeling.backbone.resnet  # noqa: F401
        from detectron2.config import get_cfg  # noqa: F401
    except Exception as exc:  # ImportError, or its own import-time failures (pkg_resources ...)
        return f"{type(exc).__name__}: {_one_line(str(exc), 120)}"
    return None


def build_detectron2_resnet(arch: str) -> torch.nn.Module:
    """detectron2's ResNet backbone as the transfer configs build it (needs detectron2):
    DEPTH from `arch`, STRIDE_IN_1X1=False, NORM="BN", FREEZE_AT=0, res2..res5 out, eval mode."""
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.backbone.resnet import build_resnet_backbone

    spec = ARCHS[arch]
    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = spec.depth
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.RESNETS.OUT_FEATURES = list(STAGES)
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64 if spec.block == "basic" else 256
    cfg.MODEL.RESNETS.RES5_DILATION = 1
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    return build_resnet_backbone(cfg, ShapeSpec(channels=3)).eval()


# --------------------------------------------------------------------------------------------
# Verification


def check_keys(filled: Counter[str], weights: Mapping[str, Any], expected: Mapping[str, tuple[int, ...]],
               reference: str) -> dict[str, Any]:
    """Every expected key filled exactly once with the expected shape, nothing else.

    filled: how often the conversion wrote each target name; weights: the converted tensors or
    arrays; expected: target name -> shape of the target model. Returns the report section.
    """
    missing = sorted(set(expected) - set(filled))
    unexpected = sorted(set(filled) - set(expected))
    duplicated = sorted(k for k, n in filled.items() if n > 1)
    shape_mismatch = [
        {"key": k, "expected": list(expected[k]), "got": list(np.shape(weights[k]))}
        for k in sorted(set(expected) & set(weights)) if tuple(np.shape(weights[k])) != tuple(expected[k])
    ]
    return {
        "passed": not (missing or unexpected or duplicated or shape_mismatch),
        "reference": reference,
        "expected": len(expected),
        "filled": sum(1 for k in filled if k in expected),
        "missing": missing,
        "unexpected": unexpected,
        "duplicated": duplicated,
        "shape_mismatch": shape_mismatch,
    }


def compare_features(source: Mapping[str, torch.Tensor], converted: Mapping[str, torch.Tensor],
                     tolerance: float = TOLERANCE) -> dict[str, dict[str, Any]]:
    """Per stage: max|a - b|, scale = max(1, max|a|), rel = max|a - b| / scale, passed rel <= tol."""
    stages: dict[str, dict[str, Any]] = {}
    for stage in STAGES:
        a, b = source[stage].double(), converted.get(stage)
        if b is None or tuple(b.shape) != tuple(a.shape):
            stages[stage] = {"passed": False, "error": f"shape {None if b is None else list(b.shape)} "
                                                       f"!= {list(a.shape)}"}
            continue
        diff = float((a - b.double()).abs().max())
        scale = max(1.0, float(a.abs().max()))
        rel = diff / scale
        stages[stage] = {"max_abs_diff": diff, "scale": scale, "rel_diff": rel,
                         "passed": bool(np.isfinite(rel) and rel <= tolerance), "shape": list(a.shape)}
    return stages


def _numerical_section(method: str, source: Mapping[str, torch.Tensor], run: Any, x: torch.Tensor,
                       tolerance: float) -> dict[str, Any]:
    section: dict[str, Any] = {"method": method, "input_shape": list(x.shape), "dtype": "float32",
                               "tolerance": tolerance}
    try:
        converted = run()
    except Exception as exc:  # a missing / misshapen weight makes the converted network unrunnable
        section.update(passed=False, error=f"{type(exc).__name__}: {_one_line(str(exc), 200)}", stages={})
        return section
    stages = compare_features(source, converted, tolerance)
    section.update(passed=all(s["passed"] for s in stages.values()), stages=stages)
    return section


def verify_detectron2(source_sd: Mapping[str, torch.Tensor], arch: str, renamed: Renamed,
                      input_size: int = DEFAULT_INPUT_SIZE, use_detectron2: bool | None = None,
                      tolerance: float = TOLERANCE) -> dict[str, Any]:
    """Verify detectron2-named `renamed` weights against the torchvision source backbone.

    With detectron2 importable (and `use_detectron2` not False) the target is detectron2's own
    ResNet; otherwise the key set is derived from the architecture (`detectron2_expected_shapes`)
    and the features come from `detectron2_reference_features`.
    """
    x = verification_input(input_size)
    source = torchvision_features(source_sd, arch, x)
    d2_error = detectron2_import_error() if use_detectron2 is not False else "disabled"
    if use_detectron2 and d2_error:
        raise UserError(f"detectron2 requested for verification but not importable ({d2_error})")
    if d2_error is None:
        import detectron2

        model = build_detectron2_resnet(arch)
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()
                    if not k.endswith("num_batches_tracked")}
        keys = check_keys(renamed.filled, renamed.weights, expected,
                          f"detectron2 {detectron2.__version__} build_resnet_backbone state_dict "
                          "(num_batches_tracked excluded)")

        def run() -> dict[str, torch.Tensor]:
            tensors = {k: _as_tensor(v).clone() for k, v in renamed.weights.items()}
            result = model.load_state_dict(tensors, strict=False)
            missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
            if missing or result.unexpected_keys:
                raise KeyError(f"detectron2 load: missing {_examples(missing)}, "
                               f"unexpected {_examples(result.unexpected_keys)}")
            with torch.no_grad():
                return model(x)

        numerical = _numerical_section(
            f"detectron2 {detectron2.__version__} build_resnet_backbone (STRIDE_IN_1X1=False, BN, eval)",
            source, run, x, tolerance)
        detectron2_used: dict[str, Any] = {"importable": True, "used": True,
                                           "version": detectron2.__version__}
    else:
        keys = check_keys(renamed.filled, renamed.weights, detectron2_expected_shapes(arch),
                          "detectron2 ResNet naming derived from the architecture (detectron2 not used)")
        numerical = _numerical_section(
            "reference forward with detectron2 semantics in plain torch (STRIDE_IN_1X1=False, BN, eval)",
            source, lambda: detectron2_reference_features(renamed.weights, arch, x), x, tolerance)
        detectron2_used = {"importable": d2_error != "disabled", "used": False,
                           "why_not": "disabled" if d2_error == "disabled" else d2_error}
    return {"passed": bool(keys["passed"] and numerical["passed"]), "keys": keys, "numerical": numerical,
            "detectron2": detectron2_used}


def verify_torchvision(source_sd: Mapping[str, torch.Tensor], arch: str, renamed: Renamed,
                       input_size: int = DEFAULT_INPUT_SIZE, tolerance: float = TOLERANCE) -> dict[str, Any]:
    """Verify a torchvision backbone: every key of ``torchvision.models.<arch>()`` but fc filled
    once with the right shape (strict load apart from fc), and identical res2..res5 features."""
    x = verification_input(input_size)
    source = torchvision_features(source_sd, arch, x)
    keys = check_keys(renamed.filled, renamed.weights, torchvision_backbone_shapes(arch),
                      f"torchvision.models.{arch}() state_dict without fc")
    numerical = _numerical_section(f"torchvision.models.{arch}() loaded strictly except fc, eval", source,
                                   lambda: torchvision_features(renamed.weights, arch, x), x, tolerance)
    return {"passed": bool(keys["passed"] and numerical["passed"]), "keys": keys, "numerical": numerical}


def failure_summary(verification: Mapping[str, Any]) -> list[str]:
    """One line per thing that differs, for the terminal."""
    lines: list[str] = []
    keys = verification["keys"]
    for name in ("missing", "unexpected", "duplicated"):
        if keys[name]:
            lines.append(f"{len(keys[name])} {name} key(s): {_examples(keys[name], 5)}")
    for item in keys["shape_mismatch"][:5]:
        lines.append(f"shape mismatch {item['key']}: expected {item['expected']}, got {item['got']}")
    numerical = verification["numerical"]
    if numerical.get("error"):
        lines.append(f"the converted backbone could not run: {numerical['error']}")
    for stage, s in numerical.get("stages", {}).items():
        if not s["passed"]:
            if "error" in s:
                lines.append(f"{stage}: {s['error']}")
            else:
                lines.append(f"{stage} features differ: max|diff| {s['max_abs_diff']:.3g}, relative "
                             f"{s['rel_diff']:.3g} (scale {s['scale']:.3g}) > tolerance "
                             f"{numerical['tolerance']:g}")
    return lines


# --------------------------------------------------------------------------------------------
# The whole conversion


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
    import torchvision

    import detco_bench

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
    if checkpoint.exists() and out.exists() and os.path.samefile(out, checkpoint):
        raise UserError(f"--out {out} is the input checkpoint; choose another path")
    if out.exists() and not force:
        raise UserError(f"output exists: {out} (use --force to replace it)")
    return out


def convert_checkpoint(checkpoint: str | os.PathLike, target: str, out: str | os.PathLike, fmt: str = "auto",
                       force: bool = False, input_size: int = DEFAULT_INPUT_SIZE,
                       use_detectron2: bool | None = None) -> ConvertResult:
    """Convert, verify, and (only if verification passed) atomically write `out`.

    The JSON report is written beside `out` (`report_path_for`) in every case that got as far as
    verification. Raises `UserError` for bad input before anything is written.
    """
    from pretrain.atomic import atomic_write_bytes, atomic_write_json

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
    passed = bool(verification["passed"])
    notes = list(loaded.notes)
    if target == "torchvision":
        notes.append("the output has no fc layer: load it with strict=False (only fc.weight / fc.bias "
                     "missing) or replace fc with your task head")
    dropped = dict(loaded.dropped)
    conversion_dropped = renamed.dropped
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
        "dropped": summarize_dropped(dropped),
        "dropped_in_conversion": summarize_dropped(conversion_dropped),
        "verification": verification,
        "notes": notes,
        "versions": _versions(),
    }
    if target == "detectron2":
        report["detectron2_config"] = {"MODEL.WEIGHTS": str(out.resolve()),
                                       "MODEL.RESNETS.DEPTH": ARCHS[loaded.arch].depth,
                                       **({"MODEL.RESNETS.RES2_OUT_CHANNELS": 64}
                                          if ARCHS[loaded.arch].block == "basic" else {}),
                                       **DETECTRON2_SETTINGS}
    if passed:
        atomic_write_bytes(out, data)
    report_path = report_path_for(out)
    atomic_write_json(report_path, report)
    return ConvertResult(loaded=loaded, target=target, out=out, report_path=report_path, report=report,
                         passed=passed, written=passed)
