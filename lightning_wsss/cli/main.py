"""The ``wsss`` command: one entry point for every job of the suite.

``wsss fit|validate|test|predict`` go to LightningCLI (see :mod:`lightning_wsss.cli.lightning`); the other
sub-commands are plain argparse commands, each defined in :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from typing import Callable, Dict, List, Optional

from ..errors import DataError, StageBusyError

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")


def _make_synthetic(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="wsss make-synthetic", description="Write the synthetic WSSS data set (VOC layout).")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--num-train", type=int, default=800)
    parser.add_argument("--num-val", type=int, default=200)
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=0, help="worker processes (0 = in this process)")
    args = parser.parse_args(argv)
    from ..datasets.synthetic import make_synthetic

    root = make_synthetic(args.out, num_train=args.num_train, num_val=args.num_val, size=args.size, seed=args.seed,
                          workers=args.workers)
    print(f"synthetic data set ready at {root}")
    return 0


def _evaluate(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="wsss evaluate", description="Score a folder of label PNGs against ground truth.")
    parser.add_argument("--pred", required=True, help="folder of <id>.png label maps")
    parser.add_argument("--root", required=True, help="data set root (VOC layout), or the image folder for COCO")
    parser.add_argument("--split", default="val", help="split name, or a COCO instances JSON")
    parser.add_argument("--json", action="store_true", help="print JSON with 'miou' and 'per_class' instead of a table")
    args = parser.parse_args(argv)
    from ..metrics import evaluate_folder, format_iou_table

    result = evaluate_folder(args.pred, args.root, args.split)
    print(json.dumps(result, indent=2) if args.json else format_iou_table(result, f"{args.pred} vs {args.root} [{args.split}]"))
    return 0


COMMANDS: Dict[str, Callable[[List[str]], int]] = {
    "make-synthetic": _make_synthetic,
    "evaluate": _evaluate,
}


def register(name: str) -> Callable[[Callable[[List[str]], int]], Callable[[List[str]], int]]:
    """Decorator adding a sub-command ``name`` taking the remaining argv and returning an exit code."""

    def wrap(fn: Callable[[List[str]], int]) -> Callable[[List[str]], int]:
        COMMANDS[name] = fn
        return fn

    return wrap


def _load_optional_commands() -> None:
    """Import modules that register further sub-commands (kept lazy so ``wsss --help`` stays fast)."""
    import importlib

    for module in ("lightning_wsss.cli.commands",):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


def main(argv: Optional[List[str]] = None) -> int:
    """Run ``wsss``; returns the exit code (data errors print one clear line and exit 2)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    _load_optional_commands()
    names = sorted(list(COMMANDS) + list(LIGHTNING_SUBCOMMANDS))
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: wsss {" + ",".join(names) + "} ...\n\nWeakly supervised semantic segmentation suite.")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    try:
        if command in LIGHTNING_SUBCOMMANDS:
            from .lightning import run_lightning_cli

            run_lightning_cli([command] + rest)
            return 0
        if command not in COMMANDS:
            print(f"wsss: unknown command {command!r}; choose from {', '.join(names)}", file=sys.stderr)
            return 2
        return COMMANDS[command](rest)
    except DataError as exc:
        print(f"{_who(command)}: data error: {exc}", file=sys.stderr)
        return 2
    except StageBusyError as exc:
        print(f"{_who(command)}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in FILE_SYSTEM_ERRORS:
            raise
        print(f"{_who(command)}: error: {file_system_error(exc)}", file=sys.stderr)
        return 2


def _who(command: str) -> str:
    """``wsss <command>``, and ``(rank r of n)`` in one of several processes torchrun or srun started."""
    for rank_key, size_key in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
        size = os.environ.get(size_key, "")
        if size.isdigit() and int(size) > 1:
            return f"wsss {command} (rank {os.environ.get(rank_key, '?')} of {size})"
    return f"wsss {command}"


FILE_SYSTEM_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR,
                      errno.EEXIST, errno.EISDIR, errno.ENAMETOOLONG, errno.EFBIG, errno.ELOOP}
"""What the file system says about the user's folders (full disk, permissions, a file where a folder belongs):
``wsss`` prints these as one line naming the path, instead of a traceback."""


def file_system_error(exc: OSError) -> str:
    """``<path>: <cause>`` (both paths for a rename) of a file-system error."""
    cause = exc.strerror or str(exc)
    if exc.filename is None:
        return cause
    target = f" -> {exc.filename2}" if getattr(exc, "filename2", None) else ""
    return f"{exc.filename}{target}: {cause}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
