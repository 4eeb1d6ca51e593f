"""The settings of a run: its effective config without what differs between seeds or folders.

Two runs of the same checkpoint on the same task and engine belong together (are seeds of one
measurement) when their settings are equal. The record's ``config_hash`` cannot say that: it
covers the seed, the output folder, the converted weights' cache path and the datasets' paths,
which differ between reruns of the very same settings. `settings_hash` is the hash of
`settings_config`, the config with those removed:

- bookkeeping keys of a transfer config (``SEED``, ``OUTPUT_DIR``, ``MODEL.WEIGHTS``, the device,
  data loading, checkpoint / eval periods: the keys `detco_bench.transfer.protocol` calls
  bookkeeping, which never change what a run measures);
- inside ``DETCO_BENCH``: the subset seed (it follows ``--seed``: each seed of a semi-supervised
  run draws its own subset, as in the paper), the adaptations log and the launcher (their effect
  is in the config itself), the datasets' file paths, and the ``_seed<N>`` suffix of generated
  subset dataset names (wherever those names appear);
- in a linear-probe config: ``seed``, the checkpoint and data paths, the loader workers and
  ``head_fit`` (how the head was fitted: an outcome of the run, such as the weight decay the
  L-BFGS sweep chose, not a setting).

Different ``--opts``, schedules, world sizes, head sizes... all stay, so they are different groups.

`comparison_hash` answers the other question, whether a method and a baseline ran under the same
settings (a delta between them means something): the settings hash without what legitimately
differs between two checkpoints, the checkpoint's format and architecture labels
(``DETCO_BENCH.checkpoint_format`` / ``checkpoint_arch``, a linear config's ``checkpoint_format``).
The checkpoint's path, sha256, method label and seed never enter the config or are dropped above.
The architecture itself stays where it shapes the model (``MODEL.RESNETS.DEPTH``, a linear
config's ``arch``): two architectures are two models, not one setting.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from detco_bench.records.identity import canonical_config, canonical_json

#: Dotted config keys (a trailing "." removes a whole section) that never change a measurement.
#: Mirrors detco_bench.transfer.protocol.BOOKKEEPING_KEYS (a test keeps them in step; records
#: must not import the transfer package, which imports records).
BOOKKEEPING_KEYS = ("SEED", "OUTPUT_DIR", "MODEL.WEIGHTS", "MODEL.DEVICE", "DATALOADER.",
                    "SOLVER.CHECKPOINT_PERIOD", "TEST.EVAL_PERIOD", "VIS_PERIOD", "CUDNN_BENCHMARK")
#: Top-level keys of a linear-probe record's config (detco_bench.linear) that vary per seed or folder.
LINEAR_RUN_KEYS = ("seed", "checkpoint", "data", "workers", "output_dir", "out", "head_fit")
#: The transfer meta section of a record config (detco_bench.transfer.plan.TransferPlan.record_config).
META_KEY = "DETCO_BENCH"
META_RUN_KEYS = ("subset_seed", "adaptations", "launcher")
DATASET_PATH_FIELDS = ("json_file", "image_root", "voc_dir", "gt_dir")
#: Labels of the checkpoint itself, dropped by `comparison_hash` (a transfer meta section's, a
#: linear config's top level).
CHECKPOINT_META_KEYS = ("checkpoint_format", "checkpoint_arch")
CHECKPOINT_LINEAR_KEYS = ("checkpoint_format",)
# detco_bench.transfer.adapt names a generated subset "<name>_subset<pct>pct_seed<seed>".
_SUBSET_SEED = re.compile(r"(_subset[0-9.]+pct)_seed\d+")


_DROPPED = tuple(tuple(key.rstrip(".").split(".")) for key in BOOKKEEPING_KEYS + LINEAR_RUN_KEYS)
_CHECKPOINT_DROPPED = tuple((key,) for key in CHECKPOINT_LINEAR_KEYS)


# The config is never modified: the dicts on the way to a dropped key are copied (records are
# read by the thousand; a deep copy of each config would cost more than the rest of the report).
def _without(node: Mapping[str, Any], path: Sequence[str]) -> Mapping[str, Any]:
    head, rest = path[0], path[1:]
    if head not in node:
        return node
    if rest:
        child = node[head]
        if not isinstance(child, Mapping):
            return node
        smaller = _without(child, rest)
        return node if smaller is child else {**node, head: smaller}
    return {k: v for k, v in node.items() if k != head}


def _dataset_settings(spec: Any) -> Any:
    if not isinstance(spec, Mapping):
        return spec
    out = {k: v for k, v in spec.items() if k not in DATASET_PATH_FIELDS}
    if isinstance(out.get("subset"), Mapping):
        out["subset"] = {k: v for k, v in out["subset"].items() if k not in ("seed", "source")}
    return out


def _meta_settings(meta: Mapping[str, Any], dropped: Sequence[str] = META_RUN_KEYS) -> dict[str, Any]:
    out = {k: v for k, v in meta.items() if k not in dropped}
    if isinstance(out.get("datasets"), Mapping):
        out["datasets"] = {name: _dataset_settings(spec) for name, spec in out["datasets"].items()}
    opts = out.get("opts")
    if isinstance(opts, list) and len(opts) % 2 == 0:
        # --opts KEY VALUE pairs: an --opts SEED or OUTPUT_DIR is bookkeeping too.
        out["opts"] = [x for k, v in zip(opts[::2], opts[1::2], strict=True)
                       if not str(k).startswith(BOOKKEEPING_KEYS) for x in (k, v)]
    return out


def _settings_json(config: Mapping[str, Any], across_checkpoints: bool = False) -> str:
    """The canonical JSON of the settings; `across_checkpoints`: also without the checkpoint's
    own labels (`comparison_hash`)."""
    cfg = config
    for path in _DROPPED + (_CHECKPOINT_DROPPED if across_checkpoints else ()):
        cfg = _without(cfg, path)
    if isinstance(cfg.get(META_KEY), Mapping):
        meta_dropped = META_RUN_KEYS + (CHECKPOINT_META_KEYS if across_checkpoints else ())
        cfg = {**cfg, META_KEY: _meta_settings(cfg[META_KEY], meta_dropped)}
    try:
        text = canonical_json(cfg)
    except TypeError:  # not plain JSON types (a hand-made config): canonicalise first
        text = canonical_json(canonical_config(cfg))
    # Generated subset names (in DATASETS.TRAIN, the datasets' keys and names) lose their seed;
    # on the JSON text, where every occurrence is one substitution away.
    return _SUBSET_SEED.sub(r"\1_seed*", text)


def settings_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config a group of seeds shares (a new canonical copy; see the module docstring)."""
    return json.loads(_settings_json(config))


