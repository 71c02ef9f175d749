"""Dense CRF post-processing (fully connected CRF of Kraehenbuehl & Koltun).

Thin, validated wrappers around ``pydensecrf.densecrf.DenseCRF2D`` (PyPI package
``pydensecrf2``). All functions are pure: they take numpy arrays and return new
numpy arrays. ``pydensecrf`` is imported lazily so that the rest of
``lightning_wsss.refine`` works without it.

Conventions: images are uint8 RGB ``[H, W, 3]``; probabilities / scores are
``[C, H, W]`` with the background at channel 0; label maps are ``[H, W]`` with
255 = unknown.
"""

from __future__ import annotations

import multiprocessing
import os
from dataclasses import dataclass, fields, replace
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..images import check_rgb_image
from .shared_arrays import Layout, SharedArrays

IGNORE_INDEX = 255
PROB_CLIP = 1e-5

__all__ = [
    "CRFParams",
    "IRN_CRF_PARAMS",
    "scaled_crf_params",
    "crf_params_for",
    "CRF_SPEC_OPTIONS",
    "crf_from_scores",
    "crf_from_probs",
    "crf_from_labels",
    "crf_labels",
    "batch_crf",
]


@dataclass(frozen=True)
class CRFParams:
    """Pairwise-kernel parameters of the dense CRF.

    Defaults are the ones used by PSA (Ahn & Kwak, CVPR 2018) for its CAM CRF.
    ``gauss_*``: appearance-free smoothness kernel; ``bilateral_*``: appearance
    kernel (position std ``bilateral_sxy`` in pixels, colour std
    ``bilateral_srgb`` in 0..255 units); ``iterations``: mean-field steps.
    """

    gauss_sxy: float = 3
    gauss_compat: float = 3
    bilateral_sxy: float = 80
    bilateral_srgb: float = 13
    bilateral_compat: float = 10
    iterations: int = 10


#: Parameters of IRN's ``crf_inference_label`` (used for its IR labels).
IRN_CRF_PARAMS = CRFParams(bilateral_sxy=50, bilateral_srgb=5)


def scaled_crf_params(image_hw: Tuple[int, int], params: Optional[CRFParams] = None,
                      reference: float = 500.0) -> CRFParams:
    """CRF parameters whose spatial widths scale with the image: psa's (bilateral sxy 80, Gaussian sxy 3) are
    meant for ~500 px VOC images; on a 160 px tile a bilateral kernel of 80 px spans the whole image and floods
    thin objects' boxes.

    Args:
        image_hw: ``(H, W)``.
        params: the ``CRFParams`` at the reference size (default: psa's).
        reference: the image side (max of H, W) ``params`` are meant for.

    Returns:
        ``CRFParams`` with ``gauss_sxy`` and ``bilateral_sxy`` times ``max(H, W) / reference`` (at least 1 px).
    """
    base = params or CRFParams()
    factor = max(image_hw) / float(reference)
    return replace(base, gauss_sxy=max(1.0, base.gauss_sxy * factor),
                   bilateral_sxy=max(1.0, base.bilateral_sxy * factor))


CRFSpec = Union[bool, Mapping[str, Any], None]
"""How a stage asks for a dense CRF: ``False`` / ``None`` (none), ``True`` (psa's parameters as they are), or a
mapping of :class:`CRFParams` fields plus ``scale_params`` (scale the spatial widths from ``reference`` px,
default 500, to the image: :func:`scaled_crf_params`)."""

CRF_SPEC_OPTIONS: Dict[str, type] = {"scale_params": bool, "reference": float}
"""The keys a :data:`CRFSpec` mapping takes besides the :class:`CRFParams` fields, and their types."""


