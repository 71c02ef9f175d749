"""SECSegmenter: seeding, GWRP / expansion and constrain losses against hand-computed values; a short fit."""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import pytest
import torch

from lightning_wsss.datamodules import PseudoMaskDataModule
from lightning_wsss.datamodules.transforms import IMAGENET_MEAN, IMAGENET_STD
from lightning_wsss.io import read_label_png, write_label_png
from lightning_wsss.tasks import sec as sec_module
from lightning_wsss.tasks.sec import SECSegmenter, constrain_loss, expansion_loss, gwrp, seeding_loss

TINY = dict(num_classes=3, encoder="tu-resnet18", decoder_channels=16)


def _log_probs(p) -> torch.Tensor:
    """[C, H, W] log-probabilities from a nested list of probabilities (they sum to 1 per pixel)."""
    return torch.tensor(p, dtype=torch.float64).log()


# two classes on a 2x2 map; pixel order (0,0), (0,1), (1,0), (1,1)
P2 = [[[0.8, 0.3], [0.5, 0.9]],
      [[0.2, 0.7], [0.5, 0.1]]]


def test_seeding_loss_by_hand():
    seeds = torch.tensor([[0, 1], [255, 1]])
    expected = -(math.log(0.8) + math.log(0.7) + math.log(0.1)) / 3
    assert seeding_loss(_log_probs(P2), seeds).item() == pytest.approx(expected, rel=1e-9)
    assert seeding_loss(_log_probs(P2), torch.full((2, 2), 255)).item() == 0.0


def test_gwrp_by_hand():
    x = torch.tensor([[0.9, 0.1], [0.5, 0.3]])
    # sorted 0.9, 0.5, 0.3, 0.1 with weights 1, 0.5, 0.25, 0.125
    assert gwrp(x, 0.5).item() == pytest.approx((0.9 + 0.25 + 0.075 + 0.0125) / 1.875, rel=1e-6)
    assert gwrp(x, 0.0).item() == pytest.approx(0.9)  # max pooling
    assert gwrp(x, 1.0).item() == pytest.approx(0.45)  # average pooling
    assert gwrp(torch.stack([x, 1 - x]), 0.0).tolist() == pytest.approx([0.9, 0.9])


def test_expansion_loss_by_hand():
    # background, class 1 (present), class 2 (absent) on a 2x2 map
    probs = torch.tensor([[[0.5, 0.2], [0.1, 0.6]],
                          [[0.3, 0.7], [0.8, 0.1]],
                          [[0.2, 0.1], [0.1, 0.3]]], dtype=torch.float64)
    labels = torch.tensor([1.0, 0.0])
    # background decay 1 (mean) = 1.4 / 4; class 1 decay 0.5: sorted 0.8, 0.7, 0.3, 0.1;
    # class 2 decay 0 (max) = 0.3
    g_bg = 1.4 / 4
    g_1 = (0.8 + 0.5 * 0.7 + 0.25 * 0.3 + 0.125 * 0.1) / 1.875
    g_2 = 0.3
    expected = -math.log(g_bg) - math.log(g_1) - math.log(1 - g_2)
    got = expansion_loss(probs, labels, decay_present=0.5, decay_absent=0.0, decay_background=1.0)
    assert got.item() == pytest.approx(expected, rel=1e-9)
    # both foreground classes present: the present term is their mean, no absent term
    both = expansion_loss(probs, torch.tensor([1.0, 1.0]), 0.5, 0.0, 1.0)
    g_2_present = (0.3 + 0.5 * 0.2 + 0.25 * 0.1 + 0.125 * 0.1) / 1.875
    assert both.item() == pytest.approx(-math.log(g_bg) - (math.log(g_1) + math.log(g_2_present)) / 2, rel=1e-9)


