"""The analysis scripts under tools/ run and report what they say on artifacts with known answers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_script, tiny_trainer
from lightning_wsss.boxes import make_box_mask
from lightning_wsss.datamodules import ImageLabelDataModule
from lightning_wsss.datasets.voc import VOCSegmentation
from lightning_wsss.io import write_label_png
from lightning_wsss.metrics import evaluate_folder
from lightning_wsss.tasks.erasing import ErasingCAMClassifier

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def tiny_classifier_checkpoint(root: Path, path: Path) -> Path:
    """A CAM classifier (test_resnet) trained one epoch on ``root``, saved at ``path``."""
    from lightning_wsss.tasks import CAMClassifier

    torch.manual_seed(0)
    model = CAMClassifier(4, backbone="test_resnet", lr=0.05)
    trainer = tiny_trainer(max_epochs=1, limit_val_batches=0)
    trainer.fit(model, ImageLabelDataModule(str(root), batch_size=2, crop_size=32, num_workers=0))
    trainer.save_checkpoint(path)
    return path


def run_tool(name: str, *args: str) -> str:
    """``python tools/<name> args`` (in this process, :func:`conftest.run_script`); its stdout, a zero exit asserted."""
    code, out, err = run_script(TOOLS / name, *args)
    assert code == 0, err[-2000:]
    return out


def test_boxsup_pool_ceiling(tiny_voc, tmp_path):
    reader = VOCSegmentation(tiny_voc, "train")
    rounds = tmp_path / "rounds"
    for image_id in reader.ids:
        sample = reader.load(image_id)
        filled = make_box_mask("filled", sample["image"], sample["boxes"], sample["box_labels"])
        write_label_png(rounds / "round_0" / f"{image_id}.png", filled)  # tiny_voc's rectangles: exact
        blank = np.zeros_like(filled)
        write_label_png(rounds / "proposals" / "crf" / f"{image_id}.png", blank)
        write_label_png(rounds / "round_1" / f"{image_id}.png", blank)  # a round that chose the empty proposal
    out = run_tool("boxsup_pool_ceiling.py", "--root", str(tiny_voc), "--rounds", str(rounds))
    assert "round_0: mIoU 100.00" in out and "ceiling: mIoU 100.00" in out
    boxes = sum(len(reader.load(i)["boxes"]) for i in reader.ids)
    assert f"differs from round 0: {boxes}; better 0, worse {boxes}" in out


def test_boxsup_picks(tiny_voc, tmp_path):
    """Round 1 takes the (empty) CRF proposal on every box: all boxes traced to it, each losing 100 points
    against the exact round 0."""
    reader = VOCSegmentation(tiny_voc, "train")
    stage = tmp_path / "stage"
    for image_id in reader.ids:
        sample = reader.load(image_id)
        filled = make_box_mask("filled", sample["image"], sample["boxes"], sample["box_labels"])
        write_label_png(stage / "rounds" / "round_0" / f"{image_id}.png", filled)  # tiny_voc's rectangles: exact
        write_label_png(stage / "rounds" / "proposals" / "crf" / f"{image_id}.png", np.zeros_like(filled))
        write_label_png(stage / "rounds" / "round_1" / f"{image_id}.png", np.zeros_like(filled))
    out = run_tool("boxsup_picks.py", "--root", str(tiny_voc), "--stage", str(stage), "--round", "1")
    boxes = sum(len(reader.load(i)["boxes"]) for i in reader.ids)
    assert out.splitlines()[-1].split() == ["all", "proposals/crf", str(boxes), "-100.00"]


def test_erasing_mined_precision(tiny_voc, tmp_path):
    torch.manual_seed(0)
    model = ErasingCAMClassifier(num_classes=4, backbone="resnet18", cam_scales=(1.0,), cam_flip=False,
                                 erase_rounds=1, round_epochs=1, lr=0.05)
    trainer = tiny_trainer(max_epochs=2, limit_val_batches=0)
    trainer.fit(model, datamodule=ImageLabelDataModule(root=str(tiny_voc), crop_size=32, batch_size=2))
    trainer.save_checkpoint(tmp_path / "ae.ckpt")
    out = run_tool("erasing_mined_precision.py", "--checkpoint", str(tmp_path / "ae.ckpt"), "--root", str(tiny_voc))
    assert out.startswith("round 0: ") and "% of the mined pixels on the object" in out
    assert "round 1" not in out  # one snapshot, one round reported


def _miou_lines(out: str) -> list:
    """The two mIoU figures segmenter_fit.py prints: [vs training labels, vs ground truth]."""
    return [float(line.split()[1]) for line in out.splitlines() if line.startswith("mIoU")]


def tiny_segmenter_checkpoint(root: Path, path: Path) -> Path:
    """A DeepLab segmenter (tu-resnet18) trained one epoch on ``root``'s masks, saved at ``path``."""
    from lightning_wsss.datamodules import MaskDataModule
    from lightning_wsss.tasks import DeepLabSegmenter

    torch.manual_seed(0)
    model = DeepLabSegmenter(num_classes=4, encoder="tu-resnet18", decoder_channels=16, lr=0.01)
    trainer = tiny_trainer(max_epochs=1, limit_val_batches=0)
    trainer.fit(model, datamodule=MaskDataModule(root=str(root), crop_size=32, batch_size=2))
    trainer.save_checkpoint(path)
    return path


def test_segmenter_fit(tiny_voc, tmp_path):
    from lightning_wsss.pipeline.predictions import predict_val

    checkpoint = tiny_segmenter_checkpoint(tiny_voc, tmp_path / "seg.ckpt")
    reader = VOCSegmentation(tiny_voc, "train")
    own, truth = tmp_path / "own", tmp_path / "truth"
    for image_id, prediction in zip(reader.ids, predict_val(checkpoint, reader, reader.ids)):
        write_label_png(own / f"{image_id}.png", prediction)  # its own predictions: a perfect fit
        write_label_png(truth / f"{image_id}.png", reader.load(image_id)["mask"])
    args = ("--checkpoint", str(checkpoint), "--root", str(tiny_voc))
    fit_own, gt_own = _miou_lines(run_tool("segmenter_fit.py", *args, "--labels", str(own)))
    fit_truth, gt_truth = _miou_lines(run_tool("segmenter_fit.py", *args, "--labels", str(truth)))
    assert fit_own == 100.0 and gt_own < 100.0  # one epoch does not reach the ground truth
    assert fit_truth == gt_truth == gt_own  # trained-on labels = ground truth: the two tables agree


