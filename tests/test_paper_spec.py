"""`llmemf compare --spec` and `llmemf report --spec` on a tiny dataset: grid selection on validation,
extra seeds, resumability, the compute estimate, ranks on disk, and a report rebuilt from results/ alone."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from llmemf.cli import app
from llmemf.evaluation.ranks import load_ranks
from llmemf.experiments.spec import load_spec
from llmemf.reporting.paper import scenario_section

SPEC = """
scenario: tiny
dataset: {data}
out: {out}
epochs: 1
patience: 1
overrides: [train.progress=false, eval.n_negatives=30]
grid:
  train.lr: [0.01, 0.001]
seeds: [1, 2]
strongest: [sasrec]
paper: {{X: {{llmemf: 5.0, sasrec: 4.0, pop: 2.0}}, Y: {{llmemf: 1.0, mifn: 2.0}}}}
rows:
  - pop
  - label: sasrec
    model: sasrec
    overrides: [model.hidden=16]
  - label: llmemf
    model: llmemf
    overrides: [model.d_id=16, "model.modalities=[id,txt]"]
    grid:
      model.gamma_s+model.gamma_xy: [[0.3, 1.0], [1.0, 1.0]]
ablation:
  base: llmemf
  seeds: [1]
  table4: [1]
  extra:
    "no auxiliary losses": [model.lambda_x=0.0, model.lambda_y=0.0]
sensitivity:
  base: llmemf
  axes:
    model.beta: [0.0, 0.1]
