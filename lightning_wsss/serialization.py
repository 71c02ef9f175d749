"""Loading pickled files (weights, checkpoints) without running code from them.

A ``.pth`` / ``.ckpt`` file is a pickle, and a full unpickle runs whatever the file asks for (a ``__reduce__`` that
calls ``os.system``). Every weights file and checkpoint the suite reads goes through ``torch.load(...,
weights_only=True)``: tensors, containers and plain Python values, plus the small allow-list
:data:`SAFE_GLOBALS`. A file that needs anything else is refused with an :class:`UnsafePickleError` naming the
file and the type it asked for. The one opt-in: the environment variable ``WSSS_TRUST_PICKLES=1`` (for files
from a trusted source), which loads with ``weights_only=False``.
"""

from __future__ import annotations

import collections
import contextlib
import os
import pickle
import re
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

import torch

from .errors import DataError, PathLike

TRUST_ENV = "WSSS_TRUST_PICKLES"

SAFE_GLOBALS = [collections.OrderedDict, collections.defaultdict, collections.Counter]
"""Types a weights file or checkpoint may hold beyond ``torch.load``'s own ``weights_only`` defaults (legacy
state dicts such as the lukemelas EfficientNet files are ``OrderedDict`` pickles)."""


class UnsafePickleError(DataError):
    """A pickled file needs a type outside the allow-list: loading it would run code from the file."""


def trust_pickles() -> bool:
    """Whether the user opted in to full unpickling (``WSSS_TRUST_PICKLES`` set to ``1``, ``true`` or ``yes``)."""
    return os.environ.get(TRUST_ENV, "").strip().lower() in ("1", "true", "yes")


def weights_only() -> bool:
    """The ``weights_only`` value for ``torch.load`` and Lightning's loaders: True unless the user opted in."""
    return not trust_pickles()


@contextlib.contextmanager
def allow_safe_globals() -> Iterator[None]:
    """Let ``torch.load(weights_only=True)`` (ours or Lightning's) accept :data:`SAFE_GLOBALS` inside the block."""
    context = getattr(torch.serialization, "safe_globals", None)
    if context is None:  # torch < 2.4: its weights_only unpickler already accepts OrderedDict
        yield
        return
    with context(SAFE_GLOBALS):
        yield


def _refusal_reason(message: str) -> Optional[str]:
    """What a ``weights_only`` load failure says about the file (one line), or None when it is no refusal."""
    if "Weights only load failed" not in message:
        return None
    found = re.search(r"GLOBAL ([\w.]+)", message)
    if found:
        return f"it needs {found.group(1)}, which is not on the allow-list of safe types"
    found = re.search(r"(Unsupported operand \d+|Unsupported [^\n]+)", message)
    return f"its pickle uses what a weights-only load does not allow ({found.group(1) if found else 'unknown'})"


def describe_load_error(path: PathLike, exc: BaseException, what: str) -> DataError:
    """The :class:`DataError` for a failed ``torch.load`` of ``path``: :class:`UnsafePickleError` when the
    weights-only unpickler refused it, else "unreadable"; one line either way."""
    reason = _refusal_reason(str(exc)) if isinstance(exc, pickle.UnpicklingError) else None
    if reason is not None:
        return UnsafePickleError(path, f"{what} refused: {reason}; a full unpickle could run code from the file. "
                                       f"If you trust its source, set {TRUST_ENV}=1 to load it anyway")
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return DataError(path, f"unreadable {what} ({type(exc).__name__}{': ' + detail if detail else ''})")


def safe_torch_load(path: PathLike, what: str = "weights file", trust: Optional[bool] = None) -> Any:
    """``torch.load`` a file on the CPU without running code from it (see the module docstring).

    Args:
        path: the file.
        what: what the file is, for messages (``"weights file"``, ``"checkpoint"``).
        trust: load with ``weights_only=False``; default: :func:`trust_pickles`.

    Raises:
        DataError: the file is missing or unreadable; :class:`UnsafePickleError` when it needs types outside
            the allow-list (and ``trust`` is off).
    """
    file = Path(path)
    if not file.is_file():
        raise DataError(file, f"{what} is missing")
    trusted = trust_pickles() if trust is None else trust
    try:
        with allow_safe_globals():
            return torch.load(file, map_location="cpu", weights_only=not trusted)
    except Exception as exc:
        raise describe_load_error(file, exc, what) from exc


def checkpoint_hparams(path: PathLike) -> Dict[str, Any]:
    """The ``hyper_parameters`` of a Lightning checkpoint (empty where it has none)."""
    checkpoint = safe_torch_load(path, "checkpoint")
    return dict(checkpoint.get("hyper_parameters") or {}) if isinstance(checkpoint, dict) else {}


def weights_only_kwargs(function) -> dict:
    """``{"weights_only": ...}`` for a Lightning loader that takes the argument (Lightning >= 2.4), else ``{}``."""
    import inspect

    try:
        accepted = "weights_only" in inspect.signature(function).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        accepted = False
    return {"weights_only": weights_only()} if accepted else {}


def load_model_checkpoint(model_cls, path: PathLike, **kwargs):
    """``model_cls.load_from_checkpoint(path, **kwargs)`` on the CPU through the weights-only loader.

    Raises:
        DataError: the checkpoint is missing or unreadable; :class:`UnsafePickleError` when it is refused.
    """
    file = Path(path)
    if not file.is_file():
        raise DataError(file, "checkpoint is missing")
    try:
        with allow_safe_globals():
            return model_cls.load_from_checkpoint(str(file), map_location="cpu",
                                                  **weights_only_kwargs(model_cls.load_from_checkpoint), **kwargs)
    except pickle.UnpicklingError as exc:
        raise describe_load_error(file, exc, "checkpoint") from exc
    except (RuntimeError, EOFError) as exc:
        if "PytorchStreamReader" in str(exc) or isinstance(exc, EOFError):
            raise describe_load_error(file, exc, "checkpoint") from exc
        raise


__all__ = ["SAFE_GLOBALS", "TRUST_ENV", "UnsafePickleError", "allow_safe_globals", "describe_load_error",
           "checkpoint_hparams", "load_model_checkpoint", "safe_torch_load", "trust_pickles", "weights_only", "weights_only_kwargs"]
