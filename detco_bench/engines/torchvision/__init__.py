"""The torchvision transfer engine (``detco-bench transfer --engine torchvision``).

* `engine`: ``run(plan)``, the launcher, and the per-process `_worker`.
* `check`: what the engine refuses in an effective config, found at plan time (`config_problems`).
* `setup`: the setup phase (config, seed, data, model) -> a `Job`.
* `train`: solver, loop, checkpoints; `train.run.train` is the training phase.
* `evaluate`: COCO / VOC / Cityscapes scoring; `evaluate.run.evaluate` is the evaluation phase.
* `models`: Mask R-CNN / Keypoint R-CNN / RetinaNet FPN, Faster / Mask R-CNN C4 (Res5ROIHeads with
  the extra norm) and the FCN-16s-style semantic model, on our backbone weights.
* `data`: COCO json, VOC xml and Cityscapes datasets, transforms.v2 augmentation, batching.
* `settings`: reading the effective Detectron2-style config with Detectron2's defaults.
* `distributed`, `console`: the process group; ``log.txt`` and progress bars.

docs/torchvision_engine.md lists where the engine differs from Detectron2. This package imports
nothing itself, so the registry (`detco_bench.engines`) can find the engine without importing torch.
"""
