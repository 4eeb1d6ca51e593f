"""`detco-bench data synthetic`: write the synthetic scenes as real dataset layouts."""

from __future__ import annotations

from pathlib import Path

import typer

from detco_bench.errors import UserError, cli_errors
from detco_bench.paths import output_errors

LAYOUT_CHOICES = ("images", "imagefolder", "coco", "voc", "cityscapes", "all")


def _image_size(size: str | None, height: int | None, width: int | None) -> tuple[int, int]:
    from detco_bench.synthetic import DEFAULT_IMAGE_SIZE, parse_image_size

    if size is not None:
        if height is not None or width is not None:
            raise UserError("give either --size HxW or --height/--width, not both")
        return parse_image_size(size)
    return (height if height is not None else DEFAULT_IMAGE_SIZE[0],
            width if width is not None else DEFAULT_IMAGE_SIZE[1])


def register(app: typer.Typer, data_app: typer.Typer) -> None:
    """Add `synthetic` to the `data` command group."""

    @data_app.command("synthetic")
    @cli_errors
    def synthetic(
        out: Path = typer.Option(..., "--out", help="Output root (a DETECTRON2_DATASETS-style folder)."),
        layout: str = typer.Option(
            "images", "--layout",
            help=f"One of {', '.join(LAYOUT_CHOICES)}. 'images' is unlabeled pretraining data.",
        ),
        num_train: int = typer.Option(256, "--num-train", help="Training images (scenes) per layout."),
        num_val: int = typer.Option(64, "--num-val", help="Validation / test images per layout."),
        seed: int = typer.Option(0, "--seed", help="Dataset seed; same arguments give identical files."),
        size: str | None = typer.Option(None, "--size", help="Image size HEIGHTxWIDTH, e.g. 96x128."),
        height: int | None = typer.Option(None, "--height", help="Image height (default 128)."),
        width: int | None = typer.Option(None, "--width", help="Image width (default 128)."),
        force: bool = typer.Option(False, "--force", help="Write into a non-empty --out folder."),
    ) -> None:
        """Write a deterministic synthetic dataset (unlabeled images, ImageFolder, COCO, VOC or
        Cityscapes layout) that the real tools of each format can read."""
        from detco_bench.synthetic import describe, write_synthetic_dataset

        if layout not in LAYOUT_CHOICES:
            raise UserError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUT_CHOICES)}")
        image_size = _image_size(size, height, width)
        with output_errors(out):
            summary = write_synthetic_dataset(out, layout, num_train=num_train, num_val=num_val, seed=seed,
                                              image_size=image_size, force=force, progress=True)
        typer.echo(describe(summary))
