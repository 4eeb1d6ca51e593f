"""The two view pipelines of DetCo: uint8 image tensor in, normalized float views out.

- Global view: the MoCo v2 recipe (RandomResizedCrop scale 0.2-1, colour jitter 0.4/0.4/0.4/0.1
  with p=0.8, grayscale p=0.2, Gaussian blur sigma 0.1-2 with p=0.5, flip), plus RandAugment
  (DetCo) and AutoAugment (the "AA" variant) when enabled.
- Local patch set (PIRL-style jigsaw): a crop covering >= 60% of the image, resized to a square
  (255 px in the paper), flip / jitter / blur, cut into a 3x3 grid of cells (85 px), the cells
  shuffled, one random patch (64 px) cropped from each cell.

The crop and the AutoAugment / RandAugment policies are torchvision.transforms.v2's. The MoCo v2
photometric steps are computed here, because torchvision's are most of a DetCo sample's cost (a
full 2-D 23x23 blur convolution, an HSV round trip, a uint8 conversion after every step): they
draw their parameters from torch's global generator in exactly torchvision's order and reproduce
torchvision's uint8 results (the same floor / round after every step; blur and hue agree to within
one grey level on about one value in ten thousand), several times faster. A sample's views are thus
those the torchvision pipeline would give for the same seed, and a run resumed across this change
keeps its augmentation stream.

All randomness comes from torch's global generator, so a caller that seeds it per sample gets
reproducible views (the training loop does, for exact resume).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as nnf
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

JITTER_P, GRAY_P, BLUR_P, FLIP_P = 0.8, 0.2, 0.5, 0.5
JITTER_RANGES = ((0.6, 1.4), (0.6, 1.4), (0.6, 1.4), (-0.1, 0.1))  # brightness, contrast, saturation, hue
BLUR_SIGMA = (0.1, 2.0)
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)

_MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
_STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)
# hsv -> rgb as f(n) = V - C * clamp(min(k, 4 - k), 0, 1), k = (n + hue in sixths) mod 6, n = 5, 3, 1
_HUE_OFFSETS = torch.tensor([5.0, 3.0, 1.0]).view(3, 1, 1)
# Blur taps lighter than this are dropped (the kernel is 23-25 wide whatever sigma is): at most
# 25 * 1e-6 of the mass, far below the 0.5 grey level that rounding discards.
_MIN_TAP = 1e-6


def _blur_kernel(size: int) -> int:
    """An odd kernel about 10% of the crop side, as MoCo v2's PIL blur effectively covers."""
    k = max(3, int(0.1 * size))
    return k if k % 2 else k + 1


@dataclass(frozen=True)
class PhotometricParams:
    """One draw of the MoCo v2 photometric steps: `jitter` the (step, factor) pairs in the order
    applied (None: no jitter), `gray` grayscale or not, `sigma` the blur's sigma (None: no blur),
    `flip` a horizontal flip or not."""

    jitter: tuple[tuple[int, float], ...] | None
    gray: bool
    sigma: float | None
    flip: bool


def _uniform(low: float, high: float) -> float:
    return float(torch.empty(1).uniform_(low, high).item())


def sample_photometric() -> PhotometricParams:
    """Draws the parameters from torch's global generator with torchvision's calls in torchvision's
    order (RandomApply(ColorJitter), RandomGrayscale, RandomApply(GaussianBlur), RandomHorizontalFlip),
    so a seed gives the parameters the torchvision pipeline would give."""
    jitter = None
    if torch.rand(1) < JITTER_P:  # RandomApply (and every random v2 step) skips when rand >= p
        order = torch.randperm(4).tolist()
        factors = [_uniform(low, high) for low, high in JITTER_RANGES]
        jitter = tuple((step, factors[step]) for step in order)
    gray = bool(torch.rand(1) < GRAY_P)
    sigma = _uniform(*BLUR_SIGMA) if torch.rand(1) < BLUR_P else None
    flip = bool(torch.rand(1) < FLIP_P)
    return PhotometricParams(jitter, gray, sigma, flip)


# The kernels below take and return float32 (C, H, W) images holding whole grey levels 0..255 and
# quantize like torchvision's uint8 kernels (floor after a blend, round after the blur).

def _luma(image: torch.Tensor) -> torch.Tensor:
    """(1, H, W) ITU-R 601 grey levels, floored as torchvision's uint8 grayscale."""
    r, g, b = image.unbind(0)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).floor_().unsqueeze(0)


