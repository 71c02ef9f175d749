"""Atomic writes leave the earlier file intact when interrupted; label PNGs round-trip."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lightning_wsss.io import atomic_write, read_label_png, write_label_png


def test_interrupted_write_keeps_previous_file(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(target, "w") as handle:
            handle.write("half of the new")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temporary file left


def test_label_png_roundtrip_palette(tmp_path):
    label = np.arange(48 * 48).reshape(48, 48) % 7
    label[0] = 255
    write_label_png(tmp_path / "a.png", label)
    assert Image.open(tmp_path / "a.png").mode == "P"
    assert np.array_equal(read_label_png(tmp_path / "a.png"), label.astype(np.uint8))
