"""Tests for lightning_wsss.cam: functional maths, CAMExtractor (vs pytorch-grad-cam), multi-scale helpers.

Resize convention: pytorch-grad-cam min-max scales each map at the activation resolution, then resizes it
with ``cv2.resize`` (INTER_LINEAR), then averages layers and min-max scales again. Our ``upsample`` is
``F.interpolate(bilinear, align_corners=False)``, which samples at the same half-pixel centres with the
same edge clamping as OpenCV's INTER_LINEAR; ``test_upsample_matches_cv2`` checks they agree (~1e-6),
so the extractor is compared with pytorch-grad-cam directly at the input resolution.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from lightning_wsss.cam import (
    CAMExtractor,
    add_background,
    cams_to_label,
    gradcampp_weights,
    multiscale_cams,
    normalize_maps,
    upsample,
    weighted_sum,
    xgradcam_weights,
)

torchvision = pytest.importorskip("torchvision")

IDS = torch.tensor([[10, 20], [33, 42]])  # logit indices; all maps non-zero for the seeded model below


def _resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


def _images(b: int = 2, h: int = 80, w: int = 112) -> torch.Tensor:
    # Non-square, so a width/height mix-up shows; layer4 is 3x4, layer3 5x7.
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Tiny tensors: intra-op threading only adds overhead (and thrashes on a loaded machine).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    return _resnet()


# --------------------------------------------------------------------------- functional


def test_upsample_matches_cv2():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    for h, w, out_h, out_w in [(3, 4, 80, 112), (7, 7, 224, 224), (5, 7, 13, 9)]:
        x = rng.random((h, w)).astype(np.float32)
        ref = cv2.resize(x, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
        ours = upsample(torch.from_numpy(x)[None, None], (out_h, out_w))[0, 0].numpy()
        assert ours.shape == (out_h, out_w)
        assert np.abs(ours - ref).max() < 1e-5


def test_normalize_maps_hand_values():
    maps = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]]]])  # [1, 2, 2, 2]
    out = normalize_maps(maps, "max", eps=1e-12)
    assert torch.allclose(out[0, 0], torch.tensor([[0.25, 0.5], [0.75, 1.0]]))
    assert torch.equal(normalize_maps(maps, "max")[0, 1], torch.zeros(2, 2))
    out = normalize_maps(maps, "minmax", eps=1e-12)
    assert torch.allclose(out[0, 0], torch.tensor([[0.0, 1 / 3], [2 / 3, 1.0]]))
    assert torch.equal(normalize_maps(maps, "none"), maps)
    with pytest.raises(ValueError):
        normalize_maps(maps, "bogus")


def test_weight_formulas_hand_computed():
    # One image, one class, one channel, two positions: A = [1, 3], g = [2, -1].
    acts = torch.tensor([[[[1.0, 3.0]]]])  # [1, 1, 1, 2]
    grads = torch.tensor([[[[[2.0, -1.0]]]]])  # [1, 1, 1, 1, 2]
    # XGrad-CAM: (2*1 + -1*3) / (1 + 3) = -0.25
    assert xgradcam_weights(grads, acts).item() == pytest.approx(-0.25, abs=1e-6)
    # Grad-CAM++: sumA = 4; alpha_1 = 4 / (8 + 4*8) = 0.1; relu(g) kills position 2 -> w = 2 * 0.1
    assert gradcampp_weights(grads, acts).item() == pytest.approx(0.2, abs=1e-6)
    w = torch.tensor([[[2.0]], [[-1.0]]]).view(1, 2, 1)  # [B=1, K=2, D=1]
    maps = weighted_sum(w, acts)
    assert torch.allclose(maps, torch.tensor([[[[2.0, 6.0]], [[0.0, 0.0]]]]))


# --------------------------------------------------------------------------- vs pytorch-grad-cam

_PGC = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "xgradcam": "XGradCAM", "layercam": "LayerCAM"}
_LAYERS = {
    "layer4": lambda m: [m.layer4[-1]],
    "layer3": lambda m: [m.layer3[-1]],  # spatially varying gradients: separates XGrad-CAM from Grad-CAM
    "layer3+4": lambda m: [m.layer3[-1], m.layer4[-1]],
}


@pytest.mark.parametrize(
    "method,layers",
    [(m, "layer4") for m in _PGC]
    + [(m, "layer3") for m in _PGC]
    + [("layercam", "layer3+4"), ("gradcam", "layer3+4")],
)
def test_matches_pytorch_grad_cam(method, layers):
    pgc = pytest.importorskip("pytorch_grad_cam")
    targets_mod = pytest.importorskip("pytorch_grad_cam.utils.model_targets")
    model = _resnet()
    images = _images()
    with CAMExtractor(model, _LAYERS[layers](model), method=method, normalize="minmax") as extractor:
        ours = extractor(images, IDS).numpy()
    ref_model = copy.deepcopy(model)
    with getattr(pgc, _PGC[method])(ref_model, _LAYERS[layers](ref_model)) as cam:
        ref = np.stack(
            [cam(images, [targets_mod.ClassifierOutputTarget(int(c)) for c in IDS[:, k]]) for k in range(IDS.shape[1])],
            axis=1,
        )
    assert ours.shape == ref.shape == (2, 2, 80, 112)
    assert (ref.max(axis=(2, 3)) > 0.5).all(), "degenerate reference maps; pick other classes"
    assert np.abs(ours - ref).max() < 1e-3


def test_methods_differ_on_layer3(resnet):
    # Guard against a test that passes because all methods collapse to the same map.
    images = _images()
    outs = {}
    for method in ("gradcam", "xgradcam", "gradcam++", "layercam"):
        with CAMExtractor(resnet, [resnet.layer3[-1]], method=method, normalize="minmax") as ex:
            outs[method] = ex(images, IDS)
    keys = list(outs)
    for i in range(len(keys)):
        for j in range(i + 1, len(keys)):
            assert (outs[keys[i]] - outs[keys[j]]).abs().max() > 1e-2, (keys[i], keys[j])


def test_reshape_transform_matches_pytorch_grad_cam():
    pgc = pytest.importorskip("pytorch_grad_cam")
    targets_mod = pytest.importorskip("pytorch_grad_cam.utils.model_targets")

    class TinyTokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Conv2d(3, 8, kernel_size=4, stride=4)
            self.block = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))
            self.head = nn.Linear(8, 5)

        def forward(self, x):
            tokens = self.embed(x).flatten(2).transpose(1, 2)  # [B, N, D]
            tokens = tokens + self.block(tokens)
            tokens = torch.tanh(tokens) * tokens  # non-linear after the target -> spatially varying grads
            return self.head(tokens.mean(1))

    def to_map(t, h=4, w=6):
        return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], h, w)

    torch.manual_seed(0)
    model = TinyTokens().eval()
    images = torch.randn(2, 3, 16, 24)
    ids = torch.tensor([[0, 3], [1, 4]])
    with CAMExtractor(model, [model.block], method="gradcam", normalize="minmax", reshape_transform=to_map) as ex:
        ours = ex(images, ids).numpy()
    with pgc.GradCAM(model, [model.block], reshape_transform=to_map) as cam:
        ref = np.stack(
            [cam(images, [targets_mod.ClassifierOutputTarget(int(c)) for c in ids[:, k]]) for k in range(2)], axis=1
        )
    assert np.abs(ours - ref).max() < 1e-3


# --------------------------------------------------------------------------- CAMExtractor behaviour


def _layer4_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    return model.layer4(model.layer3(model.layer2(model.layer1(x))))


def test_cam_equals_manual_fc_weighted_activations(resnet):
    cv2 = pytest.importorskip("cv2")
    images = _images()
    with torch.no_grad():
        feats = _layer4_features(resnet, images).numpy()  # [B, 512, 3, 4]
    fc = resnet.fc.weight.detach().numpy()
    ref = np.zeros((2, 2, 80, 112), np.float32)
    for b in range(2):
        for k in range(2):
            raw = np.maximum(np.tensordot(fc[IDS[b, k]], feats[b], axes=1), 0)  # [3, 4]
            up = cv2.resize(raw.astype(np.float32), (112, 80), interpolation=cv2.INTER_LINEAR)
            ref[b, k] = up / up.max()
    for weight in (None, resnet.fc.weight):
        with CAMExtractor(resnet, [resnet.layer4], method="cam", normalize="max", classifier_weight=weight) as ex:
            ours = ex(images, IDS).numpy()
        assert np.abs(ours - ref).max() < 1e-4
    with CAMExtractor(resnet, [resnet.layer4], method="cam", normalize="none") as ex:
        raw_ours = ex(images, IDS)
    assert raw_ours.max() > 1.5  # really unnormalised


@pytest.mark.parametrize("method", ["cam", "gradcam", "layercam"])
def test_shape_padding_grads_and_mode(method):
    model = _resnet().train()
    model.layer1.eval()  # mixed modes must be restored exactly
    bn_before = model.bn1.running_mean.clone()
    images = _images(3, 64, 72)
    ids = torch.tensor([[10, -1], [-1, -1], [30, 40]])
    layers = [model.layer4] if method == "cam" else [model.layer4[-1]]
    with CAMExtractor(model, layers, method=method) as ex:
        out = ex(images, ids)
    assert out.shape == (3, 2, 64, 72) and out.dtype == torch.float32
    assert torch.equal(out[0, 1], torch.zeros(64, 72)) and torch.equal(out[1], torch.zeros(2, 64, 72))
    assert out[0, 0].max() > 0.99 and out[2].amax(dim=(1, 2)).min() > 0.99  # "max" normalisation
    assert all(p.grad is None for p in model.parameters())
    assert model.training and not model.layer1.training and model.layer2.training
    assert torch.equal(model.bn1.running_mean, bn_before)  # ran in eval mode: BN statistics untouched


def test_eval_mode_independent_and_grad_mode_of_caller(resnet):
    images = _images()
    with CAMExtractor(resnet, [resnet.layer4[-1]], method="gradcam++") as ex:
        ref = ex(images, IDS)
        resnet.train()
        try:
            in_train = ex(images, IDS)
        finally:
            resnet.eval()
        with torch.no_grad():
            in_no_grad = ex(images, IDS)
        with torch.inference_mode():  # Lightning's predict/validation loops run in inference mode
            in_inference = ex(images.clone(), IDS)
    assert torch.allclose(ref, in_train) and torch.allclose(ref, in_no_grad) and torch.allclose(ref, in_inference)
    assert all(p.grad is None for p in resnet.parameters())
    assert torch.is_grad_enabled()


def test_batched_and_looped_gradients_agree(resnet):
    images = _images()
    layers = [resnet.layer3[-1], resnet.layer4[-1]]
    outs = []
    for batched in (True, False):
        with CAMExtractor(resnet, layers, method="layercam", normalize="none", batched_grads=batched) as ex:
            outs.append(ex(images, IDS))
    assert torch.allclose(outs[0], outs[1], atol=1e-6)


def test_inplace_op_after_target_layer_and_manual_gradcam():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(6, 4, 3, stride=2),
        nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(4, 3),
    )
    images = torch.randn(2, 3, 10, 12)
    ids = torch.tensor([[0, 2], [1, -1]])
    with CAMExtractor(model, [model[0]], method="gradcam", normalize="none") as ex:
        ours = ex(images, ids)
    # Reference: full forward/backward with the conv output kept (pre in-place ReLU).
    ref = torch.zeros(2, 2, 10, 12)
    for b in range(2):
        for k in range(2):
            if ids[b, k] < 0:
                continue
            x = images[b : b + 1]
            act = model[0](x)
            act.retain_grad()
            out = x = act.clone()
            for layer in list(model)[1:]:
                out = layer(out)
            out[0, ids[b, k]].backward()
            w = act.grad.mean(dim=(2, 3))  # [1, 6]
            ref[b, k] = torch.relu((w[:, :, None, None] * act).sum(1))[0].detach()
    model.zero_grad(set_to_none=True)
    assert torch.allclose(ours, ref, atol=1e-5)
    assert ours[0].amax() > 0


def test_release_and_errors(resnet):
    layer = resnet.layer4[-1]
    n_hooks = len(layer._forward_hooks)
    with CAMExtractor(resnet, [layer]) as ex:
        assert len(layer._forward_hooks) == n_hooks + 1
    assert len(layer._forward_hooks) == n_hooks
    with pytest.raises(RuntimeError):
        ex(_images(), IDS)
    ex = CAMExtractor(resnet, [layer])
    del ex
    assert len(layer._forward_hooks) == n_hooks
    unused = nn.Conv2d(3, 3, 1)
    with CAMExtractor(resnet, [unused]) as ex, pytest.raises(RuntimeError, match="not called"):
        ex(_images(), IDS)
    with CAMExtractor(resnet, [layer]) as ex, pytest.raises(ValueError):
        ex(_images(), torch.tensor([[1000, 1], [2, 3]]))
    with pytest.raises(ValueError):
        CAMExtractor(resnet, [layer], method="nope")
    with pytest.raises(ValueError):
        CAMExtractor(resnet, [resnet.layer3, resnet.layer4], method="cam")


# --------------------------------------------------------------------------- multiscale & labels


def _toy_cam_fn(images: torch.Tensor, class_ids: torch.Tensor) -> torch.Tensor:
    """Raw 'CAM' = relu(first image channel) * (class id + 1); zeros for padding."""
    base = images[:, :1].clamp(min=0)
    scale = ((class_ids + 1) * (class_ids >= 0)).float()[:, :, None, None]
    return base * scale


def test_multiscale_sum_against_cv2_reference():
    cv2 = pytest.importorskip("cv2")
    images = torch.rand(2, 3, 12, 16, generator=torch.Generator().manual_seed(3))
    ids = torch.tensor([[0, 4], [2, -1]])
    scales = (1.0, 0.5, 1.5)
    out = multiscale_cams(_toy_cam_fn, images, ids, scales=scales, flip=False)
    ref = np.zeros((2, 2, 12, 16), np.float32)
    for b in range(2):
        chan = images[b, 0].numpy()
        total = np.zeros((12, 16), np.float32)
        for s in scales:
            small = cv2.resize(chan, (int(round(16 * s)), int(round(12 * s))), interpolation=cv2.INTER_LINEAR)
            total += cv2.resize(np.maximum(small, 0), (16, 12), interpolation=cv2.INTER_LINEAR)
        for k in range(2):
            if ids[b, k] >= 0:
                ref[b, k] = total / total.max()  # the class factor cancels in the max normalisation
    assert out.shape == (2, 2, 12, 16)
    assert np.abs(out.numpy() - ref).max() < 1e-4
    # Flip: this toy cam_fn is flip-equivariant, so un-flipped flip CAMs must reproduce the same maps.
    flipped = multiscale_cams(_toy_cam_fn, images, ids, scales=scales, flip=True)
    assert torch.allclose(flipped, out, atol=1e-5)


def test_multiscale_flip_is_unflipped():
    images = torch.zeros(1, 3, 4, 6)
    calls = []

    def left_half_fn(x, ids):  # lights up the left half of whatever it is given
        calls.append(x.shape)
        maps = torch.zeros(x.shape[0], ids.shape[1], *x.shape[-2:])
        maps[..., : x.shape[-1] // 2] = 1.0
        return maps

    out = multiscale_cams(left_half_fn, images, torch.tensor([[1]]), scales=(1.0,), flip=True)
    # original: left half = 1; flipped copy lights its left half = original right half, un-flipped -> right.
    assert torch.allclose(out, torch.ones(1, 1, 4, 6), atol=1e-4)
    assert calls == [torch.Size([2, 3, 4, 6])]  # one cam_fn call per scale, flips batched


def test_add_background_modes():
    cams = torch.tensor([[[[0.2, 0.9]], [[0.5, 0.0]]]])  # [1, 2, 1, 2]
    const = add_background(cams, "constant", bg_threshold=0.3)
    assert const.shape == (1, 3, 1, 2)
    assert torch.allclose(const[0, 0], torch.full((1, 2), 0.3)) and torch.equal(const[:, 1:], cams)
    power = add_background(cams, "power", alpha=2.0)
    assert torch.allclose(power[0, 0], torch.tensor([[0.25, 0.01]]))  # (1-0.5)^2, (1-0.9)^2
    with pytest.raises(ValueError):
        add_background(cams, "other")


def test_cams_to_label():
    cams = torch.tensor(
        [[[[0.5, 0.5, 0.5, 0.5]], [[0.9, 0.1, 0.5, 0.0]], [[0.2, 0.8, 0.0, 0.0]], [[1.0, 1.0, 1.0, 1.0]]]]
    )  # [1, 4, 1, 4]: background, class 7, class 3, padding
    ids = torch.tensor([[7, 3, -1]])
    label = cams_to_label(cams, ids)
    assert label.dtype == torch.long and label.shape == (1, 1, 4)
    # pixel 2: tie bg/class 7 -> background (lower channel); padding channel never wins.
    assert label.tolist() == [[[7, 3, 0, 0]]]
    # end to end with add_background
    fg = torch.tensor([[[[0.05, 0.6]], [[0.1, 0.2]]]])
    assert cams_to_label(add_background(fg, "constant", 0.15), torch.tensor([[5, 9]])).tolist() == [[[0, 5]]]
