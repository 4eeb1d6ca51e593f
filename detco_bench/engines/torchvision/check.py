"""What the torchvision engine refuses in an effective config, found at plan time.

The engine refuses settings it cannot reproduce (SOLVER.CLIP_GRADIENTS, an unknown INPUT.CROP.TYPE,
a RetinaNet head other than 4 convs, ...) where it builds the part that reads them. `config_problems`
builds those parts with nothing loaded or written, each refusal becoming one line: the training
augmentation (no records), the model on the meta device (no memory, no weights), its optimizer and
the lr schedule; and it adds the settings no part reads but whose Detectron2 model the engine does
not build (`weights_map.unbuilt_settings`: MODEL.RESNETS.STRIDE_IN_1X1 True, a ResNeXt, ...), which
would otherwise train torchvision's model in their place without a word. So ``transfer --dry-run``
lists them, and a run stops before its folder exists instead of with a traceback inside the engine.
What only the data can tell (class or keypoint counts that do not match the dataset) is still
checked when the run sets up.
"""

from __future__ import annotations

from typing import Any

import torch

from detco_bench.checkpoints import arch_of_depth
from detco_bench.engines.torchvision.data.datasets import TrainDataset
from detco_bench.engines.torchvision.data.records import DatasetMeta
from detco_bench.engines.torchvision.models.build import build_model
from detco_bench.engines.torchvision.settings import Settings, class_count_key, keypoint_on, mask_on
from detco_bench.engines.torchvision.train.solver import build_optimizer, lr_factor
from detco_bench.engines.torchvision.weights_map import unbuilt_settings


def config_problems(config: dict[str, Any], family: str) -> list[str]:
    """One line per part of the engine that refuses `config` for a run of task family `family`."""
    s = Settings(config)
    keypoints = keypoint_on(family, s)

    def augmentation() -> None:
        TrainDataset([], s, DatasetMeta(classes=[]), task="sem_seg" if family == "cityscapes_sem" else "detection",
                     mask_on=mask_on(family, s), keypoint_on=keypoints)

    def model_and_optimizer() -> None:
        with torch.device("meta"):
            model = build_model(family, s, arch_of_depth(s.int("MODEL.RESNETS.DEPTH")), None,
                                num_classes=s.int(class_count_key(family)),
                                num_keypoints=s.int("MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS") if keypoints else None)
        build_optimizer(model, s)

    problems = []
    for build in (augmentation, model_and_optimizer, lambda: lr_factor(0, s)):
        try:
            build()
        except ValueError as exc:
            problems.append(str(exc))
    # Settings whose model the engine would not build, though nothing above reads them.
    problems += [f"the torchvision engine does not build {what}" for what in unbuilt_settings(family, s)]
    return [p if "torchvision" in p else f"the torchvision engine: {p}" for p in problems]
