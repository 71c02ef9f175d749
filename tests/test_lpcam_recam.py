"""LPCAM and ReCAM: their functional cores on known answers, and both tasks through fit / predict on tiny data."""

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import plain_cam_checkpoint, tiny_image_datamodule, tiny_trainer
from lightning_wsss.callbacks import ArtifactWriter
from lightning_wsss.cam.prototypes import (cluster_means, negative_ratios, prototype_map, select_prototypes,
                                           spherical_kmeans)
from lightning_wsss.tasks import CAMClassifier, LPCAMClassifier, ReCAMClassifier
from lightning_wsss.tasks.optim import poly_factor
from lightning_wsss.tasks.recam import background_masked_features, class_masked_features, recam_loss


# ---------------------------------------------------------------------------------------------- prototypes
def test_spherical_kmeans_separates_directions_and_is_deterministic():
    generator = torch.Generator().manual_seed(0)
    a = torch.tensor([1.0, 0.0, 0.0]) + 0.05 * torch.randn(40, 3, generator=generator)
    b = torch.tensor([0.0, 1.0, 0.0]) + 0.05 * torch.randn(30, 3, generator=generator)
    points = torch.cat([a * 5, b * 0.5])  # different norms: cosine clustering ignores them
    centres, assignment = spherical_kmeans(points, 2, seed=3)
    assert centres.shape == (2, 3)
    assert len(set(assignment[:40].tolist())) == 1 and len(set(assignment[40:].tolist())) == 1
    assert assignment[0] != assignment[40]
    again, _ = spherical_kmeans(points, 2, seed=3)
    assert torch.equal(centres, again)
    means = cluster_means(points, assignment, 2)
    assert torch.allclose(means[assignment[0]], points[:40].mean(0))


def test_select_prototypes_by_softmax_probability():
    weight = torch.eye(3)  # class c's logit = feature c
    means = torch.tensor([[9.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 9.0]])
    assert torch.equal(select_prototypes(means, weight, 0, 0.9), means[:1])  # p = 0.9998
    context = select_prototypes(means, weight, 0, 0.05, 0.9)  # p = e / (2e + 1) = 0.42 for the second
    assert torch.equal(context, means[1:2])


def test_negative_ratios_by_hand():
    """Shares of the nearest mean: positives 3/4 and 1/4, negatives 0 and 1; a mean no positive is nearest to: inf."""
    means = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    positives = torch.tensor([[2.0, 0.1, 0.0], [1.0, 0.0, 0.2], [3.0, 0.2, 0.1], [0.1, 1.0, 0.0]])
    negatives = torch.tensor([[0.0, 5.0, 0.1], [0.2, 1.0, 0.0], [0.0, 0.1, 1.0]])
    ratios = negative_ratios(means, positives, negatives)
    assert ratios[0] == 0.0 and ratios[1] == pytest.approx((2 / 3) / (1 / 4)) and torch.isinf(ratios[2])
    assert torch.equal(negative_ratios(means[:2], positives, negatives[:0]), torch.zeros(2))  # no negatives


def test_lpcam_negatives_rule_keeps_the_clusters_the_other_images_lack():
    """Object clusters e0 (only in the class's images) and e1 (in the others too), context cluster e2: e0 is the
    prototype; e1 and e2, as frequent without the class as with it, are context prototypes."""
    model = LPCAMClassifier(3, backbone="test_resnet", prototype_rule="negatives")
    e = torch.eye(3)
    objects, context = e[:2], e[2:]
    parts = {"object": [e[0].repeat(2, 1), e[1].repeat(2, 1)], "context": [e[2].repeat(2, 1)]}
    no_class_1 = torch.tensor([False, True])
    pool = [(torch.stack([e[1], e[2]]), no_class_1), (torch.stack([e[1], e[2]]), no_class_1),
            (e[0].repeat(2, 1), torch.tensor([True, False]))]  # an image with the class: not a negative
    chosen, around = model.select_by_negatives(objects, context, parts, pool, class_id=1)
    assert torch.equal(chosen, e[:1]) and torch.equal(around, e[1:])
    # no image without the class (every image holds it): every object cluster is a prototype, no context
    chosen, around = model.select_by_negatives(objects, context, parts, pool[2:], class_id=1)
    assert torch.equal(chosen, objects) and around.shape[0] == 0
    # context_from: other_images: the context prototypes are the clusters of the other images' cells (e1, e2)
    model.hparams.context_from, model.hparams.num_clusters = "other_images", 2
    chosen, around = model.select_by_negatives(objects, context, parts, pool, class_id=1)
    assert torch.equal(chosen, e[:1])
    assert sorted(map(tuple, around.tolist())) == sorted(map(tuple, e[1:].tolist()))
    with pytest.raises(ValueError, match="context_from"):
        LPCAMClassifier(3, backbone="test_resnet", context_from="everywhere")
    with pytest.raises(ValueError, match="prototype_rule"):
        LPCAMClassifier(3, backbone="test_resnet", prototype_rule="softmax")
    with pytest.raises(ValueError, match="negative_ratio"):
        LPCAMClassifier(3, backbone="test_resnet", prototype_rule="negatives", negative_ratio=1.0)