def crf_params_for(spec: CRFSpec, image_hw: Tuple[int, int], base: CRFParams = CRFParams()) -> Optional[CRFParams]:
    """The :class:`CRFParams` a :data:`CRFSpec` asks for on an image of size ``image_hw`` (``None``: no CRF).

    ``base`` holds the fields a mapping leaves out (default: psa's parameters); ``True`` is ``base`` itself.

    Raises:
        ValueError: a key that is neither a ``CRFParams`` field nor ``scale_params`` / ``reference``.
    """
    if spec is None or spec is False:
        return None
    if spec is True:
        return base
    if not isinstance(spec, Mapping):
        raise ValueError(f"a CRF setting is true, false or a mapping of CRFParams fields, got {spec!r}")
    options = dict(spec)
    scale = bool(options.pop("scale_params", False))
    reference = float(options.pop("reference", 500.0))
    known = {f.name for f in fields(CRFParams)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown CRF setting(s) {unknown}; expected {sorted(known)} or {sorted(CRF_SPEC_OPTIONS)}")
    params = replace(base, **options)
    return scaled_crf_params(image_hw, params, reference) if scale else params


_IMPORT_HINT = (
    "lightning_wsss.refine.crf needs the 'pydensecrf' module; install it with "
    "`pip install pydensecrf2`."
)


def _densecrf_module() -> Any:
    """Return the ``pydensecrf.densecrf`` module or raise a helpful ImportError."""
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(_IMPORT_HINT) from exc
    return dcrf


def _unary_from_labels() -> Any:
    """Return ``pydensecrf.utils.unary_from_labels`` or raise a helpful ImportError."""
    try:
        from pydensecrf.utils import unary_from_labels
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(_IMPORT_HINT) from exc
    return unary_from_labels


def _run_crf(image: np.ndarray, unary: np.ndarray, params: CRFParams) -> np.ndarray:
    """Mean-field inference. ``unary``: float32 [C, H*W] energies. Returns float32 [C, H, W]."""
    dcrf = _densecrf_module()
    h, w = image.shape[:2]
    n_labels = unary.shape[0]
    crf = dcrf.DenseCRF2D(w, h, n_labels)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=params.gauss_sxy, compat=params.gauss_compat)
    crf.addPairwiseBilateral(
        sxy=params.bilateral_sxy,
        srgb=params.bilateral_srgb,
        rgbim=image,
        compat=params.bilateral_compat,
    )
    q = crf.inference(int(params.iterations))
    return np.asarray(q, dtype=np.float32).reshape(n_labels, h, w)


def _check_probs(image: np.ndarray, probs: np.ndarray, min_classes: int = 2):
    """``(uint8 image [H, W, 3], probs [C, H, W])`` after checking that they fit and ``C >= min_classes``
    (ValueError otherwise)."""
    image = check_rgb_image(image)
    probs = np.asarray(probs)
    if probs.ndim != 3:
        raise ValueError(f"probs must have shape [C, H, W], got {tuple(probs.shape)}")
    if probs.shape[1:] != image.shape[:2]:
        raise ValueError(
            f"probs spatial shape {tuple(probs.shape[1:])} (probs {tuple(probs.shape)}) does not "
            f"match image {tuple(image.shape)}"
        )
    if probs.shape[0] < min_classes:
        raise ValueError(f"probs needs at least {min_classes} classes, got {tuple(probs.shape)}")
    return image, probs


def crf_from_probs(
    image: np.ndarray, probs: np.ndarray, params: CRFParams = CRFParams()
) -> np.ndarray:
    """Refine per-class probabilities with a dense CRF.

    Args:
        image: uint8 RGB image [H, W, 3].
        probs: float scores [C, H, W] in [0, 1] (need not sum to 1; PSA feeds raw
            CAM scores). The unary energy is ``-log(clip(p, 1e-5, 1))``.
        params: CRF kernel parameters.

    Returns:
        float32 array [C, H, W]: CRF marginals (sum to 1 over C at every pixel).
    """
    image, probs = _check_probs(image, probs)
    p = np.clip(probs.astype(np.float32, copy=False), PROB_CLIP, 1.0)
    unary = -np.log(p).reshape(probs.shape[0], -1)
    return _run_crf(image, np.ascontiguousarray(unary, dtype=np.float32), params)