def test_constrain_loss_by_hand():
    q = torch.tensor([[[1.0, 0.4], [0.5, 0.0]],
                      [[0.0, 0.6], [0.5, 1.0]]], dtype=torch.float64)
    p = np.array(P2)
    terms = [1.0 * math.log(1.0 / 0.8), 0.4 * math.log(0.4 / 0.3) + 0.6 * math.log(0.6 / 0.7),
             0.5 * math.log(0.5 / 0.5) * 2, 1.0 * math.log(1.0 / 0.1)]
    assert constrain_loss(_log_probs(p.tolist()), q).item() == pytest.approx(sum(terms) / 4, rel=1e-9)


def _block(values: np.ndarray) -> torch.Tensor:
    """[C, 2, 2] -> [C, 4, 4]: each value fills a 2x2 block (so a /2 bilinear downsampling gives it back)."""
    return torch.as_tensor(values, dtype=torch.float32).repeat_interleave(2, -2).repeat_interleave(2, -1)


def test_loss_hook_combines_the_three_terms_on_the_downsampled_map(monkeypatch):
    torch.manual_seed(0)
    model = SECSegmenter(**TINY, seed_weight=1.0, expand_weight=0.5, constrain_weight=2.0, loss_stride=2,
                         decay_present=0.5, decay_absent=0.0, decay_background=1.0, gwrp_reference_pixels=None)
    probs = np.array([[[0.5, 0.2], [0.1, 0.6]],
                      [[0.3, 0.7], [0.8, 0.1]],
                      [[0.2, 0.1], [0.1, 0.3]]])
    logits = _block(np.log(probs))[None].requires_grad_(True)  # [1, 3, 4, 4]
    seeds = torch.full((1, 4, 4), 255, dtype=torch.long)
    seeds[0, 0, 0] = 0  # block (0, 0): background
    seeds[0, 2, 2] = 1  # block (1, 1): class 1 (the nearest downsampling keeps each block's top-left pixel)
    seeds[0, 1, 1] = 2  # not a top-left pixel: dropped by the downsampling
    rgb = np.array([[[10, 20, 30], [50, 60, 70]], [[90, 100, 110], [130, 140, 150]]], dtype=np.float32)  # [2, 2, 3]
    image = torch.from_numpy(((rgb / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)).astype(np.float32))
    image = image.permute(2, 0, 1).repeat_interleave(2, -2).repeat_interleave(2, -1)[None]
    q = np.array([[[0.9, 0.1], [0.2, 0.3]],
                  [[0.05, 0.8], [0.7, 0.3]],
                  [[0.05, 0.1], [0.1, 0.4]]], dtype=np.float32)
    calls = []

    def fake_crf(image_uint8, p, params):
        calls.append((image_uint8, p, params))
        return q

    monkeypatch.setattr(sec_module, "crf_from_probs", fake_crf)
    batch = {"image": image, "mask": seeds, "labels": torch.tensor([[1.0, 0.0]]), "size": torch.tensor([[4, 4]]),
             "id": ["x"]}
    total = model.loss(logits, batch)

    seed = -(math.log(0.5) + math.log(0.1)) / 2
    expand = -math.log(1.4 / 4) - math.log((0.8 + 0.5 * 0.7 + 0.25 * 0.3 + 0.125 * 0.1) / 1.875) - math.log(1 - 0.3)
    constrain = float(np.sum(q * (np.log(q) - np.log(probs)))) / 4
    assert total.item() == pytest.approx(seed + 0.5 * expand + 2.0 * constrain, rel=1e-5)
    # the CRF saw the probabilities and the denormalised, downsampled image, with sxy divided by the stride
    (crf_image, crf_probs, params), = calls
    np.testing.assert_allclose(crf_probs, probs, rtol=1e-5)
    np.testing.assert_allclose(crf_image.astype(float), rgb, atol=1)
    assert params.gauss_sxy == pytest.approx(1.5) and params.bilateral_sxy == pytest.approx(40)
    total.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_padding_is_cropped_before_the_losses(monkeypatch):
    monkeypatch.setattr(sec_module, "crf_from_probs", lambda image, p, params: p)  # KL(p || p) = 0
    model = SECSegmenter(**TINY, loss_stride=1)
    logits = torch.randn(2, 3, 6, 6)
    seeds = torch.randint(0, 3, (2, 6, 6))
    batch = {"image": torch.zeros(2, 3, 6, 6), "mask": seeds, "labels": torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
             "size": torch.tensor([[6, 6], [4, 5]]), "id": ["a", "b"]}
    parts = model.sec_losses(logits, batch)
    log_probs = logits.log_softmax(1)
    expected = []
    for i, (h, w) in enumerate([(6, 6), (4, 5)]):
        lp = log_probs[i, :, :h, :w]
        expected.append(-torch.gather(lp, 0, seeds[i, :h, :w][None]).mean())
        assert parts["constrain"].item() == pytest.approx(0.0, abs=1e-6)
    assert parts["seed"].item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-5)


