"""BoxSupSegmenter: candidate scoring and mask update on hand-built examples, rounds on tiny_voc, restart, BBTP mode."""

from __future__ import annotations

import json
import math
import os

import lightning as L
import numpy as np
import pytest

from conftest import tiny_trainer as _trainer
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_wsss.datamodules import BoxDataModule
from lightning_wsss.datamodules.base import TransformedDataset
from lightning_wsss.io import read_label_png
from lightning_wsss.tasks import boxsup as boxsup_module
from lightning_wsss.tasks.boxsup import BoxSupSegmenter, PseudoMaskInjector

TINY = dict(num_classes=4, encoder="tu-resnet18", decoder_channels=16)





def _probs(h: int, w: int, values) -> np.ndarray:
    """Constant probabilities float32 [C, h, w] with channel c = values[c]."""
    return np.broadcast_to(np.asarray(values, np.float32)[:, None, None], (len(values), h, w)).copy()


# ----------------------------------------------------------------------------------------------- unit level
def test_score_candidate_prefers_the_segment_closest_to_the_box(tmp_path):
    model = BoxSupSegmenter(**TINY, out_dir=str(tmp_path), crf_candidate=False, network_candidate=True)
    box = (2.0, 2.0, 10.0, 10.0)  # pixels 2..9
    exact = np.zeros((16, 16), bool)
    exact[2:10, 2:10] = True
    inner = np.zeros((16, 16), bool)
    inner[4:8, 4:8] = True
    leaking = np.zeros((16, 16), bool)
    leaking[0:14, 0:14] = True
    # overlap term only (no network yet): 1 - IoU of the tight boxes, computed by hand
    costs = [model.score_candidate(c, box, 1, None) for c in (inner, leaking, exact)]
    assert costs == pytest.approx([1 - 16 / 64, 1 - 64 / 196, 0.0])
    # with a network that says class 1 (p = 0.8) on the exact square, background (0.9) elsewhere
    probs = _probs(16, 16, [0.9, 0.05, 0.03, 0.02])
    probs[:, 2:10, 2:10] = np.array([0.1, 0.8, 0.05, 0.05], np.float32)[:, None, None]
    log_probs = torch.from_numpy(np.log(probs))
    cost_exact = model.score_candidate(exact, box, 1, log_probs)
    cost_inner = model.score_candidate(inner, box, 1, log_probs)
    assert cost_exact == pytest.approx(3.0 * -math.log(0.8), rel=1e-5)
    assert cost_inner == pytest.approx(0.75 + 3.0 * (16 * -math.log(0.8) + 48 * -math.log(0.1)) / 64, rel=1e-5)
    # update_mask picks the network's square over the initializer's inner square
    init = np.zeros((16, 16), np.uint8)
    init[inner] = 1
    image = np.full((16, 16, 3), 128, np.uint8)
    mask = model.update_mask(image, probs, np.array([box]), np.array([1]), None, init)
    assert np.array_equal(mask, exact.astype(np.uint8))
    # by default the network only scores candidates: its raw argmax is no candidate, a proposal is
    scorer = BoxSupSegmenter(**TINY, out_dir=str(tmp_path), crf_candidate=False)
    assert np.array_equal(scorer.update_mask(image, probs, np.array([box]), np.array([1]), None, init), init)
    proposal = exact.astype(np.uint8)
    chosen = scorer.update_mask(image, probs, np.array([box]), np.array([1]), None, init, proposals=[proposal])
    assert np.array_equal(chosen, proposal)


def test_keep_unless_better_margin_rule():
    from lightning_wsss.boxes import keep_unless_better

    scores = torch.tensor([0.75, 0.5, 0.25], dtype=torch.float64)  # candidate 1 is the current mask
    assert keep_unless_better(scores, 2, 1, None) == 2  # no margin: the plain choice
    assert keep_unless_better(scores, 2, 1, 0.125) == 2  # 0.25 < 0.5 - 0.125: replaced
    assert keep_unless_better(scores, 2, 1, 0.25) == 1  # 0.25 is not below 0.5 - 0.25: kept
    assert keep_unless_better(scores, 2, 1, 0.5) == 1
    assert keep_unless_better(scores, 2, None, 0.5) == 2  # no current mask (round 1 without a previous)
    assert keep_unless_better(torch.tensor([0.4, 0.4]), 0, 1, 0.0) == 1  # margin 0: a tie keeps the current
    with pytest.raises(ValueError):
        keep_unless_better(scores, 2, 1, -0.1)