def test_prototype_map_is_similarity_minus_context():
    features = torch.zeros(1, 2, 1, 3)
    features[0, :, 0, 0] = torch.tensor([1.0, 0.0])  # like the prototype
    features[0, :, 0, 1] = torch.tensor([0.0, 1.0])  # like the context
    features[0, :, 0, 2] = torch.tensor([1.0, 1.0])  # half and half
    maps = prototype_map(features, torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 3.0]]))
    assert torch.allclose(maps[0, 0], torch.tensor([1.0, 0.0, 0.0]), atol=1e-6)
    no_context = prototype_map(features, torch.tensor([[2.0, 0.0]]))
    assert torch.allclose(no_context[0, 0], torch.tensor([1.0, 0.0, 2 ** -0.5]), atol=1e-6)


def test_prototype_map_nearest_takes_the_most_similar_prototype_and_context():
    """Two prototypes (x, y) and one context (z): the mean halves a pixel that matches one prototype exactly, the
    nearest score does not; a pixel closer to the context than to every prototype scores 0."""
    features = torch.zeros(1, 3, 1, 3)
    features[0, :, 0, 0] = torch.tensor([1.0, 0.0, 0.0])  # prototype x
    features[0, :, 0, 1] = torch.tensor([1.0, 0.0, 2.0])  # mostly context
    features[0, :, 0, 2] = torch.tensor([1.0, 1.0, 0.0])  # between the two prototypes
    prototypes, context = torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0]]), torch.tensor([[0.0, 0.0, 1.0]])
    nearest = prototype_map(features, prototypes, context, score="nearest")[0, 0]
    assert torch.allclose(nearest, torch.tensor([1.0, 0.0, 2 ** -0.5]), atol=1e-6)
    mean = prototype_map(features, prototypes, context)[0, 0]
    assert torch.allclose(mean, torch.tensor([0.5, 0.0, 2 ** -0.5]), atol=1e-6)
    with pytest.raises(ValueError, match="score"):
        prototype_map(features, prototypes, context, score="median")


# ---------------------------------------------------------------------------------------------- ReCAM core
def test_class_masked_features_and_recam_loss_by_hand():
    features = torch.tensor([[[[2.0, 4.0]], [[1.0, 0.0]]]])  # [1, D=2, 1, 2]
    cams = torch.tensor([[[[1.0, 0.0]], [[1.0, 3.0]]]])  # class 0 on pixel 0; class 1 peaks on pixel 1
    masked = class_masked_features(features, cams)
    assert torch.allclose(masked[0, 0], torch.tensor([1.0, 0.5]), atol=1e-4)  # (2, 1) * 1 / 2 pixels
    expected_1 = (torch.tensor([2.0, 1.0]) / 3 + torch.tensor([4.0, 0.0])) / 2
    assert torch.allclose(masked[0, 1], expected_1, atol=1e-4)
    weight = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([[1.0, 1.0]])
    loss = recam_loss(masked, labels, weight)
    by_hand = (F.cross_entropy((masked[0, 0] @ weight.T)[None], torch.tensor([0]))
               + F.cross_entropy((masked[0, 1] @ weight.T)[None], torch.tensor([1]))) / 2
    assert torch.allclose(loss, by_hand)
    assert float(recam_loss(masked, torch.zeros(1, 2), weight)) == 0.0



