"""Classification transfer of a frozen backbone: the MoCo linear protocol, a cached-feature
probe, weighted kNN, and per-stage probes.

Modes (all on an ImageFolder layout ROOT/train/<class>/*, ROOT/val/<class>/*):
  protocol  MoCo/DetCo's recipe: frozen backbone in eval mode, global-average-pooled res5 into one
            linear layer (weights N(0, 0.01), bias 0); SGD lr 30, momentum 0.9, wd 0, batch 256,
            100 epochs, lr x0.1 at epochs 60 and 80; RandomResizedCrop 224 + flip for training,
            Resize 256 + CenterCrop 224 for validation. DDP under torchrun; a checkpoint per epoch.
  fast      K passes of the protocol's training augmentation (default 3) extracted once and
            cached on disk as memory-mapped arrays; the protocol's head and schedule trained on
            them, one cached view per image per epoch (`--fast-head sgd`), or an L-BFGS logistic
            regression with a held-out weight-decay sweep (`--fast-head lbfgs`).
  knn       weighted kNN on cached, L2-normalised centre-crop features: k=20, weights exp(cos / 0.07).
  stages    the fast head on the cached pooled res2, res3, res4 and res5 features, each.

Modules: `config` (LinearConfig, presets), `data` (layout check, transforms), `backbone` (the
frozen trunk, the frozen check), `head` (the protocol's head and schedule), `protocol`, `cache`
(feature extraction), `fast` (heads on cached features), `knn`, `naming` (record task names) and
`job` (`run_linear`). The names below are the package's public API.
"""

from detco_bench.linear.backbone import FrozenBackbone, check_frozen, fingerprint
from detco_bench.linear.cache import CachedSplit, cache_splits, extract_features
from detco_bench.linear.config import (
    DEFAULT_AUG_COPIES,
    FAST_HEADS,
    LBFGS_WEIGHT_DECAYS,
    MODES,
    LinearConfig,
    preset_config,
)
from detco_bench.linear.data import train_transform, val_transform, validate_imagefolder
from detco_bench.linear.fast import evaluate_head, fit_lbfgs_head, holdout_mask, train_sgd_head
from detco_bench.linear.head import epoch_lr, linear_head, topk_correct
from detco_bench.linear.job import ENGINE, prepare_out, run_cached, run_linear
from detco_bench.linear.knn import knn_classify
from detco_bench.linear.naming import default_dataset_name, task_name
from detco_bench.linear.protocol import STATE_NAME, run_protocol

__all__ = [
    "DEFAULT_AUG_COPIES", "ENGINE", "FAST_HEADS", "LBFGS_WEIGHT_DECAYS", "MODES", "STATE_NAME", "CachedSplit",
    "FrozenBackbone", "LinearConfig", "cache_splits", "check_frozen", "default_dataset_name", "epoch_lr",
    "evaluate_head", "extract_features", "fingerprint", "fit_lbfgs_head", "holdout_mask", "knn_classify",
    "linear_head", "prepare_out", "preset_config", "run_cached", "run_linear", "run_protocol", "task_name",
    "topk_correct", "train_sgd_head", "train_transform", "val_transform", "validate_imagefolder"
]