def test_update_mask_replaces_the_previous_segment_only_by_the_margin(tmp_path):
    box = (2.0, 2.0, 10.0, 10.0)
    exact = np.zeros((16, 16), bool)
    exact[2:10, 2:10] = True
    previous = np.zeros((16, 16), np.uint8)
    previous[3:10, 2:10] = 1  # one row short: overlap cost 1 - 56/64 = 0.125 worse than the exact proposal
    image = np.full((16, 16, 3), 128, np.uint8)
    args = (image, _probs(16, 16, [0.25, 0.25, 0.25, 0.25]), np.array([box]), np.array([1]), previous, None)
    proposal = [exact.astype(np.uint8)]
    plain = BoxSupSegmenter(**TINY, out_dir=str(tmp_path), crf_candidate=False)
    assert np.array_equal(plain.update_mask(*args, proposals=proposal), proposal[0])
    assert plain.replaced == {"boxes": 1, "replaced": 1}
    strict = BoxSupSegmenter(**TINY, out_dir=str(tmp_path), crf_candidate=False, replace_margin=0.2)
    assert np.array_equal(strict.update_mask(*args, proposals=proposal), previous)
    assert strict.replaced == {"boxes": 1, "replaced": 0}
    loose = BoxSupSegmenter(**TINY, out_dir=str(tmp_path), crf_candidate=False, replace_margin=0.1)
    assert np.array_equal(loose.update_mask(*args, proposals=proposal), proposal[0])
    with pytest.raises(ValueError):
        BoxSupSegmenter(**TINY, out_dir=str(tmp_path), replace_margin=-1.0)


def test_candidate_pool_names_and_grabcut_from_the_network(tmp_path):
    from lightning_wsss.boxes import grabcut_from_mask

    image = np.full((32, 32, 3), 40, np.uint8)
    image[8:24, 10:22] = (220, 40, 40)  # a red object inside the box (6, 4, 28, 28)
    box = (6.0, 4.0, 28.0, 28.0)
    seed = np.zeros((32, 32), bool)
    seed[10:22, 12:20] = True  # the network found the middle of the object
    cut = grabcut_from_mask(image, box, seed)
    truth = np.zeros((32, 32), bool)
    truth[8:24, 10:22] = True
    assert (cut & truth).sum() / (cut | truth).sum() > 0.9
    assert not cut[:4].any() and not cut[:, :6].any()  # never outside the box
    empty = np.zeros((32, 32), bool)
    assert not grabcut_from_mask(image, box, empty).any()
    probs = np.zeros((4, 32, 32), np.float32)
    probs[0] = 1.0
    probs[0, seed], probs[1, seed] = 0.0, 1.0
    model = BoxSupSegmenter(**TINY, out_dir=str(tmp_path), crf_candidate=False, grabcut_candidate=True)
    pool = model.candidate_pool(image, probs, box, 1, np.zeros((32, 32), np.uint8), None,
                                proposals=[np.ones((32, 32), np.uint8)])
    assert [name for name, _ in pool] == ["grabcut_network", "previous", "proposal_0"]
    assert np.array_equal(pool[0][1], cut)


def test_network_candidates_may_refine_the_current_mask_not_replace_it(tmp_path):
    """network_min_iou: the network's own argmax scores best under its own cross-entropy, but where it overlaps
    the box's current mask by less than the threshold it leaves the pool; a refinement of that mask stays in."""
    from lightning_wsss.boxes import mask_iou

    box = (0.0, 0.0, 16.0, 16.0)
    current = np.zeros((16, 16), np.uint8)
    current[:, :8] = 1  # the current mask: the left half of the box
    blob = np.zeros((16, 16), bool)
    blob[:, 10:] = True  # the network's shape: the right part, IoU 0 with the current mask
    probs = np.zeros((4, 16, 16), np.float32)
    probs[0], probs[1] = np.where(blob, 0.0, 1.0), np.where(blob, 1.0, 0.0)
    image = np.full((16, 16, 3), 128, np.uint8)
    args = (image, probs, np.array([box]), np.array([1]), current, None)
    options = dict(**TINY, out_dir=str(tmp_path), crf_candidate=False, network_candidate=True, replace_margin=0.1,
                   ce_ignore_band=None)
    unguarded = BoxSupSegmenter(**options).update_mask(*args)
    assert np.array_equal(unguarded == 1, blob)  # its own blob costs least under its own cross-entropy
    guarded = BoxSupSegmenter(**options, network_min_iou=0.5)
    assert np.array_equal(guarded.update_mask(*args), current)
    assert guarded.replaced == {"boxes": 1, "replaced": 0}
    refined = np.zeros((16, 16), bool)
    refined[:, :9] = True  # IoU 8/9 with the current mask: a refinement, kept in the pool and chosen
    probs[0], probs[1] = np.where(refined, 0.0, 1.0), np.where(refined, 1.0, 0.0)
    assert np.array_equal(guarded.update_mask(*args) == 1, refined)
    assert mask_iou(refined, current == 1) == pytest.approx(8 / 9) and mask_iou(blob, blob) == 1.0
    assert mask_iou(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) == 1.0
    with pytest.raises(ValueError, match="network_min_iou"):
        BoxSupSegmenter(**TINY, out_dir=str(tmp_path), network_min_iou=1.5)


