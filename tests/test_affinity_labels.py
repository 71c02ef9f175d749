"""Tests for lightning_wsss.refine.affinity_labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_wsss.refine import affinity_labels as al
from lightning_wsss.refine.affinity_labels import (
    affinity_label_map_irn,
    affinity_label_map_psa,
    affinity_pairs,
    downsample_label_map,
    in_map_mask,
    neighbor_offsets,
    shift_map,
)


# ----------------------------------------------------------------------------- offsets


@pytest.mark.parametrize("radius", [2, 3, 5, 7])
def test_neighbor_offsets_is_half_of_the_disk(radius):
    offs = [tuple(o) for o in neighbor_offsets(radius).tolist()]
    assert len(set(offs)) == len(offs)
    disk = {
        (dy, dx)
        for dy in range(-radius, radius + 1)
        for dx in range(-radius, radius + 1)
        if dy * dy + dx * dx < radius * radius and (dy, dx) != (0, 0)
    }
    both = set(offs) | {(-dy, -dx) for dy, dx in offs}
    assert both == disk
    assert len(offs) * 2 == len(disk)  # no offset together with its mirror


def test_neighbor_offsets_radius_5_count_and_dtype():
    offs = neighbor_offsets(5)
    assert offs.dtype == torch.long and offs.shape == (34, 2)
    assert offs[0].tolist() == [0, 1]


# ----------------------------------------------------------------------------- helpers


def test_shift_map_against_loops():
    x = torch.arange(4 * 5).view(1, 4, 5)
    for dy, dx in [(0, 1), (2, -1), (-1, 3), (4, 0), (1, 1)]:
        out = shift_map(x, dy, dx, fill=-7)
        for y in range(4):
            for xx in range(5):
                ny, nx = y + dy, xx + dx
                expected = x[0, ny, nx].item() if 0 <= ny < 4 and 0 <= nx < 5 else -7
                assert out[0, y, xx].item() == expected


def test_in_map_mask_against_loops():
    offs = neighbor_offsets(3)
    mask = in_map_mask(3, 4, offs)
    for p, (dy, dx) in enumerate(offs.tolist()):
        for y in range(3):
            for x in range(4):
                assert mask[p, y, x].item() == (0 <= y + dy < 3 and 0 <= x + dx < 4)


def test_downsample_label_map_takes_cell_centres():
    lab = np.arange(10 * 7, dtype=np.int64).reshape(10, 7)
    out = downsample_label_map(lab, 4)
    assert out.shape == (3, 2)
    assert out.tolist() == [[lab[2, 2], lab[2, 6]], [lab[6, 2], lab[6, 6]], [lab[9, 2], lab[9, 6]]]
    np.testing.assert_array_equal(downsample_label_map(lab, 1), lab)


# ----------------------------------------------------------------------------- pairs


def brute_force_pairs(labels: np.ndarray, radius: int):
    """Loop reference: per (b, offset, y, x) classification of the pair."""
    offs = neighbor_offsets(radius).tolist()
    b, h, w = labels.shape
    shape = (b, len(offs), h, w)
    bg, fg, neg = np.zeros(shape, bool), np.zeros(shape, bool), np.zeros(shape, bool)
    for i in range(b):
        for p, (dy, dx) in enumerate(offs):
            for y in range(h):
                for x in range(w):
                    ny, nx = y + dy, x + dx
                    if not (0 <= ny < h and 0 <= nx < w):
                        continue
                    a, c = labels[i, y, x], labels[i, ny, nx]
                    if a == 255 or c == 255:
                        continue
                    if a == c == 0:
                        bg[i, p, y, x] = True
                    elif a == c:
                        fg[i, p, y, x] = True
                    else:
                        neg[i, p, y, x] = True
    return bg, fg, neg


@pytest.mark.parametrize("radius", [2, 3, 5])
def test_affinity_pairs_match_brute_force(radius):
    rng = np.random.default_rng(radius)
    labels = rng.choice([0, 0, 1, 2, 255], size=(2, 7, 9))
    got = affinity_pairs(torch.from_numpy(labels).to(torch.uint8), radius=radius)
    expected = brute_force_pairs(labels, radius)
    for g, e in zip(got, expected):
        assert g.dtype == torch.bool and g.shape == e.shape
        np.testing.assert_array_equal(g.numpy(), e)


def test_affinity_pairs_hand_counted():
    # radius 2 -> offsets (0,1), (1,-1), (1,0), (1,1).
    lab = torch.tensor([[0, 0, 1], [255, 1, 1]])
    bg, fg, neg = affinity_pairs(lab, radius=2)
    assert bg.shape == (1, 4, 2, 3)
    # Pairs: (0,0)-(0,1): bg; (0,1)-(0,2): neg; (1,1)-(1,2): fg;
    # (0,0)-(1,0): ignore; (0,0)-(1,1): neg; (0,1)-(1,0): ignore; (0,1)-(1,1): neg;
    # (0,1)-(1,2): neg; (0,2)-(1,1): fg; (0,2)-(1,2): fg.
    assert int(bg.sum()) == 1
    assert int(fg.sum()) == 3
    assert int(neg.sum()) == 4
    assert bool(bg[0, 0, 0, 0]) and bool(neg[0, 0, 0, 1]) and bool(fg[0, 0, 1, 1])


def test_affinity_pairs_all_ignore_and_float_rejected():
    bg, fg, neg = affinity_pairs(torch.full((1, 4, 4), 255), radius=3)
    assert not (bg.any() or fg.any() or neg.any())
    with pytest.raises(ValueError):
        affinity_pairs(torch.zeros(1, 4, 4))


# ----------------------------------------------------------------------------- label maps


def identity_crf_probs(image, probs, params=None):
    p = np.clip(np.asarray(probs, np.float32), 1e-5, 1)
    return p / p.sum(0, keepdims=True)


def onehot_crf_labels(image, labels, num_classes, confidence=0.7, params=None):
    return np.eye(num_classes, dtype=np.float32)[labels].transpose(2, 0, 1)


def random_cams(k, h, w, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((k, h, w)).astype(np.float32) ** 2


def test_psa_combination_rule_with_identity_crf(monkeypatch):
    """With the CRF replaced by identity, the map must follow PSA's la/ha rule exactly."""
    monkeypatch.setattr(al, "crf_from_probs", identity_crf_probs)
    h, w = 9, 11
    cams = random_cams(2, h, w)
    ids = [3, 7]
    image = np.zeros((h, w, 3), np.uint8)
    out = affinity_label_map_psa(image, cams, ids, 21, alpha_low=4, alpha_high=32, stride=1)
    m = cams.max(0)
    expected = np.full((h, w), 255)
    for y in range(h):
        for x in range(w):
            la = [(1 - m[y, x]) ** 4, cams[0, y, x], cams[1, y, x]]
            ha = [(1 - m[y, x]) ** 32, cams[0, y, x], cams[1, y, x]]
            la_cls = [0, 3, 7][int(np.argmax(la))]
            if la_cls != 0:
                expected[y, x] = la_cls
            if int(np.argmax(ha)) == 0:
                expected[y, x] = 0
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)
    assert {0, 255} <= set(np.unique(out).tolist())  # the test data exercises all branches