def test_recam_loss_with_the_background_by_hand():
    """Two pixels, class 0 present with its CAM on pixel 0: the background map is 0 there and 1 on pixel 1, its
    feature the mean of pixel 1's over the two pixels; the softmax runs over the two classes and the background,
    and the image's loss is the mean of its class pair and its background pair."""
    features = torch.tensor([[[[2.0, 4.0]], [[1.0, 0.0]]]])  # [1, D=2, 1, 2]
    cams = torch.tensor([[[[1.0, 0.0]], [[0.5, 3.0]]]])  # class 1 (absent) must not shape the background
    labels = torch.tensor([[1.0, 0.0]])
    background = background_masked_features(features, cams, labels)
    assert torch.allclose(background[0], torch.tensor([2.0, 0.0]), atol=1e-4)  # pixel 1's (4, 0) / 2 pixels
    masked = class_masked_features(features, cams)
    weight, row = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0.5, 0.5])
    rows = torch.cat([weight, row[None]])
    by_hand = (F.cross_entropy((masked[0, 0] @ rows.T)[None], torch.tensor([0]))
               + F.cross_entropy((background[0] @ rows.T)[None], torch.tensor([2]))) / 2
    assert torch.allclose(recam_loss(masked, labels, weight, background, row), by_hand)
    # an image without labels still has its background pair
    alone = recam_loss(masked, torch.zeros(1, 2), weight, background_masked_features(features, cams, torch.zeros(1, 2)), row)
    assert float(alone) > 0.0


# ---------------------------------------------------------------------------------------------- tasks


def test_recam_trains_both_heads_and_uses_its_own_for_cams(tiny_voc):
    torch.manual_seed(0)
    model = ReCAMClassifier(4, backbone="test_resnet", lr=0.05, cam_scales=[1.0], cam_flip=False)
    before_head = model.net.head.weight.detach().clone()
    before_recam = model.net.recam_head.weight.detach().clone()
    tiny_trainer(max_epochs=2, limit_val_batches=0).fit(model, tiny_image_datamodule(tiny_voc))
    assert not torch.equal(model.net.head.weight, before_head) and not torch.equal(model.net.recam_head.weight, before_recam)
    features = torch.randn(1, model.net.head.in_channels, 3, 3)
    assert torch.allclose(model.raw_cams(features), F.relu(F.conv2d(features, model.net.recam_head.weight)))
    model.hparams.cams_from_recam_head = False
    assert torch.allclose(model.raw_cams(features), F.relu(F.conv2d(features, model.net.head.weight)))
    model.hparams.cams_from_recam_head = True
    # the SCE term is in the loss from recam_start_epoch on, not before
    batch = {"labels": torch.tensor([[1.0, 0.0, 0.0]]), "id": ["a"]}
    model.hparams.recam_start_epoch = 99
    plain = model.training_loss(features, batch)
    assert torch.allclose(plain, CAMClassifier.training_loss(model, features, batch))
    model.hparams.recam_start_epoch = 0
    assert float(model.training_loss(features, batch)) > float(plain)



def test_recam_background_row_trains_and_makes_no_cam(tiny_voc):
    torch.manual_seed(0)
    model = ReCAMClassifier(4, backbone="test_resnet", lr=0.05, cam_scales=[1.0], cam_flip=False, recam_background=True)
    assert float(model.net.recam_background_row.abs().sum()) == 0.0
    assert any(p is model.net.recam_background_row for p in model.net.head_parameters())
    tiny_trainer(max_epochs=2, limit_val_batches=0).fit(model, tiny_image_datamodule(tiny_voc))
    assert float(model.net.recam_background_row.abs().sum()) > 0.0
    assert model.cam_weight().shape == model.net.recam_head.weight.flatten(1).shape  # the classes' rows only
    assert ReCAMClassifier(4, backbone="test_resnet").net.recam_background_row is None