def _blend(image: torch.Tensor, other: torch.Tensor, ratio: float) -> torch.Tensor:
    """ratio * image + (1 - ratio) * other, clamped and floored."""
    return image.mul(ratio).add_(other, alpha=1.0 - ratio).clamp_(0, 255).floor_()


def adjust_brightness(image: torch.Tensor, factor: float) -> torch.Tensor:
    """The image scaled by `factor` (torchvision's blend with black)."""
    return image.mul(factor).clamp_(0, 255).floor_()


def adjust_contrast(image: torch.Tensor, factor: float) -> torch.Tensor:
    """The image blended with its mean grey level."""
    return _blend(image, _luma(image).mean(), factor)


def adjust_saturation(image: torch.Tensor, factor: float) -> torch.Tensor:
    """The image blended with its grey version."""
    return _blend(image, _luma(image), factor)


def adjust_hue(image: torch.Tensor, factor: float) -> torch.Tensor:
    """Rotates the hue by `factor` turns, keeping HSV value (the max channel) and chroma
    (max - min): torchvision's HSV round trip in closed form, without the (3, H, W) stacks."""
    top, low = image.amax(0), image.amin(0)
    chroma = top - low
    r, g, b = image.unbind(0)
    # hue in sixths of a turn, offset by +6 so that it stays positive after the shift
    sector = torch.where(top == r, g - b, torch.where(top == g, (b - r).add_(chroma, alpha=2.0),
                                                      (r - g).add_(chroma, alpha=4.0)))
    sector.div_(chroma.clamp(min=1.0)).add_(6.0 * factor + 6.0)
    k = sector + _HUE_OFFSETS
    k.sub_(k.mul(1.0 / 6.0).floor_().mul_(6.0))
    weight = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    # torchvision scales the [0, 1] result by 255.999 before truncating to uint8
    return (top - weight.mul_(chroma)).mul_(255.999 / 255.0).floor_()


def to_grayscale(image: torch.Tensor) -> torch.Tensor:
    """(1, H, W): the later steps run on one channel, the normalization broadcasts it to three."""
    return _luma(image)


def _gaussian_taps(kernel: int, sigma: float) -> list[float]:
    """torchvision's 1-D Gaussian kernel (softmax of -(x / sigma)^2 on a grid of spacing 1/sqrt 2),
    with its negligible tail taps set to 0."""
    lim = (kernel - 1) / (2.0 * math.sqrt(2.0))
    x = torch.linspace(-lim, lim, steps=kernel)
    taps = torch.softmax(x.div(sigma).pow(2).neg(), dim=0)
    return [w if w >= _MIN_TAP else 0.0 for w in taps.tolist()]


def _convolve(padded: torch.Tensor, taps: list[float], dim: int, length: int) -> torch.Tensor:
    """1-D convolution of an already padded image along `dim` (-1 or -2): a sum of shifted slices,
    which reads memory in order for either axis."""
    out: torch.Tensor | None = None
    for i, w in enumerate(taps):
        if w:
            window = padded.narrow(dim, i, length)
            out = window.mul(w) if out is None else out.add_(window, alpha=w)
    assert out is not None  # the centre tap is never dropped
    return out


def gaussian_blur(image: torch.Tensor, kernel: int, sigma: float) -> torch.Tensor:
    """torchvision's kernel x kernel Gaussian blur (reflect padding, rounded to whole levels), as
    two 1-D passes."""
    taps = _gaussian_taps(kernel, sigma)
    r = kernel // 2
    height, width = image.shape[-2:]
    rows = _convolve(nnf.pad(image, (r, r, 0, 0), mode="reflect"), taps, -1, width)
    return _convolve(nnf.pad(rows, (0, 0, r, r), mode="reflect"), taps, -2, height).round_()


_JITTER_STEPS = {BRIGHTNESS: adjust_brightness, CONTRAST: adjust_contrast,
                 SATURATION: adjust_saturation, HUE: adjust_hue}


def apply_photometric(image: torch.Tensor, params: PhotometricParams, blur_kernel: int) -> torch.Tensor:
    """uint8 (3, H, W) -> ImageNet-normalized float32 (3, H, W): jitter, grayscale, blur, flip."""
    if image.dtype != torch.uint8:
        raise TypeError(f"the photometric steps take a uint8 image, got {image.dtype}")
    x = image.float()
    for step, factor in params.jitter or ():
        x = _JITTER_STEPS[step](x, factor)
    if params.gray:
        x = to_grayscale(x)
    if params.sigma is not None:
        x = gaussian_blur(x, blur_kernel, params.sigma)
    if params.flip:
        x = x.flip(-1)
    # ToDtype(scale=True) then Normalize, step for step (broadcasting a grayscale channel to three)
    return x.mul(1.0 / 255).sub(_MEAN).div_(_STD)


