"""Checking one value of a pipeline config: type annotations, keyword arguments of a class or function, and the
sections every stage shares (``trainer``, ``data``, ``model``).

Each check raises :class:`~.config.ConfigError` with the key path of the value (``stages.classifier.trainer``)
and a one-line problem; :mod:`.checks` adds the file.
"""

from __future__ import annotations

import collections.abc
import difflib
import inspect
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Literal, Mapping, Optional, Sequence, Union

from .config import ConfigError, deep_merge, resolve_class

__all__ = ["Where", "Check", "OneOf", "Fields", "KeywordsOf", "ClassName", "Model", "Trainer", "Data",
           "check_value", "check_type", "describe", "unknown_key", "parameters"]


@dataclass
class Where:
    """Where a value sits: its key path and what it may depend on (the whole config, its stage's section and
    inputs, the stage's DataModule)."""

    key: str
    config: Mapping[str, Any] = field(default_factory=dict)
    section: Mapping[str, Any] = field(default_factory=dict)
    inputs: Mapping[str, str] = field(default_factory=dict)
    datamodule: Optional[str] = None

    def at(self, key: Union[str, int]) -> "Where":
        """The same context one key deeper."""
        child = f"{self.key}[{key}]" if isinstance(key, int) else (f"{self.key}.{key}" if self.key else str(key))
        return Where(child, self.config, self.section, self.inputs, self.datamodule)

    def fail(self, problem: str) -> typing.NoReturn:
        raise ConfigError(None, self.key, problem)


class Check:
    """A check of one config value (subclasses implement :meth:`__call__`)."""

    def __call__(self, value: Any, where: Where) -> None:  # pragma: no cover - interface
        raise NotImplementedError


def check_value(value: Any, schema: Any, where: Where) -> None:
    """Check ``value`` against a :class:`Check` or a type annotation."""
    if isinstance(schema, Check):
        schema(value, where)
    elif not check_type(value, schema):
        where.fail(f"expected {describe(schema)}, got {value!r}")


# ---------------------------------------------------------------------------------------------- annotations
_SEQUENCES = (list, tuple, set, frozenset, collections.abc.Sequence, collections.abc.Iterable,
              collections.abc.Collection, collections.abc.Set)
_MAPPINGS = (dict, collections.abc.Mapping, collections.abc.MutableMapping)


def _is_union(origin: Any) -> bool:
    return origin is Union or origin is getattr(types, "UnionType", Union)


def check_type(value: Any, annotation: Any) -> bool:
    """Whether a YAML value fits ``annotation`` (classes YAML cannot build, such as a Callback, accept anything)."""
    if annotation in (Any, inspect.Parameter.empty, object) or isinstance(annotation, (str, typing.TypeVar, typing.ForwardRef)):
        return True
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if _is_union(origin):
        return any(check_type(value, a) for a in args)
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if annotation is type(None) or annotation is None:
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if isinstance(annotation, type) and issubclass(annotation, os.PathLike):
        return isinstance(value, (str, os.PathLike))
    if origin in _SEQUENCES or annotation in _SEQUENCES:
        return _check_sequence(value, origin or annotation, args)
    if origin in _MAPPINGS or annotation in _MAPPINGS:
        return isinstance(value, dict) and (len(args) < 2 or all(check_type(v, args[1]) for v in value.values()))
    return True


def _check_sequence(value: Any, origin: Any, args: Sequence[Any]) -> bool:
    if not isinstance(value, (list, tuple)):
        return False
    if origin is tuple and args and args[-1] is not Ellipsis:
        return len(value) == len(args) and all(check_type(v, a) for v, a in zip(value, args))
    element = args[0] if args else Any
    return all(check_type(v, element) for v in value)