def test_label_shares(tiny_voc, tmp_path):
    reader = VOCSegmentation(tiny_voc, "train")
    truth, blank = tmp_path / "truth", tmp_path / "blank"
    for image_id in reader.ids:
        mask = reader.load(image_id)["mask"]
        write_label_png(truth / f"{image_id}.png", mask)
        write_label_png(blank / f"{image_id}.png", np.zeros_like(mask))
    rows = {}
    for line in run_tool("label_shares.py", "--labels", str(truth), "--root", str(tiny_voc)).splitlines()[1:]:
        name, labels, ground_truth = line.rsplit(None, 2)
        rows[name] = (float(labels), float(ground_truth))
    assert all(labels == ground_truth for labels, ground_truth in rows.values())  # the ground truth itself
    assert sum(labels for labels, _ in rows.values()) == pytest.approx(100.0, abs=0.2)
    assert 0 < rows["background"][0] < 100
    out = run_tool("label_shares.py", "--labels", str(blank), "--root", str(tiny_voc))
    assert out.splitlines()[1].split()[:2] == ["background", "100.0"]  # all background
    (blank / f"{reader.ids[0]}.png").unlink()
    code, _, err = run_script(TOOLS / "label_shares.py", "--labels", str(blank), "--root", str(tiny_voc))
    assert code != 0 and f"{reader.ids[0]}.png" in err and "missing" in err


def test_cam_gallery(tiny_voc, tmp_path):
    from PIL import Image

    from lightning_wsss.io import write_npz_atomic

    reader = VOCSegmentation(tiny_voc, "train")
    for name, value in (("a", 1.0), ("b", 0.0)):
        for image_id in reader.ids:
            mask = reader.load(image_id)["mask"]
            write_npz_atomic(tmp_path / name / f"{image_id}.npz", cams=((mask == 1) * value)[None].astype(np.float16),
                             keys=np.array([1]))
    out = tmp_path / "gallery.png"
    printed = run_tool("cam_gallery.py", "--root", str(tiny_voc), "--cams", f"CAM={tmp_path / 'a'}",
                       f"zero={tmp_path / 'b'}", "--num", "2", "--out", str(out))
    assert printed.strip() == str(out)
    picture = np.asarray(Image.open(out))
    assert picture.ndim == 3 and picture.shape[0] > 100 and picture.shape[1] > 4 * 100  # 2 rows, 4 columns


def test_crop_label_loss(tiny_voc):
    """The tiny set's objects sit in the images' centre: a crop as large as the image loses none, a small crop at
    2x scale loses many."""
    whole = run_tool("crop_label_loss.py", "--root", str(tiny_voc), "--crop-size", "48", "--scale-range", "1.0", "1.0")
    assert "(0.0 %)" in whole
    small = run_tool("crop_label_loss.py", "--root", str(tiny_voc), "--crop-size", "16", "--scale-range", "2.0", "2.0")
    share = float(small.split("(")[1].split(" %")[0])
    assert share > 20.0
    sizes = run_tool("crop_label_loss.py", "--root", str(tiny_voc), "--sizes").splitlines()
    red = sizes[1].split()  # img_0..3: a 16x20 red rectangle in a 48x48 image
    assert red[0] == "red" and int(red[1]) == 4 and float(red[2]) == pytest.approx(100 * 16 * 20 / 48 ** 2, abs=0.01)


def test_cam_variants(tiny_voc, tmp_path):
    tiny_classifier_checkpoint(tiny_voc, tmp_path / "c.ckpt")
    out = run_tool("cam_variants.py", "--checkpoint", str(tmp_path / "c.ckpt"), "--root", str(tiny_voc), "--images", "3",
                   "--variants", "LPCAMClassifier:num_clusters=2,select_threshold=0.3", "--json-dir",
                   str(tmp_path / "rows")).splitlines()
    assert out[0].startswith("3 images of train") and out[1].startswith("CAMClassifier ")
    assert out[2].startswith("LPCAMClassifier:num_clusters=2,select_threshold=0.3") and "mIoU" in out[2]
    assert all(0.0 <= float(line.split("mIoU")[1].split()[0]) <= 100.0 for line in out[1:])
    # the rows' full results, which tools/cam_seed_table.py reads: the same best mIoU as printed, named classes
    for index, line in enumerate(out[1:]):
        row = json.loads((tmp_path / "rows" / f"{index}.json").read_text())
        assert f"{100 * row['best_miou']:6.2f}" in line and "background" in row["per_class"]
    table = run_tool("cam_seed_table.py", f"LPCAM={tmp_path / 'rows' / '1.json'}")
    assert "LPCAM" in table


def test_cam_seed_table(tmp_path):
    def result(miou, share, pole):
        return {"best_miou": miou, "best_threshold": 0.5, "thresholds": [0.3, 0.5], "foreground_share": [0.9, share],
                "foreground_share_gt": 0.2, "per_class": {"background": 0.8, "pole": pole, "car": None}}

    files = []
    for index, (miou, share, pole) in enumerate([(0.10, 0.3, 0.1), (0.20, 0.5, 0.3)]):
        files.append(tmp_path / f"r{index}.json")
        files[-1].write_text(__import__("json").dumps(result(miou, share, pole)))
    out = run_tool("cam_seed_table.py", f"CAM={files[0]},{files[1]}").splitlines()
    assert out[0].startswith("| method | seeds | best mIoU % | foreground % (truth 20.0)") and out[0].endswith("| pole | car |")
    # mean 15, sample std of (10, 20) = 7.07; foreground at the best threshold 40 %; pole 20; car absent
    assert out[2] == "| CAM | 2 | 15.00 +- 7.07 | 40.0 | 0.50/0.50 | 20.0 | n/a |"


