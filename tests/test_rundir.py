"""The run directory's identity (dataset content hash) and checkpoint integrity (size + sha256 records)."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

from llmemf.config import load_config
from llmemf.data.batching import DataBundle
from llmemf.data.dataset import Dataset
from llmemf.experiments.runner import run_or_reuse
from llmemf.io import sha256_file
from llmemf.training.trainer import CheckpointDamaged, DatasetMismatch, RunDir, load_run, matches_stored_experiment, train

quiet = lambda *_: None  # noqa: E731


def _cfg(ds_root, out, *extra):
    return load_config(
        None,
        [f"dataset={ds_root}", f"out={out}", "train.progress=false", "model.name=sasrec", "model.hidden=16", "max_len=10", "eval.n_negatives=50"]
        + list(extra),
    )


def _regenerate_in_place(root, make_tiny, seed=7):
    """The same path, the same sizes, other data (what re-running an importer with other options does)."""
    make_tiny(seed=seed).save(root)
    return Dataset.load(root)


def _damage(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_the_run_directory_records_the_dataset_hash(tiny_dataset, tiny_bundle, tmp_path):
    train(_cfg(tiny_dataset.root, tmp_path / "r", "train.epochs=1"), tiny_bundle, log=quiet)
    h = tiny_dataset.manifest.content_hash
    assert json.loads((tmp_path / "r" / "run.json").read_text())["dataset_content_hash"] == h
    assert json.loads((tmp_path / "r" / "results.json").read_text())["dataset_content_hash"] == h


def test_resume_refuses_a_dataset_regenerated_in_place(tiny_dataset, tiny_bundle, tmp_path, make_tiny):
    run = tmp_path / "r"
    train(_cfg(tiny_dataset.root, run, "train.epochs=1"), tiny_bundle, log=quiet)
    old = tiny_dataset.manifest.content_hash
    new_ds = _regenerate_in_place(tiny_dataset.root, make_tiny)
    new = new_ds.manifest.content_hash
    assert old != new
    log_before = (run / "metrics.jsonl").read_text()
    with pytest.raises(DatasetMismatch) as e:
        train(_cfg(tiny_dataset.root, run, "train.epochs=2"), DataBundle(new_ds, 10), log=quiet)
    msg = e.value.one_line()
    assert old in msg and new in msg and "--fresh" in msg and "\n" not in str(e.value)
    assert (run / "metrics.jsonl").read_text() == log_before  # nothing trained
    # --fresh starts over on the new data and records its hash
    train(_cfg(tiny_dataset.root, run, "train.epochs=1"), DataBundle(new_ds, 10), resume=False, log=quiet)
    assert json.loads((run / "run.json").read_text())["dataset_content_hash"] == new


def test_compare_does_not_reuse_results_of_other_data(tiny_dataset, tiny_bundle, tmp_path, make_tiny):
    cfg = load_config(None, [f"dataset={tiny_dataset.root}", f"out={tmp_path / 'pop'}", "model.name=pop", "max_len=10", "eval.n_negatives=50"])
    run_or_reuse(cfg, tiny_bundle, quiet)
    assert matches_stored_experiment(tmp_path / "pop", cfg)  # same data: reused
    new_ds = _regenerate_in_place(tiny_dataset.root, make_tiny)
    with pytest.raises(DatasetMismatch, match=new_ds.manifest.content_hash):
        run_or_reuse(cfg, DataBundle(new_ds, 10), quiet)
    fresh = run_or_reuse(cfg, DataBundle(new_ds, 10), quiet, fresh=True)
    assert fresh["dataset_content_hash"] == new_ds.manifest.content_hash


def test_a_finished_run_is_reused_on_a_copy_of_its_dataset_elsewhere(tiny_dataset, tiny_bundle, tmp_path):
    """The dataset moved (another machine, another folder): its content hash is the same, so the finished run is
    reused, not refused as another experiment (the spec's runs used to conflict over the path alone)."""
    cfg = load_config(None, [f"dataset={tiny_dataset.root}", f"out={tmp_path / 'pop'}", "model.name=pop", "max_len=10", "eval.n_negatives=50"])
    run_or_reuse(cfg, tiny_bundle, quiet)
    copy = shutil.copytree(tiny_dataset.root, tmp_path / "copy")
    lines: list[str] = []
    run_or_reuse(dataclasses.replace(cfg, dataset=str(copy)), DataBundle(Dataset.load(copy), 10), lines.append)
    assert any("reusing" in line for line in lines), lines


def test_evaluate_refuses_another_dataset_and_accepts_a_copy(tiny_dataset, tiny_bundle, tmp_path, make_tiny):
    train(_cfg(tiny_dataset.root, tmp_path / "r", "train.epochs=1"), tiny_bundle, log=quiet)
    copy = shutil.copytree(tiny_dataset.root, tmp_path / "copy")
    cfg, _, _ = load_run(tmp_path / "r", dataset=str(copy))  # the same data elsewhere is fine
    assert cfg.dataset == str(copy)
    other = tmp_path / "other"
    make_tiny(seed=5).save(other)  # same sizes, other items and sequences
    with pytest.raises(DatasetMismatch, match="the dataset it was trained on"):
        load_run(tmp_path / "r", dataset=str(other))


def test_checkpoints_have_size_and_sha256_records(tiny_dataset, tiny_bundle, tmp_path):
    run = tmp_path / "r"
    train(_cfg(tiny_dataset.root, run, "train.epochs=2"), tiny_bundle, log=quiet)
    for name in ("last.pt", "best.pt", "last.prev.pt"):
        rec = json.loads((run / f"{name}.sha256").read_text())
        assert rec["size"] == (run / name).stat().st_size and rec["sha256"] == sha256_file(run / name)
    assert torch.load(run / "last.prev.pt", weights_only=True)["epoch"] == 1
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 2


def test_a_damaged_last_checkpoint_falls_back_to_the_previous_one(tiny_dataset, tiny_bundle, tmp_path):
    run = tmp_path / "r"
    train(_cfg(tiny_dataset.root, run, "train.epochs=2", "train.lr=0.01"), tiny_bundle, log=quiet)
    _damage(run / "last.pt")
    lines = []
    res = train(_cfg(tiny_dataset.root, run, "train.epochs=3", "train.lr=0.01"), tiny_bundle, log=lines.append)
    assert any("last.pt is damaged" in s and "resuming from last.prev.pt, epoch 1" in s for s in lines), lines
    assert len(res.epoch_seconds) == 3  # epoch 1 from the fallback, epochs 2 and 3 trained again
    assert [json.loads(s)["epoch"] for s in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert (run / "last.pt.damaged").exists()


def test_a_damaged_last_checkpoint_without_a_fallback_says_what_to_do(tiny_dataset, tiny_bundle, tmp_path):
    run = tmp_path / "r"
    train(_cfg(tiny_dataset.root, run, "train.epochs=1"), tiny_bundle, log=quiet)
    _damage(run / "last.pt")
    with pytest.raises(CheckpointDamaged) as e:
        train(_cfg(tiny_dataset.root, run, "train.epochs=2"), tiny_bundle, log=quiet)
    assert "--fresh" in str(e.value) and "sha256" in str(e.value) and "\n" not in str(e.value)


def test_a_damaged_best_checkpoint_is_refused_before_any_epoch_trains(tiny_dataset, tiny_bundle, tmp_path):
    run = tmp_path / "r"

    def frozen(
        epochs: int,
    ):  # lr ~0 (0 itself is refused): the ranks never change, epoch 1 stays the best, so best.pt is not the last epoch's weights
        return _cfg(tiny_dataset.root, run, f"train.epochs={epochs}", "train.patience=10", "train.lr=1e-12")

    assert train(frozen(2), tiny_bundle, log=quiet).best_epoch == 1
    _damage(run / "best.pt")
    log_before, last_before = (run / "metrics.jsonl").read_text(), (run / "last.pt").read_bytes()
    with pytest.raises(CheckpointDamaged, match="delete .*best.pt to resume"):
        train(frozen(3), tiny_bundle, log=quiet)
    assert (run / "metrics.jsonl").read_text() == log_before and (run / "last.pt").read_bytes() == last_before
    with pytest.raises(CheckpointDamaged):
        load_run(run, bundle=tiny_bundle)


def test_a_damaged_best_checkpoint_of_the_last_epoch_is_rebuilt(tiny_dataset, tiny_bundle, tmp_path):
    run = tmp_path / "r"
    train(_cfg(tiny_dataset.root, run, "train.epochs=1"), tiny_bundle, log=quiet)
    _damage(run / "best.pt")
    lines = []
    res = train(_cfg(tiny_dataset.root, run, "train.epochs=2"), tiny_bundle, log=lines.append)
    assert any("rebuilt from last.pt" in s for s in lines) and res.best_epoch >= 1
    load_run(run, bundle=tiny_bundle)  # intact again


def test_a_fresh_start_leaves_nothing_of_the_old_experiment_to_resume_or_reuse(tiny_dataset, tiny_bundle, tmp_path):
    run = tmp_path / "r"
    train(_cfg(tiny_dataset.root, run, "train.epochs=2"), tiny_bundle, log=quiet)
    other = _cfg(tiny_dataset.root, run, "train.epochs=2", "train.lr=0.01")
    run_dir = RunDir(run, log=quiet)
    assert run_dir.open(other, resume=False, dataset_hash=tiny_dataset.manifest.content_hash) is None
    # as if killed before its first epoch ended: the new config must not pick up the old checkpoint or results
    assert not any((run / n).exists() for n in ("last.pt", "last.prev.pt", "best.pt", "results.json"))
    assert matches_stored_experiment(run, other)  # config.yaml is the new experiment's, with no results to reuse yet


def test_a_metrics_line_torn_by_a_kill_does_not_block_the_resume(tiny_dataset, tiny_bundle, tmp_path):
    run = tmp_path / "r"
    train(_cfg(tiny_dataset.root, run, "train.epochs=1"), tiny_bundle, log=quiet)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "loss": 4.1')  # killed while appending epoch 2's line, before its last.pt
    train(_cfg(tiny_dataset.root, run, "train.epochs=2"), tiny_bundle, log=quiet)
    assert [json.loads(s)["epoch"] for s in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_a_run_directory_records_every_model_field_and_old_ones_keep_their_defaults(tiny_dataset, tmp_path):
    """config.yaml names every model field, so a later change of a default cannot change what a finished run
    means; a config.yaml written before (naming only the fields set away from the defaults of its day) is read
    with the earlier default of each field whose default has changed since."""
    from omegaconf import OmegaConf

    from llmemf.config import config_to_yaml
    from llmemf.models.llmemf import LLMEMF, LLMEMFConfig
    from llmemf.training.rundir import load_run_config

    cfg = load_config(None, [f"dataset={tiny_dataset.root}", f"out={tmp_path / 'new'}", "model.name=llmemf", "model.d_id=16"])
    RunDir(tmp_path / "new").open(cfg, resume=False)
    stored = OmegaConf.load(tmp_path / "new" / "config.yaml").model
    assert set(stored) == {"name"} | {f.name for f in dataclasses.fields(LLMEMFConfig)}
    assert stored.train_negatives == LLMEMFConfig().train_negatives and stored.d_id == 16

    old = tmp_path / "old"
    old.mkdir()
    (old / "config.yaml").write_text(config_to_yaml(cfg))  # as written before: the overrides only
    assert set(OmegaConf.load(old / "config.yaml").model) == {"name", "d_id"}
    earlier = load_run_config(old / "config.yaml").model_params
    assert LLMEMF.earlier_defaults and all(earlier[k] == v for k, v in LLMEMF.earlier_defaults.items())
    assert not matches_stored_experiment(old, cfg)  # trained under the earlier defaults: not this experiment
    assert matches_stored_experiment(old, dataclasses.replace(cfg, model={**cfg.model, **LLMEMF.earlier_defaults}))


def test_a_collected_run_is_restored_only_for_the_same_experiment_on_the_same_data(tiny_dataset, tiny_bundle, tmp_path, make_tiny):
    """A spec resumed on a new machine gets its finished runs back from results/ (small files, other
    paths), never a run of another config or of other data."""
    from llmemf.training.rundir import SMALL_FILES, restore_finished_run

    trained = _cfg(tiny_dataset.root, tmp_path / "old" / "sasrec", "train.epochs=1")
    run_or_reuse(trained, tiny_bundle, quiet)
    kept = tmp_path / "results" / "sasrec"
    kept.mkdir(parents=True)
    for name in SMALL_FILES:
        shutil.copy(tmp_path / "old" / "sasrec" / name, kept / name)
    # Another machine: the data lives elsewhere (same content), runs go elsewhere.
    copy = tmp_path / "elsewhere" / "data"
    shutil.copytree(tiny_dataset.root, copy)
    data_hash = Dataset.load(copy).manifest.content_hash
    here = _cfg(copy, tmp_path / "new" / "sasrec", "train.epochs=1", "train.threads=2")
    assert not restore_finished_run(kept, tmp_path / "other_cfg", _cfg(copy, tmp_path / "other_cfg", "train.epochs=2"), data_hash)
    assert not restore_finished_run(kept, tmp_path / "other_data", here, "0" * 16)
    assert not (tmp_path / "other_cfg").exists() and not (tmp_path / "other_data").exists()
    assert restore_finished_run(kept, tmp_path / "new" / "sasrec", here, data_hash)
    assert matches_stored_experiment(tmp_path / "new" / "sasrec", here)  # its config is this machine's
    logs = []
    res = run_or_reuse(here, DataBundle(Dataset.load(copy), here.max_len), logs.append)
    assert any("reusing" in s for s in logs) and not (tmp_path / "new" / "sasrec" / "last.pt").exists()
    assert res["test"] == json.loads((kept / "results.json").read_text())["test"]
    assert not restore_finished_run(kept, tmp_path / "new" / "sasrec", here, data_hash)  # already finished: untouched
    # Other data at the same path: the recorded hash no longer matches, so nothing is restored.
    _regenerate_in_place(copy, make_tiny)
    other_hash = Dataset.load(copy).manifest.content_hash
    assert other_hash != data_hash
    assert not restore_finished_run(kept, tmp_path / "newer" / "sasrec", here, other_hash)


def test_a_run_resumes_to_train_longer_never_shorter(tiny_dataset, tiny_bundle, tmp_path):
    """A finished run asked for fewer epochs would train none and write the longer training's results under
    the shorter config: refused, with the way out."""
    from llmemf.training.trainer import RunDirConflict

    run = tmp_path / "r"
    train(_cfg(tiny_dataset.root, run, "train.epochs=2"), tiny_bundle, log=quiet)
    with pytest.raises(RunDirConflict, match="resuming trains longer, never shorter"):
        train(_cfg(tiny_dataset.root, run, "train.epochs=1"), tiny_bundle, log=quiet)
    longer = train(_cfg(tiny_dataset.root, run, "train.epochs=3"), tiny_bundle, log=quiet)
    assert len(longer.epoch_seconds) == 3


def test_a_run_on_features_re_embedded_since_is_neither_reused_nor_restored(tiny_dataset, tmp_path):
    """The dataset's content hash does not change when a feature is embedded again (another encoder): the
    run records each feature's identity, and a finished run on the old features is refused, naming them."""
    from llmemf.training.rundir import SMALL_FILES, load_run_config, restore_finished_run

    root = tmp_path / "ds"
    shutil.copytree(tiny_dataset.root, root)
    bundle = DataBundle(Dataset.load(root), 10)
    args = ["model.name=llmemf", "model.d_id=16", "model.modalities=[id,txt]", "model.txt_feature=txt_title", "train.epochs=1"]
    cfg = load_config(None, [f"dataset={root}", f"out={tmp_path / 'run'}", "train.progress=false", "max_len=10", "eval.n_negatives=50", *args])
    run_or_reuse(cfg, bundle, quiet)
    recorded = json.loads((tmp_path / "run" / "results.json").read_text())["features"]
    assert list(recorded) == ["txt_title"] and json.loads((tmp_path / "run" / "run.json").read_text())["features"] == recorded
    assert matches_stored_experiment(tmp_path / "run", cfg)
    kept = tmp_path / "kept"  # what report --collect keeps
    kept.mkdir()
    for name in SMALL_FILES:
        if (tmp_path / "run" / name).is_file():
            shutil.copy(tmp_path / "run" / name, kept / name)

    manifest = root / "features" / "txt_title.json"
    before = manifest.read_text()
    manifest.write_text(json.dumps({**json.loads(before), "weights": "sha256:another", "values_hash": "0" * 16}))  # another encoder
    with pytest.raises(DatasetMismatch, match=r"feature\(s\) \['txt_title'\] .* re-embedded since"):
        run_or_reuse(cfg, bundle, quiet)
    with pytest.raises(DatasetMismatch, match="re-embedded since"):  # evaluate / serve / recommend rebuild its keys from them
        load_run(tmp_path / "run", bundle=bundle)
    elsewhere = dataclasses.replace(cfg, out=str(tmp_path / "new"))
    assert not restore_finished_run(kept, tmp_path / "new", elsewhere, bundle.dataset.manifest.content_hash)
    manifest.write_text(before)
    elsewhere = dataclasses.replace(elsewhere, train=dataclasses.replace(cfg.train, threads=cfg.train.threads + 3))
    assert restore_finished_run(kept, tmp_path / "new", elsewhere, bundle.dataset.manifest.content_hash)
    restored = load_run_config(tmp_path / "new" / "config.yaml")  # how the run was trained, as recorded, moved here
    assert restored.train.threads == cfg.train.threads and restored.out == str(tmp_path / "new")
