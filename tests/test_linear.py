"""`detco-bench linear`: the probes learn, the frozen check bites, resume is exact, bad input exits 2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from detco_bench import linear
from detco_bench.cli import app
from detco_bench.linear import (
    LBFGS_WEIGHT_DECAYS,
    FrozenBackbone,
    fit_lbfgs_head,
    gaussian_view,
    holdout_mask,
    knn_classify,
    preset_config,
    run_linear,
    train_sgd_head,
)
from detco_bench.linear import cache as linear_cache
from detco_bench.linear import protocol as linear_protocol
from detco_bench.linear.config import LinearConfig, protocol_fidelity
from detco_bench.records import protocol_of, read_record
from pretrain.lock import LOCK_NAME, folder_lock
from tests.conftest import save_random_resnet

runner = CliRunner()
COLORS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200), "gray": (128, 128, 128)}


def _easy_imagefolder(root: Path, per_class_train: int = 12, per_class_val: int = 6) -> Path:
    """Four classes told apart by colour, with noise and random brightness: easy for any features."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class_train), ("val", per_class_val)):
        for name, rgb in COLORS.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                img = np.clip(np.array(rgb) * rng.uniform(0.8, 1.2) + rng.normal(0, 25, (40, 40, 3)), 0, 255)
                Image.fromarray(img.astype(np.uint8)).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def easy_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _easy_imagefolder(tmp_path_factory.mktemp("data") / "easy")