def test_update_keeps_foreground_in_boxes_and_smaller_box_wins(tmp_path):
    model = BoxSupSegmenter(**TINY, out_dir=str(tmp_path), crf_candidate=True, candidate_crf_params={"iterations": 3})
    h = w = 20
    probs = _probs(h, w, [0.1, 0.6, 0.3, 0.0])  # the network says class 1 everywhere, even outside the boxes
    boxes = np.array([[0, 0, 12, 12], [8, 8, 16, 16]], np.float32)  # large class 1, small class 2, overlap 8..11
    labels = np.array([1, 2])
    init = np.zeros((h, w), np.uint8)  # a "filled" initializer: the smaller box painted last
    init[0:12, 0:12] = 1
    init[8:16, 8:16] = 2
    image = np.full((h, w, 3), 100, np.uint8)
    mask = model.update_mask(image, probs, boxes, labels, previous_mask=init, init_mask=init)
    expected = np.zeros((h, w), np.uint8)
    expected[0:12, 0:12] = 1
    expected[8:16, 8:16] = 2
    assert np.array_equal(mask, expected)
    # the same with the boxes given in the other order
    mask2 = model.update_mask(image, probs, boxes[::-1].copy(), labels[::-1].copy(), init, init)
    assert np.array_equal(mask2, expected)


class LeakyCandidates(BoxSupSegmenter):
    """A subclass whose only candidate is the whole image."""

    def candidates(self, image, probs, box, class_id, previous_mask, init_mask, refined_probs=None, proposals=()):
        return [np.ones(image.shape[:2], bool)]


def test_update_clips_any_candidate_to_its_box(tmp_path):
    model = LeakyCandidates(**TINY, out_dir=str(tmp_path), crf_candidate=False)
    mask = model.update_mask(np.zeros((10, 10, 3), np.uint8), _probs(10, 10, [0.5, 0.5, 0, 0]),
                             np.array([[2.5, 3, 6, 7.2]]), np.array([1]), None, None)
    expected = np.zeros((10, 10), np.uint8)
    expected[3:8, 2:6] = 1  # pixel range floor(x_min)..ceil(x_max)-1, same for y
    assert np.array_equal(mask, expected)


def test_sample_selection_draws_from_top_k(tmp_path):
    model = BoxSupSegmenter(**TINY, out_dir=str(tmp_path), crf_candidate=False, selection="sample", top_k=1)
    probs = _probs(12, 12, [0.2, 0.5, 0.2, 0.1])
    init = np.zeros((12, 12), np.uint8)
    init[3:6, 3:6] = 1
    box = np.array([[2, 2, 9, 9]], np.float32)
    greedy = BoxSupSegmenter(**TINY, out_dir=str(tmp_path), crf_candidate=False)
    image = np.zeros((12, 12, 3), np.uint8)
    expected = greedy.update_mask(image, probs, box, [1], None, init)
    for seed in range(3):  # top_k = 1: sampling is greedy
        got = model.update_mask(image, probs, box, [1], None, init, torch.Generator().manual_seed(seed))
        assert np.array_equal(got, expected)


def test_injector_adds_the_round_mask(tiny_voc, tmp_path):
    dm = BoxDataModule(root=str(tiny_voc), crop_size=32)
    dm.setup("fit")
    reader = dm.datasets["fit"].reader
    sample = reader[0]
    pseudo = np.zeros(sample["image"].shape[:2], np.uint8)
    pseudo[5:9, 5:9] = 2
    folder = tmp_path / "round_0"
    folder.mkdir()
    from lightning_wsss.io import write_label_png

    write_label_png(folder / f"{sample['id']}.png", pseudo)
    injector = PseudoMaskInjector(dm.prepare_train, folder)
    out = injector(sample)
    assert np.array_equal(out["mask"], pseudo) and len(out["boxes"]) == len(sample["boxes"])
    dataset = TransformedDataset(reader, dm.eval_transform(), injector)
    assert torch.equal(dataset[0]["mask"], torch.from_numpy(pseudo.astype(np.int64)))


