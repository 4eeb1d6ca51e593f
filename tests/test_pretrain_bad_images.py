"""Unreadable images in a pretraining source: any run of them is skipped (each file decoded at most
once per dataset object) and counted; only a source with no readable image is an error, one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from typer.testing import CliRunner

from detco_bench.cli import app
from pretrain.data import ContrastiveViews, FolderSource, ImageSource, NoReadableImageError, find_images
from pretrain.train import load_checkpoint
from tests.conftest import tiny_config

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


class CountingSource(ImageSource):
    """`size` images; index i is a (3, 8, 8) tensor filled with i, or unreadable when i is in `bad`.
    `loads[i]` counts the decodes of index i (readable or not)."""

    def __init__(self, size: int, bad: set[int]) -> None:
        self.size, self.bad = size, bad
        self.loads = [0] * size

    def __len__(self) -> int:
        return self.size

    def load(self, index: int) -> torch.Tensor:
        self.loads[index] += 1
        if index in self.bad:
            raise OSError(f"unreadable image #{index}")
        return torch.full((3, 8, 8), index, dtype=torch.uint8)


def _plain_views(source: ImageSource) -> ContrastiveViews:
    """Views that are the image itself, so a sample shows which image it was made from."""
    dataset = ContrastiveViews(source, tiny_config(local_contrast=False))
    dataset.global_view = lambda image: image.clone()
    return dataset


def test_forty_unreadable_in_a_row_give_the_next_readable_each_decoded_once() -> None:
    source = CountingSource(50, bad=set(range(5, 45)))
    dataset = _plain_views(source)
    for index in list(range(5, 45)) + list(range(44, 4, -1)):  # every sample of the run, twice
        sample = dataset[index]
        assert sample["bad"] == 1  # its own image was unreadable
        assert torch.equal(sample["im_q"], torch.full((3, 8, 8), 45, dtype=torch.uint8))
    assert all(source.loads[i] == 1 for i in range(5, 45)), source.loads[5:45]
    assert source.loads[45] == 80 and source.loads[4] == 0 and source.loads[46] == 0
    assert dataset[4]["bad"] == 0 and dataset[46]["bad"] == 0  # readable ones are their own sample


def test_replacement_wraps_round_and_a_fresh_dataset_decodes_again() -> None:
    source = CountingSource(30, bad=set(range(30)) - {3, 10})
    dataset = _plain_views(source)
    sample = dataset[11]  # 11..29 and 0..2 unreadable: wraps round to 3
    assert sample["bad"] == 1 and int(sample["im_q"][0, 0, 0]) == 3
    assert dataset[29]["bad"] == 1 and dataset[4]["bad"] == 1 and int(dataset[4]["im_q"][0, 0, 0]) == 10
    assert max(source.loads[i] for i in source.bad) == 1
    _plain_views(source)[11]  # the memory is the dataset object's (a worker's), not global
    assert source.loads[11] == 2


def test_a_replaced_sample_keeps_its_own_seed_and_the_replacements_image() -> None:
    """Bit-identical to before: sample i of [img0, BAD, BAD, img3] is sample i of [img0, img3, img3, img3]
    (augmentation seeded by i, image the first readable after i), with the real view pipeline."""
    images = [torch.randint(0, 256, (3, 40, 36), dtype=torch.uint8, generator=torch.Generator().manual_seed(i))
              for i in range(4)]

    class ListSource(ImageSource):
        def __init__(self, items: list[torch.Tensor | None]) -> None:
            self.items = items

        def __len__(self) -> int:
            return len(self.items)

        def load(self, index: int) -> torch.Tensor:
            item = self.items[index]
            if item is None:
                raise OSError("unreadable")
            return item

    cfg = tiny_config(seed=5)
    with_bad = ContrastiveViews(ListSource([images[0], None, None, images[3]]), cfg)
    replaced = ContrastiveViews(ListSource([images[0], images[3], images[3], images[3]]), cfg)
    for index in (1, 2):
        a, b = with_bad[index], replaced[index]
        assert a["bad"] == 1 and b["bad"] == 0
        for key in ("im_q", "im_k", "patches_q", "patches_k"):
            assert torch.equal(a[key], b[key]), key  # type: ignore[arg-type]


def test_no_readable_image_is_one_line_also_from_a_dataloader_worker() -> None:
    source = CountingSource(6, bad=set(range(6)))
    dataset = _plain_views(source)
    with pytest.raises(NoReadableImageError) as in_process:
        dataset[2]
    assert str(in_process.value) == "none of the 6 image(s) can be read (unreadable image #2)"
    with pytest.raises(NoReadableImageError):
        dataset[4]
    assert source.loads == [1] * 6  # the second search opened nothing
    # From a worker, torch re-raises the same type with the worker's traceback as its message.
    with pytest.raises(NoReadableImageError) as from_worker:
        next(iter(DataLoader(_plain_views(CountingSource(6, bad=set(range(6)))), batch_size=2, num_workers=1)))
    assert str(from_worker.value) == "none of the 6 image(s) can be read (unreadable image #0)"


def _folder_with_unreadable_run(root: Path, bad: int) -> None:
    """4 readable images, then `bad` unreadable files in a row (a truncated class folder), then 4 more."""
    for sub, first in (("a_good", 0), ("c_good", 4)):
        (root / sub).mkdir(parents=True)
        for i in range(first, first + 4):
            Image.new("RGB", (40, 36), (i * 30, 100, 50)).save(root / sub / f"img{i}.JPEG")
    (root / "b_truncated").mkdir()
    for i in range(bad):
        (root / "b_truncated" / f"img{i:02d}.JPEG").write_bytes(b"\xff\xd8\xff\xe0 truncated")


def test_twenty_unreadable_in_a_row_train_and_are_counted(tmp_path: Path) -> None:
    data = tmp_path / "imgs"
    _folder_with_unreadable_run(data, bad=20)
    files = [p.parent.name for p in find_images(data)]
    assert files[4:24] == ["b_truncated"] * 20  # consecutive in the dataset's order
    out = tmp_path / "run"
    result = runner.invoke(app, [
        "pretrain", "--preset", "smoke", "--data", str(data), "--out", str(out), "--arch", "resnet18",
        "--image-size", "32", "--batch-size", "4", "--queue-size", "8", "--epochs", "1", "--workers", "0",
        "--no-randaugment", "--no-progress"])
    assert result.exit_code == 0, result.output
    # One epoch samples all 28 indices once: each of the 20 unreadable files counts once.
    assert load_checkpoint(out / "checkpoint.pth")["bad_images"] == 20
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["bad_images"] == 20
    assert "20 unreadable image(s) skipped" in result.stdout


def test_all_unreadable_folder_is_one_error_line_and_exit_2(tmp_path: Path) -> None:
    data = tmp_path / "broken"
    data.mkdir()
    for i in range(20):
        (data / f"img{i:02d}.jpg").write_bytes(b"not a jpeg")
    assert len(FolderSource(find_images(data))) == 20
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "detco_bench", "pretrain", "--data", str(data), "--out", str(out),
         "--workers", "1", "--no-progress"],
        env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: none of the 20 image file(s) under {data} can be read (unreadable image ")
    assert not out.exists(), "nothing is written for a run that cannot start"