def describe(annotation: Any) -> str:
    """``Optional[int]`` -> ``"int or null"``: an annotation in words for error messages."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if _is_union(origin):
        return " or ".join(dict.fromkeys(describe(a) for a in args))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if annotation is type(None) or annotation is None:
        return "null"
    if origin in _SEQUENCES or annotation in _SEQUENCES:
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"a list of {len(args)} ({', '.join(describe(a) for a in args)})"
        plural = {int: "integers", float: "numbers", bool: "booleans", str: "strings"}
        if not args:
            return "a list"
        return f"a list of {plural[args[0]]}" if args[0] in plural else f"a list (each {describe(args[0])})"
    if origin in _MAPPINGS or annotation in _MAPPINGS:
        return "a mapping"
    if annotation in (int, float, bool, str):
        return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[annotation]
    return getattr(annotation, "__name__", str(annotation))


# ---------------------------------------------------------------------------------------------- keys
def unknown_key(key: str, known: Iterable[str], where: Where) -> typing.NoReturn:
    """Fail on ``key``, suggesting the closest of ``known``."""
    close = difflib.get_close_matches(str(key), [str(k) for k in known], n=1)
    where.at(key).fail("unknown key" + (f"; did you mean {close[0]}?" if close else f"; known keys: {', '.join(sorted(map(str, known)))}"))


def check_mapping(value: Any, where: Where) -> Mapping[str, Any]:
    """``value`` as a mapping (null is an empty one)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        where.fail(f"expected a mapping, got {value!r}")
    return value


def check_fields(value: Any, schema: Mapping[str, Any], where: Where) -> None:
    """A mapping whose keys are those of ``schema``, each value checked against its entry."""
    for key, item in check_mapping(value, where).items():
        if key not in schema:
            unknown_key(key, schema, where)
        check_value(item, schema[key], where.at(key))


class OneOf(Check):
    """One of a few names (with a suggestion for a misspelt one)."""

    def __init__(self, choices: Iterable[str], allow_none: bool = False) -> None:
        self.choices, self.allow_none = tuple(choices), allow_none

    def __call__(self, value: Any, where: Where) -> None:
        if value is None and self.allow_none:
            return
        if value not in self.choices:
            close = difflib.get_close_matches(str(value), self.choices, n=1)
            where.fail(f"{value!r} is not one of {', '.join(self.choices)}" + (f"; did you mean {close[0]}?" if close else ""))


class Fields(Check):
    """A mapping with known keys (``{"epochs": Optional[int], ...}``)."""

    def __init__(self, schema: Mapping[str, Any]) -> None:
        self.schema = schema

    def __call__(self, value: Any, where: Where) -> None:
        check_fields(value, self.schema, where)


# ---------------------------------------------------------------------------------------------- signatures
def parameters(target: Callable, skip: Iterable[str] = ()) -> Optional[Dict[str, Any]]:
    """Keyword name -> annotation of a function, or of a class's ``__init__`` following ``**kwargs`` into its
    bases; None when it takes any keyword (a function with ``**kwargs``)."""
    found: Dict[str, Any] = {}
    functions = [k.__init__ for k in target.__mro__ if "__init__" in vars(k)] if inspect.isclass(target) else [target]
    for function in functions:
        params = inspect.signature(function).parameters
        try:
            hints = typing.get_type_hints(function)
        except Exception:  # annotations that do not resolve: names only
            hints = {}
        for name, param in params.items():
            if name != "self" and param.kind not in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
                found.setdefault(name, hints.get(name, param.annotation))
        if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
            break
    else:
        if not inspect.isclass(target):
            return None
    for name in skip:
        found.pop(name, None)
    return found


def check_keywords(value: Any, target: Callable, where: Where, skip: Iterable[str] = ()) -> None:
    """A mapping of keyword arguments ``target`` accepts, each of its annotated type."""
    params = parameters(target, skip)
    if params is None:
        check_mapping(value, where)
        return
    check_fields(value, params, where)


class KeywordsOf(Check):
    """Keyword arguments of a class or function chosen from the context (``where -> target``)."""

    def __init__(self, target: Callable[[Where], Callable], skip: Iterable[str] = ()) -> None:
        self.target, self.skip = target, tuple(skip)

    def __call__(self, value: Any, where: Where) -> None:
        check_keywords(value, self.target(where), where, self.skip)