def test_short_fit_on_seed_masks(tiny_voc, tmp_path):
    torch.manual_seed(0)
    seeds_dir = tmp_path / "seeds"
    for image_id in ("img_0", "img_1", "img_2", "img_3"):
        mask = read_label_png(tiny_voc / "SegmentationClass" / f"{image_id}.png").copy()
        mask[::2] = 255  # seeds: every other row
        write_label_png(seeds_dir / f"{image_id}.png", mask)
    dm = PseudoMaskDataModule(pseudo_mask_dir=str(seeds_dir), root=str(tiny_voc), crop_size=32, batch_size=2,
                              eval_batch_size=2)
    model = SECSegmenter(num_classes=4, encoder="tu-resnet18", decoder_channels=16, loss_stride=4,
                         constrain_crf_params={"iterations": 2})
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        max_epochs=1, limit_val_batches=1)
    trainer.fit(model, datamodule=dm)
    for key in ("train/loss", "train/seed_loss", "train/expand_loss", "train/constrain_loss"):
        assert torch.isfinite(trainer.callback_metrics[key]), key


def test_bad_options():
    with pytest.raises(ValueError):
        SECSegmenter(**TINY, decay_present=1.5)
    with pytest.raises(ValueError):
        SECSegmenter(**TINY, loss_stride=0)
    with pytest.raises(ValueError):
        SECSegmenter(**TINY, seed_weight=0, expand_weight=0, constrain_weight=0)


def test_decays_rescale_with_the_loss_map_size():
    from lightning_wsss.tasks.sec import gwrp, scale_decay

    assert scale_decay(0.5, 4, 16) == pytest.approx(0.5 ** 4)
    assert scale_decay(0.0, 4, 16) == 0.0 and scale_decay(1.0, 4, 16) == 1.0 and scale_decay(0.9, 4, None) == 0.9
    # a class covering the top 10 % of the map pools to the same value on a 14x14 map as on SEC's 41x41 one
    def covered(side: int) -> torch.Tensor:
        values = torch.zeros(side * side)
        values[: round(0.1 * side * side)] = 1.0
        return values.view(side, side)

    reference = gwrp(covered(41), 0.996).item()
    small = gwrp(covered(14), scale_decay(0.996, 14 * 14, 41 * 41)).item()
    assert small == pytest.approx(reference, abs=0.02)
    assert gwrp(covered(14), 0.996).item() < reference - 0.3  # unscaled: the small map looks almost empty


def test_loss_hook_rescales_the_expansion_decays(monkeypatch):
    seen = []
    monkeypatch.setattr(sec_module, "expansion_loss", lambda probs, labels, dp, da, db: seen.append((dp, da, db)) or probs.sum() * 0)
    model = SECSegmenter(**TINY, seed_weight=0.0, constrain_weight=0.0, loss_stride=2, gwrp_reference_pixels=64)
    logits = torch.zeros(1, 3, 8, 8, requires_grad=True)  # a 4x4 loss map: 16 pixels
    batch = {"image": torch.zeros(1, 3, 8, 8), "mask": torch.zeros(1, 8, 8, dtype=torch.long),
             "labels": torch.tensor([[1.0, 0.0]]), "size": torch.tensor([[8, 8]]), "id": ["x"]}
    model.loss(logits, batch)
    assert seen == [pytest.approx((0.996 ** 4, 0.0, 0.999 ** 4))]
