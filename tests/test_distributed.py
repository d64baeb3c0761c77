"""Training with torchrun (DDP, gloo) on loopback: the same trajectory as one process, survival of a
killed rank, a failed rendezvous in one line, and two "nodes" of one process each.

Real torchrun processes on 127.0.0.1 only, each bounded by a subprocess timeout. Every launch starts
Python and torch in 2-3 processes, so these tests take tens of seconds on a loaded machine.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from llmemf.config import load_config
from llmemf.distributed import World
from llmemf.evaluation.protocols import Evaluator
from llmemf.models.base import build_model
from llmemf.training.trainer import train

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 300  # seconds any one launch may take before the test fails


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _args(ds, out, *extra) -> list[str]:
    return [
        f"dataset={ds}",
        f"out={out}",
        "model.name=sasrec",
        "model.hidden=16",
        "model.dropout=0",  # ranks draw their own dropout masks; without dropout the trajectories can match
        "model.loss=softmax",  # likewise their own sampled negatives (SASRec's official BCE loss draws one per position)
        "max_len=10",
        "train.progress=false",
        "train.threads=1",
        "eval.n_negatives=50",
        *extra,
    ]


def _torchrun(nproc: int, port: int, args: list[str], *launcher: str, program: tuple[str, ...] = ("-m", "llmemf.train")) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint=127.0.0.1:{port}",
        "--local-addr=127.0.0.1",
        *launcher,
        *program,
        *args,
    ]


def _losses(run: Path) -> np.ndarray:
    return np.array([json.loads(s)["loss"] for s in (run / "metrics.jsonl").read_text().splitlines()])


@pytest.fixture
def equal_length_data(tmp_path, make_tiny) -> Path:
    """Every training sequence of the same length: each rank's half of a batch then has as many targets
    as the other's, so the mean of the ranks' mean losses is the batch's mean loss exactly."""
    make_tiny(n_x=40, n_y=50, n_users=200, seed=2, min_len=8, max_len=8).save(tmp_path / "ds")
    return tmp_path / "ds"


def test_two_ranks_follow_one_process(equal_length_data, tmp_path):
    extra = ["train.epochs=3", "train.lr=0.01", "train.batch_size=32"]
    ddp = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "llmemf.cli", "train", "--nproc", "2", *_args(equal_length_data, ddp, *extra)]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=TIMEOUT, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "on 2 processes" in proc.stdout and "[rank 0] epoch   3" in proc.stdout
    one = train(load_config(None, _args(equal_length_data, tmp_path / "one", *extra)), log=lambda *_: None)
    # The same global batches, split in two: the loss of every epoch agrees to float rounding.
    np.testing.assert_allclose(_losses(ddp), _losses(tmp_path / "one"), rtol=1e-5)
    ddp_res = json.loads((ddp / "results.json").read_text())
    assert ddp_res["best_epoch"] == one.best_epoch
    for proto in ("c2dsr", "full"):
        for dom, m in one.test[proto].metrics.items():
            for k, v in m.items():
                assert ddp_res["test"][proto]["metrics"][dom][k] == pytest.approx(v, abs=1e-3), (proto, dom, k)


_SPARSE_RANKS = """
import sys

import torch

from llmemf.config import TrainConfig
from llmemf.data.batching import DataBundle
from llmemf.data.dataset import Dataset
from llmemf.distributed import setup, teardown
from llmemf.evaluation.protocols import Evaluator
from llmemf.models.base import build_model
from llmemf.training.loop import fit

torch.set_num_threads(1)
world, _ = setup()
torch.manual_seed(world.rank)  # different initial weights per rank: DDP must start them from rank 0's
bundle = DataBundle(Dataset.load(sys.argv[1]), 10)
model = build_model("llmemf", {"d_id": 8, "n_blocks": 1, "modalities": ["id"], "train_negatives": 10}, bundle)
first = model.item_id.weight.detach().clone()
train_cfg = TrainConfig(epochs=1, batch_size=32, progress=False, lazy_adam=True)
fit(model, bundle, train_cfg, Evaluator(bundle, "valid", "full"), seed=0, world=world, log=print)
torch.save({"first": first, "trained": model.item_id.weight.detach(), "sparse": model.item_id.sparse}, f"{sys.argv[2]}/rank{world.rank}.pt")
teardown()  # as every command does: leaving gloo at interpreter exit while the other rank still talks aborts it
"""


def test_sparse_id_gradients_are_all_reduced_on_gloo(tmp_path, make_tiny):
    """LLM-EMF's sampled softmax gives its ID table sparse gradients; DDP on gloo all-reduces them, so two
    ranks that read different rows of the table every step still hold the same table after training."""
    make_tiny(n_x=60, n_y=70, n_users=120, seed=4).save(tmp_path / "ds")
    script = tmp_path / "ranks.py"
    script.write_text(_SPARSE_RANKS)
    cmd = _torchrun(2, _free_port(), [str(tmp_path / "ds"), str(tmp_path)], program=(str(script),))
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["sparse"] and ranks[1]["sparse"]  # no fallback to dense on gloo
    assert not torch.equal(ranks[0]["first"], ranks[1]["first"])
    assert torch.equal(ranks[0]["trained"], ranks[1]["trained"])
    assert not torch.equal(ranks[0]["trained"], ranks[0]["first"])