def test_lpcam_loads_a_plain_checkpoint_and_predicts_prototype_maps(tiny_voc, tmp_path):
    plain, ckpt = plain_cam_checkpoint(tiny_voc, tmp_path)
    model = LPCAMClassifier.load_from_checkpoint(ckpt, map_location="cpu", weights_only=False, num_clusters=3)
    assert torch.equal(model.net.head.weight, plain.net.head.weight)
    writer = ArtifactWriter(str(tmp_path / "pred"))
    L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, inference_mode=False,
              callbacks=[writer]).predict(model, tiny_image_datamodule(tiny_voc), return_predictions=False)
    assert set(model.prototypes) == {1, 2}  # red in every training image, green in the odd ones
    assert all(1 <= v.shape[0] <= 3 for v in model.prototypes.values())
    data = np.load(tmp_path / "pred" / "cams" / "img_1.npz")
    assert data["cams"].shape == (2, 48, 48) and list(data["keys"]) == [1, 2]
    assert 0.0 <= data["cams"].min() and abs(float(data["cams"].max()) - 1.0) < 1e-2
    # the maps are the prototype similarities, not the classifier-row projections of the plain CAM
    images = torch.randn(1, 3, 48, 48)
    ids = torch.tensor([[1, 2]])
    assert not torch.allclose(model.compute_cams(images, ids), plain.compute_cams(images, ids), atol=1e-3)


def test_lpcam_negatives_rule_predicts_from_a_pool_of_every_image(tiny_voc, tmp_path):
    """The negatives rule through predict: one pool cell set per training image, prototypes for both classes."""
    _, ckpt = plain_cam_checkpoint(tiny_voc, tmp_path)
    model = LPCAMClassifier.load_from_checkpoint(ckpt, map_location="cpu", weights_only=False, num_clusters=3,
                                                 prototype_rule="negatives", negatives_per_image=4)
    data = tiny_image_datamodule(tiny_voc)
    data.setup("predict")
    pool = []
    model.collect_features(data.predict_dataloader(), pool)
    assert len(pool) == len(data.predict_dataloader().dataset) and all(cells.shape[0] <= 4 for cells, _ in pool)
    writer = ArtifactWriter(str(tmp_path / "pred"))
    L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, inference_mode=False,
              callbacks=[writer]).predict(model, data, return_predictions=False)
    assert set(model.prototypes) == {1, 2} and all(v.shape[0] >= 1 for v in model.prototypes.values())
    assert np.load(tmp_path / "pred" / "cams" / "img_1.npz")["cams"].shape == (2, 48, 48)


def test_lpcam_max_cells_per_image_bounds_what_each_image_keeps(tiny_voc, tmp_path):
    """max_cells_per_image keeps at most that many object and context cells per image and class (rows of the
    uncapped ones), and leaves the collection unchanged when unset; a cap below 1 is refused."""
    _, ckpt = plain_cam_checkpoint(tiny_voc, tmp_path)
    data = tiny_image_datamodule(tiny_voc)
    data.setup("predict")
    full = LPCAMClassifier.load_from_checkpoint(ckpt, map_location="cpu", weights_only=False, num_clusters=3)
    capped = LPCAMClassifier.load_from_checkpoint(ckpt, map_location="cpu", weights_only=False, num_clusters=3,
                                                  max_cells_per_image=2)
    every = full.collect_features(data.predict_dataloader())
    bounded = capped.collect_features(data.predict_dataloader())
    assert set(every) == set(bounded) == {1, 2}
    largest = max(cells.shape[0] for parts in every.values() for kind in parts.values() for cells in kind)
    assert largest > 2  # the cap binds on this data
    for class_id, parts in every.items():
        for kind, cells_per_image in parts.items():
            for cells, kept in zip(cells_per_image, bounded[class_id][kind]):
                assert kept.shape[0] == min(cells.shape[0], 2)
                assert all(any(torch.equal(row, other) for other in cells) for row in kept)
    again = LPCAMClassifier.load_from_checkpoint(ckpt, map_location="cpu", weights_only=False, num_clusters=3)
    assert all(torch.equal(a, b) for c in every for k in every[c]
               for a, b in zip(every[c][k], again.collect_features(data.predict_dataloader())[c][k]))
    with pytest.raises(ValueError, match="max_cells_per_image"):
        LPCAMClassifier(4, backbone="test_resnet", max_cells_per_image=0)