"""


def _invoke(*args):
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return res.output


def _spec(tmp_path, tiny_dataset):
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC.format(data=tiny_dataset.root, out=tmp_path / "runs"))
    return path


def test_estimate_only_times_every_row_and_trains_nothing(tiny_dataset, tmp_path):
    spec = _spec(tmp_path, tiny_dataset)
    text = _invoke("compare", "--spec", spec, "--estimate-only", "train.threads=1")
    table = [r.split(" | ") for r in text.splitlines() if r.startswith("| ") and "step s" not in r]
    assert all(r[2] == "1" for r in table)  # one training stage each
    assert float(table[1][3]) > 0  # SASRec's median step, timed over repeated passes of the one-batch epoch
    # runs: pop 1; sasrec 2 grid + 1 extra seed; llmemf 2 grid + 2 own grid + 1 extra seed; ablation 2; sensitivity 2
    assert {r[0].lstrip("| "): int(r[6]) for r in table} == {"pop": 1, "sasrec": 3, "llmemf": 5, "ablation": 2, "sensitivity": 2}
    assert "estimated compute left" in text
    assert not list((tmp_path / "runs").rglob("results.json"))


def test_spec_selects_on_validation_reuses_runs_and_reports_from_results_alone(tiny_dataset, tmp_path, monkeypatch):
    spec = _spec(tmp_path, tiny_dataset)
    runs = tmp_path / "runs"
    first = _invoke("compare", "--spec", spec, "train.threads=1")
    assert "reusing" not in first
    selection = json.loads((runs / "selection.json").read_text())
    assert set(selection) == {"pop", "sasrec", "llmemf"}
    # The selected lr is the grid point with the best mean validation MRR, never test.
    scores = {}
    for lr in ("0.01", "0.001"):
        res = json.loads((runs / "sasrec" / f"train.lr_{lr}" / "seed1" / "results.json").read_text())
        scores[float(lr)] = np.mean([m["MRR"] for m in res["valid"]["c2dsr"]["metrics"].values()])
    assert selection["sasrec"]["point"]["train.lr"] == max(scores, key=scores.get)
    assert "model.gamma_s+model.gamma_xy" in selection["llmemf"]["point"]
    # Extra seeds only for the strongest baseline and LLM-EMF.
    assert len(list((runs / "sasrec").glob("*/seed2/results.json"))) == 1
    assert not list((runs / "pop").glob("*/seed2"))
    # Each run keeps per-user ranks that pair up across runs.
    a = load_ranks(runs / selection["sasrec"]["run"])[("test", "c2dsr", "X")]
    b = load_ranks(runs / selection["llmemf"]["run"])[("test", "c2dsr", "X")]
    assert a["users_sha"] == b["users_sha"] and len(a["ranks"]) == len(a["cold"]) > 0
    # A second invocation trains nothing.
    second = _invoke("compare", "--spec", spec, "train.threads=1")
    assert "epoch   1" not in second and second.count("reusing") == 11

    monkeypatch.chdir(tmp_path)
    _invoke("report", "--spec", spec, "--collect", "--results", "results", "--doc", "docs/results.md")
    doc = (tmp_path / "docs" / "results.md").read_text()
    for part in (
        "Tables 2-3 layout, c2dsr protocol",
        "full protocol",
        "Wilcoxon p",
        "Warm and cold",
        "Table 4 layout",
        "no auxiliary losses",
        "### Compute",
    ):
        assert part in doc
    assert "ID + titles + LLM text" in doc and "lr=" in doc
    described = json.loads((tmp_path / "results" / "tiny" / "dataset.json").read_text())
    assert re.search(r"Items with a title: X \d+% \([\d,]+ of [\d,]+\), Y ", doc) and described["content_hash"] in doc
    left_out = "table-4 rows not run in this spec: + textual fusion; + textual + LLM-enhanced (needs LLM text); + visual fusion (needs item images);"
    assert left_out in doc
    assert "has not finished" not in doc
    # The paper's quoted MRRs beside ours: its gain over its closest competitor, ours over our best baseline.
    against = {r[0]: r for r in csv.reader((tmp_path / "results" / "tiny" / "tables" / "paper.csv").read_text().splitlines()[1:])}
    assert against["X"][1:5] == ["5.0000", "sasrec", "4.0000", "25.0000"] and against["X"][9].startswith("sasrec: ")
    assert against["Y"][2:5] == ["mifn", "2.0000", "-50.0000"] and against["Y"][9] == "mifn: not run yet"
    assert re.search(r"Code that finished the runs: (commit [0-9a-f]{7}( with uncommitted changes)?|llmemf \S+ \(no git checkout\)): 11\.", doc)
    assert (tmp_path / "results" / "tiny" / "sensitivity.png").stat().st_size > 1000
    sens = (tmp_path / "results" / "tiny" / "tables" / "sensitivity.csv").read_text().splitlines()
    assert [r.split(",")[:2] for r in sens[1:]] == [["model.beta", "0"], ["model.beta", "0.1"]]  # the selected point at its beta
    main = (tmp_path / "results" / "tiny" / "tables" / "main_c2dsr.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in main[1:]] == ["pop", "sasrec", "llmemf"]
    assert not list((tmp_path / "results").rglob("*.pt"))  # never checkpoints
    assert (runs / ".experiments.json").is_file() and not list((tmp_path / "results").rglob("*experiments.json"))  # nor the processes' claims
    cost = (tmp_path / "results" / "tiny" / "tables" / "cost.csv").read_text().splitlines()
    # 11 distinct runs: one own-grid point equals a grid point, and beta 0.1 in the sweep is the selected point
    assert cost[-1].startswith("total,11,")
    # Epoch cap 1: each trainable run's best epoch is its only one, at the cap (not "at the first of several");
    # Pop has no epochs.
    by_row = {r[0]: r for r in csv.reader(cost[1:])}
    assert by_row["pop"][1:5] == ["1", "-", "0", "0"] and by_row["sasrec"][1:5] == ["3", "1/1, 1/1, 1/1", "3", "0"]
    # The report rebuilds from results/ alone, number for number, and writes the README's headline table.
    shutil.rmtree(runs)
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\nbefore\n<!-- headline: generated by llmemf report --readme -->\nold\n<!-- end of headline -->\nafter\n")
    _invoke("report", "--spec", spec, "--results", "results", "--doc", "docs/again.md", "--readme", readme)
    assert (tmp_path / "docs" / "again.md").read_text() == doc
    text = readme.read_text()
    assert text.startswith("# x\n\nbefore\n") and text.endswith("<!-- end of headline -->\nafter\n") and "old" not in text
    sasrec_row = next(r for r in main if r.startswith("sasrec,"))
    assert f"| sasrec | ID | 2 | {sasrec_row.split(',')[4]} |" in text  # its c2dsr test MRR, as the CSV has it
    assert "| model | features | seeds | X MRR % |" in text and "part way" not in text
    readme.write_text("no markers\n")
    res = CliRunner().invoke(app, ["report", "--spec", str(spec), "--results", "results", "--doc", "docs/again.md", "--readme", str(readme)])
    assert res.exit_code == 2 and "no headline markers" in res.output
    # A new machine (run directories gone, results/ kept): the estimate counts the collected runs as
    # finished, and the spec restores every run and trains none.
    estimate = _invoke("compare", "--spec", spec, "--estimate-only", "train.threads=1")
    assert "estimated compute left: 0.00 h" in estimate, estimate
    # the sweep's beta 0.1 is the selected run (its plan record points there): finished, though not under sensitivity/
    # and LLM-EMF's own-grid point equal to the grid's run is that run
    for row, n in (("sensitivity", "2"), ("llmemf", "5")):
        line = next(line for line in estimate.splitlines() if line.startswith(f"| {row} |"))
        assert [c.strip() for c in line.split("|")][7:9] == [n, n], line
    third = _invoke("compare", "--spec", spec, "train.threads=1")
    assert "epoch   1" not in third and third.count("restored from") == 11
    assert json.loads((runs / "selection.json").read_text()) == selection
    # The paired tests average the same seeds on both sides: those both rows ran.
    seeds = {r[0]: {"1", "2"} if r[0] in ("sasrec", "llmemf") else {"1"} for r in csv.reader(main[1:])}
    for row in csv.reader((tmp_path / "results" / "tiny" / "tables" / "significance_c2dsr.csv").read_text().splitlines()[1:]):
        assert set(row[2].split(", ")) == seeds[row[1]] & seeds["llmemf"], row
    # Seeds the spec no longer plans stay out of the tables, named.
    _invoke("report", "--spec", spec, "--results", "results", "--doc", "docs/fewer.md", "--set", "strongest=[]")
    fewer = (tmp_path / "docs" / "fewer.md").read_text()
    assert "Runs collected but not in the tables (seeds or rows the spec no longer plans): sasrec: 1 (sasrec/train.lr_" in fewer
    assert "| sasrec | ID | " in fewer and not re.search(r"\| sasrec \| ID \| [^|]+ \| 2 \|", fewer)
    # An ablation run made around another point than the base row selects now is named as stale.
    assert "**Stale**" not in doc
    ablation_cfg = next((tmp_path / "results" / "tiny" / "ablation").glob("*/seed1/config.yaml"))
    kept_cfg = ablation_cfg.read_text()
    lr = re.search(r"\n  lr: (\S+)\n", kept_cfg).group(1)
    ablation_cfg.write_text(kept_cfg.replace(f"\n  lr: {lr}\n", "\n  lr: 0.5\n"))
    _invoke("report", "--spec", spec, "--results", "results", "--doc", "docs/stale.md")
    stale = (tmp_path / "docs" / "stale.md").read_text()
    assert re.search(rf"\*\*Stale\*\*: ablation '[^']+' \(ablation/[^)]+\) ran at lr=0.5, llmemf now selects lr={lr}", stale)
    ablation_cfg.write_text(kept_cfg)
    # Runs that cannot share a table are refused, naming them: another dataset, a seed at another point.
    seed2 = next((tmp_path / "results" / "tiny" / "sasrec").glob("*/seed2"))
    res_file = seed2 / "results.json"
    kept = res_file.read_text()
    res_file.write_text(json.dumps({**json.loads(kept), "dataset_content_hash": "0123456789abcdef"}))
    res = CliRunner().invoke(app, ["report", "--spec", str(spec), "--results", "results", "--doc", "docs/bad.md"])
    assert res.exit_code == 2 and "runs that differ in dataset content hash cannot share tables" in res.output, res.output
    assert "0123456789abcdef" in res.output
    res_file.write_text(json.dumps({**json.loads(kept), "train_bf16": not json.loads(kept)["train_bf16"]}))
    _invoke("report", "--spec", spec, "--results", "results", "--doc", "docs/mixed.md")
    mixed = (tmp_path / "docs" / "mixed.md").read_text()
    assert "Rows whose seeds trained in bf16 and in fp32 (machines with and without native bf16): sasrec." in mixed
    # A run whose best epoch is the first of several is counted apart (it fell from its second epoch on).
    res_file.write_text(json.dumps({**json.loads(kept), "best_epoch": 1, "epochs_run": 4}))
    _invoke("report", "--spec", spec, "--results", "results", "--doc", "docs/first.md")
    first_cost = {r[0]: r for r in csv.reader((tmp_path / "results" / "tiny" / "tables" / "cost.csv").read_text().splitlines()[1:])}
    assert sorted(first_cost["sasrec"][2].split(", ")) == ["1/1", "1/1", "1/4"]
    assert first_cost["sasrec"][4] == "1" and first_cost["total"][4] == "1"
    res_file.write_text(kept)
    unknown_domain = ["--set", "paper={Z: {llmemf: 1, pop: 1}}"]
    res = CliRunner().invoke(app, ["report", "--spec", str(spec), "--results", "results", "--doc", "docs/bad.md", *unknown_domain])
    assert res.exit_code == 2 and "paper.Z: the runs have no domain 'Z' (theirs: X, Y)" in res.output, res.output
    described_file = tmp_path / "results" / "tiny" / "dataset.json"
    described_file.write_text(json.dumps({**described, "content_hash": "fedcba9876543210"}))
    res = CliRunner().invoke(app, ["report", "--spec", str(spec), "--results", "results", "--doc", "docs/bad.md"])
    assert res.exit_code == 2 and "describes dataset content hash fedcba9876543210" in res.output, res.output
    described_file.write_text(json.dumps(described))
    cfg_file = seed2 / "config.yaml"
    cfg_file.write_text(cfg_file.read_text().replace("hidden: 16", "hidden: 8"))
    res = CliRunner().invoke(app, ["report", "--spec", str(spec), "--results", "results", "--doc", "docs/bad.md"])
    assert res.exit_code == 2 and "row 'sasrec' has runs of different configurations" in res.output, res.output


def test_movie_book_style_spec_reuses_another_specs_selection(tiny_dataset, tmp_path):
    spec = _spec(tmp_path, tiny_dataset)
    other = tmp_path / "other.yaml"
    other.write_text(
        f"scenario: tiny2\ndataset: {tiny_dataset.root}\nout: {tmp_path / 'runs2'}\nepochs: 1\npatience: 1\n"
        f"overrides: [train.progress=false, eval.n_negatives=30]\nreuse_selection: {spec}\nrows: [pop]\n"
    )
    res = CliRunner().invoke(app, ["compare", "--spec", str(other)])
    assert res.exit_code == 2 and "run `llmemf compare --spec" in res.output
    _invoke("compare", "--spec", spec, "rows=[pop]", "strongest=[]", "ablation=null", "sensitivity=null")
    _invoke("compare", "--spec", other)
    assert json.loads((tmp_path / "runs2" / "selection.json").read_text())["pop"]["point"] == {}
    spec2, _ = load_spec(other)
    text = scenario_section(spec2, tmp_path / "runs2", tmp_path / "docs", log=lambda s: None)
    assert "every trainable model runs at the grid point selected on validation by spec (no search of its own)" in text
    assert "**Stale**" not in text
    # The reused spec selects another point later (a rerun of its grid): the report says which rows ran at the old one.
    selection = tmp_path / "runs" / "selection.json"
    selection.write_text(json.dumps({**json.loads(selection.read_text()), "pop": {"model": "pop", "point": {"train.lr": 0.5}}}))
    text = scenario_section(spec2, tmp_path / "runs2", tmp_path / "docs", log=lambda s: None)
    assert "**Stale**: pop ran at -, tiny now selects lr=0.5." in text


def test_a_row_may_name_a_config_variant(tiny_dataset, tmp_path):
    spec = _spec(tmp_path, tiny_dataset)
    rows = "rows=[{label: c2dsr fast, model: c2dsr, config: c2dsr_fast}]"
    text = _invoke("compare", "--spec", spec, "--estimate-only", rows, "strongest=[]", "ablation=null", "sensitivity=null", "train.threads=1")
    assert "| c2dsr fast | c2dsr |" in text
    bad = CliRunner().invoke(
        app,
        [
            "compare",
            "--spec",
            str(spec),
            "--estimate-only",
            "rows=[{label: x, model: sasrec, config: nosuch}]",
            "strongest=[]",
            "ablation=null",
            "sensitivity=null",
        ],
    )
    assert bad.exit_code == 2 and "no configs/models/nosuch.yaml" in bad.output


def test_variants_of_one_model_are_compared_with_the_first_row(tiny_dataset, tmp_path, monkeypatch):
    """A spec of LLM-EMF variants only (experiments/sampled_softmax_food_kitchen.yaml's shape) has no baseline
    to beat: the report pairs every row with the first instead."""
    path = tmp_path / "variants.yaml"
    path.write_text(
        f"scenario: variants\ndataset: {tiny_dataset.root}\nout: {tmp_path / 'vruns'}\nepochs: 1\npatience: 1\n"
        "overrides: [train.progress=false, eval.n_negatives=30, model.d_id=16]\nseeds: [1]\nrows:\n"
        "  - {label: full, model: llmemf}\n"
        "  - {label: sampled, model: llmemf, overrides: [model.train_negatives=8]}\n"
    )
    _invoke("compare", "--spec", path, "train.threads=1")
    monkeypatch.chdir(tmp_path)
    _invoke("report", "--spec", path, "--collect", "--results", "results", "--doc", "docs/variants.md")
    doc = (tmp_path / "docs" / "variants.md").read_text()
    assert "Paired comparison, full protocol: each row against the first, full;" in doc
    table = (tmp_path / "results" / "variants" / "tables" / "significance_c2dsr.csv").read_text().splitlines()
    assert table[0].startswith("domain,row,seeds paired,its MRR,full MRR,difference %,paired t p,bootstrap 95% CI of ΔMRR,Wilcoxon p")
    assert [r.split(",")[:3] for r in table[1:]] == [["X", "sampled", "1"], ["Y", "sampled", "1"]]


def test_collect_keeps_runs_collected_earlier_and_a_spec_stopped_mid_grid_reports(tiny_dataset, tmp_path, monkeypatch):
    """A spec resumed on a new machine has reached only some runs: collecting it must not drop the records of
    runs collected before, and a report of a scenario whose first row has not finished its grid says so."""
    spec = _spec(tmp_path, tiny_dataset)
    monkeypatch.chdir(tmp_path)
    only = ["strongest=[]", "ablation=null", "sensitivity=null", "train.threads=1"]
    _invoke("compare", "--spec", spec, "rows=[pop]", *only)
    _invoke("report", "--spec", spec, "--collect", "--results", "results", "--doc", "docs/results.md")
    shutil.rmtree(tmp_path / "runs")
    _invoke("compare", "--spec", spec, "rows=[sasrec]", *only)
    plan_path = tmp_path / "runs" / "plan.json"
    plan = [{**r, "selected": False} for r in json.loads(plan_path.read_text())[:1]]  # stopped after one grid point
    plan_path.write_text(json.dumps(plan))
    text = _invoke("report", "--spec", spec, "--collect", "--results", "results", "--doc", "docs/results.md")
    merged = json.loads((tmp_path / "results" / "tiny" / "plan.json").read_text())
    assert {r["run"] for r in merged} == {plan[0]["run"], "pop/default/seed1"}
    doc = (tmp_path / "docs" / "results.md").read_text()
    assert "pop" in doc and "1 finished runs collected" in text
    # what is still to run is said above the tables (the spec as written: sasrec and llmemf get seeds 1 and 2)
    assert "Still to run: sasrec (0 of 2 seeds), llmemf (0 of 2 seeds), ablation (0 of 2 runs), sensitivity (0 of 2 runs)." in doc
    _invoke("report", "--spec", spec, "--collect", "--results", "fresh", "--doc", "docs/fresh.md")
    assert "No row has finished its grid yet" in (tmp_path / "docs" / "fresh.md").read_text()


def test_a_run_another_process_is_training_is_left_to_it_and_the_spec_goes_on(tiny_dataset, tmp_path):
    """Several processes share a spec through the run directories' locks: a locked run is skipped, what does not
    depend on it runs meanwhile, and the run is taken up once its lock is let go (here the other "process"
    is this test holding the lock, and lets go when the spec says it has nothing else to do)."""
    from llmemf.experiments.spec import load_spec, run_spec
    from llmemf.io import file_lock

    spec, run_overrides = load_spec(_spec(tmp_path, tiny_dataset), ["train.threads=1"])
    held = tmp_path / "runs" / "sasrec" / "train.lr_0.01" / "seed1"
    other_process = contextlib.ExitStack()
    other_process.enter_context(file_lock(held / ".train.lock"))
    lines: list[str] = []

    def log(line: str) -> None:
        lines.append(line)
        if line.startswith("waiting for runs other processes are training"):
            other_process.close()

    plan = run_spec(spec, run_overrides, log=log, poll_s=0)
    assert sum("being trained by another process" in s for s in lines) == 1
    waiting = next(i for i, s in enumerate(lines) if s.startswith("waiting for runs"))
    assert "sasrec: " in lines[waiting] and "selection.json: the selection of sasrec" in lines[waiting]
    trained = {s.split(" -> ")[1].split(" (")[0]: i for i, s in enumerate(lines) if " -> " in s}
    assert trained[str(held)] > waiting  # taken up after the lock was let go
    # everything that did not need sasrec's selection ran while it waited: pop, LLM-EMF, the ablation, the sweep
    assert sum(i < waiting for i in trained.values()) == len(trained) - 2 == 9  # all but sasrec's lr 0.01 and seed 2
    assert len({(r["kind"], r["label"], r["run"]) for r in plan}) == len(plan) == len(json.loads((tmp_path / "runs" / "plan.json").read_text()))
    selection = json.loads((tmp_path / "runs" / "selection.json").read_text())
    assert set(selection) == {"pop", "sasrec", "llmemf"}
    assert sum(r["selected"] for r in plan if r["label"] == "sasrec") == 2  # the selected grid point and seed 2


def test_two_workers_share_a_spec_and_train_each_run_once(tiny_dataset, tmp_path):
    """`compare --spec --workers 2`: two real processes, each run trained by exactly one of them, both ending with every run."""
    spec = _spec(tmp_path, tiny_dataset)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    cmd = [sys.executable, "-m", "llmemf.cli", "compare", "--spec", str(spec), "--workers", "2", "train.threads=1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    trained = [s for s in lines if " -> " in s]
    # Which process trains what depends on timing (here the first often finishes the tiny spec before the second
    # has imported torch); what must hold is that each run is trained once and each process sees every run done.
    for w in (1, 2):
        assert sum(s.startswith(f"[worker {w}]") and (" -> " in s or "  reusing " in s) for s in lines) == 11, proc.stdout[-3000:]
    runs = sorted(p.parent for p in (tmp_path / "runs").rglob("results.json"))
    assert len(trained) == len(runs) == 11  # 11 distinct runs, each trained once
    plan = json.loads((tmp_path / "runs" / "plan.json").read_text())
    assert {str(tmp_path / "runs" / r["run"]) for r in plan} == {str(p) for p in runs}
    assert set(json.loads((tmp_path / "runs" / "selection.json").read_text())) == {"pop", "sasrec", "llmemf"}


def test_an_experiment_another_process_started_under_another_name_is_trained_there(tiny_dataset, tmp_path):
    """Two processes of one spec: the equal experiment (here: pop's one run) that another process claimed under
    another run directory is trained (or waited for) there, not a second time under this process's name."""
    from llmemf.experiments.spec import _claim, _normalised, row_search, run_spec

    spec, run_overrides = load_spec(_spec(tmp_path, tiny_dataset), ["rows=[pop]", "strongest=[]", "ablation=null", "sensitivity=null"])
    (grid, _), out = row_search(spec, spec.rows[0], run_overrides), Path(spec.out)
    key = _normalised(grid[0].config(spec))
    assert _claim(out, key, "pop_elsewhere/default/seed1", lambda other: True) == "pop_elsewhere/default/seed1"  # the other process
    assert _claim(out, key, grid[0].run, lambda other: True) == "pop_elsewhere/default/seed1"  # first claim wins
    plan = run_spec(spec, run_overrides, log=lambda line: None)
    assert [r["run"] for r in plan] == ["pop_elsewhere/default/seed1"]
    assert (out / "pop_elsewhere" / "default" / "seed1" / "results.json").is_file() and not (out / "pop").exists()
    # A claimed directory that holds another experiment now (a spec edited since) is not this one's.
    cfg_file = out / "pop_elsewhere" / "default" / "seed1" / "config.yaml"
    cfg_file.write_text(cfg_file.read_text().replace("n_negatives: 30", "n_negatives: 20"))
    plan = run_spec(spec, run_overrides, log=lambda line: None)
    assert [r["run"] for r in plan] == [grid[0].run] and (out / grid[0].run / "results.json").is_file()


def _reusing_spec(tmp_path, tiny_dataset, spec: Path) -> Path:
    """A Movie-Book-style spec reusing ``spec``'s selection of pop and sasrec, which ``spec`` has run."""
    other = tmp_path / "other.yaml"
    other.write_text(
        f"scenario: tiny2\ndataset: {tiny_dataset.root}\nout: {tmp_path / 'runs2'}\nepochs: 1\npatience: 1\n"
        f"overrides: [train.progress=false, eval.n_negatives=30]\nreuse_selection: {spec}\n"
        "rows: [pop, {label: sasrec, model: sasrec, overrides: [model.hidden=16]}]\n"
    )
    _invoke("compare", "--spec", spec, "rows=[pop,sasrec]", "strongest=[]", "ablation=null", "sensitivity=null", "train.threads=1")
    return other


def test_a_spec_reusing_a_selection_runs_the_rows_selected_so_far(tiny_dataset, tmp_path):
    """Movie-Book starts before Food-Kitchen ends: the rows Food-Kitchen has selected run, the others (and what
    depends on them) are named in one error line, and the next invocation trains only those."""
    spec = _spec(tmp_path, tiny_dataset)
    other = _reusing_spec(tmp_path, tiny_dataset, spec)
    full = json.loads((tmp_path / "runs" / "selection.json").read_text())
    assert set(full) == {"pop", "sasrec"}  # written after each row, complete at the end
    (tmp_path / "runs" / "selection.json").write_text(json.dumps({"pop": full["pop"]}))  # as if sasrec were still searching
    res = CliRunner().invoke(app, ["compare", "--spec", str(other), "train.threads=1"])
    assert res.exit_code == 2, res.output
    assert "not run: sasrec, because" in res.output and "no selected point for sasrec yet" in res.output
    assert (tmp_path / "runs2" / "pop" / "default" / "seed1" / "results.json").exists()
    assert not (tmp_path / "runs2" / "sasrec").exists()
    (tmp_path / "runs" / "selection.json").write_text(json.dumps(full))
    estimate = (tmp_path / "runs2" / "estimate.md").read_text()
    again = _invoke("compare", "--spec", other, "--no-estimate", "train.threads=1")  # a resume need not time every row again
    assert again.count("  reusing ") == 1 and "sasrec -> " in again
    assert "timing a few training steps" not in again and (tmp_path / "runs2" / "estimate.md").read_text() == estimate
    bad = tmp_path / "bad.yaml"
    bad.write_text(other.read_text().replace("label: sasrec", "label: gru4rec"))
    res = CliRunner().invoke(app, ["compare", "--spec", str(bad)])
    assert res.exit_code == 2 and "['gru4rec'] are not rows of" in res.output


def test_a_spec_reusing_a_selection_runs_the_rows_the_other_selects_while_it_runs(tiny_dataset, tmp_path):
    """Both specs run side by side: a row the reused spec selects after this one started runs in the same
    invocation, instead of waiting for the next one."""
    from llmemf.experiments.runner import run_or_reuse
    from llmemf.experiments.spec import run_spec

    spec = _spec(tmp_path, tiny_dataset)
    other = _reusing_spec(tmp_path, tiny_dataset, spec)
    selection = tmp_path / "runs" / "selection.json"
    full = json.loads(selection.read_text())
    selection.write_text(json.dumps({"pop": full["pop"]}))  # sasrec still searching when the other spec starts

    def train_then_select(cfg, bundle, log):
        res = run_or_reuse(cfg, bundle, log)
        selection.write_text(json.dumps(full))  # ... and selected while the other spec trains pop
        return res

    lines: list[str] = []
    plan = run_spec(*load_spec(other, ["train.threads=1"]), log=lines.append, train_fn=train_then_select)
    assert sorted(r["label"] for r in plan) == ["pop", "sasrec"]
    assert sum("has selected sasrec since this started" in line for line in lines) == 1, lines
    sasrec = json.loads(next((tmp_path / "runs2" / "sasrec").glob("*/seed1/config.yaml")).with_name("results.json").read_text())
    assert sasrec["model"] == "sasrec"
    assert set(json.loads((tmp_path / "runs2" / "selection.json").read_text())) == {"pop", "sasrec"}


def test_stopping_the_first_worker_stops_the_others(tiny_dataset, tmp_path):
    """SIGTERM to `compare --spec --workers 2` ends its second process too (no orphan keeps training): the
    output pipe closes only when every process holding it has exited."""
    spec = _spec(tmp_path, tiny_dataset)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    # one row whose two grid points each train long enough to be interrupted
    long = ["rows=[sasrec]", "strongest=[]", "ablation=null", "sensitivity=null", "epochs=100000", "patience=100000"]
    cmd = [sys.executable, "-m", "llmemf.cli", "compare", "--spec", str(spec), "--workers", "2", "train.threads=1", *long]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("[worker 2]   training steps"):
                break
        assert seen and seen[-1].startswith("[worker 2]"), "".join(seen)
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=60)[0]  # returns once every writer of the pipe is gone
        assert proc.returncode != 0 and "Traceback" not in rest
    finally:
        proc.kill()


def test_every_shipped_spec_and_model_config_is_a_valid_experiment():
    """The specs in experiments/ and the configs in configs/models/ parse, and every run a spec plans
    first (each row's search; the rows of a spec reusing another's selection, at that spec's points)
    builds a valid run config: a typo in a shipped file fails here, not hours into a spec."""
    from llmemf.config import load_config
    from llmemf.experiments.spec import row_search

    repo = Path(__file__).resolve().parents[1]
    configs = sorted((repo / "configs" / "models").glob("*.yaml"))
    assert {c.stem for c in configs} >= {"c2dsr", "c2dsr_fast", "sasrec_softmax", "mifn_small"}
    for path in configs:
        assert load_config(path, []).model_name in path.stem  # sasrec_softmax -> sasrec
    specs = {p.stem: load_spec(p)[0] for p in sorted((repo / "experiments").glob("*.yaml"))}
    assert {"paper_food_kitchen", "paper_movie_book"} <= set(specs)
    for name, spec in specs.items():
        source = specs[Path(spec.reuse_selection).stem] if spec.reuse_selection else spec
        rows = {r.label: r for r in source.rows}
        planned = [p for r in spec.rows for p in row_search(source, rows[r.label], [])[0]]
        assert planned, name
        for p in planned:
            cfg = p.config(spec)
            assert cfg.model_name == p.model, (name, p.label)
            # One cap and patience for every row, except a row whose label names its own budget.
            named = re.search(r"\((\d+) epochs\)", p.label)
            if named:  # its own cap, with the spec's patience or none
                cap = int(named.group(1))
                assert cfg.train.epochs == cap and cfg.train.patience in (spec.patience, cap), (name, p.label)
            else:
                assert (cfg.train.epochs, cfg.train.patience) == (spec.epochs, spec.patience), (name, p.label)
    fk = specs["paper_food_kitchen"]
    assert {r.label for r in fk.rows} == {r.label for r in specs["paper_movie_book"].rows}
    assert fk.n_strongest_by_validation == 3  # the issue's "three strongest baselines", chosen on validation


def test_a_count_of_strongest_above_the_candidates_plans_only_the_runs_that_can_happen(tmp_path):
    """strongest: 3 with one trainable baseline: one row gets the other seeds, so the tables plan 5 runs, not 7
    (a headline waiting on runs that never come would say "part way" forever)."""
    path = tmp_path / "s.yaml"
    path.write_text("scenario: s\ndataset: d\nout: o\nepochs: 1\npatience: 1\nseeds: [1, 2]\nstrongest: 3\nrows: [pop, sasrec, llmemf]\n")
    spec, _ = load_spec(path)
    assert spec.planned_table_runs([]) == 1 + 1 + 2 + 1  # pop, sasrec, llmemf's two seeds, sasrec's second seed
    assert spec.planned_table_runs(["sasrec"]) == 1 + 2 + 2


def test_a_run_without_a_validation_mrr_is_never_selected():
    """A domain with no validation users has MRR NaN; max() over scores with a NaN depends on the order."""
    from llmemf.experiments.spec import valid_score

    def res(*mrr):
        return {"valid": {"c2dsr": {"metrics": {f"D{i}": {"MRR": m} for i, m in enumerate(mrr)}}}}

    scores = [valid_score(res(float("nan"), 0.2), "c2dsr"), valid_score(res(0.01, 0.02), "c2dsr")]
    assert scores[0] == float("-inf") and max(range(2), key=scores.__getitem__) == 1
    assert valid_score(res(0.1, 0.3), "c2dsr") == pytest.approx(0.2)


def test_a_spec_s_sweeps_and_ablation_are_checked_before_anything_trains(tmp_path):
    """A mistake in the sensitivity sweep or the ablation used to surface after the tables' runs, hours later,
    some as a traceback."""
    from llmemf.errors import UserError

    head = "scenario: s\ndataset: d\nout: o\nepochs: 1\npatience: 1\nrows: [pop, llmemf]\n"
    cases = {
        "sensitivity: {axes: {model.gamma_s+model.gamma_xy: [0.3, 1.0]}}": "each value must list 2 numbers, got 0.3",
        "sensitivity: {base: llmemff, axes: {model.beta: [0.1]}}": "no row labelled 'llmemff'",
        "ablation: {table4: [7]}": "ablation.table4 [7]: the paper's table-4 rows are 1..6",
        "ablation: {table4: [0]}": "ablation.table4 [0]",
        "grid: {train.lr: 0.001}": "axis 'train.lr': give a list of values",
        "paper: {X: {mifn: 8.5}}": "paper.X: give the paper's MRR % of llmemf and of at least one baseline",
        "paper: {X: {llmemf: 9.2, mifn: high}}": "paper.X: give",
        "paper: {X: 9.2}": "paper.X: give",
    }
    for i, (tail, message) in enumerate(cases.items()):
        path = tmp_path / f"s{i}.yaml"
        path.write_text(head + tail + "\n")
        with pytest.raises(UserError, match=re.escape(message)):
            load_spec(path)


def test_a_counted_strongest_gives_every_seed_to_the_best_baselines_on_validation(tiny_dataset, tmp_path, monkeypatch):
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"scenario: tiny\ndataset: {tiny_dataset.root}\nout: {tmp_path / 'runs'}\nepochs: 1\npatience: 1\n"
        "overrides: [train.progress=false, eval.n_negatives=30]\nseeds: [1, 2]\nstrongest: 1\nrows:\n  - pop\n"
        "  - {label: narrow, model: sasrec, overrides: [model.hidden=8]}\n  - {label: wide, model: sasrec, overrides: [model.hidden=24]}\n"
    )
    estimate = _invoke("compare", "--spec", spec, "--estimate-only", "train.threads=1")
    assert "the strongest baselines' seeds" in estimate
    text = _invoke("compare", "--spec", spec, "train.threads=1")
    runs = tmp_path / "runs"
    choice = json.loads((runs / "strongest.json").read_text())
    valid = {label: json.loads((runs / label / "default" / "seed1" / "results.json").read_text())["valid"] for label in ("narrow", "wide")}
    scores = {label: np.mean([m["MRR"] for m in v["c2dsr"]["metrics"].values()]) for label, v in valid.items()}
    best = max(scores, key=scores.get)
    assert choice["rows"] == [best] and set(choice["valid_mrr"]) == {"narrow", "wide"}  # Pop is no candidate
    assert f"the 1 strongest baselines on validation: {best}" in text
    assert (runs / best / "default" / "seed2" / "results.json").is_file()
    assert not list((runs / ({"narrow", "wide"} - {best}).pop()).glob("*/seed2")) and not list((runs / "pop").glob("*/seed2"))
    assert "estimated compute left: 0.00 h" in _invoke("compare", "--spec", spec, "--estimate-only", "train.threads=1")
    monkeypatch.chdir(tmp_path)
    _invoke("report", "--spec", spec, "--collect", "--results", "results", "--doc", "docs/results.md")
    doc = (tmp_path / "docs" / "results.md").read_text()
    assert f"seeds [1, 2] for LLM-EMF and the 1 baselines with the best validation MRR at their selected point ({best})" in doc
    assert "has not finished" not in doc and (tmp_path / "results" / "tiny" / "strongest.json").is_file()


