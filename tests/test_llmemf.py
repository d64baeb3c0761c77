"""LLM-EMF specifics: modality switches, missing features, fusion modes, the prediction mix, stacking."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llmemf.data.batching import DataBundle
from llmemf.features.store import load_feature
from llmemf.models.base import build_model
from llmemf.models.layers import SequenceEncoder, StackedSequenceEncoder


def _eval_batch(bundle, n=8):
    return next(bundle.splits["valid"].iter_batches(n))


def test_id_only_needs_no_features(tiny_bundle, make_tiny):
    ds = make_tiny()  # in memory, no features directory
    model = build_model("llmemf", {"modalities": ["id"]}, DataBundle(ds, 10))
    assert model.describe_features() == "id only"
    with pytest.raises(ValueError, match="needs a dataset loaded from a directory"):
        build_model("llmemf", {}, DataBundle(ds, 10))


def test_missing_feature_rows_use_a_learned_vector(tiny_bundle):
    torch.manual_seed(0)
    model = build_model("llmemf", {"d_id": 16}, tiny_bundle)
    assert set(model.describe_features().split("; ")) == {
        "img <- img: random-test (" + str(int(model.img_mask.sum())) + "/70 items)",
        "txt <- txt_llm: random-test (" + str(int(model.txt_mask.sum())) + "/70 items)",
    }
    missing_rows = (~model.img_mask[:-1]).nonzero()[:, 0]
    assert len(missing_rows) > 0
    table = model.item_table("img")
    assert torch.equal(table[missing_rows[0]], model.missing["img"].detach())
    loss = model.loss(next(tiny_bundle.train.iter_batches(32)))
    loss.backward()
    assert model.missing["img"].grad is not None


def test_frozen_logits_match_the_key_matrix_path(tiny_bundle):
    """The fast frozen-modality logits (absent items scored through one indicator column) equal cosine
    scores against the feature file's vectors, with the learned missing vector for absent items, in
    value and in the gradients of the queries and the missing vector; fused logits add them up."""
    torch.manual_seed(0)
    model = build_model("llmemf", {"d_id": 16}, tiny_bundle)
    lo, hi = model.domain_ranges[1]
    feat = load_feature(tiny_bundle.dataset.root, "img", n_items=model.n_items)
    present = torch.from_numpy(feat.mask[lo:hi])
    assert not bool(present.all())  # the case with absent items
    raw = torch.from_numpy(feat.values[lo:hi].astype("float32"))
    q = torch.randn(5, model.widths["img"], requires_grad=True)
    fast = model._domain_logits({"img": q}, lo, hi)["img"]
    (fast * torch.arange(hi - lo)).sum().backward()
    grads_fast = q.grad.clone(), model.missing["img"].grad.clone()
    q.grad, model.missing["img"].grad = None, None
    keys = torch.where(present[:, None], F.normalize(raw, dim=-1), F.normalize(model.missing["img"], dim=0))
    slow = q @ keys.T
    (slow * torch.arange(hi - lo)).sum().backward()
    torch.testing.assert_close(fast, slow)
    torch.testing.assert_close(grads_fast[0], q.grad)
    torch.testing.assert_close(grads_fast[1], model.missing["img"].grad)
    queries = {m: torch.randn(4, w) for m, w in model.widths.items()}
    torch.testing.assert_close(model._fused_logits(queries, lo, hi), sum(model._domain_logits(queries, lo, hi).values()))


def test_unknown_modality_and_fusion_rejected(tiny_bundle):
    with pytest.raises(ValueError, match="modalities"):
        build_model("llmemf", {"modalities": ["img"]}, tiny_bundle)
    with pytest.raises(ValueError, match="fusion"):
        build_model("llmemf", {"fusion": "max"}, tiny_bundle)


def test_probability_fusion_is_a_mixture_of_softmaxes(tiny_bundle):
    torch.manual_seed(0)
    model = build_model("llmemf", {"d_id": 16, "fusion": "probabilities", "train_negatives": 0, "gamma_s": 0.0, "gamma_xy": 0.0}, tiny_bundle).eval()
    batch = _eval_batch(tiny_bundle)
    lo, hi = tiny_bundle.domain_range(1)
    got = model.scores(batch, 1, None)
    states = model.encode(batch, last_only=True)
    c = config = model.config
    probs = 0
    for m, w in (("id", 1.0), ("img", c.alpha), ("txt", c.beta)):
        h = torch.nn.functional.normalize(states[m][1], dim=-1)  # sequence Y, the target domain
        logits = h @ model.scoring_keys(m, slice(lo, hi)).T / config.tau
        probs = probs + w * torch.softmax(logits, -1)
    expected = torch.log(probs / (1 + c.alpha + c.beta))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_probability_fusion_leaves_out_a_modality_of_weight_zero(tiny_bundle):
    """alpha = 0 removes the image softmax from the mixture (it was 0/0 before): the same scores as the model
    without the image modality, with the same parameters."""
    torch.manual_seed(0)
    params = {"d_id": 16, "fusion": "probabilities", "train_negatives": 0, "alpha": 0.0}
    model = build_model("llmemf", params, tiny_bundle).eval()
    without = build_model("llmemf", {**params, "modalities": ["id", "txt"]}, tiny_bundle).eval()
    without.load_state_dict(model.state_dict(), strict=False)
    batch = _eval_batch(tiny_bundle)
    got = model.scores(batch, 1, None)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, without.scores(batch, 1, None))


def test_neutral_cold_id_is_refused_under_probability_fusion():
    from llmemf.config import ConfigError
    from llmemf.models.llmemf import LLMEMFConfig

    with pytest.raises(ConfigError, match="cold_id=neutral with model.fusion=probabilities"):
        LLMEMFConfig(fusion="probabilities", train_negatives=0, cold_id="neutral")


def test_prediction_mix_uses_target_source_and_merged_sequences(tiny_bundle):
    torch.manual_seed(0)
    only_target = build_model("llmemf", {"d_id": 16, "gamma_s": 0.0, "gamma_xy": 0.0}, tiny_bundle).eval()
    batch = _eval_batch(tiny_bundle)
    altered = _eval_batch(tiny_bundle)
    altered.y = torch.full_like(altered.y, 35)  # change the Y history only
    altered.xy = torch.where(altered.xy >= 30, torch.full_like(altered.xy, 35), altered.xy)
    # Domain X scores with gamma_S = gamma_XY = 0 read the X sequence alone.
    torch.testing.assert_close(only_target.scores(batch, 0), only_target.scores(altered, 0))
    mixed = build_model("llmemf", {"d_id": 16}, tiny_bundle)
    mixed.load_state_dict(only_target.state_dict())
    mixed.eval()
    assert not torch.allclose(mixed.scores(batch, 0), mixed.scores(altered, 0))


def test_sampled_softmax_gives_the_id_table_a_sparse_gradient_of_the_rows_it_read(tiny_bundle):
    batch = next(tiny_bundle.train.iter_batches(2))  # two users and 5 negatives read a part of the 70 items
    grads = {}
    for sparse in (True, False):
        torch.manual_seed(0)  # the same weights and negatives
        model = build_model("llmemf", {"d_id": 16, "modalities": ["id"], "train_negatives": 5}, tiny_bundle)
        assert model.sparse_embeddings() == [model.item_id] and not model.item_id.sparse
        model.item_id.sparse = sparse  # what the trainer does with train.lazy_adam
        model.loss(batch).backward()
        grads[sparse] = model.item_id.weight.grad
    assert grads[True].is_sparse and not grads[False].is_sparse
    torch.testing.assert_close(grads[True].to_dense(), grads[False])
    read = torch.zeros(len(grads[False]), dtype=torch.bool)
    read[grads[True].coalesce().indices()[0]] = True
    assert 0 < read.sum() < tiny_bundle.n_items and (grads[False][~read] == 0).all()
    full = build_model("llmemf", {"d_id": 16, "modalities": ["id"]}, tiny_bundle)
    assert full.sparse_embeddings() == []  # the full softmax reads every row anyway


def test_corrected_sampled_softmax_estimates_the_full_loss(tiny_bundle):
    torch.manual_seed(0)
    model = build_model("llmemf", {"d_id": 16, "modalities": ["id", "txt"], "txt_feature": "txt_title", "train_negatives": 0}, tiny_bundle).eval()
    batch = next(tiny_bundle.train.iter_batches(64))
    with torch.no_grad():
        full = model.loss(batch)
        model._samples_negatives = lambda n_items: True  # K far above the domain's size, sampled all the same
        model.config.train_negatives = 40 * max(hi - lo for lo, hi in model.domain_ranges)
        corrected = model.loss(batch)
        model.config.sampled_correction = False
        uncorrected = model.loss(batch)
    assert abs(corrected / full - 1) < 0.03, (float(corrected), float(full))
    assert uncorrected > full + 1.0  # log(40) too much partition function on every target


@pytest.mark.parametrize("sampler", ["uniform", "popularity", "in_batch"])
def test_each_negative_sampler_estimates_the_full_loss(tiny_bundle, sampler):
    """At large K (in_batch: a batch whose targets cover the small domains) each corrected estimator's loss
    approaches the full softmax's; without the log-Q correction the drawn ones do not (in_batch: every item is
    in, so there is nothing to correct, see the next test)."""
    torch.manual_seed(0)
    model = build_model("llmemf", {"d_id": 16, "modalities": ["id", "txt"], "txt_feature": "txt_title", "train_negatives": 0}, tiny_bundle).eval()
    batch = next(tiny_bundle.train.iter_batches(256))
    with torch.no_grad():
        full = model.loss(batch)
        model._samples_negatives = lambda n_items: True  # K far above the domain's size, sampled all the same
        model.config.negative_sampler = sampler
        model.config.train_negatives = 40 * max(hi - lo for lo, hi in model.domain_ranges)
        corrected = model.loss(batch)
        model.config.sampled_correction = False
        uncorrected = model.loss(batch)
    assert abs(corrected / full - 1) < 0.03, (sampler, float(corrected), float(full))
    if sampler != "in_batch":
        assert abs(uncorrected / full - 1) > 0.05, (sampler, float(uncorrected), float(full))


def test_in_batch_correction_weighs_up_items_a_small_batch_may_miss(tiny_bundle):
    torch.manual_seed(0)
    model = build_model("llmemf", {"d_id": 16, "train_negatives": 1, "negative_sampler": "in_batch"}, tiny_bundle)
    lo, hi = model.domain_ranges[0]
    t = torch.tensor([lo, lo, lo + 1])
    neg, bias = model._negatives(t, lo, hi)
    assert neg.tolist() == [lo, lo + 1]
    q = (model.train_count[lo:hi] + 1) / (model.train_count[lo:hi] + 1).sum()
    torch.testing.assert_close(bias, -torch.log(1 - (1 - q[:2]) ** 3))
    assert (bias > 0).all()


@pytest.mark.parametrize("sampler", ["uniform", "popularity", "in_batch"])
def test_sampled_softmax_trains_with_each_sampler(tiny_bundle, sampler):
    torch.manual_seed(0)
    model = build_model("llmemf", {"d_id": 16, "train_negatives": 20, "negative_sampler": sampler}, tiny_bundle)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    batch = next(tiny_bundle.train.iter_batches(64))
    losses = []
    for _ in range(15):
        loss = model.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_popularity_sampler_prefers_frequent_items(tiny_bundle):
    torch.manual_seed(0)
    model = build_model("llmemf", {"d_id": 16, "train_negatives": 20000, "negative_sampler": "popularity"}, tiny_bundle)
    lo, hi = model.domain_ranges[0]
    neg, bias = model._negatives(torch.tensor([lo]), lo, hi)
    drawn = torch.bincount(neg - lo, minlength=hi - lo).float()
    expected = (model.train_count[lo:hi] + 1) / (model.train_count[lo:hi] + 1).sum() * len(neg)
    torch.testing.assert_close(drawn, expected, atol=4 * expected.sqrt().max().item(), rtol=0)
    torch.testing.assert_close(bias, -torch.log(expected[neg - lo]))


def test_stacked_encoder_slices_are_independent_and_causal():
    torch.manual_seed(0)
    enc = StackedSequenceEncoder(3, 8, max_len=6, n_blocks=2, n_heads=2, dropout=0.0).eval()
    x = torch.randn(3, 4, 6, 8)
    valid = torch.ones(3, 4, 6, dtype=torch.bool)
    valid[:, 0, :2] = False  # left padding in row 0
    out = enc(x, valid)
    x2 = x.clone()
    x2[1:] = torch.randn(2, 4, 6, 8)  # other stack members change
    x2[0, :, -1] = torch.randn(4, 8)  # the future of slice 0 changes
    out2 = enc(x2, valid)
    torch.testing.assert_close(out[0, :, :-1], out2[0, :, :-1])  # earlier positions do not see it
    assert not torch.allclose(out[1], out2[1])
    assert torch.isfinite(out).all()


def test_stacked_encoder_last_only_is_the_last_position_of_the_full_pass():
    """Inference reads the last position only; the last block then computes that row alone, the same numbers."""
    torch.manual_seed(0)
    enc = StackedSequenceEncoder(3, 8, max_len=6, n_blocks=2, n_heads=2, dropout=0.0).eval()
    x = torch.randn(3, 4, 6, 8)
    valid = torch.ones(3, 4, 6, dtype=torch.bool)
    valid[:, 0, :2] = False  # left padding
    valid[1, 1] = False  # an empty sequence
    with torch.no_grad():
        torch.testing.assert_close(enc(x, valid, last_only=True), enc(x, valid)[:, :, -1], rtol=1e-5, atol=1e-5)


def _copy_into_stack(stack: StackedSequenceEncoder, encoders: list[SequenceEncoder]) -> None:
    """Stack slice i <- encoders[i]'s weights (StackedLinear keeps (d_in, d_out), nn.Linear (d_out, d_in))."""
    with torch.no_grad():
        for i, enc in enumerate(encoders):
            stack.pos[i].copy_(enc.pos.weight)
            stack.ln_f.weight[i, 0, 0].copy_(enc.ln_f.weight)
            stack.ln_f.bias[i, 0, 0].copy_(enc.ln_f.bias)
            for sb, b in zip(stack.blocks, enc.blocks, strict=True):
                for sln, ln in ((sb.ln1, b.ln1), (sb.ln2, b.ln2)):
                    sln.weight[i, 0, 0].copy_(ln.weight)
                    sln.bias[i, 0, 0].copy_(ln.bias)
                for slin, lin in ((sb.qkv, b.attn.qkv), (sb.proj, b.attn.proj), (sb.ff1, b.ffn.net[0]), (sb.ff2, b.ffn.net[3])):
                    slin.weight[i].copy_(lin.weight.T)
                    slin.bias[i, 0].copy_(lin.bias)


