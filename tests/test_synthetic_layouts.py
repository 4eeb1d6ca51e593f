"""Synthetic dataset layouts, each checked with the real reader of its format."""

from __future__ import annotations

import contextlib
import hashlib
import io
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from typer.testing import CliRunner

from detco_bench import cli_data
from detco_bench.errors import UserError
from detco_bench.synthetic import (
    CITYSCAPES_CLASS_LABELS,
    KEYPOINT_OKS_SIGMAS,
    MANIFEST_NAME,
    mask_to_cityscapes_polygon,
    mask_to_polygons,
    scene_index,
    voc_split_plan,
    write_synthetic_dataset,
)
from pretrain.synthetic import CLASS_NAMES, KEYPOINT_NAMES, render_scene

# pycocotools' decode trips a NumPy 2 copy-keyword deprecation warning; it is not ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

H, W = 96, 128
NUM_TRAIN, NUM_VAL, SEED = 8, 4, 3


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthetic") / "data"
    summary = write_synthetic_dataset(out, "all", num_train=NUM_TRAIN, num_val=NUM_VAL, seed=SEED,
                                      image_size=(H, W))
    assert summary["layout"] == "all" and set(summary["layouts"]) == {
        "images", "imagefolder", "coco", "voc", "cityscapes"}
    assert summary["counts"] == {"train": NUM_TRAIN, "val": NUM_VAL}
    return out


def tree_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _scene(split: str, i: int):
    return render_scene(SEED, scene_index(split, i), H, W)


# --- polygons ------------------------------------------------------------------------------------

def _rasterize_coco(polygons: list[list[int]], h: int, w: int) -> np.ndarray:
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, h, w))).astype(bool)


def _tricky_masks() -> list[np.ndarray]:
    yy, xx = np.mgrid[0:40, 0:48]
    d2 = (yy - 20) ** 2 + (xx - 24) ** 2
    ring = (d2 <= 15**2) & (d2 >= 8**2)
    island = ring | (d2 <= 3**2)  # a component inside another component's hole
    two = np.zeros((40, 48), bool)
    two[2:10, 2:10] = True
    two[20:30, 30:45] = True
    diagonal = np.zeros((40, 48), bool)
    diagonal[5:10, 5:10] = True
    diagonal[10:15, 10:15] = True  # touches the first block at one corner only
    holes = np.zeros((40, 48), bool)
    holes[0:40, 0:48] = True
    holes[5:10, 5:10] = False
    holes[20:25, 30:33] = False
    holes[12, 12] = False
    one_pixel = np.zeros((40, 48), bool)
    one_pixel[0, 47] = True
    return [ring, island, two, diagonal, holes, one_pixel]


@pytest.mark.parametrize("k", range(6))
def test_coco_polygons_rasterize_exactly(k: int) -> None:
    mask = _tricky_masks()[k]
    polygons = mask_to_polygons(mask)
    assert all(len(p) >= 6 and len(p) % 2 == 0 for p in polygons)
    np.testing.assert_array_equal(_rasterize_coco(polygons, *mask.shape), mask)


@pytest.mark.parametrize("k", range(6))
def test_cityscapes_polygon_fills_mask_with_pil(k: int) -> None:
    mask = _tricky_masks()[k]
    polygon = mask_to_cityscapes_polygon(mask)
    img = Image.new("L", (mask.shape[1], mask.shape[0]), 0)
    ImageDraw.Draw(img).polygon([tuple(p) for p in polygon], fill=1)
    filled = np.asarray(img).astype(bool)
    assert (filled & mask).sum() == mask.sum()  # PIL fills the outline: the mask is covered
    assert (filled & ~mask).sum() <= 0.1 * mask.sum() + 2  # only the slit lines spill over


def test_scene_polygons_are_exact() -> None:
    for i in range(12):
        for obj in render_scene(SEED, i, H, W).objects:
            np.testing.assert_array_equal(_rasterize_coco(mask_to_polygons(obj.mask), H, W), obj.mask)


# --- images / imagefolder ------------------------------------------------------------------------

