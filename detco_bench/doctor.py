"""`detco-bench doctor`: what this machine can run, and which datasets it can see."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import platform
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from detco_bench.errors import DETECTRON2_INSTALL_HINT

# Sub-folders of the datasets root that each benchmark family needs (Detectron2's layout).
DATASET_FOLDERS: dict[str, tuple[str, ...]] = {
    "coco": ("coco/annotations", "coco/train2017", "coco/val2017"),
    "voc2007": ("VOC2007/Annotations", "VOC2007/ImageSets/Main", "VOC2007/JPEGImages"),
    "voc2012": ("VOC2012/Annotations", "VOC2012/ImageSets/Main", "VOC2012/JPEGImages"),
    "cityscapes": ("cityscapes/leftImg8bit", "cityscapes/gtFine"),
    "imagenet": ("imagenet/train", "imagenet/val"),
}


def datasets_root() -> Path:
    """The datasets root, as Detectron2 resolves it: $DETECTRON2_DATASETS or ./datasets."""
    return Path(os.environ.get("DETECTRON2_DATASETS", "datasets")).expanduser()


def module_version(name: str) -> tuple[str | None, str | None]:
    """(version, None) when `name` imports, else (None, the import error in one line)."""
    try:
        module = importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - any import failure means "not usable here"
        return None, f"{type(exc).__name__}: {exc}".splitlines()[0]
    version = getattr(module, "__version__", None)
    if version is None:
        try:
            version = importlib.metadata.version(name)  # distributions that set no __version__
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
    return str(version), None


def run_doctor(console: Console) -> int:
    """Print the environment report; returns the number of problems that block the default job."""
    problems = 0
    table = Table(title="detco-bench doctor", show_lines=False)
    table.add_column("component")
    table.add_column("status")
    table.add_column("detail", overflow="fold")
    table.add_row("python", "ok", platform.python_version())
    for name in ("torch", "torchvision", "pycocotools", "cityscapesscripts", "pandas", "typer", "rich"):
        version, err = module_version(name)
        if version is None:
            problems += 1
            table.add_row(name, "[red]missing[/red]", err or "")
        else:
            table.add_row(name, "ok", version)
    try:  # the probe itself: torchvision's compiled ops may fail to load
        from torchvision.ops import nms

        nms(torch.zeros(1, 4), torch.zeros(1), 0.5)
        table.add_row("torchvision ops", "ok", "compiled ops load")
    except Exception as exc:  # noqa: BLE001
        problems += 1
        table.add_row("torchvision ops", "[red]broken[/red]",
                      f"{exc} (install the pinned pair from constraints.txt)")
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        table.add_row("CUDA", "ok", f"{len(names)} device(s): " + ", ".join(names))
    else:
        table.add_row("CUDA", "none", "CPU only (pretraining and the built-in engine still run)")
    table.add_row("CPU threads", "ok", str(torch.get_num_threads()))
    version, err = module_version("detectron2")
    if version is None:
        table.add_row("detectron2", "[yellow]not importable[/yellow]", f"{err}. {DETECTRON2_INSTALL_HINT}")
    else:
        table.add_row("detectron2", "ok", version)
    console.print(table)

    root = datasets_root()
    ds = Table(title=f"datasets under {root} ($DETECTRON2_DATASETS)")
    ds.add_column("dataset")
    ds.add_column("status")
    ds.add_column("missing", overflow="fold")
    for name, folders in DATASET_FOLDERS.items():
        missing = [f for f in folders if not (root / f).is_dir()]
        status = "[green]found[/green]" if not missing else (
            "[red]absent[/red]" if len(missing) == len(folders) else "[yellow]incomplete[/yellow]")
        ds.add_row(name, status, ", ".join(missing))
    console.print(ds)
    return problems
