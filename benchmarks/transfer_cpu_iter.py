"""CPU seconds per training iteration of the torchvision engine, per task family.

Each family's model is built as the engine builds it for its task (the protocol's head sizes:
512 sampled RoIs per image, 256-channel FPN and mask head, ...; plain BN as on CPU) on a
random-init backbone, and trained on a fixed batch of synthetic scenes that went through the
engine's own data pipeline (2 images of 256x256 by default). Reported: the median wall time of a
forward + backward + SGD step over --iters iterations after one warm-up iteration, with
torch.set_num_threads(2) (change with --threads).

    python benchmarks/transfer_cpu_iter.py [--size 256] [--batch 2] [--iters 3] [--arch resnet50]
                                           [--families c4 fpn ...] [--small-heads]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

FAMILY_TASKS = {
    "c4": "coco_c4_12k",
    "fpn": "coco_fpn_12k",
    "retinanet": "retinanet_12k",
    "keypoint": "keypoint_fpn_2x",
    "voc_c4": "voc_c4_24k",
    "cityscapes_inst": "cityscapes_inst_fpn",
    "cityscapes_sem": "cityscapes_sem",
}
SMALL_HEADS = {
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": 64,
    "MODEL.ROI_BOX_HEAD.FC_DIM": 256,
    "MODEL.ROI_MASK_HEAD.CONV_DIM": 64,
    "MODEL.FPN.OUT_CHANNELS": 64,
    "MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS": [64, 64],
}


def _spec_and_meta(root: Path, family: str, settings):  # noqa: ANN001, ANN202
    from detco_bench.datasets import builtin_dataset
    from detco_bench.engines.torchvision.data.load import load_records

    names = {
        "c4": "coco_2017_train",
        "fpn": "coco_2017_train",
        "retinanet": "coco_2017_train",
        "keypoint": "keypoints_coco_2017_train",
        "voc_c4": "voc_2007_trainval",
        "cityscapes_inst": "cityscapes_fine_instance_seg_train",
        "cityscapes_sem": "cityscapes_fine_sem_seg_train",
    }
    spec = builtin_dataset(names[family], root)
    if family == "keypoint":
        from detco_bench.synthetic import KEYPOINT_FLIP_MAP, KEYPOINT_NAMES, KEYPOINT_OKS_SIGMAS

        spec.meta.update(
            keypoint_names=list(KEYPOINT_NAMES),
            keypoint_flip_map=[list(p) for p in KEYPOINT_FLIP_MAP],
            keypoint_oks_sigmas=list(KEYPOINT_OKS_SIGMAS),
        )
    if family == "voc_c4":
        from detco_bench.synthetic import CLASS_NAMES

        spec.meta["thing_classes"] = list(CLASS_NAMES)
    return load_records(spec, settings, keypoints=family == "keypoint")


def bench_family(family: str, root: Path, args: argparse.Namespace) -> tuple[float, float, str]:
    from detco_bench.engines.torchvision.data.datasets import TrainDataset
    from detco_bench.engines.torchvision.models.build import build_model
    from detco_bench.engines.torchvision.settings import Settings
    from detco_bench.engines.torchvision.train.solver import build_optimizer
    from detco_bench.transfer_config import effective_config, flatten, set_key

    cfg = effective_config(FAMILY_TASKS[family])
    for key, value in flatten(cfg).items():
        if key.endswith(".NORM") and value in ("SyncBN", "naiveSyncBN"):
            set_key(cfg, key, "BN")
    size = args.size
    set_key(cfg, "INPUT.MIN_SIZE_TRAIN", [size])
    set_key(cfg, "INPUT.MIN_SIZE_TRAIN_SAMPLING", "choice")
    set_key(cfg, "INPUT.MAX_SIZE_TRAIN", size)
    set_key(cfg, "INPUT.RANDOM_FLIP", "none")
    if family == "cityscapes_sem":
        set_key(cfg, "INPUT.CROP.ENABLED", False)
    if args.small_heads:
        for key, value in SMALL_HEADS.items():
            set_key(cfg, key, value)
    s = Settings(cfg)
    records, meta = _spec_and_meta(root, family, s)
    keypoints = family == "keypoint"
    if family not in ("cityscapes_sem", "retinanet"):
        set_key(cfg, "MODEL.ROI_HEADS.NUM_CLASSES", len(meta.classes))
    if family == "retinanet":
        set_key(cfg, "MODEL.RETINANET.NUM_CLASSES", len(meta.classes))
    torch.manual_seed(0)
    model = build_model(
        family,
        s,
        args.arch,
        None,
        num_classes=len(meta.classes),
        num_keypoints=len(meta.keypoint_names) if keypoints else None,
    )
    dataset = TrainDataset(
        records,
        s,
        meta,
        task="sem_seg" if family == "cityscapes_sem" else "detection",
        label_offset=int(model.label_offset),
        mask_on=bool(s["MODEL.MASK_ON"]) and family != "cityscapes_sem",
        keypoint_on=keypoints,
    )
    batch = [dataset[(i % len(dataset), i)] for i in range(args.batch)]
    images = [b[0] for b in batch]
    targets = [b[1] for b in batch]
    optimizer = build_optimizer(model, s)
    model.train()
    times = []
    loss = float("nan")
    for i in range(args.iters + 1):
        t0 = time.perf_counter()
        losses = model(images, targets)
        total = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        if i > 0:
            times.append(time.perf_counter() - t0)
        loss = float(total.detach())
    shape = "x".join(str(d) for d in images[0].shape[-2:])
    return statistics.median(times), loss, shape


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (square images)")
    parser.add_argument("--batch", type=int, default=2, help="images per iteration")
    parser.add_argument("--iters", type=int, default=3, help="timed iterations (after one warm-up)")
    parser.add_argument("--arch", default="resnet50", help="resnet50 (default) / resnet101 ...")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--families", nargs="*", default=list(FAMILY_TASKS), choices=list(FAMILY_TASKS))
    parser.add_argument("--small-heads", action="store_true", help="the tests' shrunk RoI heads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from rich.console import Console
    from rich.table import Table

    from detco_bench.datasets import prepare_cityscapes
    from detco_bench.synthetic import write_synthetic_dataset

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        n = 2 * max(args.batch, 2)
        write_synthetic_dataset(root, "all", num_train=n, num_val=1, image_size=(args.size, args.size))
        prepare_cityscapes(root)
        table = Table(
            title=f"torchvision engine: CPU s/iteration ({args.batch} x {args.size}px, {args.arch}, "
            f"{args.threads} threads, {'small' if args.small_heads else 'protocol'} heads)",
            title_justify="left",
        )
        for col in ("family", "task", "input", "s / iter", "loss"):
            table.add_column(col)
        for family in args.families:
            sec, loss, shape = bench_family(family, root, args)
            table.add_row(family, FAMILY_TASKS[family], shape, f"{sec:.2f}", f"{loss:.3f}")
            print(f"{family:16s} {sec:8.2f} s/iter", flush=True)
        Console().print(table)


if __name__ == "__main__":
    main()
