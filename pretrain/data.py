"""Unlabeled image sources and the two-view dataset that feeds the contrastive step."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler
from torchvision.transforms.v2 import functional as F

from pretrain.augment import JigsawPatches, global_view_transform
from pretrain.config import PretrainConfig
from pretrain.errors import PretrainInputError
from pretrain.synthetic import render_scene

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def find_images(root: str | os.PathLike) -> list[Path]:
    """All image files under `root`, recursively, sorted (so ImageNet's train/<wnid>/ layout works)."""
    root = Path(root)
    if not root.exists():
        raise PretrainInputError(f"data folder {root} does not exist")
    if not root.is_dir():
        raise PretrainInputError(f"data path {root} is not a folder")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise PretrainInputError(
            f"no images found under {root} (looked for {', '.join(IMAGE_EXTENSIONS)} recursively)")
    return files


class ImageSource:
    """Indexable source of RGB uint8 image tensors (3, H, W); `load` raises OSError when unreadable.

    description: what its items are, for messages ("image file(s) under DIR").
    """

    description = "image(s)"

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, index: int) -> torch.Tensor:
        raise NotImplementedError


class FolderSource(ImageSource):
    """The image files `files` (from `find_images(root)`), decoded with PIL."""

    def __init__(self, files: Sequence[Path], root: str | os.PathLike | None = None) -> None:
        self.files = list(files)
        self.description = f"image file(s) under {root}" if root is not None else "image file(s)"

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> torch.Tensor:
        try:
            with Image.open(self.files[index]) as im:
                return F.pil_to_tensor(im.convert("RGB"))
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise OSError(f"unreadable image {self.files[index]}: {exc}") from exc


class SyntheticSource(ImageSource):
    """The built-in synthetic scenes (pretrain.synthetic), rendered on the fly."""

    def __init__(self, count: int, size: int, seed: int = 0) -> None:
        self.count, self.size, self.seed = count, size, seed

    def __len__(self) -> int:
        return self.count

    def load(self, index: int) -> torch.Tensor:
        scene = render_scene(self.seed, index, self.size, self.size)
        return torch.from_numpy(np.ascontiguousarray(scene.image)).permute(2, 0, 1)


class NoReadableImageError(PretrainInputError):
    """No image of a source can be read (bad input: the CLI prints one line and exits with code 2).

    Raised inside a DataLoader worker, torch re-raises it in the main process as
    `NoReadableImageError(text holding the worker's whole traceback)`; the constructor keeps only
    the original message (the traceback's last line), so the CLI's `error:` line stays one line.
    """

    def __init__(self, message: str) -> None:
        prefix = f"{type(self).__module__}.{type(self).__qualname__}: "
        original = [line for line in message.splitlines() if line.startswith(prefix)]
        super().__init__(original[-1].removeprefix(prefix) if original else message)


class ReadableScan:
    """Finds the first readable image at or after an index of `source` (wrapping round), and
    remembers the unreadable indices it met, so each unreadable file is decoded at most once.

    Memory: `_skip[j] = r` for a known-unreadable j means every index from j up to r (exclusive,
    wrapping) is known unreadable, so a scan that meets j jumps to r without opening anything.
    A whole unreadable class folder costs one decode per file and one jump per later sample.
    """

    def __init__(self, source: ImageSource) -> None:
        self.source = source
        self._skip: dict[int, int] = {}
        self._first_error = ""  # the first decode error met, for the message when none is readable

    def first_readable(self, index: int) -> tuple[torch.Tensor, int]:
        """(the first readable image at index, index + 1, ... wrapping; how many indices were
        skipped to reach it). Raises NoReadableImageError when no image of the source is readable."""
        n = len(self.source)
        pos, skipped = index % n, 0
        met: list[int] = []  # unreadable indices passed on this scan: pointed at its result below
        while skipped < n:
            jump = self._skip.get(pos)
            if jump is not None:
                met.append(pos)
                skipped += (jump - pos) % n or n
                pos = jump
                continue
            try:
                image = self.source.load(pos)
            except OSError as exc:
                self._first_error = self._first_error or str(exc).splitlines()[0]
                self._skip[pos] = (pos + 1) % n
                met.append(pos)
                skipped, pos = skipped + 1, (pos + 1) % n
                continue
            for j in met:
                self._skip[j] = pos
            return image, skipped
        raise NoReadableImageError(
            f"none of the {n} {self.source.description} can be read ({self._first_error})")


