"""Where this process stands in a multi-process pipeline run, and the few collectives the runner needs.

``wsss pipeline`` starts no processes itself. torchrun (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``LOCAL_WORLD_SIZE``) or srun (``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``, ``SLURM_NNODES``) does;
they are detected as Lightning detects them, so the Trainers of the training stages join the process group
this module opens. One process (no launcher, or a world of one): a :class:`World` of size 1 whose collectives
return their input and open nothing.

The pipeline's own collectives (barriers, the broadcast of rank 0's decisions and results, the sum of confusion
matrices) go through a gloo group of their own, on CPU tensors, whatever backend the training uses (NCCL on
GPUs). ``WSSS_DIST_TIMEOUT`` (seconds, default 1800) bounds every collective: a rank that waits longer for the
others fails with a timeout instead of hanging.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Any, Iterator, List, Optional, Sequence, TypeVar

import torch

__all__ = ["Launch", "World", "detect_launch", "join_world", "world_session", "SINGLE"]

T = TypeVar("T")
TIMEOUT_ENV = "WSSS_DIST_TIMEOUT"


@dataclass(frozen=True)
class Launch:
    """What the launcher says about this process: its ranks, the world's sizes, where rank 0 listens."""

    rank: int
    size: int
    local_rank: int
    local_size: int
    address: str
    port: int


def detect_launch() -> Optional[Launch]:
    """This process's place as torchrun or srun launched it (Lightning's detection, torchrun first); None for a
    single process."""
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    if TorchElasticEnvironment.detect():
        env = TorchElasticEnvironment()
        local_size = int(os.environ.get("LOCAL_WORLD_SIZE", env.world_size()))
    elif SLURMEnvironment.detect():
        env = SLURMEnvironment()
        local_size = env.world_size() // max(1, int(os.environ.get("SLURM_NNODES", "1")))
    else:
        return None
    if env.world_size() <= 1:
        return None
    return Launch(env.global_rank(), env.world_size(), env.local_rank(), local_size, env.main_address, env.main_port)


@dataclass(frozen=True)
class World:
    """The processes of one pipeline run: this one's ``rank`` of ``size``, its ``local_rank`` of the ``local_size``
    on its node, and the gloo ``group`` the pipeline's collectives use (None for one process)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    group: Any = None

    @property
    def num_nodes(self) -> int:
        return max(1, self.size // max(1, self.local_size))

    @property
    def is_zero(self) -> bool:
        return self.rank == 0

    def share(self, items: Sequence[T]) -> List[T]:
        """This rank's items: ``items[rank::size]`` (disjoint across ranks, together all of them)."""
        return list(items)[self.rank::self.size]

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        if self.size > 1:
            torch.distributed.barrier(group=self.group)

    def reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The element-wise sum of ``tensor`` (a CPU tensor) over the ranks (a new tensor)."""
        total = tensor.detach().cpu().clone()
        if self.size > 1:
            torch.distributed.all_reduce(total, op=torch.distributed.ReduceOp.SUM, group=self.group)
        return total

    def broadcast(self, value: T) -> T:
        """Rank 0's ``value`` (any picklable object) on every rank."""
        if self.size == 1:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def gather(self, value: T) -> List[T]:
        """Every rank's ``value``, in rank order, on every rank."""
        if self.size == 1:
            return [value]
        values: List[Any] = [None] * self.size
        torch.distributed.all_gather_object(values, value, group=self.group)
        return values


SINGLE = World()
"""The world of a single process."""


def _timeout() -> datetime.timedelta:
    return datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, "1800")))


def _backend() -> str:
    """gloo for CPU tensors, NCCL for CUDA ones where there is a GPU (the trainers' DDP uses the latter)."""
    return "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"


_JOINED: Optional[World] = None
_OPENED_GROUP = False
_ENDED_WELL = False


def join_world(launch: Optional[Launch] = None) -> World:
    """This process's world: the launcher's (the default process group opened, or reused when a Trainer opened it,
    and a gloo group for the pipeline's collectives), else :data:`SINGLE`. Joined once per process; the group
    this opens is closed when the process exits after runs that ended well."""
    global _JOINED, _OPENED_GROUP
    if _JOINED is not None:
        return _JOINED
    launch = launch or detect_launch()
    if launch is None:
        return SINGLE
    if not torch.distributed.is_initialized():
        os.environ.setdefault("MASTER_ADDR", launch.address)
        os.environ.setdefault("MASTER_PORT", str(launch.port))
        torch.distributed.init_process_group(_backend(), rank=launch.rank, world_size=launch.size, timeout=_timeout())
        _OPENED_GROUP = True
        atexit.register(_close_group)
    group = torch.distributed.new_group(backend="gloo", timeout=_timeout())
    _JOINED = World(launch.rank, launch.size, launch.local_rank, launch.local_size, group)
    return _JOINED


def _close_group() -> None:
    """At exit: close the process group this module opened, unless a run failed (the other ranks may be gone)."""
    if _OPENED_GROUP and _ENDED_WELL and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


@contextlib.contextmanager
def world_session() -> Iterator[World]:
    """The world for one run (a block); when the block ends normally every rank waits for the others there."""
    global _ENDED_WELL
    _ENDED_WELL = False
    world = join_world()
    yield world
    world.barrier()
    _ENDED_WELL = True