def test_a_spec_reusing_a_selection_chooses_its_own_strongest_on_its_own_validation(tiny_dataset, tmp_path):
    rows = "rows:\n  - {label: narrow, model: sasrec, overrides: [model.hidden=8]}\n  - {label: wide, model: sasrec, overrides: [model.hidden=24]}\n"
    common = "epochs: 1\npatience: 1\noverrides: [train.progress=false, eval.n_negatives=30]\nseeds: [1, 2]\nstrongest: 1\n"
    first, second = tmp_path / "first.yaml", tmp_path / "second.yaml"
    first.write_text(f"scenario: a\ndataset: {tiny_dataset.root}\nout: {tmp_path / 'a'}\n{common}grid:\n  train.lr: [0.01, 0.001]\n{rows}")
    second.write_text(f"scenario: b\ndataset: {tiny_dataset.root}\nout: {tmp_path / 'b'}\n{common}reuse_selection: {first}\n{rows}")
    _invoke("compare", "--spec", first, "train.threads=1")
    _invoke("compare", "--spec", second, "train.threads=1", "train.weight_decay=0.5")  # other runs than the first spec's
    selection = json.loads((tmp_path / "a" / "selection.json").read_text())
    for label in ("narrow", "wide"):  # the first spec's points, one run each at seed 1
        assert json.loads((tmp_path / "b" / "selection.json").read_text())[label]["point"] == selection[label]["point"]
    scores = json.loads((tmp_path / "b" / "strongest.json").read_text())["valid_mrr"]
    assert scores != json.loads((tmp_path / "a" / "strongest.json").read_text())["valid_mrr"]  # its own runs' validation
    best = max(scores, key=scores.get)
    assert json.loads((tmp_path / "b" / "strongest.json").read_text())["rows"] == [best]
    assert len(list((tmp_path / "b" / best).glob("*/seed2/results.json"))) == 1
    assert not list((tmp_path / "b" / ({"narrow", "wide"} - {best}).pop()).glob("*/seed2"))


