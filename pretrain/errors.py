"""The two ways a pretraining run stops early on purpose.

- `PretrainInputError`: the user asked for something invalid (the CLI exits with code 2).
- `NonFiniteLossError`: the run itself failed, a loss became inf or NaN (the CLI exits with code 1).
"""

from __future__ import annotations


class PretrainInputError(ValueError):
    """Invalid configuration, data location or output folder for a pretraining run."""


class NonFiniteLossError(RuntimeError):
    """A loss term became inf or NaN; training stopped before that step was applied or logged.

    step: the 1-based step whose forward pass produced it (as in metrics.jsonl);
    term: the first non-finite loss term ("res5/g2g", ...), or "loss" when only the total is;
    value: that term's value (on this process);
    checkpoint_step: the step of the last checkpoint written, None when there is none.
    """

    def __init__(self, step: int, term: str, value: float, checkpoint_step: int | None) -> None:
        self.step, self.term, self.value, self.checkpoint_step = step, term, value, checkpoint_step
        if checkpoint_step is None:
            after = "no checkpoint was written yet"
        else:
            after = f"checkpoint.pth still holds step {checkpoint_step}; --resume continues from there"
        super().__init__(f"loss became {value} at step {step} (term {term}); stopped before writing it, {after}")
