"""The "beyond the baselines" pipeline configs of experiments/synthetic run end to end on a tiny synthetic set,
sharing the baseline's stages where they are the same computation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lightning_wsss.pipeline import run_pipeline
from lightning_wsss.pipeline.checks import load_config
from lightning_wsss.pipeline.config import deep_merge
from lightning_wsss.pipeline.demo import QUICK_OVERRIDES
from lightning_wsss.pipeline.defaults import resolve
from lightning_wsss.pipeline.plan import stage_names
from test_pipeline import quiet, tiny_synthetic  # noqa: F401  (fixture)

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments" / "synthetic"
TINY = {"stages": {"classifier": {"trainer": {"max_epochs": 2}}, "segmenter": {"trainer": {"max_epochs": 2}}}}


def shrunk(name: str, root: Path, **overrides) -> dict:
    """experiments/synthetic/<name>.yaml on the tiny set, with the demo's quick sizes (2 epochs per trainer)."""
    config = load_config(EXPERIMENTS / f"{name}.yaml")
    config = deep_merge(config, QUICK_OVERRIDES)
    config = deep_merge(config, TINY)
    config = deep_merge(config, {"dataset": {"root": str(root)}, "progress_bar": False, "logger": "none"})
    return deep_merge(config, overrides)


def stage_outputs(entry: dict, name: str) -> dict:
    return json.loads((Path(entry["stages"][name]["dir"]) / "stage.json").read_text())["outputs"]


def test_method_pipelines_share_the_baseline_stages(tiny_synthetic, tmp_path):  # noqa: F811
    base = run_pipeline(shrunk("pipeline_image", tiny_synthetic), tmp_path, log=quiet)["supervision"]["image"]

    erasing = run_pipeline(shrunk("pipeline_erasing", tiny_synthetic, stages={"classifier": {"model": {"init_args": {
        "erase_rounds": 1, "round_epochs": 1}}}}), tmp_path, log=quiet)["supervision"]["image_erasing"]
    assert not erasing["stages"]["classifier"]["reused"]
    assert stage_outputs(erasing, "classifier")["class_path"] == "ErasingCAMClassifier"
    assert erasing["pseudo_miou"]["cam"] is not None

    cda = run_pipeline(shrunk("pipeline_cda", tiny_synthetic, stages={"classifier": {"data": {"paste_prob": 1.0,
        "min_object_area": 4}}}), tmp_path, log=quiet)["supervision"]["image_cda"]
    # the seed classifier is the baseline's classifier: same folder and hash, not retrained
    assert cda["stages"]["seed_classifier"]["hash"] == base["stages"]["classifier"]["hash"]
    assert cda["stages"]["seed_classifier"]["reused"] and cda["stages"]["seed_cams"]["reused"]
    assert cda["pseudo_miou"]["seed_cam"] == pytest.approx(base["pseudo_miou"]["cam"])
    assert cda["stages"]["classifier"]["hash"] != base["stages"]["classifier"]["hash"]
    classifier_config = json.loads((Path(cda["stages"]["classifier"]["dir"]) / "config.json").read_text())
    assert classifier_config["config"]["stage"]["datamodule"] == "CDADataModule"
    assert classifier_config["upstream"] == {"cams": base["stages"]["cams"]["hash"]}

    sec = run_pipeline(shrunk("pipeline_sec", tiny_synthetic), tmp_path, log=quiet)["supervision"]["image_sec"]
    assert all(sec["stages"][name]["reused"] for name in ("classifier", "cams", "affinity", "random_walk"))
    assert not sec["stages"]["segmenter"]["reused"] and 0.0 <= sec["val_miou"] <= 1.0
    segmenter_config = json.loads((Path(sec["stages"]["segmenter"]["dir"]) / "config.json").read_text())
    assert segmenter_config["config"]["stage"]["labels_from"] == "affinity"
    assert set(segmenter_config["upstream"]) == {"affinity"}

    assert stage_outputs(sec, "segmenter")["class_path"] == "SECSegmenter"

    summary = run_pipeline(shrunk("pipeline_selftrain", tiny_synthetic, stages={"segmenter": {"model": {"init_args": {
        "rounds": 1, "round_epochs": 1}}}}), tmp_path, log=quiet)
    selftrain = summary["supervision"]["image_selftrain"]
    assert {"selftrain_round_0", "selftrain_round_1"} <= set(selftrain["pseudo_miou"])
    # round 0 is the random walk's labels, scored the same way
    assert selftrain["pseudo_miou"]["selftrain_round_0"] == pytest.approx(base["pseudo_miou"]["random_walk"])

    # the demo report's galleries load every entry's segmenter as its class (SEC's crashed `wsss demo --methods`)
    from lightning_wsss.pipeline.galleries import demo_galleries

    galleries = demo_galleries(summary, tiny_synthetic, num_images=2)
    assert set(summary["supervision"]) >= {"image", "image_sec", "image_selftrain"} and len(galleries) == 2