def load_class(name: Any, kind: str, base: Optional[type], where: Where) -> type:
    """The class ``name`` names (a short name of the suite or an import path), or a one-line error."""
    if not isinstance(name, str):
        where.fail(f"expected a class name, got {name!r}")
    try:
        found = resolve_class(name, kind)
    except ValueError:
        import importlib

        from .config import SHORT_NAMES

        module = importlib.import_module(SHORT_NAMES[kind])
        close = difflib.get_close_matches(name, getattr(module, "__all__", dir(module)), n=1)
        where.fail(f"unknown class {name!r}" + (f"; did you mean {close[0]}?" if close else f" (not in {SHORT_NAMES[kind]})"))
    except (ImportError, AttributeError) as exc:
        where.fail(f"cannot import {name!r} ({exc})")
    if not inspect.isclass(found) or (base is not None and not issubclass(found, base)):
        where.fail(f"{name} is not a {base.__name__ if base else 'class'}")
    return found


class ClassName(Check):
    """The name of a class of ``kind`` (``model``: a LightningModule; ``data``: a LightningDataModule)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __call__(self, value: Any, where: Where) -> None:
        load_class(value, self.kind, _base(self.kind), where)


def _base(kind: str) -> type:
    import lightning as L

    return L.LightningModule if kind == "model" else L.LightningDataModule


def model_class(model: Mapping[str, Any], default: str, where: Where) -> type:
    """The LightningModule a ``model`` section names (``class_path``, else ``default``)."""
    return load_class(model.get("class_path", default), "model", _base("model"), where.at("class_path"))


class Model(Check):
    """``model: {class_path, init_args}``: a LightningModule and keyword arguments its ``__init__`` takes
    (``num_classes`` comes from the data set; what the stage itself passes, such as ``out_dir``, is refused)."""

    def __init__(self, default: str) -> None:
        self.default = default

    def __call__(self, value: Any, where: Where) -> None:
        model = check_mapping(value, where)
        for key in model:
            if key not in ("class_path", "init_args"):
                unknown_key(key, ("class_path", "init_args"), where)
        cls = model_class(model, self.default, where)
        stage_args = getattr(cls, "stage_init_args", None)
        reserved = set(stage_args(".")) if callable(stage_args) else set()
        for key in check_mapping(model.get("init_args"), where.at("init_args")):
            if key in reserved:
                where.at("init_args").at(key).fail("set by the pipeline stage (inside its folder); remove it")
        check_keywords(model.get("init_args"), cls, where.at("init_args"), skip=("num_classes",))


TRAINER_SET_BY_STAGES = ("default_root_dir", "logger", "callbacks")


class Trainer(Check):
    """``trainer``: keyword arguments of ``lightning.Trainer`` (its logger, callbacks and folder are the
    pipeline's)."""

    def __call__(self, value: Any, where: Where) -> None:
        import lightning as L

        for key in check_mapping(value, where):
            if key in TRAINER_SET_BY_STAGES:
                hint = " (choose it with the top-level logger: csv | wandb | none)" if key == "logger" else ""
                where.at(key).fail(f"set by the pipeline stage{hint}; remove it")
        check_keywords(value, L.Trainer, where)


class Data(Check):
    """``data``: keyword arguments of the stage's DataModule (with the shared ``data`` settings), and sizes that
    make sense (positive batch and crop sizes, ``num_workers`` and ``grid_shuffle >= 0``, a valid ``scale_range``)."""

    def __call__(self, value: Any, where: Where) -> None:
        if where.datamodule is None:
            where.fail("this stage takes no data settings")
        cls = load_class(where.datamodule, "data", _base("data"), where)
        check_keywords(value, cls, where)
        check_sizes(where.config.get("data") or {}, check_mapping(value, where), where)


def check_sizes(shared: Mapping[str, Any], own: Mapping[str, Any], where: Where) -> None:
    """The DataModule's own size checks on the shared ``data`` settings merged with a stage's ``own``, reported
    at the key the failing value comes from."""
    from ..datamodules.base import check_sizes as datamodule_sizes
    from ..errors import DataError

    merged = deep_merge(shared, own)
    for name in ("batch_size", "eval_batch_size", "crop_size", "num_workers", "grid_shuffle", "scale_range"):
        if name in merged:
            try:
                datamodule_sizes(**{name: merged[name]})
            except DataError as exc:
                (where.at(name) if name in own else Where("data").at(name)).fail(exc.problem)
