"""DeepLabSegmenter: fit / validate / test / predict on tiny_voc, inference paths, aux head, weights loading."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

from lightning_wsss.callbacks.writers import ArtifactWriter
from lightning_wsss.datamodules import MaskDataModule
from lightning_wsss.datamodules.transforms import IMAGENET_MEAN, IMAGENET_STD
from lightning_wsss.errors import DataError
from lightning_wsss.io import read_image, read_label_png
from lightning_wsss.metrics import evaluate_folder
from lightning_wsss.models.backbones import load_state_dict_file
from lightning_wsss.refine.crf import CRFParams, crf_from_probs
from lightning_wsss.tasks.segmenter import DeepLabSegmenter, masked_cross_entropy, metric_key, pad_to_multiple
from tests.conftest import tiny_trainer as _trainer, write_tiny_voc

TINY = dict(num_classes=4, encoder="tu-resnet18", decoder_channels=16)





def _normalise(image: np.ndarray) -> torch.Tensor:
    array = (image.astype(np.float32) / 255.0 - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    return torch.from_numpy(array.transpose(2, 0, 1).copy())


@pytest.fixture
def mixed_voc(tmp_path: Path) -> Path:
    """tiny_voc (48 px) whose img_2 (train) and img_4 (val) are 37 px: batches get padded, 37 is not a multiple of 16."""
    root = write_tiny_voc(tmp_path / "mixed")
    small = write_tiny_voc(tmp_path / "small", size=37)
    for image_id in ("img_2", "img_4"):
        for folder, ext in (("JPEGImages", "jpg"), ("SegmentationClass", "png"), ("Annotations", "xml")):
            shutil.copy(small / folder / f"{image_id}.{ext}", root / folder / f"{image_id}.{ext}")
    return root


def test_pad_and_masked_cross_entropy():
    x = torch.ones(1, 3, 37, 40)
    padded = pad_to_multiple(x, 16)
    assert padded.shape == (1, 3, 48, 48) and padded[..., :37, :40].eq(1).all() and padded[..., 37:, :].eq(0).all()
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]]]])  # [1, 2, 1, 2]
    target = torch.tensor([[[1, 255]]])
    assert torch.isclose(masked_cross_entropy(logits, target), torch.log1p(torch.exp(torch.tensor(2.0))))
    assert masked_cross_entropy(logits, torch.full((1, 1, 2), 255)) == 0
    assert metric_key("tv/monitor") == "tv_monitor"


def test_fit_validate_test_predict(mixed_voc, tmp_path):
    torch.manual_seed(0)
    dm = MaskDataModule(root=str(mixed_voc), crop_size=32, batch_size=2, eval_batch_size=2, test_split="val")
    model = DeepLabSegmenter(**TINY, arch="deeplabv3plus", aux_weight=0.4, lr=0.01)
    trainer = _trainer(max_epochs=2)
    trainer.fit(model, datamodule=dm)
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics["train/loss"]) and torch.isfinite(metrics["train/aux_loss"])
    assert 0.0 <= float(metrics["val/miou"]) <= 1.0
    assert "val/iou/background" in metrics  # per-class IoU by class name

    (val,) = trainer.validate(model, datamodule=dm, verbose=False)
    assert 0.0 <= val["val/miou"] <= 1.0
    (test,) = trainer.test(model, datamodule=dm, verbose=False)
    assert 0.0 <= test["test/miou"] <= 1.0 and "test/iou/red" in test

    # predict the training split: original sizes, valid labels (img_2 is 37 px inside a padded batch)
    out = tmp_path / "pred"
    writer = ArtifactWriter(str(out))
    trainer = _trainer(callbacks=[writer])
    trainer.predict(model, datamodule=dm, return_predictions=False)
    for i in range(4):
        label = read_label_png(out / "labels" / f"img_{i}.png")
        assert label.shape == ((37, 37) if i == 2 else (48, 48))
        assert label.max() < 4
    assert writer.written == 4

    # predicting the val split and scoring the files gives test/miou (same batches, independent scoring path)
    dm_val = MaskDataModule(root=str(mixed_voc), crop_size=32, eval_batch_size=2, predict_split="val")
    out_val = tmp_path / "pred_val"
    _trainer(callbacks=[ArtifactWriter(str(out_val))]).predict(model, datamodule=dm_val, return_predictions=False)
    scored = evaluate_folder(out_val / "labels", mixed_voc, "val")
    assert scored["miou"] == pytest.approx(test["test/miou"], abs=1e-6)

    # a second predict skips finished images and redoes only a removed one (a sub-batch of a padded batch)
    before = read_label_png(out / "labels" / "img_2.png")
    (out / "labels" / "img_2.png").unlink()
    writer2 = ArtifactWriter(str(out))
    _trainer(callbacks=[writer2]).predict(model, datamodule=dm, return_predictions=False)
    assert writer2.written == 1 and writer2.skipped == 3
    assert read_label_png(out / "labels" / "img_2.png").shape == before.shape == (37, 37)


def test_forward_any_size_and_multiscale_flip():
    torch.manual_seed(0)
    model = DeepLabSegmenter(**TINY, arch="deeplabv3", output_stride=8, test_scales=(0.5, 1.0, 1.25), test_flip=True)
    model.eval()
    images = torch.randn(2, 3, 37, 29)
    net = model.net

    def reference_logits(x):  # pad by hand to a multiple of 8, crop back
        h, w = x.shape[-2:]
        padded = F.pad(x, (0, (8 - w % 8) % 8, 0, (8 - h % 8) % 8))
        return net(padded)[..., :h, :w]

    with torch.no_grad():
        logits = model(images)
        assert logits.shape == (2, 4, 37, 29)
        assert torch.allclose(logits, reference_logits(images), atol=1e-5)
        total = torch.zeros(2, 4, 37, 29)
        for scale in (0.5, 1.0, 1.25):
            size = (round(37 * scale), round(29 * scale))
            x = F.interpolate(images, size=size, mode="bilinear", align_corners=False) if scale != 1.0 else images
            for flip in (False, True):
                out = reference_logits(torch.flip(x, dims=[3]) if flip else x)
                out = torch.flip(out, dims=[3]) if flip else out
                out = F.interpolate(out, size=(37, 29), mode="bilinear", align_corners=False)
                total += torch.softmax(out, dim=1)
        expected = total / 6
        got = model.predict_logits(images).softmax(dim=1)
    assert torch.allclose(got, expected, atol=1e-5)


def test_crf_postprocess_matches_direct_crf(tiny_voc):
    model = DeepLabSegmenter(**TINY, crf=True, crf_params={"iterations": 5})
    image = read_image(tiny_voc / "JPEGImages" / "img_1.jpg")[:30, :40]  # 30x40 inside a 48x48 padded batch
    images = torch.zeros(1, 3, 48, 48)
    images[0, :, :30, :40] = _normalise(image)
    rng = np.random.default_rng(0)
    probs = torch.from_numpy(rng.dirichlet(np.ones(4), size=(48, 48)).transpose(2, 0, 1).astype(np.float32))[None]
    batch = {"image": images, "size": torch.tensor([[30, 40]])}
    out = model.postprocess(probs, batch)
    expected = crf_from_probs(image, probs[0, :, :30, :40].numpy(), CRFParams(iterations=5))
    assert np.allclose(out[0, :, :30, :40].numpy(), expected, atol=1e-5)
    assert torch.equal(out[0, :, 30:, :], probs[0, :, 30:, :])  # padding untouched
    assert not np.allclose(expected, probs[0, :, :30, :40].numpy(), atol=1e-2)  # the CRF did something


def test_crf_and_multiscale_test_run(tiny_voc):
    dm = MaskDataModule(root=str(tiny_voc), crop_size=32, batch_size=2, test_split="val")
    model = DeepLabSegmenter(**TINY, crf=True, crf_params={"iterations": 3}, test_scales=(0.75, 1.0), test_flip=True)
    (test,) = _trainer().test(model, datamodule=dm, verbose=False)
    assert 0.0 <= test["test/miou"] <= 1.0


def test_aux_loss_is_bce_on_image_labels(tiny_voc):
    torch.manual_seed(0)
    dm = MaskDataModule(root=str(tiny_voc), crop_size=32, batch_size=2)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    model = DeepLabSegmenter(**TINY, aux_weight=0.5)
    model.eval()  # no dropout: two forward passes agree
    with torch.no_grad(), warnings.catch_warnings():  # self.log outside a Trainer warns
        warnings.simplefilter("ignore")
        loss = model.training_step(batch, 0)
        seg, aux = model.net(batch["image"])  # 32 px crops need no padding
    assert aux.shape == (2, 3)
    target = batch["labels"]
    bce = -(target * F.logsigmoid(aux) + (1 - target) * F.logsigmoid(-aux)).mean()
    ce = F.cross_entropy(seg, batch["mask"], ignore_index=255)
    assert torch.isclose(loss, ce + 0.5 * bce, atol=1e-5)
    assert DeepLabSegmenter(**TINY).net.classification_head is None  # no head without aux_weight


def test_local_weights_tu_encoder_renamed_keys(tmp_path):
    torch.manual_seed(1)
    source = timm.create_model("resnet18", pretrained=False)
    state = source.state_dict()
    # names unknown to timm (matched by order and shape); BN counters keep their suffix, as in real checkpoints
    renamed = {f"net.p{i:04d}" + (".num_batches_tracked" if k.endswith("num_batches_tracked") else ""): v
               for i, (k, v) in enumerate(state.items())}
    path = tmp_path / "renamed.pth"
    torch.save(renamed, path)
    model = DeepLabSegmenter(**TINY, encoder_weights=str(path))
    encoder = model.net.encoder.model
    assert torch.equal(encoder.conv1.weight, state["conv1.weight"])
    assert torch.equal(encoder.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    assert torch.equal(encoder.layer3[0].bn1.running_var, state["layer3.0.bn1.running_var"])


def test_local_weights_native_smp_encoder(tmp_path):
    torch.manual_seed(2)
    state = timm.create_model("resnet18", pretrained=False).state_dict()  # torchvision names, plus fc
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    model = DeepLabSegmenter(**{**TINY, "encoder": "resnet18"}, encoder_weights=str(path))
    assert torch.equal(model.net.encoder.layer2[0].conv1.weight, state["layer2.0.conv1.weight"])
    with pytest.raises(DataError, match="missing"):
        DeepLabSegmenter(**TINY, encoder_weights=str(tmp_path / "absent.pth"))
    torch.save({"conv1.weight": state["conv1.weight"]}, tmp_path / "partial.pth")
    with pytest.raises(DataError, match="partial.pth"):
        DeepLabSegmenter(**{**TINY, "encoder": "resnet18"}, encoder_weights=str(tmp_path / "partial.pth"))


def test_shared_efficientnet_lite0_weights(shared_data):
    path = shared_data / "weights" / "efficientnet-lite0-57934424.pth"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    model = DeepLabSegmenter(num_classes=4, encoder="tu-efficientnet_lite0", encoder_weights=str(path), decoder_channels=16)
    first = next(iter(load_state_dict_file(path).values()))  # the stem convolution, by order
    assert torch.equal(model.net.encoder.model.conv_stem.weight, first)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 40, 40)).shape == (1, 4, 40, 40)