def crf_from_scores(image: np.ndarray, scores: np.ndarray, spec: CRFSpec = True) -> np.ndarray:
    """Dense CRF of non-negative scores (walked maps, CAMs with a background channel), each pixel's scores divided
    by their sum first.

    Args:
        image: uint8 RGB image [H, W, 3].
        scores: float scores [C, H, W] >= 0 (negative values count as 0).
        spec: the CRF's :data:`CRFSpec` (``False`` / ``None``: the normalised scores are returned unchanged).

    Returns:
        float32 array [C, H, W]: CRF marginals (or the normalised scores; all ones where ``C`` is 1).
    """
    image, scores = _check_probs(image, scores, min_classes=1)
    if scores.shape[0] == 1:  # one channel (an image with no foreground class): nothing to refine
        return np.ones(scores.shape, np.float32)
    p = np.clip(scores.astype(np.float32), 0.0, None)
    p = p / np.clip(p.sum(axis=0, keepdims=True), 1e-8, None)
    params = crf_params_for(spec, image.shape[:2])
    return p if params is None else crf_from_probs(image, p, params)


def crf_from_labels(
    image: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    confidence: float = 0.7,
    params: CRFParams = CRFParams(),
) -> np.ndarray:
    """Refine a hard label map with a dense CRF.

    Each labelled pixel gets probability ``confidence`` for its label and
    ``(1 - confidence) / (num_classes - 1)`` for the others; pixels labelled 255
    get a uniform unary (pydensecrf's ``zero_unsure`` mode; labels are shifted by
    one internally because pydensecrf uses 0 for "unsure").

    Args:
        image: uint8 RGB image [H, W, 3].
        labels: int label map [H, W], values in 0..num_classes-1 or 255.
        num_classes: number of classes C (including background).
        confidence: probability given to the annotated label, in (0, 1).
        params: CRF kernel parameters.

    Returns:
        float32 array [C, H, W]: CRF marginals.
    """
    image = check_rgb_image(image)
    labels = np.asarray(labels)
    if labels.shape != image.shape[:2]:
        raise ValueError(
            f"labels shape {tuple(labels.shape)} does not match image {tuple(image.shape)}"
        )
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    labels = labels.astype(np.int64)
    unknown = labels == IGNORE_INDEX
    bad = (~unknown) & ((labels < 0) | (labels >= num_classes))
    if bad.any():
        raise ValueError(
            f"labels must be in 0..{num_classes - 1} or {IGNORE_INDEX}; found "
            f"{sorted(np.unique(labels[bad]).tolist())[:10]}"
        )
    shifted = np.where(unknown, 0, labels + 1)  # pydensecrf: 0 = unsure, 1..C = classes
    unary = _unary_from_labels()(shifted, num_classes, gt_prob=confidence, zero_unsure=True)
    return _run_crf(image, np.ascontiguousarray(unary, dtype=np.float32), params)


def crf_labels(
    image: np.ndarray,
    probs: Optional[np.ndarray] = None,
    *,
    labels: Optional[np.ndarray] = None,
    num_classes: Optional[int] = None,
    confidence: float = 0.7,
    params: CRFParams = CRFParams(),
) -> np.ndarray:
    """CRF then argmax. Give either ``probs`` [C, H, W] or ``labels`` [H, W] + ``num_classes``.

    Returns:
        uint8 label map [H, W] (channel index of the CRF argmax).
    """
    if (probs is None) == (labels is None):
        raise ValueError("crf_labels needs exactly one of probs= or labels=")
    if probs is not None:
        q = crf_from_probs(image, probs, params)
    else:
        if num_classes is None:
            raise ValueError("crf_labels(labels=...) also needs num_classes")
        q = crf_from_labels(image, labels, num_classes, confidence, params)
    if q.shape[0] > 256:
        raise ValueError(f"cannot store {q.shape[0]} classes in uint8")
    return np.argmax(q, axis=0).astype(np.uint8)


