"""The task label: the name a result record or a reference row carries.

Grammar: ``TASK[@SUBSET][.VARIANT][+opts]``

  TASK     a registry task (``coco_fpn_1x``) or a linear-probe mode (``linear_fast``)
  SUBSET   the semi-supervised fraction of the training set (``1%``)
  VARIANT  what the run measured on, when it is not the task's real dataset: ``synthetic``,
           ``custom`` (user jsons) or, for linear probes, the dataset's name
  +opts    ``--opts`` changed the schedule or the model

Only a label without VARIANT and ``+opts`` names the measurement the paper's references hold;
anything else is never compared with the published numbers as if it were the same thing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

OPTS_SUFFIX = "+opts"
# The subset is matched before the variant's dot, so a fractional subset (``@2.5%``) stays one part.
_LABEL = re.compile(r"^(?P<base>[^@.]+)(?:@(?P<subset>\d+(?:\.\d+)?%))?(?:\.(?P<variant>.+))?$")


@dataclass(frozen=True)
class TaskLabel:
    """A parsed task label (see the module docstring for the grammar)."""

    base: str
    subset: str | None = None
    variant: str | None = None
    opts: bool = False

    @classmethod
    def parse(cls, text: str) -> TaskLabel:
        """``coco_fpn_12k@1%.synthetic+opts`` -> TaskLabel("coco_fpn_12k", "1%", "synthetic", True)."""
        rest, opts = (text[: -len(OPTS_SUFFIX)], True) if text.endswith(OPTS_SUFFIX) else (text, False)
        match = _LABEL.match(rest)
        if match is None:
            raise ValueError(f"not a task label: {text!r} (expected TASK[@SUBSET][.VARIANT][+opts])")
        return cls(match["base"], match["subset"], match["variant"], opts)

    @classmethod
    def try_parse(cls, text: str) -> TaskLabel | None:
        """`parse`, or None for text outside the grammar (records and reference files are not
        validated against it, so readers must cope with any string)."""
        try:
            return cls.parse(text)
        except ValueError:
            return None

    def __str__(self) -> str:
        text = self.base
        if self.subset:
            text += f"@{self.subset}"
        if self.variant:
            text += f".{self.variant}"
        return text + (OPTS_SUFFIX if self.opts else "")

    @property
    def reference_name(self) -> str:
        """The name the paper's reference rows use for this measurement: TASK[@SUBSET]."""
        return str(replace(self, variant=None, opts=False))

    @property
    def is_protocol_measurement(self) -> bool:
        """True when the run measured what the paper's references hold (real data, no --opts)."""
        return self.variant is None and not self.opts

    def with_variant(self, variant: str | None) -> TaskLabel:
        return replace(self, variant=variant)

    def with_opts(self, opts: bool = True) -> TaskLabel:
        return replace(self, opts=opts)
