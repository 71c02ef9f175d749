"""CAM + dense CRF without an affinity network: the functional core and the ``cam_crf`` pipeline stage."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_wsss.cam.multiscale import add_background, cams_to_label
from lightning_wsss.datasets.synthetic import make_synthetic
from lightning_wsss.errors import DataError
from lightning_wsss.pipeline import run_pipeline
from lightning_wsss.pipeline.config import deep_merge
from lightning_wsss.pipeline.demo import QUICK_OVERRIDES
from lightning_wsss.pipeline.plan import stage_names
from lightning_wsss.pipeline.defaults import resolve
from lightning_wsss.refine.cam_crf import BACKGROUND_KEYS, background_settings, cam_crf_labels
from lightning_wsss.tasks import CAMClassifier
from lightning_wsss.refine.label_bounds import keep_regions, limit_growth

pytest.importorskip("pydensecrf.densecrf")


def two_colour_image(size: int = 48) -> np.ndarray:
    """Left half red, right half blue: the object (class 3) is the left half."""
    image = np.zeros((size, size, 3), np.uint8)
    image[:, : size // 2] = (220, 40, 40)
    image[:, size // 2 :] = (40, 40, 220)
    return image


def test_without_crf_the_labels_are_the_cam_stages():
    rng = np.random.default_rng(0)
    cams, keys = rng.random((2, 20, 24)).astype(np.float32), np.array([2, 5])
    image = np.zeros((20, 24, 3), np.uint8)
    for mode in ("constant", "power"):
        expected = cams_to_label(add_background(torch.from_numpy(cams)[None], mode=mode, bg_threshold=0.4, alpha=2.0),
                                 torch.from_numpy(keys)[None])[0].numpy()
        got = cam_crf_labels(image, cams, keys, bg_mode=mode, bg_threshold=0.4, bg_alpha=2.0, crf=False)
        assert got.dtype == np.uint8 and np.array_equal(got, expected)
    assert not cam_crf_labels(image, cams[:0], keys[:0], crf=True).any()  # no class: background everywhere


def test_the_crf_pulls_an_overreaching_cam_back_to_the_colour_edge():
    image = two_colour_image()
    cams = np.zeros((1, 48, 48), np.float32)
    cams[0, :, :32] = 0.6  # reaches 8 columns past the edge at 24
    truth = np.zeros((48, 48), bool)
    truth[:, :24] = True
    plain = cam_crf_labels(image, cams, np.array([3]), bg_threshold=0.4, crf=False) == 3
    refined = cam_crf_labels(image, cams, np.array([3]), bg_threshold=0.4, crf=True) == 3

    def iou(pred: np.ndarray) -> float:
        return (pred & truth).sum() / (pred | truth).sum()

    assert iou(plain) == pytest.approx(24 / 32)
    assert iou(refined) > 0.95
    # ignore_changes: the pixels the CRF moved (the over-reach) become 255, the rest keeps the labels both agree on
    agreed = cam_crf_labels(image, cams, np.array([3]), bg_threshold=0.4, crf=True, ignore_changes=True)
    changed = plain != refined
    assert changed[:, 24:32].mean() > 0.9
    assert (agreed[changed] == 255).all() and (agreed[~changed] == np.where(plain, 3, 0)[~changed]).all()
    assert not (cam_crf_labels(image, cams, np.array([3]), bg_threshold=0.4, crf=False, ignore_changes=True)
                == 255).any()


def test_cams_that_do_not_fit_the_image_are_refused():
    with pytest.raises(ValueError, match="do not fit an image of size"):
        cam_crf_labels(two_colour_image(), np.zeros((1, 40, 48), np.float32), np.array([1]))
    with pytest.raises(ValueError, match="2 keys"):
        cam_crf_labels(two_colour_image(), np.zeros((1, 48, 48), np.float32), np.array([1, 2]))


def test_limit_growth_reverts_a_class_that_grows_past_its_bound_and_keeps_what_it_loses():
    cam = np.zeros((4, 8), np.uint8)
    cam[0, :4] = 1  # class 1: 4 pixels
    cam[3, :4] = 2  # class 2: 4 pixels
    refined = cam.copy()
    refined[1, :3] = 1  # class 1 gains 3 (<= 1 x 4): kept
    refined[2:, 4:] = 2  # class 2 gains 8 (> 4): back to the CAM's labels
    refined[0, 0] = 0  # a pixel class 1 loses stays lost
    limited = limit_growth(cam, refined, 1.0)
    assert (limited[1, :3] == 1).all() and limited[0, 0] == 0
    assert (limited[2:, 4:] == 0).all() and (limited[3, :4] == 2).all()
    assert limit_growth(cam, refined, 2.0).tolist() == refined.tolist()  # 8 <= 2 x 4
    no_growth = limit_growth(cam, refined, 0.0)
    assert no_growth[0, 0] == 0 and ((no_growth == 1) <= (cam == 1)).all() and ((no_growth == 2) <= (cam == 2)).all()


def test_keep_regions_restores_a_cam_region_the_crf_erased_and_leaves_one_it_shrank():
    cam = np.zeros((6, 12), np.uint8)
    cam[1:5, 1:5] = 4  # region A: 16 pixels
    cam[1:5, 7:11] = 4  # region B: 16 pixels, same class
    refined = cam.copy()
    refined[1:5, 1:4] = 0  # A keeps 4 of 16 (25 %)
    refined[1:3, 7:11] = 0  # B keeps 8 of 16 (50 %)
    refined[5, :] = 2  # the CRF's own additions stay
    kept = keep_regions(cam, refined, 0.5)
    assert (kept[1:5, 1:5] == 4).all()  # A restored as a whole
    assert np.array_equal(kept[:, 6:], refined[:, 6:])  # B kept half: as refined
    assert (kept[5] == 2).all()
    assert np.array_equal(keep_regions(cam, refined, 0.25), refined)  # 25 % is enough at 0.25
    assert np.array_equal(keep_regions(cam, refined, 0.0), refined)


def test_min_kept_stops_the_crf_erasing_a_weak_object():
    image = two_colour_image()
    cams = np.zeros((1, 48, 48), np.float32)
    cams[0, 10:20, 30:40] = 0.5  # a weak CAM region on the blue half, whose colour says background
    erased = cam_crf_labels(image, cams, np.array([3]), bg_threshold=0.4, crf=True)
    assert (erased[10:20, 30:40] == 3).mean() < 0.5
    kept = cam_crf_labels(image, cams, np.array([3]), bg_threshold=0.4, crf=True, min_kept=0.5)
    assert (kept[10:20, 30:40] == 3).all()


def test_max_growth_bounds_the_crf_by_the_reference_labels():
    image = two_colour_image()
    cams = np.zeros((1, 48, 48), np.float32)
    cams[0, :, :20] = 0.6  # falls 4 columns short of the edge at 24: the CRF grows it by 4 / 20
    cams[0, :, 20:24] = 0.3  # below the background threshold, above nothing
    free = cam_crf_labels(image, cams, np.array([3]), bg_threshold=0.4, crf=True) == 3
    assert free[:, 20:24].mean() > 0.9
    bounded = cam_crf_labels(image, cams, np.array([3]), bg_threshold=0.4, crf=True, max_growth=0.1) == 3
    assert not bounded[:, 20:].any() and bounded[:, :20].mean() > 0.9
    assert np.array_equal(cam_crf_labels(image, cams, np.array([3]), bg_threshold=0.4, crf=True, max_growth=0.5) == 3,
                          free)
    # measured against other labels (the CAM stage's at its own threshold): there the class has 8 columns
    reference = np.where(np.arange(48) < 8, 3, 0).astype(np.uint8)[None].repeat(48, axis=0)
    against = cam_crf_labels(image, cams, np.array([3]), bg_threshold=0.4, crf=True, max_growth=1.0,
                             reference=reference) == 3
    assert not against[:, 8:].any()
    with pytest.raises(ValueError, match="reference labels"):
        cam_crf_labels(image, cams, np.array([3]), max_growth=1.0, reference=reference[:40])


def test_background_settings_stage_over_classifier_over_defaults():
    assert background_settings(None, None) == {"bg_mode": "constant", "bg_threshold": 0.15, "bg_alpha": 16.0}
    assert background_settings({"bg_threshold": 0.3}, {"bg_threshold": 0.2, "bg_mode": "power", "lr": 1}) == \
        {"bg_mode": "power", "bg_threshold": 0.3, "bg_alpha": 16.0}


def test_background_defaults_are_the_classifiers():
    """A CAM stage without background settings in its checkpoint is scored as the classifier would score it."""
    classifier = inspect.signature(CAMClassifier.__init__).parameters
    assert background_settings(None, None) == {key: classifier[key].default for key in BACKGROUND_KEYS}


@pytest.fixture(scope="module")
def tiny_synthetic(tmp_path_factory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("syn") / "data", num_train=8, num_val=4, size=64, seed=5)


def crf_config(root: Path, cam_crf: dict) -> dict:
    return deep_merge(QUICK_OVERRIDES, {
        "name": "t-cam-crf", "supervision": "image", "progress_bar": False, "logger": "csv",
        "dataset": {"root": str(root), "name": "synthetic"},
        "order": ["classifier", "cams", "cam_crf", "segmenter"],
        "stages": {"cams": {"cam": {"bg_threshold": 0.35}}, "cam_crf": cam_crf}})


def test_pipeline_refines_the_cams_without_an_affinity_stage(tiny_synthetic, tmp_path):
    config = crf_config(tiny_synthetic, {"crf": False, "processes": 1})
    assert stage_names(resolve(config)) == ["classifier", "cams", "cam_crf", "segmenter"]
    stages = run_pipeline(config, tmp_path, log=lambda _m: None, until="cam_crf")["stages"]
    cams_labels, crf_labels = Path(stages["cams"]["dir"]) / "labels", Path(stages["cam_crf"]["dir"]) / "labels"
    saved = json.loads((Path(stages["cam_crf"]["dir"]) / "config.json").read_text())["config"]["stage"]
    assert saved["bg_threshold"] == 0.35  # the CAM stage's threshold, in the hash
    names = sorted(p.name for p in cams_labels.glob("*.png"))
    assert len(names) == 8 and names == sorted(p.name for p in crf_labels.glob("*.png"))
    # without the CRF the stage makes the CAM stage's labels (up to ties: the saved CAMs are float16, the CAM
    # stage's labels come from its float32 maps)
    differ = sum(int((np.array(Image.open(cams_labels / n)) != np.array(Image.open(crf_labels / n))).sum())
                 for n in names)
    assert differ <= 0.001 * 8 * 64 * 64
    assert stages["cam_crf"]["metrics"]["pseudo_miou"] == pytest.approx(stages["cams"]["metrics"]["pseudo_miou"],
                                                                        abs=0.002)

    # the worker count is left out of the hash: another one reuses the stage
    again = run_pipeline(crf_config(tiny_synthetic, {"crf": False, "processes": 2}), tmp_path,
                         log=lambda _m: None, until="cam_crf")["stages"]
    assert again["cam_crf"]["dir"] == stages["cam_crf"]["dir"]

    # with the CRF (two workers): the CAM stages are reused, the labels differ somewhere
    refined = run_pipeline(crf_config(tiny_synthetic, {"crf": {"scale_params": True}, "processes": 2}), tmp_path,
                           log=lambda _m: None, until="cam_crf")["stages"]
    assert refined["cams"]["dir"] == stages["cams"]["dir"] and refined["cam_crf"]["dir"] != stages["cam_crf"]["dir"]
    other = Path(refined["cam_crf"]["dir"]) / "labels"
    assert any(not np.array_equal(np.array(Image.open(cams_labels / n)), np.array(Image.open(other / n)))
               for n in names)


def test_the_stage_bounds_growth_by_the_cam_stages_labels(tiny_synthetic, tmp_path):
    def outside_the_cam_labels(section: dict) -> int:
        """Class pixels of the stage's labels that the CAM stage (threshold 0.35) labelled otherwise."""
        stages = run_pipeline(crf_config(tiny_synthetic, {"crf": {"scale_params": True}, "bg_threshold": 0.2,
                                                          "processes": 1, **section}),
                              tmp_path, log=lambda _m: None, until="cam_crf")["stages"]
        cams_labels, crf_labels = Path(stages["cams"]["dir"]) / "labels", Path(stages["cam_crf"]["dir"]) / "labels"
        count = 0
        for path in sorted(crf_labels.glob("*.png")):
            crf, cam = np.array(Image.open(path)), np.array(Image.open(cams_labels / path.name))
            count += int(((crf > 0) & (crf != cam)).sum())
        return count

    assert outside_the_cam_labels({}) > 0  # the lower threshold and the CRF add pixels
    assert outside_the_cam_labels({"max_growth": 0.0}) == 0


def test_a_broken_cam_file_is_named_and_earlier_labels_stay(tiny_synthetic, tmp_path):
    stages = run_pipeline(crf_config(tiny_synthetic, {"crf": False, "processes": 1}), tmp_path,
                          log=lambda _m: None, until="cam_crf")["stages"]
    cams = sorted((Path(stages["cams"]["dir"]) / "cams").glob("*.npz"))
    np.savez(cams[0], cams=np.zeros((1, 5, 5), np.float32), keys=np.array([1]))  # the wrong size
    with pytest.raises(DataError, match=cams[0].name):
        run_pipeline(crf_config(tiny_synthetic, {"crf": True, "processes": 1}), tmp_path, log=lambda _m: None,
                     until="cam_crf")
    assert len(list((Path(stages["cam_crf"]["dir"]) / "labels").glob("*.png"))) == 8