def test_bad_options(tmp_path):
    with pytest.raises(ValueError, match="nothing to train"):
        BoxSupSegmenter(**TINY, out_dir=str(tmp_path), mask_loss_weight=0.0)
    with pytest.raises(ValueError, match="selection"):
        BoxSupSegmenter(**TINY, out_dir=str(tmp_path), selection="best")


# ----------------------------------------------------------------------------------------------- training runs
class Spy(BoxSupSegmenter):
    """Records what each training epoch trains on."""

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self.seen = getattr(self, "seen", [])
        self.seen.append(self._injector.mask_dir.name)

    def training_step(self, batch, batch_idx):
        self.batches = getattr(self, "batches", [])
        self.batches.append({k: batch[k] for k in ("mask", "boxes", "box_labels")})
        return super().training_step(batch, batch_idx)


def _boxes_union(reader, image_id):
    sample = reader[reader.index_of(image_id)]
    union = np.zeros(sample["image"].shape[:2], bool)
    for x0, y0, x1, y1 in sample["boxes"]:
        union[int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))] = True
    return union


@pytest.mark.filterwarnings("ignore:Be aware that when using")
def test_two_rounds_then_resume(tiny_voc, tmp_path, monkeypatch):
    torch.manual_seed(0)
    out = tmp_path / "boxsup"
    dm = BoxDataModule(root=str(tiny_voc), crop_size=32, batch_size=2)
    model = Spy(**TINY, out_dir=str(out), round_epochs=1, initializer="filled",
                candidate_crf_params={"iterations": 3})
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True)
    trainer = _trainer(max_epochs=2, callbacks=[ckpt], enable_checkpointing=True)
    trainer.fit(model, datamodule=dm)

    assert model.seen == ["round_0", "round_1"]  # epoch 1 trained on the masks rebuilt after epoch 0
    assert trainer.reload_dataloaders_every_n_epochs == 1
    for batch in model.batches:  # training batches carry the augmented pseudo mask
        assert batch["mask"].shape == (2, 32, 32) and set(batch["mask"].unique().tolist()) <= {0, 1, 2, 255}
    rounds = json.loads((out / "rounds.json").read_text())
    assert list(rounds) == ["round_0", "round_1"]
    assert rounds["round_0"] == pytest.approx(1.0)  # "filled" boxes are exactly the tiny_voc rectangles
    assert 0.0 <= rounds["round_1"] <= 1.0
    assert not (out / "round_2").exists()  # no round after the last epoch
    reader = dm.datasets["fit"].reader
    for image_id in reader.ids:
        for k in (0, 1):
            mask = read_label_png(out / f"round_{k}" / f"{image_id}.png")
            assert mask.shape == (48, 48)
            assert not mask[~_boxes_union(reader, image_id)].any()  # foreground never leaves the boxes
    assert not isinstance(dm.datasets["fit"].prepare, PseudoMaskInjector)  # removed at fit end

    # resume from the checkpoint for one more epoch: rounds 0 and 1 are reused, round 2 is built
    stamps = {p: os.stat(p).st_mtime_ns for p in out.glob("round_*/*.png")}

    def no_initializer(*args, **kwargs):
        raise AssertionError("round 0 must not be recomputed")

    monkeypatch.setattr(boxsup_module, "make_box_mask", no_initializer)
    resumed = Spy(**TINY, out_dir=str(out), round_epochs=1, candidate_crf_params={"iterations": 3})
    trainer = _trainer(max_epochs=3)
    trainer.fit(resumed, datamodule=BoxDataModule(root=str(tiny_voc), crop_size=32, batch_size=2),
                ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert resumed.seen == ["round_2"]
    assert {p: os.stat(p).st_mtime_ns for p in stamps} == stamps
    assert sorted(json.loads((out / "rounds.json").read_text())) == ["round_0", "round_1", "round_2"]
    assert len(list((out / "round_2").glob("*.png"))) == 4

    # a fresh run over the same out_dir rebuilds nothing
    monkeypatch.setattr(BoxSupSegmenter, "update_mask", no_initializer)
    rounds_stamp = os.stat(out / "rounds.json").st_mtime_ns
    again = Spy(**TINY, out_dir=str(out), round_epochs=1)
    _trainer(max_epochs=2).fit(again, datamodule=BoxDataModule(root=str(tiny_voc), crop_size=32, batch_size=2))
    assert again.seen == ["round_0", "round_1"]
    assert {p: os.stat(p).st_mtime_ns for p in stamps} == stamps
    assert os.stat(out / "rounds.json").st_mtime_ns == rounds_stamp  # recorded rounds are not rescored
    assert again.round_miou["round_0"] == pytest.approx(1.0)


def test_tightness_only_bbtp_mode(tiny_voc, tmp_path):
    torch.manual_seed(0)
    out = tmp_path / "bbtp"
    dm = BoxDataModule(root=str(tiny_voc), crop_size=32, batch_size=2)
    model = BoxSupSegmenter(**TINY, out_dir=str(out), mask_loss_weight=0.0, tightness_weight=1.0, pairwise_weight=0.5)
    trainer = _trainer(max_epochs=1)
    trainer.fit(model, datamodule=dm)
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics["train/loss"]) and float(metrics["train/tightness_loss"]) > 0
    assert torch.isfinite(metrics["train/pairwise_loss"])
    assert not out.exists()  # no pseudo masks in BBTP mode