def test_lpcam_clusters_the_imagenet_hypercolumn(tiny_voc):
    """cluster_features: imagenet clusters and scores EfficientNet-Lite0's packaged ImageNet levels 2-4 (40 + 112 +
    320 channels on the stride-8 grid), with the negatives rule; the maps are prototype_map on those features."""
    torch.manual_seed(0)
    model = LPCAMClassifier(4, backbone="efficientnet_lite0", weights=None, output_stride=16, cam_scales=[1.0],
                            cam_flip=False, num_clusters=3, prototype_rule="negatives", negatives_per_image=4,
                            cluster_features="imagenet", prototype_score="nearest").eval()
    data = tiny_image_datamodule(tiny_voc)
    data.setup("predict")
    model.build_prototypes(data.predict_dataloader())
    assert set(model.prototypes) == {1, 2} and all(v.shape[1] == 40 + 112 + 320 for v in model.prototypes.values())
    images = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        features = model.cluster_feature_map(images)
        assert features.shape == (1, 472, 6, 6)
        raw = prototype_map(features, model.prototypes[2], model.context.get(2), score="nearest")[:, None]
        expected = F.interpolate(raw, size=(48, 48), mode="bilinear", align_corners=False)[0, 0]
    maps = model.compute_cams(images, torch.tensor([[2]]))
    assert torch.allclose(maps[0, 0], expected / (expected.max() + 1e-5), atol=1e-4)
    assert not any("hypercolumn" in key for key in model.state_dict())
    with pytest.raises(ValueError, match="prototype_rule: negatives"):
        LPCAMClassifier(4, backbone="test_resnet", cluster_features="imagenet")
    with pytest.raises(ValueError, match="cluster_features"):
        LPCAMClassifier(4, backbone="test_resnet", cluster_features="dino")
    with pytest.raises(ValueError, match="prototype_score"):
        LPCAMClassifier(4, backbone="test_resnet", prototype_score="median")
    model.hparams.prototype_rule = "classifier"  # set after construction (as tools/cam_variants.py does)
    with pytest.raises(ValueError, match="prototype_rule: negatives"):
        model.build_prototypes(data.predict_dataloader())


def test_recam_before_its_start_epoch_is_the_plain_classifier(tiny_voc):
    """The ReCAM head starts as a copy of the classifier's head (no random draw), so until recam_start_epoch the
    fit is the plain classifier's bit for bit: ReCAM fine-tunes the same classifier."""
    weights = []
    for cls, extra in ((CAMClassifier, {}), (ReCAMClassifier, {"recam_start_epoch": 5}),
                       (ReCAMClassifier, {"recam_start_epoch": 5, "recam_cam": "product"})):
        L.seed_everything(0)
        model = cls(4, backbone="test_resnet", lr=0.05, **extra)
        initial = model.net.head.weight.detach().clone()
        tiny_trainer(max_epochs=2, limit_val_batches=0).fit(model, tiny_image_datamodule(tiny_voc))
        weights.append(model.net.head.weight.detach().clone())
        if extra.get("recam_cam") == "product":  # its own draw, untouched before the start epoch
            assert torch.equal(model.net.recam_head.weight, ReCAMClassifier(4, backbone="test_resnet", **extra).net.recam_head.weight)
        elif cls is ReCAMClassifier:  # a copy of the initial head, untouched before the start epoch
            assert torch.equal(model.net.recam_head.weight, initial) and not torch.equal(initial, weights[-1])
    assert torch.equal(weights[0], weights[1]) and torch.equal(weights[0], weights[2])


def test_recam_product_cams_are_recam_rows_times_classifier_rows():
    """recam_cam: product (ReCAM's code): the CAM weights are the ReCAM head's rows times the classifier's, element
    by element; the ReCAM head is a seeded draw of its own, not a copy, within a conv layer's default bound."""
    model = ReCAMClassifier(4, backbone="test_resnet", recam_cam="product")
    recam, head = model.net.recam_head.weight, model.net.head.weight
    assert not torch.equal(recam, head) and float(recam.abs().max()) <= 1.0 / recam[0].numel() ** 0.5
    assert torch.equal(model.cam_weight(), (recam * head).flatten(1))
    features = torch.randn(1, recam.shape[1], 5, 6)
    assert torch.allclose(model.raw_cams(features), F.relu(F.conv2d(features, recam * head)))
    with pytest.raises(ValueError, match="recam_cam"):
        ReCAMClassifier(4, backbone="test_resnet", recam_cam="sum")