@pytest.fixture(scope="module")
def random_resnet18(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_resnet(tmp_path_factory.mktemp("ck") / "resnet18_random.pth")


def _cfg(mode: str, **kw: object) -> linear.LinearConfig:
    base: dict[str, object] = dict(image_size=32, workers=0, batch_size=16, epochs=20)
    base.update(kw)
    return preset_config(mode, **base)


@pytest.mark.parametrize("mode,metric,threshold", [
    ("fast", "top1", 90.0), ("knn", "knn_top1", 60.0), ("protocol", "top1", 60.0)])
def test_probe_learns_far_above_chance(easy_data: Path, random_resnet18: Path, tmp_path: Path, mode: str,
                                       metric: str, threshold: float) -> None:
    epochs = 6 if mode == "protocol" else 20
    path = run_linear(random_resnet18, easy_data, tmp_path / mode, _cfg(mode, epochs=epochs), show_progress=False)
    record = read_record(path)
    assert record.engine == "builtin-linear" and record.task == f"linear_{mode}.easy"
    # Chance is 25%; measured with these seeds: fast 100, knn 83.3, protocol 75.
    assert record.metrics[metric] >= threshold, record.metrics
    assert record.checkpoint.sha256 and record.provenance["wall_clock_s"] > 0


def test_stages_probe_reports_every_stage(easy_data: Path, random_resnet18: Path, tmp_path: Path) -> None:
    record = read_record(run_linear(random_resnet18, easy_data, tmp_path / "s", _cfg("stages"), show_progress=False))
    assert set(record.metrics) == {"res2/top1", "res3/top1", "res4/top1", "res5/top1"}
    assert all(0.0 <= v <= 100.0 for v in record.metrics.values())


def test_frozen_check_catches_a_changed_backbone(easy_data: Path, random_resnet18: Path, tmp_path: Path) -> None:
    def tamper(backbone: FrozenBackbone) -> None:
        with torch.no_grad():
            backbone.trunk.layer4[0].bn1.running_mean.add_(0.1)

    with pytest.raises(RuntimeError, match="backbone changed"):
        run_linear(random_resnet18, easy_data, tmp_path / "t", _cfg("fast", epochs=1), show_progress=False,
                   before_check=tamper)
    assert not list((tmp_path / "t").glob("*.record.json")), "no record for a failed check"


def test_backbone_stays_in_eval_mode(random_resnet18: Path) -> None:
    from detco_bench.checkpoints import load_backbone

    backbone = FrozenBackbone(load_backbone(random_resnet18)).train()
    assert not backbone.training and not backbone.trunk.training
    assert all(not p.requires_grad for p in backbone.parameters())


def test_protocol_resume_is_exact(easy_data: Path, random_resnet18: Path, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _cfg("protocol", epochs=4)
    run_linear(random_resnet18, easy_data, tmp_path / "full", cfg, show_progress=False)

    real_lr = linear_protocol.epoch_lr

    def crash_at_epoch_2(c: linear.LinearConfig, epoch: int) -> float:
        if epoch == 2:
            raise KeyboardInterrupt("killed")
        return real_lr(c, epoch)

    monkeypatch.setattr(linear_protocol, "epoch_lr", crash_at_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        run_linear(random_resnet18, easy_data, tmp_path / "split", cfg, show_progress=False)
    monkeypatch.setattr(linear_protocol, "epoch_lr", real_lr)
    assert torch.load(tmp_path / "split" / linear.STATE_NAME, weights_only=True)["epoch"] == 2
    run_linear(random_resnet18, easy_data, tmp_path / "split", cfg, resume=True, show_progress=False)
    a = torch.load(tmp_path / "full" / linear.STATE_NAME, weights_only=True)["head"]
    b = torch.load(tmp_path / "split" / linear.STATE_NAME, weights_only=True)["head"]
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_feature_extraction_resumes_where_it_stopped(easy_data: Path, random_resnet18: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # Centre crops only (train-0); chunks of 32 rows: the 48 train images take 2 chunks.
    cfg = _cfg("fast", epochs=2, batch_size=4, aug_copies=0)
    run_linear(random_resnet18, easy_data, tmp_path / "full", cfg, show_progress=False)

    real = linear_cache.atomic_write_json
    def crash_after_first_chunk(path: Path, obj: object) -> Path:
        result = real(path, obj)
        if isinstance(obj, dict) and obj.get("done") == 32:
            raise KeyboardInterrupt("killed")
        return result

    monkeypatch.setattr(linear_cache, "atomic_write_json", crash_after_first_chunk)
    with pytest.raises(KeyboardInterrupt):
        run_linear(random_resnet18, easy_data, tmp_path / "split", cfg, show_progress=False)
    monkeypatch.setattr(linear_cache, "atomic_write_json", real)
    run_linear(random_resnet18, easy_data, tmp_path / "split", cfg, resume=True, show_progress=False)
    for stage in ("res2", "res5"):
        a = np.load(tmp_path / "full" / "cache" / "train-0" / f"{stage}.npy")
        b = np.load(tmp_path / "split" / "cache" / "train-0" / f"{stage}.npy")
        np.testing.assert_array_equal(a, b)


def test_knn_by_hand() -> None:
    train_x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    train_y = torch.tensor([0, 0, 1, 1])
    val_x = torch.tensor([[1.0, 0.05], [0.05, 1.0], [0.6, 0.4]])
    val_y = torch.tensor([0, 1, 1])
    result = knn_classify(train_x, train_y, val_x, val_y, classes=2, k=2, temperature=0.07)
    assert result == {"knn_top1": pytest.approx(200 / 3)}  # the last one sits nearer class 0


@pytest.mark.parametrize("case", ["missing", "no_val", "mismatch", "empty_class", "bad_mode", "not_empty_out",
                                  "bad_checkpoint"])
def test_linear_bad_input_exits_2(easy_data: Path, random_resnet18: Path, tmp_path: Path, case: str) -> None:
    data, ck, out = easy_data, random_resnet18, tmp_path / "out"
    mode = "fast"
    if case == "missing":
        data = tmp_path / "nowhere"
    elif case in ("no_val", "mismatch", "empty_class"):
        data = tmp_path / "data"
        (data / "train" / "a").mkdir(parents=True)
        (data / "train" / "b").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(data / "train" / "a" / "x.png")
        Image.new("RGB", (8, 8)).save(data / "train" / "b" / "x.png")
        if case == "mismatch":
            (data / "val" / "a").mkdir(parents=True)
            (data / "val" / "c").mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(data / "val" / "a" / "x.png")
            Image.new("RGB", (8, 8)).save(data / "val" / "c" / "x.png")
        if case == "empty_class":
            (data / "val" / "a").mkdir(parents=True)
            (data / "val" / "b").mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(data / "val" / "a" / "x.png")
    elif case == "bad_mode":
        mode = "svm"
    elif case == "not_empty_out":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    elif case == "bad_checkpoint":
        ck = tmp_path / "junk.pth"
        ck.write_bytes(b"\x00garbage")
    result = runner.invoke(app, ["linear", "--checkpoint", str(ck), "--data", str(data), "--out", str(out),
                                 "--mode", mode, "--workers", "0", "--no-progress"])
    assert result.exit_code == 2, result.output
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    expected = {"missing": "does not exist", "no_val": "val is missing", "mismatch": "classes differ",
                "empty_class": "without images", "bad_mode": "unknown mode", "not_empty_out": "not empty",
                "bad_checkpoint": "junk.pth"}[case]
    assert expected in lines[0]
    if case == "not_empty_out":
        assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_cli_prints_metrics_and_record(easy_data: Path, random_resnet18: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["linear", "--checkpoint", str(random_resnet18), "--data", str(easy_data),
                                 "--out", str(tmp_path / "o"), "--mode", "knn", "--image-size", "32",
                                 "--workers", "0", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "linear_knn.easy: knn_top1" in result.stdout and "record: " in result.stdout


def test_only_a_1000_class_dataset_is_called_imagenet(tmp_path: Path) -> None:
    from detco_bench.linear import default_dataset_name

    assert default_dataset_name(tmp_path / "imagenet", 1000) == "imagenet"
    assert default_dataset_name(tmp_path / "imagenet", 4) == "imagenet-4classes"
    assert default_dataset_name(tmp_path / "easy", 4) == "easy"


def test_fast_trains_on_augmented_views_only_and_records_how(easy_data: Path, random_resnet18: Path,
                                                              tmp_path: Path) -> None:
    record = read_record(run_linear(random_resnet18, easy_data, tmp_path / "f", _cfg("fast"), show_progress=False))
    assert record.config["aug_copies"] == linear.DEFAULT_AUG_COPIES == 4
    assert record.config["view_sampling"] == "gaussian"
    assert record.config["head_fit"] == {"res5": {"head": "sgd", "views_per_epoch": 1, "train_views": [1, 2, 3, 4]}}
    cached = sorted(p.name for p in (tmp_path / "f" / "cache").iterdir())
    assert cached == ["train-1", "train-2", "train-3", "train-4", "val-0"], "like the protocol: no centre crops"
    assert record.metrics["top1"] >= 90.0, record.metrics


def test_cache_normalises_per_batch_with_the_protocols_per_image_bits(easy_data: Path, random_resnet18: Path,
                                                                     tmp_path: Path) -> None:
    """The cache's dataset yields uint8 crops normalised per batch; its features are bit for bit those
    of the protocol's per-image transforms on the same draws."""
    from torchvision.datasets import ImageFolder

    from detco_bench.checkpoints import load_backbone

    cfg = _cfg("fast", aug_copies=1, seed=3)
    run_linear(random_resnet18, easy_data, tmp_path / "f", cfg, show_progress=False)
    backbone = FrozenBackbone(load_backbone(random_resnet18))
    for split, copy, transform in (("train", 1, linear.train_transform), ("val", 0, linear.val_transform)):
        images = ImageFolder(str(easy_data / split))
        torch.manual_seed(cfg.seed * 1_000_003 + copy)  # the extraction's seed for its first chunk
        x = torch.stack([transform(cfg.image_size)(images[i][0]) for i in range(len(images))])
        with torch.no_grad():
            expected = torch.cat([backbone(x[i:i + cfg.batch_size])[-1] for i in range(0, len(x), cfg.batch_size)])
        cached = torch.from_numpy(np.load(tmp_path / "f" / "cache" / f"{split}-{copy}" / "res5.npy"))
        assert len(images) <= cfg.batch_size * 8, "one extraction chunk, one seed"
        assert torch.equal(cached, expected), (split, (cached - expected).abs().max())


@pytest.mark.parametrize("mode,overrides,sampling", [
    ("fast", {}, "gaussian"), ("stages", {}, "gaussian"), ("fast", {"aug_copies": 1}, "cycle"),
    ("fast", {"aug_copies": 0}, "cycle"), ("fast", {"fast_head": "lbfgs"}, "cycle"), ("protocol", {}, "cycle"),
    ("knn", {}, "cycle"), ("fast", {"view_sampling": "cycle"}, "cycle")])
def test_default_view_sampling_is_gaussian_where_it_applies(mode: str, overrides: dict[str, object],
                                                            sampling: str) -> None:
    """The sgd head of fast / stages draws from each image's Gaussian when it has 2+ views; every
    other setting (and an explicit choice) is cycle, so no default combination is refused."""
    assert preset_config(mode, **overrides).view_sampling == sampling


def test_sgd_head_runs_over_one_view_per_epoch() -> None:
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(40) % 2
    good = torch.randn(40, 8, generator=gen) + 3.0 * y[:, None]
    poisoned = torch.full_like(good, float("nan"))
    cfg = preset_config("fast", epochs=1, batch_size=8, lr=0.1, view_sampling="cycle")
    head, fit = train_sgd_head([good, poisoned], y, 2, cfg, torch.device("cpu"))
    assert torch.isfinite(head.weight).all(), "epoch 0 saw view 0 only"
    head, _ = train_sgd_head([good, poisoned], y, 2, preset_config("fast", epochs=2, batch_size=8, lr=0.1,
                                                                   view_sampling="cycle"), torch.device("cpu"))
    assert torch.isnan(head.weight).any(), "epoch 1 ran over view 1"
    assert fit == {"head": "sgd", "views_per_epoch": 1}


def test_gaussian_view_has_the_views_mean_and_covariance_within_their_span() -> None:
    """Many draws for one image: their mean is the views' mean, their covariance the views'
    (1/K-normalised) covariance, and every draw lies in the affine span of the image's views."""
    k, dim, draws = 3, 6, 40000
    views = torch.randn(k, 1, dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2.0 + 1.0
    samples = gaussian_view(views.expand(k, draws, dim), torch.Generator().manual_seed(1))  # (draws, dim)
    mean = views[:, 0].mean(0)
    deviations = views[:, 0] - mean  # (k, dim)
    expected_cov = deviations.T @ deviations / k
    scale = expected_cov.diagonal().max().item()
    torch.testing.assert_close(samples.mean(0), mean, atol=0.03 * scale ** 0.5, rtol=0)
    torch.testing.assert_close(samples.T.cov(correction=0), expected_cov, atol=0.03 * scale, rtol=0)
    # Inside the span: what is left after projecting (sample - mean) onto the deviations is zero.
    basis = torch.linalg.svd(deviations, full_matrices=False).Vh[: k - 1]  # the span's (k-1) directions
    residual = (samples - mean) - (samples - mean) @ basis.T @ basis
    assert residual.abs().max().item() < 1e-9
    again = gaussian_view(views.expand(k, draws, dim), torch.Generator().manual_seed(1))
    assert torch.equal(samples, again), "seeded"


def test_gaussian_sampling_draws_fresh_features_each_epoch() -> None:
    """With `view_sampling` gaussian every epoch reads every view (a poisoned one poisons epoch 0),
    and the head learns from the draws, seeded."""
    x, y = _blobs(240, noise_seed=1)
    views = [x + 0.5 * torch.randn(x.shape, generator=torch.Generator().manual_seed(s)) for s in (3, 4, 5)]
    cfg = preset_config("fast", epochs=1, batch_size=16, lr=0.1, aug_copies=3, view_sampling="gaussian")
    head, fit = train_sgd_head([*views[:2], torch.full_like(x, float("nan"))], y, 4, cfg, torch.device("cpu"))
    assert torch.isnan(head.weight).any(), "epoch 0 read all three views"
    assert fit == {"head": "sgd", "views_per_epoch": 1}
    cfg = preset_config("fast", epochs=10, batch_size=16, lr=0.1, aug_copies=3, view_sampling="gaussian")
    head, _ = train_sgd_head(views, y, 4, cfg, torch.device("cpu"))
    val_x, val_y = _blobs(240, noise_seed=2)
    assert (head(val_x).argmax(1) == val_y).float().mean().item() >= 0.9
    again, _ = train_sgd_head(views, y, 4, cfg, torch.device("cpu"))
    assert torch.equal(head.weight, again.weight), "seeded"


@pytest.mark.parametrize("flags,message", [
    (["--view-sampling", "mixup"], "unknown --view-sampling 'mixup'"),
    (["--view-sampling", "gaussian", "--aug-copies", "1"], "--view-sampling gaussian needs --fast-head sgd"),
    (["--view-sampling", "gaussian", "--fast-head", "lbfgs"], "--view-sampling gaussian needs --fast-head sgd"),
])
def test_bad_view_sampling_exits_2(easy_data: Path, random_resnet18: Path, tmp_path: Path, flags: list[str],
                                   message: str) -> None:
    result = runner.invoke(app, ["linear", "--checkpoint", str(random_resnet18), "--data", str(easy_data),
                                 "--out", str(tmp_path / "o"), "--mode", "fast", *flags,
                                 "--workers", "0", "--no-progress"])
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and message in lines[0], result.output
    assert not (tmp_path / "o").exists(), "nothing written"


def test_fast_gaussian_end_to_end_records_its_sampling(easy_data: Path, random_resnet18: Path,
                                                       tmp_path: Path) -> None:
    cfg = _cfg("fast", aug_copies=2, view_sampling="gaussian")
    record = read_record(run_linear(random_resnet18, easy_data, tmp_path / "g", cfg, show_progress=False))
    assert record.config["view_sampling"] == "gaussian" and record.config["aug_copies"] == 2
    assert record.config["head_fit"]["res5"]["train_views"] == [1, 2]
    assert record.metrics["top1"] >= 90.0, record.metrics


def _blobs(n: int, noise_seed: int, noise: float = 2.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Four Gaussian class blobs in 16-d, offset from the origin: features (n, 16), labels (n,)."""
    centers = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
    y = torch.arange(n) % 4
    return 5.0 + 3.0 * centers[y] + noise * torch.randn(n, 16, generator=torch.Generator().manual_seed(noise_seed)), y


def test_lbfgs_head_sweeps_weight_decay_on_held_out_images() -> None:
    x, y = _blobs(240, noise_seed=1)
    val_x, val_y = _blobs(240, noise_seed=2)
    augmented = x + 0.5 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    cfg = preset_config("fast", fast_head="lbfgs")
    head, fit = fit_lbfgs_head([x, augmented], y, x, 4, cfg, torch.device("cpu"))
    assert fit["head"] == "lbfgs" and fit["weight_decay"] in LBFGS_WEIGHT_DECAYS
    assert set(fit["holdout_top1"]) == {f"{wd:g}" for wd in LBFGS_WEIGHT_DECAYS}
    assert fit["holdout_top1"][f"{fit['weight_decay']:g}"] == max(fit["holdout_top1"].values())
    assert fit["holdout_images"] == 48  # 20% of 60 per class
    # The head works on raw (unstandardised) features: the standardisation is folded into it.
    accuracy = (head(val_x).argmax(1) == val_y).float().mean().item()
    assert accuracy >= 0.9, accuracy
    again, fit_again = fit_lbfgs_head([x, augmented], y, x, 4, cfg, torch.device("cpu"))
    assert torch.equal(head.weight, again.weight) and torch.equal(head.bias, again.bias) and fit == fit_again


def test_holdout_mask_is_stratified_and_seeded() -> None:
    y = torch.tensor([0] * 10 + [1] * 5 + [2] * 1)
    mask = holdout_mask(y, 0.2, seed=3)
    assert [int(mask[y == c].sum()) for c in range(3)] == [2, 1, 0], "a lone image stays to be fitted"
    assert torch.equal(mask, holdout_mask(y, 0.2, seed=3)) and not torch.equal(mask, holdout_mask(y, 0.2, seed=4))


def test_fast_lbfgs_end_to_end_is_deterministic_and_records_its_choice(easy_data: Path, random_resnet18: Path,
                                                                        tmp_path: Path) -> None:
    grid = (1e-3, 1e-1, 10.0)
    cfg = _cfg("fast", fast_head="lbfgs", aug_copies=1, lbfgs_max_iter=50, lbfgs_weight_decays=grid)
    a = read_record(run_linear(random_resnet18, easy_data, tmp_path / "a", cfg, show_progress=False))
    b = read_record(run_linear(random_resnet18, easy_data, tmp_path / "b", cfg, show_progress=False))
    fit = a.config["head_fit"]["res5"]
    assert fit["head"] == "lbfgs" and fit["train_views"] == [0, 1] and fit["weight_decay"] in grid
    assert a.config["lbfgs_weight_decays"] == list(grid) and set(fit["holdout_top1"]) == {"0.001", "0.1", "10"}
    assert a.metrics["top1"] >= 90.0, a.metrics
    assert a.metrics == b.metrics and a.config == b.config
    for view in ("train-0", "train-1", "val-0"):
        np.testing.assert_array_equal(np.load(tmp_path / "a" / "cache" / view / "res5.npy"),
                                      np.load(tmp_path / "b" / "cache" / view / "res5.npy"))


def test_bad_fast_head_exits_2(easy_data: Path, random_resnet18: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["linear", "--checkpoint", str(random_resnet18), "--data", str(easy_data),
                                 "--out", str(tmp_path / "o"), "--mode", "fast", "--fast-head", "svm",
                                 "--workers", "0", "--no-progress"])
    assert result.exit_code == 2 and "unknown --fast-head 'svm'" in result.stderr, result.output


def test_a_second_writer_of_the_folder_exits_2_with_one_line(easy_data: Path, random_resnet18: Path,
                                                             tmp_path: Path) -> None:
    out = tmp_path / "o"
    with folder_lock(out):  # another `linear` (or any detco-bench writer) holds the folder
        result = runner.invoke(app, ["linear", "--checkpoint", str(random_resnet18), "--data", str(easy_data),
                                     "--out", str(out), "--mode", "knn", "--image-size", "32", "--workers", "0",
                                     "--no-progress"])
    assert result.exit_code == 2, result.output
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "another detco-bench process" in lines[0], lines
    assert [p.name for p in out.iterdir()] == [LOCK_NAME], "the refused writer wrote nothing"
    # Released, the folder (holding only its lock file) is free for a new run.
    result = runner.invoke(app, ["linear", "--checkpoint", str(random_resnet18), "--data", str(easy_data),
                                 "--out", str(out), "--mode", "knn", "--image-size", "32", "--workers", "0",
                                 "--no-progress"])
    assert result.exit_code == 0, result.output


def test_default_workers_fit_the_machine_and_an_explicit_value_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    import detco_bench.linear.config as linear_config

    monkeypatch.setattr(linear_config, "machine_workers", lambda: 1)  # a 2-core machine
    assert preset_config("fast").workers == 1
    assert preset_config("fast", workers=None).workers == 1
    assert preset_config("fast", workers=8).workers == 8
    monkeypatch.setattr(linear_config, "machine_workers", lambda: 63)
    assert preset_config("protocol").workers == 8  # never more than the protocol's default


def test_protocol_fidelity_names_every_difference_from_mocos_recipe() -> None:
    exact = protocol_fidelity(LinearConfig(), "imagenet", 1000)
    assert exact == {"protocol": "exact", "differences": []}
    # Workers and seed never change what is measured.
    assert protocol_fidelity(LinearConfig(workers=2, seed=3), "imagenet", 1000)["protocol"] == "exact"
    fast = protocol_fidelity(preset_config("fast", epochs=30, lr=10.0, batch_size=64), "easy", 4)
    assert fast["protocol"] == "adapted"
    text = "\n".join(fast["differences"])
    for fragment in ("mode: fast", "epochs: 100 -> 30", "lr: 30.0 -> 10.0", "batch_size: 256 -> 64",
                     "milestones: (60, 80) -> (18, 24)", "data: easy (4 classes), not ImageNet-1k"):
        assert fragment in text, text
    assert "image_size" not in text and "momentum" not in text
    on_imagenet100 = protocol_fidelity(LinearConfig(), "imagenet", 100)
    assert on_imagenet100["differences"] == ["data: imagenet (100 classes), not ImageNet-1k"]


def test_linear_records_carry_their_protocol_fidelity(easy_data: Path, random_resnet18: Path, tmp_path: Path) -> None:
    record = read_record(run_linear(random_resnet18, easy_data, tmp_path / "k", _cfg("knn"), show_progress=False))
    fidelity = protocol_of(record.config)  # what the report reads ("adapted": not compared with the paper)
    assert fidelity is not None and fidelity["protocol"] == "adapted"
    assert any(d.startswith("mode: knn") for d in fidelity["differences"])
    assert any(d.startswith("image_size: 224 -> 32") for d in fidelity["differences"])
    assert record.protocol == fidelity
