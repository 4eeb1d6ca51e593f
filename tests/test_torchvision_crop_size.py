"""The torchvision engine's crop sizes equal Detectron2's RandomCrop.get_crop_size for every
INPUT.CROP.TYPE, on the same draws, including sizes on a rounding edge (h * size + 0.5 an integer in
exact arithmetic), where Detectron2's float32 range bounds decide (needs detectron2: marker
`detectron2`)."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest

from detco_bench.engines.torchvision.data.datasets import TrainDataset
from detco_bench.engines.torchvision.settings import Settings

pytestmark = pytest.mark.detectron2

DATASETS = "detco_bench.engines.torchvision.data.datasets"
FRACTIONS = (0.0, 0.125, 0.25, 0.375, 0.5, 0.75, 0.999)  # forced uniform draws / offset fractions
HEIGHTS = range(1, 301)


def engine_crop_size(crop_type: str, size: list[float], h: int, w: int, u: float) -> tuple[int, int]:
    dataset = TrainDataset([], Settings({"INPUT": {"CROP": {"ENABLED": True, "TYPE": crop_type, "SIZE": size}}}),
                           None, task="sem_seg")  # type: ignore[arg-type]  # meta is not read here
    with mock.patch(f"{DATASETS}._uniform", return_value=u), \
         mock.patch(f"{DATASETS}._randint", side_effect=lambda g, lo, hi: lo + round(u * (hi - lo))):
        return dataset._crop_size(None, h, w)  # type: ignore[arg-type]  # the draws are forced


def detectron2_crop_size(crop_type: str, size: list[float], h: int, w: int, u: float) -> tuple[int, int]:
    from detectron2.data.transforms import RandomCrop

    crop = RandomCrop(crop_type, size)
    with mock.patch("numpy.random.rand", side_effect=lambda n: np.full(n, u)), \
         mock.patch("numpy.random.randint", side_effect=lambda lo, hi: lo + round(u * (hi - 1 - lo))):
        ch, cw = crop.get_crop_size((h, w))
    return int(ch), int(cw)


@pytest.mark.parametrize("crop_type,size", [
    ("relative", [0.3, 0.7]), ("relative", [0.45, 0.9]),
    ("relative_range", [0.3, 0.7]), ("relative_range", [0.45, 0.9]), ("relative_range", [0.5, 0.5]),
    ("absolute", [96.0, 150.0]), ("absolute_range", [64.0, 200.0]),
])
def test_crop_size_equals_detectron2(crop_type: str, size: list[float]) -> None:
    mismatches = [(h, u, engine, d2) for h in HEIGHTS for u in FRACTIONS
                  if (engine := engine_crop_size(crop_type, size, h, h + 37, u))
                  != (d2 := detectron2_crop_size(crop_type, size, h, h + 37, u))]
    assert not mismatches, f"{len(mismatches)} sizes differ, e.g. (h, u, engine, detectron2) {mismatches[:3]}"


def test_the_sweep_reaches_rounding_edges() -> None:
    """Computed in float64 from the config's values, the relative_range sizes of the sweep above
    would differ from Detectron2's on some heights: the sweep does test the float32 bounds."""
    edges = [h for h in HEIGHTS for u in FRACTIONS
             if int(h * (0.3 + u * (1 - 0.3)) + 0.5) != detectron2_crop_size("relative_range", [0.3, 0.7], h, h, u)[0]]
    assert len(edges) > 10
