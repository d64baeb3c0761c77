"""compare / ablate / tune / report / recommend through the real CLI on a tiny dataset with features."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from llmemf.cli import app

FAST = ["train.epochs=1", "train.progress=false", "eval.n_negatives=30", "model.d_id=16"]


def _invoke(*args):
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return res.output


def test_ablate_prints_six_configurations_and_chart(tiny_dataset, tmp_path):
    out = tmp_path / "ab"
    text = _invoke("ablate", "--dataset", tiny_dataset.root, "--seeds", "1,2", "--out", out, *FAST)
    for label in ("original framework (ID only)", "+ textual fusion", "+ textual + LLM-enhanced", "+ visual fusion", "full"):
        assert label in text
    assert "±" in text and (out / "ablation.png").stat().st_size > 1000
    assert (out / "ablation_c2dsr.csv").read_text().count("\n") == 7
    # Configurations really differ in what they read.
    cfg = (next((out).glob("0_*")) / "seed1" / "config.yaml").read_text()
    assert "- id" in cfg and "- img" not in cfg


def test_ablate_rows_subset_for_a_dataset_without_images(tiny_dataset, tmp_path):
    out = tmp_path / "ab"
    text = _invoke("ablate", "--dataset", tiny_dataset.root, "--rows", "1,3", "--out", out, *FAST)
    assert "original framework (ID only)" in text and "+ textual + LLM-enhanced" in text and "visual" not in text
    assert sorted(p.name[:2] for p in out.iterdir() if p.is_dir()) == ["0_", "2_"]
    res = CliRunner().invoke(app, ["ablate", "--dataset", str(tiny_dataset.root), "--rows", "1,7", "--out", str(out)])
    assert res.exit_code == 2 and "1..6" in res.output


def test_tune_grid_and_report(tiny_dataset, tmp_path):
    out = tmp_path / "tune"
    text = _invoke(
        "tune",
        "--dataset",
        tiny_dataset.root,
        "--model",
        "sasrec",
        "--grid",
        "train.lr=0.01,0.001",
        "--out",
        out,
        "train.epochs=2",
        "train.progress=false",
        "eval.n_negatives=30",
    )
    assert "best: train.lr=" in text and len(list(out.glob("train.lr*"))) == 2
    runs = sorted(out.glob("train.lr*"))
    rep = _invoke("report", *runs, "--out", tmp_path / "rep")
    assert "X MRR" in rep and (tmp_path / "rep" / "curves.png").stat().st_size > 1000
    assert (tmp_path / "rep" / "table_c2dsr.csv").exists()


def test_compare_routes_model_specific_overrides_and_reports_cost(tiny_dataset, tmp_path):
    out = tmp_path / "cmp"
    common = ["train.epochs=1", "train.progress=false", "eval.n_negatives=30"]
    args = ["compare", "--dataset", tiny_dataset.root, "--models", "pop,sasrec,llmemf", "--out", out, *common]
    text = _invoke(*args, "sasrec.model.hidden=16", "llmemf.model.d_id=16", "llmemf.model.modalities=[id,txt]")
    table = (out / "table_c2dsr.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in table[1:]] == ["pop", "sasrec", "llmemf"]
    assert "d_id: 16" in (out / "llmemf" / "config.yaml").read_text() and "- img" not in (out / "llmemf" / "config.yaml").read_text()
    assert "hidden: 16" in (out / "sasrec" / "config.yaml").read_text() and "d_id" not in (out / "sasrec" / "config.yaml").read_text()
    # Cost: one row per model and a total that is their sum; trained runs record where their time went.
    cost = [r.split(" | ") for r in (out / "cost.md").read_text().splitlines() if r.startswith("| ") and "wall" not in r]
    walls = [float(r[-1].rstrip(" |")) for r in cost]
    assert [r[0].lstrip("| ") for r in cost] == ["pop", "sasrec", "llmemf", "total"]
    assert abs(sum(walls[:-1]) - walls[-1]) < 0.02 and walls[1] > 0.01
    assert [r[2] for r in cost[:-1]] == ["all", "all", "all"]  # threads: torch's default
    res = json.loads((out / "sasrec" / "results.json").read_text())
    assert res["seconds"]["train"] > 0 and res["seconds"]["epoch_eval"] > 0 and res["wall_seconds"] == pytest.approx(sum(res["seconds"].values()))
    assert "wall time of this invocation" in text
    # A second invocation reuses every finished run (more threads do not make it a new experiment);
    # a model-only field given to all models fails before training.
    # Nor does a default written out (sasrec's n_blocks is 2).
    again = _invoke(
        *args, "train.threads=2", "sasrec.model.hidden=16", "sasrec.model.n_blocks=2", "llmemf.model.d_id=16", "llmemf.model.modalities=[id,txt]"
    )
    assert again.count("reusing") == 3
    # A finished run copied in from another directory is the same experiment (its stored `out` differs).
    shutil.copytree(out / "sasrec", tmp_path / "cmp2" / "sasrec")
    moved = _invoke("compare", "--dataset", tiny_dataset.root, "--models", "sasrec", "--out", tmp_path / "cmp2", *common, "sasrec.model.hidden=16")
    assert moved.count("reusing") == 1
    res = CliRunner().invoke(app, [str(a) for a in [*args, "model.d_id=16"]])
    assert res.exit_code == 2 and "unknown config field" in res.output and "llmemf.model.beta" in res.output


@pytest.fixture
def trained_llmemf(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    _invoke("train", "--model", "llmemf", "--dataset", tiny_dataset.root, "--out", out, *FAST)
    return out


def test_recommend_by_original_and_global_ids(trained_llmemf):
    text = _invoke("recommend", "--checkpoint", trained_llmemf, "--history", "I0001,35,I0040", "--domain", "Y", "-k", "5", "--json")
    recs = json.loads(text)
    assert len(recs) == 5 and all(30 <= r["item_id"] < 70 for r in recs)
    assert 35 not in [r["item_id"] for r in recs] and 40 not in [r["item_id"] for r in recs]  # seen items excluded
    assert recs[0]["score"] >= recs[-1]["score"]


def test_recommend_rejects_unknown_items(trained_llmemf):
    res = CliRunner().invoke(app, ["recommend", "--checkpoint", str(trained_llmemf), "--history", "I0001,NOPE,9999", "--domain", "X"])
    assert res.exit_code == 2
    assert "NOPE" in res.output and "9999" in res.output


def test_recommend_cold_id_modes(trained_llmemf, tiny_dataset):
    """--cold-id switches how never-trained items are scored; warm items' scores are unchanged by it."""
    args = ["recommend", "--checkpoint", trained_llmemf, "--history", "I0001,35", "--domain", "Y", "-k", "100", "--json", "--cold-id"]
    runs = {mode: json.loads(_invoke(*args, mode)) for mode in ("learned", "content")}
    # k above the domain size: every Y item but the one in the history, never the excluded one
    assert len(runs["learned"]) == len(runs["content"]) == 39 and 35 not in [r["item_id"] for r in runs["content"]]
    warm = {int(i) for seq in tiny_dataset.splits["train"]["items"] for i in seq}
    scores = {mode: {r["item_id"]: r["score"] for r in recs} for mode, recs in runs.items()}
    for item, score in scores["learned"].items():
        if item in warm:
            assert abs(score - scores["content"][item]) < 1e-4
    res = CliRunner().invoke(app, ["recommend", "--checkpoint", str(trained_llmemf), "--history", "I0001", "--domain", "Y", "--cold-id", "magic"])
    assert res.exit_code == 2 and "magic" in res.output
