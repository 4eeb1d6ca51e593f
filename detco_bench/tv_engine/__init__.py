"""The torchvision transfer engine's parts (``detco-bench transfer --engine torchvision``).

* `settings`: reading the effective Detectron2-style config, with Detectron2's defaults for the
  keys a task's YAML chain does not spell out.
* `models`: Mask R-CNN / Keypoint R-CNN / RetinaNet FPN, Faster / Mask R-CNN C4 (Res5ROIHeads
  with the extra norm) and the FCN-16s-style semantic model, on our backbone weights.
* `data`: COCO json, VOC xml and Cityscapes datasets, transforms.v2 augmentation, batching.
* `evaluate`: inference and the official scorers (pycocotools, VOC07/COCO-style VOC AP,
  cityscapesScripts).
* `train`: the solver (Detectron2's WarmupMultiStepLR), the training loop, checkpoints, resume.

`detco_bench.engines.torchvision_engine.run(plan)` ties them together; docs/torchvision_engine.md
lists where the engine differs from Detectron2.
"""
