"""Every command of `llmemf`, given a bad argument, exits 2 with one line on stderr (llmemf.errors' policy).

The walk is driven by the CLI itself: a command without a case here fails the coverage test, so a new
command gets one when it is added."""

from __future__ import annotations

import pytest
import typer.main
from typer.testing import CliRunner

from llmemf.cli import app

FAST = ["train.threads=1", "train.progress=false", "eval.n_negatives=20"]


def _commands(group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for name, cmd in group.commands.items():
        if getattr(cmd, "commands", None):
            out += _commands(cmd, (*prefix, name))
        else:
            out.append((*prefix, name))
    return out


# command -> arguments that are wrong; "{ds}" is a valid tiny dataset, "{run}" a trained Pop run, "{tmp}" a scratch dir
BAD: dict[tuple[str, ...], list[str]] = {
    ("prepare", "c2dsr"): ["{tmp}/no-such-scenario", "{tmp}/out"],
    ("prepare", "synthetic"): ["{tmp}/out", "n_users=many"],
    ("prepare", "log"): ["{tmp}/empty.csv", "{tmp}/out"],
    ("prepare", "subset"): ["{ds}", "{tmp}/out", "--top-items", "0"],
    ("prepare", "amazon"): ["{tmp}/out", "--domain", "Food", "--domain", "Kitchen={tmp}/empty.csv"],
    ("prepare", "recbole"): ["{tmp}/no-such-atomic-files", "{tmp}/out"],
    ("export", "recbole"): ["{ds}", "{tmp}/rb", "--layout", "wide"],
    ("train",): ["--model", "pop", "--dataset", "{ds}", "--out", "{tmp}/r", "train.epoch=3", *FAST],
    ("evaluate",): ["--checkpoint", "{run}", "--split", "training"],
    ("models",): ["--verbose"],  # takes no option: click's usage error (exit 2, several lines: usage + message)
    ("show",): ["{tmp}"],
    ("enrich",): ["{ds}", "--order", "random"],
    ("images",): ["{tmp}/no-such-dataset"],
    ("embed",): ["{ds}", "--features", "audio"],
    ("compare",): ["--dataset", "{ds}", "--models", "pop,nope", "--out", "{tmp}/cmp"],
    ("ablate",): ["--dataset", "{ds}", "--rows", "9", "--out", "{tmp}/ab"],
    ("tune",): ["--dataset", "{ds}", "--model", "pop", "--grid", "train.lr", "--out", "{tmp}/tune"],
    ("report",): ["{tmp}", "--out", "{tmp}/report"],
    ("serve",): ["{run}", "--workers", "0"],
    ("recommend",): ["--checkpoint", "{run}", "--history", "0,1", "--domain", "X", "-k", "0"],
}
USAGE_ERRORS = {("models",)}  # rejected by click before llmemf runs: exit 2, click's own multi-line message


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    from tiny_data import make_tiny_dataset

    root = tmp_path_factory.mktemp("cli_errors")
    ds = make_tiny_dataset(n_x=10, n_y=12, n_users=20)
    ds.save(root / "ds")
    res = CliRunner().invoke(app, ["train", "--model", "pop", "--dataset", str(root / "ds"), "--out", str(root / "run"), *FAST])
    assert res.exit_code == 0, res.output
    (root / "tmp").mkdir()
    (root / "tmp" / "empty.csv").write_text("")
    return {"ds": str(root / "ds"), "run": str(root / "run"), "tmp": str(root / "tmp")}


def test_every_command_has_a_bad_argument_case():
    commands = set(_commands(typer.main.get_command(app)))
    missing = commands - set(BAD)
    assert not missing, f"add a bad-argument case to BAD in tests/test_cli_errors.py for {sorted(missing)}"
    assert set(BAD) <= commands, f"cases for commands that no longer exist: {sorted(set(BAD) - commands)}"


@pytest.mark.parametrize("command", sorted(BAD), ids=lambda c: " ".join(c))
def test_bad_argument_is_one_line_and_exit_2(command, places):
    args = [a.format(**places) for a in BAD[command]]
    res = CliRunner().invoke(app, [*command, *args])
    assert res.exit_code == 2, f"exit {res.exit_code}; stdout {res.stdout!r}; stderr {res.stderr!r}; {res.exception!r}"
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    if command in USAGE_ERRORS:
        assert lines, "click prints a usage error on stderr"
        return
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr


def test_compare_with_a_spec_refuses_the_options_it_would_ignore(places, tmp_path):
    """--dataset, --out, --models, --fresh and --nproc describe a compare without a spec: given with --spec
    they used to be ignored (training on the spec's dataset while the user named another)."""
    spec = tmp_path / "s.yaml"
    spec.write_text(f"scenario: s\ndataset: {places['ds']}\nout: {tmp_path / 'out'}\nepochs: 1\npatience: 1\nrows: [pop]\n")
    res = CliRunner().invoke(app, ["compare", "--spec", str(spec), "--dataset", places["ds"], "--fresh"])
    assert res.exit_code == 2
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--dataset, --fresh apply without a spec only" in lines[0] and "dataset=DIR" in lines[0]
    assert not (tmp_path / "out").exists()
