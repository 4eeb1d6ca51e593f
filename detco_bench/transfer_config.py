"""Transfer configs without detectron2: the `_BASE_` chain, deep merge, and `KEY VALUE` overrides.

The files under ``detco_bench/transfer_configs/`` are Detectron2 YAML configs. This module reads them the way
detectron2 (fvcore / yacs) does, but with plain ``yaml.safe_load`` and dicts, so that the effective
config of a task can be printed, tested and read by the torchvision engine without detectron2:

* ``_BASE_: "other.yaml"`` (relative to the file) is loaded first and the file is merged on top;
  dicts merge key by key, every other value (lists included) is replaced.
* String values are decoded like yacs does (``"(640, 672)"`` -> tuple, ``"1e-3"`` -> float);
  tuples are then stored as lists, so the effective config is a JSON-compatible nested dict.
* ``--opts KEY VALUE ...`` overrides (`apply_opts`): each VALUE is decoded with
  ``ast.literal_eval`` (as detectron2's ``merge_from_list``) and coerced to the type of the value it
  replaces (int -> float allowed, list <-> tuple, anything -> None-valued keys); a mismatch or an
  unknown key is a `UserError`.

Public API: ``effective_config(task, opts) -> dict`` and the helpers below.
"""

from __future__ import annotations

import ast
import copy
import difflib
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from detco_bench.errors import UserError
from detco_bench.package_data import package_data_dir
from detco_bench.tasks import TASKS, Task, get_task

CONFIG_DIR_ENV = "DETCO_BENCH_TRANSFER_CONFIGS"
BASE_KEY = "_BASE_"
_KEY_RE = re.compile(r"^[A-Z0-9_]+(\.[A-Z0-9_]+)*$")

#: detco-bench's own keys (not in detectron2's defaults); the detectron2 engine adds them to its
#: CfgNode before merging. Values are the defaults used when a config does not set them.
CUSTOM_KEYS: dict[str, Any] = {
    "MODEL.SEM_SEG_HEAD.NUM_CONVS": 2,
    "MODEL.SEM_SEG_HEAD.DILATION": 6,
    "INPUT.CROP.SINGLE_CATEGORY_MAX_AREA": 1.0,
}

#: detectron2's ``get_norm`` names of synchronized BatchNorm (plain BN on one process or on CPU).
SYNC_BN_NAMES: tuple[str, ...] = ("SyncBN", "naiveSyncBN", "naiveSyncBN_N", "nnSyncBN")

Config = dict[str, Any]


def config_dir() -> Path:
    """Where the transfer YAMLs live: ``$DETCO_BENCH_TRANSFER_CONFIGS``, else the package's own
    ``detco_bench/transfer_configs/`` (package data: a wheel carries it like a checkout)."""
    return package_data_dir("transfer_configs", CONFIG_DIR_ENV)


def config_path(name: str | os.PathLike) -> Path:
    """A config file by name (relative to `config_dir`) or path."""
    p = Path(name)
    if p.is_absolute() or p.exists():
        return p
    base = config_dir()
    if not base.is_dir():
        raise UserError(
            f"transfer configs not found at {base}: this installation of detco-bench is incomplete "
            f"(reinstall it), or set ${CONFIG_DIR_ENV} to a folder of transfer configs"
        )
    return base / p


# --------------------------------------------------------------------------------------------
# Decoding and merging


def decode_value(value: Any) -> Any:
    """yacs' value decoding: strings that are Python literals become those literals; tuples
    become lists (JSON-compatible); dicts are decoded recursively."""
    if isinstance(value, Mapping):
        return {str(k): decode_value(v) for k, v in value.items()}
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return value
    if isinstance(value, tuple):
        return [decode_value(v) if isinstance(v, tuple) else v for v in value]
    if isinstance(value, list):
        return [decode_value(v) if isinstance(v, tuple) else v for v in value]
    return value


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> Config:
    """A new dict: `override` merged into `base` (dicts recursively; other values replaced)."""
    out: Config = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_yaml(path: Path) -> Config:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except OSError as exc:
        raise UserError(f"cannot read config {path}: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: invalid YAML ({' '.join(str(exc).split())})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: a config must be a mapping at the top level, got {type(data).__name__}")
    return data