def settings_hash(config: Mapping[str, Any]) -> str:
    """sha256 (hex) of the canonical JSON of `settings_config(config)`: equal for the seeds of
    one measurement."""
    return hashlib.sha256(_settings_json(config).encode("utf-8")).hexdigest()


def comparison_hash(config: Mapping[str, Any]) -> str:
    """sha256 (hex) of the settings without the checkpoint's own labels: equal for a method and a
    baseline run under the same settings, so that their delta compares checkpoints only."""
    return hashlib.sha256(_settings_json(config, across_checkpoints=True).encode("utf-8")).hexdigest()


def comparison_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The settings a method and a baseline must share (a new canonical copy)."""
    return json.loads(_settings_json(config, across_checkpoints=True))


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, Mapping):
        return {prefix: node}
    out: dict[str, Any] = {}
    for k, v in node.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def comparison_differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """Where the comparison settings of two configs differ, one ``KEY: A vs B`` per dotted key
    (``-`` where a side lacks it): the config's own keys first, then the meta section's (how the
    config came about), each sorted."""
    fa, fb = _flat(comparison_config(a)), _flat(comparison_config(b))

    def shown(flat: dict[str, Any], key: str) -> str:
        return json.dumps(flat[key]) if key in flat else "-"

    keys = sorted(fa.keys() | fb.keys(), key=lambda k: (k.startswith(f"{META_KEY}."), k))
    return [f"{k}: {shown(fa, k)} vs {shown(fb, k)}" for k in keys if k not in fa or k not in fb or fa[k] != fb[k]]


def protocol_of(config: Mapping[str, Any]) -> dict[str, Any] | None:
    """The run's protocol fidelity (``config.DETCO_BENCH.protocol``, written by the transfer
    planner), or None for records without it (older records, linear probes)."""
    meta = config.get(META_KEY)
    proto = meta.get("protocol") if isinstance(meta, Mapping) else None
    return dict(proto) if isinstance(proto, Mapping) and "protocol" in proto else None