def test_restarted_poly_factor_is_two_poly_schedules():
    factor = poly_factor(1.0, lambda: 12, lambda: 4, 0.1)
    assert factor(0) == 1.0  # before the step counts are known
    assert [round(factor(s), 6) for s in range(1, 13)] == [0.75, 0.5, 0.25, 0.1, 0.0875, 0.075, 0.0625, 0.05,
                                                           0.0375, 0.025, 0.0125, 0.0]
    from_zero = poly_factor(1.0, lambda: 10, 0, 0.5)  # a start of 0: the fine-tuning schedule from step 0
    assert from_zero(0) == 0.5 and from_zero(5) == pytest.approx(0.25)


class _RateLog(L.Callback):
    """The optimiser's learning rates at every training step."""

    def __init__(self):
        self.rates = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.rates.append([group["lr"] for group in trainer.optimizers[0].param_groups])


def test_recam_fine_tunes_a_plain_schedule_at_its_own_rate(tiny_voc):
    """recam_lr_mult: up to recam_start_epoch the rates are those of a plain classifier trained for those epochs
    only, bit for bit; from it a fresh poly schedule at recam_lr_mult times the base rates (ReCAM's fine-tuning)."""
    logs = {}
    for name, cls, epochs, extra in (("plain", CAMClassifier, 1, {}),
                                     ("recam", ReCAMClassifier, 2, {"recam_start_epoch": 1, "recam_lr_mult": 0.1})):
        L.seed_everything(0)
        model = cls(4, backbone="test_resnet", lr=0.05, poly_power=1.0, **extra)
        logs[name] = _RateLog()
        tiny_trainer(max_epochs=epochs, limit_val_batches=0, callbacks=[logs[name]]).fit(model, tiny_image_datamodule(tiny_voc))
    plain, recam = np.array(logs["plain"].rates), np.array(logs["recam"].rates)
    n = len(plain)
    assert n >= 2 and recam.shape == (2 * n, 2)
    np.testing.assert_allclose(recam[:n], plain)
    base = plain[0]  # [backbone lr, head lr] at step 0
    expected = 0.1 * base[None] * (1.0 - np.arange(n) / n)[:, None]
    np.testing.assert_allclose(recam[n:], expected, rtol=1e-6)
    with pytest.raises(ValueError, match="recam_lr_mult"):
        ReCAMClassifier(4, backbone="test_resnet", recam_lr_mult=0.0)


def test_pool_class_maps_known_answers():
    from lightning_wsss.models.cam import pool_class_maps

    maps = torch.tensor([[[[0.0, 1.0], [2.0, 5.0]]]])  # one class, 4 cells
    assert float(pool_class_maps(maps, "gap")) == pytest.approx(2.0)
    assert float(pool_class_maps(maps, "gmp")) == pytest.approx(5.0)
    assert float(pool_class_maps(maps, "topk", 0.5)) == pytest.approx(3.5)  # mean of the top 2 cells
    lse = float(pool_class_maps(maps, "lse", 1.0))
    assert lse == pytest.approx(float(torch.log(torch.exp(maps).mean())))
    assert 2.0 < lse < 5.0 and float(pool_class_maps(maps, "lse", 50.0)) == pytest.approx(5.0 - np.log(4) / 50, abs=1e-4)
    with pytest.raises(ValueError):
        CAMClassifier(3, backbone="test_resnet", pooling="median")
    # gap through the pooled maps equals the head on pooled features (the head is linear)
    model = CAMClassifier(3, backbone="test_resnet")
    features = torch.randn(2, model.net.head.in_channels, 3, 4)
    assert torch.allclose(model.classify(features), pool_class_maps(model.net.head(features), "gap"), atol=1e-5)
