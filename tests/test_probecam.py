"""ProbeCAM: the cell-probe core on known answers, and the task through predict on tiny data."""

import re

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import plain_cam_checkpoint, tiny_image_datamodule, tiny_trainer
from lightning_wsss.callbacks import ArtifactWriter
from lightning_wsss.cam.functional import upsample
from lightning_wsss.cam.cell_probe import (cells_per_image, cell_targets, fit_cell_probes, fit_image_label_probes, hypercolumn,
                                           parse_pooling, pool_cells, probe_logits, probe_maps, valid_cells)
from lightning_wsss.tasks import CAMClassifier, ProbeCAMClassifier


# ---------------------------------------------------------------------------------------------- core
def test_hypercolumn_normalises_each_level_and_resizes_to_the_grid():
    fine = torch.zeros(1, 2, 4, 4)
    fine[0, 0] = 3.0  # unit vector (1, 0) after normalisation
    coarse = torch.zeros(1, 1, 2, 2)
    coarse[0, 0] = 10.0  # (1,) after normalisation, whatever its scale
    column = hypercolumn([fine, coarse], (4, 4))
    assert column.shape == (1, 3, 4, 4)
    assert torch.allclose(column[0, :, 1, 2], torch.tensor([1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="at least one"):
        hypercolumn([], (4, 4))


def test_valid_cells_of_a_padded_batch():
    # a batch padded to 32 x 32; the second image is 16 px high and 24 px wide; a 4 x 4 grid (8 px cells)
    inside = valid_cells(torch.tensor([[32, 32], [16, 24]]), (32, 32), (4, 4))
    assert inside[0].all()
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[:2, :3] = True
    assert torch.equal(inside[1].view(4, 4), expected)


def test_cell_targets_are_class_shares_per_cell():
    mask = torch.zeros(4, 4, dtype=torch.long)
    mask[0, 0] = 1  # a quarter of the top-left 2x2 cell
    mask[2:, 2:] = 2  # the whole bottom-right cell
    mask[0, 3] = 255  # ignored: no class
    shares = cell_targets(mask, 3, (2, 2))
    assert torch.allclose(shares[0], torch.tensor([[0.25, 0.0], [0.0, 0.0]]))
    assert torch.allclose(shares[1], torch.tensor([[0.0, 0.0], [0.0, 1.0]]))


def test_certain_negatives_teach_the_object_not_its_context():
    """The failure ProbeCAM targets, in two feature dimensions: 'road' cells are in every image, 'car' cells only in
    the car images, and the car's CAM seeds cover the road as much as the car. Negatives from the images without a
    car are road, so the probe scores car cells high and road cells low."""
    generator = torch.Generator().manual_seed(0)
    road, car = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    noise = lambda n: 0.05 * torch.randn(n, 2, generator=generator)
    features = torch.cat([road + noise(60), car + noise(20), road + noise(80)])  # car images: 80 cells, others 80
    in_car_image = torch.cat([torch.ones(80), torch.zeros(80)]).bool()[:, None]
    seeds = torch.cat([torch.rand(60, generator=generator) > 0.3, torch.ones(20), torch.zeros(80)]).bool()[:, None]
    weight, bias = fit_cell_probes(features, in_car_image & seeds, ~in_car_image, steps=300, lr=0.05)
    maps = probe_maps(features.T.reshape(1, 2, 160, 1), weight, bias)[0, 0, :, 0]
    # the car's cells near 1; its seeds' road cells below 0.6 (the seeds hold twice as much road as car), the
    # negative images' road lower still
    assert float(maps[60:80].min()) > 0.9 and float(maps[:60].max()) < 0.6 and float(maps[80:].max()) < 0.6
    # deterministic; a class without negatives (in every image) is left flat
    again = fit_cell_probes(features, in_car_image & seeds, ~in_car_image, steps=300, lr=0.05)
    assert torch.equal(weight, again[0]) and torch.equal(bias, again[1])
    flat_w, flat_b = fit_cell_probes(features, in_car_image & seeds, torch.zeros_like(in_car_image), steps=10)
    assert float(flat_w.abs().sum()) == 0.0 and float(flat_b.abs().sum()) == 0.0
    with pytest.raises(ValueError, match="expected"):
        fit_cell_probes(features, in_car_image, ~in_car_image[:10])


def test_pool_cells_ignores_padding():
    logits = torch.tensor([[[1.0, 2.0, 3.0, 100.0]]])  # one image, one class, the last cell is padding
    valid = torch.tensor([[True, True, True, False]])
    assert torch.allclose(pool_cells(logits, valid, "gap"), torch.tensor([[2.0]]))
    assert torch.allclose(pool_cells(logits, valid, "max"), torch.tensor([[3.0]]))
    assert torch.allclose(pool_cells(logits, valid, "topk:0.7"), torch.tensor([[2.5]]))  # k = int(0.7 * 3) = 2
    expected = torch.log(torch.exp(torch.tensor([2.0, 4.0, 6.0])).sum() / 3) / 2
    assert torch.allclose(pool_cells(logits, valid, "lse:2"), expected.view(1, 1))
    assert parse_pooling("topk:0.05") == ("topk", 0.05)
    for bad in ("mean", "topk", "topk:0", "topk:1.5", "lse:-1", "max:3"):
        with pytest.raises(ValueError, match="pooling is"):
            parse_pooling(bad)


def test_image_label_probes_find_the_cells_that_make_the_label():
    """Multiple-instance probes from image labels only: 'road' cells are in every image, 'car' cells in the car
    images; a peak pooling with cell negatives scores car cells high and road cells low; padding cells, however
    large, change nothing."""
    generator = torch.Generator().manual_seed(0)
    road, car = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    images = []
    for index in range(20):
        cells = road.repeat(10, 1)
        if index < 10:
            cells[:2] = car  # the car images: two car cells among ten
        images.append(cells + 0.05 * torch.randn(10, 2, generator=generator))
    features = torch.stack(images).transpose(1, 2)  # [20, 2, 10]
    labels = (torch.arange(20) < 10)[:, None]
    valid = torch.ones(20, 10, dtype=torch.bool)
    weight, bias = fit_image_label_probes(features, valid, labels, "topk:0.2", steps=300, lr=0.05)
    maps = probe_maps(features[:, :, :, None], weight, bias)[:, 0, :, 0]  # [20, 10]
    assert float(maps[:10, :2].min()) > 0.8 and float(maps[:, 2:].max()) < 0.2
    padded = torch.cat([features, torch.full((20, 2, 3), 50.0)], dim=2)
    again = fit_image_label_probes(padded, torch.cat([valid, torch.zeros(20, 3, dtype=torch.bool)], 1), labels,
                                   "topk:0.2", steps=300, lr=0.05)
    assert torch.allclose(again[0], weight, atol=1e-5) and torch.allclose(again[1], bias, atol=1e-5)
    with pytest.raises(ValueError, match="expected"):
        fit_image_label_probes(features, valid[:, :5], labels)


def test_probe_maps_are_the_sigmoid_of_the_linear_probe():
    features = torch.randn(2, 3, 4, 5)
    weight, bias = torch.randn(2, 3), torch.randn(2)
    expected = torch.sigmoid(F.conv2d(features, weight[:, :, None, None], bias))
    assert torch.allclose(probe_maps(features, weight, bias), expected, atol=1e-6)


# ---------------------------------------------------------------------------------------------- task


@pytest.mark.parametrize("positives", ["cam_seeds", "image_labels"])
def test_probecam_loads_a_plain_checkpoint_and_predicts_probe_maps(tiny_voc, tmp_path, positives):
    plain, ckpt = plain_cam_checkpoint(tiny_voc, tmp_path)
    model = ProbeCAMClassifier.load_from_checkpoint(ckpt, map_location="cpu", weights_only=False,
                                                    probe_features="classifier", probe_levels=[1, 2],
                                                    seed_threshold=0.3, probe_steps=20, probe_positives=positives)
    assert torch.equal(model.net.head.weight, plain.net.head.weight)
    assert set(model.state_dict()) == set(plain.state_dict())  # the probe backbone is not a submodule
    writer = ArtifactWriter(str(tmp_path / "pred"))
    L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, inference_mode=False,
              callbacks=[writer]).predict(model, tiny_image_datamodule(tiny_voc), return_predictions=False)
    assert model.probe_weight.shape[0] == 3 and model.probe_weight.shape[1] == model.hypercolumn_features(
        torch.zeros(1, 3, 32, 32)).shape[1]
    data = np.load(tmp_path / "pred" / "cams" / "img_1.npz")
    assert data["cams"].shape == (2, 48, 48) and list(data["keys"]) == [1, 2]
    assert 0.0 <= data["cams"].min() and abs(float(data["cams"].max()) - 1.0) < 1e-2
    images = torch.randn(1, 3, 48, 48)
    ids = torch.tensor([[1, 2, -1]])
    maps = model.compute_cams(images, ids)
    assert float(maps[0, 2].abs().max()) == 0.0  # padding gives a zero map
    assert not torch.allclose(maps[:, :2], plain.compute_cams(images, ids[:, :2]), atol=1e-3)


def test_cells_per_image_pads_each_images_cells_in_order():
    features = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    grouped, valid, labels = cells_per_image(features, torch.tensor([7, 2, 7, 7]),
                                             torch.tensor([[True], [False], [True], [True]]))
    assert torch.equal(grouped[:, 0], torch.tensor([[2.0, 0.0, 0.0], [1.0, 3.0, 4.0]]))  # image 2 first, then 7
    assert torch.equal(valid, torch.tensor([[True, False, False], [True, True, True]]))
    assert torch.equal(labels, torch.tensor([[False], [True]]))


def test_image_label_positives_regroup_the_kept_cells_per_image():
    """probe_positives: image_labels fits from the cells collect_cells kept (a subset, in reading order, some images
    with fewer cells, an image absent): regrouped per image, the fit is the one on the images' own cell sets."""
    generator = torch.Generator().manual_seed(0)
    per_image = {0: 5, 2: 3, 3: 4}  # image 1 lost all its cells to the subset
    features = {i: torch.randn(n, 6, generator=generator) for i, n in per_image.items()}
    labels = {0: [True, False], 2: [False, True], 3: [True, True]}
    order = [(i, c) for i, n in per_image.items() for c in range(n)]
    order = [order[j] for j in torch.randperm(len(order), generator=generator).tolist()]
    cells = {"features": torch.stack([features[i][c] for i, c in order]),
             "image": torch.tensor([i for i, _ in order]),
             "labels": torch.tensor([labels[i] for i, _ in order])}
    model = ProbeCAMClassifier(3, backbone="test_resnet", probe_positives="image_labels", probe_pooling="max",
                               probe_steps=30)
    weight, bias = model._fit_from_image_labels(cells)
    stacked = torch.zeros(3, 6, 5)
    valid = torch.zeros(3, 5, dtype=torch.bool)
    for slot, (image, count) in enumerate(per_image.items()):
        stacked[slot, :, :count] = features[image].T
        valid[slot, :count] = True
    expected = fit_image_label_probes(stacked, valid, torch.tensor(list(labels.values())), "max", steps=30)
    # the cells of an image sit in a different order; max pooling and the cell negatives do not see the order
    assert torch.allclose(weight, expected[0], atol=1e-5) and torch.allclose(bias, expected[1], atol=1e-5)


def test_probecam_arguments_are_checked():
    with pytest.raises(ValueError, match="probe_features"):
        ProbeCAMClassifier(4, backbone="test_resnet", probe_features="dino")
    with pytest.raises(ValueError, match="seed_threshold"):
        ProbeCAMClassifier(4, backbone="test_resnet", seed_threshold=1.5)
    with pytest.raises(ValueError, match="probe_output"):
        ProbeCAMClassifier(4, backbone="test_resnet", probe_output="softmax")
    with pytest.raises(ValueError, match="rounds"):
        ProbeCAMClassifier(4, backbone="test_resnet", rounds=0)
    with pytest.raises(ValueError, match="probe_positives"):
        ProbeCAMClassifier(4, backbone="test_resnet", probe_positives="boxes")
    with pytest.raises(ValueError, match="pooling is"):
        ProbeCAMClassifier(4, backbone="test_resnet", probe_positives="image_labels", probe_pooling="median")
    model = ProbeCAMClassifier(4, backbone="test_resnet", probe_features="classifier", probe_levels=[7])
    with pytest.raises(ValueError, match="probe_levels"):
        model.hypercolumn_features(torch.zeros(1, 3, 32, 32))
    with pytest.raises(RuntimeError, match="build_probes"):
        model.compute_cams(torch.zeros(1, 3, 32, 32), torch.tensor([[1]]))


def test_probecam_imagenet_hypercolumn_of_efficientnet_lite0():
    """The default feature source: the packaged ImageNet EfficientNet-Lite0 at levels 2-4 (40 + 112 + 320 channels)
    on the stride-8 grid, built once and kept out of the state dict."""
    model = ProbeCAMClassifier(4, backbone="efficientnet_lite0", weights=None, output_stride=16)
    features = model.hypercolumn_features(torch.zeros(1, 3, 64, 64))
    assert features.shape == (1, 40 + 112 + 320, 8, 8)
    assert model.probe_backbone() is model.probe_backbone()
    model.hparams.probe_levels = [3, 4]  # another set of levels: its own backbone, not the cached one
    assert model.hypercolumn_features(torch.zeros(1, 3, 64, 64)).shape == (1, 112 + 320, 4, 4)
    assert not any("hypercolumn" in key or "_probe" in key for key in model.state_dict())


def test_a_class_in_every_image_keeps_its_plain_cam(tiny_voc):
    """Red is in every training image of the tiny set: no negatives, no probe; its maps are the plain CAM's."""
    torch.manual_seed(0)
    plain = CAMClassifier(4, backbone="test_resnet", lr=0.05, cam_scales=[1.0], cam_flip=False)
    tiny_trainer(max_epochs=1, limit_val_batches=0).fit(plain, tiny_image_datamodule(tiny_voc))
    model = ProbeCAMClassifier(4, backbone="test_resnet", cam_scales=[1.0], cam_flip=False,
                               probe_features="classifier", probe_levels=[1, 2], seed_threshold=0.3, probe_steps=20)
    model.load_state_dict(plain.state_dict())
    datamodule = tiny_image_datamodule(tiny_voc)
    datamodule.setup("predict")
    report = model.build_probes(datamodule.predict_dataloader())
    # tv-monitor (3) is in no training image: no positives, no probe either
    assert report["plain_cam"] == [1, 3] and report["negatives"][0] == 0 and report["negatives"][1] > 0
    images = torch.randn(1, 3, 48, 48)
    grid = model.hypercolumn_features(images).shape[-2:]
    with torch.no_grad():
        red = F.relu(F.conv2d(plain.net.features(images), plain.net.head.weight))[:, :1]  # the plain CAM's raw map
        red = upsample(F.interpolate(red, size=grid, mode="bilinear", align_corners=False), (48, 48))
        green = upsample(probe_maps(model.hypercolumn_features(images), model.probe_weight[1:2], model.probe_bias[1:2]),
                         (48, 48))
    maps = model.compute_cams(images, torch.tensor([[1, 2]]))
    assert torch.allclose(maps[0, 0], (red / red.max())[0, 0], atol=1e-4)
    assert torch.allclose(maps[0, 1], (green / green.max())[0, 0], atol=1e-4)
    model.hparams.multiply_cam = True  # green's probe map times green's plain CAM; red (no probe) stays the plain CAM
    with torch.no_grad():
        green_cam = F.relu(F.conv2d(plain.net.features(images), plain.net.head.weight))[:, 1:2]
        green_cam = F.interpolate(green_cam, size=grid, mode="bilinear", align_corners=False)
        product = upsample(probe_maps(model.hypercolumn_features(images), model.probe_weight[1:2],
                                      model.probe_bias[1:2]) * green_cam, (48, 48))
    maps = model.compute_cams(images, torch.tensor([[1, 2]]))
    assert torch.allclose(maps[0, 0], (red / red.max())[0, 0], atol=1e-4)
    assert torch.allclose(maps[0, 1], (product / product.max())[0, 0], atol=1e-4)
    model.hparams.multiply_cam = False
    model.hparams.probe_output = "logit"  # the ReLU'd logit instead of the sigmoid
    with torch.no_grad():
        green = upsample(F.relu(probe_logits(model.hypercolumn_features(images), model.probe_weight[1:2],
                                             model.probe_bias[1:2])), (48, 48))
    assert torch.allclose(model.compute_cams(images, torch.tensor([[2]]))[0, 0], (green / green.max())[0, 0], atol=1e-4)


def test_probecam_without_imagenet_weights_says_what_to_set(monkeypatch):
    import lightning_wsss.tasks.hypercolumn as hypercolumn_module

    def offline(*args, **kwargs):
        raise OSError("no connection")

    monkeypatch.setattr(hypercolumn_module, "build_backbone", offline)
    model = ProbeCAMClassifier(4, backbone="test_resnet")
    with pytest.raises(RuntimeError, match="probe_features: classifier"):
        model.hypercolumn_features(torch.zeros(1, 3, 32, 32))


def test_collect_cells_keeps_a_uniform_bounded_subset(tiny_voc):
    """max_cells bounds what is held while reading; the subset is the same on every call and spans the images."""
    model = ProbeCAMClassifier(4, backbone="test_resnet", probe_features="classifier", probe_levels=[1, 2])
    datamodule = tiny_image_datamodule(tiny_voc, eval_batch_size=1)
    datamodule.setup("predict")
    everything = model.collect_cells(datamodule.predict_dataloader())
    model.hparams.max_cells = 50
    subset = model.collect_cells(datamodule.predict_dataloader())
    assert everything["features"].shape[0] > 50 and subset["features"].shape[0] == 50
    assert set(subset) == {"features", "seeds", "labels", "image"}
    assert len(set(subset["image"].tolist())) == len(set(everything["image"].tolist()))  # drawn from every image
    again = model.collect_cells(datamodule.predict_dataloader())
    assert torch.equal(subset["features"], again["features"])
    rows = [torch.nonzero((everything["features"] == f).all(1)).flatten() for f in subset["features"]]
    assert all(len(r) >= 1 for r in rows)  # every kept cell is one of the cells read


def test_prototype_and_probe_builders_name_what_they_need_without_atiny_image_datamodule():
    """LPCAM and ProbeCAM read the prediction images through one CAMClassifier helper; without a DataModule it
    names the class, what the images give and the call to make instead."""
    from types import SimpleNamespace

    from lightning_wsss.tasks import LPCAMClassifier

    for cls, needs, call in ((ProbeCAMClassifier, "probe's images", "build_probes(loader)"),
                             (LPCAMClassifier, "prototype images", "build_prototypes(loader)")):
        model = cls(4, backbone="test_resnet")
        model._trainer = SimpleNamespace(datamodule=None)
        with pytest.raises(RuntimeError, match=rf"{cls.__name__} needs a DataModule .*{needs}.*{re.escape(call)}"):
            model.on_predict_start()
