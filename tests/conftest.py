"""Shared fixtures: tiny pretraining configs and the detectron2 skip marker."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from pretrain.config import PretrainConfig

torch.set_num_threads(2)


def tiny_config(**overrides: object) -> PretrainConfig:
    """A DetCo config small enough for a CPU step in well under a second."""
    base = dict(arch="resnet18", epochs=2, batch_size=4, queue_size=16, image_size=32, local_resize=48,
                patch_size=16, synthetic_images=12, synthetic_size=48, workers=0, log_every=1,
                randaugment=False)
    base.update(overrides)
    cfg = PretrainConfig(**base)  # type: ignore[arg-type]
    cfg.validate()
    return cfg


def save_random_resnet(path: Path, arch: str = "resnet18", seed: int = 0) -> Path:
    """A random-init torchvision ResNet state dict (the "torchvision" checkpoint format) at `path`."""
    import torchvision

    torch.manual_seed(seed)
    torch.save(getattr(torchvision.models, arch)().state_dict(), path)
    return path


def detectron2_available() -> bool:
    """detectron2 imports (a broken install, e.g. without pkg_resources, counts as missing)."""
    if importlib.util.find_spec("detectron2") is None:
        return False
    try:
        import detectron2.config  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return True


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skips = {}
    if not detectron2_available():
        skips["detectron2"] = pytest.mark.skip(
            reason="detectron2 is not importable here; install it from its official repository to run these tests")
    if not torch.cuda.is_available():
        skips["gpu"] = pytest.mark.skip(reason="no CUDA device")
    for item in items:
        for marker, skip in skips.items():
            if marker in item.keywords:
                item.add_marker(skip)
