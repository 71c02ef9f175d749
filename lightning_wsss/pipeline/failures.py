"""One rank's failure ends every rank, with the failing rank's message.

Without this, a rank that raises (a corrupt image in its share, a bug) leaves the others waiting at the next
collective (a barrier, a gradient all-reduce) until the timeout, half an hour later, with nothing said about why.
Here a rank that raises first publishes its error (rank, kind, message: a :class:`~lightning_wsss.errors.DataError`
names the file and the problem) in the process group's key-value store, then exits with it as usual. Every rank
runs a :class:`Watcher` thread that polls the store; when another rank has failed it prints that rank's message
and ends its own process (exit code 2) wherever its main thread is: inside a collective, or in the middle of its
share of a CPU stage. Files are written atomically and stage locks are released by the system, so the killed
run resumes like any other. A rank killed without a word (``kill -9``, out of memory) is left to the launcher:
torchrun stops the other workers, ``srun --kill-on-bad-exit=1`` the other tasks.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import sys
import threading
import time
from typing import Any, Dict, Iterator, Optional

from ..errors import DataError, StageBusyError
from .distributed import World

__all__ = ["FailureBoard", "Watcher", "describe", "failures_end_every_rank"]

POLL_S = 0.2
"""How often a watcher looks at the store."""
ACK_WAIT_S = 5.0
"""How long a failing rank 0 (which may host the store) waits for the others to read its error before exiting."""
EXIT_CODE = 2


def describe(exc: BaseException) -> str:
    """One line: ``data error: <file>: <problem>`` for data errors, else the error's kind and message."""
    if isinstance(exc, DataError):
        return f"data error: {exc}"
    if isinstance(exc, StageBusyError):
        return f"error: {exc}"
    return f"{type(exc).__name__}: {exc}"


class FailureBoard:
    """The first failure of a run, in a key-value store every rank reaches (``torch.distributed.Store``).

    Args:
        store: the store (the default process group's; a ``HashStore`` in tests).
        rank: this process's rank.
        prefix: the keys' prefix (one run, one attempt of an elastic restart).
    """

    def __init__(self, store: Any, rank: int, prefix: str = "wsss_failure/") -> None:
        self.store = store
        self.rank = rank
        self.prefix = prefix

    def publish(self, exc: BaseException) -> bool:
        """Record ``exc`` as this rank's failure; True when it is the run's first (the others then report it)."""
        if int(self.store.add(self.prefix + "count", 1)) != 1:
            return False
        self.store.set(self.prefix + "report", json.dumps({"rank": self.rank, "message": describe(exc)}))
        return True

    def first(self) -> Optional[Dict[str, Any]]:
        """The run's first failure, ``{"rank", "message"}``, or None (does not wait)."""
        if not self.store.check([self.prefix + "report"]):
            return None
        return json.loads(self.store.get(self.prefix + "report"))

    def acknowledge(self) -> None:
        """Say that this rank has read the failure (a failing rank 0 waits for that before it exits)."""
        self.store.add(self.prefix + "acks", 1)

    def wait_for_acks(self, expected: int, timeout: float = ACK_WAIT_S) -> bool:
        """Wait until ``expected`` ranks acknowledged, at most ``timeout`` seconds; True if they all did."""
        deadline = time.monotonic() + timeout
        while int(self.store.add(self.prefix + "acks", 0)) < expected:
            if time.monotonic() > deadline:
                return False
            time.sleep(POLL_S / 2)
        return True


def end_process(message: str) -> None:
    """Print ``message``, stop this process's child processes (DataLoader workers, pools) and exit now."""
    try:
        print(f"wsss: {message}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        for child in multiprocessing.active_children():
            child.terminate()
    finally:
        os._exit(EXIT_CODE)


class Watcher(threading.Thread):
    """A daemon thread that ends this process when another rank's failure appears on the board."""

    def __init__(self, board: FailureBoard, interval: float = POLL_S) -> None:
        super().__init__(name="wsss-failure-watcher", daemon=True)
        self.board = board
        self.interval = interval
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                report = self.board.first()
            except Exception as exc:  # the store's host (rank 0, or torchrun's agent) is gone
                if not self.stopped.is_set():
                    end_process(f"lost the other processes of this run (their store does not answer: {exc}); "
                                "see the log of rank 0")
                return
            if report is not None and report["rank"] != self.board.rank:
                with contextlib.suppress(Exception):
                    self.board.acknowledge()
                end_process(f"stopping: rank {report['rank']} failed: {report['message']}")

    def stop(self) -> None:
        self.stopped.set()
        self.join()


def default_board(world: World) -> Optional[FailureBoard]:
    """The board in the default process group's store (None for one process, or without a store)."""
    if world.size == 1:
        return None
    try:
        from torch.distributed import distributed_c10d

        store = distributed_c10d._get_default_store()
    except Exception:  # an older or newer torch without it: the launcher stops the others
        return None
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return FailureBoard(store, world.rank, prefix=f"wsss_failure/{attempt}/")


def _report_failure(board: FailureBoard, world: World, watcher: Watcher, exc: BaseException) -> None:
    """Publish this rank's failure; a failure that follows another rank's waits for the watcher to end the
    process with the first one's message."""
    try:
        first = board.publish(exc)
    except Exception:  # the store is gone too: nothing more to tell
        return
    if not first:
        watcher.join(timeout=10 * POLL_S)
    elif world.rank == 0:
        board.wait_for_acks(world.size - 1)


@contextlib.contextmanager
def failures_end_every_rank(world: World) -> Iterator[None]:
    """Run a block on every rank so that an error on one ends them all (see the module docstring)."""
    board = default_board(world)
    if board is None:
        yield
        return
    watcher = Watcher(board)
    watcher.start()
    try:
        yield
    except BaseException as exc:
        _report_failure(board, world, watcher, exc)
        raise
    watcher.stop()
