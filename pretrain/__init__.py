"""Compact DetCo / MoCo v2 pretraining: models, augmentations, the training loop, checkpoints.

Nothing here imports the `detco_bench` harness.
"""

__version__ = "0.1.0"