def test_irn_combination_rule_with_identity_crf(monkeypatch):
    monkeypatch.setattr(al, "crf_from_labels", onehot_crf_labels)
    h, w = 9, 11
    cams = random_cams(2, h, w, seed=1)
    ids = [5, 2]
    image = np.zeros((h, w, 3), np.uint8)
    out = affinity_label_map_irn(image, cams, ids, 21, fg_threshold=0.3, bg_threshold=0.05, stride=1)
    expected = np.full((h, w), 255)
    for y in range(h):
        for x in range(w):
            c = cams[:, y, x]
            if c.max() > 0.3:
                expected[y, x] = ids[int(np.argmax(c))]
            elif c.max() <= 0.05:
                expected[y, x] = 0
    np.testing.assert_array_equal(out, expected)
    assert {0, 2, 5, 255} <= set(np.unique(out).tolist())


def test_label_maps_are_strided_and_validated(monkeypatch):
    monkeypatch.setattr(al, "crf_from_probs", identity_crf_probs)
    monkeypatch.setattr(al, "crf_from_labels", onehot_crf_labels)
    image = np.zeros((17, 30, 3), np.uint8)
    cams = random_cams(1, 17, 30)
    assert affinity_label_map_psa(image, cams, [1], 3, stride=8).shape == (3, 4)
    assert affinity_label_map_irn(image, cams, [1], 3, stride=4).shape == (5, 8)
    empty = affinity_label_map_irn(image, np.zeros((0, 17, 30)), [], 3, stride=4)
    assert empty.shape == (5, 8) and (empty == 0).all()
    with pytest.raises(ValueError, match="class_ids"):
        affinity_label_map_psa(image, cams, [3], 3)
    with pytest.raises(ValueError, match="cams_fg"):
        affinity_label_map_psa(image, cams[:, :5], [1], 3)