_WORKER: dict = {}
"""A pool worker's state: the mapped input and output arrays and the CRF parameters."""


def _attach_worker(inputs: Layout, outputs: Layout, params: CRFParams) -> None:
    """Pool initializer: one thread per worker for the libraries it may use, then map the batch's arrays."""
    from ..threads import limit_worker_threads

    limit_worker_threads()
    _WORKER.update(inputs=SharedArrays.attach(inputs), outputs=SharedArrays.attach(outputs), params=params)


def _crf_job(index: int) -> None:
    """Pool job: the CRF of image ``index``, read from and written to the mapped arrays (nothing pickled)."""
    inputs, outputs = _WORKER["inputs"], _WORKER["outputs"]
    outputs.view(index)[...] = crf_from_probs(inputs.view(2 * index), inputs.view(2 * index + 1), _WORKER["params"])


def batch_crf(
    images: Sequence[np.ndarray],
    probs: Sequence[np.ndarray],
    params: CRFParams = CRFParams(),
    processes: Optional[int] = None,
    mp_context: Optional[str] = None,
) -> List[np.ndarray]:
    """Run :func:`crf_from_probs` over many images, in a process pool.

    The images, probabilities and marginals travel through one memory-mapped file
    (:class:`~lightning_wsss.refine.shared_arrays.SharedArrays`), not through the pool's pipes, and every worker
    runs with one thread (:func:`~lightning_wsss.threads.limit_worker_threads`); ``benchmarks/crf.py`` measures
    the pool against serial.

    Args:
        images: sequence of uint8 images [H_i, W_i, 3].
        probs: sequence of float scores [C_i, H_i, W_i] (same length as ``images``).
        params: CRF parameters shared by all images.
        processes: pool size; ``None`` -> ``os.cpu_count()``; 0 or 1 -> run serially
            in this process. Never more processes than images.
        mp_context: multiprocessing start method (``"spawn"``, ``"fork"``,
            ``"forkserver"``) or ``None`` for the platform default. The worker is a
            top-level function, so every start method works.

    Returns:
        list of float32 arrays [C_i, H_i, W_i], in input order (the same values as serial).
    """
    images, probs = list(images), list(probs)
    if len(images) != len(probs):
        raise ValueError(f"got {len(images)} images but {len(probs)} probability maps")
    if processes is not None and processes < 0:
        raise ValueError(f"processes must be >= 0 or None, got {processes}")
    n_proc = min((os.cpu_count() or 1) if processes is None else processes, len(images))
    if n_proc <= 1:
        return [crf_from_probs(image, p, params) for image, p in zip(images, probs)]
    pairs = [_check_probs(image, p) for image, p in zip(images, probs)]
    inputs = SharedArrays.create([spec for image, p in pairs for spec in ((image.shape, "uint8"), (p.shape, "float32"))])
    outputs = SharedArrays.create([(p.shape, "float32") for _, p in pairs])
    try:
        for index, (image, p) in enumerate(pairs):
            inputs.view(2 * index)[...] = image
            inputs.view(2 * index + 1)[...] = p  # crf_from_probs casts to float32 first, so this changes nothing
        ctx = multiprocessing.get_context(mp_context)
        if ctx.get_start_method() == "forkserver":  # the server imports this module once, not every worker
            ctx.set_forkserver_preload([__name__])
        with ctx.Pool(n_proc, initializer=_attach_worker, initargs=(inputs.layout, outputs.layout, params)) as pool:
            pool.map(_crf_job, range(len(pairs)), chunksize=max(1, len(pairs) // (4 * n_proc)))
        return outputs.copies(range(len(pairs)))
    finally:
        inputs.unlink()
        outputs.unlink()
