"""The notebooks: committed without outputs, and executed end to end on tiny data (nbclient, CPU)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import List, Tuple

import pytest

nbformat = pytest.importorskip("nbformat")

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
NAMES = ("01_cam_explorer.ipynb", "02_compare_supervision.ipynb")
METHODS = ("cam", "gradcam", "gradcam++", "xgradcam", "layercam")


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_is_valid_and_has_no_outputs(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code
    for cell in code:
        assert cell.outputs == [], f"{name}: a cell still holds outputs (strip them before committing)"
        assert cell.execution_count is None, f"{name}: a cell still holds an execution count"
    tagged = [cell for cell in code if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1 and "os.environ" in tagged[0].source
    assert tagged[0] is code[0], "the parameters cell comes first"


def _execute(name: str, cwd: Path, monkeypatch) -> Tuple[str, int]:
    """Run a notebook in a fresh python3 kernel; returns (all stdout text, number of PNG outputs)."""
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    # The kernel inherits this environment: make the package importable without installation too.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    monkeypatch.delenv("MPLBACKEND", raising=False)
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(cwd)}})
    client.execute()  # raises CellExecutionError if a cell fails
    stdout: List[str] = []
    images = 0
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            assert output.output_type != "error", output
            if output.output_type == "stream" and output.name == "stdout":
                stdout.append(output.text)
            elif output.output_type in ("display_data", "execute_result") and "image/png" in output.data:
                images += 1
    return "".join(stdout), images


def test_cam_explorer_runs_on_tiny_data(tmp_path, monkeypatch):
    for key, value in {"WSSS_NB_NUM_TRAIN": "12", "WSSS_NB_IMAGE_SIZE": "64", "WSSS_NB_EPOCHS": "1",
                       "WSSS_NB_NUM_IMAGES": "3"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("WSSS_NB_CHECKPOINT", raising=False)
    monkeypatch.setenv("WSSS_NOTEBOOK_DATA", str(tmp_path / "data"))
    stdout, images = _execute("01_cam_explorer.ipynb", tmp_path, monkeypatch)
    assert (tmp_path / "data" / "synthetic.json").is_file()  # the synthetic set went where it was told
    assert "trained 1 epoch(s) on 12 images" in stdout
    assert "on 3 training images" in stdout
    found = dict(re.findall(r"^\s*(\S+) pseudo-label mIoU:\s+([\d.]+) %$", stdout, flags=re.M))
    assert set(found) == set(METHODS), stdout
    miou = {method: float(value) for method, value in found.items()}
    assert all(0.0 <= v <= 100.0 for v in miou.values())
    # With a global-average-pooled linear head, Grad-CAM and XGrad-CAM weights are the classifier weights up to a
    # positive constant, so after normalisation their maps (and pseudo labels) are CAM's.
    assert abs(miou["gradcam"] - miou["cam"]) <= 1.0 and abs(miou["xgradcam"] - miou["cam"]) <= 1.0
    assert images == 2  # the CAM grid and the pseudo-label grid


def _summary(entries, num_train=12):
    return {"dataset": "synthetic", "num_train": num_train, "num_val": 6, "supervision": entries}


def test_compare_notebook_merges_the_given_summaries(tmp_path, monkeypatch):
    image = {"pseudo_miou": {"cam": 0.40, "random_walk": 0.55}, "val_miou": 0.50, "annotation_hours": 0.5,
             "wall_s": 10.0, "stages": {}}
    box = {"pseudo_miou": {"filled": 0.30, "boxsup_round_1": 0.45}, "val_miou": 0.60, "annotation_hours": 2.0,
           "wall_s": 20.0, "stages": {}}
    full = {"pseudo_miou": {}, "val_miou": 0.80, "annotation_hours": 40.0, "wall_s": 5.0, "stages": {}}
    (tmp_path / "run_image").mkdir()
    (tmp_path / "run_image" / "summary.json").write_text(json.dumps(_summary({"image": image})))
    (tmp_path / "other.json").write_text(json.dumps(_summary({"box": box, "full": full})))
    monkeypatch.setenv("WSSS_SUMMARIES", os.pathsep.join([str(tmp_path / "run_image"), str(tmp_path / "other.json")]))
    stdout, images = _execute("02_compare_supervision.ipynb", tmp_path, monkeypatch)
    assert "merged 2 summary file(s): image, box, full supervision" in stdout
    # the table's "vs full" column: 0.50 / 0.80 and 0.60 / 0.80
    assert "62.5%" in stdout and "75.0%" in stdout
    assert re.search(r"^\s*box:\s+2\.00 h -> val mIoU\s+60\.0 %$", stdout, flags=re.M), stdout
    assert images == 2  # cost vs mIoU, pseudo labels per stage


def test_compare_notebook_explains_a_missing_summary(tmp_path, monkeypatch):
    monkeypatch.setenv("WSSS_SUMMARIES", str(tmp_path / "nowhere" / "summary.json"))
    stdout, images = _execute("02_compare_supervision.ipynb", tmp_path, monkeypatch)
    assert "No pipeline summary found" in stdout and "wsss demo" in stdout
    assert images == 0