def test_images_layout(root: Path) -> None:
    files = sorted((root / "images").rglob("*.png"))
    assert len(files) == NUM_TRAIN + NUM_VAL
    for f in files:
        with Image.open(f) as img:
            assert img.mode == "RGB" and img.size == (W, H)
    np.testing.assert_array_equal(np.asarray(Image.open(root / "images/val/000002.png")),
                                  _scene("val", 2).image)


def test_images_layout_reads_with_pretrain_folder_loader(root: Path) -> None:
    from pretrain.data import FolderSource, find_images

    source = FolderSource(find_images(root / "images/train"))
    assert len(source) == NUM_TRAIN
    # train image i is exactly the scene the built-in synthetic source renders for index i
    np.testing.assert_array_equal(source.load(5).permute(1, 2, 0).numpy(), _scene("train", 5).image)


def test_imagefolder_layout(root: Path) -> None:
    from torchvision.datasets import ImageFolder

    train = ImageFolder(str(root / "imagenet/train"))
    val = ImageFolder(str(root / "imagenet/val"))
    assert sorted(train.classes) == sorted(CLASS_NAMES) == val.classes
    assert len(train) == NUM_TRAIN and len(val) == NUM_VAL
    assert np.bincount(train.targets, minlength=4).tolist() == [NUM_TRAIN // 4] * 4
    image, target = train[0]
    assert image.size == (W, H) and train.classes[target] in CLASS_NAMES


# --- coco ------------------------------------------------------------------------------------------

def _quiet(fn, *args):
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args)


def _evaluate(gt: COCO, dets: list[dict], iou_type: str, sigmas=None) -> float:
    dt = _quiet(gt.loadRes, dets)
    ev = COCOeval(gt, dt, iou_type)
    if sigmas is not None:
        ev.params.kpt_oks_sigmas = np.array(sigmas)
    _quiet(ev.evaluate)
    _quiet(ev.accumulate)
    _quiet(ev.summarize)
    return float(ev.stats[0])


@pytest.mark.parametrize("split,n", [("train", NUM_TRAIN), ("val", NUM_VAL)])
def test_coco_instances(root: Path, split: str, n: int) -> None:
    gt = _quiet(COCO, str(root / f"coco/annotations/instances_{split}2017.json"))
    assert [c["name"] for c in gt.loadCats(gt.getCatIds())] == list(CLASS_NAMES)
    assert gt.getCatIds() == [1, 2, 3, 4]
    assert len(gt.getImgIds()) == n
    for k, image_id in enumerate(sorted(gt.getImgIds())):
        info = gt.loadImgs(image_id)[0]
        with Image.open(root / f"coco/{split}2017" / info["file_name"]) as img:
            assert img.size == (info["width"], info["height"]) == (W, H)
        scene = _scene(split, k)
        anns = gt.loadAnns(gt.getAnnIds(imgIds=image_id))
        assert len(anns) == len(scene.objects)
        for ann, obj in zip(anns, scene.objects, strict=True):
            assert ann["category_id"] == obj.class_id + 1 and ann["iscrowd"] == 0
            assert isinstance(ann["segmentation"], list)
            np.testing.assert_array_equal(gt.annToMask(ann).astype(bool), obj.mask)
            x0, y0, x1, y1 = obj.bbox_xyxy
            assert ann["bbox"] == [x0, y0, x1 - x0, y1 - y0]
            assert ann["area"] == obj.mask.sum()
    anns = gt.loadAnns(gt.getAnnIds())
    boxes = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
             for a in anns]
    segms = [{"image_id": a["image_id"], "category_id": a["category_id"], "score": 1.0,
              "segmentation": gt.annToRLE(a)} for a in anns]
    assert _evaluate(gt, boxes, "bbox") == pytest.approx(1.0)
    assert _evaluate(gt, segms, "segm") == pytest.approx(1.0)


