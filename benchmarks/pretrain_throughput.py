"""Pretraining throughput: the MoCo v2 step vs the DetCo step, and the two data pipelines.

Prints, in one run on one machine:
  - seconds and img/s of a full training step (forward, backward, SGD, momentum update, enqueue;
    pretrain.train's model and optimizer) for MoCo v2 and DetCo at a fixed batch, their steps taken
    in alternation (A B A B ...) so that a busy machine slows both alike; medians and the median of
    the per-round ratios, with the load average before and after (skipped with --pipeline-only);
  - data-pipeline samples/s of one worker (one torch thread: JPEG decode + both views, + both
    jigsaw patch sets for DetCo) for each method, with pretrain.augment's pipeline ("fast") and the
    torchvision one it replaced ("torchvision", the reference of tests/test_pretrain_augment_stats.py),
    timed in alternation (A B A B ...) so that a busy machine slows both alike; medians and the
    median of the per-round ratios; and the workers an 8-GPU node needs to feed its GPUs (at the
    measured step rate on a GPU, else at 1,000 img/s per GPU);
  - with --compare-amp (CUDA), DetCo img/s at bf16 + channels_last vs fp32 (also alternated).

CPU steps run with freed memory kept in the process between steps, as pretrain.train runs them
(pretrain.heap); --default-heap times them with glibc's default settings instead.

    python benchmarks/pretrain_throughput.py [--arch resnet50] [--batch-size 8] [--steps 3]
    python benchmarks/pretrain_throughput.py --step-only --steps 5   # the step timing alone
    python benchmarks/pretrain_throughput.py --pipeline-only [--rounds 7] [--pipeline-images 16]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the reference pipeline lives in tests/

from pretrain.config import PretrainConfig  # noqa: E402
from pretrain.data import ContrastiveViews, FolderSource, find_images  # noqa: E402
from pretrain.detco import DetCo  # noqa: E402
from pretrain.heap import freed_memory_kept  # noqa: E402
from pretrain.optim import pretrain_optimizer  # noqa: E402
from pretrain.synthetic import render_scene  # noqa: E402
from tests.test_pretrain_augment_stats import ReferenceJigsawPatches, reference_global_view  # noqa: E402

GPUS_PER_NODE = 8
NOMINAL_GPU_RATE = 1000.0  # img/s per GPU assumed when no GPU is measured


StepTime = tuple[float, float, int]  # wall-clock seconds, CPU seconds, minor page faults of one step


def step_runner(cfg: PretrainConfig, device: torch.device) -> Callable[[], StepTime]:
    """A function that runs one full training step (forward, backward, SGD, momentum update,
    enqueue: pretrain.train's model and optimizer) on random inputs of the right shapes and
    returns its (wall-clock seconds, CPU seconds, minor page faults) in this process."""
    torch.manual_seed(0)
    model = DetCo(cfg).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = pretrain_optimizer(model, cfg)
    n, s, p = cfg.batch_size, cfg.image_size, cfg.patch_size
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    views = {"im_q": torch.randn(n, 3, s, s, device=device).contiguous(memory_format=fmt),
             "im_k": torch.randn(n, 3, s, s, device=device).contiguous(memory_format=fmt)}
    if cfg.local_contrast:
        views |= {"patches_q": torch.randn(n, 9, 3, p, p, device=device),
                  "patches_k": torch.randn(n, 9, 3, p, p, device=device)}
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if cfg.amp else nullcontext()

    def one_step() -> StepTime:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start_faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start, start_cpu = time.perf_counter(), time.process_time()
        with autocast:
            loss, _ = model(**views)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start_faults
        return time.perf_counter() - start, time.process_time() - start_cpu, faults

    return one_step


def interleaved_step_times(cfgs: dict[str, PretrainConfig], device: torch.device, steps: int,
                           warmup: int) -> dict[str, list[StepTime]]:
    """(wall, CPU) seconds and page faults of each timed step per config, the configs taking turns
    step by step (A B A B ...) so that load from other processes falls on all of them alike;
    `warmup` untimed steps each first."""
    runners = {name: step_runner(cfg, device) for name, cfg in cfgs.items()}
    for run in runners.values():
        for _ in range(warmup):
            run()
    times: dict[str, list[StepTime]] = {name: [] for name in runners}
    for _ in range(steps):
        for name, run in runners.items():
            times[name].append(run())
    return times


def report_steps(times: dict[str, list[StepTime]], batch: int, base: str, other: str) -> dict[str, float]:
    """Prints each config's median wall-clock and CPU seconds per step, img/s and page faults per
    step, and the medians of the per-round ratios other/base of both; returns the median
    (wall-clock) img/s per config.

    CPU seconds count this process's threads only, so on a shared machine they move less with other
    processes' load than wall-clock does (OpenMP threads waiting at a barrier still count)."""
    wall = {name: [w for w, _, _ in t] for name, t in times.items()}
    cpu = {name: [c for _, c, _ in t] for name, t in times.items()}
    faults = {name: [f for _, _, f in t] for name, t in times.items()}
    rates = {name: batch / statistics.median(w) for name, w in wall.items()}
    for name in times:
        steps = " ".join(f"{x:.2f}" for x in wall[name])
        print(f"train step  {name:24s}: {statistics.median(wall[name]):7.2f} s/step ({rates[name]:6.2f} img/s), "
              f"CPU {statistics.median(cpu[name]):7.2f} s/step, "
              f"{statistics.median(faults[name]):7.0f} page faults/step;  wall per step {steps}")
    for what, series in (("wall-clock", wall), ("CPU time", cpu)):
        ratios = [o / b for o, b in zip(series[other], series[base], strict=True)]
        print(f"{other} / {base} step {what}: x{statistics.median(ratios):.3f} (median of {len(ratios)} "
              f"rounds, per-round {min(ratios):.3f}-{max(ratios):.3f})")
    return rates


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"


def pipeline_datasets(detco: PretrainConfig, moco: PretrainConfig, folder: Path) -> dict[str, ContrastiveViews]:
    """The four one-worker pipelines: {MoCo v2, DetCo} x {fast (pretrain.augment), torchvision}."""
    source = FolderSource(find_images(folder))
    out = {}
    for name, cfg in (("MoCo v2", moco), ("DetCo", detco)):
        out[f"{name} fast"] = ContrastiveViews(source, cfg)
        old = ContrastiveViews(source, cfg)
        old.global_view = reference_global_view(cfg.image_size, cfg.randaugment, cfg.autoaugment)
        if old.patches is not None:
            old.patches = ReferenceJigsawPatches(cfg.local_resize, cfg.patch_size)
        out[f"{name} torchvision"] = old
    return out


def interleaved_rates(pipelines: dict[str, Callable[[int], object]], images: int,
                      rounds: int) -> dict[str, list[float]]:
    """Samples/s of each pipeline in each round; the pipelines take turns within a round, so that
    load from other processes falls on all of them alike. Sample indices differ per round."""
    rates: dict[str, list[float]] = {name: [] for name in pipelines}
    for fn in pipelines.values():
        fn(0)  # warm-up
    for r in range(rounds):
        for name, fn in pipelines.items():
            start = time.perf_counter()
            for i in range(images):
                fn(r * images + i)
            rates[name].append(images / (time.perf_counter() - start))
    return rates


def report_pipelines(detco: PretrainConfig, moco: PretrainConfig, images: int, rounds: int,
                     gpu_rate: dict[str, float] | None) -> None:
    """Prints per-worker samples/s (fast vs torchvision) and the workers an 8-GPU node needs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a DataLoader worker runs one torch thread
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            for i in range(16):  # ImageNet-like JPEGs (about 500x375)
                render_scene(0, i, 375, 500).to_pil().save(folder / f"{i}.jpg", quality=90)
            datasets = pipeline_datasets(detco, moco, folder)
            rates = interleaved_rates({name: ds.__getitem__ for name, ds in datasets.items()}, images, rounds)
    finally:
        torch.set_num_threads(threads)
    load = os.getloadavg()
    print(f"data pipeline, one worker (1 torch thread), samples/s, median of {rounds} alternating rounds "
          f"of {images} samples; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs")
    for method in ("MoCo v2", "DetCo"):
        fast, old = rates[f"{method} fast"], rates[f"{method} torchvision"]
        ratios = [f / o for f, o in zip(fast, old, strict=True)]
        print(f"  {method:7s}  fast {statistics.median(fast):6.1f}  torchvision {statistics.median(old):6.1f}  "
              f"fast/torchvision x{statistics.median(ratios):.2f} (per-round {min(ratios):.2f}-{max(ratios):.2f})")
    what = "the measured step rate" if gpu_rate else f"a nominal {NOMINAL_GPU_RATE:.0f} img/s per GPU"
    print(f"workers for {GPUS_PER_NODE} GPUs at {what} (one CPU core each, fast pipeline):")
    for method in ("MoCo v2", "DetCo"):
        per_gpu = gpu_rate[method] if gpu_rate else NOMINAL_GPU_RATE
        need = GPUS_PER_NODE * per_gpu
        fast, old = statistics.median(rates[f"{method} fast"]), statistics.median(rates[f"{method} torchvision"])
        print(f"  {method:7s}  {need:7.0f} img/s -> {math.ceil(need / fast)} workers "
              f"(torchvision pipeline: {math.ceil(need / old)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=4,
                        help="untimed steps per method first: a CPU DetCo step page-faults for its first ~4 steps, "
                             "until the kept heap holds all it allocates (the page-fault column shows it)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--pipeline-images", type=int, default=16, help="samples per pipeline per round")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds of the pipeline timing")
    parser.add_argument("--pipeline-only", action="store_true", help="skip the training-step timing")
    parser.add_argument("--step-only", action="store_true", help="skip the data-pipeline timing")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (this machine: 2 cores)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compare-amp", action="store_true", help="DetCo bf16+channels_last vs fp32")
    parser.add_argument("--channels-last", action="store_true",
                        help="both methods' steps in channels_last (pretrain's --channels-last; default off)")
    parser.add_argument("--default-heap", action="store_true",
                        help="time CPU steps with glibc's default malloc settings, as pretrain.train does not")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    base = PretrainConfig(arch=args.arch, batch_size=args.batch_size, image_size=args.image_size,
                          queue_size=65536 - 65536 % args.batch_size or args.batch_size, workers=0,
                          channels_last=args.channels_last)
    detco = base
    moco = dataclasses.replace(base, multi_level=False, local_contrast=False, randaugment=False)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{args.threads} threads"
    print(f"device: {device_name}; torch {torch.__version__}; {args.arch}, batch {args.batch_size}, "
          f"{args.image_size}px global views, 9x{base.patch_size}px patches, {args.steps} timed steps")

    gpu_rate = None
    if not args.pipeline_only:
        print(f"step timing, {args.steps} alternating rounds after {args.warmup} warm-up steps each; {_load()}")
        keep = device.type == "cpu" and not args.default_heap  # as pretrain.train runs its CPU steps
        with freed_memory_kept() if keep else nullcontext() as kept:
            print("CPU heap: " + ("freed memory kept between steps (pretrain.heap), as pretrain.train does" if kept
                                  else "glibc's default (freed blocks over the mmap threshold go back to the kernel)"))
            times = interleaved_step_times({"MoCo v2": moco, "DetCo": detco}, device, args.steps, args.warmup)
        rates = report_steps(times, args.batch_size, "MoCo v2", "DetCo")
        print(f"after the step timing: {_load()}")
        if device.type == "cuda":
            gpu_rate = {"MoCo v2": rates["MoCo v2"], "DetCo": rates["DetCo"]}

    if not args.step_only:
        report_pipelines(detco, moco, args.pipeline_images, args.rounds, gpu_rate)

    if args.compare_amp:
        if device.type != "cuda" or args.pipeline_only:
            print("--compare-amp needs a CUDA device and the step timing; skipped")
        else:
            fast = dataclasses.replace(detco, amp=True, channels_last=True)
            amp_times = interleaved_step_times({"DetCo fp32": detco, "DetCo bf16+channels_last": fast}, device,
                                               args.steps, args.warmup)
            report_steps(amp_times, args.batch_size, "DetCo fp32", "DetCo bf16+channels_last")


if __name__ == "__main__":
    main()
