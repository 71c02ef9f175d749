"""ImageNet weights on every machine: ``imagenet`` resolves to the packaged EfficientNet-Lite0 file, offline.

The check that matters is semantic: the remapped weights must recognise real photos shipped offline by
scikit-image (a tabby cat, a cup of coffee), so a broken key remap cannot pass.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lightning_wsss.models import build_backbone
from lightning_wsss.models.pretrained import imagenet_classifier, packaged_weights_path, resolve_weights
from lightning_wsss.models.deeplab import build_deeplab

skdata = pytest.importorskip("skimage.data")

MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
CAT_CLASSES = {281, 282, 283, 285}  # tabby, tiger cat, Persian, Egyptian cat
COFFEE_CLASSES = {967, 968, 504}  # espresso, cup, coffee mug


def _imagenet_input(image: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(image).permute(2, 0, 1).float()[None] / 255.0
    x = F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False, antialias=True)
    return (x - MEAN) / STD


def test_imagenet_resolves_to_the_packaged_file():
    path = packaged_weights_path("efficientnet_lite0")
    assert path is not None and Path(path).is_file()
    assert resolve_weights("efficientnet_lite0", "imagenet") == path
    assert resolve_weights("tu-efficientnet_lite0", "imagenet") == path
    assert resolve_weights("resnet50", "imagenet") == "imagenet"  # no package: timm's hub, as before
    assert resolve_weights("resnet50", "none") is None
    assert resolve_weights("resnet50", "/x/y.pth") == "/x/y.pth"


@pytest.mark.parametrize("photo,classes", [("chelsea", CAT_CLASSES), ("coffee", COFFEE_CLASSES)])
def test_packaged_weights_recognise_real_photos(photo, classes):
    model = imagenet_classifier("efficientnet_lite0")
    with torch.no_grad():
        top5 = model(_imagenet_input(getattr(skdata, photo)())).topk(5).indices[0].tolist()
    assert top5[0] in classes, top5


def test_backbone_and_encoder_load_the_packaged_weights():
    reference = imagenet_classifier("efficientnet_lite0").state_dict()
    backbone = build_backbone("efficientnet_lite0", "imagenet", output_stride=16)
    assert torch.equal(backbone.state_dict()["conv_stem.weight"], reference["conv_stem.weight"])
    deeplab = build_deeplab("deeplabv3plus", "tu-efficientnet_lite0", 3, encoder_weights="imagenet")
    encoder_stem = [v for k, v in deeplab.encoder.state_dict().items() if k.endswith("conv_stem.weight")][0]
    assert torch.equal(encoder_stem, reference["conv_stem.weight"])


def test_trunk_keeps_the_pretrained_head_convolution():
    from lightning_wsss.models.trunk import Trunk

    reference = imagenet_classifier("efficientnet_lite0").state_dict()
    trunk = Trunk("efficientnet_lite0", "imagenet", output_stride=16)
    own = trunk.model.state_dict()
    assert torch.equal(own["conv_head.weight"], reference["conv_head.weight"])
    assert trunk.feature_info.channels() == [1280]
    (features,) = trunk(torch.zeros(1, 3, 64, 64))
    assert features.shape == (1, 1280, 4, 4)