def load_config_file(path: str | os.PathLike, _seen: tuple[Path, ...] = ()) -> Config:
    """Load a config file and its `_BASE_` chain into one decoded dict (without `_BASE_`)."""
    path = config_path(path).resolve()
    if path in _seen:
        chain = " -> ".join(p.name for p in (*_seen, path))
        raise UserError(f"circular _BASE_ chain: {chain}")
    data = _read_yaml(path)
    base_name = data.pop(BASE_KEY, None)
    data = decode_value(data)
    if base_name is None:
        return data
    if not isinstance(base_name, str):
        raise UserError(f"{path}: _BASE_ must be a file name, got {base_name!r}")
    base_path = Path(base_name).expanduser()
    if not base_path.is_absolute():
        base_path = path.parent / base_path
    return deep_merge(load_config_file(base_path, (*_seen, path)), data)


def base_chain(path: str | os.PathLike) -> list[Path]:
    """The files of a config's `_BASE_` chain, root first."""
    chain: list[Path] = []
    current: Path | None = config_path(path).resolve()
    while current is not None:
        if current in chain:
            raise UserError(f"circular _BASE_ chain at {current.name}")
        chain.append(current)
        base = _read_yaml(current).get(BASE_KEY)
        current = (current.parent / base).resolve() if isinstance(base, str) else None
    return list(reversed(chain))


# --------------------------------------------------------------------------------------------
# Dotted keys


def flatten(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"A.B.C": value} for every leaf of a nested config."""
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        full = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, full + "."))
        else:
            out[full] = value
    return out


_MISSING = object()
_NO_DEFAULT = object()


def get_key(cfg: Mapping[str, Any], key: str, default: Any = _NO_DEFAULT) -> Any:
    """The value at a dotted key ("SOLVER.BASE_LR"); `default` (or KeyError) when absent."""
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            if default is _NO_DEFAULT:
                raise KeyError(key)
            return default
        node = node[part]
    return node


def has_key(cfg: Mapping[str, Any], key: str) -> bool:
    return get_key(cfg, key, _MISSING) is not _MISSING


def set_key(cfg: dict[str, Any], key: str, value: Any) -> None:
    """Set a dotted key in place, creating intermediate dicts."""
    parts = key.split(".")
    node = cfg
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value


# --------------------------------------------------------------------------------------------
# Overrides


def parse_opts(opts: Sequence[str] | None) -> list[tuple[str, Any]]:
    """``["SOLVER.MAX_ITER", "5", ...]`` -> [("SOLVER.MAX_ITER", 5), ...] (values decoded)."""
    opts = list(opts or [])
    if len(opts) % 2:
        raise UserError(f"--opts needs KEY VALUE pairs; got an odd number of items ({len(opts)}): {' '.join(opts)}")
    pairs: list[tuple[str, Any]] = []
    for key, raw in zip(opts[0::2], opts[1::2], strict=True):
        if not _KEY_RE.match(key):
            raise UserError(
                f"--opts: {key!r} is not a config key (expected upper-case dotted names like SOLVER.MAX_ITER)"
            )
        pairs.append((key, decode_value(raw)))
    return pairs


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def coerce_value(key: str, value: Any, original: Any) -> Any:
    """`value` converted to the type of `original` the way yacs allows (plus int -> float)."""
    if original is None or value is None:
        return value
    if isinstance(original, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(original, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(original, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(original, str):
        if isinstance(value, str):
            return value
    elif isinstance(original, (list, tuple)):
        if isinstance(value, (list, tuple)):
            return [list(v) if isinstance(v, tuple) else v for v in value]
    elif isinstance(original, Mapping):
        raise UserError(
            f"--opts: {key} is a config section, not a value; set one of its keys "
            f"({', '.join(sorted(original)[:4])}, ...)"
        )
    else:
        return value
    kind = _type_name(original)
    article = "an" if kind[0] in "aeiou" else "a"
    raise UserError(f"--opts: {key} expects {article} {kind} (like {original!r}), got {value!r} ({_type_name(value)})")


KnownDefaults = Callable[[], Mapping[str, Any] | None]


def _with_custom_keys(flat: Mapping[str, Any]) -> dict[str, Any]:
    """`flat` plus the `CUSTOM_KEYS` it does not have."""
    return {**CUSTOM_KEYS, **flat}


@cache
def detectron2_defaults() -> dict[str, Any] | None:
    """detectron2's default config (flattened, plus `CUSTOM_KEYS`), or None without detectron2."""
    try:
        from detectron2.config import get_cfg
    except Exception:  # noqa: BLE001 - not importable here
        return None
    flat = flatten(yaml.safe_load(get_cfg().dump()))
    return _with_custom_keys({k: decode_value(v) for k, v in flat.items()})


