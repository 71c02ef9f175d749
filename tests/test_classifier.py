"""CAMClassifier, offline weight loading with the order remap, CAM prediction and `wsss evaluate-cams`."""

from __future__ import annotations

import json
from collections import OrderedDict

import lightning as L
import numpy as np
import pytest
import timm
import torch

from lightning_wsss.callbacks import ArtifactWriter
from lightning_wsss.cam.files import load_cams
from lightning_wsss.cam.threshold_sweep import cams_to_label_map
from lightning_wsss.cli.main import main
from lightning_wsss.datamodules import ImageLabelDataModule
from lightning_wsss.errors import DataError
from lightning_wsss.models.backbones import build_backbone, remap_state_dict_by_order
from lightning_wsss.tasks import CAMClassifier
from lightning_wsss.tasks.classifier import present_class_ids



def test_remap_by_order_renames_and_fails_loudly_on_shape_mismatch():
    target = OrderedDict(a=torch.zeros(2, 3), b=torch.zeros(4), n=torch.zeros(()))
    target["bn.num_batches_tracked"] = torch.zeros((), dtype=torch.long)
    source = OrderedDict(x=torch.ones(2, 3), y=torch.ones(4), z=torch.ones(()))
    out = remap_state_dict_by_order(source, target)
    assert list(out) == ["a", "b", "n"] and torch.equal(out["a"], source["x"])
    bad = OrderedDict(x=torch.ones(3, 2), y=torch.ones(4), z=torch.ones(()))
    with pytest.raises(ValueError, match=r"tensor 0 'x' has shape \(3, 2\) but the target's 'a' has \(2, 3\)"):
        remap_state_dict_by_order(bad, target)
    with pytest.raises(ValueError, match="the source has 2 tensors, the target 3"):
        remap_state_dict_by_order(OrderedDict(x=torch.ones(2, 3), y=torch.ones(4)), target)


def test_local_weights_with_foreign_names_load_into_the_backbone(tmp_path):
    reference = timm.create_model("test_resnet", pretrained=False)
    foreign = OrderedDict((f"_layer{i}", v.clone()) for i, v in enumerate(reference.state_dict().values())
                          if not isinstance(v, torch.Tensor) or v.dtype != torch.long)
    path = tmp_path / "w.pth"
    torch.save(foreign, path)
    backbone = build_backbone("test_resnet", weights=str(path))
    own = backbone.state_dict()
    assert torch.equal(own["conv1.0.weight"], reference.state_dict()["conv1.0.weight"])
    torch.save(OrderedDict(list(foreign.items())[:-3]), path)
    with pytest.raises(DataError, match=r"w\.pth: cannot remap by order"):
        build_backbone("test_resnet", weights=str(path))


def test_shared_efficientnet_lite0_weights_load_into_timm(shared_data):
    path = shared_data / "weights" / "efficientnet-lite0-57934424.pth"
    model = CAMClassifier(3, backbone="efficientnet_lite0", weights=str(path))
    source = torch.load(path, map_location="cpu", weights_only=False)
    own = model.net.features.backbone.state_dict()
    assert torch.equal(own["conv_stem.weight"], source["_conv_stem.weight"])
    assert torch.equal(own["blocks.6.0.conv_pwl.weight"], source["_blocks.15._project_conv.weight"])


def test_present_class_ids_pads_with_minus_one():
    labels = torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 1]])
    assert present_class_ids(labels).tolist() == [[1, 3], [4, -1]]


