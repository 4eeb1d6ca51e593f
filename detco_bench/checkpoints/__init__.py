"""Checkpoints in, verified backbone weights out: this package owns reading any ResNet checkpoint
safely, finding its query backbone, and converting it to Detectron2 / torchvision weights that are
verified before they are written (`detco-bench convert`, docs/convert.md).

* `safe_load`: ``torch.load(weights_only=True)`` only; unsafe, corrupt or non-torch files refused.
* `formats`: ours / MoCo / OpenSelfSup / torchvision detection, why every unused key is dropped.
* `archs`: ResNet-18..152 specs, arch detection, the key sets in torchvision and detectron2 naming.
* `backbone`: any checkpoint -> validated torchvision-named backbone (`load_backbone`), the
  canonical intermediate the linear probe and the transfer engines reuse.
* `rename`: torchvision -> detectron2 names, counting what was written.
* `reference_forward`, `detectron2_resnet`, `verify`: the key and feature checks.
* `convert`: `convert_checkpoint`, the atomic writes and the ``<out>.verify.json`` report.

The names below are the package's API; import them from here.
"""

from detco_bench.checkpoints.archs import (
    ARCHS,
    STAGES,
    ArchSpec,
    arch_of_depth,
    detect_arch,
    detectron2_expected_shapes,
    torchvision_backbone_shapes,
)
from detco_bench.checkpoints.backbone import LoadedBackbone, load_backbone, load_backbone_state_dict
from detco_bench.checkpoints.convert import (
    DETECTRON2_SETTINGS,
    REPORT_SCHEMA,
    REPORT_SCHEMA_VERSION,
    TARGETS,
    ConvertResult,
    Target,
    check_output_path,
    convert_checkpoint,
    report_path_for,
    summarize_dropped,
)
from detco_bench.checkpoints.detectron2_resnet import build_detectron2_resnet, detectron2_import_error
from detco_bench.checkpoints.formats import (
    DETCO_BENCH_FORMAT,
    FORMATS,
    REASON_CLASSIFIER,
    REASON_DUPLICATE,
    REASON_KEY_ENCODER,
    REASON_NECK,
    REASON_OTHER,
    REASON_PROJ_HEAD,
    REASON_QUEUE,
    detect_format,
    extract_backbone,
)
from detco_bench.checkpoints.reference_forward import (
    DEFAULT_INPUT_SIZE,
    detectron2_reference_features,
    torchvision_features,
    verification_input,
)
from detco_bench.checkpoints.rename import (
    REASON_NUM_BATCHES,
    Renamed,
    detectron2_name,
    detectron2_payload,
    to_detectron2,
    to_torchvision,
)
from detco_bench.checkpoints.safe_load import read_checkpoint
from detco_bench.checkpoints.verify import (
    TOLERANCE,
    check_keys,
    compare_features,
    failure_summary,
    verify_detectron2,
    verify_torchvision,
)
from detco_bench.records import sha256_file  # the report's source checksum, which callers recompute

__all__ = [
    "ARCHS", "STAGES", "ArchSpec", "arch_of_depth", "detect_arch", "detectron2_expected_shapes",
    "torchvision_backbone_shapes",
    "LoadedBackbone", "load_backbone", "load_backbone_state_dict",
    "DETECTRON2_SETTINGS", "REPORT_SCHEMA", "REPORT_SCHEMA_VERSION", "TARGETS", "ConvertResult", "Target",
    "check_output_path", "convert_checkpoint", "report_path_for", "summarize_dropped",
    "build_detectron2_resnet", "detectron2_import_error",
    "DETCO_BENCH_FORMAT", "FORMATS", "REASON_CLASSIFIER", "REASON_DUPLICATE", "REASON_KEY_ENCODER",
    "REASON_NECK", "REASON_OTHER", "REASON_PROJ_HEAD", "REASON_QUEUE", "detect_format", "extract_backbone",
    "DEFAULT_INPUT_SIZE", "detectron2_reference_features", "torchvision_features", "verification_input",
    "REASON_NUM_BATCHES", "Renamed", "detectron2_name", "detectron2_payload", "to_detectron2", "to_torchvision",
    "read_checkpoint",
    "TOLERANCE", "check_keys", "compare_features", "failure_summary", "verify_detectron2", "verify_torchvision",
    "sha256_file",
]