@cache
def base_defaults() -> dict[str, Any]:
    """Detectron2's defaults for the keys the engines read, without detectron2:
    ``transfer_configs/Base-Defaults.yaml`` (the root of every task's chain, checked against
    `detectron2_defaults` by a detectron2-marked test), flattened, plus `CUSTOM_KEYS`."""
    return _with_custom_keys(flatten(load_config_file(config_path("Base-Defaults.yaml"))))


def apply_opts(
    cfg: Mapping[str, Any],
    opts: Sequence[str] | Iterable[tuple[str, Any]] | None,
    known: KnownDefaults | None = detectron2_defaults,
) -> Config:
    """A new config with `opts` applied (a flat ``[KEY, VALUE, ...]`` list or parsed pairs).

    A key must exist in `cfg`, or, when `known` returns detectron2's defaults, in those (it is then
    added). Without detectron2, keys the effective config does not have are refused: neither engine
    could honour them.
    """
    opts = list(opts or [])
    pairs = parse_opts(opts) if all(isinstance(o, str) for o in opts) else [(str(k), v) for k, v in opts]
    out = copy.deepcopy(dict(cfg))
    defaults: Mapping[str, Any] | None = None
    for key, value in pairs:
        current = get_key(out, key, _MISSING)
        if current is _MISSING:
            if defaults is None and known is not None:
                defaults = known() or {}
            if defaults and key in defaults:
                current = defaults[key]
            else:
                if defaults and any(k.startswith(key + ".") for k in defaults):
                    raise UserError(f"--opts: {key} is a config section, not a value")
                why = (
                    "neither in the task's config nor in detectron2's defaults"
                    if defaults
                    else "not in the task's config (detectron2 is not importable to check its full key set)"
                )
                close = _close_keys(key, out)
                raise UserError(
                    f"--opts: unknown config key {key}: {why}"
                    + (f"; did you mean {', '.join(close)}?" if close else "")
                )
        set_key(out, key, coerce_value(key, value, current))
    return out


def _close_keys(key: str, cfg: Mapping[str, Any]) -> list[str]:
    return difflib.get_close_matches(key, list(flatten(cfg)), n=3, cutoff=0.75)


# --------------------------------------------------------------------------------------------
# Effective config


def task_config(task: Any) -> Config:
    """The decoded `_BASE_` chain of a task (a `Task`, a task name, or a config file name)."""
    if isinstance(task, Task):
        return load_config_file(task.config)
    if isinstance(task, str) and (task in TASKS or not task.endswith((".yaml", ".yml"))):
        return load_config_file(get_task(task).config)
    return load_config_file(task)


def effective_config(
    task: Any, opts: Sequence[str] | None = None, known: KnownDefaults | None = detectron2_defaults
) -> Config:
    """The effective config of a task: its YAML chain merged, then `opts` (``[KEY, VALUE, ...]``)
    applied. A plain nested dict with JSON-compatible values (lists, not tuples)."""
    return apply_opts(task_config(task), opts, known=known)


def to_yaml(cfg: Mapping[str, Any]) -> str:
    """The config as YAML (keys in file order, flow style for short lists)."""

    class _Dumper(yaml.SafeDumper):
        pass

    def _list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
        flow = all(not isinstance(v, (dict, list)) for v in data) or all(
            isinstance(v, list) and all(not isinstance(x, (dict, list)) for x in v) for v in data
        )
        return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)

    _Dumper.add_representer(list, _list)
    _Dumper.add_representer(tuple, lambda d, data: _list(d, list(data)))
    return yaml.dump(dict(cfg), Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=110)