def adjust_sharpness(image: torch.Tensor, factor: float) -> torch.Tensor:
    """torchvision's uint8 sharpness on a uint8 (C, H, W) image: the interior blended with its
    smoothed self (3x3 kernel, 5/13 centre, 1/13 around, rounded; the border kept), as two box sums
    instead of the (slow on CPU) grouped conv2d. The smoothed values are multiples of 1/13, never
    near a rounding tie, so the result is torchvision's exactly."""
    if image.shape[-1] <= 2 or image.shape[-2] <= 2:
        return image
    x = image.float()
    rows = x[..., :, :-2] + x[..., :, 1:-1] + x[..., :, 2:]
    centre = x[..., 1:-1, 1:-1]
    smoothed = (rows[..., :-2, :] + rows[..., 1:-1, :] + rows[..., 2:, :]).add_(centre, alpha=4.0)
    smoothed = smoothed.div_(13.0).round_()
    centre.add_(smoothed.sub_(centre), alpha=1.0 - factor)
    return x.clamp_(0, 255).to(torch.uint8)


class _FastSharpness:
    """Mixin for torchvision's AutoAugment / RandAugment: the Sharpness op by `adjust_sharpness`
    on uint8 images (the same draws and the same result; torchvision's grouped conv2d is slow on
    the CPU), every other op as torchvision does it."""

    def _apply_image_or_video_transform(self, image: torch.Tensor, transform_id: str, magnitude: float,
                                        *args: object, **kwargs: object) -> torch.Tensor:
        if transform_id == "Sharpness" and image.dtype == torch.uint8 and type(image) is torch.Tensor:
            return adjust_sharpness(image, 1.0 + magnitude)
        return super()._apply_image_or_video_transform(  # type: ignore[misc]
            image, transform_id, magnitude, *args, **kwargs)


class AutoAugment(_FastSharpness, v2.AutoAugment):
    """v2.AutoAugment with the fast Sharpness op."""


class RandAugment(_FastSharpness, v2.RandAugment):
    """v2.RandAugment with the fast Sharpness op."""


class AugmentedView(torch.nn.Module):
    """uint8 image tensor (3, H, W) -> normalized float view (3, size, size): a random resized crop
    (`scale`: the crop's share of the image area), the `policies` (AutoAugment / RandAugment) in
    order, then the MoCo v2 photometric steps."""

    def __init__(self, size: int, scale: tuple[float, float], policies: Sequence[v2.Transform] = ()) -> None:
        super().__init__()
        self.crop = v2.RandomResizedCrop(size, scale=scale, antialias=True)
        self.policies = torch.nn.ModuleList(policies)
        self.blur_kernel = _blur_kernel(size)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        view = self.crop(image)
        for policy in self.policies:
            view = policy(view)
        return apply_photometric(view, sample_photometric(), self.blur_kernel)


def global_view_transform(size: int = 224, randaugment: bool = True, autoaugment: bool = False) -> AugmentedView:
    """uint8 image tensor (3, H, W) -> normalized float view (3, size, size)."""
    policies: list[v2.Transform] = []
    if autoaugment:
        policies.append(AutoAugment(v2.AutoAugmentPolicy.IMAGENET))
    if randaugment:
        policies.append(RandAugment())
    return AugmentedView(size, (0.2, 1.0), policies)


class JigsawPatches(torch.nn.Module):
    """uint8 image tensor (3, H, W) -> 9 normalized patches (9, 3, patch, patch), cells shuffled."""

    def __init__(self, resize: int = 255, patch: int = 64) -> None:
        super().__init__()
        if resize % 3 or resize // 3 < patch:
            raise ValueError(f"resize {resize} must split into 3 cells of at least {patch} px")
        self.cell = resize // 3
        self.patch = patch
        self.prepare = AugmentedView(resize, (0.6, 1.0))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        grid = self.prepare(image)  # (3, resize, resize)
        c, p = self.cell, self.patch
        order = torch.randperm(9)
        offsets = torch.randint(0, c - p + 1, (9, 2))
        patches = []
        for slot in range(9):
            row, col = divmod(int(order[slot]), 3)
            dy, dx = int(offsets[slot, 0]), int(offsets[slot, 1])
            y, x = row * c + dy, col * c + dx
            patches.append(grid[:, y:y + p, x:x + p])
        return torch.stack(patches)
