"""Tests of the synthetic VOC-style data set generator."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from lightning_wsss.datasets import synthetic as syn
from lightning_wsss.datasets.synthetic import (
    SYNTHETIC_CLASSES,
    make_synthetic,
    render_sample,
    sample_rng,
)
from lightning_wsss.errors import DataError
from lightning_wsss.io import read_image, read_label_png

N_TRAIN, N_VAL, SIZE = 12, 6, 64


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("syn") / "data", N_TRAIN, N_VAL, size=SIZE, seed=0)


def _ids(root: Path, split: str):
    return (root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()


def _all_files(root: Path):
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def _tight_box(mask: np.ndarray):
    """Independent reference: VOC 1-based inclusive box of a boolean mask."""
    ys, xs = np.where(mask)
    return xs.min() + 1, ys.min() + 1, xs.max() + 1, ys.max() + 1


def _parse_xml(path: Path):
    root = ET.parse(path).getroot()
    size = root.find("size")
    dims = tuple(int(size.find(t).text) for t in ("width", "height", "depth"))
    objs = []
    for obj in root.findall("object"):
        bb = obj.find("bndbox")
        box = tuple(int(bb.find(t).text) for t in ("xmin", "ymin", "xmax", "ymax"))
        objs.append((obj.find("name").text, int(obj.find("difficult").text), box))
    return root.find("filename").text, dims, objs


def test_layout_and_split_lists(dataset: Path):
    train, val = _ids(dataset, "train"), _ids(dataset, "val")
    assert len(train) == N_TRAIN and len(val) == N_VAL and not set(train) & set(val)
    assert train[0] == "syn_000001" and val[-1] == f"syn_{N_TRAIN + N_VAL:06d}"
    ids = set(train) | set(val)
    for sub, ext in (("JPEGImages", "jpg"), ("SegmentationClass", "png"), ("SegmentationObject", "png"), ("Annotations", "xml")):
        assert {p.stem for p in (dataset / sub).glob(f"*.{ext}")} == ids, sub
    names = (dataset / "class_names.txt").read_text().split()
    assert names == list(SYNTHETIC_CLASSES) and names[0] == "background" and len(names) >= 6
    params = json.loads((dataset / "synthetic.json").read_text())
    assert (params["num_train"], params["num_val"], params["size"], params["seed"]) == (N_TRAIN, N_VAL, SIZE, 0)
    assert not (dataset / ".synthetic.partial.json").exists()
    assert not list(dataset.rglob("*.tmp"))


def test_images_masks_and_xml_agree(dataset: Path):
    for image_id in _ids(dataset, "train") + _ids(dataset, "val"):
        img = read_image(dataset / "JPEGImages" / f"{image_id}.jpg")
        label = read_label_png(dataset / "SegmentationClass" / f"{image_id}.png")
        inst = read_label_png(dataset / "SegmentationObject" / f"{image_id}.png")
        assert img.shape == (SIZE, SIZE, 3) and label.shape == inst.shape == (SIZE, SIZE)
        assert label.max() < len(SYNTHETIC_CLASSES)  # also excludes 255: masks are exact
        assert ((label > 0) == (inst > 0)).all()
        filename, dims, objs = _parse_xml(dataset / "Annotations" / f"{image_id}.xml")
        assert filename == f"{image_id}.jpg" and dims == (SIZE, SIZE, 3)
        n = int(inst.max())
        assert n >= 1 and len(objs) == n
        assert set(np.unique(inst)) == set(range(n + 1))  # ids 1..n, all visible
        for iid, (name, difficult, box) in enumerate(objs, start=1):
            pix = inst == iid
            assert box == _tight_box(pix)
            assert difficult == 0
            classes = np.unique(label[pix])
            assert len(classes) == 1 and SYNTHETIC_CLASSES[int(classes[0])] == name


def test_determinism_and_workers(dataset: Path, tmp_path: Path):
    again = make_synthetic(tmp_path / "again", N_TRAIN, N_VAL, size=SIZE, seed=0, workers=2)
    files = _all_files(dataset)
    assert files == _all_files(again)
    for rel in files:
        assert (dataset / rel).read_bytes() == (again / rel).read_bytes(), rel
    other = make_synthetic(tmp_path / "other", N_TRAIN, N_VAL, size=SIZE, seed=1)
    for sub in ("JPEGImages/syn_000001.jpg", "SegmentationClass/syn_000002.png", "Annotations/syn_000003.xml"):
        assert (dataset / sub).read_bytes() != (other / sub).read_bytes()


def test_rerun_on_complete_folder_does_not_rewrite(dataset: Path):
    watched = [dataset / "synthetic.json", dataset / "JPEGImages" / "syn_000001.jpg", dataset / "ImageSets" / "Segmentation" / "val.txt"]
    before = [p.stat().st_mtime_ns for p in watched]
    assert make_synthetic(dataset, N_TRAIN, N_VAL, size=SIZE, seed=0) == dataset
    assert [p.stat().st_mtime_ns for p in watched] == before


@pytest.mark.parametrize("kwargs", [dict(seed=1), dict(size=SIZE + 32), dict(num_train=N_TRAIN + 1)])
def test_mismatched_parameters_raise(dataset: Path, kwargs):
    args = dict(num_train=N_TRAIN, num_val=N_VAL, size=SIZE, seed=0)
    args.update(kwargs)
    with pytest.raises(DataError, match="synthetic.json"):
        make_synthetic(dataset, **args)


def test_refuses_foreign_voc_folder(tmp_path: Path):
    (tmp_path / "JPEGImages").mkdir()
    with pytest.raises(DataError, match="not a synthetic"):
        make_synthetic(tmp_path, 2, 1, size=SIZE)


def test_interrupted_run_is_resumed_and_marks_completion_last(dataset: Path, tmp_path: Path, monkeypatch):
    calls = {"n": 0}
    real = syn.write_label_png

    def flaky(path, label, palette=None):
        calls["n"] += 1
        if calls["n"] > 9:
            raise KeyboardInterrupt
        real(path, label, palette)

    monkeypatch.setattr(syn, "write_label_png", flaky)
    target = tmp_path / "partial"
    with pytest.raises(KeyboardInterrupt):
        make_synthetic(target, N_TRAIN, N_VAL, size=SIZE, seed=0)
    assert not (target / "synthetic.json").exists() and not (target / "ImageSets").exists()
    assert (target / ".synthetic.partial.json").exists()
    with pytest.raises(DataError):  # a partial folder is not mixed with other parameters either
        make_synthetic(target, N_TRAIN, N_VAL, size=SIZE, seed=5)
    monkeypatch.setattr(syn, "write_label_png", real)
    make_synthetic(target, N_TRAIN, N_VAL, size=SIZE, seed=0)
    assert _all_files(target) == _all_files(dataset)
    for rel in _all_files(dataset):
        assert (target / rel).read_bytes() == (dataset / rel).read_bytes(), rel


@pytest.fixture(scope="module")
def samples():
    return [render_sample(sample_rng(123, i), SIZE) for i in range(200)]


def test_rendered_samples_are_consistent(samples):
    for s in samples:
        assert s.image.shape == (SIZE, SIZE, 3) and s.image.dtype == np.uint8
        assert len(s.objects) >= 1
        assert [o.instance_id for o in s.objects] == list(range(1, len(s.objects) + 1))
        for o in s.objects:
            pix = s.instances == o.instance_id
            assert pix.sum() == o.visible_area >= 12
            assert (s.label[pix] == o.class_index).all()
            ys, xs = np.where(pix)
            assert o.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)  # 0-based pixel-edge
        assert ((s.label > 0) == (s.instances > 0)).all()


def test_emblem_is_a_small_part_of_each_object(samples):
    fractions = []
    for s in samples:
        for o in s.objects:
            obj = s.instances == o.instance_id
            emb = s.emblems == o.instance_id
            assert emb.any() and not (emb & ~obj).any()  # visible emblem inside the visible object
            assert o.emblem_area < 0.5 * o.body_area
            assert emb.sum() < 0.5 * obj.sum()
            fractions.append(o.emblem_area / o.body_area)
    assert 0.08 < np.median(fractions) < 0.3
    assert max(fractions) < 0.4


def test_context_bias_statistics(samples):
    def frac(pred, family):
        sel = [s for s in samples if pred({o.class_index for o in s.objects})]
        assert len(sel) >= 15
        return np.mean([s.background == family for s in sel])

    assert frac(lambda c: 1 in c and 2 not in c, "water") >= 0.65
    assert frac(lambda c: 2 in c and 1 not in c, "grass") >= 0.65
    assert frac(lambda c: 1 not in c, "water") <= 0.15
    assert frac(lambda c: 2 not in c, "grass") <= 0.15
    families = {s.background for s in samples if not ({o.class_index for o in s.objects} & {1, 2})}
    assert {"gradient", "noise", "stripes", "wavy"} <= families


def test_scene_statistics(samples):
    counts = [len(s.objects) for s in samples]
    assert min(counts) == 1 and max(counts) >= 4 and 1.3 < np.mean(counts) < 3.0
    classes = np.array([o.class_index for s in samples for o in s.objects])
    assert set(classes) == set(range(1, len(SYNTHETIC_CLASSES)))
    assert any(len(s.objects) > len({o.class_index for o in s.objects}) for s in samples)  # repeated classes
    occluded = [o for s in samples for o in s.objects if o.visible_area < o.body_area]
    assert len(occluded) >= 5
    sides = [max(o.box[2] - o.box[0], o.box[3] - o.box[1]) / SIZE for s in samples for o in s.objects]
    assert min(sides) < 0.2 and max(sides) > 0.5


def test_body_appearance_is_class_independent(samples):
    """Body (non-emblem) colour statistics must not reveal the class; emblem colours must."""
    body_means = {c: [] for c in range(1, len(SYNTHETIC_CLASSES))}
    emblem_means = {c: [] for c in range(1, len(SYNTHETIC_CLASSES))}
    for s in samples:
        img = s.image.astype(np.float64)
        for o in s.objects:
            obj = s.instances == o.instance_id
            emb = s.emblems == o.instance_id
            body = obj & ~emb
            if body.sum() >= 10:
                body_means[o.class_index].append(img[body].mean(0))
            emblem_means[o.class_index].append(img[emb].mean(0))
    body_avg = np.array([np.mean(v, 0) for v in body_means.values()])
    emb_avg = np.array([np.mean(v, 0) for v in emblem_means.values()])
    spread = lambda a: max(np.abs(a[i] - a[j]).max() for i in range(len(a)) for j in range(len(a)))
    assert spread(body_avg) < 30
    assert spread(emb_avg) > 100


def test_bodies_differ_from_background_in_expectation(samples):
    gaps = []
    for s in samples:
        img = s.image.astype(np.float64)
        bg = img[s.label == 0].mean(0)
        for o in s.objects:
            body = (s.instances == o.instance_id) & (s.emblems != o.instance_id)
            if body.sum() >= 10:
                gaps.append(np.abs(img[body].mean(0) - bg).max())
    gaps = np.array(gaps)
    assert np.median(gaps) > 25  # usually separable by colour ...
    assert (gaps < 15).mean() > 0.03  # ... but not always (low-contrast cases)


def test_render_sample_is_pure():
    a, b = render_sample(sample_rng(7, 3), SIZE), render_sample(sample_rng(7, 3), SIZE)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.instances, b.instances)
    c = render_sample(sample_rng(8, 3), SIZE)
    assert not np.array_equal(a.image, c.image)