def test_stack_equals_three_sequence_encoders_with_their_weights():
    """The one encoder path LLM-EMF keeps computes what three SequenceEncoders compute, given the same weights."""
    torch.manual_seed(0)
    d, L = 8, 6
    encoders = [SequenceEncoder(d, L, n_blocks=2, n_heads=2, dropout=0.0).eval() for _ in range(3)]
    stack = StackedSequenceEncoder(3, d, L, n_blocks=2, n_heads=2, dropout=0.0).eval()
    _copy_into_stack(stack, encoders)
    x = torch.randn(3, 5, L, d)
    valid = torch.ones(3, 5, L, dtype=torch.bool)
    valid[:, 1, :3] = False  # left padding
    valid[2, 2, :5] = False
    with torch.no_grad():
        want = torch.stack([enc(x[i], valid[i]) for i, enc in enumerate(encoders)])
        got = stack(x, valid)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_neutral_cold_id_ignores_untrained_id_vectors(tiny_bundle):
    torch.manual_seed(0)
    model = build_model("llmemf", {"d_id": 16, "cold_id": "neutral"}, tiny_bundle).eval()
    cold = 40  # pretend item 40 never occurred in training
    model.warm[cold] = False
    batch = _eval_batch(tiny_bundle)
    before = model.scores(batch, 1)[:, cold - 30].clone()
    with torch.no_grad():
        model.item_id.weight[cold] = torch.randn(16) * 10  # its (untrained) ID vector is irrelevant
    torch.testing.assert_close(model.scores(batch, 1)[:, cold - 30], before)
    learned = build_model("llmemf", {"d_id": 16}, tiny_bundle).eval()
    learned.load_state_dict(model.state_dict())
    learned.warm[cold] = False
    assert not torch.allclose(learned.scores(batch, 1)[:, cold - 30], before)