def test_tightness_loss_adds_to_mask_loss(tiny_voc, tmp_path):
    dm = BoxDataModule(root=str(tiny_voc), crop_size=32, batch_size=2)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    batch["mask"] = torch.zeros(2, 32, 32, dtype=torch.long)
    logits = torch.randn(2, 4, 32, 32, requires_grad=True)
    from lightning_wsss.boxes import tightness_prior_loss
    from lightning_wsss.tasks.segmenter import masked_cross_entropy

    model = BoxSupSegmenter(**TINY, out_dir=str(tmp_path), mask_loss_weight=0.5, tightness_weight=2.0)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log outside a Trainer
        loss = model.loss(logits, batch)
    expected = 0.5 * masked_cross_entropy(logits, batch["mask"]) + 2.0 * tightness_prior_loss(
        logits, batch["boxes"], batch["box_labels"])
    assert torch.isclose(loss, expected) and torch.isfinite(loss)
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_rounds_reach_dataloader_worker_processes(tiny_voc, tmp_path):
    """With persistent DataLoader workers the first epoch must already train on round 0's masks.

    The poly schedule used to read ``estimated_stepping_batches`` in ``configure_optimizers``, which built
    and iterated the training DataLoader (starting its workers) before ``on_fit_start`` installed the mask
    reader: the workers then served samples without masks.
    """
    torch.manual_seed(0)
    out = tmp_path / "boxsup"
    dm = BoxDataModule(root=str(tiny_voc), crop_size=32, batch_size=2, num_workers=2)
    model = Spy(**TINY, out_dir=str(out), round_epochs=1, initializer="filled",
                candidate_crf_params={"iterations": 3})
    _trainer(max_epochs=2).fit(model, datamodule=dm)
    assert model.seen == ["round_0", "round_1"]
    assert all(batch["mask"].shape == (2, 32, 32) for batch in model.batches)


def test_boundary_band_known_answer_and_ignored_cross_entropy():
    from lightning_wsss.boxes import boundary_band, cross_entropy_cost

    square = np.zeros((12, 12), bool)
    square[4:8, 4:8] = True
    band0 = boundary_band([square], 0)
    # the morphological gradient: the square's outer ring of 4 pixels and its inner ring
    expected = np.zeros((12, 12), bool)
    expected[3:9, 3:9] = True
    expected[5:7, 5:7] = False
    assert np.array_equal(band0.numpy(), expected)
    band1 = boundary_band([square], 1)
    assert band1[2:10, 2:10].all() and band1.sum() == 64
    # the network agrees with neither candidate on the ring, and only the ring tells them apart
    log_probs = torch.log(torch.full((2, 12, 12), 0.5))
    log_probs[:, 5:7, 5:7] = torch.log(torch.tensor([0.01, 0.99]))[:, None, None]
    bigger = np.zeros_like(square)
    bigger[3:9, 3:9] = True
    box = (2, 2, 10, 10)
    costs = [cross_entropy_cost(log_probs, c, 1, box) for c in (square, bigger)]
    assert costs[0] == pytest.approx(costs[1])
    ignore = boundary_band([square, bigger], 1)
    assert cross_entropy_cost(log_probs, square, 1, box, ignore) == pytest.approx(0.0)