def test_segmenter_seed_reruns_only_the_segmenter(tiny_synthetic, tmp_path, monkeypatch):  # noqa: F811
    import lightning as L

    seeds = []
    real = L.seed_everything
    monkeypatch.setattr(L, "seed_everything", lambda seed, **kw: seeds.append(seed) or real(seed, **kw))
    run_pipeline(shrunk("pipeline_image", tiny_synthetic), tmp_path, log=quiet)
    seeds.clear()
    entry = run_pipeline(shrunk("pipeline_image", tiny_synthetic, summary_key="image_seed7",
                                stages={"segmenter": {"seed": 7}}), tmp_path, log=quiet)["supervision"]["image_seed7"]
    assert all(entry["stages"][n]["reused"] for n in ("classifier", "cams", "affinity", "random_walk"))
    assert not entry["stages"]["segmenter"]["reused"] and seeds[0] == 7  # then per-epoch seeds from 7


def test_base_config_chain_and_its_errors(tmp_path):
    from lightning_wsss.errors import DataError

    (tmp_path / "a.yaml").write_text("supervision: image\ndataset: {root: data}\nstages: {classifier: {trainer: {max_epochs: 3}}}\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nstages: {classifier: {trainer: {max_epochs: 5}}}\nname: b\n")
    config = load_config(tmp_path / "b.yaml")
    assert config["stages"]["classifier"]["trainer"]["max_epochs"] == 5 and config["dataset"]["root"] == "data"
    (tmp_path / "c.yaml").write_text("base: c.yaml\n")
    with pytest.raises(DataError, match="loops"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(DataError, match="missing"):
        load_config(tmp_path / "d.yaml")


@pytest.mark.parametrize("method", ["image_erasing", "image_cda", "image_sec", "image_selftrain", "image_irn",
                                    "image_lpcam", "image_recam", "image_probecam", "image_cam_crf", "image_walk"])
def test_demo_methods_are_their_configs_on_the_demo(method, tmp_path):
    """``wsss demo --methods M``: the demo's image pipeline with the method config's own keys, under M's name."""
    from lightning_wsss.pipeline.demo import METHODS, demo_config, method_config, method_overrides

    assert method in METHODS
    config = method_config(tmp_path, method, quick=False, progress=False)
    assert config["summary_key"] == method and config["dataset"] == demo_config(tmp_path, "image", False, False)["dataset"]
    for stage, section in method_overrides(method).get("stages", {}).items():
        assert deep_merge(config["stages"][stage], section) == config["stages"][stage]
    if method in ("image_lpcam", "image_probecam"):  # the CAM stage only: the baseline's classifier
        assert config["stages"]["cams"]["class_path"] == {"image_lpcam": "LPCAMClassifier",
                                                          "image_probecam": "ProbeCAMClassifier"}[method]
        assert config["stages"]["affinity"] == demo_config(tmp_path, "image", False, False)["stages"]["affinity"]
        assert config["stages"].get("classifier") == demo_config(tmp_path, "image", False, False)["stages"].get("classifier")
    if "order" not in method_overrides(method):  # the walk's pipeline, not the demo's bounded CAM + CRF
        assert "order" not in config and stage_names(resolve(config))[-2:] == ["random_walk", "segmenter"]
    if method == "image_cam_crf":  # the baseline's classifier and CAMs, no affinity stage
        assert config["order"] == ["classifier", "cams", "cam_crf", "segmenter"]
        assert config["stages"].get("cams") == demo_config(tmp_path, "image", False, False)["stages"].get("cams")
    if method == "image_recam":  # the classifier of experiments/synthetic/study/demo_recam_background.yaml
        init_args = config["stages"]["classifier"]["model"]["init_args"]
        assert config["stages"]["classifier"]["model"]["class_path"] == "ReCAMClassifier"
        assert init_args["recam_background"] is True and init_args["recam_start_epoch"] == 8


def test_the_demos_image_refinement_is_the_bounded_cam_crf(tmp_path):
    """``wsss demo``'s image pipeline and hybrid curve refine the CAMs with the bounded CRF, no AffinityNet; the
    walk is ``--methods image_walk``, the same stages as experiments/synthetic/pipeline_cam_crf.yaml's settings."""
    from lightning_wsss.pipeline.demo import demo_config, method_config, method_overrides

    image = demo_config(tmp_path, "image", quick=False, progress=False)
    assert stage_names(resolve(image)) == ["classifier", "cams", "cam_crf", "segmenter"]
    assert image["stages"]["cam_crf"] == method_overrides("image_cam_crf")["stages"]["cam_crf"]
    hybrid = demo_config(tmp_path, "hybrid", quick=False, progress=False, box_fraction=0.1)
    assert "affinity" not in stage_names(resolve(hybrid)) and "cam_crf" in stage_names(resolve(hybrid))
    walk = method_config(tmp_path, "image_walk", quick=False, progress=False)
    assert stage_names(resolve(walk)) == ["classifier", "cams", "affinity", "random_walk", "segmenter"]
