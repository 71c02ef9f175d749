"""The built-in stages, one declaration each: function, artifacts read and written, DataModule, options and
summary keys. The supervision presets (``presets.yaml``) list them in order."""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

from . import stages as S
from .config import deep_merge, resolve_class
from .options import (Check, ClassName, Data, Fields, KeywordsOf, Model, OneOf, Trainer, Where, check_fields,
                      check_keywords, check_mapping, parameters)
from .registry import StageSpec, lookup, register_stage

__all__ = ["classifier_reads", "affinity_reads", "segmenter_reads", "inherit_box_init_kwargs"]

# ---------------------------------------------------------------------------------------------- option checks
TRAINER, DATA = Trainer(), Data()


class ListOf(Check):
    """A list whose items pass ``item``."""

    def __init__(self, item: Check) -> None:
        self.item = item

    def __call__(self, value: Any, where: Where) -> None:
        if not isinstance(value, list):
            where.fail(f"expected a list, got {value!r}")
        for index, item in enumerate(value):
            self.item(item, where.at(index))


def _initializers() -> List[str]:
    from ..boxes.initializers import INITIALIZERS

    return sorted(INITIALIZERS)


class Initializer(Check):
    """A box initializer's name."""

    def __call__(self, value: Any, where: Where) -> None:
        OneOf(_initializers())(value, where)


class InitializerKwargs(Check):
    """``{initializer: {keyword: value}}`` for the box initializers."""

    def __call__(self, value: Any, where: Where) -> None:
        from ..boxes.initializers import INITIALIZERS

        for name, kwargs in check_mapping(value, where).items():
            Initializer()(name, where.at(name))
            check_keywords(kwargs, INITIALIZERS[name], where.at(name), skip=("image", "boxes", "box_labels", "source"))


class AffinityLabels(Check):
    """``labels: {mode: psa | irn, crf_params: {...}, ...}``: the confident-label function's keyword arguments
    (``crf_params``: a CRF setting, :class:`CRFSetting`)."""

    def __call__(self, value: Any, where: Where) -> None:
        from ..refine import affinity_labels
        from ..refine.affinity_targets import mode_kwargs

        labels = dict(check_mapping(value, where))
        mode = labels.pop("mode", "psa")
        OneOf(("psa", "irn"))(mode, where.at("mode"))
        CRFSetting()(labels.pop("crf_params", None), where.at("crf_params"))
        function = {"psa": affinity_labels.affinity_label_map_psa, "irn": affinity_labels.affinity_label_map_irn}[mode]
        # the other mode's parameters (merged from a base config) are ignored at run time, as here
        check_keywords(mode_kwargs(mode, labels), function, where,
                       skip=("image", "cams_fg", "class_ids", "num_classes", "params"))


def _section_model(config: Mapping[str, Any], stage: Optional[str], default: str) -> str:
    section = (config.get("stages") or {}).get(stage or "") or {}
    return (section.get("model") or {}).get("class_path", default)


def _cam_class(where: Where):
    """The CAM method the ``cam`` settings go to: the stage's ``class_path``, else the classifier's model."""
    name = where.section.get("class_path") or _section_model(where.config, where.inputs.get("classifier"), "CAMClassifier")
    try:
        return resolve_class(name, "model")
    except Exception:  # reported at class_path
        return resolve_class("CAMClassifier", "model")


class CRFSetting(Check):
    """A dense-CRF setting (:data:`~lightning_wsss.refine.crf.CRFSpec`): true, false or a mapping of ``CRFParams``
    fields plus ``scale_params`` / ``reference``."""

    def __call__(self, value: Any, where: Where) -> None:
        if value is None or isinstance(value, bool):
            return
        from dataclasses import fields

        from ..refine.crf import CRF_SPEC_OPTIONS, CRFParams

        schema = {f.name: (int if f.name == "iterations" else float) for f in fields(CRFParams)}
        check_fields(value, {**schema, **CRF_SPEC_OPTIONS}, where)


