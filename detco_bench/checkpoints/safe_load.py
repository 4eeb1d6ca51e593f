"""Reading untrusted checkpoint files: ``torch.load(weights_only=True)`` only, and one-line reasons.

A file that needs arbitrary unpickling is refused without executing anything; for plain pickles
the names the file would import are read from its opcodes to say what it would have run.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detco_bench.checkpoints.messages import one_line
from detco_bench.errors import UserError

_CORRUPT = "not a PyTorch checkpoint, or truncated / corrupt"
_HARMLESS_GLOBALS = {"numpy.ndarray", "numpy.dtype", "collections.OrderedDict", "builtins.set",
                     "numpy._core.multiarray._reconstruct", "numpy.core.multiarray._reconstruct",
                     "numpy._core.multiarray.scalar", "numpy.core.multiarray.scalar"}


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
            return one_line(ln.split(" Please use")[0], 160).rstrip(".")
    for i, ln in enumerate(lines):
        if "WeightsUnpickler error" in ln:
            rest = ln.split("WeightsUnpickler error:", 1)[-1].strip()
            if not rest and i + 1 < len(lines):
                rest = lines[i + 1]
            return one_line(rest, 160)
    return one_line(lines[-1] if lines else message, 160)


def _refusal(path: Path, message: str) -> UserError:
    """Why `path` failed ``torch.load(weights_only=True)`` with `message`, as one line."""
    if "Weights only load failed" not in message:
        return UserError(f"cannot read {path}: {_CORRUPT} ({one_line(message, 160)})")
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
        return UserError(
            f"cannot read {path}: a plain Python pickle of numpy arrays (a Detectron2 .pkl?), not a "
            "PyTorch checkpoint; convert the checkpoint it came from instead")
    if names or "GLOBAL" in detail:
        imports = f"; it imports {', '.join(names[:5])}" if names else ""
        return UserError(
            f"refusing to unpickle {path}: the file needs arbitrary code execution to load "
            f"(weights_only=True failed: {detail}{imports})")
    if parsed:
        return UserError(
            f"cannot read {path}: a plain Python pickle, not a PyTorch checkpoint written by "
            f"torch.save (weights_only=True failed: {detail})")
    return UserError(f"cannot read {path}: {_CORRUPT} ({detail})")


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
        raise _refusal(path, str(exc)) from None
    except Exception as exc:
        # torch raises many types for files that are not complete torch.save archives:
        # RuntimeError ("PytorchStreamReader failed reading zip archive", "Invalid magic number"),
        # EOFError, KeyError, IndexError, struct.error ...
        reason = one_line(str(exc) or "unexpected end of file", 140)
        raise UserError(f"cannot read {path}: {_CORRUPT} ({type(exc).__name__}: {reason})") from None
