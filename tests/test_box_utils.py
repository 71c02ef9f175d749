"""Tests for boxes_from_mask, the BBTP tightness loss, BoxSup scoring and box crop inference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lightning_wsss.boxes import (
    box_crop_inference,
    boxes_from_mask,
    clip_to_box,
    context_region,
    cross_entropy_cost,
    overlap_cost,
    pairwise_smoothness_loss,
    score_candidates,
    select_candidate,
    tightness_prior_loss,
)
from lightning_wsss.errors import DataError


# --------------------------------------------------------------------------------------------- boxes_from_mask
def test_boxes_from_mask_components_and_min_area():
    mask = np.zeros((10, 12), np.uint8)
    mask[1:4, 2:6] = 1  # class 1, component A: cols 2..5, rows 1..3 (12 px)
    mask[4, 6] = 1  # diagonal neighbour of A's corner (3, 5): same component with 8-connectivity
    mask[7:9, 9:12] = 1  # class 1, component B (6 px)
    mask[0, 11] = 3  # class 3, single pixel
    mask[6:10, 0:2] = 255  # ignore: no box
    mask[5:7, 3:5] = 2  # class 2 (4 px)
    boxes, labels = boxes_from_mask(mask, min_area=1)
    assert boxes.dtype == np.float32 and labels.dtype == np.int64
    expected = [
        (1, [2, 1, 7, 5]),
        (1, [9, 7, 12, 9]),
        (2, [3, 5, 5, 7]),
        (3, [11, 0, 12, 1]),
    ]
    assert labels.tolist() == [c for c, _ in expected]
    np.testing.assert_array_equal(boxes, np.array([b for _, b in expected], np.float32))

    boxes, labels = boxes_from_mask(mask, min_area=5)  # drops the class-3 pixel and the 4-px class-2 blob
    assert labels.tolist() == [1, 1]
    np.testing.assert_array_equal(boxes, np.array([[2, 1, 7, 5], [9, 7, 12, 9]], np.float32))


def test_boxes_from_mask_empty_and_tensor():
    boxes, labels = boxes_from_mask(np.zeros((4, 4), np.uint8))
    assert boxes.shape == (0, 4) and labels.shape == (0,)
    t = torch.zeros(5, 5, dtype=torch.long)
    t[1:3, 1:4] = 4
    boxes, labels = boxes_from_mask(t)
    assert labels.tolist() == [4] and boxes.tolist() == [[1, 1, 4, 3]]


# --------------------------------------------------------------------------------------------- tightness
P1 = torch.tensor(
    [
        [0.1, 0.2, 0.1, 0.1],
        [0.1, 0.8, 0.5, 0.2],
        [0.3, 0.7, 0.6, 0.1],
        [0.1, 0.1, 0.2, 0.1],
    ]
)


def test_tightness_hand_computed():
    probs = torch.stack([1 - P1, P1]).unsqueeze(0)  # [1, 2, 4, 4]
    boxes = [torch.tensor([[1.0, 1.0, 3.0, 3.0]])]  # rows 1..2, cols 1..2
    labels = [torch.tensor([1])]
    loss = tightness_prior_loss(probs, boxes, labels, activation="none")
    # positives: rows 1, 2 -> max 0.8, 0.7; cols 1, 2 -> max 0.8, 0.6
    pos = -(math.log(0.8) + math.log(0.7) + math.log(0.8) + math.log(0.6)) / 4
    # negatives: rows 0, 3 -> max 0.2, 0.2; cols 0, 3 -> max 0.3, 0.2
    neg = -(math.log(0.8) + math.log(0.8) + math.log(0.7) + math.log(0.8)) / 4
    assert float(loss) == pytest.approx(pos + neg, rel=1e-5)
    loss_w = tightness_prior_loss(probs, boxes, labels, activation="none", negative_weight=0.5)
    assert float(loss_w) == pytest.approx(pos + 0.5 * neg, rel=1e-5)


def test_tightness_absent_class_is_all_negative_and_batch():
    p2 = torch.full((4, 4), 0.5)
    probs = torch.stack([1 - P1, P1, p2]).unsqueeze(0)  # class 2 has no box: 8 negative bags of max 0.5
    boxes = [torch.tensor([[1.0, 1.0, 3.0, 3.0]])]
    labels = [torch.tensor([1])]
    loss = tightness_prior_loss(probs, boxes, labels, activation="none")
    pos = -(2 * math.log(0.8) + math.log(0.7) + math.log(0.6)) / 4
    neg = -(3 * math.log(0.8) + math.log(0.7) + 8 * math.log(0.5)) / 12
    assert float(loss) == pytest.approx(pos + neg, rel=1e-5)

    # a second image without boxes: 16 more negative bags (classes 1 and 2, all rows and cols)
    probs2 = torch.cat([probs, torch.stack([1 - P1, P1, p2]).unsqueeze(0)])
    loss2 = tightness_prior_loss(probs2, boxes + [torch.zeros(0, 4)], labels + [torch.zeros(0)], activation="none")
    neg2 = -(
        3 * math.log(0.8) + math.log(0.7) + 8 * math.log(0.5)  # image 0
        # image 1, class 1: rows of P1 have max .2 .8 .7 .2, columns .3 .8 .6 .2; class 2: 8 x max .5
        + 3 * math.log(0.8) + 2 * math.log(0.2) + math.log(0.3) + math.log(0.4) + math.log(0.7)
        + 8 * math.log(0.5)
    ) / 28
    assert float(loss2) == pytest.approx(pos + neg2, rel=1e-5)


def test_tightness_softmax_and_gradient():
    logits = torch.randn(2, 3, 5, 6, generator=torch.Generator().manual_seed(0), requires_grad=True)
    boxes = [torch.tensor([[0.5, 1.0, 4.0, 5.0]]), torch.tensor([[0.0, 0.0, 6.0, 2.0], [1.0, 1.0, 3.0, 4.0]])]
    labels = [torch.tensor([2]), torch.tensor([1, 1])]
    loss = tightness_prior_loss(logits, boxes, labels)
    ref = tightness_prior_loss(logits.softmax(dim=1), boxes, labels, activation="none")
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_tightness_pushes_probability_into_box():
    """Gradient descent on the loss alone makes box rows/cols positive and the rest negative."""
    logits = torch.zeros(1, 2, 8, 8, requires_grad=True)
    boxes, labels = [torch.tensor([[2.0, 3.0, 6.0, 7.0]])], [torch.tensor([1])]
    for _ in range(40):  # plain gradient descent
        (grad,) = torch.autograd.grad(tightness_prior_loss(logits, boxes, labels), logits)
        with torch.no_grad():
            logits -= 5.0 * grad
    fg = logits.detach().softmax(dim=1)[0, 1]
    outside = torch.ones(8, 8, dtype=torch.bool)
    outside[3:7, 2:6] = False
    assert fg[3:7, 2:6].amax(dim=1).min() > 0.5  # every box row has a positive pixel
    assert fg[3:7, 2:6].amax(dim=0).min() > 0.5  # and every box column
    assert fg[outside].max() < 0.5


def test_pairwise_hand_computed():
    probs = torch.tensor([[0.0, 1.0], [0.0, 1.0]]).reshape(1, 1, 2, 2)
    # pairs: right (0,1),(0,1) -> 1, 1; down -> 0, 0; down-right (0 -> 1) -> 1; down-left (1 -> 0) -> 1
    assert float(pairwise_smoothness_loss(probs)) == pytest.approx(4 / 6)
    # image: left column black, right column white -> every pair crossing columns has colour distance^2 = 3
    image = torch.tensor([[0.0, 1.0], [0.0, 1.0]]).reshape(1, 1, 2, 2).repeat(1, 3, 1, 1)
    sigma = 1.0
    w = math.exp(-3 / (2 * sigma**2))
    assert float(pairwise_smoothness_loss(probs, image, sigma=sigma)) == pytest.approx(4 * w / 6, rel=1e-6)
    assert float(pairwise_smoothness_loss(torch.full((2, 3, 4, 5), 0.3))) == 0.0


# --------------------------------------------------------------------------------------------- scoring
def test_overlap_cost_hand_computed():
    cand = np.zeros((6, 8), bool)
    cand[1:4, 2:5] = True  # tight box (2, 1, 5, 4), area 9
    cand[2, 3] = False
    assert overlap_cost(cand, [2, 1, 6, 4]) == pytest.approx(1 - 9 / 12)
    assert overlap_cost(cand, [2, 1, 5, 4]) == pytest.approx(0.0)
    # box (0, 0, 3, 2): intersection cols 2..3 x rows 1..2 = 1 x 1 = 1; union 9 + 6 - 1 = 14
    assert overlap_cost(torch.from_numpy(cand), [0, 0, 3, 2]) == pytest.approx(1 - 1 / 14)
    assert overlap_cost(np.zeros((6, 8), bool), [2, 1, 6, 4]) == 1.0


def test_cross_entropy_cost_hand_computed():
    probs = torch.tensor(
        [
            [[0.9, 0.2, 0.5], [0.6, 0.3, 0.5]],  # background
            [[0.1, 0.8, 0.5], [0.4, 0.7, 0.5]],  # class 1
        ]
    )
    cand = np.array([[False, True, True], [False, True, True]])
    box = [0, 0, 2, 2]  # first two columns only
    # labels inside box: [[0, 1], [0, 1]] -> probs 0.9, 0.8, 0.6, 0.7
    expected = -(math.log(0.9) + math.log(0.8) + math.log(0.6) + math.log(0.7)) / 4
    assert cross_entropy_cost(probs.log(), cand, 1, box) == pytest.approx(expected, rel=1e-6)
    scores = score_candidates([cand, np.zeros((2, 3), bool)], box, 1, probs.log(), weight=2.0)
    # candidate 0: tight box (1, 0, 3, 2) vs (0, 0, 2, 2): inter 2, union 6 -> overlap cost 2/3
    empty_ce = -(math.log(0.9) + math.log(0.2) + math.log(0.6) + math.log(0.3)) / 4
    np.testing.assert_allclose(scores.numpy(), [2 / 3 + 2 * expected, 1.0 + 2 * empty_ce], rtol=1e-6)
    no_net = score_candidates([cand], box, 1)
    np.testing.assert_allclose(no_net.numpy(), [2 / 3])


def test_select_candidate():
    scores = torch.tensor([0.7, 0.2, 0.9, 0.25, 0.1, 0.8])
    assert select_candidate(scores) == 4
    assert select_candidate(torch.tensor([0.3, 0.1, 0.1])) == 1  # first minimum
    gen = torch.Generator().manual_seed(0)
    picks = {select_candidate(scores, mode="sample", top_k=3, generator=gen) for _ in range(200)}
    assert picks == {4, 1, 3}
    assert select_candidate(scores, mode="sample", top_k=1) == 4
    assert select_candidate(scores, mode="sample", top_k=50, generator=gen) in range(6)
    with pytest.raises(ValueError):
        select_candidate(torch.tensor([]))
    with pytest.raises(ValueError):
        select_candidate(scores, mode="best")


def test_clip_to_box():
    mask = np.ones((4, 5), np.uint8)
    out = clip_to_box(mask, [1.5, 1, 3, 3.2])  # cols 1..2, rows 1..3
    expected = np.zeros((4, 5), np.uint8)
    expected[1:4, 1:3] = 1
    np.testing.assert_array_equal(out, expected)
    assert mask.sum() == 20  # input untouched
    t = clip_to_box(torch.ones(4, 5, dtype=torch.bool), [1.5, 1, 3, 3.2])
    assert t.dtype == torch.bool and t.numpy().astype(np.uint8).tolist() == expected.tolist()


# --------------------------------------------------------------------------------------------- crop inference
def _colour_segmenter(x: torch.Tensor) -> torch.Tensor:
    """A 'perfect' pixel-wise segmenter: class 1 where the red channel is high, else background."""
    fg = 8.0 * (x[:, 0] - 0.5)
    return torch.stack([torch.zeros_like(fg), fg], dim=1)


def test_crop_inference_perfect_segmenter():
    image = torch.zeros(3, 32, 40)
    image[0, 5:11, 6:14] = 1.0
    image[0, 20:30, 25:38] = 1.0
    boxes = torch.tensor([[4.0, 4.0, 12.0, 12.0], [24.0, 19.0, 38.0, 30.0]])
    # context 0.25: box 0 region (2, 2, 14, 14) is 12 x 12, so a 12 x 12 crop is resized by identity
    assert context_region(boxes[0].tolist(), (32, 40), 0.25) == (2, 2, 14, 14)
    fg = 8.0 * (image[0] - 0.5)
    expected = torch.stack([torch.zeros_like(fg), fg]).softmax(dim=0)
    for combine in ("max", "mean"):
        out = box_crop_inference(_colour_segmenter, image, boxes[:1], crop_size=12, context=0.25, combine=combine)
        assert out.shape == (2, 32, 40) and out.dtype == torch.float32
        torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)
    # non-identity resizes (second box, other crop size): labels stay right away from object borders
    out = box_crop_inference(_colour_segmenter, image, boxes, crop_size=(48, 64), context=0.1)
    torch.testing.assert_close(out.sum(dim=0), torch.ones(32, 40))
    labels = out.argmax(dim=0)
    assert (labels[21:29, 26:37] == 1).all() and (labels[6:10, 7:13] == 1).all()
    assert (labels[:, :4] == 0).all() and (labels[12:18] == 0).all()


def test_crop_inference_pastes_crop_prediction_in_region():
    """A segmenter that finds the object only when zoomed in: the crop's answer lands in the box region."""
    crop = (16, 24)

    def zoom_segmenter(x):
        _, _, h, w = x.shape
        logits = torch.zeros(1, 2, h // 2, w // 2)  # lower output resolution, resized by the caller
        if (h, w) == crop:
            logits[:, 1] = 5.0
        else:
            logits[:, 0] = 2.0
        return logits

    image = torch.rand(3, 30, 36, generator=torch.Generator().manual_seed(0))
    boxes = torch.tensor([[10.0, 5.0, 20.0, 15.0]])  # context 0.2: region (8, 3, 22, 17)
    full = torch.tensor([math.exp(2), 1.0]) / (math.exp(2) + 1)
    zoom = torch.tensor([1.0, math.exp(5)]) / (1 + math.exp(5))
    inside = torch.zeros(30, 36, dtype=torch.bool)
    inside[3:17, 8:22] = True

    out = box_crop_inference(zoom_segmenter, image, boxes, crop_size=crop, context=0.2, combine="max")
    mx = torch.maximum(full, zoom)
    mx = mx / mx.sum()
    torch.testing.assert_close(out[:, inside], mx[:, None].expand(2, int(inside.sum())))
    torch.testing.assert_close(out[:, ~inside], full[:, None].expand(2, int((~inside).sum())))

    out = box_crop_inference(zoom_segmenter, image, boxes, crop_size=crop, context=0.2, combine="mean")
    torch.testing.assert_close(out[:, inside], ((full + zoom) / 2)[:, None].expand(2, int(inside.sum())))

    out = box_crop_inference(zoom_segmenter, image, boxes, crop_size=crop, context=0.2, include_full_image=False)
    torch.testing.assert_close(out[:, inside], zoom[:, None].expand(2, int(inside.sum())))
    assert (out[:, ~inside] == 0).all()


def test_crop_inference_no_boxes_and_bad_box():
    image = torch.rand(3, 10, 12)
    out = box_crop_inference(_colour_segmenter, image, torch.zeros(0, 4), crop_size=8)
    fg = 8.0 * (image[0] - 0.5)
    torch.testing.assert_close(out, torch.stack([torch.zeros_like(fg), fg]).softmax(dim=0))
    with pytest.raises(DataError):
        box_crop_inference(_colour_segmenter, image, torch.tensor([[0.0, 0.0, 13.0, 5.0]]), crop_size=8)
