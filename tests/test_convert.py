"""`detco-bench convert`: format detection, dropped keys, verification that can fail, safety."""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision
from typer.testing import CliRunner

from detco_bench import checkpoints
from detco_bench.cli import app
from detco_bench.errors import UserError

runner = CliRunner()
SIZE = ["--input-size", "64"]


def _perturbed(arch: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A torchvision ResNet state dict (fc included) whose BN layers all differ, so that a swapped
    or misplaced BN changes the features (fresh BNs are all identity and would hide it)."""
    torch.manual_seed(seed)
    model = getattr(torchvision.models, arch)(weights=None)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.2)
            m.num_batches_tracked.fill_(1000)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Any:
    # The checks run tiny single-image forwards; on a shared 2-core machine two OpenMP threads
    # mostly wait for each other (10x slower here), one thread does not.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def r18() -> dict[str, torch.Tensor]:
    return _perturbed("resnet18")


def _backbone(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in sd.items() if not k.startswith("fc.")}


def _prefixed(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    # Shared tensors: torch.save stores a storage once, which keeps the test files small.
    return {prefix + k: v for k, v in sd.items()}


# Builders of every supported input format from one torchvision state dict `sd` (fc included).
def _detco_bench(sd: dict[str, torch.Tensor], with_backbone: bool = True) -> dict[str, Any]:
    model = _prefixed(_backbone(sd), "encoder_q.backbone.")
    model |= _prefixed(_backbone(sd), "encoder_k.backbone.")
    model |= {"encoder_q.global_heads.0.0.weight": torch.randn(16, 64),
              "encoder_q.local_heads.0.0.weight": torch.randn(16, 64),
              "encoder_k.global_heads.0.0.weight": torch.randn(16, 64),
              "queue_global": torch.randn(4, 16, 8), "queue_local": torch.randn(4, 16, 8),
              "queue_ptr": torch.zeros(1, dtype=torch.long)}
    ck: dict[str, Any] = {"format": "detco-bench.pretrain", "format_version": 1, "method": "detco",
                          "arch": "resnet18", "epoch": 3, "step": 30, "config": {"lr": 0.03}, "model": model,
                          "optimizer": {"state": {}, "param_groups": []},
                          "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state()},
                          "finished": True}
    if with_backbone:
        ck["backbone"] = _backbone(sd)
    return ck


def _moco(sd: dict[str, torch.Tensor]) -> dict[str, Any]:
    state = _prefixed(_backbone(sd), "module.encoder_q.")
    state |= {"module.encoder_q.fc.0.weight": torch.randn(512, 512),  # MoCo v2 MLP head
              "module.encoder_q.fc.0.bias": torch.randn(512),
              "module.encoder_q.fc.2.weight": torch.randn(128, 512),
              "module.encoder_q.fc.2.bias": torch.randn(128)}
    state |= _prefixed(_backbone(sd), "module.encoder_k.")
    state |= {"module.encoder_k.fc.0.weight": torch.randn(512, 512),
              "module.queue": torch.randn(128, 64), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}
    return {"epoch": 200, "arch": "resnet18", "state_dict": state, "optimizer": {}}


def _openselfsup(sd: dict[str, torch.Tensor]) -> dict[str, Any]:
    # OpenSelfSup MoCo: encoder_q = Sequential(backbone, neck) and `backbone` is encoder_q[0] again.
    state = _prefixed(_backbone(sd), "encoder_q.0.") | _prefixed(_backbone(sd), "backbone.")
    state |= {"encoder_q.1.mlp.0.weight": torch.randn(32, 512),
              "encoder_q.1.mlp.2.weight": torch.randn(16, 32)}
    state |= _prefixed(_backbone(sd), "encoder_k.0.") | {"encoder_k.1.mlp.0.weight": torch.randn(32, 512)}
    state |= {"queue": torch.randn(16, 64), "queue_ptr": torch.zeros(1, dtype=torch.long)}
    return {"meta": {"epoch": 200, "iter": 1000, "mmcv_version": "0.4.3"}, "state_dict": state}


def _mmselfsup(sd: dict[str, torch.Tensor]) -> dict[str, Any]:
    state = _prefixed(_backbone(sd), "backbone.") | {"neck.mlp.0.weight": torch.randn(32, 512),
                                                       "head.predictor.0.weight": torch.randn(16, 16)}
    state |= _prefixed(_backbone(sd), "momentum_encoder.module.0.")
    state |= {"queue": torch.randn(16, 64), "queue_ptr": torch.zeros(1, dtype=torch.long)}
    return {"meta": {"mmselfsup_version": "1.0.0"}, "state_dict": state}


def _torchvision(sd: dict[str, torch.Tensor]) -> dict[str, Any]:
    return {k: v.clone() for k, v in sd.items()}


def _torchvision_ddp(sd: dict[str, torch.Tensor]) -> dict[str, Any]:
    return {"state_dict": _prefixed(sd, "module."), "epoch": 90}


def _torchvision_legacy(sd: dict[str, torch.Tensor]) -> dict[str, Any]:
    # The original torchvision ImageNet weights predate num_batches_tracked.
    return {k: v.clone() for k, v in sd.items() if not k.endswith("num_batches_tracked")}


BUILDERS: dict[str, tuple[Callable[[dict[str, torch.Tensor]], dict[str, Any]], str]] = {
    "detco-bench": (_detco_bench, "detco-bench"),
    "detco-bench-model-only": (lambda sd: _detco_bench(sd, with_backbone=False), "detco-bench"),
    "moco": (_moco, "moco"),
    "openselfsup": (_openselfsup, "openselfsup"),
    "mmselfsup": (_mmselfsup, "openselfsup"),
    "detco-release": (lambda sd: {"state_dict": _prefixed(_backbone(sd), "")}, "torchvision"),
    "torchvision": (_torchvision, "torchvision"),
    "torchvision-ddp": (_torchvision_ddp, "torchvision"),
    "torchvision-legacy": (_torchvision_legacy, "torchvision"),
}


def _save(tmp_path: Path, obj: Any, name: str = "ck.pth") -> Path:
    path = tmp_path / name
    torch.save(obj, path)
    return path


def _invoke(*args: str | Path) -> Any:
    return runner.invoke(app, ["convert", *[str(a) for a in args]])


def _report(out: Path) -> dict[str, Any]:
    return json.loads(checkpoints.report_path_for(out).read_text())


@pytest.mark.parametrize("target", ["detectron2", "torchvision"])
@pytest.mark.parametrize("kind", list(BUILDERS))
def test_every_format_round_trips(tmp_path: Path, r18: dict[str, torch.Tensor], kind: str,
                                  target: str) -> None:
    build, fmt = BUILDERS[kind]
    ck = _save(tmp_path, build(r18))
    out = tmp_path / ("r18.pkl" if target == "detectron2" else "r18_tv.pth")
    result = _invoke(ck, "--to", target, "--out", out, *SIZE)
    assert result.exit_code == 0, result.output
    assert f"format {fmt} (detected" in " ".join(result.stdout.split())
    report = _report(out)
    assert report["passed"] and report["source"]["format"] == fmt and report["source"]["arch"] == "resnet18"
    assert report["source"]["sha256"] == checkpoints.sha256_file(ck)
    stages = report["verification"]["numerical"]["stages"]
    assert set(stages) == {"res2", "res3", "res4", "res5"}
    assert all(s["rel_diff"] <= 1e-4 for s in stages.values())
    expected_nbt = 0 if kind == "torchvision-legacy" else 1000
    if target == "detectron2":
        with open(out, "rb") as f:
            payload = pickle.load(f)  # our own output
        assert payload["__author__"] == "detco-bench" and payload["matching_heuristics"] is True
        weights = payload["model"]
        assert set(weights) == set(checkpoints.detectron2_expected_shapes("resnet18"))
        assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in weights.values())
        np.testing.assert_array_equal(weights["res3.0.conv2.norm.running_var"],
                                      r18["layer2.0.bn2.running_var"])
        np.testing.assert_array_equal(weights["res4.0.shortcut.weight"], r18["layer3.0.downsample.0.weight"])
        np.testing.assert_array_equal(weights["stem.conv1.norm.bias"], r18["bn1.bias"])
        assert report["detectron2_config"]["MODEL.RESNETS.STRIDE_IN_1X1"] is False
    else:
        loaded = torch.load(out, weights_only=True)
        assert set(loaded) == set(_backbone(r18))
        for k, v in _backbone(r18).items():
            if k.endswith("num_batches_tracked"):
                assert int(loaded[k]) == expected_nbt
            else:
                assert torch.equal(loaded[k], v), k
        model = torchvision.models.resnet18()
        missing, unexpected = model.load_state_dict(loaded, strict=False)
        assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected


def test_dropped_keys_are_reported_with_reasons(tmp_path: Path, r18: dict[str, torch.Tensor]) -> None:
    out = tmp_path / "moco.pkl"
    result = _invoke(_save(tmp_path, _moco(r18)), "--to", "detectron2", "--out", out, *SIZE)
    assert result.exit_code == 0, result.output
    groups = {g["reason"]: g for g in _report(out)["dropped"]}
    key_encoder = groups[checkpoints.REASON_KEY_ENCODER]
    assert key_encoder["count"] == len(_backbone(r18)) + 1
    assert "encoder_k.layer1.0.conv1.weight" in key_encoder["keys"]
    assert groups[checkpoints.REASON_QUEUE]["keys"] == ["queue", "queue_ptr"]
    assert groups[checkpoints.REASON_PROJ_HEAD]["keys"] == [f"encoder_q.fc.{i}.{p}" for i in (0, 2)
                                                        for p in ("bias", "weight")]
    conversion = _report(out)["dropped_in_conversion"]
    assert conversion[0]["reason"] == checkpoints.REASON_NUM_BATCHES and conversion[0]["count"] == 20
    assert "momentum key encoder" in result.stdout and "queue" in result.stdout

    _, arch, fmt, dropped = checkpoints.load_backbone_state_dict(_save(tmp_path, _torchvision(r18), "tv.pth"))
    assert (arch, fmt) == ("resnet18", "torchvision")
    assert dropped == {"fc.weight": checkpoints.REASON_CLASSIFIER, "fc.bias": checkpoints.REASON_CLASSIFIER}
    _, _, fmt, dropped = checkpoints.load_backbone_state_dict(_save(tmp_path, _detco_bench(r18), "ours.pth"))
    assert fmt == "detco-bench" and dropped["queue_local"] == checkpoints.REASON_QUEUE
    assert dropped["encoder_q.global_heads.0.0.weight"] == checkpoints.REASON_PROJ_HEAD
    assert dropped["encoder_k.backbone.conv1.weight"] == checkpoints.REASON_KEY_ENCODER
    assert dropped["encoder_q.backbone.conv1.weight"] == checkpoints.REASON_DUPLICATE


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"])
def test_arch_detection_and_independent_detectron2_key_set(arch: str) -> None:
    with torch.device("meta"):
        sd = getattr(torchvision.models, arch)(weights=None).state_dict()
    assert checkpoints.detect_arch(sd) == arch
    renamed = {checkpoints.detectron2_name(k): tuple(v.shape) for k, v in sd.items()
               if not k.startswith("fc.") and checkpoints.detectron2_name(k) is not None}
    assert renamed == checkpoints.detectron2_expected_shapes(arch)
    with pytest.raises(UserError, match="unsupported ResNet"):
        last = checkpoints.ARCHS[arch].blocks[3] - 1
        checkpoints.detect_arch({k: v for k, v in sd.items() if not k.startswith(f"layer4.{last}.")})


def test_resnet50_bottleneck_end_to_end(tmp_path: Path) -> None:
    sd = _perturbed("resnet50", seed=1)
    state = _prefixed(_backbone(sd), "backbone.") | {"neck.fc.weight": torch.randn(2, 2)}
    ck = _save(tmp_path, {"state_dict": state})
    out = tmp_path / "r50.pkl"
    result = _invoke(ck, "--to", "detectron2", "--out", out, *SIZE)
    assert result.exit_code == 0, result.output
    report = _report(out)
    assert report["source"]["arch"] == "resnet50" and report["verification"]["keys"]["expected"] == 265
    assert "MODEL.RESNETS.RES2_OUT_CHANNELS" not in report["detectron2_config"]


@pytest.mark.parametrize("variant", ["torch.save", "pickle"])
def test_malicious_pickle_is_refused_and_never_executed(tmp_path: Path, variant: str) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __init__(self, path: Path) -> None:
            self.path = path

        def __reduce__(self) -> tuple[Any, tuple[str, str]]:
            return (open, (str(self.path), "w"))  # unpickling it creates the file

    def dump(path: Path, target: Path) -> None:
        obj = {"state_dict": {"conv1.weight": torch.zeros(1)}, "x": Payload(target)}
        if variant == "torch.save":
            torch.save(obj, path)
        else:
            with open(path, "wb") as f:
                pickle.dump(obj, f)

    # The crafted file is live: unpickling a twin of it creates its marker.
    armed = tmp_path / "armed"
    dump(tmp_path / "twin.pth", armed)
    if variant == "torch.save":
        torch.load(tmp_path / "twin.pth", weights_only=False)
    else:
        pickle.loads((tmp_path / "twin.pth").read_bytes())
    assert armed.exists()

    ck = tmp_path / "evil.pth"
    dump(ck, marker)
    result = _invoke(ck, "--to", "detectron2", "--out", tmp_path / "o.pkl")
    assert result.exit_code == 2, result.output
    assert "refusing to unpickle" in result.stderr and "arbitrary code execution" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not marker.exists() and not (tmp_path / "o.pkl").exists()


def _truncated(tmp_path: Path, r18: dict[str, torch.Tensor]) -> Path:
    good = _save(tmp_path, _torchvision(r18), "good.pth")
    (tmp_path / "bad.pth").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    return tmp_path / "bad.pth"


def _truncated_legacy(tmp_path: Path, r18: dict[str, torch.Tensor]) -> Path:
    torch.save(_backbone(r18), tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    (tmp_path / "bad.pth").write_bytes((tmp_path / "legacy.pth").read_bytes()[:300])
    return tmp_path / "bad.pth"


def _write(data: bytes) -> Callable[[Path, dict[str, torch.Tensor]], Path]:
    def make(tmp_path: Path, r18: dict[str, torch.Tensor]) -> Path:
        (tmp_path / "bad.pth").write_bytes(data)
        return tmp_path / "bad.pth"
    return make


def _vit_keys() -> dict[str, torch.Tensor]:
    keys = ["cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight",
            "blocks.0.mlp.fc1.weight"]
    return {k: torch.zeros(2) for k in keys}


def _vit(tmp_path: Path, r18: dict[str, torch.Tensor]) -> Path:
    return _save(tmp_path, {"state_dict": _vit_keys()}, "vit.pth")


BAD_INPUTS: dict[str, tuple[Callable[[Path, dict[str, torch.Tensor]], Path], str]] = {
    "truncated": (_truncated, "truncated"),
    "truncated-legacy": (_truncated_legacy, "truncated"),
    "empty": (_write(b""), "empty"),
    "garbage": (_write(b"definitely not a checkpoint" * 10), "not a PyTorch checkpoint"),
    "detectron2-pkl": (_write(pickle.dumps({"model": {"stem.conv1.weight": np.zeros(3)}, "__author__": "x"})),
                       "a plain Python pickle"),
    "vit": (_vit, "found 5 keys like 'cls_token'"),
    "mmselfsup-vit": (lambda p, sd: _save(p, {"state_dict": _prefixed(_vit_keys(), "backbone.")}),
                      "not a ResNet checkpoint"),
    "missing": (lambda p, sd: p / "nowhere.pth", "checkpoint not found"),
    "tensor": (lambda p, sd: _save(p, torch.zeros(3)), "not a ResNet checkpoint"),
    "extra-backbone-key": (lambda p, sd: _save(p, _torchvision(sd) | {"layer1.0.se.fc.w": torch.ones(1)}),
                           "does not have"),
    "incomplete": (lambda p, sd: _save(p, {k: v for k, v in sd.items() if k != "layer3.1.bn2.weight"}),
                   "missing 1 of"),
    "3x3-stem": (lambda p, sd: _save(p, _torchvision(sd) | {"conv1.weight": torch.ones(64, 3, 3, 3)}),
                 "shapes"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_inputs_exit_2_with_one_line(tmp_path: Path, r18: dict[str, torch.Tensor], case: str) -> None:
    make, message = BAD_INPUTS[case]
    result = _invoke(make(tmp_path, r18), "--to", "torchvision", "--out", tmp_path / "o.pth")
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert "Traceback" not in result.output and not (tmp_path / "o.pth").exists()


def test_format_override_and_bad_output_paths(tmp_path: Path, r18: dict[str, torch.Tensor]) -> None:
    moco = _save(tmp_path, _moco(r18), "moco.pth")
    out = tmp_path / "o.pth"
    result = _invoke(moco, "--to", "torchvision", "--out", out, "--format", "moco", *SIZE)
    assert result.exit_code == 0 and _report(out)["source"]["format_detected"] is False
    result = _invoke(moco, "--to", "torchvision", "--out", tmp_path / "x.pth", "--format", "torchvision")
    assert result.exit_code == 2 and "--format torchvision needs" in result.stderr
    result = _invoke(moco, "--to", "detectron2", "--out", tmp_path / "x.pth")
    assert result.exit_code == 2 and "must end in .pkl" in result.stderr
    result = _invoke(moco, "--to", "torchvision", "--out", moco, "--force")
    assert result.exit_code == 2 and "is the input checkpoint" in result.stderr


def test_existing_output_needs_force(tmp_path: Path, r18: dict[str, torch.Tensor]) -> None:
    ck = _save(tmp_path, _torchvision(r18))
    out = tmp_path / "r18.pkl"
    out.write_bytes(b"precious")
    result = _invoke(ck, "--to", "detectron2", "--out", out, *SIZE)
    assert result.exit_code == 2 and "output exists" in result.stderr and "--force" in result.stderr
    assert out.read_bytes() == b"precious" and not checkpoints.report_path_for(out).exists()
    result = _invoke(ck, "--to", "detectron2", "--out", out, "--force", *SIZE)
    assert result.exit_code == 0, result.output
    assert out.read_bytes() != b"precious" and _report(out)["passed"]
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temp files


def _swap_bn(key: str) -> str | None:
    """A renamer bug that keeps every key and shape: layer2.0's bn1 and bn2 trade places."""
    for a, b in (("layer2.0.bn1.", "layer2.0.bn2."), ("layer2.0.bn2.", "layer2.0.bn1.")):
        if key.startswith(a):
            return ORIGINAL_NAME(b + key[len(a):])
    return ORIGINAL_NAME(key)


ORIGINAL_NAME = checkpoints.detectron2_name
BROKEN_RENAMERS: dict[str, tuple[Callable[[str], str | None], list[str]]] = {
    "swapped-bn": (_swap_bn, ["res3 features differ"]),
    "dropped-key": (lambda k: None if k == "layer4.1.conv2.weight" else ORIGINAL_NAME(k),
                    ["1 missing key(s): 'res5.1.conv2.weight'", "could not run"]),
    "collision": (lambda k: "res2.0.conv1.weight" if k == "layer1.0.conv2.weight" else ORIGINAL_NAME(k),
                  ["1 missing key(s): 'res2.0.conv2.weight'", "1 duplicated key(s): 'res2.0.conv1.weight'"]),
    "stray-key": (lambda k: "stem.conv1.extra" if k == "bn1.weight" else ORIGINAL_NAME(k),
                  ["1 unexpected key(s): 'stem.conv1.extra'"]),
}


@pytest.mark.parametrize("bug", list(BROKEN_RENAMERS))
def test_broken_conversion_fails_verification(tmp_path: Path, r18: dict[str, torch.Tensor],
                                              monkeypatch: pytest.MonkeyPatch, bug: str) -> None:
    renamer, messages = BROKEN_RENAMERS[bug]
    monkeypatch.setattr(checkpoints.rename, "detectron2_name", renamer)
    out = tmp_path / "broken.pkl"
    result = _invoke(_save(tmp_path, _moco(r18)), "--to", "detectron2", "--out", out, *SIZE)
    assert result.exit_code == 1, result.output
    text = " ".join(result.stdout.split())
    assert "verification FAILED" in text and all(m in text for m in messages), text
    assert not out.exists()  # a conversion that failed verification is never written
    report = _report(out)
    assert report["passed"] is False and report["target"]["written"] is False
    if bug == "swapped-bn":
        stages = report["verification"]["numerical"]["stages"]
        assert stages["res2"]["passed"] and not stages["res3"]["passed"]
        assert report["verification"]["keys"]["passed"]  # the key check alone cannot see this bug


def test_broken_torchvision_output_fails_verification(tmp_path: Path, r18: dict[str, torch.Tensor],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    original = checkpoints.to_torchvision

    def lossy(sd: dict[str, torch.Tensor]) -> checkpoints.Renamed:
        return original({k: v for k, v in sd.items() if k != "layer1.1.bn1.running_mean"})

    monkeypatch.setattr(checkpoints.convert, "to_torchvision", lossy)
    out = tmp_path / "tv.pth"
    result = _invoke(_save(tmp_path, _torchvision(r18)), "--to", "torchvision", "--out", out, *SIZE)
    assert result.exit_code == 1 and "layer1.1.bn1.running_mean" in result.stdout
    assert not out.exists()


def test_loader_notes_and_casts(tmp_path: Path, r18: dict[str, torch.Tensor]) -> None:
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in _torchvision(r18).items()}
    loaded = checkpoints.load_backbone(_save(tmp_path, {"arch": "resnet50", "state_dict": half}))
    assert loaded.arch == "resnet18" and loaded.state_dict["conv1.weight"].dtype == torch.float32
    assert any("float16" in n for n in loaded.notes)
    assert any("says arch 'resnet50'" in n for n in loaded.notes)
    unfinished = _detco_bench(r18) | {"finished": False}
    loaded = checkpoints.load_backbone(_save(tmp_path, unfinished, "run.pth"))
    assert loaded.meta["method"] == "detco" and any("unfinished" in n for n in loaded.notes)


def test_reference_forward_matches_torchvision_semantics(r18: dict[str, torch.Tensor]) -> None:
    # Independent of the CLI: the plain-torch detectron2 forward and torchvision agree, and a
    # STRIDE_IN_1X1-style mistake (stride on the wrong conv) would not: shapes and values differ.
    sd = _backbone(r18)
    x = checkpoints.verification_input(64)
    tv = checkpoints.torchvision_features(sd, "resnet18", x)
    d2 = checkpoints.detectron2_reference_features(checkpoints.to_detectron2(sd).weights, "resnet18", x)
    assert all(torch.allclose(tv[s], d2[s], atol=1e-5) for s in checkpoints.STAGES)
    assert [tuple(t.shape[-3:]) for t in tv.values()] == [(64, 16, 16), (128, 8, 8), (256, 4, 4), (512, 2, 2)]


@pytest.mark.detectron2
@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_detectron2_backbone_matches(tmp_path: Path, arch: str) -> None:
    sd = _perturbed(arch, seed=2)
    out = tmp_path / f"{arch}.pkl"
    ck = _save(tmp_path, _moco(sd) if arch == "resnet18" else _torchvision(sd))
    result = checkpoints.convert_checkpoint(ck, "detectron2", out, input_size=64, use_detectron2=True)
    verification = result.report["verification"]
    assert result.passed, checkpoints.failure_summary(verification)
    assert verification["detectron2"]["used"] and "build_resnet_backbone" in verification["keys"]["reference"]
    # The architecture-derived key set is exactly detectron2's own.
    model = checkpoints.build_detectron2_resnet(arch)
    d2_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()
                 if not k.endswith("num_batches_tracked")}
    assert d2_shapes == checkpoints.detectron2_expected_shapes(arch)
    # And the plain-torch reference forward reproduces detectron2's forward.
    weights = checkpoints.to_detectron2(_backbone(sd)).weights
    model.load_state_dict(weights, strict=False)
    x = checkpoints.verification_input(64)
    with torch.no_grad():
        real = model(x)
    ref = checkpoints.detectron2_reference_features(weights, arch, x)
    assert all(torch.allclose(real[s], ref[s], atol=1e-4, rtol=1e-4) for s in checkpoints.STAGES)


@pytest.mark.detectron2
def test_detectron2_checkpointer_loads_the_pkl_into_a_detector(tmp_path: Path,
                                                               r18: dict[str, torch.Tensor]) -> None:
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    out = tmp_path / "r18.pkl"
    assert checkpoints.convert_checkpoint(_save(tmp_path, _moco(r18)), "detectron2", out, input_size=64).passed
    cfg = get_cfg()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[32], [64], [128], [256], [512]]
    cfg.MODEL.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 2
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 7
    model = build_model(cfg)
    DetectionCheckpointer(model).load(str(out))
    bottom_up = model.backbone.bottom_up.state_dict()
    assert torch.equal(bottom_up["res3.0.conv2.norm.running_var"], r18["layer2.0.bn2.running_var"])
    assert torch.equal(bottom_up["stem.conv1.weight"], r18["conv1.weight"])