def test_boxsup_ignore_band_follows_the_output_stride(tmp_path):
    square = np.zeros((32, 32), bool)
    square[8:20, 8:20] = True
    model = BoxSupSegmenter(num_classes=3, out_dir=str(tmp_path), encoder="tu-test_resnet", output_stride=16,
                          decoder_channels=16)
    assert model.ignored_pixels([square]).sum() == boundary_band_count(square, 8)
    model.hparams.ce_ignore_band = None
    assert model.ignored_pixels([square]) is None
    with pytest.raises(ValueError, match="ce_ignore_band"):
        BoxSupSegmenter(num_classes=3, out_dir=str(tmp_path), encoder="tu-test_resnet", ce_ignore_band=-1)
    with pytest.raises(ValueError, match="ce_band_confidence"):
        BoxSupSegmenter(num_classes=3, out_dir=str(tmp_path), encoder="tu-test_resnet", ce_band_confidence=0.0)


def test_uncertain_band_keeps_the_pixels_where_the_network_is_sure(tmp_path):
    """ce_ignore_band: uncertain leaves out the auto band only where no class reaches ce_band_confidence: a blurry
    network (uncertain everywhere) loses the whole band, a sharp one (sure everywhere) none of it."""
    square = np.zeros((32, 32), bool)
    square[8:20, 8:20] = True
    model = BoxSupSegmenter(num_classes=3, out_dir=str(tmp_path), encoder="tu-test_resnet", output_stride=16,
                            decoder_channels=16, ce_ignore_band="uncertain", ce_band_confidence=0.9)
    band = model.ignored_pixels([square])  # no probabilities: the auto band
    assert band.sum() == boundary_band_count(square, 8)
    blurry = _probs(32, 32, [0.5, 0.3, 0.2])
    assert torch.equal(model.ignored_pixels([square], blurry), band)
    sharp = _probs(32, 32, [0.95, 0.03, 0.02])
    assert not model.ignored_pixels([square], sharp).any()
    mixed = blurry.copy()
    mixed[:, :, 16:] = sharp[:, :, 16:]  # sure on the right half only
    expected = band.clone()
    expected[:, 16:] = False
    assert torch.equal(model.ignored_pixels([square], mixed), expected)


def boundary_band_count(mask: np.ndarray, width: int) -> int:
    """Pixels within ``width`` (Chebyshev) of the mask's inner or outer boundary ring, by brute force."""
    height, wide = mask.shape
    ring = np.zeros_like(mask)
    for y in range(height):
        for x in range(wide):
            window = mask[max(0, y - 1): y + 2, max(0, x - 1): x + 2]
            ring[y, x] = window.any() and not window.all()
    ys, xs = np.nonzero(ring)
    count = 0
    for y in range(height):
        for x in range(wide):
            count += bool(np.any((np.abs(ys - y) <= width) & (np.abs(xs - x) <= width)))
    return count


def test_confirmed_replacement_must_also_win_with_every_pixel_counted(tmp_path):
    """ce_confirm_unbanded: a replacement the banded cost chose stands only if it also beats the current mask by
    replace_margin with every pixel of the box counted; otherwise the box keeps its mask."""
    box = (0.0, 0.0, 16.0, 16.0)
    current = np.zeros((16, 16), bool)
    current[:, :8] = True
    wider = np.zeros((16, 16), bool)
    wider[:, :12] = True
    model = BoxSupSegmenter(**TINY, out_dir=str(tmp_path), crf_candidate=False, replace_margin=0.1, ce_weight=1.0,
                            ce_confirm_unbanded=True)

    def log_probs_of(foreground):
        probs = np.zeros((4, 16, 16), np.float32)
        probs[1] = np.where(foreground, 0.99, 0.01)
        probs[0] = 1.0 - probs[1]
        return torch.from_numpy(np.log(probs.clip(1e-8, 1.0)))

    assert model.confirmed([current, wider], 1, 0, box, 1, log_probs_of(current)) == 0  # the network backs current
    assert model.confirmed([current, wider], 1, 0, box, 1, log_probs_of(wider)) == 1  # and here the replacement
    assert model.confirmed([current, wider], 0, 0, box, 1, log_probs_of(wider)) == 0  # no replacement: unchanged
    assert model.confirmed([current, wider], 1, None, box, 1, log_probs_of(current)) == 1  # nothing to keep
