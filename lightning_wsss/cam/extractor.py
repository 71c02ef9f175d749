"""``CAMExtractor``: class activation maps for all requested classes of a batch in one forward pass.

The extractor hooks the target layers of any classifier ``model(images) -> logits [B, num_classes]``:

* The forward pass runs without autograd up to the first target layer; the hook there replaces the layer's
  output by a fresh leaf tensor and switches autograd on, so the graph only covers the network *after*
  the target layer (the part the gradients need) and nothing before it is recorded.
* Gradients come from ``torch.autograd.grad(outputs=scores, inputs=activations)``: autograd stops at the
  target layers and never writes any parameter's ``.grad``.
* The ``K`` class gradients per image come from one vmapped backward (``is_grads_batched=True``) over the
  ``K`` one-hot score selections (images are independent, so one selection covers the whole batch); if
  vmap cannot run a backward formula, it falls back to ``K`` backward calls with ``retain_graph``.
* ``method="cam"`` needs no backward at all: the whole forward runs under ``torch.no_grad``.
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from lightning_wsss.cam.functional import (
    NORMALIZE_MODES,
    cam_weights_from_classifier,
    gradcam_weights,
    gradcampp_weights,
    layercam_map,
    normalize_maps,
    upsample,
    weighted_sum,
    xgradcam_weights,
)

__all__ = ["CAMExtractor", "METHODS", "find_classifier_weight"]

METHODS = ("cam", "gradcam", "gradcam++", "xgradcam", "layercam")
_ALIASES = {"gradcampp": "gradcam++", "gradcamplusplus": "gradcam++", "grad-cam": "gradcam",
            "grad-cam++": "gradcam++", "xgrad-cam": "xgradcam", "layer-cam": "layercam"}


def find_classifier_weight(model: nn.Module) -> Tensor:
    """The weight of the model's classifier: its last ``nn.Linear`` or 1x1 ``nn.Conv2d`` (in module order).

    Returns:
        float tensor ``[C, D]`` (detached).
    """
    found: Optional[Tensor] = None
    for module in model.modules():
        if isinstance(module, nn.Linear):
            found = module.weight
        elif isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1:
            found = module.weight
    if found is None:
        raise ValueError("method='cam' needs classifier_weight: no nn.Linear or 1x1 nn.Conv2d found in the model")
    return found.detach().flatten(1)


class CAMExtractor:
    """Class activation maps for a batch of images and several classes per image.

    Args:
        model: any classifier, ``model(images [B, 3, H, W]) -> logits [B, num_classes]``.
        target_layers: modules whose outputs are explained (the last conv block, usually). Each must
            return a tensor ``[B, D, h, w]`` (or a token tensor ``[B, N, D]`` with ``reshape_transform``).
            Several layers: every layer's map is normalised and upsampled, then the maps are summed and
            normalised again (LayerCAM's multi-layer fusion; pytorch-grad-cam does the same for any method).
        method: ``"cam"``, ``"gradcam"``, ``"gradcam++"``, ``"xgradcam"`` or ``"layercam"``.
        normalize: ``"max"`` (each map divided by its max, the WSSS convention), ``"minmax"`` (identical to
            pytorch-grad-cam's output) or ``"none"`` (raw ReLU'd maps, upsampled; summed over layers).
        reshape_transform: maps a layer output (e.g. transformer tokens ``[B, N, D]``) to ``[B, D, h, w]``;
            applied to activations and to gradients, like pytorch-grad-cam.
        classifier_weight: ``[C, D]`` weights for ``method="cam"``; default: the last ``nn.Linear`` /
            1x1 ``nn.Conv2d`` of the model.
        eval_mode: run the model in eval mode during the call (BatchNorm running statistics untouched,
            dropout off) -- results do not depend on whether the caller called ``model.eval()``. Every
            submodule's own ``training`` flag is restored afterwards. ``False`` uses the model as it is.
        eps: added to normalisation denominators (1e-7 as in pytorch-grad-cam).
        batched_grads: ``None`` (auto: vmapped backward, loop fallback), ``True`` (vmapped only) or
            ``False`` (``K`` backward calls with ``retain_graph``).

    Call with ``images [B, 3, H, W]`` and ``class_ids`` long ``[B, K]`` (indices into the logits, ``-1`` =
    padding). Returns float ``[B, K, H, W]`` at input resolution; padded entries are all zero. Callers
    need no ``torch.no_grad``/``enable_grad`` context and parameters' ``.grad`` are never touched.
    Works inside ``torch.inference_mode`` too. A target layer run several times per forward is explained
    at its last call. Hooks are removed by :meth:`release` (also on ``with`` exit and garbage collection).
    """

    def __init__(
        self,
        model: nn.Module,
        target_layers: Sequence[nn.Module],
        method: str = "gradcam",
        normalize: str = "max",
        reshape_transform: Optional[Callable[[Tensor], Tensor]] = None,
        classifier_weight: Optional[Tensor] = None,
        *,
        eval_mode: bool = True,
        eps: float = 1e-7,
        batched_grads: Optional[bool] = None,
    ) -> None:
        method = _ALIASES.get(method.lower(), method.lower())
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if normalize not in NORMALIZE_MODES:
            raise ValueError(f"normalize must be one of {NORMALIZE_MODES}, got {normalize!r}")
        if isinstance(target_layers, nn.Module):
            target_layers = [target_layers]
        target_layers = list(target_layers)
        if not target_layers:
            raise ValueError("target_layers is empty")
        if method == "cam" and len(target_layers) != 1:
            raise ValueError("method='cam' takes exactly one target layer (the classifier's input features)")
        self.model = model
        self.target_layers = target_layers
        self.method = method
        self.normalize = normalize
        self.reshape_transform = reshape_transform
        self.eval_mode = eval_mode
        self.eps = eps
        self.batched_grads = batched_grads
        self._classifier_weight = classifier_weight
        self._needs_grad = method != "cam"
        self._captured: Dict[int, Tensor] = {}
        self._capturing = False
        self._handles = [
            layer.register_forward_hook(self._make_hook(i)) for i, layer in enumerate(target_layers)
        ]

    # ------------------------------------------------------------------ hooks
    def _make_hook(self, index: int) -> Callable:
        # The module holds the hook; a weak reference lets an unreferenced extractor be collected (and its
        # __del__ remove the hooks) instead of living as long as the model.
        owner = weakref.ref(self)

        def hook(module: nn.Module, inputs: Tuple, output: Tensor) -> Optional[Tensor]:
            self = owner()
            if self is None or not self._capturing:
                return None
            if not isinstance(output, Tensor):
                raise TypeError(
                    f"target layer {type(module).__name__} returned {type(output).__name__}; a tensor is needed"
                )
            if not self._needs_grad:
                # A copy, so in-place ops after the layer (e.g. ReLU(inplace=True)) cannot alter the capture.
                self._captured[index] = output.detach().clone()
                return None
            if torch.is_grad_enabled() and output.requires_grad:
                # A later target layer: already inside the recorded part of the graph.
                self._captured[index] = output
            else:
                # First target layer reached: cut the graph here and start recording.
                output = output.detach().requires_grad_(True)
                self._captured[index] = output
                torch.set_grad_enabled(True)
            # Hand a copy downstream so in-place ops (e.g. ReLU(inplace=True)) cannot alter the capture.
            return output.clone()

        return hook

    # -------------------------------------------------------------- lifecycle
    def release(self) -> None:
        """Remove the forward hooks from the target layers (idempotent)."""
        for handle in getattr(self, "_handles", []):
            handle.remove()
        self._handles = []
        self._captured = {}

    def __enter__(self) -> "CAMExtractor":
        return self

    def __exit__(self, exc_type, exc_value, traceback) -> None:
        self.release()

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:  # interpreter shutdown: nothing sensible left to do
            pass

    # ----------------------------------------------------------------- public
    def __call__(self, images: Tensor, class_ids: Tensor) -> Tensor:
        """Maps for every (image, class) pair.

        Args:
            images: float ``[B, 3, H, W]``.
            class_ids: long ``[B, K]`` logit indices; ``-1`` = padding.

        Returns:
            float tensor ``[B, K, H, W]`` (zeros where ``class_ids == -1``).
        """
        if not self._handles:
            raise RuntimeError("CAMExtractor was released")
        if images.dim() != 4:
            raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
        class_ids = torch.as_tensor(class_ids, device=images.device).long()
        if class_ids.dim() == 1:
            class_ids = class_ids[:, None]
        if class_ids.dim() != 2 or class_ids.shape[0] != images.shape[0]:
            raise ValueError(f"class_ids must be [B, K] with B={images.shape[0]}, got {tuple(class_ids.shape)}")
        out_size = images.shape[-2:]
        valid = class_ids >= 0

        # Gradient methods also work inside torch.inference_mode (e.g. Lightning's predict/validation loops):
        # nothing before the target layer is recorded, and everything after it runs outside inference mode.
        with torch.inference_mode(False) if self._needs_grad else contextlib.nullcontext():
            if self._needs_grad and images.is_inference():
                images = images.clone()
            logits, acts = self._forward(images)
            try:
                if logits.dim() != 2:
                    raise ValueError(f"the model must return logits [B, num_classes], got {tuple(logits.shape)}")
                if bool((class_ids >= logits.shape[1]).any()):
                    raise ValueError(f"class_ids out of range for {logits.shape[1]} model outputs")
                if self.method == "cam":
                    layer_maps = [self._cam_maps(acts[0], class_ids)]
                else:
                    grads = self._gradients(logits, acts, class_ids, valid)
                    layer_maps = [self._grad_maps(self._reshape(a), g) for a, g in zip(acts, grads)]
            finally:
                del logits, acts
                self._captured = {}

        fused = None
        for maps in layer_maps:
            maps = upsample(normalize_maps(maps.float(), self.normalize, self.eps), out_size)
            fused = maps if fused is None else fused + maps
        if len(layer_maps) > 1:
            fused = normalize_maps(fused, self.normalize, self.eps)
        elif self.normalize != "none":
            # pytorch-grad-cam re-normalises after the resize; bilinear resampling can lower the peak.
            fused = normalize_maps(fused, self.normalize, self.eps)
        return fused * valid[:, :, None, None].to(fused.dtype)

    # ---------------------------------------------------------------- helpers
    def _forward(self, images: Tensor) -> Tuple[Tensor, List[Tensor]]:
        """Run the model with hooks armed; returns logits and the raw captured layer outputs."""
        modes = [(m, m.training) for m in self.model.modules()] if self.eval_mode else []
        if self.eval_mode:
            self.model.eval()
        self._captured = {}
        self._capturing = True
        try:
            with torch.no_grad():  # the first target layer's hook turns autograd on (gradient methods)
                logits = self.model(images)
        finally:
            self._capturing = False
            for module, flag in modes:
                module.training = flag
        missing = [i for i in range(len(self.target_layers)) if i not in self._captured]
        if missing:
            raise RuntimeError(f"target layer(s) {missing} were not called during the forward pass")
        acts = [self._captured[i] for i in range(len(self.target_layers))]
        if self._needs_grad and logits.grad_fn is None:
            raise RuntimeError("the logits do not depend on the target layers' outputs")
        return logits, acts

    def _reshape(self, tensor: Tensor) -> Tensor:
        tensor = tensor if self.reshape_transform is None else self.reshape_transform(tensor)
        if tensor.dim() != 4:
            raise ValueError(
                f"target layer activations must be [B, D, h, w] (use reshape_transform), got {tuple(tensor.shape)}"
            )
        return tensor

    def _cam_maps(self, activation: Tensor, class_ids: Tensor) -> Tensor:
        acts = self._reshape(activation)
        fc = self._classifier_weight if self._classifier_weight is not None else find_classifier_weight(self.model)
        fc = fc.detach().to(device=acts.device, dtype=acts.dtype).flatten(1)
        if fc.shape[1] != acts.shape[1]:
            raise ValueError(f"classifier weight has {fc.shape[1]} inputs but the target layer has {acts.shape[1]} channels")
        return weighted_sum(cam_weights_from_classifier(fc, class_ids), acts, relu=True)

    def _gradients(self, logits: Tensor, acts: List[Tensor], class_ids: Tensor, valid: Tensor) -> List[Tensor]:
        """Per-class gradients of the selected logits w.r.t. each captured output: list of ``[B, K, ...]``."""
        batch, k = class_ids.shape
        selection = torch.zeros((k,) + tuple(logits.shape), dtype=logits.dtype, device=logits.device)
        rows = torch.arange(batch, device=logits.device)
        for j in range(k):
            selection[j, rows, class_ids[:, j].clamp(min=0)] = valid[:, j].to(logits.dtype)
        if self.batched_grads is not False:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # vmap's "no batching rule, falling back" performance notes
                    grads = torch.autograd.grad(
                        outputs=logits, inputs=acts, grad_outputs=selection,
                        is_grads_batched=True, allow_unused=True, retain_graph=self.batched_grads is None,
                    )
                return [self._batched_to_bk(g, a, k) for g, a in zip(grads, acts)]
            except RuntimeError:
                if self.batched_grads:
                    raise
        per_class: List[List[Tensor]] = [[] for _ in acts]
        for j in range(k):
            if bool(valid[:, j].any()):
                grads = torch.autograd.grad(
                    outputs=logits, inputs=acts, grad_outputs=selection[j],
                    retain_graph=j < k - 1, allow_unused=True,
                )
            else:
                grads = (None,) * len(acts)
            for i, (g, a) in enumerate(zip(grads, acts)):
                per_class[i].append(torch.zeros_like(a) if g is None else g)
        return [self._batched_to_bk(torch.stack(gs), a, k) for gs, a in zip(per_class, acts)]

    def _batched_to_bk(self, grad: Optional[Tensor], act: Tensor, k: int) -> Tensor:
        """``[K, B, ...]`` raw gradients (``None``: unused layer, zeros) -> reshaped ``[B, K, D, h, w]``."""
        if grad is None:
            grad = torch.zeros((k,) + tuple(act.shape), dtype=act.dtype, device=act.device)
        b = grad.shape[1]
        grad = self._reshape(grad.reshape((k * b,) + tuple(grad.shape[2:])))
        return grad.reshape((k, b) + tuple(grad.shape[1:])).transpose(0, 1)

    def _grad_maps(self, acts: Tensor, grads: Tensor) -> Tensor:
        acts = acts.detach()
        if self.method == "gradcam":
            return weighted_sum(gradcam_weights(grads), acts)
        if self.method == "gradcam++":
            return weighted_sum(gradcampp_weights(grads, acts), acts)
        if self.method == "xgradcam":
            return weighted_sum(xgradcam_weights(grads, acts), acts)
        return layercam_map(grads, acts)
