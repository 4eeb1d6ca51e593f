"""Solver, training loop, checkpoints and resume of the torchvision engine.

* `solver`: Detectron2's WarmupMultiStepLR (and WarmupCosineLR) as a pure function of the
  iteration (`lr_factor`), SGD with Detectron2's parameter groups (`build_optimizer`).
* `checkpoint`: ``model_<iter:07d>.pth`` every CHECKPOINT_PERIOD iterations and ``model_final.pth``,
  named in ``last_checkpoint``; a resumed run continues at exactly the saved iteration.
* `metrics_log`: ``metrics.jsonl`` and TensorBoard (``tb/``).
* `loop`: the training loop (AMP, loss checks, logging, TEST.EVAL_PERIOD evaluations, the
  `after_step` hook) and PreciseBN.
* `run`: the training phase of a job (`train`): data, optimizer, resume, loop, PreciseBN passes,
  final checkpoint.
"""