class WalkFlip(Check):
    """``walk_flip``: one of the refiner's ``walk_flips`` (booleans as booleans, not as 0 / 1)."""

    def __init__(self, choices: Sequence[Any]) -> None:
        self.choices = tuple(choices)

    def __call__(self, value: Any, where: Where) -> None:
        if not any(value is c if isinstance(c, bool) else value == c for c in self.choices):
            names = ", ".join(str(c).lower() if isinstance(c, bool) else str(c) for c in self.choices)
            where.fail(f"{value!r} is not one of {names}")


class Walk(Check):
    """``walk: {mode, beta, log_t, ...}``: the refiner's walk arguments (``mode`` is its ``walk_mode``)."""

    def __call__(self, value: Any, where: Where) -> None:
        name = _section_model(where.config, where.inputs.get("refiner"), "AffinityRefiner")
        try:
            refiner = resolve_class(name, "model")
        except Exception:  # reported at the refiner's class_path
            refiner = resolve_class("AffinityRefiner", "model")
        keywords = dict(parameters(refiner) or {})
        keywords["mode"] = keywords.pop("walk_mode", str)
        if "crf" in keywords:
            keywords["crf"] = CRFSetting()
        if "walk_flip" in keywords:
            keywords["walk_flip"] = WalkFlip(refiner.walk_flips)
        check_fields(value, keywords, where)


SCHEDULE = Fields({"epochs": Optional[int], "min_steps": Optional[int], "max_steps": Optional[int]})

# ---------------------------------------------------------------------------------------------- image labels
def _object_masks(datamodule: str) -> bool:
    """Whether a DataModule pastes objects cut out along CAM labels (it takes ``object_mask_dir``: CDA)."""
    try:
        return "object_mask_dir" in (parameters(resolve_class(datamodule, "data")) or {})
    except Exception:  # an unknown class is reported at its key
        return False


def classifier_reads(section: Mapping[str, Any], config: Mapping[str, Any]) -> Sequence[str]:
    """A classifier that pastes objects (CDA) reads the CAM labels of a seed classifier, unless its ``data`` names
    the folder of masks to cut them from (``object_mask_dir``: another stage's run, or the ground truth for an
    oracle bound)."""
    pastes = _object_masks(section.get("datamodule", "ImageLabelDataModule"))
    return ("labels",) if pastes and not (section.get("data") or {}).get("object_mask_dir") else ()


def seed_classifier_config(section: Dict[str, Any], config: Mapping[str, Any]) -> Dict[str, Any]:
    """The plain CAM classifier of the ``classifier`` settings (CDA's seed: the same stage and hash as an image
    pipeline's classifier with those settings): its ``data`` keeps what an ``ImageLabelDataModule`` takes (crop
    and scale, not the pasting)."""
    stage_cfg = deep_merge(config["stages"]["classifier"], {"model": {"class_path": "CAMClassifier"}})
    stage_cfg.pop("datamodule", None)
    plain = parameters(resolve_class("ImageLabelDataModule", "data")) or {}
    data = {k: v for k, v in (stage_cfg.pop("data", None) or {}).items() if k in plain}
    if data:
        stage_cfg["data"] = data
    return stage_cfg


def seed_cams_config(section: Dict[str, Any], config: Mapping[str, Any]) -> Dict[str, Any]:
    """The ``cams`` settings (the seed classifier's CAMs are made as the main ones)."""
    return dict(config["stages"].get("cams") or {})


def cams_config(section: Dict[str, Any], config: Mapping[str, Any]) -> Dict[str, Any]:
    """Hybrid supervision with ``hybrid.restrict_cams_to_boxes``: the box images' CAMs are kept inside their boxes."""
    from .hybrid import box_ids

    ids = box_ids(config)
    if ids is not None and (config.get("hybrid") or {}).get("restrict_cams_to_boxes", False):
        section["restrict_to_boxes"] = ids
    return section


CAM_OPTIONS = {"cam": KeywordsOf(_cam_class, skip=("num_classes",)), "class_path": ClassName("model"),
               "trainer": TRAINER, "data": DATA}

