"""``wsss compare`` and ``merge_summaries``: merging per-supervision run summaries into one comparison."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

import pytest

from lightning_wsss.cli.main import main
from lightning_wsss.errors import DataError
from lightning_wsss.pipeline.compare import merge_summaries, pseudo_miou_plot, write_comparison
from lightning_wsss.pipeline.report import format_table

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

IMAGE = {"pseudo_miou": {"cam": 0.40, "random_walk": 0.55}, "val_miou": 0.50, "annotation_hours": 0.5,
         "wall_s": 12.0, "stages": {"classifier": {"hash": "aa", "dir": "run_a/image/classifier/aa", "reused": False,
                                                   "wall_s": 5.0}}}
BOX = {"pseudo_miou": {"filled": 0.30, "grabcut": None, "boxsup_round_1": 0.45}, "val_miou": 0.60,
       "annotation_hours": 2.0, "wall_s": 20.0, "stages": {}}
FULL = {"pseudo_miou": {}, "val_miou": 0.80, "annotation_hours": 40.0, "wall_s": 8.0, "stages": {}}


def write_run(folder: Path, entries: Dict[str, Any], dataset: str = "synthetic", num_train: int = 12,
              num_val: int = 6) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    summary = {"dataset": dataset, "num_train": num_train, "num_val": num_val, "supervision": entries}
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def test_merge_joins_entries_in_supervision_order(tmp_path):
    a = write_run(tmp_path / "a", {"full": FULL})
    b = write_run(tmp_path / "b", {"box": BOX, "image": IMAGE})
    merged = merge_summaries([a, b / "summary.json"])  # a folder or the file itself
    assert (merged["dataset"], merged["num_train"], merged["num_val"]) == ("synthetic", 12, 6)
    assert list(merged["supervision"]) == ["image", "box", "full"]
    assert merged["supervision"]["image"] == IMAGE and merged["supervision"]["box"] == BOX
    assert merged["supervision"]["full"] == FULL
    assert merged["sources"] == {"image": str(b / "summary.json"), "box": str(b / "summary.json"),
                                 "full": str(a / "summary.json")}
    table = format_table(merged)
    # relative to full comes from the other run's entry: 0.50 / 0.80 = 62.5 %, 0.60 / 0.80 = 75.0 %
    assert "62.5%" in table and "75.0%" in table
    image_row = next(line for line in table.splitlines() if line.startswith("image "))
    assert "55.00" in image_row and "50.00" in image_row  # final pseudo labels = random walk; val mIoU


def test_same_supervision_with_same_numbers_is_merged_once(tmp_path):
    rerun = dict(IMAGE, wall_s=99.0, stages={})  # timings and stage folders may differ between copies
    a = write_run(tmp_path / "a", {"image": IMAGE})
    b = write_run(tmp_path / "b", {"image": rerun, "full": FULL})
    merged = merge_summaries([a, b])
    assert merged["supervision"]["image"]["wall_s"] == 12.0  # the first file's entry is kept
    assert merged["sources"]["image"] == str(a / "summary.json")
    assert list(merged["supervision"]) == ["image", "full"]


@pytest.mark.parametrize("change", [
    {"val_miou": 0.51},
    {"annotation_hours": 0.6},
    {"pseudo_miou": {"cam": 0.40, "random_walk": 0.56}},
    {"pseudo_miou": {"cam": 0.40}},
])
def test_conflicting_supervision_names_both_files(tmp_path, change):
    a = write_run(tmp_path / "a", {"image": IMAGE})
    b = write_run(tmp_path / "b", {"image": dict(IMAGE, **change)})
    with pytest.raises(DataError) as info:
        merge_summaries([a, b])
    assert info.value.path == str(b / "summary.json")
    assert str(a / "summary.json") in str(info.value) and "'image'" in str(info.value)


@pytest.mark.parametrize("other", [{"dataset": "voc"}, {"num_train": 13}, {"num_val": 7}])
def test_other_data_set_is_refused(tmp_path, other):
    a = write_run(tmp_path / "a", {"image": IMAGE})
    b = write_run(tmp_path / "b", {"full": FULL}, **other)
    with pytest.raises(DataError, match="another data set") as info:
        merge_summaries([a, b])
    assert info.value.path == str(b / "summary.json")


@pytest.mark.parametrize("content, problem", [
    (None, "no summary.json"),
    ("{not json", "JSON"),
    ("[1, 2]", "JSON object"),
    (json.dumps({"dataset": "x"}), "supervision"),
    (json.dumps({"dataset": "x", "supervision": {}}), "supervision"),
    (json.dumps({"dataset": "x", "supervision": {"image": dict(IMAGE, val_miou="high")}}), "val_miou"),
    (json.dumps({"dataset": "x", "supervision": {"image": dict(IMAGE, annotation_hours=None)}}), "annotation_hours"),
    (json.dumps({"dataset": "x", "supervision": {"image": dict(IMAGE, pseudo_miou={"cam": "a"})}}), "pseudo_miou"),
    (json.dumps({"dataset": "x", "supervision": {"image": [1]}}), "not an object"),
])
def test_missing_or_invalid_summary_is_a_data_error(tmp_path, content, problem):
    good = write_run(tmp_path / "good", {"full": FULL})
    bad = tmp_path / "bad"
    bad.mkdir()
    if content is not None:
        (bad / "summary.json").write_text(content)
    with pytest.raises(DataError, match=problem) as info:
        merge_summaries([good, bad])
    assert info.value.path == str(bad / "summary.json")


def test_merge_needs_a_path():
    with pytest.raises(ValueError):
        merge_summaries([])


def test_pseudo_miou_plot_is_a_png():
    data = pseudo_miou_plot({"dataset": "synthetic", "supervision": {"image": IMAGE, "box": BOX, "full": FULL}})
    assert data.startswith(PNG_MAGIC) and len(data) > 1000


def test_cli_compare_prints_table_and_writes_report(tmp_path, capsys):
    a = write_run(tmp_path / "a", {"image": IMAGE})
    b = write_run(tmp_path / "b", {"box": BOX})
    c = write_run(tmp_path / "c", {"full": FULL})
    out = tmp_path / "cmp"
    out.mkdir()
    (out / "report.html").write_text("demo report")  # an unrelated report already there is kept
    assert main(["compare", str(a), str(b), str(c), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "62.5%" in printed and "75.0%" in printed and "comparison.html" in printed
    written = json.loads((out / "summary.json").read_text())
    assert set(written["supervision"]) == {"image", "box", "full"}
    assert written["supervision"]["box"]["pseudo_miou"] == BOX["pseudo_miou"]
    page = (out / "comparison.html").read_text()
    for name in ("image", "box", "full", "Pseudo-label mIoU per stage", "data:image/png;base64,"):
        assert name in page
    assert (out / "cost_vs_miou.png").read_bytes().startswith(PNG_MAGIC)
    assert (out / "report.html").read_text() == "demo report"
    assert sorted(p.name for p in out.iterdir()) == ["comparison.html", "cost_vs_miou.png", "report.html", "summary.json"]


def test_cli_compare_reports_data_errors(tmp_path, capsys):
    a = write_run(tmp_path / "a", {"image": IMAGE})
    assert main(["compare", str(a), str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "data error" in err and str(tmp_path / "missing" / "summary.json") in err
    assert not (tmp_path / "o").exists()
    # writing the merged summary over one of the inputs is refused
    assert main(["compare", str(a), "--out", str(a)]) == 2
    assert "choose another --out" in capsys.readouterr().err
    assert json.loads((a / "summary.json").read_text())["supervision"] == {"image": IMAGE}


def test_write_comparison_returns_its_paths(tmp_path):
    summary = {"dataset": "s", "num_train": 1, "num_val": 1, "supervision": {"full": FULL}}
    paths = write_comparison(tmp_path / "x", summary)
    assert paths == {"summary": tmp_path / "x" / "summary.json", "html": tmp_path / "x" / "comparison.html",
                     "plot": tmp_path / "x" / "cost_vs_miou.png"}
    assert all(p.is_file() for p in paths.values())
    assert "Pseudo-label mIoU per stage" not in paths["html"].read_text()  # no pseudo labels, no chart


def test_table_columns_stay_aligned_with_long_supervision_keys():
    summary = {"dataset": "synthetic", "num_train": 12, "num_val": 6,
               "supervision": {"image": IMAGE, "hybrid_0.1_restrict_cams": dict(IMAGE), "full": FULL}}
    lines = format_table(summary).splitlines()
    header, rows = lines[1], lines[3:6]
    assert len(lines[2]) == len(header) and set(lines[2]) == {"-"}
    assert [row.split()[0] for row in rows] == ["image", "hybrid_0.1_restrict_cams", "full"]
    assert all(len(row) == len(header) for row in rows)  # every column ends where its heading does
    assert all(row.index(" 0.50 ") == rows[0].index(" 0.50 ") for row in rows[:2])


def test_table_gives_each_entry_its_recorded_thread_counts():
    stage = {"hash": "aa", "dir": "d", "reused": False, "wall_s": 1.0}
    image = dict(IMAGE, stages={"classifier": dict(stage, torch_threads=2), "cams": dict(stage, torch_threads=1),
                                "affinity": dict(stage, torch_threads=None)})  # reused from before the record
    full = dict(FULL, stages={"segmenter": dict(stage, torch_threads=1)})
    summary = {"dataset": "synthetic", "num_train": 12, "num_val": 6,
               "supervision": {"image": image, "box": BOX, "full": full}}
    assert format_table(summary).splitlines()[-1] == "  torch threads: image 1,2, full 1"  # box: none recorded
    summary["supervision"] = {"image": IMAGE, "full": FULL}  # summaries made before the record: no line
    assert "torch threads" not in format_table(summary)
