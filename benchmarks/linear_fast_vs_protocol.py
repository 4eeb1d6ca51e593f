"""What the cached-feature probe costs: `fast` vs `protocol` (and kNN) on the same data.

Builds the synthetic ImageFolder (detco-bench data synthetic --layout imagefolder), a checkpoint
(a random-init torchvision ResNet unless --checkpoint is given), runs each mode with the same
epochs / batch / lr, and prints wall-clock and top-1 side by side.

    python benchmarks/linear_fast_vs_protocol.py [--checkpoint CK] [--epochs 30] [--size 96]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torchvision

from detco_bench.linear import preset_config, run_linear
from detco_bench.records import read_record
from detco_bench.synthetic_layouts import write_synthetic_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--train", type=int, default=400)
    parser.add_argument("--val", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_synthetic_dataset(root / "data", "imagefolder", num_train=args.train, num_val=args.val,
                                image_size=(args.size, args.size))
        ck = args.checkpoint
        if ck is None:
            torch.manual_seed(0)
            ck = root / "resnet18_random.pth"
            torch.save(torchvision.models.resnet18().state_dict(), ck)
        print(f"data: synthetic imagefolder, {args.train} train / {args.val} val, 4 classes, {args.size}px; "
              f"checkpoint {ck.name}; {args.epochs} epochs, batch {args.batch_size}, cpu x{args.threads}")
        rows = []
        for mode in ("protocol", "fast", "knn"):
            cfg = preset_config(mode, epochs=args.epochs, batch_size=args.batch_size, image_size=args.size,
                                workers=0)
            t0 = time.perf_counter()
            record = read_record(run_linear(ck, root / "data" / "imagenet", root / mode, cfg, show_progress=False))
            rows.append((mode, time.perf_counter() - t0, record.metrics))
        for mode, seconds, metrics in rows:
            shown = ", ".join(f"{k} {v:.1f}" for k, v in metrics.items())
            print(f"{mode:9s} {seconds:8.1f} s   {shown}")
        print(f"fast / protocol wall-clock: {rows[1][1] / rows[0][1]:.3f}")


if __name__ == "__main__":
    main()
