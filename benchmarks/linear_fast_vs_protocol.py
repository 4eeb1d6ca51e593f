"""Does the cached-feature probe agree with MoCo's linear protocol, and how much cheaper is it?

Builds a synthetic ImageFolder (detco-bench data synthetic --layout imagefolder, 4 classes) for
the probe and a second one, from another seed, on which it trains a torchvision ResNet-18
supervised for a few epochs (a backbone that has learned something, saved as a torchvision state
dict). Then, for each seed, runs `protocol` (exactly MoCo's: 100 epochs, lr 30, x0.1 at 60/80,
batch 256) and `fast` with each requested head at the same schedule, and prints wall-clock and
top-1 mean +- std over the seeds, the speed-up and the top-1 gap to the protocol.

    python benchmarks/linear_fast_vs_protocol.py [--train 2000] [--val 1000] [--size 64]
        [--seeds 0 1 2] [--heads sgd lbfgs] [--aug-copies K] [--view-sampling cycle|gaussian]
        [--checkpoint CK] [--workdir DIR]

Wall-clock is each job's own (its record's, from the backbone built to the record written), so a
fresh run and one read back are timed alike. Speed and agreement are reported here, never asserted
in tests: they depend on the machine. With
--workdir, a run finished earlier (its record in runs/<mode>[-k<views>][-gaussian]-seed<seed>/) is read back, with
the wall-clock it recorded, so an interrupted benchmark resumes and a new mode joins finished ones;
a workdir made for other data or a run made with other settings is refused, not mixed in.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import NoReturn

import torch
import torch.nn.functional as F
import torchvision
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder
from torchvision.transforms import v2

from detco_bench.errors import UserError
from detco_bench.linear import VIEW_SAMPLINGS, LinearConfig, preset_config, run_linear
from detco_bench.records import read_record
from detco_bench.synthetic import write_synthetic_dataset
from pretrain.augment import IMAGENET_MEAN, IMAGENET_STD

PROBE_SEED, PRETRAIN_SEED = 0, 1  # different synthetic seeds: the backbone never sees the probe's images
SPEEDUP_TARGET, GAP_TARGET = 20.0, 1.0


def pretrain_backbone(data: Path, size: int, epochs: int, out: Path) -> tuple[Path, float, float]:
    """Train a torchvision ResNet-18 on `data`/train (4 classes) with mild crops and flips; save its
    state dict at `out`. Returns (out, seconds, last-epoch train top-1)."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=4)
    # Milder crops than the probe's (scale >= 0.35, not 0.08): a few epochs then learn the shapes.
    augment = v2.Compose([v2.ToImage(), v2.RandomResizedCrop(size, scale=(0.35, 1.0), antialias=True),
                          v2.RandomHorizontalFlip(), v2.ToDtype(torch.float32, scale=True),
                          v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    train_set = ImageFolder(str(data / "train"), transform=augment)
    loader = DataLoader(train_set, batch_size=min(64, len(train_set)), shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    steps = epochs * len(loader)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 0.5 * (1 + math.cos(math.pi * i / steps)))
    t0, correct, seen = time.perf_counter(), 0, 0
    model.train()
    for _ in range(epochs):
        correct, seen = 0, 0
        for images, target in loader:
            logits = model(images)
            loss = F.cross_entropy(logits, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            correct += int((logits.argmax(1) == target).sum())
            seen += len(target)
    torch.save(model.state_dict(), out)
    return out, time.perf_counter() - t0, 100.0 * correct / max(seen, 1)


def run_folder(root: Path, name: str, cfg: LinearConfig) -> Path:
    """runs/<mode>-seed<s>/ for the protocol, runs/<mode>-k<views>[-gaussian]-seed<s>/ for a cached
    mode: a run with another number of cached views or another view sampling is another run."""
    views = f"-k{cfg.aug_copies}" if cfg.mode != "protocol" else ""
    sampling = f"-{cfg.view_sampling}" if cfg.view_sampling != "cycle" else ""
    return root / "runs" / f"{name.replace(' ', '_')}{views}{sampling}-seed{cfg.seed}"


def settings_mismatch(recorded: dict, cfg: LinearConfig) -> list[str]:
    """The settings of `cfg` (all but the loader workers) that a finished run's record.config differs
    in. A setting a record lacks (made before the setting existed) had its default then."""
    defaults = {f.name: f.default for f in fields(LinearConfig)} | {"view_sampling": "cycle"}
    wanted = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items() if k != "workers"}
    return [f"{k}: {recorded.get(k, defaults[k])!r} != {v!r}" for k, v in wanted.items()
            if recorded.get(k, defaults[k]) != v]


def refuse(message: str) -> NoReturn:
    """One error line and exit code 2, as the CLI does for bad input."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def check_workdir_data(probe: Path, wanted: dict[str, int]) -> None:
    """Refuse a workdir whose probe data was generated with other --train / --val / --size."""
    stamp = probe / "benchmark.json"
    if stamp.is_file() and (made := json.loads(stamp.read_text())) != wanted:
        refuse(f"{probe} holds data made with {made}, not {wanted}: use another --workdir")


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, help="Probe this backbone instead of pretraining one.")
    parser.add_argument("--train", type=int, default=2000, help="Probe training images.")
    parser.add_argument("--val", type=int, default=1000, help="Probe validation images.")
    parser.add_argument("--size", type=int, default=64, help="Image side = crop size (validation resizes "
                                                             "to size*256/224, then centre-crops).")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--heads", nargs="+", default=["sgd", "lbfgs"], choices=["sgd", "lbfgs"])
    parser.add_argument("--aug-copies", type=int, default=None, help="fast mode's cached views (default: its own).")
    parser.add_argument("--view-sampling", default=None, choices=VIEW_SAMPLINGS,
                        help="the sgd head's view sampling (default: its own; the lbfgs head has none).")
    parser.add_argument("--pretrain-images", type=int, default=1000)
    parser.add_argument("--pretrain-epochs", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's).")
    parser.add_argument("--workdir", type=Path, help="Keep data, checkpoint and runs here (default: a temp dir).")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.workdir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        size = (args.size, args.size)
        probe = root / "probe"
        probe.mkdir(parents=True, exist_ok=True)
        wanted = {"train": args.train, "val": args.val, "size": args.size}
        check_workdir_data(probe, wanted)
        if not (probe / "imagenet").is_dir():
            write_synthetic_dataset(probe, "imagefolder", num_train=args.train, num_val=args.val, seed=PROBE_SEED,
                                    image_size=size)
        # Stamped after the data exist: the generator refuses a non-empty folder.
        (probe / "benchmark.json").write_text(json.dumps(wanted))
        ck = args.checkpoint
        if ck is None:
            ck = root / "resnet18_supervised.pth"
            if not ck.is_file():
                pre = root / "pretrain"
                if not (pre / "imagenet").is_dir():  # kept from a run killed while training
                    write_synthetic_dataset(pre, "imagefolder", num_train=args.pretrain_images, num_val=1,
                                            seed=PRETRAIN_SEED, image_size=size)
                _, seconds, acc = pretrain_backbone(pre / "imagenet", args.size, args.pretrain_epochs, ck)
                print(f"backbone: torchvision ResNet-18 trained supervised for {args.pretrain_epochs} epochs on "
                      f"{args.pretrain_images} other synthetic images ({seconds:.0f} s, last-epoch train top-1 "
                      f"{acc:.1f})")
        print(f"data: synthetic imagefolder, {args.train} train / {args.val} val, 4 classes, {args.size}px; "
              f"checkpoint {ck.name}; protocol schedule (100 epochs, lr 30, x0.1 at 60/80, batch 256); "
              f"seeds {args.seeds}; cpu x{torch.get_num_threads()} threads; "
              f"load average at start {os.getloadavg()[0]:.2f}")
        variants = [("protocol", "protocol", {})] + [
            (f"fast {head}", "fast", {"fast_head": head, "aug_copies": args.aug_copies,
                                      "view_sampling": args.view_sampling if head == "sgd" else None})
            for head in args.heads]
        seconds: dict[str, list[float]] = {name: [] for name, _, _ in variants}
        top1: dict[str, list[float]] = {name: [] for name, _, _ in variants}
        fits: dict[str, list[str]] = {name: [] for name, _, _ in variants}
        for seed in args.seeds:
            # Modes interleaved per seed, so a change in machine load hits them alike.
            for name, mode, extra in variants:
                cfg = preset_config(mode, image_size=args.size, workers=0, seed=seed, **extra)
                out = run_folder(root, name, cfg)
                done = sorted(out.glob("*.record.json"))
                if done:  # finished by an earlier (or interrupted) run of the benchmark in --workdir
                    record = read_record(done[-1])
                    same_checkpoint = Path(record.config.get("checkpoint", "")).resolve() == ck.resolve()
                    if differ := settings_mismatch(record.config, cfg) + ([] if same_checkpoint else ["checkpoint"]):
                        refuse(f"{out} was run with other settings ({'; '.join(differ)}): use another --workdir")
                else:
                    record = read_record(run_linear(ck, probe / "imagenet", out, cfg, show_progress=False))
                # The job's own clock (backbone built to record written), fresh or read back alike.
                seconds[name].append(float(record.provenance["wall_clock_s"]))
                top1[name].append(record.metrics["top1"])
                fit = record.config.get("head_fit", {}).get("res5", {})
                fits[name].append(f"wd {fit['weight_decay']:g}" if "weight_decay" in fit
                                  else f"views {fit['train_views']}" if fit else "")
                print(f"  seed {seed}  {name:11s} {seconds[name][-1]:8.1f} s  top1 {top1[name][-1]:6.2f}  "
                      f"{fits[name][-1]}  (load {os.getloadavg()[0]:.2f})", flush=True)
        base_s, _ = mean_std(seconds["protocol"])
        base_top1, _ = mean_std(top1["protocol"])
        print(f"\n{'mode':11s} {'wall-clock':>16s} {'top-1':>15s} {'speed-up':>9s} {'top-1 gap':>10s}  per seed")
        for name, _, _ in variants:
            s_mean, s_std = mean_std(seconds[name])
            a_mean, a_std = mean_std(top1[name])
            speedup, gap = base_s / s_mean, a_mean - base_top1
            verdict = "" if name == "protocol" else (
                f"  [{'ok' if speedup >= SPEEDUP_TARGET else 'MISS'} >= {SPEEDUP_TARGET:g}x, "
                f"{'ok' if abs(gap) <= GAP_TARGET else 'MISS'} |gap| <= {GAP_TARGET:g}]")
            print(f"{name:11s} {s_mean:8.1f} +- {s_std:5.1f} s {a_mean:6.2f} +- {a_std:4.2f} {speedup:8.1f}x "
                  f"{gap:+9.2f}   {', '.join(f'{v:.2f}' for v in top1[name])}{verdict}")
        print(f"load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        refuse(str(e))
