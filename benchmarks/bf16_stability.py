"""Stress test of the bf16 + channels_last pretraining step on the CPU: how many runs go wrong?

Each run is a fresh process (the bad gradients came from uninitialised memory, so a process's heap
history decides whether a run fails) training the tiny CI config (ResNet-18, 32-px views, 16-px
patches) for --steps steps through `pretrain.train.train`. A run counts as
  ok          every loss finite, every weight finite and below 100 in magnitude;
  corrupted   every loss finite, but some weight is not finite or is huge (garbage was applied);
  non-finite  training stopped with NonFiniteLossError (the step and the term are printed).
With --without-guard the fp32 guard of pretrain.precision is switched off in the runs, which is
the code before the fix as far as the convolution is concerned. With --load, a CPU-bound process
(matmuls) runs beside the runs, as on a busy CI machine.

    python benchmarks/bf16_stability.py [--runs 10] [--steps 20] [--threads 2] [--without-guard] [--load]
    python benchmarks/bf16_stability.py --compare   # both, one after the other
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import multiprocessing
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WEIGHT_LIMIT = 100.0  # freshly initialised ResNet-18 weights and 20 SGD steps stay far below this


def one_run(steps: int, threads: int, guard: bool) -> dict[str, object]:
    """Train the tiny config for `steps` bf16 steps in this process; the outcome as a dict."""
    import torch

    sys.path.insert(0, str(REPO))
    import pretrain.detco
    from pretrain.errors import NonFiniteLossError
    from pretrain.train import load_checkpoint, train
    from tests.conftest import tiny_config

    torch.set_num_threads(threads)  # after the conftest import, which sets its own
    if not guard:
        pretrain.detco.guard_strided_convs = lambda module: 0  # type: ignore[assignment]
    cfg = tiny_config(epochs=1, synthetic_images=4 * steps, amp=True, channels_last=True)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            ckpt = train(cfg, Path(tmp) / "run", show_progress=False)
        except NonFiniteLossError as exc:
            return {"outcome": "non-finite", "step": exc.step, "term": exc.term}
        losses = [json.loads(x)["loss"] for x in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
        weights = [v for k, v in load_checkpoint(ckpt)["model"].items()
                   if v.is_floating_point() and "running_" not in k]
    worst = max(float(w.abs().max()) for w in weights)
    outcome = "ok" if math.isfinite(worst) and worst < WEIGHT_LIMIT else "corrupted"
    return {"outcome": outcome, "max_abs_weight": worst, "final_loss": losses[-1]}


def _burn(stop_after_s: float) -> None:
    import torch

    torch.set_num_threads(1)
    a = torch.randn(512, 512)
    end = time.time() + stop_after_s
    while time.time() < end:
        a = torch.tanh(a @ a)


def series(runs: int, steps: int, threads: int, guard: bool, load: bool) -> collections.Counter[str]:
    """`runs` fresh processes of `one_run`; prints one line per run and returns the outcome counts."""
    label = "with fp32 guard" if guard else "WITHOUT fp32 guard"
    print(f"== {runs} runs x {steps} bf16 steps, {threads} thread(s), {label}{', under load' if load else ''}",
          flush=True)
    burner = None
    if load:
        burner = multiprocessing.get_context("spawn").Process(target=_burn, args=(24 * 3600,), daemon=True)
        burner.start()
    counts: collections.Counter[str] = collections.Counter()
    finals: collections.Counter[str] = collections.Counter()
    try:
        for i in range(runs):
            started = time.time()
            cmd = [sys.executable, "-W", "ignore", __file__, "--child", "--steps", str(steps),
                   "--threads", str(threads), *([] if guard else ["--without-guard"])]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
            if proc.returncode:
                print(proc.stderr[-2000:], file=sys.stderr)
                raise SystemExit(f"run {i} crashed (exit {proc.returncode})")
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            counts[result["outcome"]] += 1
            if "final_loss" in result:
                finals[f"{result['final_loss']:.6f}"] += 1
            print(f"  run {i:2d} {time.time() - started:5.1f}s  {json.dumps(result)}", flush=True)
    finally:
        if burner is not None:
            burner.terminate()
            burner.join()
    print(f"  -> {dict(counts)}; distinct final losses among finite runs: {len(finals)}", flush=True)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--without-guard", action="store_true")
    parser.add_argument("--load", action="store_true")
    parser.add_argument("--compare", action="store_true", help="without the guard, then with it")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_run(args.steps, args.threads, guard=not args.without_guard)))
        return
    guards = (False, True) if args.compare else (not args.without_guard,)
    summary = {("with" if g else "without") + " guard": series(args.runs, args.steps, args.threads, g, args.load)
               for g in guards}
    for label, counts in summary.items():
        bad = counts["non-finite"] + counts["corrupted"]
        print(f"{label}: {bad}/{sum(counts.values())} runs went wrong "
              f"(non-finite {counts['non-finite']}, corrupted {counts['corrupted']})")


if __name__ == "__main__":
    main()