def test_content_cold_id_recovers_a_linear_feature_to_id_map(tiny_bundle):
    """cold_id=content: when warm ID vectors are an exact linear function of the frozen features, the
    ridge regression (tiny penalty) predicts the cold items' ID vectors; warm rows are left alone, and
    training mode still uses the learned table."""
    torch.manual_seed(0)
    model = build_model("llmemf", {"d_id": 8, "cold_id": "content", "cold_ridge": 1e-6}, tiny_bundle)
    feats = torch.cat([model.frozen_keys.float(), torch.ones(model.n_items + 1, 1)], dim=1)
    true_map = torch.randn(feats.shape[1], 8)
    cold = torch.zeros(model.n_items + 1, dtype=torch.bool)
    cold[[3, 40, 41]] = True
    model.warm.copy_(~cold)
    model.warm[model.pad_id] = False
    with torch.no_grad():
        model.item_id.weight.copy_(feats @ true_map)
        model.item_id.weight[cold] = 0.0
    model.eval()
    imputed = model.item_vectors("id", slice(None))
    torch.testing.assert_close(imputed[cold], (feats @ true_map)[cold], atol=1e-3, rtol=1e-3)
    assert torch.equal(imputed[~cold], model.item_id.weight[~cold])
    model._imputed = None
    with torch.autocast("cpu", dtype=torch.bfloat16):  # evaluation under train.bf16: the regression stays fp32
        torch.testing.assert_close(model.item_vectors("id", slice(None)), imputed)
    model.train()
    assert torch.equal(model.item_vectors("id", slice(None)), model.item_id.weight)
    with pytest.raises(ValueError, match="content"):
        build_model("llmemf", {"modalities": ["id"], "cold_id": "content"}, tiny_bundle)