class _Shard(World):
    """Rank ``rank`` of a world of two whose all_gather hands back the other rank's share, as computed beforehand."""

    def __init__(self, rank: int, other=None):
        super().__init__(rank, 2, 0)
        object.__setattr__(self, "other", other)

    def all_gather(self, obj):
        if self.other is None:  # first pass: capture this rank's share
            raise _Captured(obj)
        return [obj, self.other] if self.rank == 0 else [self.other, obj]


class _Captured(Exception):
    pass


def test_evaluation_split_across_ranks_equals_one_process(tiny_dataset, tiny_bundle):
    cfg = load_config(None, ["model.name=sasrec", "model.hidden=16", "max_len=10"])
    model = build_model(cfg.model_name, cfg.model_params, tiny_bundle)
    for proto in ("c2dsr", "full"):
        ev = Evaluator(tiny_bundle, "test", proto, 20, 1, "pessimistic", batch_size=7)  # many batches, odd split
        one = ev.evaluate(model)
        try:
            ev.evaluate(model, world=_Shard(1))
        except _Captured as c:
            share_1 = c.args[0]
        split = ev.evaluate(model, world=_Shard(0, share_1))
        assert split.metrics == one.metrics and split.counts == one.counts
        for dom in one.ranks:
            np.testing.assert_array_equal(split.ranks[dom], one.ranks[dom])


def test_a_killed_rank_stops_the_job_and_the_rerun_resumes(tmp_path, make_tiny):
    make_tiny(n_x=200, n_y=250, n_users=1500, seed=3).save(tmp_path / "ds")
    run = tmp_path / "run"
    extra = ["train.epochs=4", "model.hidden=48", "train.batch_size=64"]
    cmd = _torchrun(2, _free_port(), _args(tmp_path / "ds", run, *extra))
    job = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + TIMEOUT
        while time.time() < deadline and job.poll() is None:
            if (run / "metrics.jsonl").exists() and (run / "metrics.jsonl").read_text().count("\n") >= 1:
                break
            time.sleep(0.05)
        assert job.poll() is None, "training finished before a rank could be killed; make the test data larger"
        time.sleep(0.3)  # inside the next epoch
        os.kill(_worker_of_rank(job.pid, 1), signal.SIGKILL)
        out, _ = job.communicate(timeout=120)  # torchrun notices, stops rank 0 and fails
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode != 0 and b"SIGKILL" in out, out[-2000:]
    done = (run / "metrics.jsonl").read_text().count("\n")
    assert 1 <= done < 4
    # The rerun on another number of ranks (one process here) resumes after the last completed epoch.
    lines = []
    res = train(load_config(None, _args(tmp_path / "ds", run, *extra)), log=lines.append)
    assert any(f"after epoch {done} " in s for s in lines), lines
    assert len(res.epoch_seconds) == 4
    assert [json.loads(s)["epoch"] for s in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


def _worker_of_rank(agent_pid: int, rank: int) -> int:
    """The pid of torchrun's worker process with RANK=rank (a child of the agent)."""
    for _ in range(200):
        children = Path(f"/proc/{agent_pid}/task/{agent_pid}/children").read_text().split()
        for pid in children:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            if f"RANK={rank}".encode() in env:
                return int(pid)
        time.sleep(0.05)
    raise AssertionError(f"no worker with RANK={rank} under torchrun pid {agent_pid}")


def test_a_rendezvous_nobody_joins_fails_in_one_line(tmp_path, make_tiny):
    make_tiny().save(tmp_path / "ds")
    port = _free_port()
    cmd = [sys.executable, "-m", "llmemf.cli", "train", "--nproc", "1", "--nnodes", "2"]
    cmd += ["--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-timeout", "3"]
    proc = subprocess.run([*cmd, *_args(tmp_path / "ds", tmp_path / "r")], env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert last.startswith(f"error: the rendezvous at 127.0.0.1:{port} did not gather 2 nodes within 3s"), last
    assert not (tmp_path / "r").exists()  # no rank ever started


def test_two_nodes_on_loopback(tmp_path, make_tiny):
    make_tiny().save(tmp_path / "ds")
    port = _free_port()
    args = _args(tmp_path / "ds", tmp_path / "r", "train.epochs=2")
    nodes = [
        subprocess.Popen(
            _torchrun(1, port, args, "--nnodes=2", f"--node_rank={rank}", "--rdzv-id=test2nodes"),
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    outs = []
    try:
        outs = [n.communicate(timeout=TIMEOUT)[0] for n in nodes]
    finally:
        for n in nodes:
            if n.poll() is None:
                n.kill()
    assert [n.returncode for n in nodes] == [0, 0], "\n".join(o[-2000:] for o in outs)
    assert sum("on 2 processes" in o for o in outs) == 1  # rank 0 prints, on whichever node it landed
    assert len((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()) == 2
    assert json.loads((tmp_path / "r" / "results.json").read_text())["epochs_run"] == 2