def test_summary_seed_table(tmp_path):
    """Per entry and figure, mean +- sample std over the summaries that all have it."""
    import json

    def summary(cam, walk, val, extra=None):
        entries = {"image": {"pseudo_miou": {"cam": cam, "random_walk": walk}, "val_miou": val},
                   "full": {"pseudo_miou": {}, "val_miou": 0.5}}
        entries.update(extra or {})
        return {"supervision": entries}

    files = [tmp_path / "s0.json", tmp_path / "s1.json"]
    files[0].write_text(json.dumps(summary(0.40, 0.50, 0.30, {"box": {"pseudo_miou": {"grabcut": 0.9}}})))
    files[1].write_text(json.dumps(summary(0.60, 0.50, 0.40)))
    out = run_tool("summary_seed_table.py", *map(str, files)).splitlines()
    assert out[0] == "| figure (mIoU %) | mean +- std | per seed |"
    # mean 50, sample std of (40, 60) = 14.14; the box entry is in one file only and left out
    assert out[2:] == ["| image cam | 50.00 +- 14.14 | 40.00 / 60.00 |", "| image random_walk | 50.00 +- 0.00 | 50.00 / 50.00 |",
                       "| image val | 35.00 +- 7.07 | 30.00 / 40.00 |", "| full val | 50.00 +- 0.00 | 50.00 / 50.00 |",
                       "torch threads per seed: ? / ?"]  # summaries made before stages recorded their threads
    stages = [tmp_path / "a.json", tmp_path / "b.json"]
    for path, value, threads in zip(stages, (0.70, 0.72), (2, 1)):
        path.write_text(json.dumps({"name": "boxsup", "hash": "x", "metrics": {"boxsup_round_1": value},
                                    "environment": {"torch_threads": threads}}))
    assert run_tool("summary_seed_table.py", *map(str, stages)).splitlines()[2:] == \
        ["| boxsup boxsup_round_1 | 71.00 +- 1.41 | 70.00 / 72.00 |", "torch threads per seed: 2 / 1"]
    for path, seconds in zip(files, (600.0, 800.0)):
        data = json.loads(path.read_text())
        data["supervision"]["image"]["wall_s"] = seconds
        path.write_text(json.dumps(data))
    out = run_tool("summary_seed_table.py", "--wall", *map(str, files)).splitlines()
    assert out[0] == "| figure (mIoU %; wall s) | mean +- std | per seed |"
    assert out[-2] == "| image wall s | 700.00 +- 141.42 | 600.00 / 800.00 |" and "| image cam | 50.00 +- 14.14" in out[2]


def test_summary_seed_table_reads_the_threads_of_a_pipeline_summary(tmp_path):
    """A summary's stages recorded with one and two threads, and one stage reused from before the record."""
    stages = {"classifier": {"torch_threads": 2}, "cams": {"torch_threads": 1}, "segmenter": {"torch_threads": None}}
    summary = {"supervision": {"image": {"pseudo_miou": {"cam": 0.5}, "val_miou": 0.4, "stages": stages}}}
    path = tmp_path / "s.json"
    path.write_text(json.dumps(summary))
    assert run_tool("summary_seed_table.py", str(path)).splitlines()[-1] == "torch threads per seed: 1,2+?"


def test_cam_precision(tiny_voc, tmp_path):
    """Maps equal to the class mask have precision 1; a map of 1 on the mask and 0.6 everywhere else has
    precision 1 above 0.7 and the mask's share of the image above 0.5."""
    from lightning_wsss.io import write_npz_atomic

    reader = VOCSegmentation(tiny_voc, "train")
    inside = covered = 0
    for image_id in reader.ids:
        mask = reader.load(image_id)["mask"]
        cam = np.where(mask == 1, 1.0, 0.6)[None].astype(np.float16)
        write_npz_atomic(tmp_path / "cams" / f"{image_id}.npz", cams=cam, keys=np.array([1]))
        inside += int((mask == 1).sum())
        covered += mask.size
    rows = run_tool("cam_precision.py", "--cams", str(tmp_path / "cams"), "--root", str(tiny_voc), "--thresholds",
                    "0.5", "0.7").splitlines()[1:]
    assert float(rows[0].split()[1]) == pytest.approx(100 * inside / covered, abs=0.1)
    assert float(rows[1].split()[1]) == pytest.approx(100.0)


