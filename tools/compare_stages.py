"""Whether two folders of the same pipeline stage hold the same artifacts, bit for bit.

    python tools/compare_stages.py RUN_A/image/cams/<hash> RUN_B/image/cams/<hash>

Compares every checkpoint tensor (``*.ckpt``: the ``state_dict``), every array of every ``*.npz`` and every label
``*.png`` found under both folders (paths relative to each folder), and prints one line per kind: how many were
compared, how many differ, and the largest absolute difference of the differing arrays. Files present in one
folder only are counted apart. Exit status 1 when anything differs, so a script can check that a stage made on
another machine, thread count or library version reproduces (the stages' ``stage.json`` record those).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import numpy as np

from lightning_wsss.io import read_label_png

KINDS = ("ckpt", "npz", "png")


@dataclass
class Tally:
    """Arrays compared and differing for one kind of file, with the largest absolute difference."""

    compared: int = 0
    differing: int = 0
    max_abs: float = 0.0

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        self.compared += 1
        if a.shape != b.shape:
            self.differing += 1
            self.max_abs = float("inf")
        elif not np.array_equal(a, b):
            self.differing += 1
            self.max_abs = max(self.max_abs, float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max()))


def arrays(path: Path) -> Iterator[Tuple[str, np.ndarray]]:
    """The named arrays of one artifact: a checkpoint's state_dict tensors, an npz's arrays, a PNG's labels."""
    if path.suffix == ".ckpt":
        import torch

        from lightning_wsss.serialization import safe_torch_load

        state = safe_torch_load(path, "checkpoint")
        for name, tensor in state.get("state_dict", state).items():
            tensor = tensor.detach().cpu()
            # numpy has no bfloat16; widening it to float32 is exact, and every other dtype is compared as stored
            yield name, (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()
    elif path.suffix == ".npz":
        with np.load(path) as data:
            for name in data.files:
                yield name, data[name]
    else:
        yield "labels", read_label_png(path)


def relative_files(folder: Path, kind: str) -> Dict[str, Path]:
    return {str(p.relative_to(folder)): p for p in sorted(folder.rglob(f"*.{kind}"))}


def compare(a: Path, b: Path) -> Tuple[Dict[str, Tally], List[str]]:
    """Per kind, the tally of the arrays of the files under both folders; the relative paths under one only."""
    tallies, only = {}, []
    for kind in KINDS:
        files_a, files_b = relative_files(a, kind), relative_files(b, kind)
        only += sorted(set(files_a) ^ set(files_b))
        tally = tallies[kind] = Tally()
        for name in sorted(set(files_a) & set(files_b)):
            mine, theirs = dict(arrays(files_a[name])), dict(arrays(files_b[name]))
            only += [f"{name}:{key}" for key in sorted(set(mine) ^ set(theirs))]
            for key in sorted(set(mine) & set(theirs)):
                tally.add(mine[key], theirs[key])
    return tallies, only


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path, help="a stage folder (RUN/<supervision>/<stage>/<hash>)")
    parser.add_argument("b", type=Path, help="the same stage made elsewhere")
    args = parser.parse_args()
    for folder in (args.a, args.b):
        if not folder.is_dir():
            sys.exit(f"{folder}: not a folder")
    tallies, only = compare(args.a, args.b)
    for kind, tally in tallies.items():
        print(f"{kind:>4}: {tally.compared} arrays compared, {tally.differing} differ"
              + (f" (max abs difference {tally.max_abs:.6g})" if tally.differing else ""))
    print(f"in one folder only: {len(only)}" + (f" (first: {only[0]})" if only else ""))
    identical = not only and not any(t.differing for t in tallies.values())
    print("identical" if identical else "different")
    sys.exit(0 if identical else 1)


if __name__ == "__main__":
    main()
