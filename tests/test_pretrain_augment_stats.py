"""The fast view pipelines (pretrain.augment) against the torchvision pipeline they replaced.

`reference_global_view` and `ReferenceJigsawPatches` are the pipeline as it was before the fast
photometric steps (torchvision.transforms.v2 end to end), kept here as the yardstick; the
throughput benchmark times them against the fast one. The tests check, on decoded JPEGs:
- each photometric kernel against torchvision's (exact, or within one grey level on rare pixels);
- every view and patch set against the reference's for the same seed (the same crop, policy,
  jitter, grayscale, blur and flip draws, so the same distribution);
- the drawn parameters against the configured probabilities and ranges, the crop scales against
  the reference's, and the patch geometry (3x3 cells, a permutation, offsets inside the cell).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from pretrain.augment import (
    BLUR_SIGMA,
    IMAGENET_MEAN,
    IMAGENET_STD,
    JITTER_RANGES,
    AugmentedView,
    JigsawPatches,
    _blur_kernel,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    adjust_sharpness,
    apply_photometric,
    gaussian_blur,
    global_view_transform,
    sample_photometric,
    to_grayscale,
)
from pretrain.data import FolderSource
from pretrain.synthetic import render_scene

ONE_LEVEL = 1.0 / 255 / min(IMAGENET_STD) + 1e-5  # one grey level after normalization, at most


def _reference_photometric(size: int) -> list[v2.Transform]:
    return [
        v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        v2.RandomGrayscale(p=0.2),
        v2.RandomApply([v2.GaussianBlur(_blur_kernel(size), sigma=(0.1, 2.0))], p=0.5),
        v2.RandomHorizontalFlip(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ]


def reference_global_view(size: int = 224, randaugment: bool = True, autoaugment: bool = False) -> v2.Compose:
    """The torchvision global view: uint8 (3, H, W) -> normalized float (3, size, size)."""
    steps: list[v2.Transform] = [v2.RandomResizedCrop(size, scale=(0.2, 1.0), antialias=True)]
    if autoaugment:
        steps.append(v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET))
    if randaugment:
        steps.append(v2.RandAugment())
    return v2.Compose(steps + _reference_photometric(size))


class ReferenceJigsawPatches(JigsawPatches):
    """The torchvision jigsaw patch set: the same cutting, the grid prepared by torchvision."""

    def __init__(self, resize: int = 255, patch: int = 64) -> None:
        super().__init__(resize, patch)
        self.prepare = v2.Compose([v2.RandomResizedCrop(resize, scale=(0.6, 1.0), antialias=True),
                                   *_reference_photometric(resize)])


@pytest.fixture(autouse=True)
def one_thread() -> object:
    """One torch thread, as in a data worker (and far faster than two on a busy CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[torch.Tensor]:
    """Decoded ImageNet-sized JPEGs (375x500) of the synthetic scenes, as the benchmark uses."""
    folder = tmp_path_factory.mktemp("jpegs")
    files = []
    for i in range(3):
        path = Path(folder) / f"{i}.jpg"
        render_scene(0, i, 375, 500).to_pil().save(path, quality=90)
        files.append(path)
    source = FolderSource(files)
    return [source.load(i) for i in range(len(source))]


def _assert_within_one_level(got: torch.Tensor, want: torch.Tensor, share: float, level: float = ONE_LEVEL) -> None:
    """Equal up to one grey level (`level`: its size in these units), on at most `share` of the values."""
    diff = (got - want).abs()
    assert diff.max().item() <= level
    assert (diff > 1e-4).float().mean().item() <= share


def _crops(images: list[torch.Tensor]) -> list[torch.Tensor]:
    """uint8 (3, 224, 224) crops of the images, and one of uniform noise (every hue, saturated)."""
    out = [F.resized_crop(im, 40 * i, 30 * i, 250, 300, [224, 224], antialias=True) for i, im in enumerate(images)]
    return out + [torch.randint(0, 256, (3, 224, 224), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))]