def test_cam_study_reads_the_cam_folder_and_val_curves_tabulate(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    from cam_study import cams_folder
    from val_curves import table

    printed = "classifier       runs/x/image/classifier/ab12  {}\ncams             runs/x/image/cams/cd34  {'a': 1}\n"
    assert cams_folder(printed) == Path("runs/x/image/cams/cd34/cams")
    assert cams_folder("classifier  runs/x  {}\n") is None
    csv_path = tmp_path / "m.csv"
    csv_path.write_text("epoch,step,train/loss,val/cam_miou\n0,9,0.6,\n0,19,,0.25\n1,39,,0.5\n")
    text = table([csv_path], "val/cam_miou", 100)
    assert text.splitlines()[2] == "| m | 25.00 | 50.00 |"


def test_gpu_benchmark_smoke_on_cpu(tmp_path):
    out = tmp_path / "bench.md"
    repo = Path(__file__).resolve().parents[1]
    code, _, err = run_script(repo / "benchmarks" / "gpu.py", "--device", "cpu", "--batch", "2", "--size", "32",
                              "--steps", "1", "--warmup", "0", "--out", str(out), cwd=repo)
    assert code == 0, err[-2000:]
    rows = [line for line in out.read_text().splitlines() if line.startswith("| ") and "images/s" in line]
    assert len(rows) == 4 and all(float(r.split("|")[2].split()[0]) > 0 for r in rows)


def test_positive_weights_formula():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    from positive_weights import positive_weights

    assert positive_weights(np.array([25, 50, 0]), 100) == [3.0, 1.0, 1.0]


def test_label_confusion_rates():
    """A hand-counted 2x2 case: class 1 labels one of its two pixels and one background pixel; class 2 is
    unlabelled (255)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("label_confusion", TOOLS / "label_confusion.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    class_rates, confusion = tool.class_rates, tool.confusion

    label = np.array([[1, 1], [0, 255]], np.uint8)
    truth = np.array([[1, 0], [1, 2]], np.uint8)
    counts = confusion([(label, truth)], 3)
    assert counts.tolist() == [[0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 1]]
    assert tool.foreground_shares(counts) == {"labelled_fg": 0.5, "unlabelled": 0.25, "gt_fg": 0.75}
    rates = class_rates(counts, ["background", "a", "b"])
    assert rates["a"] == {"precision": 0.5, "on_gt_bg": 0.5, "recall": 0.5, "lost_to_bg": 0.5}
    assert rates["b"] == {"precision": 0.0, "on_gt_bg": 0.0, "recall": 0.0, "lost_to_bg": 0.0}
    # IoU: background 0 / (1 + 1 - 0), a 1 / (2 + 2 - 1), b 0 / (1 + 0 - 0): 255 is a miss, nobody's false positive
    ious = tool.class_ious(counts, ["background", "a", "b"])
    assert ious == {"background": 0.0, "a": pytest.approx(1 / 3), "b": 0.0}
    assert tool.class_ious(np.zeros((2, 3), np.int64), ["background", "a"]) == {"background": None, "a": None}


def test_label_confusion_cli(tiny_voc, tmp_path):
    """Labels equal to the masks except one image whose class-1 pixels are labelled background."""
    import json

    reader = VOCSegmentation(tiny_voc, "train")
    lost = total = 0
    for n, image_id in enumerate(reader.ids):
        mask = reader.load(image_id)["mask"]
        total += int((mask == 1).sum())
        if n == 0:
            lost = int((mask == 1).sum())
            mask = np.where(mask == 1, 0, mask).astype(np.uint8)
        write_label_png(tmp_path / "pred" / f"{image_id}.png", mask)
    assert 0 < lost < total
    rates = json.loads(run_tool("label_confusion.py", "--pred", str(tmp_path / "pred"), "--root", str(tiny_voc), "--json"))
    first = reader.class_names[1]
    assert rates[first]["precision"] == 1.0 and rates[first]["on_gt_bg"] == 0.0
    assert rates[first]["lost_to_bg"] == pytest.approx(lost / total) and rates[first]["recall"] == pytest.approx(1 - lost / total)
    scored = evaluate_folder(tmp_path / "pred", tiny_voc, "train")
    assert rates["miou"] == pytest.approx(scored["miou"]) and rates["miou"] < 1.0
    assert rates["iou"] == pytest.approx(scored["per_class"])


def test_label_confusion_of_a_segmenter_checkpoint(tiny_voc, tmp_path):
    """--checkpoint scores the segmenter's predictions exactly as --pred scores a folder of them; --matrix rows are
    shares of each ground-truth class's pixels, and a class's recall is its diagonal."""
    from lightning_wsss.pipeline.predictions import predict_val

    checkpoint = tiny_segmenter_checkpoint(tiny_voc, tmp_path / "seg.ckpt")
    reader = VOCSegmentation(tiny_voc, "train")
    for image_id, prediction in zip(reader.ids, predict_val(checkpoint, reader, reader.ids)):
        write_label_png(tmp_path / "pred" / f"{image_id}.png", prediction)
    common = ("--root", str(tiny_voc), "--matrix", "--json")
    from_model = json.loads(run_tool("label_confusion.py", "--checkpoint", str(checkpoint), *common))
    from_folder = json.loads(run_tool("label_confusion.py", "--pred", str(tmp_path / "pred"), *common))
    assert from_model == from_folder
    matrix = np.array(from_model["matrix"])
    sums = matrix.sum(axis=1)  # a class without pixels in the split keeps a row of zeros
    assert matrix.shape == (4, 5) and np.allclose(sums[sums > 0], 1.0) and (sums > 0).sum() >= 2
    for c, name in enumerate(reader.class_names[1:], start=1):
        assert matrix[c, c] == pytest.approx(from_model[name]["recall"])


def test_class_gains(tiny_voc, tmp_path):
    """Base labels = the masks without class 1 (IoU 0), refined = the masks: class 1 gains 100 points, the
    others' IoU and hence gain stay at 0 except where removing class 1 changed the background."""
    reader = VOCSegmentation(tiny_voc, "train")
    for image_id in reader.ids:
        mask = reader.load(image_id)["mask"]
        write_label_png(tmp_path / "refined" / f"{image_id}.png", mask)
        write_label_png(tmp_path / "base" / f"{image_id}.png", np.where(mask == 1, 0, mask).astype(np.uint8))
    pair = ["--pair", str(tmp_path / "base"), str(tmp_path / "refined")]
    rows = run_tool("class_gains.py", "--root", str(tiny_voc), *pair, *pair).splitlines()
    assert rows[0] == "| class | refined - base, IoU points (mean +- std over 2) | per run |"
    cells = {r.split(" | ")[0].strip("| "): r.split(" | ")[1] for r in rows[2:]}
    assert cells[reader.class_names[1]] == "+100.00 +- 0.00"
    assert cells[reader.class_names[2]] == "+0.00 +- 0.00"
    assert float(cells["background"].split()[0]) > 0


def test_box_init_sweep(tiny_voc):
    """tiny_voc's objects are their boxes (box fill 1): the filled boxes and SDI's inner box at fraction 1 score
    100, the inner box at fraction 0.5 less (its ignore ring is a missed object pixel), and the rows are sorted."""
    import json

    out = json.loads(run_tool("box_init_sweep.py", "--root", str(tiny_voc), "--initializer", "inner",
                              "--grid", "fraction=0.5,1.0", "--json"))
    assert out["box_fill"] == pytest.approx(1.0) and out["images"] == 4
    scores = {row["setting"]: row["miou"] for row in out["rows"]}
    assert scores["filled"] == pytest.approx(1.0) and scores["inner: fraction=1.0"] == pytest.approx(1.0)
    assert scores["inner: fraction=0.5"] < 0.9
    table = run_tool("box_init_sweep.py", "--root", str(tiny_voc), "--initializer", "inner", "--grid", "fraction=0.5,1.0")
    rows = [line for line in table.splitlines() if line.startswith("| inner") or line.startswith("| filled")]
    assert rows[-1].startswith("| inner: fraction=0.5 |")


def test_cam_resolution_ceiling(tiny_voc):
    """A perfect CAM at stride 1 reproduces the masks (100 mIoU); at a stride coarser than the objects it
    cannot, and the hand-made 2x2-cell case shows the bilinear ramp the threshold cuts."""
    import importlib.util

    from lightning_wsss.cam.threshold_sweep import cams_to_label_map

    spec = importlib.util.spec_from_file_location("cam_resolution_ceiling", TOOLS / "cam_resolution_ceiling.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    mask = np.zeros((4, 4), np.uint8)
    mask[:2, :2] = 1  # one object filling the top-left 2x2 cell
    cams = tool.perfect_cams(mask, [1], 2)
    assert cams.shape == (1, 4, 4) and float(cams.max()) == pytest.approx(1.0)
    assert float(cams[0, 0, 0]) == pytest.approx(1.0) and float(cams[0, 3, 3]) == pytest.approx(0.0)
    assert cams_to_label_map(tool.perfect_cams(mask, [1], 1), np.array([1]), 0.5).tolist() == mask.tolist()
    out = run_tool("cam_resolution_ceiling.py", "--root", str(tiny_voc), "--strides", "1", "64")
    rows = {line.split(" | ")[0].strip("| "): float(line.split(" | ")[1]) for line in out.splitlines()[3:]}
    assert rows["1"] == pytest.approx(100.0) and rows["64"] < 100.0


def test_box_mask_recall(tiny_voc, tmp_path):
    """The filled boxes keep every object pixel (tiny_voc's objects are their boxes); masks that drop the
    one-pixel rim of every box lose exactly the border band and keep every box above a quarter."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("box_mask_recall", TOOLS / "box_mask_recall.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.border_distance(3, 4).tolist() == [[0, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
    reader = VOCSegmentation(tiny_voc, "train")
    for image_id in reader.ids:
        sample = reader.load(image_id)
        filled = make_box_mask("filled", sample["image"], sample["boxes"], sample["box_labels"])
        write_label_png(tmp_path / "filled" / f"{image_id}.png", filled)
        inner = make_box_mask("filled", sample["image"], sample["boxes"], sample["box_labels"])
        for box in np.asarray(sample["boxes"]):
            x0, y0, x1, y1 = (int(v) for v in tool.box_pixel_range(box))
            inner[y0:y1, x0:x1][tool.border_distance(y1 - y0, x1 - x0) == 0] = 0
        write_label_png(tmp_path / "rim" / f"{image_id}.png", inner)
    first = reader.class_names[1]
    rows = {r.split(" | ")[0].strip("| "): r.split(" | ")[1:] for r in
            run_tool("box_mask_recall.py", "--pred", str(tmp_path / "filled"), "--root", str(tiny_voc)).splitlines()[2:]}
    assert rows[first][:3] == ["0.0 %", "0.0 %", "0.0 %"] and rows[first][3].startswith("0 of ")
    rows = {r.split(" | ")[0].strip("| "): r.split(" | ")[1:] for r in
            run_tool("box_mask_recall.py", "--pred", str(tmp_path / "rim"), "--root", str(tiny_voc),
                     "--keep", "0.25").splitlines()[2:]}
    assert rows[first][0] == "100.0 %" and rows[first][1:3] == ["0.0 %", "0.0 %"] and rows[first][3].startswith("0 of ")


def test_affinity_label_sweep_quality_by_hand():
    """A hand-counted [C, C + 1] matrix: truth rows, label columns, last column unlabelled."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("affinity_label_sweep", TOOLS / "affinity_label_sweep.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    counts = np.array([[6, 2, 0, 2],    # truth background: 6 labelled bg, 2 labelled class 1, 2 unlabelled
                       [1, 3, 0, 0],    # truth class 1
                       [0, 1, 4, 1]])   # truth class 2
    q = tool.label_quality(counts)
    assert q["fg"] == pytest.approx(10 / 20) and q["bg"] == pytest.approx(7 / 20) and q["ignore"] == pytest.approx(3 / 20)
    assert q["fg_precision"] == pytest.approx(7 / 10) and q["bg_precision"] == pytest.approx(6 / 7)
    assert q["gt_fg_own"] == pytest.approx(7 / 10) and q["gt_fg_bg"] == pytest.approx(1 / 10)
    assert q["gt_bg_bg"] == pytest.approx(6 / 10)
    assert tool.parse_setting("psa:4,32") == ("psa", {"alpha_low": 4.0, "alpha_high": 32.0})
    with pytest.raises(Exception, match="psa:ALPHA_LOW"):
        tool.parse_setting("crf:1")


def test_affinity_label_sweep_cli(tiny_voc, tmp_path):
    """CAMs of 1 everywhere for each image's first class: thresholds below 1 label every pixel that class, above 1
    every pixel background; the shares follow from the masks."""
    import json

    reader = VOCSegmentation(tiny_voc, "train")
    first_class_pixels = fg_pixels = total = 0
    for image_id in reader.ids:
        mask = np.asarray(reader.load(image_id)["mask"])
        present = [c for c in np.unique(mask) if c not in (0, 255)]
        cams = np.zeros((len(present),) + mask.shape, np.float32)
        cams[0] = 1.0
        np.savez(tmp_path / f"{image_id}.npz", cams=cams, keys=np.array(present, np.int64))
        valid = mask != 255
        total += int(valid.sum())
        fg_pixels += int((valid & (mask != 0)).sum())
        first_class_pixels += int((mask == present[0]).sum())
    out = json.loads(run_tool("affinity_label_sweep.py", "--cams", str(tmp_path), "--root", str(tiny_voc),
                              "--settings", "irn:0.3,0.05", "irn:1.5,1.2", "--json"))
    every_first = out["irn:0.3,0.05"]
    assert every_first["fg"] == pytest.approx(1.0) and every_first["bg"] == 0.0
    assert every_first["fg_precision"] == pytest.approx(first_class_pixels / total)
    assert every_first["gt_fg_own"] == pytest.approx(first_class_pixels / fg_pixels)
    every_bg = out["irn:1.5,1.2"]
    assert every_bg["bg"] == pytest.approx(1.0) and every_bg["gt_fg_bg"] == pytest.approx(1.0)
    assert every_bg["bg_precision"] == pytest.approx((total - fg_pixels) / total)


def test_context_reliance_versions_and_known_answer(tmp_path):
    """A stub classifier that sees only the objects' colours: perfect AP on the image and on the objects alone,
    chance on the context alone; the versions erase exactly the object (context) pixels."""
    sys.path.insert(0, str(TOOLS))
    import context_reliance as tool
    from conftest import write_tiny_voc
    from lightning_wsss.datamodules.transforms import IMAGENET_MEAN, IMAGENET_STD

    root = write_tiny_voc(tmp_path / "voc", num_images=8, splits={"train": list(range(8))})
    sample = VOCSegmentation(root, "train").load("img_1")
    versions = tool.image_versions(sample["image"], sample["mask"], dilate=1, fill="inpaint")
    objects = tool.object_region(sample["mask"], 1)  # the objects and a 1 px ring around them
    assert objects.sum() > ((sample["mask"] > 0) & (sample["mask"] != 255)).sum() and not objects[0].all()
    red = (sample["mask"] == 1)
    assert np.array_equal(versions["intact"], sample["image"])
    assert (versions["context only"][red][:, 0] < 180).all()  # no red left: filled in from the grey around it
    assert np.array_equal(versions["objects only"][objects], sample["image"][objects])
    assert (versions["objects only"][~objects] == np.round(255 * np.array(tool.IMAGENET_MEAN))).all()
    mean_fill = tool.fill_region(sample["image"], red, "mean")
    assert (mean_fill[red] == np.round(255 * np.array(tool.IMAGENET_MEAN))).all()

    class ColourStub(torch.nn.Module):
        def forward(self, images):
            rgb = images * torch.tensor(IMAGENET_STD)[:, None, None] + torch.tensor(IMAGENET_MEAN)[:, None, None]
            r, g = rgb[:, 0], rgb[:, 1]
            shares = [((r > 0.7) & (g < 0.3)).float().mean((1, 2)), ((g > 0.6) & (r < 0.3)).float().mean((1, 2)),
                      torch.zeros(images.shape[0])]
            return 100 * torch.stack(shares, 1) - 1

    result = tool.context_reliance(ColourStub(), str(root), "train", images=0, dilate=1, fill="inpaint")
    assert result["images"] == 8 and result["chance"] == [1.0, 0.5, 0.0]
    green = {version: values[1] for version, values in result["ap"].items()}  # in the odd images only
    assert green == pytest.approx({"intact": 1.0, "context only": 0.5, "objects only": 1.0})
    assert np.isnan(result["ap"]["intact"][0]) and np.isnan(result["ap"]["intact"][2])  # no negatives / positives
    assert result["map"]["context only"] == pytest.approx(0.5)
    table = tool.format_table(result).splitlines()
    assert table[3].split()[:2] == ["intact", "100.00"] and table[4].split()[:3] == ["context", "only", "50.00"]


def test_context_reliance_cli(tiny_voc, tmp_path):
    tiny_classifier_checkpoint(tiny_voc, tmp_path / "c.ckpt")
    out = run_tool("context_reliance.py", "--checkpoint", str(tmp_path / "c.ckpt"), "--root", str(tiny_voc),
                   "--split", "train", "--fill", "mean").splitlines()
    assert out[0].startswith("4 images of train") and [line.split()[0] for line in out[3:]] == \
        ["chance", "intact", "context", "objects"]


def test_feature_ceiling_fits_the_ground_truth(tiny_voc, tmp_path):
    """The oracle probe on the tiny set's coloured squares (a linear job for any features that see colour) beats the
    one-epoch classifier's plain CAM and localizes well; the table has its three kinds of rows."""
    tiny_classifier_checkpoint(tiny_voc, tmp_path / "c.ckpt")
    sys.path.insert(0, str(TOOLS))
    import feature_ceiling as tool

    assert tool.parse_feature_set("imagenet:2,3,4") == ("imagenet", [2, 3, 4])
    with pytest.raises(ValueError, match="feature set"):
        tool.parse_feature_set("dino:4")
    result = tool.feature_ceiling(str(tmp_path / "c.ckpt"), str(tiny_voc), "train", 0, ["classifier:1,2"],
                                  holdout=False, steps=300, image_label_probes=["topk:0.1+neg"])
    rows = result["rows"]
    assert set(rows) == {"cam", "classifier:1,2 cam-like", "classifier:1,2 probability",
                         "classifier:1,2 image labels topk:0.1+neg"}
    # four images' labels select less than the masks do (the core's known answer is in test_probecam.py)
    assert rows["classifier:1,2 cam-like"]["best_miou"] > rows["classifier:1,2 image labels topk:0.1+neg"][
        "best_miou"] > 0.0
    with pytest.raises(ValueError, match="POOLING or POOLING"):
        tool.fit_from_image_labels([], "gap+other", 1)
    assert rows["classifier:1,2 cam-like"]["best_miou"] > max(0.6, rows["cam"]["best_miou"])
    out = run_tool("feature_ceiling.py", "--checkpoint", str(tmp_path / "c.ckpt"), "--root", str(tiny_voc),
                   "--features", "classifier:2", "--holdout", "--steps", "50")
    assert "2 images of train scored (probes fit on the other 2)" in out and "classifier:2 cam-like" in out


def test_cam_variants_parses_numbers_and_words():
    sys.path.insert(0, str(TOOLS))
    import cam_variants as tool

    assert tool.parse_variant("ProbeCAMClassifier:seed_threshold=0.8,probe_features=classifier") == (
        "ProbeCAMClassifier", {"seed_threshold": 0.8, "probe_features": "classifier"})
    assert tool.parse_variant("CAMClassifier") == ("CAMClassifier", {})


def test_compare_stages_finds_the_one_changed_value(tmp_path):
    """Two copies of a stage folder are identical; one changed label pixel, one changed weight and one file in
    one folder only are each found, with the exit status a script can check."""
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        write_label_png(folder / "labels" / "x.png", np.zeros((4, 5), np.uint8))
        for sub in ("cams", "checkpoints"):
            (folder / sub).mkdir()
        np.savez(folder / "cams" / "x.npz", cams=np.ones((1, 4, 5)))
        state = {"state_dict": {"w": torch.ones(3), "steps": torch.tensor(7)}}
        torch.save(state, folder / "checkpoints" / "final.ckpt")
    code, out, _ = run_script(TOOLS / "compare_stages.py", str(a), str(b))
    assert code == 0 and out.splitlines()[-1] == "identical"
    assert "ckpt: 2 arrays compared, 0 differ" in out and "npz: 1 arrays compared" in out and "png: 1 arrays" in out

    changed = np.zeros((4, 5), np.uint8)
    changed[1, 2] = 3
    write_label_png(b / "labels" / "x.png", changed)
    torch.save({"state_dict": {"w": torch.tensor([1.0, 1.5, 1.0]), "steps": torch.tensor(7)}},
               b / "checkpoints" / "final.ckpt")
    write_label_png(b / "labels" / "y.png", changed)
    code, out, _ = run_script(TOOLS / "compare_stages.py", str(a), str(b))
    assert code == 1 and out.splitlines()[-1] == "different"
    assert "ckpt: 2 arrays compared, 1 differ (max abs difference 0.5)" in out
    assert "png: 1 arrays compared, 1 differ (max abs difference 3)" in out
    assert "in one folder only: 1 (first: labels/y.png)" in out

    for folder, value in ((a, 1.0), (b, 1.0 + 1e-12)):  # below float32's resolution: compared as stored
        weight = torch.tensor([value], dtype=torch.float64)
        torch.save({"state_dict": {"w": weight}}, folder / "checkpoints" / "final.ckpt")
    code, out, _ = run_script(TOOLS / "compare_stages.py", str(a), str(b))
    assert code == 1 and "ckpt: 1 arrays compared, 1 differ" in out


def test_affinity_pair_labels_by_hand():
    """Every pair within the radius counted by brute force: taught labels against the masks' regions."""
    sys.path.insert(0, str(TOOLS))
    from affinity_pair_labels import pair_counts, pair_rates

    from lightning_wsss.refine.affinity_labels import neighbor_offsets

    label = np.array([[1, 1, 0], [0, 0, 255], [0, 0, 0]], np.uint8)
    truth = np.array([[1, 0, 0], [1, 0, 0], [255, 0, 0]], np.uint8)
    expected = dict.fromkeys(("taught", "positive", "negative", "negative_inside", "negative_inside_object",
                              "positive_across", "across", "across_taught"), 0)
    for y in range(3):
        for x in range(3):
            for dy, dx in neighbor_offsets(2).tolist():
                v, u = y + dy, x + dx
                if not (0 <= v < 3 and 0 <= u < 3) or truth[y, x] == 255 or truth[v, u] == 255:
                    continue
                across = truth[y, x] != truth[v, u]
                expected["across"] += int(across)
                if label[y, x] == 255 or label[v, u] == 255:
                    continue
                negative = label[y, x] != label[v, u]
                expected["taught"] += 1
                expected["negative" if negative else "positive"] += 1
                expected["negative_inside"] += int(negative and not across)
                expected["negative_inside_object"] += int(negative and not across and truth[y, x] != 0)
                expected["positive_across"] += int(not negative and across)
                expected["across_taught"] += int(negative and across)
    counts = pair_counts(label, truth, stride=1, radius=2)
    assert counts == expected and counts["negative_inside"] > 0 and counts["positive_across"] > 0
    assert 0 < counts["negative_inside_object"] < counts["negative_inside"]
    rates = pair_rates([(label, truth)], stride=1, radius=2)
    assert rates["negative_inside"] == expected["negative_inside"] / expected["negative"]
    assert rates["boundaries_taught"] == expected["across_taught"] / expected["across"]
    # stride 2 keeps the centre pixel of every 2 x 2 cell: rows and columns 1 (and the last, clamped) of a 4 x 4 map
    big = np.kron(label, np.ones((2, 2), np.uint8))[:4, :4]
    assert pair_counts(big, np.kron(truth, np.ones((2, 2), np.uint8))[:4, :4], stride=2, radius=2)["taught"] > 0


def test_affinity_pair_labels_cli(tiny_voc, tmp_path):
    """Labels equal to the masks teach no boundary inside a region and every boundary; labels of all background
    teach no boundary at all."""
    reader = VOCSegmentation(tiny_voc, "train")
    for image_id in reader.ids:
        mask = reader.load(image_id)["mask"]
        write_label_png(tmp_path / "same" / f"{image_id}.png", mask)
        write_label_png(tmp_path / "flat" / f"{image_id}.png", np.zeros_like(mask))
    same = json.loads(run_tool("affinity_pair_labels.py", "--labels", str(tmp_path / "same"), "--root", str(tiny_voc),
                               "--stride", "4", "--json"))
    assert same["negative_inside"] == 0.0 and same["positive_across"] == 0.0 and same["boundaries_taught"] == 1.0
    assert same["negative_inside_object"] == 0.0
    flat = json.loads(run_tool("affinity_pair_labels.py", "--labels", str(tmp_path / "flat"), "--root", str(tiny_voc),
                               "--stride", "4", "--json"))
    assert flat["negative"] == 0.0 and flat["boundaries_taught"] == 0.0 and flat["positive_across"] > 0.0


def test_cam_crf_sweep_scores_settings_and_foreground_shares(tiny_voc, tmp_path):
    """Maps equal to the masks score 100 at any threshold below 1; flat 0.5 maps label every pixel foreground below
    0.5 and none above, which the foreground shares show."""
    reader = VOCSegmentation(tiny_voc, "train")
    exact, flat = tmp_path / "exact", tmp_path / "flat"
    exact.mkdir(), flat.mkdir()
    for image_id in reader.ids:
        mask = np.asarray(reader.load(image_id)["mask"])
        keys = np.array(sorted(set(np.unique(mask).tolist()) - {0, 255}), np.int64)
        np.savez(exact / f"{image_id}.npz", cams=np.stack([(mask == k).astype(np.float32) for k in keys]), keys=keys)
        np.savez(flat / f"{image_id}.npz", cams=np.full((len(keys), *mask.shape), 0.5, np.float32), keys=keys)
    rows = json.loads(run_tool("cam_crf_sweep.py", "--cams", str(exact), "--root", str(tiny_voc), "--bg-thresholds",
                               "0.2,0.8", "--crfs", "{none: false}", "--json"))
    assert [(r["bg_threshold"], round(r["miou"], 6)) for r in rows] == [(0.2, 1.0), (0.8, 1.0)]
    assert rows[0]["labelled_fg"] == pytest.approx(rows[0]["gt_fg"]) and 0 < rows[0]["gt_fg"] < 1
    rows = json.loads(run_tool("cam_crf_sweep.py", "--cams", str(flat), "--root", str(tiny_voc), "--bg-thresholds",
                               "0.3,0.6", "--crfs", "{none: false}", "--json"))
    assert [r["labelled_fg"] for r in rows] == pytest.approx([1.0, 0.0], abs=0.02)
    assert rows[1]["miou"] < 1.0
    out = run_tool("cam_crf_sweep.py", "--cams", str(exact), "--root", str(tiny_voc), "--bg-thresholds", "0.5")
    assert "best: crf none, bg_threshold 0.5: 100.00" in out
    # bounded against the masks as reference labels, no class may grow at all: the flat maps' flood goes back
    reference = tmp_path / "reference"
    for image_id in reader.ids:
        write_label_png(reference / f"{image_id}.png", np.asarray(reader.load(image_id)["mask"]))
    rows = json.loads(run_tool("cam_crf_sweep.py", "--cams", str(flat), "--root", str(tiny_voc), "--bg-thresholds",
                               "0.3", "--crfs", "{none: false}", "--reference", str(reference), "--max-growth", "0",
                               "--json"))
    assert rows[0]["miou"] == pytest.approx(1.0) and rows[0]["labelled_fg"] == pytest.approx(rows[0]["gt_fg"])
    code, _, err = run_script(TOOLS / "cam_crf_sweep.py", "--cams", str(flat), "--root", str(tiny_voc),
                              "--max-growth", "1")
    assert code == 2 and "--reference" in err


def test_refinement_changes_counts_floods_trims_and_lost_objects(tiny_voc, tmp_path):
    """Reference = the masks; the 'refinement' floods class 1 over the background of one image and erases every
    object of class 2: its added pixels are all wrong, its removed ones all right, and every class-2 object is lost."""
    reader = VOCSegmentation(tiny_voc, "train")
    reference, refined = tmp_path / "reference", tmp_path / "refined"
    flooded = reader.ids[0]
    objects_2 = 0
    for image_id in reader.ids:
        mask = np.asarray(reader.load(image_id)["mask"])
        write_label_png(reference / f"{image_id}.png", mask)
        changed = np.where(mask == 2, 0, mask).astype(np.uint8)
        if image_id == flooded:
            changed[mask == 0] = 1
        write_label_png(refined / f"{image_id}.png", changed)
        objects_2 += int(((mask == 2).any()))
    assert objects_2 > 0 and (np.asarray(reader.load(flooded)["mask"]) == 1).any()
    result = json.loads(run_tool("refinement_changes.py", "--reference", str(reference), "--refined", str(refined),
                                 "--root", str(tiny_voc), "--max-growth", "1", "--min-kept", "0.5", "--json"))
    added, added_right = np.array(result["added"]), np.array(result["added_right"])
    assert added[1].sum() > 0 and added_right[1].sum() == 0 and added[2:].sum() == 0
    removed, removed_right = np.array(result["removed"]), np.array(result["removed_right"])
    assert removed[2] > 0 and removed_right[2] == 0 and removed[1] == 0
    lost_ref, lost_new = np.array(result["lost_reference"]), np.array(result["lost_refined"])
    assert lost_ref[:, 1].sum() == 0 and lost_new[2, 1] == lost_new[2, 0] >= objects_2 and lost_new[1, 1] == 0
    newly = np.array(result["newly_lost"])  # every class-2 region erased whole: all "removed"
    assert newly[2, 0] == lost_new[2, 1] and newly[:, 1:].sum() == 0 and newly[1].sum() == 0
    assert result["miou"]["reference"] == pytest.approx(1.0) and result["miou"]["refined"] < 0.8
    assert result["miou"]["bounded"] == pytest.approx(1.0)  # both bounds undo both changes here
    table = run_tool("refinement_changes.py", "--reference", str(reference), "--refined", str(refined),
                     "--root", str(tiny_voc))
    assert "objects lost" in table and "mIoU: reference 100.00" in table
    assert f"removed {lost_new[2, 1]}, kept off 0, kept on 0" in table


def test_refinement_changes_newly_lost_objects_by_what_became_of_their_regions():
    """Three 10 x 10 or 10 x 6 objects of class 1, each labelled in the reference and lost after the refinement:
    one region erased (removed), one region five times the object that keeps its outside part (kept off), one
    region on 30 % of the object halved to 15 % of it (kept on)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("refinement_changes", TOOLS / "refinement_changes.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    mask = np.zeros((20, 60), np.uint8)
    mask[5:15, 2:12] = mask[5:15, 22:28] = mask[5:15, 42:52] = 1
    reference, refined = np.zeros_like(mask), np.zeros_like(mask)
    reference[5:15, 2:12] = 1                                 # object 1: its region erased
    reference[2:18, 16:34] = refined[2:18, 16:34] = 1         # object 2: a region around it ...
    refined[5:15, 22:28] = 0                                  # ... that keeps only its outside part
    reference[5:15, 42:45] = 1                                # object 3: 30 of its 100 pixels ...
    refined[5:15, 42] = refined[5:10, 43] = 1                 # ... of which 15 kept
    counts = tool.newly_lost(reference, refined, mask, None, 2)
    assert counts.tolist() == [[0, 0, 0], [1, 1, 1]]
    assert tool.newly_lost(reference, reference, mask, None, 2).sum() == 0
