"""What a pretraining run did, in a few lines: the summary `detco-bench pretrain` ends with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunSummary:
    """The state of a run folder after `pretrain.train.train_run`.

    epochs: completed epochs (fractional when --max-steps stopped mid-epoch), of `planned_epochs`;
    final_loss: the loss of the last step (averaged over processes), None when unknown;
    img_per_s: training images per second over the whole run (all processes, resumes included);
    wall_clock_s: training time over the whole run, resumes included;
    bn_splits: BN groups per process (split-BN); already_finished: nothing was left to train.
    """

    out: Path
    checkpoint: Path
    method: str
    arch: str
    steps: int
    epochs: float
    planned_epochs: int
    final_loss: float | None
    img_per_s: float
    wall_clock_s: float
    bn_splits: int
    world_size: int
    bad_images: int
    already_finished: bool

    def lines(self) -> list[str]:
        """The summary as short lines for the terminal (the checkpoint line is `checkpoint: PATH`)."""
        done = "already finished" if self.already_finished else "finished"
        if self.epochs < self.planned_epochs:
            done = "stopped at --max-steps (--resume continues)"
        loss = "n/a" if self.final_loss is None else f"{self.final_loss:.4f}"
        bn = f"{self.bn_splits} BN group(s) per process x {self.world_size} process(es)"
        return [
            f"pretraining {done}: {self.method} {self.arch}, epochs {round(self.epochs, 2):g}/{self.planned_epochs} "
            f"({self.steps} steps), final loss {loss}",
            f"throughput {self.img_per_s:.1f} img/s, wall-clock {format_duration(self.wall_clock_s)}, {bn}"
            + (f", {self.bad_images} unreadable image(s) skipped" if self.bad_images else ""),
            f"checkpoint: {self.checkpoint}",
            f"output folder: {self.out}",
        ]


def format_duration(seconds: float) -> str:
    """1h 02m 03s / 2m 03s / 4.2s."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"