def test_jitter_grayscale_and_sharpness_kernels_equal_torchvision(images: list[torch.Tensor]) -> None:
    for crop in _crops(images):
        x = crop.float()
        for factor in (0.6, 0.83, 1.0, 1.17, 1.4):
            assert torch.equal(adjust_brightness(x, factor), F.adjust_brightness(crop, factor).float())
            assert torch.equal(adjust_contrast(x, factor), F.adjust_contrast(crop, factor).float())
            assert torch.equal(adjust_saturation(x, factor), F.adjust_saturation(crop, factor).float())
        for factor in (0.1, 0.55, 1.0, 1.5, 1.9):  # RandAugment / AutoAugment: 1 +- up to 0.99
            assert torch.equal(adjust_sharpness(crop, factor), F.adjust_sharpness(crop, factor))
        assert torch.equal(to_grayscale(x).expand(3, -1, -1), F.rgb_to_grayscale(crop, 3).float())


def test_hue_and_blur_kernels_match_torchvision_within_one_level(images: list[torch.Tensor]) -> None:
    for crop in _crops(images):
        x = crop.float()
        for factor in (-0.1, -0.037, 0.0, 0.05, 0.1):
            _assert_within_one_level(adjust_hue(x, factor), F.adjust_hue(crop, factor).float(), 1e-3, level=1.0)
    for crop in _crops(images)[-2:]:  # a JPEG and the noise
        x = crop.float()
        for kernel, sigma in [(23, 0.1), (23, 1.3), (25, 0.6), (25, 2.0)]:
            want = F.gaussian_blur(crop, [kernel, kernel], [sigma, sigma]).float()
            _assert_within_one_level(gaussian_blur(x, kernel, sigma), want, 5e-3, level=1.0)
    gray = to_grayscale(_crops(images)[0].float())  # a one-channel image blurs like any other
    assert gaussian_blur(gray, 23, 1.0).shape == gray.shape


