"""The Detectron2 engine: our train-net equivalent for the MoCo / DetCo transfer protocol.

What MoCo's ``detection/train_net.py`` does, written for this harness. The registry
(`detco_bench.engines`) imports `engine` only when detectron2 is importable, so every module here
imports detectron2 at module level; this package itself imports nothing.

* `heads`: `Res5ROIHeadsExtraNorm` (detectron2's C4 res5 RoI head followed by one extra
  normalization layer, ``cfg.MODEL.RESNETS.NORM``, as the MoCo paper describes) and
  `FCNDilatedHead` (the FCN-16s-style semantic segmentation head of ``cityscapes_sem``), registered
  in detectron2's registries by `register_components`.
* `config`: detectron2's CfgNode from the plan's effective config (`build_cfg`).
* `datasets`: the plan's `DatasetSpec`s registered in detectron2's catalogs (COCO json, VOC via
  detectron2's pascal_voc loader, Cityscapes with our own loaders).
* `evaluators`: Cityscapes instance / semantic evaluators on cityscapesScripts
  (`detco_bench.evaluation`; detectron2's own Cityscapes modules are not used), detectron2's
  results -> record metrics.
* `trainer`: DefaultTrainer with the evaluators by dataset kind (COCOEvaluator with the official
  pycocotools, PascalVOCDetectionEvaluator, Cityscapes) and the semantic-segmentation data pipeline;
  PreciseBN, periodic checkpoints and resume come with DefaultTrainer.
* `engine`: ``run(plan)``: one process (CPU or 1 GPU), ``detectron2.engine.launch`` for
  ``--gpus N`` and multi-machine jobs, or the torch.distributed environment submitit sets up in a
  Slurm task; returns the path of the result record (written by global rank 0).
"""
