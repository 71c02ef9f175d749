"""Proof that the pipeline is open: a method from outside the package (examples/majority_filter: a CAMClassifier
subclass overriding one hook, and a post-processing stage between the random walk and the segmenter), configured
by a pipeline YAML only, runs through ``wsss pipeline`` and reports its summary keys."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from lightning_wsss.cli.main import main
from lightning_wsss.pipeline.config import deep_merge
from lightning_wsss.pipeline.demo import QUICK_OVERRIDES
from test_pipeline import tiny_synthetic  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "majority_filter"


def test_the_example_is_not_part_of_the_package():
    sources = "\n".join(p.read_text() for p in (REPO / "lightning_wsss").rglob("*.py"))
    assert "wsss_majority" not in sources and "examples" not in sources


def test_majority_filter_by_hand(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    from wsss_majority.stages import majority

    labels = np.zeros((5, 5), np.uint8)
    labels[2, 2] = 1  # a lone pixel is outvoted
    labels[0, 0] = 255  # ignored pixels stay ignored and do not vote
    out = majority(labels, 3, 2)
    assert out[2, 2] == 0 and out[0, 0] == 255 and (out[1:, 1:] == 0).all()


def test_a_method_from_outside_runs_from_its_yaml(tiny_synthetic, tmp_path, monkeypatch, capsys):  # noqa: F811
    monkeypatch.syspath_prepend(str(EXAMPLE))  # as PYTHONPATH=examples/majority_filter does
    config = deep_merge(QUICK_OVERRIDES, {"base": str(EXAMPLE / "pipeline_majority.yaml"), "progress_bar": False,
                                          "logger": "none", "dataset": {"root": str(tiny_synthetic)}})
    path = tmp_path / "majority.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    assert main(["pipeline", str(path), "--out", str(out)]) == 0, capsys.readouterr().err

    entry = json.loads((out / "summary.json").read_text())["supervision"]["image_majority"]
    assert list(entry["stages"]) == ["classifier", "cams", "affinity", "random_walk", "majority_filter", "segmenter"]
    assert list(entry["pseudo_miou"]) == ["cam", "random_walk", "majority_filter"]
    assert 0.0 <= entry["pseudo_miou"]["majority_filter"] <= 1.0 and 0.0 <= entry["val_miou"] <= 1.0
    classifier = json.loads((Path(entry["stages"]["classifier"]["dir"]) / "stage.json").read_text())
    assert classifier["outputs"]["class_path"] == "wsss_majority.FocalCAMClassifier"
    segmenter = json.loads((Path(entry["stages"]["segmenter"]["dir"]) / "config.json").read_text())
    assert set(segmenter["upstream"]) == {"majority_filter"}  # it trained on the filtered labels
    filtered = Path(entry["stages"]["majority_filter"]["dir"]) / "labels"
    assert len(list(filtered.glob("*.png"))) == 10


def test_a_bad_option_of_the_outside_stage_is_one_line(tiny_synthetic, tmp_path, monkeypatch, capsys):  # noqa: F811
    monkeypatch.syspath_prepend(str(EXAMPLE))
    config = {"base": str(EXAMPLE / "pipeline_majority.yaml"), "dataset": {"root": str(tiny_synthetic)},
              "stages": {"majority_filter": {"sise": 3}}}
    path = tmp_path / "majority.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["pipeline", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith("stages.majority_filter.sise: unknown key; did you mean size?")
    assert not (tmp_path / "out").exists()
