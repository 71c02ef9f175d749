"""Tests for lightning_wsss.refine.crf (dense CRF wrappers)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pydensecrf.densecrf")

from lightning_wsss.refine.crf import (  # noqa: E402
    CRFParams,
    batch_crf,
    crf_from_labels,
    crf_from_probs,
    crf_from_scores,
    crf_labels,
    crf_params_for,
    scaled_crf_params,
)


def two_region_scene(h: int = 40, w: int = 48, seed: int = 0):
    """Image with a red disk on a blue background plus the true label map (1 = disk)."""
    yy, xx = np.mgrid[:h, :w]
    truth = ((yy - h / 2) ** 2 + (xx - w / 2.5) ** 2 < (h / 3) ** 2).astype(np.int64)
    image = np.zeros((h, w, 3), np.uint8)
    image[truth == 1] = (220, 30, 30)
    image[truth == 0] = (30, 30, 220)
    rng = np.random.default_rng(seed)
    image = np.clip(image + rng.integers(-10, 11, image.shape), 0, 255).astype(np.uint8)
    return image, truth


def noisy_probs(truth: np.ndarray, num_classes: int, noise: float, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    onehot = np.eye(num_classes)[truth].transpose(2, 0, 1)
    scores = 0.5 * onehot + noise * rng.random((num_classes,) + truth.shape)
    return (scores / scores.sum(0, keepdims=True)).astype(np.float32)


def test_crf_smooths_noisy_probs_towards_image_regions():
    image, truth = two_region_scene()
    probs = noisy_probs(truth, 2, noise=1.0)
    raw_acc = (probs.argmax(0) == truth).mean()
    assert 0.6 < raw_acc < 0.9  # the unary alone is badly noisy
    refined = crf_labels(image, probs)
    crf_acc = (refined == truth).mean()
    assert crf_acc > 0.97
    assert crf_acc > raw_acc + 0.1


def test_crf_from_probs_shape_dtype_and_normalisation():
    image, truth = two_region_scene(16, 20)
    probs = noisy_probs(truth, 3, noise=0.5).astype(np.float64)  # float64 in, float32 out
    q = crf_from_probs(image, probs, CRFParams(iterations=3))
    assert q.shape == (3, 16, 20)
    assert q.dtype == np.float32
    np.testing.assert_allclose(q.sum(0), 1.0, atol=1e-4)
    assert q.min() >= 0


def test_crf_accepts_non_contiguous_inputs():
    image, truth = two_region_scene(16, 20)
    probs = noisy_probs(truth, 2, noise=0.5)
    q1 = crf_from_probs(image, probs)
    q2 = crf_from_probs(image[:, ::-1][:, ::-1], probs[:, :, ::-1][:, :, ::-1])
    np.testing.assert_allclose(q1, q2, atol=1e-6)


def test_zero_iterations_returns_normalised_unary():
    image, truth = two_region_scene(12, 10)
    probs = noisy_probs(truth, 3, noise=0.8)
    q = crf_from_probs(image, probs, CRFParams(iterations=0))
    p = np.clip(probs, 1e-5, 1)
    np.testing.assert_allclose(q, p / p.sum(0, keepdims=True), atol=1e-5)


def test_crf_params_for_reads_the_stage_settings():
    """False / None: no CRF; True: psa's parameters; a mapping: CRFParams fields, with ``scale_params`` the
    spatial widths times max(H, W) / reference (psa's 80 px bilateral width is 20.48 px on a 128 px image)."""
    assert crf_params_for(False, (128, 128)) is None and crf_params_for(None, (128, 128)) is None
    assert crf_params_for(True, (128, 128)) == CRFParams()
    assert crf_params_for({"bilateral_srgb": 5}, (128, 128)) == CRFParams(bilateral_srgb=5)
    scaled = crf_params_for({"scale_params": True, "bilateral_srgb": 5}, (100, 128))
    assert scaled.bilateral_sxy == pytest.approx(80 * 128 / 500) and scaled.gauss_sxy == 1.0
    assert scaled.bilateral_srgb == 5 and scaled == scaled_crf_params((100, 128), CRFParams(bilateral_srgb=5))
    assert crf_params_for({"scale_params": True, "reference": 1000}, (250, 250)).bilateral_sxy == pytest.approx(20)
    with pytest.raises(ValueError, match="bilateral_sxyz"):
        crf_params_for({"bilateral_sxyz": 3}, (10, 10))
    with pytest.raises(ValueError, match="mapping"):
        crf_params_for(3, (10, 10))


def test_crf_from_scores_normalises_then_refines():
    """Scores in any scale (walked maps) are divided by their per-pixel sum: ``False`` returns exactly that, a CRF
    spec the marginals of the normalised scores; a negative score counts as zero."""
    image, truth = two_region_scene(16, 20)
    probs = noisy_probs(truth, 2, noise=0.5)
    scores = 7.0 * probs
    scores[0, 0, 0] = -1.0
    expected = probs.copy()
    expected[:, 0, 0] = [0.0, 1.0]
    np.testing.assert_allclose(crf_from_scores(image, scores, False), expected, atol=1e-6)
    np.testing.assert_allclose(crf_from_scores(image, scores, {"iterations": 3}),
                               crf_from_probs(image, expected, CRFParams(iterations=3)), atol=1e-6)
    # an image with no foreground class has the background channel only: nothing to refine
    np.testing.assert_array_equal(crf_from_scores(image, scores[:1], True), np.ones((1, 16, 20), np.float32))
    with pytest.raises(ValueError, match="does not"):
        crf_from_scores(image, scores[:1, :8], True)


@pytest.mark.parametrize(
    "image_shape, probs_shape",
    [
        ((10, 12, 3), (2, 10, 13)),
        ((10, 12), (2, 10, 12)),
        ((10, 12, 3), (10, 12)),
        ((10, 12, 4), (2, 10, 12)),
    ],
)
def test_crf_from_probs_rejects_bad_shapes(image_shape, probs_shape):
    with pytest.raises(ValueError, match=r"\("):
        crf_from_probs(np.zeros(image_shape, np.uint8), np.full(probs_shape, 0.5, np.float32))


def test_crf_from_labels_matches_explicit_probability_unary():
    """Labels -> unary must equal -log of (conf on label, (1-conf)/(C-1) elsewhere, uniform on 255)."""
    image, truth = two_region_scene(20, 24)
    num_classes, conf = 4, 0.7
    rng = np.random.default_rng(3)
    labels = rng.integers(0, num_classes, truth.shape)
    labels[rng.random(truth.shape) < 0.3] = 255
    probs = np.full((num_classes,) + truth.shape, (1 - conf) / (num_classes - 1), np.float32)
    for c in range(num_classes):
        probs[c][labels == c] = conf
    probs[:, labels == 255] = 1.0 / num_classes
    params = CRFParams(iterations=5)
    expected = crf_from_probs(image, probs, params)
    got = crf_from_labels(image, labels.astype(np.uint8), num_classes, conf, params)
    assert got.shape == (num_classes, 20, 24) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_crf_from_labels_fills_unknown_pixels_from_colour():
    image, truth = two_region_scene()
    labels = np.full(truth.shape, 255, np.uint8)
    labels[20, 19] = 1  # one seed inside the disk
    labels[2:5, 2:5] = 0
    labels[35:38, 44:47] = 0
    out = crf_labels(image, labels=labels, num_classes=2)
    assert out.dtype == np.uint8 and out.shape == truth.shape
    assert (out == truth).mean() > 0.9


def test_crf_from_labels_rejects_out_of_range_labels():
    image, truth = two_region_scene(8, 8)
    with pytest.raises(ValueError, match="labels"):
        crf_from_labels(image, np.full((8, 8), 5), num_classes=3)
    with pytest.raises(ValueError, match="shape"):
        crf_from_labels(image, np.zeros((8, 9), np.int64), num_classes=3)


def test_crf_labels_needs_exactly_one_input():
    image, truth = two_region_scene(8, 8)
    with pytest.raises(ValueError):
        crf_labels(image)
    with pytest.raises(ValueError):
        crf_labels(image, labels=truth)  # num_classes missing


@pytest.mark.parametrize("mp_context", [None, "spawn", "forkserver"])
def test_batch_crf_equals_serial(mp_context):
    scenes = [two_region_scene(16 + i, 20, seed=i) for i in range(4)]
    images = [s[0] for s in scenes]
    probs = [noisy_probs(s[1], 2 + i % 2, noise=0.7, seed=i) for i, s in enumerate(scenes)]
    params = CRFParams(iterations=4)
    serial = [crf_from_probs(img, p, params) for img, p in zip(images, probs)]
    pooled = batch_crf(images, probs, params, processes=2, mp_context=mp_context)
    inline = batch_crf(images, probs, params, processes=0)
    assert len(pooled) == len(serial) == len(inline)
    for a, b, c in zip(serial, pooled, inline):
        assert a.shape == b.shape
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def test_batch_crf_length_mismatch():
    image, truth = two_region_scene(8, 8)
    with pytest.raises(ValueError, match="2 images"):
        batch_crf([image, image], [noisy_probs(truth, 2, 0.5)], processes=0)


def test_batch_crf_pool_checks_inputs_first_and_leaves_no_file(tmp_path, monkeypatch):
    """A bad pair fails in the caller before any worker starts; the shared files are removed either way."""
    from lightning_wsss.refine import shared_arrays

    monkeypatch.setattr(shared_arrays, "shared_folder", lambda nbytes: str(tmp_path))
    image, truth = two_region_scene(8, 8)
    with pytest.raises(ValueError, match="spatial shape"):
        batch_crf([image, image], [noisy_probs(truth, 2, 0.5), np.full((2, 8, 9), 0.5, np.float32)], processes=2)
    out = batch_crf([image, image], [noisy_probs(truth, 2, 0.5, seed=s) for s in (0, 1)], processes=2)
    assert len(out) == 2 and list(tmp_path.iterdir()) == []


def test_shared_arrays_round_trip():
    from lightning_wsss.refine.shared_arrays import SharedArrays

    arrays = SharedArrays.create([((2, 3), "uint8"), ((5,), "float32"), ((0, 4), "float32")])
    try:
        arrays.view(0)[...] = np.arange(6, dtype=np.uint8).reshape(2, 3)
        other = SharedArrays.attach(arrays.layout)  # as a worker maps it
        other.view(1)[...] = 0.5
        assert other.view(0).tolist() == [[0, 1, 2], [3, 4, 5]]
        copies = arrays.copies([1, 2])
        assert copies[0].tolist() == [0.5] * 5 and copies[1].shape == (0, 4)
        assert all(offset % 64 == 0 for offset, _, _ in arrays.layout.entries)
    finally:
        arrays.unlink()
