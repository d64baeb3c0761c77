"""``llmemf train --nproc N`` (and ``compare --nproc N``): start torchrun for the user (this machine, or one node of several)."""

from __future__ import annotations

import subprocess
import sys

from llmemf.errors import UserError


def torchrun_command(
    nproc: int,
    train_args: list[str],
    nnodes: int = 1,
    rdzv_endpoint: str = "",
    rdzv_timeout: float = 300.0,
    module: tuple[str, ...] = ("llmemf.train",),
) -> list[str]:
    """torchrun (``python -m torch.distributed.run`` of this interpreter) running ``python -m llmemf.train
    TRAIN_ARGS`` (or ``python -m MODULE...``) on ``nproc`` ranks: a standalone rendezvous on a free local
    port for one machine, else the c10d rendezvous at ``rdzv_endpoint`` (host:port), waiting
    ``rdzv_timeout`` seconds for all nodes."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
    if nnodes == 1 and not rdzv_endpoint:
        cmd += ["--standalone", "--local-addr=127.0.0.1"]  # one machine: its processes meet on loopback
    else:
        if not rdzv_endpoint:
            raise UserError(f"--nnodes {nnodes} needs --rdzv-endpoint HOST:PORT, the same on every node (see docs/distributed.md)")
        cmd += [f"--nnodes={nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv_endpoint}", f"--rdzv-conf=join_timeout={rdzv_timeout:g}"]
    return [*cmd, "-m", *module, *train_args]


def torchrun_train(
    nproc: int,
    train_args: list[str],
    nnodes: int = 1,
    rdzv_endpoint: str = "",
    rdzv_timeout: float = 300.0,
    module: tuple[str, ...] = ("llmemf.train",),
) -> int:
    """Run the job, passing its output through; its exit status (0, or torchrun's when any rank failed).
    A rendezvous that no other node joined ends in one line naming the endpoint (UserError)."""
    if nproc < 1 or nnodes < 1:
        raise UserError(f"--nproc and --nnodes must be at least 1, got {nproc} and {nnodes}")
    cmd = torchrun_command(nproc, train_args, nnodes, rdzv_endpoint, rdzv_timeout, module)
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, errors="replace")
    rendezvous_timed_out = False
    assert proc.stderr is not None
    for line in proc.stderr:
        sys.stderr.write(line)
        rendezvous_timed_out |= "RendezvousTimeoutError" in line
    rc = proc.wait()
    if rc and rendezvous_timed_out:
        raise UserError(
            f"the rendezvous at {rdzv_endpoint} did not gather {nnodes} nodes within {rdzv_timeout:g}s: start every node with the same "
            "--nnodes and --rdzv-endpoint HOST:PORT (HOST the first node's address, PORT open to the others), or raise --rdzv-timeout"
        )
    return rc