# ---------------------------------------------------------------------------------------------- refinement
def affinity_reads(section: Mapping[str, Any], config: Mapping[str, Any]) -> Sequence[str]:
    """The CAMs, and the classifier when its backbone starts AffinityNet (``init_from: classifier``)."""
    return ("cams", "classifier") if section.get("init_from") == "classifier" else ("cams",)


def cam_crf_config(section: Dict[str, Any], config: Mapping[str, Any]) -> Dict[str, Any]:
    """The CAM stage's background settings (``stages.cams.cam``) where the section sets none: the CRF starts from
    the CAM stage's labels, and a change of its threshold reruns both."""
    cam = ((config.get("stages") or {}).get("cams") or {}).get("cam") or {}
    for key in S.BACKGROUND:
        if key not in section and key in cam:
            section[key] = cam[key]
    return section


# ---------------------------------------------------------------------------------------------- boxes
def boxsup_config(section: Dict[str, Any], config: Mapping[str, Any]) -> Dict[str, Any]:
    """BoxSup draws its candidate order with the pipeline's seed, and makes its round-0 masks and proposals with
    the ``box_init`` stage's settings (:func:`inherit_box_init_kwargs`)."""
    section["model"] = deep_merge(section.get("model") or {}, {"init_args": {"seed": config.get("seed", 0)}})
    box_init = ((config.get("stages") or {}).get("box_init") or {}).get("kwargs") or {}
    section["model"]["init_args"] = inherit_box_init_kwargs(section["model"]["init_args"], box_init)
    return section


def inherit_box_init_kwargs(init_args: Mapping[str, Any], box_init_kwargs: Mapping[str, Any]) -> Dict[str, Any]:
    """BoxSup's ``initializer_kwargs`` and ``proposal_kwargs`` completed from ``stages.box_init.kwargs``.

    An initializer's settings are declared once, in the ``box_init`` stage (where ``tools/box_init_sweep.py``'s
    measured values go), and BoxSup's round 0 and proposal pool make their masks the same way. A name whose
    settings BoxSup sets itself keeps BoxSup's (the whole mapping: the two are not merged).
    """
    out = dict(init_args)
    initializer = out.get("initializer")
    if out.get("initializer_kwargs") is None and initializer in box_init_kwargs:
        out["initializer_kwargs"] = dict(box_init_kwargs[initializer])
    proposal_kwargs = dict(out.get("proposal_kwargs") or {})
    for name in out.get("proposals") or ():
        if name not in proposal_kwargs and name in box_init_kwargs:
            proposal_kwargs[name] = dict(box_init_kwargs[name])
    if proposal_kwargs:
        out["proposal_kwargs"] = proposal_kwargs
    return out


def box_init_config(section: Dict[str, Any], config: Mapping[str, Any]) -> Dict[str, Any]:
    """Hybrid supervision: masks for the box images only."""
    from .hybrid import box_ids

    ids = box_ids(config)
    if ids is not None:
        section["ids"] = ids
    return section


def hybrid_labels_config(section: Dict[str, Any], config: Mapping[str, Any]) -> Dict[str, Any]:
    """The box images and the initializer whose masks they get."""
    from .hybrid import box_ids, box_source

    section.update(box_ids=box_ids(config) or [], box_source=box_source(config))
    return section


# ---------------------------------------------------------------------------------------------- segmenter
def segmenter_reads(section: Mapping[str, Any], config: Mapping[str, Any]) -> Sequence[str]:
    """What the segmenter trains on: the latest labels (with their box / image parts in hybrid supervision),
    the ground truth under full supervision, or ``labels_from``: that stage's labels (or confident affinity
    labels)."""
    source = section.get("labels_from")
    if source is None:
        return () if config.get("supervision") == "full" else ("labels", "label_parts?")
    try:
        writes = lookup(source, (config.get("stages") or {}).get(source)).writes
    except Exception:  # not a stage: the planner says so
        writes = ()
    return (f"{'affinity_labels' if 'affinity_labels' in writes and 'labels' not in writes else 'labels'}@{source}",)


