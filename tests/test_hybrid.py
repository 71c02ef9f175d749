"""Hybrid supervision: choosing the box images, HybridDataModule, CAMs restricted to boxes, the hybrid pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lightning_wsss.cam.box_restriction import restrict_cams_to_boxes
from lightning_wsss.cam.files import load_cams
from lightning_wsss.datamodules import HybridDataModule, select_box_images
from lightning_wsss.datasets.voc import VOCSegmentation
from lightning_wsss.errors import DataError
from lightning_wsss.io import read_label_png, write_label_png
from lightning_wsss.pipeline import run_pipeline
from lightning_wsss.pipeline.costs import annotation_hours
from lightning_wsss.pipeline.report import format_table
from test_pipeline import quiet, tiny_config, tiny_synthetic  # noqa: F401  (fixture)

IDS = [f"img_{i:03d}" for i in range(50)]


# ----------------------------------------------------------------------------------------------- choosing box images
def test_box_fraction_draw_is_seeded_nested_and_in_split_order():
    tenth = select_box_images(IDS, box_fraction=0.1, seed=4)
    third = select_box_images(IDS, box_fraction=0.3, seed=4)
    assert len(tenth) == 5 and len(third) == 15
    assert set(tenth) <= set(third)  # a cost curve's points are nested
    assert tenth == [i for i in IDS if i in set(tenth)]  # split order
    assert select_box_images(IDS, box_fraction=0.1, seed=4) == tenth
    assert select_box_images(IDS, box_fraction=0.1, seed=5) != tenth
    assert select_box_images(IDS, box_fraction=0.0) == [] and select_box_images(IDS, box_fraction=1.0) == IDS


def test_box_list_file_and_its_errors(tmp_path):
    listing = tmp_path / "boxes.txt"
    listing.write_text("# images annotated with boxes\nimg_007\n\nimg_002  # a comment\n")
    assert select_box_images(IDS, box_list=listing) == ["img_002", "img_007"]
    listing.write_text("img_002\nnot_an_image\n")
    with pytest.raises(DataError, match=r"boxes\.txt.*not in the training split.*not_an_image"):
        select_box_images(IDS, box_list=listing)
    with pytest.raises(DataError, match="missing"):
        select_box_images(IDS, box_list=tmp_path / "absent.txt")
    with pytest.raises(ValueError, match="exactly one"):
        select_box_images(IDS, box_fraction=0.1, box_list=listing)
    with pytest.raises(ValueError, match="exactly one"):
        select_box_images(IDS)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        select_box_images(IDS, box_fraction=1.5)


# ----------------------------------------------------------------------------------------------- DataModule
def _mask_folders(root: Path, tmp_path: Path):
    reader = VOCSegmentation(root, "train")
    box_dir, image_dir = tmp_path / "box_masks", tmp_path / "image_masks"
    for image_id in reader.ids:
        shape = reader.load(image_id)["image"].shape[:2]
        write_label_png(box_dir / f"{image_id}.png", np.full(shape, 1, np.uint8))
        write_label_png(image_dir / f"{image_id}.png", np.full(shape, 2, np.uint8))
    return reader, box_dir, image_dir


def test_hybrid_datamodule_gives_each_image_its_own_supervision(tiny_voc, tmp_path):
    reader, box_dir, image_dir = _mask_folders(tiny_voc, tmp_path)
    box_ids = reader.ids[:2]
    dm = HybridDataModule(box_mask_dir=str(box_dir), image_mask_dir=str(image_dir), box_ids=list(box_ids),
                          root=str(tiny_voc), batch_size=len(reader.ids), crop_size=32)
    assert dm.box_ids() == list(box_ids)
    dm.setup("fit")
    dataset = dm.datasets["fit"]
    for index, image_id in enumerate(reader.ids):
        raw = dm.prepare_train(dataset.reader[index])  # before augmentation (random crops may drop boxes)
        sample = dataset[index]
        values = set(sample["mask"].unique().tolist()) - {255}
        if image_id in box_ids:
            assert values == {1} and len(raw["boxes"]) == len(reader.load(image_id)["boxes"]) > 0
        else:
            assert values == {2} and len(raw["boxes"]) == 0 and len(raw["box_labels"]) == 0
            assert len(sample["boxes"]) == 0
        assert sample["labels"].sum() > 0  # every image keeps its image-level labels
        assert "gt_mask" in sample


def test_hybrid_datamodule_names_the_missing_mask(tiny_voc, tmp_path):
    reader, box_dir, image_dir = _mask_folders(tiny_voc, tmp_path)
    missing = image_dir / f"{reader.ids[-1]}.png"
    missing.unlink()
    dm = HybridDataModule(box_mask_dir=str(box_dir), image_mask_dir=str(image_dir), box_fraction=0.25,
                          root=str(tiny_voc), crop_size=32)
    with pytest.raises(DataError, match=str(missing.name)):
        dm.setup("fit")
    with pytest.raises(ValueError, match="exactly one"):
        HybridDataModule(box_mask_dir=str(box_dir), image_mask_dir=str(image_dir), root=str(tiny_voc))


# ----------------------------------------------------------------------------------------------- CAMs inside boxes
def test_restrict_cams_to_boxes_by_hand():
    cams = np.zeros((2, 4, 6), np.float32)
    cams[0] = 1.0  # class 3: peaks everywhere, including outside its box
    cams[0, 1:3, 1:3] = 0.5
    cams[1, 0, 0] = 0.8  # class 5: no box -> unchanged
    boxes = np.array([[1, 1, 3, 3], [4, 0, 6, 2]], np.float32)
    out = restrict_cams_to_boxes(cams, np.array([3, 5]), boxes, np.array([3, 1]))
    expected = np.zeros((4, 6), np.float32)
    expected[1:3, 1:3] = 1.0  # 0.5 inside the box, rescaled by the in-box peak
    np.testing.assert_allclose(out[0], expected)
    np.testing.assert_allclose(out[1], cams[1])


# ----------------------------------------------------------------------------------------------- pipeline
def test_hybrid_pipeline_curve_points_share_image_stages(tiny_synthetic, tmp_path):  # noqa: F811
    def config(fraction, **extra):
        return tiny_config(tiny_synthetic, "hybrid", summary_key=f"hybrid_{fraction:g}",
                           hybrid={"box_fraction": fraction, "seed": 1, **extra},
                           stages={"box_init": {"initializers": ["filled", "grabcut"]}})

    run_pipeline(config(0.3), tmp_path, log=quiet)
    summary = run_pipeline(config(0.6), tmp_path, log=quiet)
    reader = VOCSegmentation(tiny_synthetic, "train")
    for fraction in (0.3, 0.6):
        entry = summary["supervision"][f"hybrid_{fraction:g}"]
        box_ids = select_box_images(reader.ids, box_fraction=fraction, seed=1)
        num_boxes = sum(len(reader.load(i)["boxes"]) for i in box_ids)
        assert entry["box_fraction"] == fraction and entry["num_box_images"] == len(box_ids) == round(10 * fraction)
        assert entry["num_boxes"] == num_boxes
        assert entry["annotation_hours"] == pytest.approx(
            annotation_hours("hybrid", 10, num_boxes=num_boxes, num_box_images=len(box_ids)), abs=1e-3)
        assert {"cam", "random_walk", "box_grabcut", "hybrid", "image_random_walk"} <= set(entry["pseudo_miou"])
        # the union: box images hold the GrabCut masks, the others the random walk's labels
        stages = entry["stages"]
        union = Path(stages["hybrid_labels"]["dir"]) / "labels"
        for image_id in reader.ids:
            source = (Path(stages["box_init"]["dir"]) / "grabcut" if image_id in box_ids
                      else Path(stages["random_walk"]["dir"]) / "labels")
            np.testing.assert_array_equal(read_label_png(union / f"{image_id}.png"),
                                          read_label_png(source / f"{image_id}.png"))
        assert sorted(p.stem for p in (Path(stages["box_init"]["dir"]) / "grabcut").glob("*.png")) == sorted(box_ids)
    second = summary["supervision"]["hybrid_0.6"]["stages"]
    assert all(second[name]["reused"] for name in ("classifier", "cams", "affinity", "random_walk"))
    # ... and the image pipeline on the same folder reuses them too: they live in OUT/image
    assert Path(second["classifier"]["dir"]).resolve().parent.parent == (tmp_path / "image").resolve()
    image = run_pipeline(tiny_config(tiny_synthetic, "image", stages={"box_init": {"initializers": ["filled", "grabcut"]}}),
                         tmp_path, log=quiet)["supervision"]["image"]["stages"]
    assert all(image[name]["reused"] for name in ("classifier", "cams", "affinity", "random_walk"))
    assert not second["box_init"]["reused"] and not second["segmenter"]["reused"]
    # more boxes cost more; the summary's table lists the curve in box-fraction order
    entries = summary["supervision"]
    assert entries["hybrid_0.6"]["annotation_hours"] > entries["hybrid_0.3"]["annotation_hours"]
    table = format_table(summary)
    assert table.index("hybrid_0.3") < table.index("hybrid_0.6")

    # restricting the box images' CAMs to their boxes reruns the CAM stage and zeroes the CAMs outside the boxes
    restricted = run_pipeline(config(0.3, restrict_cams_to_boxes=True), tmp_path / "restricted", log=quiet)
    cams_dir = Path(restricted["supervision"]["hybrid_0.3"]["stages"]["cams"]["dir"]) / "cams"
    for image_id in select_box_images(reader.ids, box_fraction=0.3, seed=1):
        sample = reader.load(image_id)
        saved = load_cams(cams_dir / f"{image_id}.npz")
        for cam, class_id in zip(saved["cams"], saved["keys"]):
            inside = np.zeros(cam.shape, bool)
            for (x0, y0, x1, y1), label in zip(sample["boxes"], sample["box_labels"]):
                if label == class_id:
                    inside[int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))] = True
            assert not cam[~inside].any()
    assert json.loads((tmp_path / "restricted" / "summary.json").read_text())["supervision"]["hybrid_0.3"]


def test_a_hybrid_run_after_the_image_run_finds_its_stages_complete(tiny_synthetic, tmp_path):  # noqa: F811
    """The hybrid pipeline looks for its image-label stages in OUT/hybrid/../image before OUT/hybrid exists."""
    run_pipeline(tiny_config(tiny_synthetic, "image"), tmp_path, log=quiet, until="cams")
    assert not (tmp_path / "hybrid").exists()
    lines = []
    run_pipeline(tiny_config(tiny_synthetic, "hybrid", summary_key="hybrid_0.3", hybrid={"box_fraction": 0.3, "seed": 1}),
                 tmp_path, log=lines.append, until="cams")
    assert any(line.startswith("[classifier] complete") for line in lines), lines
    assert any(line.startswith("[cams] complete") for line in lines), lines
