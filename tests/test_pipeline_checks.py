"""Pipeline configs are checked when loaded: one line naming the file and the key path, before any stage runs;
and the stages are planned from their declarations (what each reads connects it to the stage that wrote it)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lightning_wsss.cli.main import main
from lightning_wsss.errors import DataError
from lightning_wsss.pipeline.checks import check_config, load_config
from lightning_wsss.pipeline.config import ConfigError
from lightning_wsss.pipeline.defaults import resolve
from lightning_wsss.pipeline.plan import build_stages, plan, presets
from lightning_wsss.pipeline.registry import STAGES, StageSpec, parse_read

BASE = {"supervision": "image", "dataset": {"root": "data"}}

ONE_LINE_ERRORS = {
    "misspelt stage": ({"stages": {"segmentr": {"trainer": {"max_epochs": 2}}}},
                       "stages.segmentr: unknown stage; did you mean segmenter?"),
    "misspelt top-level key": ({"trainr": {"max_epochs": 2}}, "trainr: unknown key; did you mean trainer?"),
    "misspelt trainer key": ({"stages": {"classifier": {"trainer": {"max_epoch": 2}}}},
                             "stages.classifier.trainer.max_epoch: unknown key; did you mean max_epochs?"),
    "wrong type": ({"stages": {"classifier": {"trainer": {"max_epochs": "two"}}}},
                   "stages.classifier.trainer.max_epochs: expected an integer or null, got 'two'"),
    "unknown class": ({"stages": {"classifier": {"model": {"class_path": "CAMClasifier"}}}},
                      "stages.classifier.model.class_path: unknown class 'CAMClasifier'; did you mean CAMClassifier?"),
    "class that does not import": ({"stages": {"segmenter": {"model": {"class_path": "mypkg.Segmenter"}}}},
                                   "stages.segmenter.model.class_path: cannot import 'mypkg.Segmenter'"),
    "model argument": ({"stages": {"segmenter": {"model": {"init_args": {"lrr": 0.1}}}}},
                       "stages.segmenter.model.init_args.lrr: unknown key; did you mean lr?"),
    "negative batch size": ({"data": {"batch_size": -2}}, "data.batch_size: batch_size must be a positive integer, got -2"),
    "negative crop of a stage": ({"stages": {"affinity": {"data": {"crop_size": -5}}}},
                                 "stages.affinity.data.crop_size: crop_size must be a positive integer, got -5"),
    "negative grid shuffle of a stage": ({"stages": {"classifier": {"data": {"grid_shuffle": -1}}}},
                                         "stages.classifier.data.grid_shuffle: grid_shuffle must be an integer >= 0, "
                                         "got -1"),
    "DataModule argument": ({"stages": {"classifier": {"data": {"past_prob": 0.5}}}},
                            "stages.classifier.data.past_prob: unknown key"),
    "stage option": ({"stages": {"random_walk": {"walk": {"mod": "irn"}}}},
                     "stages.random_walk.walk.mod: unknown key; did you mean mode?"),
    "walk CRF setting": ({"stages": {"random_walk": {"walk": {"crf": {"scale_params": True, "bilateral_srgbb": 5}}}}},
                         "stages.random_walk.walk.crf.bilateral_srgbb: unknown key; did you mean bilateral_srgb?"),
    "walk flip": ({"stages": {"random_walk": {"walk": {"walk_flip": "both"}}}},
                  "stages.random_walk.walk.walk_flip: 'both' is not one of false, true, affinity, embedding"),
    "affinity-label setting": ({"stages": {"affinity": {"labels": {"mode": "irn", "fg_threshhold": 0.3}}}},
                               "stages.affinity.labels.fg_threshhold: unknown key; did you mean fg_threshold?"),
    "affinity-label CRF": ({"stages": {"affinity": {"labels": {"crf_params": {"scale_params": True, "sxy": 5}}}}},
                           "stages.affinity.labels.crf_params.sxy: unknown key"),
    "CAM setting": ({"stages": {"cams": {"cam": {"cam_scale": [1.0]}}}},
                    "stages.cams.cam.cam_scale: unknown key; did you mean cam_scales?"),
    "CAM + CRF background": ({"order": ["classifier", "cams", "cam_crf", "segmenter"],
                              "stages": {"cam_crf": {"bg_mode": "linear", "crf": {"sxy": 3}}}},
                             "stages.cam_crf.bg_mode: 'linear' is not one of constant, power"),
    "unknown stage in order": ({"order": ["classifier", "cams", "affinty", "random_walk", "segmenter"]},
                               "order[2]: unknown stage 'affinty'; did you mean affinity?"),
    "read nobody writes": ({"order": ["classifier", "affinity", "random_walk", "segmenter"]},
                           "order: affinity reads cams, which no stage before it writes"),
    "supervision": ({"supervision": "imag"}, "supervision: 'imag' is not one of image, box, full, hybrid; did you mean image?"),
    "missing root": ({"dataset": {"name": "x"}}, "dataset.root: is required"),
    "trainer set by the pipeline": ({"trainer": {"logger": False}}, "trainer.logger: set by the pipeline stage"),
    "hybrid box source": ({"supervision": "hybrid", "hybrid": {"box_source": "crf"}, "stages": {"box_init": {"initializers": ["filled"]}}},
                          "hybrid.box_source: 'crf' must be one of stages.box_init.initializers (filled)"),
}


@pytest.mark.parametrize("case", ONE_LINE_ERRORS, ids=list(ONE_LINE_ERRORS))
def test_a_config_mistake_is_one_line_naming_file_and_key_before_any_stage(case, tmp_path, capsys):
    overrides, expected = ONE_LINE_ERRORS[case]
    config = {**BASE, **overrides}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert str(raised.value).startswith(f"{path}: {expected}")
    assert main(["pipeline", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{path}: {expected}" in err[0]
    assert not (tmp_path / "out").exists()  # nothing ran


def test_affinity_labels_of_another_mode_merged_from_the_defaults_pass(tmp_path):
    """labels: {mode: irn} over the defaults' psa labels (alpha_low / alpha_high merged in) loads: they are the
    other mode's parameters, ignored at run time too."""
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({**BASE, "stages": {"affinity": {"labels": {"mode": "irn", "fg_threshold": 0.4}}}}))
    labels = load_config(path)["stages"]["affinity"]["labels"]
    assert labels["mode"] == "irn" and labels["fg_threshold"] == 0.4