def test_label_maps_with_real_crf():
    pytest.importorskip("pydensecrf.densecrf")
    h, w = 40, 40
    yy, xx = np.mgrid[:h, :w]
    inside = (abs(yy - 20) < 10) & (abs(xx - 20) < 10)
    image = np.full((h, w, 3), 40, np.uint8)
    image[inside] = (230, 200, 40)
    dist = np.sqrt((yy - 20.0) ** 2 + (xx - 20.0) ** 2)
    cam = np.clip(1.2 - dist / 15.0, 0, 1).astype(np.float32)[None]  # peaks at the centre
    for fn in (affinity_label_map_psa, affinity_label_map_irn):
        out = fn(image, torch.from_numpy(cam), torch.tensor([4]), 21, stride=1)
        assert out.shape == (h, w) and out.dtype == np.uint8
        assert out[20, 20] == 4
        assert out[0, 0] == 0 and out[39, 39] == 0
        assert set(np.unique(out).tolist()) <= {0, 4, 255}


def test_a_mode_ignores_the_other_modes_parameters(monkeypatch):
    """A config that switches a base's psa labels to irn keeps alpha_low / alpha_high from the merge: irn ignores
    them (and psa irn's thresholds), while a parameter that belongs to no mode still fails."""
    from lightning_wsss.refine.affinity_targets import affinity_label_map, mode_kwargs

    monkeypatch.setattr(al, "crf_from_labels", onehot_crf_labels)
    assert mode_kwargs("irn", {"alpha_low": 4, "alpha_high": 32, "fg_threshold": 0.4}) == {"fg_threshold": 0.4}
    assert mode_kwargs("psa", {"alpha_low": 4, "bg_threshold": 0.1, "params": None}) == {"alpha_low": 4, "params": None}
    image = np.zeros((9, 11, 3), np.uint8)
    cams = random_cams(2, 9, 11, seed=1)
    merged = affinity_label_map(image, cams, [5, 2], 21, "irn", alpha_low=4, alpha_high=32, fg_threshold=0.3)
    np.testing.assert_array_equal(merged, affinity_label_map_irn(image, cams, [5, 2], 21, fg_threshold=0.3, stride=1))
    with pytest.raises(TypeError):
        affinity_label_map(image, cams, [5, 2], 21, "irn", alpha_mid=8)


def test_label_crf_setting_scales_the_modes_own_parameters():
    """``labels.crf_params: {scale_params: true}`` scales psa's or irn's own label-CRF widths from 500 px to the
    image; other keys replace fields; no setting leaves the mode's default (no ``params`` passed)."""
    from lightning_wsss.refine.affinity_targets import label_kwargs
    from lightning_wsss.refine.crf import IRN_CRF_PARAMS, CRFParams

    psa = label_kwargs("psa", {"alpha_low": 4}, {"scale_params": True}, (100, 125))
    assert psa["alpha_low"] == 4
    assert psa["params"] == CRFParams(gauss_sxy=1.0, bilateral_sxy=20.0)  # 3 -> 0.75, kept at 1 px; 80 * 125 / 500
    irn = label_kwargs("irn", {}, {"scale_params": True, "bilateral_srgb": 7}, (250, 50))
    assert irn["params"] == CRFParams(gauss_sxy=1.5, bilateral_sxy=25.0, bilateral_srgb=7.0)  # irn's 50 px, 5 -> 7
    assert label_kwargs("irn", {}, True, (250, 50))["params"] == IRN_CRF_PARAMS
    assert "params" not in label_kwargs("psa", {}, None, (100, 125))
    with pytest.raises(ValueError, match="bilateral_sxyy"):
        label_kwargs("psa", {}, {"bilateral_sxyy": 3}, (100, 125))


def test_written_labels_follow_the_crf_setting(tmp_path, monkeypatch):
    """write_affinity_labels hands each image the CRF parameters its setting resolves to at that image's size."""
    from lightning_wsss.refine import affinity_targets

    seen = []

    def spy(image, cams, keys, num_classes, mode, **kwargs):
        seen.append((np.asarray(image).shape[:2], kwargs["params"].bilateral_sxy))
        return np.zeros(np.asarray(image).shape[:2], np.uint8)

    class Reader:
        ids = ["a", "b"]
        num_classes = 3
        sizes = {"a": (50, 40), "b": (20, 100)}

        def load(self, image_id):
            return {"image": np.zeros((*self.sizes[image_id], 3), np.uint8)}

    for image_id, size in Reader.sizes.items():
        np.savez(tmp_path / f"{image_id}.npz", cams=np.zeros((1, *size), np.float32), keys=np.array([1]))
    monkeypatch.setattr(affinity_targets, "affinity_label_map", spy)
    affinity_targets.write_affinity_labels(Reader(), tmp_path, tmp_path / "labels", "psa",
                                           crf_params={"scale_params": True}, progress=False)
    assert seen == [((50, 40), pytest.approx(8.0)), ((20, 100), pytest.approx(16.0))]
    assert sorted(p.name for p in (tmp_path / "labels").iterdir()) == ["a.png", "b.png"]