def check_readable(source: ImageSource) -> None:
    """Raise NoReadableImageError unless at least one image of `source` decodes. Images are tried
    in order until one does, so a normal folder costs one decode; a folder where none decodes is
    bad input, while unreadable images among readable ones are skipped (and counted) in training."""
    ReadableScan(source).first_readable(0)


def build_source(cfg: PretrainConfig) -> ImageSource:
    """The images `cfg.data` names; for a folder, checked to hold at least one readable image."""
    if cfg.data == "synthetic":
        return SyntheticSource(cfg.synthetic_images, cfg.synthetic_size, seed=cfg.seed)
    source = FolderSource(find_images(cfg.data), root=cfg.data)
    check_readable(source)
    return source


class ContrastiveViews(Dataset):
    """Sample i -> {"im_q", "im_k": (3, S, S) global views; "patches_q", "patches_k": (9, 3, P, P)
    jigsaw patch sets (only when the local contrast is on); "bad": 1 when image i itself was
    unreadable and replaced, else 0, so a sum over an epoch counts the unreadable files met}.

    Views are drawn from a generator seeded with (seed, epoch, index), so a sample's augmentation
    does not depend on worker assignment or on whether the run was resumed.
    An unreadable image is replaced by the next readable one, wrapping round (and counted): one bad
    JPEG in a million, or a whole truncated class folder, must not kill a week-long run, nor change
    the batch size the queue relies on. Only a source with no readable image left is an error
    (NoReadableImageError). Unreadable indices are remembered per dataset object (so per worker):
    each is decoded at most once, not once for every sample whose replacement search passes it.
    """

    def __init__(self, source: ImageSource, cfg: PretrainConfig) -> None:
        self.source = source
        self.seed = cfg.seed
        self.epoch = 0
        self.global_view = global_view_transform(cfg.image_size, cfg.randaugment, cfg.autoaugment)
        self.patches = JigsawPatches(cfg.local_resize, cfg.patch_size) if cfg.local_contrast else None
        self.readable = ReadableScan(source)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        image, skipped = self.readable.first_readable(index)
        bad = int(skipped > 0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(((self.seed * 1_000_003 + self.epoch) * 1_000_003 + index) % 2**63)
            sample: dict[str, torch.Tensor | int] = {
                "im_q": self.global_view(image), "im_k": self.global_view(image), "bad": bad}
            if self.patches is not None:
                sample["patches_q"] = self.patches(image)
                sample["patches_k"] = self.patches(image)
        return sample


class EpochSampler(Sampler[int]):
    """This rank's share of a seeded permutation of the dataset for a given epoch, optionally
    starting after the first `skip` indices (a run resumed mid-epoch picks up where it stopped).

    Every rank draws the same permutation from (seed, epoch) and takes a strided slice, as
    DistributedSampler does; the total is truncated to whole global batches (drop_last).
    """

    def __init__(self, size: int, global_batch: int, rank: int = 0, world_size: int = 1, seed: int = 0) -> None:
        self.size, self.global_batch = size, global_batch
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.epoch, self.skip = 0, 0

    def steps_per_epoch(self) -> int:
        return self.size // self.global_batch

    def set_epoch(self, epoch: int, skip_steps: int = 0) -> None:
        self.epoch = epoch
        self.skip = skip_steps * self.global_batch // self.world_size

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.size, generator=g)[: self.steps_per_epoch() * self.global_batch]
        mine = order[self.rank :: self.world_size].tolist()
        return iter(mine[self.skip :])

    def __len__(self) -> int:
        return self.steps_per_epoch() * self.global_batch // self.world_size - self.skip
