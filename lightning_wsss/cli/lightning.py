"""``wsss fit|validate|test|predict``: LightningCLI over every task and DataModule of the suite.

Configs use ``class_path``/``init_args`` or short class names (``model: CAMClassifier``); the model's
``num_classes`` is linked to the DataModule's, so a config names the classes once (in the data set).
The resolved config is saved next to the logs with ``overwrite=True`` so W&B and the config saver coexist.
When stdout is not a terminal (SLURM, ``nohup``, CI), the progress bar is off by default and each training epoch
prints one line (:class:`~lightning_wsss.callbacks.epoch_log.EpochLog`); ``WSSS_PROGRESS=bar|lines`` overrides.
Torch's threads follow :mod:`lightning_wsss.threads` (the owned cores minus the DataLoader workers;
``WSSS_THREADS`` or ``OMP_NUM_THREADS`` override).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
from typing import Any, Dict, List, Optional

import lightning as L
from lightning.pytorch.cli import LightningCLI

from ..callbacks.progress import progress_callbacks, stdout_is_terminal
from ..errors import DataError
from ..serialization import allow_safe_globals, weights_only_kwargs
from ..threads import apply_thread_policy


class WSSSLightningCLI(LightningCLI):
    """LightningCLI with the suite's tasks (any :class:`~lightning_wsss.tasks.base.WSSSTask`) and DataModules
    registered and ``num_classes`` linked.

    ``--ckpt_path`` is checked before anything runs: a missing, unreadable or unsafe file (see
    :mod:`lightning_wsss.serialization`) and a checkpoint of another task or class count are one-line
    :class:`DataError`\ s naming it; the trainer loads it with ``weights_only=True``.
    """

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")

    def _parse_ckpt_path(self) -> None:
        """Merge the checkpoint's hyper-parameters into the model config (as LightningCLI does), after checking
        the file; pipeline checkpoints (no ``_class_path``) must fit the configured model class."""
        self._ckpt_num_classes: Optional[int] = None
        if not self.config.get("subcommand"):
            return
        ckpt_path = self.config[self.config.subcommand].get("ckpt_path")
        if not ckpt_path or ckpt_path in ("last", "best", "hpc", "registry") or "://" in str(ckpt_path):
            return  # Lightning's own keywords and remote (fsspec) paths are left to it
        from ..serialization import checkpoint_hparams

        hparams = checkpoint_hparams(ckpt_path)
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        model_cfg = self.config[self.config.subcommand].get("model")
        configured = getattr(model_cfg, "class_path", None) if model_cfg is not None else None
        if "_class_path" in hparams:
            saved = hparams.pop("_class_path")
            if configured and not related_classes(saved, configured):
                raise DataError(ckpt_path, f"checkpoint of a {saved.rsplit('.', 1)[-1]}, but the model is a "
                                           f"{configured.rsplit('.', 1)[-1]}")
            model = {"class_path": saved, "dict_kwargs": checked_init_args(ckpt_path, saved, hparams)}
        else:
            self._ckpt_num_classes = hparams.pop("num_classes", None)
            model = {"class_path": configured, "init_args": checked_init_args(ckpt_path, configured, hparams)}
        exit_on_error = getattr(self.parser, "exit_on_error", True)
        self.parser.exit_on_error = False  # a mismatch is our one-line error, not jsonargparse's usage text
        try:
            self.config = self.parser.parse_object({self.config.subcommand: {"model": model}}, self.config)
        except (SystemExit, argparse.ArgumentError) as exc:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise DataError(ckpt_path, "the checkpoint's hyper-parameters do not fit the configured model "
                                       f"{configured}{' (' + detail + ')' if detail else ''}") from exc
        finally:
            self.parser.exit_on_error = exit_on_error

    def instantiate_classes(self) -> None:
        """Instantiate as LightningCLI does; a :class:`DataError` raised by a class (a DataModule given a batch size
        of 0) comes out as itself, not wrapped in jsonargparse's "Does not validate" error."""
        try:
            super().instantiate_classes()
        except (ValueError, TypeError) as exc:
            cause = data_error_in_chain(exc)
            if cause is None:
                raise
            raise cause from exc

    def after_instantiate_classes(self) -> None:
        super().after_instantiate_classes()
        expected = getattr(self, "_ckpt_num_classes", None)
        actual = getattr(self.model, "num_classes", None)
        if expected is not None and actual is not None and int(expected) != int(actual):
            raise DataError(self.config[self.subcommand].get("ckpt_path"),
                            f"checkpoint has {expected} classes but the data set has {actual}")
        if self.subcommand:  # the run's thread policy: the owned cores minus the DataLoader workers
            apply_thread_policy(int(getattr(self.datamodule, "num_workers", 0) or 0))

    def _prepare_subcommand_kwargs(self, subcommand: str) -> Dict[str, Any]:
        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        if kwargs.get("weights_only") is None:
            kwargs.update(weights_only_kwargs(getattr(self.trainer, subcommand)))
        return kwargs

    def _run_subcommand(self, subcommand: str) -> None:
        with allow_safe_globals():
            super()._run_subcommand(subcommand)


def data_error_in_chain(exc: BaseException) -> Optional[DataError]:
    """The first :class:`DataError` among ``exc`` and its causes / contexts, or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, DataError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def import_class(class_path: str):
    """The class a dotted path names (``package.module.Class``)."""
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def related_classes(first: str, second: str) -> bool:
    """Whether one of two class paths names a subclass of the other (a CAMClassifier checkpoint may load into
    an LPCAMClassifier, not into a DeepLabSegmenter); unimportable paths count as related (left to Lightning)."""
    if first == second:
        return True
    try:
        a, b = import_class(first), import_class(second)
    except (ImportError, AttributeError, ValueError):
        return True
    return issubclass(a, b) or issubclass(b, a)


def checked_init_args(ckpt_path: str, class_path: Optional[str], hparams: Dict[str, Any]) -> Dict[str, Any]:
    """``hparams`` when every key is an ``__init__`` argument of ``class_path``.

    Raises:
        DataError: naming the checkpoint and the keys the class does not take (a checkpoint of another task).
    """
    if not class_path:
        raise DataError(ckpt_path, "the checkpoint does not name its model class; configure --model")
    model_cls = import_class(class_path)
    name = model_cls.__name__
    accepted = set()
    for cls in model_cls.__mro__:
        if "__init__" in vars(cls):
            parameters = inspect.signature(cls.__init__).parameters.values()
            accepted |= {p.name for p in parameters}
            if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
                break
    unknown = sorted(set(hparams) - accepted)
    if unknown:
        raise DataError(ckpt_path, f"checkpoint of another task: its hyper-parameters {unknown[:6]} are not "
                                   f"arguments of {name}")
    return hparams


def _register_classes() -> None:
    """Import the modules whose classes configs may name by short name."""
    import lightning_wsss.callbacks  # noqa: F401
    import lightning_wsss.datamodules  # noqa: F401
    import lightning_wsss.tasks  # noqa: F401


def run_lightning_cli(argv: Optional[List[str]] = None) -> WSSSLightningCLI:
    """Run the LightningCLI with ``argv`` (e.g. ``["fit", "--config", "experiments/x.yaml"]``)."""
    _register_classes()
    from ..tasks.base import WSSSTask

    if argv is not None and list(argv) == sys.argv[1:]:
        argv = None  # the command line itself: LightningCLI reads it (and does not warn that args were given twice)
    tty = stdout_is_terminal()
    return WSSSLightningCLI(
        WSSSTask,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"enable_progress_bar": tty, "callbacks": progress_callbacks(tty)},
        args=argv,
        auto_configure_optimizers=False,
    )
