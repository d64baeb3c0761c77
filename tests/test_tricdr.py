"""Tri-CDR as the official code (hulkima/Tri-CDR) computes it, pinned on hand-made inputs: which
states the target attention reads, the padding of the official window, the triplet roles, the
three NT-Xent pairs behind projection heads, cosine x 5 scores, BCE with one in-domain negative
per position, and the pre-trained SASRec weights the encoders start from."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from llmemf.config import load_config
from llmemf.errors import UserError
from llmemf.experiments.runner import train_stages, training_stages
from llmemf.models.base import build_model
from llmemf.models.tricdr import nt_xent
from llmemf.training.trainer import load_checkpoint

PAD = 70  # tiny dataset: X = 0..29, Y = 30..69


@pytest.fixture
def model(tiny_bundle):
    torch.manual_seed(0)
    return build_model("tricdr", {"hidden": 16, "seq_len": 20}, tiny_bundle).eval()


def test_attention_reads_what_precedes_the_next_target(model):
    # Row 0: X0 Y30 Y31 X1 Y32. Row 1 has a single X item: no direction keeps it (utils.py:35).
    s = torch.tensor([[0, 30, 31, 1, 32], [PAD, 30, 31, 0, 32]])
    y = model.direction_inputs(s, 1)  # target Y: inputs 30, 31 predict 31, 32
    assert y["rows"].tolist() == [0]
    assert y["target_in"].tolist() == [[30, 31]] and y["target_next"].tolist() == [[31, 32]]
    assert y["mix_items"].tolist() == [[0, 30, 31, 1, 32]] and y["source_items"].tolist() == [[0, 1]]
    # At input 30 (next 31): mixed X0, Y30; source X0. At input 31 (next 32): mixed X0 Y30 Y31 X1; source X0 X1.
    assert y["mix_mask"].int().tolist() == [[[1, 1, 0, 0, 0], [1, 1, 1, 1, 0]]]
    assert y["source_mask"].int().tolist() == [[[1, 0], [1, 1]]]
    assert y["target_mask"].int().tolist() == [[[1, 0], [1, 1]]]
    x = model.direction_inputs(s, 0)  # target X: input 0 predicts 1, which comes after Y30, Y31
    assert x["rows"].tolist() == [0]
    assert x["target_in"].tolist() == [[0]] and x["source_items"].tolist() == [[30, 31, 32]]
    assert x["mix_mask"].int().tolist() == [[[1, 1, 1, 0, 0]]]
    assert x["source_mask"].int().tolist() == [[[1, 1, 0]]]


def test_encoder_counts_the_window_padding(model):
    """A short batch gives the states the full left-padded window of seq_len positions gives."""
    enc = model.dirs[0].enc_mix
    items = [3, 35, 7]
    short = enc(torch.tensor([items]))
    full = enc(torch.tensor([[PAD] * (20 - 1 - len(items)) + items]))  # + the one pad column = the window
    torch.testing.assert_close(short, full[:, -len(items) :], rtol=1e-5, atol=1e-5)
    # An attention with nothing allowed is the window-wide average, pads (state last_layernorm(0)) included.
    h = enc(torch.tensor([[PAD] * 2 + items]))
    uniform = model._uniform(enc, h, torch.tensor([[False, False, True, True, True]]))
    torch.testing.assert_close(uniform[0], (full[0].sum(0) + enc.pad_state()) / 20, rtol=1e-5, atol=1e-5)
    dr = model.dirs[0]
    q, m = torch.randn(1, 2, 16), torch.randn(1, 2, 16)
    out = dr.din(q, h, torch.zeros(1, 2, 5, dtype=torch.bool), m, uniform)
    torch.testing.assert_close(out, uniform[:, None].expand(1, 2, 16))


def _outputs(n: int = 6, d: int = 16) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    return {"pos": r(n, 3), "neg": r(n, 3), "valid": r(n, 3) > -0.5, "mix": r(n, d), "source": r(n, d), "target": r(n, d)}


def test_triplet_roles_and_the_three_nt_xent_pairs(model):
    out = _outputs()
    terms = model.direction_losses(out)
    m, s, t = out["mix"], out["source"], out["target"]
    # TripletMarginLoss(anchor = source, positive = mix, negative = target), L2, margin 1 (Tri_CDR.py:169, 242)
    torch.testing.assert_close(terms["triplet"], F.triplet_margin_loss(s, m, t, margin=1.0, p=2.0, eps=1e-6))
    for other in ((m, s, t), (t, m, s), (s, t, m)):
        assert abs(float(F.triplet_margin_loss(*other, margin=1.0) - terms["triplet"])) > 1e-4
    # NT-Xent at tau 0.1 over (mix, source), (mix, target), (source, target), rates 1/3 each.
    torch.testing.assert_close(terms["cl"], (nt_xent(m, s, 0.1) + nt_xent(m, t, 0.1) + nt_xent(s, t, 0.1)) / 3)
    torch.testing.assert_close(terms["loss"], terms["rec"] + terms["cl"] + terms["triplet"])  # weights 1, 1
    model.config.rate_mix_source = 2.0
    torch.testing.assert_close(model.direction_losses(out)["cl"], 0.5 * nt_xent(m, s, 0.1) + 0.25 * nt_xent(m, t, 0.1) + 0.25 * nt_xent(s, t, 0.1))


def test_nt_xent_is_the_simclr_loss():
    """model.py:13-38: each of the 2N rows classifies its pair among the other 2N - 1 rows."""
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    z = F.normalize(torch.cat([a, b]), dim=1)
    sim = (z @ z.T / 0.1).masked_fill(torch.eye(10, dtype=torch.bool), -torch.inf)
    expected = F.cross_entropy(sim, torch.cat([torch.arange(5, 10), torch.arange(5)]))
    torch.testing.assert_close(nt_xent(a, b, 0.1), expected, rtol=1e-4, atol=1e-4)


def test_projection_heads_feed_the_contrastive_terms(model, tiny_bundle):
    s = model._full_sequence(next(tiny_bundle.train.iter_batches(32)))
    for d in (0, 1):
        out = model.direction_forward(d, s)
        for i, k in enumerate(("mix", "source", "target")):
            head = model.dirs[d].heads[i]
            assert [type(layer) for layer in head] == [torch.nn.Linear, torch.nn.ReLU, torch.nn.Linear]
            torch.testing.assert_close(out[k], head(out["attended"][i]))
            assert not torch.allclose(out[k], out["attended"][i])


def test_scores_are_five_times_the_cosine(model, tiny_bundle):
    batch = next(tiny_bundle.splits["valid"].iter_batches(16))
    for d in (0, 1):
        lo, hi = tiny_bundle.domain_range(d)
        table = model.dirs[d].enc_target.item_emb.weight
        u = model.user_states(batch, d)
        scores = model.scores(batch, d)
        torch.testing.assert_close(scores, 5 * F.cosine_similarity(u[:, None], table[lo:hi][None], dim=-1), rtol=1e-5, atol=1e-5)
        assert scores.abs().max() <= 5 + 1e-5
        assert not torch.allclose(scores, u @ table[lo:hi].T)  # not a dot product


def test_bce_with_one_in_domain_negative_per_position(model, tiny_bundle):
    s = model._full_sequence(next(tiny_bundle.train.iter_batches(64)))
    torch.manual_seed(3)
    for d in (0, 1):
        lo, hi = tiny_bundle.domain_range(d)
        out = model.direction_forward(d, s)
        v, neg = out["valid"], out["negatives"]
        assert neg.shape == out["target_in"].shape
        n_targets = (out["target_items"] != PAD).sum(1) - 1  # one position per next target item
        assert int(v.sum()) == int(n_targets.sum()) == int(out["neg"][v].numel())
        assert ((neg[v] >= lo) & (neg[v] < hi)).all()
        assert not (neg[:, :, None] == out["target_items"][:, None, :])[v].any()  # never one of the user's domain-d items
        rec = F.binary_cross_entropy_with_logits(out["pos"][v], torch.ones(int(v.sum())))
        rec = rec + F.binary_cross_entropy_with_logits(out["neg"][v], torch.zeros(int(v.sum())))
        torch.testing.assert_close(model.direction_losses(out)["rec"], rec)


def _tiny_run(tiny_dataset, out):
    return [
        f"dataset={tiny_dataset.root}",
        f"out={out}",
        "model.name=tricdr",
        "model.hidden=16",
        "model.seq_len=20",
        "model.pretrain_epochs=1",
        "max_len=10",
        "train.epochs=1",
        "train.threads=1",
        "train.progress=false",
        "eval.protocols=[c2dsr]",
        "eval.n_negatives=20",
    ]


def test_a_run_whose_pretraining_recipe_changed_is_trained_again_and_restored_only_whole(tiny_dataset, tmp_path, monkeypatch):
    """The pre-training stage is derived from the run's config by code: a change of its recipe (here: one more
    epoch) leaves the run's own config as it was, yet the run started from other weights. It is not reused:
    the pre-training trains further, and the run from it again. A run collected in results/ is restored with
    its pre-training stage or not at all."""
    import shutil

    from llmemf.data.batching import DataBundle
    from llmemf.experiments.runner import restore_stages, run_or_reuse
    from llmemf.models.tricdr import TriCDR
    from llmemf.training.rundir import SMALL_FILES

    bundle = DataBundle(tiny_dataset, max_len=10)
    cfg = load_config(None, _tiny_run(tiny_dataset, tmp_path / "run"))
    lines: list[str] = []
    run_or_reuse(cfg, bundle, lines.append)
    run_or_reuse(cfg, bundle, lines.append)
    assert sum("reusing" in line for line in lines) == 1
    kept = tmp_path / "results" / "run"  # what `report --collect` keeps: small files, the pre-training's beside
    for stage in ("", "pretrain"):
        for name in SMALL_FILES:
            if (tmp_path / "run" / stage / name).is_file():
                (kept / stage).mkdir(parents=True, exist_ok=True)
                shutil.copy(tmp_path / "run" / stage / name, kept / stage / name)
    moved = load_config(None, _tiny_run(tiny_dataset, tmp_path / "elsewhere"))
    assert restore_stages(kept, moved, tiny_dataset.manifest.content_hash)
    assert (tmp_path / "elsewhere" / "pretrain" / "results.json").is_file()
    lines.clear()
    run_or_reuse(moved, bundle, lines.append)
    assert lines == [f"  reusing {tmp_path / 'elsewhere'}"]

    recipe = TriCDR.pretraining_stage
    longer = {"epochs": 2, "patience": 2, "lr_step": 0}
    monkeypatch.setattr(TriCDR, "pretraining_stage", staticmethod(lambda params: {**recipe(params), "train": longer}))
    lines.clear()
    run_or_reuse(cfg, bundle, lines.append)
    assert not any("reusing" in line for line in lines) and any("pre-training stage ->" in line for line in lines), lines
    resumed = [line.split()[1] for line in lines if line.lstrip().startswith("resuming")]
    assert resumed == [str(tmp_path / "run" / "pretrain")] and any(line.lstrip().startswith("epoch   1") for line in lines)
    pre = [json.loads(x) for x in (tmp_path / "run" / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in pre] == [1, 2]  # trained further from where it stopped
    assert json.loads((tmp_path / "run" / "results.json").read_text())["epochs_run"] == 1  # the run from it again
    assert not restore_stages(kept, load_config(None, _tiny_run(tiny_dataset, tmp_path / "third")), tiny_dataset.manifest.content_hash)
    assert not (tmp_path / "third").exists()


def test_pretraining_stage_initialises_the_encoders(tiny_dataset, tmp_path):
    overrides = [
        f"dataset={tiny_dataset.root}",
        f"out={tmp_path / 'run'}",
        "model.name=tricdr",
        "model.hidden=16",
        "model.seq_len=20",
        "model.pretrain_epochs=1",
        "max_len=10",
        "train.epochs=2",
        "train.lr_step=1",
        "train.lr_gamma=0.5",
        "train.threads=1",
        "train.progress=false",
        "eval.protocols=[c2dsr]",
        "eval.n_negatives=20",
    ]
    cfg = load_config(None, overrides)
    pre, main = training_stages(cfg)
    assert pre.out == str(tmp_path / "run" / "pretrain") and main.out == cfg.out
    # SASRec.pytorch's fixed budget: no early stopping in the pre-training (its loss dips before it converges)
    assert pre.model["stage"] == "pretrain" and pre.train.epochs == pre.train.patience == 1 and pre.train.lr_step == 0
    assert main.model["init_from"] == pre.out
    result = train_stages(cfg, log=lambda *_: None)
    assert (tmp_path / "run" / "pretrain" / "results.json").exists() and result.run_dir == tmp_path / "run"
    # The exponential decay: epoch 2 (index 1) ran at lr * 0.5; Adam's betas (0.9, 0.98).
    group = load_checkpoint(tmp_path / "run" / "last.pt")["optimizer"]["param_groups"][0]
    assert group["lr"] == pytest.approx(cfg.train.lr * 0.5) and tuple(group["betas"]) == (0.9, 0.98)

    from llmemf.data.batching import DataBundle

    bundle = DataBundle(tiny_dataset, max_len=10)
    pre_state = load_checkpoint(tmp_path / "run" / "pretrain" / "best.pt")
    fresh = build_model("tricdr", main.model_params, bundle)
    fresh.fit(bundle)  # what the trainer calls before the first epoch
    state = fresh.state_dict()
    for d in (0, 1):
        for k, v in fresh.dirs[d].enc_target.state_dict().items():
            torch.testing.assert_close(v, pre_state[f"dirs.{d}.enc_target.{k}"])
            torch.testing.assert_close(state[f"dirs.{d}.enc_source.{k}"], pre_state[f"dirs.{1 - d}.enc_target.{k}"])
            torch.testing.assert_close(state[f"dirs.{d}.enc_mix.{k}"], pre_state[f"dirs.0.enc_mix.{k}"])
    # Not a pre-training run: a one-line user error.
    bad = build_model("tricdr", {**main.model_params, "init_from": str(tmp_path / "run")}, bundle)
    with pytest.raises(UserError, match="not a tricdr stage=pretrain run"):
        bad.fit(bundle)
    with pytest.raises(UserError, match="model.seq_len"):
        build_model("tricdr", {"seq_len": 10}, bundle)
