"""detco-bench: turn self-supervised ResNet checkpoints into detection, segmentation and
classification benchmark numbers, compared with the published DetCo / MoCo v2 results."""

__version__ = "0.1.0"