@pytest.mark.parametrize("modalities", [["id"], ["id", "img", "txt"]])
def test_candidate_scores_are_the_same_by_either_path(tiny_bundle, modalities):
    torch.manual_seed(0)
    model = build_model("llmemf", {"d_id": 16, "modalities": modalities}, tiny_bundle).eval()
    batch = _eval_batch(tiny_bundle)
    lo, hi = model.domain_ranges[1]
    cand = torch.randint(lo, hi, (8, 7))
    with torch.no_grad():
        model.candidates_via_full = True
        full = model.scores(batch, 1, cand)
        model.candidates_via_full = False
        gathered = model.scores(batch, 1, cand)
    torch.testing.assert_close(full, gathered, rtol=1e-4, atol=1e-4)


def test_merged_sequence_alone_ignores_the_domain_sequences(tiny_bundle):
    """gamma_t = gamma_s = 0: a domain's scores read the merged sequence only, so they are unchanged by any
    change of the X or Y sequence that leaves the merged one as it is."""
    torch.manual_seed(0)
    model = build_model("llmemf", {"d_id": 16, "gamma_t": 0.0, "gamma_s": 0.0}, tiny_bundle).eval()
    batch = _eval_batch(tiny_bundle)
    altered = _eval_batch(tiny_bundle)
    altered.x = torch.where(altered.x > 0, torch.full_like(altered.x, 5), altered.x)
    altered.y = torch.where(altered.y > 0, torch.full_like(altered.y, 35), altered.y)
    with torch.no_grad():
        for dom in (0, 1):
            torch.testing.assert_close(model.scores(batch, dom), model.scores(altered, dom))
            assert not torch.allclose(model.scores(batch, dom), build_model("llmemf", {"d_id": 16}, tiny_bundle).eval().scores(altered, dom))
    with pytest.raises(ValueError, match="gamma_t, gamma_s and gamma_xy are all 0"):
        build_model("llmemf", {"gamma_t": 0.0, "gamma_s": 0.0, "gamma_xy": 0.0}, tiny_bundle)


