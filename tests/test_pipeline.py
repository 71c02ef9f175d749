"""`wsss pipeline`: summaries, skipping complete stages, rerunning changed ones, resuming after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from lightning_wsss.cli.main import main
from lightning_wsss.datasets.synthetic import make_synthetic
from lightning_wsss.pipeline import run_pipeline
from lightning_wsss.pipeline.costs import annotation_hours
from lightning_wsss.pipeline.demo import QUICK_OVERRIDES
from lightning_wsss.pipeline.config import deep_merge
from lightning_wsss.pipeline.summary import seed_spread
from lightning_wsss.pipeline.report import format_table, write_report

from conftest import lock_held_elsewhere


@pytest.fixture(scope="module")
def tiny_synthetic(tmp_path_factory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("syn") / "data", num_train=10, num_val=4, size=64, seed=3)


def tiny_config(root: Path, supervision: str, **overrides) -> dict:
    config = deep_merge(QUICK_OVERRIDES, {"name": f"t-{supervision}", "supervision": supervision, "progress_bar": False,
                                          "logger": "none", "dataset": {"root": str(root), "name": "synthetic"}})
    return deep_merge(config, overrides)


def quiet(_msg: str) -> None:
    pass


def test_full_pipeline_summary(tiny_synthetic, tmp_path):
    summary = run_pipeline(tiny_config(tiny_synthetic, "full"), tmp_path, log=quiet)
    assert summary["dataset"] == "synthetic" and summary["num_train"] == 10 and summary["num_val"] == 4
    entry = summary["supervision"]["full"]
    assert 0.0 <= entry["val_miou"] <= 1.0 and entry["pseudo_miou"] == {}
    assert entry["annotation_hours"] == pytest.approx(annotation_hours("full", 10), abs=1e-3)
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["supervision"]["full"]["val_miou"] == entry["val_miou"]
    assert isinstance(on_disk["supervision"]["full"]["stages"]["segmenter"]["torch_threads"], int)  # with its figure


def test_box_pipeline_skips_complete_and_reruns_changed_stages(tiny_synthetic, tmp_path):
    config = tiny_config(tiny_synthetic, "box", stages={"box_init": {"initializers": ["filled"]},
                                                        "boxsup": {"model": {"init_args": {"initializer": "filled"}}}})
    first = run_pipeline(config, tmp_path, log=quiet)["supervision"]["box"]
    assert set(first["pseudo_miou"]) == {"filled", "boxsup_round_0", "boxsup_round_1"}
    # round 0 is the initializer's masks, scored the same way
    assert first["pseudo_miou"]["boxsup_round_0"] == pytest.approx(first["pseudo_miou"]["filled"])
    again = run_pipeline(config, tmp_path, log=quiet)["supervision"]["box"]
    assert all(stage["reused"] for stage in again["stages"].values()) and again["val_miou"] == first["val_miou"]
    changed = deep_merge(config, {"stages": {"segmenter": {"model": {"init_args": {"lr": 0.02}}}}})
    third = run_pipeline(changed, tmp_path, log=quiet)["supervision"]["box"]
    reused = {name: stage["reused"] for name, stage in third["stages"].items()}
    assert reused == {"box_init": True, "boxsup": True, "segmenter": False}
    assert third["stages"]["segmenter"]["hash"] != first["stages"]["segmenter"]["hash"]


def test_segmenter_seeds_share_the_pseudo_labels_and_report_the_spread(tiny_synthetic, tmp_path):
    config = tiny_config(tiny_synthetic, "full", stages={"segmenter": {"trainer": {"max_epochs": 2}}})
    plain = run_pipeline(config, tmp_path, log=quiet)["supervision"]["full"]
    summary = run_pipeline(config, tmp_path, log=quiet, segmenter_seeds=[0, 1, 2])
    entry = summary["supervision"]["full"]
    assert entry["val_miou"] == plain["val_miou"] and entry["stages"]["segmenter"]["reused"]  # seed 0: the run itself
    spread = entry["segmenter_seeds"]
    scores = spread["val_miou"]
    assert list(scores) == ["0", "1", "2"] and scores["0"] == plain["val_miou"]
    assert spread["mean"] == pytest.approx(sum(scores.values()) / 3)
    assert spread["min"] == min(scores.values()) and spread["max"] == max(scores.values())
    stage_dirs = [p.parent for p in (tmp_path / "full" / "segmenter").glob("*/stage.json")]
    assert len(stage_dirs) == 3  # one stage folder per seed, all complete
    first_weights = [next(iter(torch.load(d / "checkpoints" / "final.ckpt", weights_only=False)["state_dict"].values()))
                     for d in stage_dirs]
    assert not torch.equal(first_weights[0], first_weights[1]) and not torch.equal(first_weights[1], first_weights[2])
    shown = f"{100 * spread['mean']:.1f} +- {100 * spread['std']:.1f} (3 seeds:"
    assert f"full val mIoU over segmenter seeds: {shown}" in format_table(summary)
    assert shown in write_report(tmp_path, summary, {}).read_text()
    config_path = tmp_path / "full.yaml"
    config_path.write_text(yaml.safe_dump(config))
    assert main(["pipeline", str(config_path), "--out", str(tmp_path), "--segmenter-seeds", "1", "2"]) == 0
    again = json.loads((tmp_path / "summary.json").read_text())["supervision"]["full"]  # all reused: same figures
    assert again["segmenter_seeds"] == spread and all(stage["reused"] for stage in again["stages"].values())


def test_seed_spread_statistics():
    spread = seed_spread({0: 0.3, 1: 0.2, 2: None})
    assert spread["val_miou"] == {"0": 0.3, "1": 0.2, "2": None}
    assert spread["mean"] == pytest.approx(0.25) and spread["std"] == pytest.approx(0.0707107, rel=1e-5)
    assert seed_spread({3: 0.4})["std"] == 0.0 and seed_spread({0: None})["mean"] is None


def _run_cli(config_path: Path, out: Path, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "lightning_wsss", "pipeline", str(config_path), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, **kwargs)


def test_image_pipeline_resumes_after_kill_with_same_numbers(tiny_synthetic, tmp_path):
    config = tiny_config(tiny_synthetic, "image", stages={"classifier": {"trainer": {"max_epochs": 6}}})
    path = tmp_path / "image.yaml"
    path.write_text(yaml.safe_dump(config))
    reference = _run_cli(path, tmp_path / "reference")
    output, _ = reference.communicate(timeout=600)
    assert reference.returncode == 0, output.decode()[-3000:]
    # kill the second run once the classifier has written its first epoch checkpoint
    proc = _run_cli(path, tmp_path / "interrupted")
    deadline = time.time() + 300
    pattern = "image/classifier/*/checkpoints/last.ckpt"
    while time.time() < deadline and not list((tmp_path / "interrupted").glob(pattern)):
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "interrupted" / "summary.json").exists()
    resumed = _run_cli(path, tmp_path / "interrupted")
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output.decode()[-3000:]
    assert "resuming from" in output.decode()
    ref = json.loads((tmp_path / "reference" / "summary.json").read_text())["supervision"]["image"]
    got = json.loads((tmp_path / "interrupted" / "summary.json").read_text())["supervision"]["image"]
    assert got["pseudo_miou"] == ref["pseudo_miou"] and got["val_miou"] == ref["val_miou"]


def test_bad_config_is_a_clear_error(tmp_path, capsys):
    from lightning_wsss.cli.main import main

    path = tmp_path / "bad.yaml"
    path.write_text("supervision: pixels\ndataset: {root: x}\n")
    assert main(["pipeline", str(path)]) == 2
    assert "bad.yaml: supervision: 'pixels' is not one of image, box, full, hybrid" in capsys.readouterr().err


def test_a_rerun_stage_removes_what_a_killed_atomic_write_left(tmp_path):
    """A process killed between an atomic write and its rename leaves ``.<name>.<random>.tmp``; the stage's next run
    removes it from its folder (and subfolders) before it writes, and keeps every other file."""
    from lightning_wsss.pipeline.config import stage_hash
    from lightning_wsss.pipeline.runner import PipelineContext, Stage, run_stages

    stage_dir = tmp_path / "s" / stage_hash({"a": 1}, {})
    stale = [stage_dir / ".stage.json.k1ll3d.tmp", stage_dir / "labels" / ".img_0.png.x9.tmp"]
    kept = [stage_dir / "labels" / "img_1.png", stage_dir / "notes.tmp"]
    for path in stale + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    seen = []

    def work(ctx, folder, upstream, config):
        seen.append(sorted(p.name for p in folder.rglob("*.tmp")))
        return {"metrics": {}}

    run_stages(PipelineContext(tmp_path, {}), [Stage("s", {"a": 1}, work)])
    assert seen == [["notes.tmp"]]
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)
    assert (stage_dir / "stage.json").is_file()


def test_stage_json_records_what_the_stage_ran_on_and_an_older_marker_still_reads(tmp_path):
    """``stage.json`` holds the torch threads, device and versions the stage ran with (not hashed: a marker
    without them, written before the record existed, is reused as it is)."""
    from lightning_wsss.pipeline.runner import PipelineContext, Stage, run_stages

    def work(ctx, folder, upstream, config):
        torch.set_num_threads(1)  # what a training stage's thread policy does: the record is taken after the run
        return {"metrics": {"m": 0.5}}

    result = run_stages(PipelineContext(tmp_path, {}), [Stage("s", {"a": 1}, work)])["s"]
    marker_path = Path(result.dir) / "stage.json"
    record = json.loads(marker_path.read_text())["environment"]
    assert record["torch_threads"] == 1 and record["processes"] == 1
    assert record["device"] == ("cpu" if not torch.cuda.is_available() else torch.cuda.get_device_name(0))
    assert record["packages"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert set(record["packages"]) >= {"lightning", "timm", "segmentation-models-pytorch", "numpy"}
    assert record["python"] == ".".join(map(str, sys.version_info[:3]))

    older = json.loads(marker_path.read_text())
    del older["environment"]
    marker_path.write_text(json.dumps(older))
    again = run_stages(PipelineContext(tmp_path, {}), [Stage("s", {"a": 1}, work)])["s"]
    assert again.reused and again.environment == {} and again.metrics == {"m": 0.5}


def test_a_stage_run_by_another_process_is_refused(tmp_path):
    """Two pipelines on one output folder must not run the same stage at once (they would share its files)."""
    from lightning_wsss.pipeline.config import stage_hash
    from lightning_wsss.pipeline.runner import PipelineContext, Stage, StageBusyError, run_stages, stage_lock

    ran = []

    def work(ctx, stage_dir, upstream, config):
        ran.append(stage_dir)
        return {"metrics": {"x": 1.0}}

    stage = Stage("s", {"a": 1}, work)
    stage_dir = tmp_path / "s" / stage_hash({"a": 1}, {})
    with lock_held_elsewhere(stage_dir, seconds=60):
        with pytest.raises(StageBusyError, match="another process"):
            run_stages(PipelineContext(tmp_path, {}), [stage])
        assert ran == [] and not (stage_dir / "stage.json").exists()
    # once the other process is gone the stage runs, and releases its lock when done
    assert run_stages(PipelineContext(tmp_path, {}), [stage])["s"].metrics == {"x": 1.0} and len(ran) == 1
    with stage_lock(stage_dir):
        pass


def test_cli_until_and_seed(tiny_synthetic, tmp_path, capsys):
    """`wsss pipeline --until cams --seed N`: the classifier and CAM stages only, under seed N, no summary; the
    LPCAM CAM stage reuses the plain run's classifier (same hash)."""
    config = tiny_config(tiny_synthetic, "image")
    path = tmp_path / "image.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    assert main(["pipeline", str(path), "--out", str(out), "--until", "cams", "--seed", "3"]) == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if not line.startswith(("[", "epoch "))]
    assert printed[0].startswith("classifier") and printed[1].startswith("cams") and "pseudo_miou" in printed[1]
    assert not (out / "summary.json").exists() and not (out / "image" / "affinity").exists()
    hashes = {p.name for p in (out / "image" / "classifier").iterdir()}
    assert len(hashes) == 1
    assert json.loads(next((out / "image" / "classifier").glob("*/config.json")).read_text())["config"]["shared"]["seed"] == 3
    lpcam = deep_merge(config, {"stages": {"cams": {"class_path": "LPCAMClassifier", "cam": {"num_clusters": 2}}}})
    path.write_text(yaml.safe_dump(lpcam))
    assert main(["pipeline", str(path), "--out", str(out), "--until", "cams", "--seed", "3"]) == 0
    assert {p.name for p in (out / "image" / "classifier").iterdir()} == hashes  # the same classifier
    assert len(list((out / "image" / "cams").iterdir())) == 2
    assert main(["pipeline", str(path), "--out", str(out), "--until", "segmentr"]) == 2
    assert "--until 'segmentr' is not a stage" in capsys.readouterr().err


def test_pipeline_log_in_a_file_has_no_redraws(tiny_synthetic, tmp_path):
    """`wsss pipeline CONFIG > file` (SLURM logs, nohup, CI): no progress-bar redraws, one line per epoch and one per
    stage with its wall time and folder, although the config asks for progress bars."""
    config = tiny_config(tiny_synthetic, "box", progress_bar=True)
    path = tmp_path / "box.yaml"
    path.write_text(yaml.safe_dump(config))
    log = tmp_path / "pipeline.log"
    with open(log, "w") as handle:
        subprocess.run([sys.executable, "-m", "lightning_wsss", "pipeline", str(path), "--out", str(tmp_path / "out")],
                       stdout=handle, stderr=subprocess.STDOUT, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    text = log.read_text()
    assert "\r" not in text
    assert any(line.startswith("epoch 1/") for line in text.splitlines())
    assert any(line.startswith("[boxsup] done in") and "out/box/boxsup/" in line for line in text.splitlines())


def _boxsup_init_args(config: dict) -> dict:
    from lightning_wsss.pipeline.defaults import resolve
    from lightning_wsss.pipeline.plan import build_stages

    stage = next(s for s in build_stages(resolve(config)) if s.name == "boxsup")
    return stage.config["stage"]["model"]["init_args"]


def test_boxsup_makes_its_masks_with_the_box_init_settings():
    """An initializer's settings are declared once, under stages.box_init.kwargs: BoxSup's round-0 initializer and
    its proposals take them; a name BoxSup sets itself keeps BoxSup's whole mapping."""
    crf = {"scale_params": True, "edge_confidence": 0.4}
    grabcut = {"context": 0.5}
    config = {"supervision": "box", "dataset": {"root": "data", "name": "d"}, "seed": 3,
              "stages": {"box_init": {"initializers": ["filled", "grabcut", "crf"],
                                      "kwargs": {"crf": crf, "grabcut": grabcut}}}}
    args = _boxsup_init_args(config)
    assert args["initializer"] == "grabcut" and args["initializer_kwargs"] == grabcut
    assert "crf" in args["proposals"] and args["proposal_kwargs"] == {"crf": crf}
    assert args["seed"] == 3

    own = {"scale_params": True}
    config["stages"]["boxsup"] = {"model": {"init_args": {"initializer_kwargs": {"context": 0.2},
                                                          "proposal_kwargs": {"crf": own}}}}
    args = _boxsup_init_args(config)
    assert args["initializer_kwargs"] == {"context": 0.2} and args["proposal_kwargs"] == {"crf": own}

    del config["stages"]["box_init"]["kwargs"], config["stages"]["boxsup"]
    args = _boxsup_init_args(config)
    assert args.get("initializer_kwargs") is None and not args.get("proposal_kwargs")


def test_boxsup_takes_the_box_init_masks_it_would_make_the_same_way(tiny_synthetic, tmp_path):
    """BoxSup's round 0 (GrabCut) and proposals (CRF, filled) are the box_init stage's masks, copied, not made
    again: the same bytes and the same rounds as a BoxSup that makes them itself (box_init without those folders)."""
    lines = []
    stages = {"box_init": {"initializers": ["filled", "grabcut", "crf"]}, "boxsup": {"trainer": {"max_epochs": 2},
                                                                               "model": {"init_args": {"round_epochs": 1}}}}
    copied = run_pipeline(tiny_config(tiny_synthetic, "box", stages=stages), tmp_path / "a", log=lines.append)
    assert "[boxsup] 30 round-0 / proposal masks taken from box_init (the same settings)" in lines
    stages["box_init"]["initializers"] = ["filled"]  # the proposal "filled" copied, GrabCut and the CRF made
    made = run_pipeline(tiny_config(tiny_synthetic, "box", stages=stages), tmp_path / "b", log=quiet)
    dirs = [Path(run["supervision"]["box"]["stages"]["boxsup"]["dir"]) / "rounds" for run in (copied, made)]
    for folder in ("round_0", "round_1", "proposals/crf", "proposals/filled"):
        files = sorted((dirs[0] / folder).glob("*.png"))
        assert len(files) == 10
        assert all(f.read_bytes() == (dirs[1] / folder / f.name).read_bytes() for f in files), folder
    rounds = [{k: v for k, v in run["supervision"]["box"]["pseudo_miou"].items() if "round" in k} for run in (copied, made)]
    assert rounds[0] == rounds[1] and len(rounds[0]) == 2


def test_box_init_masks_are_reused_only_when_made_the_same_way(tmp_path):
    from lightning_wsss.pipeline.stages import reusable_box_masks
    from lightning_wsss.tasks import BoxSupSegmenter

    outputs = {"grabcut_dir": "g", "crf_dir": "c", "filled_dir": "f",
               "kwargs": {"grabcut": {}, "crf": {"scale_params": True}, "filled": {}}}
    args = {"initializer": "grabcut", "proposals": ["crf", "filled", "grabcut"],
            "proposal_kwargs": {"crf": {"scale_params": True}}}
    out = tmp_path / "rounds"
    assert reusable_box_masks(BoxSupSegmenter, args, out, outputs) == {
        out / "round_0": Path("g"), out / "proposals" / "crf": Path("c"), out / "proposals" / "filled": Path("f")}
    other = {**args, "initializer_kwargs": {"context": 0.5}, "proposal_kwargs": {"crf": {"scale_params": False}}}
    assert reusable_box_masks(BoxSupSegmenter, other, out, outputs) == {out / "proposals" / "filled": Path("f")}
    assert reusable_box_masks(BoxSupSegmenter, args, out, {k: v for k, v in outputs.items() if k != "kwargs"}) == {}

    class OwnRoundZero(BoxSupSegmenter):
        def initial_mask(self, sample):
            return super().initial_mask(sample)

    assert reusable_box_masks(OwnRoundZero, args, out, outputs) == {}


def test_worker_counts_stay_out_of_the_stage_hash():
    from lightning_wsss.pipeline.checks import load_config
    from lightning_wsss.pipeline.config import stage_hash
    from lightning_wsss.pipeline.plan import build_stages

    def box_init(processes):
        config = load_config(Path(__file__).parents[1] / "experiments" / "synthetic" / "pipeline_box.yaml")
        if processes is not None:
            config["stages"]["box_init"]["processes"] = processes
        return next(stage for stage in build_stages(config) if stage.name == "box_init")

    plain, four = box_init(None), box_init(4)
    assert four.config["stage"]["processes"] == 4  # the stage still gets it
    assert stage_hash(four.hashed_config(), {}) == stage_hash(plain.hashed_config(), {}) == stage_hash(plain.config, {})
    changed = box_init(None)
    changed.config["stage"]["ids"] = ["a"]
    assert stage_hash(changed.hashed_config(), {}) != stage_hash(plain.hashed_config(), {})
