"""The training loop: learns, stops early, checkpoints load with weights_only, resumes exactly after kill -9."""

from __future__ import annotations

import fcntl
import json
import shutil
import signal
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import torch

from llmemf.config import load_config
from llmemf.data.batching import DataBundle
from llmemf.data.dataset import Dataset
from llmemf.training.trainer import RunDirBusy, RunDirConflict, load_run, train


def _cfg(ds_root, out, *extra):
    return load_config(
        None,
        [f"dataset={ds_root}", f"out={out}", "train.progress=false", "model.name=sasrec", "eval.n_negatives=50", *extra],
    )


def test_sasrec_learns_and_beats_pop(tiny_dataset, tiny_bundle, tmp_path):
    quiet = lambda *_: None  # noqa: E731
    # the softmax loss and light dropout learn this tiny walk fastest (SASRec's own defaults: test_baselines_single)
    sas_args = ("train.epochs=15", "train.lr=0.01", "model.hidden=32", "model.loss=softmax", "model.dropout=0.2")
    sas = train(_cfg(tiny_dataset.root, tmp_path / "s", *sas_args), tiny_bundle, log=quiet)
    pop = train(_cfg(tiny_dataset.root, tmp_path / "p", "model.name=pop"), tiny_bundle, log=quiet)
    for proto in ("c2dsr", "full"):
        for dom in ("X", "Y"):
            assert sas.test[proto].metrics[dom]["MRR"] > pop.test[proto].metrics[dom]["MRR"] + 0.1, (proto, dom)
    results = json.loads((tmp_path / "s" / "results.json").read_text())
    assert results["best_epoch"] == sas.best_epoch and set(results["test"]) == {"c2dsr", "full"}
    # The code that finished the run: this checkout's commit (the tests run from one) or, without git, none.
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent) if shutil.which("git") else None
    commit = head.stdout.strip() if head is not None and head.returncode == 0 else None
    assert results["code"]["llmemf"] == version("llmemf") and results["code"]["commit"] == commit
    assert isinstance(results["code"]["dirty"], bool) == (commit is not None)
    lines = (tmp_path / "s" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == results["epochs_run"]
    # The best checkpoint is a plain state_dict that loads with weights_only=True and rebuilds the model.
    state = torch.load(tmp_path / "s" / "best.pt", weights_only=True)
    assert "item.weight" in state
    cfg, _, model = load_run(tmp_path / "s", bundle=tiny_bundle)
    assert cfg.model_name == "sasrec" and not model.training


def test_bf16_training_is_the_models_choice_and_evaluation_stays_fp32(tiny_dataset, tiny_bundle, tmp_path):
    from llmemf.training.trainer import cpu_has_native_bf16, evaluate_all

    quiet = lambda *_: None  # noqa: E731
    emf = _cfg(tiny_dataset.root, tmp_path / "e", "model.name=llmemf", "model.d_id=16", "model.n_blocks=1", "train.epochs=2")
    train(emf, tiny_bundle, log=quiet)
    sas = _cfg(tiny_dataset.root, tmp_path / "s", "model.hidden=16", "train.epochs=1")
    train(sas, tiny_bundle, log=quiet)
    forced = _cfg(tiny_dataset.root, tmp_path / "f", "model.hidden=16", "train.epochs=1", "train.bf16=true")
    train(forced, tiny_bundle, log=quiet)
    flag = lambda run: json.loads((tmp_path / run / "results.json").read_text())["train_bf16"]  # noqa: E731
    assert flag("e") is cpu_has_native_bf16() and flag("s") is False and flag("f") is True
    # the reported test metrics are those of an fp32 evaluation of the saved weights
    _, _, model = load_run(tmp_path / "e", bundle=tiny_bundle)
    fp32 = evaluate_all(model, emf, tiny_bundle, "test")
    reported = json.loads((tmp_path / "e" / "results.json").read_text())["test"]
    for proto in ("c2dsr", "full"):
        assert reported[proto]["metrics"] == fp32[proto].to_dict()["metrics"]


def test_early_stopping_patience(tiny_dataset, tiny_bundle, tmp_path):
    # lr=0: the model never changes, so validation never improves after epoch 1.
    cfg = _cfg(tiny_dataset.root, tmp_path / "r", "train.epochs=20", "train.patience=3", "model.hidden=32")
    cfg.train.lr = 0.0  # set past load_config, which refuses lr <= 0 from a user
    res = train(cfg, tiny_bundle, log=lambda *_: None)
    assert res.best_epoch == 1 and len(res.epoch_seconds) == 4


def test_a_run_directory_trains_in_one_process_at_a_time(tiny_dataset, tiny_bundle, tmp_path):
    cfg = _cfg(tiny_dataset.root, tmp_path / "r", "train.epochs=1", "model.hidden=16")
    (tmp_path / "r").mkdir()
    with open(tmp_path / "r" / ".train.lock", "a") as other:  # another trainer holds the directory
        fcntl.flock(other, fcntl.LOCK_EX)
        with pytest.raises(RunDirBusy, match="another process"):
            train(cfg, tiny_bundle, log=lambda *_: None)
        assert not (tmp_path / "r" / "metrics.jsonl").exists()
    assert train(cfg, tiny_bundle, log=lambda *_: None).best_epoch == 1  # free again once it lets go


def test_a_checkpoint_resumes_only_under_its_own_experiment(tiny_dataset, tiny_bundle, tmp_path):
    quiet = lambda *_: None  # noqa: E731
    run = tmp_path / "r"
    train(_cfg(tiny_dataset.root, run, "train.epochs=1", "model.hidden=16"), tiny_bundle, log=quiet)
    stored = (run / "config.yaml").read_text()
    other = _cfg(tiny_dataset.root, run, "train.epochs=1", "model.hidden=16", "train.lr=0.01")
    with pytest.raises(RunDirConflict, match="different experiment"):
        train(other, tiny_bundle, log=quiet)
    assert (run / "config.yaml").read_text() == stored  # the run directory is left as it was
    # More threads, or more epochs, continue the same experiment: it resumes after epoch 1.
    longer = train(_cfg(tiny_dataset.root, run, "train.epochs=2", "model.hidden=16", "train.threads=1"), tiny_bundle, log=quiet)
    assert len(longer.epoch_seconds) == 2
    # Starting over on purpose is allowed.
    assert train(other, tiny_bundle, resume=False, log=quiet).best_epoch >= 1


def test_resume_after_kill_matches_uninterrupted(tmp_path, make_tiny):
    ds = make_tiny(n_x=200, n_y=250, n_users=1500, seed=3)
    ds.save(tmp_path / "ds")
    extra = ["train.epochs=4", "model.hidden=48", "train.batch_size=64"]
    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "llmemf.cli", "train", *_cli_overrides(tmp_path / "ds", run, extra)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        log = run / "metrics.jsonl"
        if log.exists() and len(log.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed; make the test data larger"
    time.sleep(0.3)  # somewhere inside epoch 3 (or while writing its checkpoint)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    bundle = DataBundle(Dataset.load(tmp_path / "ds"), 15)
    quiet = lambda *_: None  # noqa: E731
    resumed = train(_cfg(tmp_path / "ds", run, *extra), bundle, log=quiet)
    straight = train(_cfg(tmp_path / "ds", tmp_path / "straight", *extra), bundle, log=quiet)
    # Same data order and dropout stream per epoch, same optimiser state: the resumed run follows the
    # uninterrupted one. Not bit for bit: MKL's reductions may differ between processes (memory alignment).
    assert resumed.best_epoch == straight.best_epoch
    a, b = resumed.model.state_dict(), straight.model.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-2, atol=1e-3)
    for dom, m in straight.test["c2dsr"].metrics.items():
        assert abs(resumed.test["c2dsr"].metrics[dom]["MRR"] - m["MRR"]) < 0.01
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 4


def test_llmemf_sampled_softmax_resumes_exactly_with_its_lazy_adam_state(tiny_dataset, tiny_bundle, tmp_path):
    quiet = lambda *_: None  # noqa: E731
    args = ("model.name=llmemf", "model.d_id=16", "model.n_blocks=1", "model.modalities=[id]", "model.train_negatives=10")
    args += ("train.lazy_adam=true", "train.patience=9")
    train(_cfg(tiny_dataset.root, tmp_path / "r", *args, "train.epochs=1"), tiny_bundle, log=quiet)
    state = torch.load(tmp_path / "r" / "last.pt", weights_only=True)["optimizer"]["state"]
    assert any(s["exp_avg"].shape[0] == tiny_bundle.n_items + 1 for s in state.values())  # the ID table's moments
    lines = []
    train(_cfg(tiny_dataset.root, tmp_path / "r", *args, "train.epochs=3"), tiny_bundle, log=lines.append)
    assert any("after epoch 1 " in line for line in lines), lines
    train(_cfg(tiny_dataset.root, tmp_path / "s", *args, "train.epochs=3"), tiny_bundle, log=quiet)
    resumed, straight = (torch.load(tmp_path / run / "last.pt", weights_only=True) for run in ("r", "s"))
    for k, v in straight["model"].items():
        assert torch.equal(resumed["model"][k], v), k
    for i, s in straight["optimizer"]["state"].items():
        for k, v in s.items():
            assert torch.equal(resumed["optimizer"]["state"][i][k], v), (i, k)


def test_cold_target_metrics_are_the_test_results_restricted(tiny_dataset, tiny_bundle, tmp_path):
    from llmemf.evaluation.protocols import Evaluator

    cold = [int(t) for t in tiny_bundle.splits["test"].target[:6]]
    (tiny_dataset.root / "cold_items.json").write_text(json.dumps({"items": cold}))
    res = train(_cfg(tiny_dataset.root, tmp_path / "p", "model.name=pop"), tiny_bundle, log=lambda *_: None)
    reported = json.loads((tmp_path / "p" / "results.json").read_text())["test_cold_targets"]
    for proto in ("c2dsr", "full"):
        ev = Evaluator(tiny_bundle, "test", proto, n_negatives=50)
        expected = ev.restrict(ev.evaluate(res.model), np.asarray(cold)).to_dict()
        assert reported[proto]["metrics"] == expected["metrics"] and reported[proto]["counts"] == expected["counts"]
        assert sum(expected["counts"].values()) >= 6


def _cli_overrides(ds_root, out, extra):
    return [f"dataset={ds_root}", f"out={out}", "train.progress=false", "model.name=sasrec", "eval.n_negatives=50", *extra]
