"""Verification of converted weights before they are written: every target key filled exactly once
with the right shape, and the same res2..res5 features as the source backbone on the same input.

The key check alone cannot see a swapped pair of same-shaped BN layers; the numerical check does.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from detco_bench.checkpoints.archs import STAGES, detectron2_expected_shapes, torchvision_backbone_shapes
from detco_bench.checkpoints.detectron2_resnet import build_detectron2_resnet, detectron2_import_error
from detco_bench.checkpoints.messages import examples, one_line
from detco_bench.checkpoints.reference_forward import (
    DEFAULT_INPUT_SIZE,
    detectron2_reference_features,
    torchvision_features,
    verification_input,
)
from detco_bench.checkpoints.rename import Renamed
from detco_bench.checkpoints.tensors import as_tensor
from detco_bench.errors import UserError

#: Relative tolerance of the numerical check: max|a - b| / max(1, max|a|) per stage (fp32).
TOLERANCE = 1e-4


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


def _numerical_section(method: str, source: Mapping[str, torch.Tensor],
                       run: Callable[[], Mapping[str, torch.Tensor]], x: torch.Tensor,
                       tolerance: float) -> dict[str, Any]:
    """The report section comparing `source` with the features `run` computes from the converted weights."""
    section: dict[str, Any] = {"method": method, "input_shape": list(x.shape), "dtype": "float32",
                               "tolerance": tolerance}
    try:
        converted = run()
    except Exception as exc:  # a missing / misshapen weight makes the converted network unrunnable
        section.update(passed=False, error=f"{type(exc).__name__}: {one_line(str(exc), 200)}", stages={})
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
            tensors = {k: as_tensor(v).clone() for k, v in renamed.weights.items()}
            result = model.load_state_dict(tensors, strict=False)
            missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
            if missing or result.unexpected_keys:
                raise KeyError(f"detectron2 load: missing {examples(missing)}, "
                               f"unexpected {examples(result.unexpected_keys)}")
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
            lines.append(f"{len(keys[name])} {name} key(s): {examples(keys[name], 5)}")
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