def segmenter_config(section: Dict[str, Any], config: Mapping[str, Any]) -> Dict[str, Any]:
    """``labels_from: random_walk`` is the default: it stays out of the hash, so earlier runs stay valid."""
    if section.get("labels_from") == "random_walk":
        section.pop("labels_from")
    return section


def _segmenter_datamodule(section: Mapping[str, Any], inputs: Mapping[str, str]) -> str:
    return S.training_datamodule(inputs)


# ---------------------------------------------------------------------------------------------- declarations
for _spec in (
    StageSpec("classifier", S.classifier_stage, reads=classifier_reads, writes=("classifier",),
              datamodule=lambda section, inputs: section.get("datamodule", "ImageLabelDataModule"),
              options={"model": Model("CAMClassifier"), "trainer": TRAINER, "data": DATA, "datamodule": ClassName("data")}),
    StageSpec("seed_classifier", S.classifier_stage, writes=("classifier",), datamodule="ImageLabelDataModule",
              configure=seed_classifier_config, folder="classifier"),
    StageSpec("cams", S.cams_stage, reads=("classifier",), writes=("cams", "labels"), datamodule="ImageLabelDataModule",
              summary={"pseudo_miou": "cam"}, options=CAM_OPTIONS, configure=cams_config),
    StageSpec("seed_cams", S.cams_stage, reads=("classifier",), writes=("cams", "labels"),
              datamodule="ImageLabelDataModule", summary={"pseudo_miou": "seed_cam"}, configure=seed_cams_config,
              folder="cams"),
    StageSpec("affinity", S.affinity_stage, reads=affinity_reads, writes=("refiner", "affinity_labels"),
              datamodule="PseudoMaskDataModule",
              options={"labels": AffinityLabels(), "init_from": OneOf(S.INIT_FROM, allow_none=True),
                       "schedule": SCHEDULE, "model": Model("AffinityRefiner"), "trainer": TRAINER, "data": DATA}),
    StageSpec("random_walk", S.random_walk_stage, reads=("cams", "refiner"), writes=("labels",),
              datamodule="ImageLabelDataModule", summary={"pseudo_miou": "random_walk"},
              options={"walk": Walk(), "trainer": TRAINER, "data": DATA}),
    StageSpec("cam_crf", S.cam_crf_stage, reads=("cams", "classifier"), writes=("labels",),
              summary={"pseudo_miou": "cam_crf"}, configure=cam_crf_config,
              options={"crf": CRFSetting(), "bg_mode": OneOf(("constant", "power")), "bg_threshold": float,
                       "bg_alpha": float, "ignore_changes": bool, "max_growth": Optional[float],
                       "min_kept": Optional[float], "processes": Optional[int]},
              unhashed=("processes",)),
    StageSpec("box_init", S.box_init_stage, writes=("box_masks",), summary={"*": "*"}, configure=box_init_config,
              options={"initializers": ListOf(Initializer()), "kwargs": InitializerKwargs(),
                       "processes": Optional[int], "ids": Optional[List[str]]}, unhashed=("processes",)),
    StageSpec("boxsup", S.boxsup_stage, reads=("box_masks?",), writes=("labels", "segmenter"), datamodule="BoxDataModule",
              summary={"*": "*"}, configure=boxsup_config,
              options={"model": Model("BoxSupSegmenter"), "trainer": TRAINER, "data": DATA}),
    StageSpec("hybrid_labels", S.hybrid_labels_stage, reads=("labels", "box_masks"), writes=("labels", "label_parts"),
              summary={"*": "*"}, configure=hybrid_labels_config),
    StageSpec("segmenter", S.segmenter_stage, reads=segmenter_reads, writes=("segmenter",),
              datamodule=_segmenter_datamodule, summary={"*_round_*": "*"}, configure=segmenter_config,
              options={"model": Model("DeepLabSegmenter"), "trainer": TRAINER, "data": DATA,
                       "labels_from": Optional[str], "seed": Optional[int]}),
):
    register_stage(_spec)
