"""Evaluation shared by the transfer engines.

* `cityscapes`: Cityscapes semantic / instance scoring through cityscapesScripts' own evaluation
  code (`SemanticWriter`, `InstanceWriter`), used by the Detectron2 and torchvision engines alike.
"""

from detco_bench.evaluation.cityscapes import InstanceWriter, SemanticWriter

__all__ = ["InstanceWriter", "SemanticWriter"]
