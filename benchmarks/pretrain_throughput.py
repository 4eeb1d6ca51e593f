"""Pretraining throughput: the MoCo v2 step vs the DetCo step, and the two data pipelines.

Prints, in one run on one machine:
  - training img/s of a full step (forward, backward, SGD, momentum update, enqueue) for MoCo v2
    and DetCo at a fixed batch, and their ratio;
  - data-pipeline img/s of one worker (JPEG decode + views) for each method's pipeline;
  - with --compare-amp (CUDA), DetCo img/s at bf16 + channels_last vs fp32.

    python benchmarks/pretrain_throughput.py [--arch resnet50] [--batch-size 8] [--steps 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from pretrain.config import PretrainConfig
from pretrain.data import ContrastiveViews, FolderSource, find_images
from pretrain.detco import DetCo
from pretrain.synthetic import render_scene


def step_throughput(cfg: PretrainConfig, device: torch.device, steps: int, warmup: int = 1) -> float:
    """Training images per second of the full contrastive step on random inputs of the right shapes."""
    torch.manual_seed(0)
    model = DetCo(cfg).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.03, momentum=0.9)
    n, s, p = cfg.batch_size, cfg.image_size, cfg.patch_size
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    views = {"im_q": torch.randn(n, 3, s, s, device=device).contiguous(memory_format=fmt),
             "im_k": torch.randn(n, 3, s, s, device=device).contiguous(memory_format=fmt)}
    if cfg.local_contrast:
        views |= {"patches_q": torch.randn(n, 9, 3, p, p, device=device),
                  "patches_k": torch.randn(n, 9, 3, p, p, device=device)}
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if cfg.amp else nullcontext()

    def one_step() -> None:
        with autocast:
            loss, _ = model(**views)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        one_step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        one_step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n * steps / (time.perf_counter() - start)


def pipeline_throughput(cfg: PretrainConfig, folder: Path, images: int) -> float:
    """Samples per second of one data worker: decode + both views (+ both patch sets for DetCo)."""
    dataset = ContrastiveViews(FolderSource(find_images(folder)), cfg)
    dataset[0]
    start = time.perf_counter()
    for i in range(images):
        dataset[i % len(dataset)]
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--pipeline-images", type=int, default=48)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (this machine: 2 cores)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compare-amp", action="store_true", help="DetCo bf16+channels_last vs fp32")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    base = PretrainConfig(arch=args.arch, batch_size=args.batch_size, image_size=args.image_size,
                          queue_size=65536 - 65536 % args.batch_size or args.batch_size, workers=0)
    detco = base
    moco = dataclasses.replace(base, multi_level=False, local_contrast=False, randaugment=False)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{args.threads} threads"
    print(f"device: {device_name}; torch {torch.__version__}; {args.arch}, batch {args.batch_size}, "
          f"{args.image_size}px global views, 9x{base.patch_size}px patches, {args.steps} timed steps")

    moco_ips = step_throughput(moco, device, args.steps)
    detco_ips = step_throughput(detco, device, args.steps)
    print(f"train step  MoCo v2: {moco_ips:8.2f} img/s")
    print(f"train step  DetCo  : {detco_ips:8.2f} img/s")
    print(f"DetCo / MoCo v2 throughput ratio: {detco_ips / moco_ips:.3f} (DetCo step costs "
          f"{moco_ips / detco_ips:.2f}x MoCo v2's)")

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for i in range(16):  # ImageNet-like JPEGs (about 500x375)
            render_scene(0, i, 375, 500).to_pil().save(folder / f"{i}.jpg", quality=90)
        moco_pipe = pipeline_throughput(moco, folder, args.pipeline_images)
        detco_pipe = pipeline_throughput(detco, folder, args.pipeline_images)
    print(f"data pipeline, one worker  MoCo v2: {moco_pipe:7.1f} img/s")
    print(f"data pipeline, one worker  DetCo  : {detco_pipe:7.1f} img/s (global views + RandAugment + 2 jigsaw sets)")

    if args.compare_amp:
        if device.type != "cuda":
            print("--compare-amp needs a CUDA device; skipped")
        else:
            fast = dataclasses.replace(detco, amp=True, channels_last=True)
            fast_ips = step_throughput(fast, device, args.steps)
            print(f"DetCo fp32: {detco_ips:.1f} img/s; bf16+channels_last: {fast_ips:.1f} img/s "
                  f"(x{fast_ips / detco_ips:.2f})")


if __name__ == "__main__":
    main()