def test_coco_keypoints(root: Path) -> None:
    gt = _quiet(COCO, str(root / "coco/annotations/person_keypoints_val2017.json"))
    (cat,) = gt.loadCats(gt.getCatIds())
    assert cat["id"] == 1 and cat["name"] == "person" and cat["keypoints"] == list(KEYPOINT_NAMES)
    assert len(cat["skeleton"]) == 4
    inst = _quiet(COCO, str(root / "coco/annotations/instances_val2017.json"))
    anns = gt.loadAnns(gt.getAnnIds())
    assert len(anns) == len(inst.getAnnIds())
    for ann in anns:
        assert len(ann["keypoints"]) == 3 * len(KEYPOINT_NAMES) and ann["num_keypoints"] == 4
        assert set(ann["keypoints"][2::3]) <= {1, 2}
        x, y, w, h = ann["bbox"]
        kps = np.asarray(ann["keypoints"]).reshape(-1, 3)
        for kx, ky, v in kps.tolist():
            if v == 2:  # visible extreme points lie in the visible mask (occluded ones may not)
                assert x <= kx < x + w and y <= ky < y + h  # integer pixel indices
    dets = [{"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 1.0}
            for a in anns]
    assert _evaluate(gt, dets, "keypoints", sigmas=KEYPOINT_OKS_SIGMAS) == pytest.approx(1.0)


# --- voc -------------------------------------------------------------------------------------------

def test_voc_layout(root: Path) -> None:
    plan = voc_split_plan(NUM_TRAIN, NUM_VAL)
    for year, sets in plan.items():
        main = root / f"VOC{year}/ImageSets/Main"
        lists = {s: (main / f"{s}.txt").read_text().split() for s in ("train", "val", "trainval", "test")}
        assert sorted(lists["train"] + lists["val"]) == sorted(lists["trainval"])
        assert not set(lists["trainval"]) & set(lists["test"])
        for stem, split, i in sets["trainval"] + sets["test"]:
            assert (root / f"VOC{year}/JPEGImages/{stem}.jpg").is_file()
            tree = ET.parse(root / f"VOC{year}/Annotations/{stem}.xml").getroot()
            assert tree.findtext("filename") == f"{stem}.jpg"
            assert (int(tree.findtext("size/width")), int(tree.findtext("size/height"))) == (W, H)
            scene = _scene(split, i)
            objs = tree.findall("object")
            assert len(objs) == len(scene.objects)
            for node, obj in zip(objs, scene.objects, strict=True):
                assert node.findtext("name") == CLASS_NAMES[obj.class_id]
                assert node.findtext("difficult") == "0"
                box = [int(node.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")]
                ys, xs = np.nonzero(obj.mask)
                # 1-based first and last pixel of the visible mask
                assert box == [xs.min() + 1, ys.min() + 1, xs.max() + 1, ys.max() + 1]
    assert len((root / "VOC2007/ImageSets/Main/test.txt").read_text().split()) == NUM_VAL
    n_trainval = sum(len((root / f"VOC{y}/ImageSets/Main/trainval.txt").read_text().split())
                     for y in ("2007", "2012"))
    assert n_trainval == NUM_TRAIN


def test_voc_reads_with_torchvision(root: Path, tmp_path: Path) -> None:
    from torchvision.datasets import VOCDetection

    (tmp_path / "VOCdevkit").symlink_to(root, target_is_directory=True)
    ds = VOCDetection(str(tmp_path), year="2007", image_set="test")
    assert len(ds) == NUM_VAL
    image, target = ds[0]
    assert image.size == (W, H)
    names = [o["name"] for o in target["annotation"]["object"]]
    assert names == [CLASS_NAMES[o.class_id] for o in _scene("val", 0).objects]


# --- cityscapes ------------------------------------------------------------------------------------

def test_cityscapes_layout(root: Path) -> None:
    from cityscapesscripts.helpers.labels import name2label

    cs = root / "cityscapes"
    for split, n in (("train", NUM_TRAIN), ("val", NUM_VAL)):
        images = sorted((cs / "leftImg8bit" / split).glob("*/*_leftImg8bit.png"))
        assert len(images) == n
        for k, img_path in enumerate(images):
            city, seq, frame = img_path.name.split("_")[:3]
            assert img_path.parent.name == city and len(seq) == len(frame) == 6
            base = cs / "gtFine" / split / city / f"{city}_{seq}_{frame}_gtFine"
            label_ids = np.asarray(Image.open(f"{base}_labelIds.png"))
            instance_ids = np.asarray(Image.open(f"{base}_instanceIds.png")).astype(np.int64)
            color = Image.open(f"{base}_color.png")
            assert label_ids.shape == instance_ids.shape == (H, W) and color.mode == "RGBA"
            assert not Path(f"{base}_labelTrainIds.png").exists()
            scene = _scene(split, int(frame))
            assert int(frame) == k
            expected = np.where(np.arange(H)[:, None] < H // 2, name2label["sky"].id, name2label["road"].id)
            expected = np.broadcast_to(expected, (H, W)).copy()
            seen: dict[str, int] = {}
            for obj in scene.objects:
                label = name2label[CITYSCAPES_CLASS_LABELS[obj.class_id]]
                expected[obj.mask] = label.id
                assert (instance_ids[obj.mask] == label.id * 1000 + seen.get(label.name, 0)).all()
                seen[label.name] = seen.get(label.name, 0) + 1
            np.testing.assert_array_equal(label_ids, expected)
            stuff = instance_ids < 1000
            np.testing.assert_array_equal(instance_ids[stuff], label_ids[stuff])
            np.testing.assert_array_equal(instance_ids[~stuff] // 1000, label_ids[~stuff])


def test_cityscapes_scripts_create_train_ids(root: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from cityscapesscripts.helpers.annotation import Annotation
    from cityscapesscripts.helpers.labels import id2label
    from cityscapesscripts.preparation import createTrainIdLabelImgs
    from cityscapesscripts.preparation.json2instanceImg import createInstanceImage

    cs = tmp_path / "cityscapes"
    shutil.copytree(root / "cityscapes", cs)
    monkeypatch.setenv("CITYSCAPES_DATASET", str(cs))
    _quiet(createTrainIdLabelImgs.main)
    to_train = np.zeros(256, dtype=np.int64)
    for lid, label in id2label.items():
        if lid >= 0:
            to_train[lid] = label.trainId
    label_files = sorted(cs.glob("gtFine/*/*/*_gtFine_labelIds.png"))
    assert len(label_files) == NUM_TRAIN + NUM_VAL
    agree = total = inst_agree = 0
    for f in label_files:
        label_ids = np.asarray(Image.open(f)).astype(np.int64)
        instance_ids = np.asarray(Image.open(str(f).replace("_labelIds", "_instanceIds"))).astype(np.int64)
        train_ids = np.asarray(Image.open(str(f).replace("_labelIds", "_labelTrainIds"))).astype(np.int64)
        annotation = Annotation()
        annotation.fromJsonFile(str(f).replace("_labelIds.png", "_polygons.json"))
        # json2instanceImg itself cannot save its mode "I" image as PNG with Pillow >= 13
        from_json = np.asarray(createInstanceImage(annotation, "ids")).astype(np.int64)
        objects = instance_ids >= 1000
        agree += int((train_ids[objects] == to_train[label_ids[objects]]).sum())
        inst_agree += int((from_json[objects] == instance_ids[objects]).sum())
        total += int(objects.sum())
        assert (train_ids == to_train[label_ids]).mean() > 0.9
    assert total > 0
    assert agree / total > 0.9 and inst_agree / total > 0.9


# --- determinism, refusal, CLI ---------------------------------------------------------------------

def test_deterministic_and_layout_independent(root: Path, tmp_path: Path) -> None:
    again = write_synthetic_dataset(tmp_path / "a", "coco", num_train=NUM_TRAIN, num_val=NUM_VAL,
                                    seed=SEED, image_size=(H, W))
    assert again["layout"] == "coco" and Path(again["root"]) == tmp_path / "a/coco"
    assert tree_hash(tmp_path / "a/coco") == tree_hash(root / "coco")
    write_synthetic_dataset(tmp_path / "b", "coco", num_train=NUM_TRAIN, num_val=NUM_VAL,
                            seed=SEED + 1, image_size=(H, W))
    assert tree_hash(tmp_path / "b/coco") != tree_hash(root / "coco")


def test_refuses_non_empty_output_unless_forced(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        write_synthetic_dataset(out, "images", num_train=2, num_val=1, image_size=(32, 32))
    write_synthetic_dataset(out, "images", num_train=6, num_val=1, image_size=(32, 32), force=True)
    write_synthetic_dataset(out, "images", num_train=2, num_val=1, image_size=(32, 32), force=True)
    assert (out / "keep.txt").read_text() == "mine"
    assert len(list((out / "images/train").glob("*.png"))) == 2  # our earlier output was replaced
    assert (out / MANIFEST_NAME).is_file()


@pytest.mark.parametrize("kwargs", [
    {"layout": "pascal"},
    {"num_train": 0},
    {"image_size": (8, 8)},
])
def test_bad_arguments_raise_user_error(tmp_path: Path, kwargs: dict) -> None:
    args = {"layout": "images", "num_train": 2, "num_val": 1, "image_size": (32, 32), **kwargs}
    layout = args.pop("layout")
    with pytest.raises(UserError):
        write_synthetic_dataset(tmp_path / "x", layout, **args)
    assert not (tmp_path / "x").exists()


def _cli() -> typer.Typer:
    app = typer.Typer()
    data_app = typer.Typer()
    app.add_typer(data_app, name="data")
    cli_data.register(app, data_app)
    return app


@pytest.mark.parametrize("extra", [
    ["--layout", "bogus"],
    ["--size", "96by128"],
    ["--size", "8x8"],
    ["--size", "96x128", "--height", "64"],
    ["--num-train", "0"],
])
def test_cli_bad_input_exits_2(tmp_path: Path, extra: list[str]) -> None:
    result = CliRunner().invoke(_cli(), ["data", "synthetic", "--out", str(tmp_path / "o"), *extra])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output


def test_cli_writes_and_summarises(tmp_path: Path) -> None:
    out = tmp_path / "o"
    args = ["data", "synthetic", "--out", str(out), "--layout", "voc", "--num-train", "4",
            "--num-val", "2", "--height", "48", "--width", "64", "--seed", "1"]
    result = CliRunner().invoke(_cli(), args)
    assert result.exit_code == 0, result.output
    assert "voc" in result.output and str(out) in result.output and len(result.output.splitlines()) == 1
    assert (out / "VOC2007/ImageSets/Main/test.txt").read_text().split() == [
        "2007_test_000000", "2007_test_000001"]
    again = CliRunner().invoke(_cli(), args)
    assert again.exit_code == 2 and "--force" in again.output


def test_registered_on_main_cli(tmp_path: Path) -> None:
    from detco_bench.cli import app

    result = CliRunner().invoke(app, ["data", "synthetic", "--out", str(tmp_path), "--layout", "nope"])
    assert result.exit_code == 2 and "unknown layout" in result.output


# --- classification signal -------------------------------------------------------------------------

@pytest.mark.slow
def test_random_resnet_linear_probe_beats_chance() -> None:
    import torch
    import torchvision

    from detco_bench.synthetic import render_classification_image

    torch.manual_seed(0)

    def batch(split: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = np.stack([render_classification_image(0, scene_index(split, i), i % 4, 64, 64) for i in range(n)])
        t = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255
        return (t - 0.45) / 0.25, torch.arange(n) % 4

    model = torchvision.models.resnet18(weights=None)
    model.fc = torch.nn.Identity()
    model.eval()
    (xtr, ytr), (xva, yva) = batch("train", 240), batch("val", 120)
    with torch.no_grad():
        ftr, fva = model(xtr), model(xva)
    mean, std = ftr.mean(0), ftr.std(0) + 1e-6
    ftr, fva = (ftr - mean) / std, (fva - mean) / std
    probe = torch.nn.Linear(ftr.shape[1], 4)
    opt = torch.optim.Adam(probe.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(200):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(probe(ftr), ytr).backward()
        opt.step()
    accuracy = (probe(fva).argmax(1) == yva).float().mean().item()
    assert accuracy > 0.4  # chance is 0.25