def _same_seed_outputs(fast: Callable[[torch.Tensor], torch.Tensor],
                       reference: Callable[[torch.Tensor], torch.Tensor],
                       images: list[torch.Tensor], seeds: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(fast output, reference output) per seed, each drawn after seeding the RNG the same way."""
    pairs = []
    for seed in range(seeds):
        image = images[seed % len(images)]
        torch.manual_seed(seed)
        want = reference(image)
        torch.manual_seed(seed)
        pairs.append((fast(image), want))
    return pairs


@pytest.mark.parametrize(("randaugment", "autoaugment"), [(True, False), (False, True), (False, False)],
                         ids=["randaugment", "autoaugment", "moco-v2"])
def test_global_views_equal_reference_for_the_same_seed(images: list[torch.Tensor], randaugment: bool,
                                                        autoaugment: bool) -> None:
    fast = global_view_transform(224, randaugment, autoaugment)
    reference = reference_global_view(224, randaugment, autoaugment)
    for got, want in _same_seed_outputs(fast, reference, images):
        assert got.shape == (3, 224, 224) and got.dtype == torch.float32
        _assert_within_one_level(got, want, 5e-3)


def test_patch_sets_equal_reference_for_the_same_seed(images: list[torch.Tensor]) -> None:
    fast, reference = JigsawPatches(255, 64), ReferenceJigsawPatches(255, 64)
    for got, want in _same_seed_outputs(fast, reference, images):
        assert got.shape == (9, 3, 64, 64) and got.dtype == torch.float32
        _assert_within_one_level(got, want, 5e-3)


def test_photometric_parameters_follow_the_configured_distribution() -> None:
    torch.manual_seed(0)
    n = 4000
    draws = [sample_photometric() for _ in range(n)]

    def assert_rate(hits: int, p: float) -> None:  # within 5 binomial standard deviations
        assert abs(hits / n - p) <= 5 * math.sqrt(p * (1 - p) / n), (hits / n, p)

    jittered = [d.jitter for d in draws if d.jitter is not None]
    assert_rate(len(jittered), 0.8)
    assert_rate(sum(d.gray for d in draws), 0.2)
    assert_rate(sum(d.flip for d in draws), 0.5)
    sigmas = [d.sigma for d in draws if d.sigma is not None]
    assert_rate(len(sigmas), 0.5)
    assert BLUR_SIGMA[0] <= min(sigmas) < BLUR_SIGMA[0] + 0.02 and BLUR_SIGMA[1] - 0.02 < max(sigmas) <= BLUR_SIGMA[1]
    assert sum(sigmas) / len(sigmas) == pytest.approx(sum(BLUR_SIGMA) / 2, abs=0.05)
    assert {tuple(step for step, _ in j) for j in jittered} == {
        (a, b, c, d) for a in range(4) for b in range(4) for c in range(4) for d in range(4)
        if len({a, b, c, d}) == 4}, "the jitter order is not a uniform permutation of the four steps"
    for step, (low, high) in enumerate(JITTER_RANGES):
        factors = [dict(j)[step] for j in jittered]
        width = high - low
        assert low <= min(factors) < low + 0.01 * width and high - 0.01 * width < max(factors) <= high
        assert sum(factors) / len(factors) == pytest.approx((low + high) / 2, abs=0.02 * width)


def test_photometric_steps_take_uint8_only() -> None:
    with pytest.raises(TypeError, match="uint8"):
        apply_photometric(torch.rand(3, 8, 8), sample_photometric(), 3)


def _crop_areas(crop: v2.RandomResizedCrop, image: torch.Tensor, n: int) -> list[float]:
    """The share of the image area of `n` crops drawn by `crop` from seed 1."""
    h, w = image.shape[-2:]
    torch.manual_seed(1)
    areas = []
    for _ in range(n):
        box = crop.make_params([image])
        areas.append(box["height"] * box["width"] / (h * w))
    return areas


def test_crop_scales_match_reference(images: list[torch.Tensor]) -> None:
    image = images[0]
    for fast, reference, low in [(global_view_transform(224), reference_global_view(224), 0.2),
                                 (JigsawPatches(255, 64).prepare, ReferenceJigsawPatches(255, 64).prepare, 0.6)]:
        assert isinstance(fast, AugmentedView)
        got, want = _crop_areas(fast.crop, image, 300), _crop_areas(reference.transforms[0], image, 300)
        assert got == want
        assert low - 0.01 <= min(got) < low + 0.05 and max(got) > 0.95 and max(got) <= 1.0


def test_patch_geometry_is_a_shuffled_3x3_grid_with_offsets_inside_cells() -> None:
    jig = JigsawPatches(resize=255, patch=64)
    jig.prepare = torch.nn.Identity()  # geometry only: a grid whose values are their coordinates
    ys, xs = torch.meshgrid(torch.arange(255.0), torch.arange(255.0), indexing="ij")
    grid = torch.stack([ys, xs, ys * 0])
    offsets: set[int] = set()
    for seed in range(40):
        torch.manual_seed(seed)
        patches = jig(grid)
        cells = []
        for patch in patches:
            y0, x0 = int(patch[0, 0, 0]), int(patch[1, 0, 0])
            window = (slice(y0, y0 + 64), slice(x0, x0 + 64))
            assert torch.equal(patch[0], ys[window]) and torch.equal(patch[1], xs[window])
            (row, dy), (col, dx) = divmod(y0, 85), divmod(x0, 85)
            assert dy + 64 <= 85 and dx + 64 <= 85, "a patch leaves its cell"
            cells.append(3 * row + col)
            offsets |= {dy, dx}
        assert sorted(cells) == list(range(9))
    assert offsets == set(range(85 - 64 + 1)), "offsets inside the cells do not cover 0..21"
