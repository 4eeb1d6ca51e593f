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
- in a linear-probe config: ``seed``, the checkpoint and data paths and the loader workers.

Different ``--opts``, schedules, world sizes, head sizes... all stay, so they are different groups.
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
LINEAR_RUN_KEYS = ("seed", "checkpoint", "data", "workers", "output_dir", "out")
#: The transfer meta section of a record config (detco_bench.transfer.plan.TransferPlan.record_config).
META_KEY = "DETCO_BENCH"
META_RUN_KEYS = ("subset_seed", "adaptations", "launcher")
DATASET_PATH_FIELDS = ("json_file", "image_root", "voc_dir", "gt_dir")
# detco_bench.transfer.adapt names a generated subset "<name>_subset<pct>pct_seed<seed>".
_SUBSET_SEED = re.compile(r"(_subset[0-9.]+pct)_seed\d+")


_DROPPED = tuple(tuple(key.rstrip(".").split(".")) for key in BOOKKEEPING_KEYS + LINEAR_RUN_KEYS)


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


def _meta_settings(meta: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in meta.items() if k not in META_RUN_KEYS}
    if isinstance(out.get("datasets"), Mapping):
        out["datasets"] = {name: _dataset_settings(spec) for name, spec in out["datasets"].items()}
    opts = out.get("opts")
    if isinstance(opts, list) and len(opts) % 2 == 0:
        # --opts KEY VALUE pairs: an --opts SEED or OUTPUT_DIR is bookkeeping too.
        out["opts"] = [x for k, v in zip(opts[::2], opts[1::2], strict=True)
                       if not str(k).startswith(BOOKKEEPING_KEYS) for x in (k, v)]
    return out


def _settings_json(config: Mapping[str, Any]) -> str:
    cfg = config
    for path in _DROPPED:
        cfg = _without(cfg, path)
    if isinstance(cfg.get(META_KEY), Mapping):
        cfg = {**cfg, META_KEY: _meta_settings(cfg[META_KEY])}
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


def protocol_of(config: Mapping[str, Any]) -> dict[str, Any] | None:
    """The run's protocol fidelity (``config.DETCO_BENCH.protocol``, written by the transfer
    planner), or None for records without it (older records, linear probes)."""
    meta = config.get(META_KEY)
    proto = meta.get("protocol") if isinstance(meta, Mapping) else None
    return dict(proto) if isinstance(proto, Mapping) and "protocol" in proto else None