@pytest.mark.parametrize("modalities", [["id"], ["id", "img", "txt"]])
def test_dot_score_is_the_raw_inner_product_of_id_vectors(tiny_bundle, modalities):
    """score=dot: the ID logit is h . E_id[i] with neither vector normalised nor a temperature, frozen
    modalities score h . (unit feature); every scoring path (full, candidates, sampled loss, fused key
    matrix) agrees with it."""
    torch.manual_seed(0)
    model = build_model("llmemf", {"d_id": 16, "modalities": modalities, "score": "dot", "gamma_s": 0.0, "gamma_xy": 0.0}, tiny_bundle).eval()
    batch = _eval_batch(tiny_bundle)
    lo, hi = model.domain_ranges[0]
    with torch.no_grad():
        h = model.encode(batch, last_only=True)  # m -> (3, B, d_m); gamma_s = gamma_xy = 0: the X sequence alone
        expected = h["id"][0] @ model.item_id.weight[lo:hi].T
        for m in modalities[1:]:
            start, end = model.frozen_cols[m]
            expected = expected + model.weights[m] * (model._augmented_query(m, h[m][0]) @ model.frozen_keys[lo:hi, start:end].T)
        torch.testing.assert_close(model.scores(batch, 0), expected, rtol=1e-4, atol=1e-4)
        cand = torch.randint(lo, hi, (batch.xy.shape[0], 5))
        for via_full in (True, False):
            model.candidates_via_full = via_full
            torch.testing.assert_close(model.scores(batch, 0, cand), expected.gather(1, cand - lo), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(model.fused_query(batch, 0) @ model.fused_keys(0).T, expected, rtol=1e-4, atol=1e-4)
        train_batch = next(tiny_bundle.train.iter_batches(64))
        full = model.loss(train_batch)
        model.config.train_negatives = 40 * max(hi - lo for lo, hi in model.domain_ranges)  # the sampled loss ~ the full one
        sampled = model.loss(train_batch)
    assert abs(sampled / full - 1) < 0.03, (float(sampled), float(full))


def test_principal_axes_keep_cosines_of_features_in_a_low_dimensional_subspace():
    """Unit rows that lie in a 3-d subspace of 16-d space keep their centred geometry when projected
    onto 3 principal axes; absent rows stay zero; the result is unit and the same on every call."""
    from llmemf.features.store import Feature, FeatureManifest, principal_axes, project

    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(16, 3)))[0]
    values = (rng.normal(size=(40, 3)) + [2.0, 0.0, 0.0]) @ basis.T  # off-centre, so centring matters
    values /= np.linalg.norm(values, axis=1, keepdims=True)
    mask = np.ones(40, bool)
    mask[[3, 7]] = False
    values[~mask] = 0
    feature = Feature(FeatureManifest("img", "test", "w", 16, 40, "float32"), values, mask)
    reduced = project(feature, *principal_axes(feature, 3))
    assert reduced.values.shape == (40, 3) and reduced.manifest.dim == 3 and reduced.manifest.notes["projected_from"] == 16
    assert not reduced.values[~mask].any()
    np.testing.assert_allclose(np.linalg.norm(reduced.values[mask], axis=1), 1, rtol=1e-5)
    centred = values[mask] - values[mask].mean(0)
    centred /= np.linalg.norm(centred, axis=1, keepdims=True)
    np.testing.assert_allclose(reduced.values[mask] @ reduced.values[mask].T, centred @ centred.T, atol=1e-5)
    for a, b in zip(principal_axes(feature, 3), principal_axes(feature, 3), strict=True):
        np.testing.assert_array_equal(a, b)