def test_classifier_fits_predicts_and_cams_evaluate(tiny_voc, tmp_path, capsys):
    L.seed_everything(0, verbose=False)
    dm = ImageLabelDataModule(root=str(tiny_voc), batch_size=2, crop_size=48, eval_batch_size=2, predict_split="train")
    model = CAMClassifier(dm.num_classes, backbone="test_resnet", cam_method="gradcam", cam_scales=(1.0, 0.5), lr=0.05)
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, inference_mode=False,
                        callbacks=[ArtifactWriter(str(tmp_path / "pred"))])
    trainer.fit(model, dm)
    assert {"val/mAP", "val/F1", "val/cam_miou", "val/loss"} <= set(trainer.callback_metrics)
    trainer.predict(model, dm, return_predictions=False)
    ids = [f"img_{i}" for i in range(4)]
    assert sorted(p.stem for p in (tmp_path / "pred" / "cams").glob("*.npz")) == ids
    data = load_cams(tmp_path / "pred" / "cams" / "img_1.npz")
    assert data["keys"].tolist() == [1, 2] and data["cams"].shape == (2, 48, 48)
    assert 0.0 <= data["cams"].min() and data["cams"].max() <= 1.0 + 1e-3
    label = np.array(__import__("PIL.Image", fromlist=["Image"]).open(tmp_path / "pred" / "labels" / "img_1.png"))
    # labels come from the float32 CAMs, the file holds float16: they agree but for near-ties
    assert (label == cams_to_label_map(data["cams"], data["keys"], 0.15)).mean() > 0.97
    # a rerun skips finished images: delete one, only it is written again
    before = (tmp_path / "pred" / "cams" / "img_0.npz").stat().st_mtime_ns
    (tmp_path / "pred" / "cams" / "img_2.npz").unlink()
    writer = ArtifactWriter(str(tmp_path / "pred"))
    L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, inference_mode=False,
              callbacks=[writer]).predict(model, dm, return_predictions=False)
    assert writer.written == 1 and writer.skipped == 3
    assert (tmp_path / "pred" / "cams" / "img_0.npz").stat().st_mtime_ns == before
    assert main(["evaluate-cams", "--cams", str(tmp_path / "pred" / "cams"), "--root", str(tiny_voc), "--split", "train",
                 "--thresholds", "0.1,0.3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["thresholds"] == [0.1, 0.3] and result["best_threshold"] in (0.1, 0.3)
    assert result["best_miou"] == max(result["miou"]) and result["num_images"] == 4


def test_cam_mode_toggle_and_single_class(tiny_voc):
    model = CAMClassifier(2, backbone="test_resnet")  # one foreground class: binary metrics
    images = torch.randn(2, 3, 32, 32)
    cams = model.compute_cams(images, torch.tensor([[1], [-1]]))
    assert cams.shape == (2, 1, 32, 32) and float(cams[1].abs().max()) == 0.0


def test_positive_weight_reweights_the_positive_terms_only():
    import torch.nn.functional as F

    logits = torch.tensor([[1.5, -0.5], [-2.0, 0.3]])
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    plain = CAMClassifier(num_classes=3, backbone="test_resnet")
    ones = CAMClassifier(num_classes=3, backbone="test_resnet", positive_weight=[1.0, 1.0])
    assert ones.loss(logits, labels) == pytest.approx(float(plain.loss(logits, labels)))
    weighted = CAMClassifier(num_classes=3, backbone="test_resnet", positive_weight=[3.0, 1.0])
    by_hand = (3 * F.softplus(-logits[0, 0]) + F.softplus(logits[0, 1]) + F.softplus(logits[1, 0])
               + F.softplus(-logits[1, 1])) / 4
    assert weighted.loss(logits, labels) == pytest.approx(float(by_hand))
    with pytest.raises(ValueError, match="positive_weight needs 2 values"):
        CAMClassifier(num_classes=3, backbone="test_resnet", positive_weight=[1.0])


def test_feature_level_stops_the_backbone_at_that_level():
    """``feature_level: 3`` pools and reads test_resnet's stride-16 level (192 channels), the default its last
    (stride 32, 96 channels); the truncated backbone has no parameters of the later levels."""
    images = torch.randn(1, 3, 64, 64)
    last = CAMClassifier(3, backbone="test_resnet", output_stride=32)
    shallow = CAMClassifier(3, backbone="test_resnet", output_stride=32, feature_level=3)
    assert tuple(last.net.features(images).shape) == (1, 96, 2, 2)
    assert tuple(shallow.net.features(images).shape) == (1, 192, 4, 4)
    assert shallow.cam_weight().shape == (2, 192) and shallow(images).shape == (1, 2)
    assert sum(p.numel() for p in shallow.parameters()) < sum(p.numel() for p in last.parameters())
    assert shallow.compute_cams(images, torch.tensor([[1, -1]])).shape == (1, 2, 64, 64)
    with pytest.raises(ValueError, match="feature_level needs feature_layer 'stage'"):
        CAMClassifier(3, backbone="test_resnet", feature_layer="forward_features", feature_level=3)
