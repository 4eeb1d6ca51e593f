"""Classification transfer of a frozen backbone: the MoCo linear protocol, a cached-feature
probe, weighted kNN, and per-stage probes.

Modes (all on an ImageFolder layout ROOT/train/<class>/*, ROOT/val/<class>/*):
  protocol  MoCo/DetCo's recipe: frozen backbone in eval mode, global-average-pooled res5 into one
            linear layer (weights N(0, 0.01), bias 0); SGD lr 30, momentum 0.9, wd 0, batch 256,
            100 epochs, lr x0.1 at epochs 60 and 80; RandomResizedCrop 224 + flip for training,
            Resize 256 + CenterCrop 224 for validation. DDP under torchrun; a checkpoint per epoch.
  fast      K passes of the protocol's training augmentation (default 4) extracted once and
            cached on disk as memory-mapped arrays; the protocol's head and schedule trained on
            them, each epoch a Gaussian draw from every image's views (the default) or one cached
            view per image (`--fast-head sgd`, `--view-sampling gaussian|cycle`), or an L-BFGS logistic
            regression with a held-out weight-decay sweep (`--fast-head lbfgs`).
  knn       weighted kNN on cached, L2-normalised centre-crop features: k=20, weights exp(cos / 0.07).
  stages    the fast head on the cached pooled res2, res3, res4 and res5 features, each.

Modules: `config` (LinearConfig, presets), `data` (layout check, transforms), `backbone` (the
frozen trunk, the frozen check), `head` (the protocol's head and schedule), `protocol`, `cache`
(feature extraction), `fast` (heads on cached features), `knn`, `naming` (record task names) and
`job` (`run_linear`), `flags` (the ``detco-bench linear`` command line, defined once). The names
below are the package's public API, resolved on first use: importing `detco_bench.linear.flags`
(what the CLI does at start-up) does not import torch.
"""

from __future__ import annotations

from detco_bench.lazy_exports import lazy_exports

_EXPORTS = {
    "FrozenBackbone": "backbone", "check_frozen": "backbone", "fingerprint": "backbone",
    "CachedSplit": "cache", "cache_splits": "cache", "extract_features": "cache",
    "DEFAULT_AUG_COPIES": "config", "FAST_HEADS": "config", "LBFGS_WEIGHT_DECAYS": "config", "MODES": "config",
    "LinearConfig": "config", "VIEW_SAMPLINGS": "config", "preset_config": "config",
    "normalize": "data", "train_crop": "data", "train_transform": "data", "val_crop": "data",
    "val_transform": "data", "validate_imagefolder": "data",
    "evaluate_head": "fast", "fit_lbfgs_head": "fast", "gaussian_view": "fast", "holdout_mask": "fast",
    "train_sgd_head": "fast",
    "epoch_lr": "head", "linear_head": "head", "topk_correct": "head",
    "ENGINE": "job", "prepare_out": "job", "run_cached": "job", "run_linear": "job",
    "knn_classify": "knn",
    "default_dataset_name": "naming", "task_name": "naming",
    "STATE_NAME": "protocol", "run_protocol": "protocol",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