def test_strongest_must_be_row_labels_or_a_count(tiny_dataset, tmp_path):
    spec = _spec(tmp_path, tiny_dataset)
    for bad in ("strongest=-1", "strongest=sasrec", "strongest=true", "strongest=[nosuch]"):
        res = CliRunner().invoke(app, ["compare", "--spec", str(spec), "--estimate-only", bad])
        assert res.exit_code == 2, (bad, res.output)
        assert "strongest=" in res.output or "no row labelled 'nosuch'" in res.output, (bad, res.output)


def test_collect_keeps_a_run_s_earlier_stages_beside_it(tmp_path):
    """Tri-CDR's pre-training stage (OUT/pretrain) is collected with its run, never a checkpoint: a run is
    restored on a new machine only with the stage it started from (runner.restore_stages)."""
    from llmemf.reporting.paper import _stages_seconds, collect

    runs = tmp_path / "runs"
    run = runs / "tricdr" / "train.lr_0.001" / "seed1"
    for stage, seconds in ((run, 100.0), (run / "pretrain", 50.0)):
        stage.mkdir(parents=True)
        for name in ("config.yaml", "metrics.jsonl", "best.pt"):
            (stage / name).write_text(f"{stage.name} {name}")
        (stage / "results.json").write_text(json.dumps({"wall_seconds": seconds}))
    (runs / "plan.json").write_text(json.dumps([{"run": "tricdr/train.lr_0.001/seed1", "kind": "grid", "label": "tricdr"}]))
    assert collect(runs, tmp_path / "results") == 1
    kept = tmp_path / "results" / "tricdr" / "train.lr_0.001" / "seed1"
    assert (kept / "pretrain" / "config.yaml").read_text() == "pretrain config.yaml"
    assert sorted(p.name for p in kept.rglob("*") if p.is_file()) == sorted(["config.yaml", "metrics.jsonl", "results.json"] * 2)
    # the compute table's wall time of the run counts its pre-training stage's
    assert _stages_seconds(kept, json.loads((kept / "results.json").read_text())) == 150.0