def test_frozen_width_narrows_the_frozen_encoders_and_keys(tiny_bundle):
    torch.manual_seed(0)
    model = build_model("llmemf", {"d_id": 16, "frozen_width": 4}, tiny_bundle)
    assert model.widths == {"id": 16, "img": 4, "txt": 4}
    assert model.frozen_keys.shape[1] == 2 * (4 + 1)
    assert "PCA 16 -> 4" in model.describe_features()
    loss = model.loss(next(tiny_bundle.train.iter_batches(32)))
    loss.backward()
    assert torch.isfinite(loss) and model.missing["img"].grad is not None
    model.eval()
    assert torch.isfinite(model.scores(_eval_batch(tiny_bundle), domain=0)).all()


def test_a_loaded_projection_rebuilds_the_frozen_keys_it_was_trained_with(tiny_bundle):
    """A checkpoint whose stored projection differs from the one this machine computes (e.g. axes of nearly
    equal variance rotated) scores with the stored one: the same scores as the model that saved it."""
    torch.manual_seed(0)
    trained = build_model("llmemf", {"d_id": 16, "frozen_width": 4}, tiny_bundle)
    axes = trained.img_projection[1:]
    trained.img_projection[1:] = torch.stack([axes[1], -axes[0], *axes[2:]])  # other axes
    trained._reproject_after_load(None)
    batch = _eval_batch(tiny_bundle)
    trained.eval()
    expected = trained.scores(batch, domain=1)
    fresh = build_model("llmemf", {"d_id": 16, "frozen_width": 4}, tiny_bundle).eval()
    assert not torch.allclose(fresh.frozen_keys, trained.frozen_keys)
    fresh.load_state_dict(trained.state_dict())
    torch.testing.assert_close(fresh.frozen_keys, trained.frozen_keys)
    torch.testing.assert_close(fresh.scores(batch, domain=1), expected)


def test_negatives_as_many_as_a_domains_items_mean_its_full_softmax(tiny_bundle):
    """K >= a domain's items: that domain trains by its full softmax (X has 30 items, Y 40); K = 35
    samples in Y only."""
    batch = next(tiny_bundle.train.iter_batches(16))
    losses = {}
    for k in (0, 40, 35):
        torch.manual_seed(0)
        model = build_model("llmemf", {"d_id": 16, "train_negatives": k, "negative_sampler": "popularity", "dropout": 0.0}, tiny_bundle)
        torch.manual_seed(1)
        losses[k] = model.loss(batch)
    assert [m._samples_negatives(n) for m, n in ((model, 30), (model, 40))] == [False, True]
    torch.testing.assert_close(losses[40], losses[0])
    assert not torch.allclose(losses[35], losses[0])
