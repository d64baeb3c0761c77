"""One training job over many processes (torchrun): who am I, and the few collectives llmemf uses.

torchrun starts one process per rank and sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT; ``setup`` reads them, joins the process group (gloo on CPU, nccl on CUDA) and returns
the ``World`` the trainer and the evaluator take. Without torchrun it is the one-process world,
and every collective below is the identity: single-process code pays nothing.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0  # this process's global rank
    size: int = 1  # number of processes (WORLD_SIZE)
    local_rank: int = 0  # rank on this machine: the CUDA device index

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that reads and writes the run directory and prints results."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def share(self, rows):
        """This rank's rows of one global batch (every size-th row from its own offset: rows of a
        length-bucketed batch have similar lengths, so the shares cost alike) and the weight of its
        mean loss: size * len(share) / len(rows), which makes DDP's average of the ranks' gradients
        the gradient of the global batch's mean over rows. A rank left without rows (a last batch
        smaller than the world) computes the loss of one row with weight 0, so that every rank
        still joins the step's gradient all-reduce."""
        if self.size == 1:
            return rows, 1.0
        mine = rows[self.rank :: self.size]
        if len(mine) == 0:
            return rows[:1], 0.0
        return mine, self.size * len(mine) / len(rows)

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (pickled; for small things and checkpoints)."""
        if not self.distributed:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj``, in rank order, on rank 0 (None elsewhere)."""
        if not self.distributed:
            return [obj]
        out: list[Any] | None = [None] * self.size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def sum(self, value: float) -> float:
        if not self.distributed:
            return value
        return float(sum(self.all_gather(float(value))))

    def prefix(self, log: Callable[[str], None]) -> Callable[[str], None]:
        """``log`` with a "[rank R] " prefix when there is more than one rank."""
        if not self.distributed:
            return log
        return lambda msg: log("\n".join(f"[rank {self.rank}] {line}" for line in str(msg).split("\n")))


SINGLE = World()


def env_world() -> World:
    """The world torchrun's environment describes (the one-process world without torchrun)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    return World(int(os.environ.get("RANK", "0")), size, int(os.environ.get("LOCAL_RANK", "0")))


def setup(device: str = "cpu", timeout_s: float = 1800.0) -> tuple[World, str]:
    """Join torchrun's process group once per process (later calls reuse it) and return the world
    and this rank's device: ``cuda`` becomes ``cuda:LOCAL_RANK``. ``timeout_s`` bounds every
    collective, so a rank that dies mid-step does not leave the others waiting forever (torchrun
    usually stops them first)."""
    world = env_world()
    if not world.distributed:
        return world, device
    on_cuda = torch.device(device).type == "cuda"
    if on_cuda:
        device = f"cuda:{world.local_rank}"
        torch.cuda.set_device(world.local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if on_cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s))
    if dist.get_world_size() != world.size or dist.get_rank() != world.rank:
        raise RuntimeError(f"process group ({dist.get_rank()}/{dist.get_world_size()}) disagrees with RANK/WORLD_SIZE ({world.rank}/{world.size})")
    return world, device


def teardown() -> None:
    """Leave the process group at a command's end. Every rank first waits for the others: a rank that
    destroyed its gloo pairs while another still had traffic to it was aborted by the C++ runtime
    ("terminate called without an active exception", a 1-in-several failure of the distributed embed test)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