def test_run_pipeline_checks_a_config_given_as_a_dict(tmp_path):
    from lightning_wsss.pipeline import run_pipeline

    with pytest.raises(DataError, match=r"^stages.segmenter.trainer.max_epoch: unknown key"):
        run_pipeline({**BASE, "stages": {"segmenter": {"trainer": {"max_epoch": 1}}}}, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_every_preset_plans_with_the_inputs_of_its_stages():
    """Each read comes from the latest earlier stage writing it: the upstream stages (and hashes) of old."""
    inputs = {s.name: dict(s.inputs) for s in plan(resolve({**BASE, "supervision": "hybrid"}))}
    assert inputs == {"classifier": {}, "cams": {"classifier": "classifier"}, "affinity": {"cams": "cams", "classifier": "classifier"},
                      "random_walk": {"cams": "cams", "refiner": "affinity"}, "box_init": {},
                      "hybrid_labels": {"labels": "random_walk", "box_masks": "box_init"},
                      "segmenter": {"labels": "hybrid_labels", "label_parts": "hybrid_labels"}}
    box = {s.name: dict(s.inputs) for s in plan(resolve({**BASE, "supervision": "box"}))}
    assert box == {"box_init": {}, "boxsup": {"box_masks": "box_init"}, "segmenter": {"labels": "boxsup"}}
    assert [dict(s.inputs) for s in plan(resolve({**BASE, "supervision": "full"}))] == [{}]
    for supervision, preset in presets().items():
        assert [s.name for s in plan(resolve({**BASE, "supervision": supervision}))] == preset["order"]


def test_cda_order_reads_the_seed_labels_and_labels_from_pins_a_stage():
    cda = resolve({**BASE, "order": ["seed_classifier", "seed_cams", "classifier", "cams", "affinity", "random_walk", "segmenter"],
                   "stages": {"classifier": {"datamodule": "CDADataModule"}}})
    steps = {s.name: s for s in plan(cda)}
    assert dict(steps["seed_cams"].inputs) == {"classifier": "seed_classifier"}
    assert dict(steps["classifier"].inputs) == {"labels": "seed_cams"} and steps["seed_classifier"].spec.folder == "classifier"
    assert dict(steps["cams"].inputs) == {"classifier": "classifier"}
    sec = resolve({**BASE, "stages": {"segmenter": {"labels_from": "affinity"}}})
    assert dict(plan(sec)[-1].inputs) == {"affinity_labels": "affinity"}
    with pytest.raises(ConfigError, match="stages.segmenter: reads labels of 'cmas', which is not a stage before"):
        check_config({**BASE, "stages": {"segmenter": {"labels_from": "cmas"}}})


def test_cda_seed_classifier_keeps_the_plain_data_settings():
    """CDA's seed classifier is the image pipeline's classifier: its crop and scale settings stay, the pasting goes."""
    crop = {"crop_size": 208, "scale_range": [0.9, 1.1]}
    image = resolve({**BASE, "stages": {"classifier": {"data": crop}}})
    order = ["seed_classifier", "seed_cams", "classifier", "cams", "affinity", "random_walk", "segmenter"]
    cda = resolve({**BASE, "order": order,
                   "stages": {"classifier": {"datamodule": "CDADataModule", "data": {**crop, "paste_prob": 0.5}}}})
    seed = {s.name: s for s in build_stages(cda)}["seed_classifier"].config
    plain = {s.name: s for s in build_stages(image)}["classifier"].config
    assert seed["stage"]["data"] == crop
    assert seed == plain


def test_cda_with_its_own_object_masks_needs_no_seed_stages():
    """``data.object_mask_dir`` names the masks to cut objects from (another run, or the ground truth for an oracle
    bound): the classifier then reads no labels, and the plain order plans."""
    cda = resolve({**BASE, "stages": {"classifier": {"datamodule": "CDADataModule",
                                                     "data": {"object_mask_dir": "data/SegmentationClass"}}}})
    steps = {s.name: s for s in plan(cda)}
    assert dict(steps["classifier"].inputs) == {} and "seed_cams" not in steps
    with pytest.raises(ConfigError, match="labels"):
        check_config({**BASE, "stages": {"classifier": {"datamodule": "CDADataModule"}}})


def test_a_stage_replaced_by_a_declaration_of_its_own(monkeypatch):
    """``stages.<name>.declaration`` swaps the function of a stage, keeping its name and place."""
    import types
    import sys

    def walk(ctx, stage_dir, upstream, cfg):
        return {"outputs": {"labels_dir": str(stage_dir)}}

    module = types.ModuleType("my_walks")
    module.plain = StageSpec("plain_walk", walk, reads=("cams",), writes=("labels",), options={"steps": int})
    module.not_a_stage = walk
    monkeypatch.setitem(sys.modules, "my_walks", module)
    config = {**BASE, "stages": {"random_walk": {"declaration": "my_walks.plain", "steps": 3}}}
    steps = check_config(config)
    assert steps[3].name == "random_walk" and steps[3].spec is module.plain and dict(steps[3].inputs) == {"cams": "cams"}
    assert dict(steps[4].inputs) == {"labels": "random_walk"}
    with pytest.raises(ConfigError, match="stages.random_walk.walk: unknown key; known keys: declaration, steps"):
        check_config({**BASE, "stages": {"random_walk": {"declaration": "my_walks.plain", "walk": {}}}})
    with pytest.raises(ConfigError, match="stages.random_walk.declaration: .* is a function, not a StageSpec"):
        check_config({**BASE, "stages": {"random_walk": {"declaration": "my_walks.not_a_stage"}}})


def test_declarations_name_their_summary_keys_and_reads():
    assert STAGES["cams"].summary_entries({"pseudo_miou": 0.5}) == {"cam": 0.5}
    assert STAGES["box_init"].summary_entries({"filled": 0.1, "grabcut": 0.2}, "box_") == {"box_filled": 0.1, "box_grabcut": 0.2}
    assert STAGES["segmenter"].summary_entries({"val_miou": 0.3, "selftrain_round_0": 0.2}) == {"selftrain_round_0": 0.2}
    assert parse_read("labels@cams?") == ("labels", "cams", True) and parse_read("cams") == ("cams", None, False)


def test_every_built_in_stage_reads_and_writes_registered_artifacts():
    from lightning_wsss.pipeline.artifacts import ARTIFACTS

    for spec in STAGES.values():
        assert set(spec.writes) <= set(ARTIFACTS), spec.name
        if not callable(spec.reads):
            assert {parse_read(r)[0] for r in spec.reads} <= set(ARTIFACTS), spec.name
    assert ARTIFACTS["labels"].per_image and not ARTIFACTS["classifier"].per_image


def test_experiment_configs_load(tmp_path):
    """Loading a real config (and its base chain) passes the checks; a repeated stage in order does not."""
    path = Path(__file__).resolve().parents[1] / "experiments" / "synthetic" / "pipeline_sec.yaml"
    assert load_config(path)["stages"]["segmenter"]["labels_from"] == "affinity"
    bad = tmp_path / "twice.yaml"
    bad.write_text(yaml.safe_dump({**BASE, "order": ["classifier", "cams", "cams"]}))
    with pytest.raises(ConfigError, match=r"order\[2\]: cams appears twice"):
        load_config(bad)
