import numpy as np
import pytest

from llmemf.reporting.significance import paired_comparison


def test_a_clearly_better_model_is_significant_and_its_gain_is_in_the_interval():
    rng = np.random.default_rng(0)
    base = rng.integers(1, 200, size=400)
    better = np.maximum(1, base // 2)  # every user's target ranked twice as high
    res = paired_comparison(better, base, seed=1)
    assert res.n_users == 400
    assert res.mrr_a == pytest.approx(np.mean(1 / better))
    assert res.mrr_b == pytest.approx(np.mean(1 / base))
    assert res.wilcoxon_p < 1e-6 and res.ttest_p < 1e-6
    gain = np.mean(1 / better - 1 / base)
    assert res.bootstrap_low < gain < res.bootstrap_high
    assert res.bootstrap_low > 0
    assert res.relative_gain == pytest.approx((res.mrr_a - res.mrr_b) / res.mrr_b)


def test_relabelled_noise_is_not_significant():
    rng = np.random.default_rng(3)
    a = rng.integers(1, 1000, size=300)
    b = rng.permutation(a)  # same distribution, users shuffled: no systematic difference
    res = paired_comparison(a, b, seed=2)
    assert res.wilcoxon_p > 0.01 and res.ttest_p > 0.01
    assert res.bootstrap_low < 0 < res.bootstrap_high


def test_identical_runs_give_p_one_and_a_zero_interval():
    r = np.array([1, 5, 9, 2])
    res = paired_comparison(r, r)
    assert res.wilcoxon_p == res.ttest_p == 1.0
    assert res.bootstrap_low == res.bootstrap_high == 0.0


def test_the_t_test_reads_the_mean_where_the_signed_rank_test_reads_the_shape():
    """Equal MRR by construction, one side the mean of three draws' reciprocal ranks and the other one draw (a
    three-seed row against a one-seed row of the same model): the signed-rank test sees the averaged side's
    skew as a difference, the t-test and the bootstrap of the mean do not."""
    rng = np.random.default_rng(0)
    rr = 1.0 / rng.integers(1, 1000, size=(4, 5000))
    res = paired_comparison(1 / rr[:3].mean(0), 1 / rr[3], seed=1)
    assert res.wilcoxon_p < 1e-6
    assert res.ttest_p > 0.05 and res.bootstrap_low < 0 < res.bootstrap_high


def test_unpaired_inputs_are_refused():
    with pytest.raises(ValueError, match="one length"):
        paired_comparison(np.array([1, 2]), np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="no users"):
        paired_comparison(np.array([]), np.array([]))


def test_a_domain_without_test_users_gets_a_row_that_says_so_not_a_crash(tmp_path):
    """The report's paired table over a scenario whose domain Y has no test user (a tiny or filtered log)."""
    import json

    from llmemf.config import config_to_yaml, load_config
    from llmemf.reporting.paper import Collected, significance_table

    plan = []
    for label, model, rr in (("pop", "pop", [1.0, 4.0, 9.0]), ("llmemf", "llmemf", [1.0, 2.0, 3.0])):
        run = tmp_path / label / "seed1"
        run.mkdir(parents=True)
        (run / "config.yaml").write_text(config_to_yaml(load_config(None, [f"model.name={model}", f"dataset={tmp_path}"])))
        metrics = {"X": {"MRR": float(np.mean(1 / np.array(rr)))}, "Y": {"MRR": float("nan")}}
        (run / "results.json").write_text(json.dumps({"model": model, "dataset_content_hash": "h", "test": {"c2dsr": {"metrics": metrics}}}))
        arrays = {}
        for d, ranks in (("X", np.array(rr, np.float32)), ("Y", np.zeros(0, np.float32))):
            arrays[f"test__{d}__users_sha"] = np.array("u" + d)
            arrays[f"test__{d}__targets"] = np.arange(len(ranks), dtype=np.int32)
            arrays[f"test__{d}__cold"] = np.zeros(len(ranks), bool)
            arrays[f"test__c2dsr__{d}__ranks"] = ranks
        np.savez(run / "ranks.npz", **arrays)
        plan.append({"kind": "grid", "label": label, "model": model, "point": {}, "seed": 1, "run": f"{label}/seed1", "selected": True})
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    header, rows = significance_table(Collected(tmp_path, ["pop", "llmemf"]), "c2dsr", "llmemf")
    by_domain = {r[0]: dict(zip(header, r, strict=True)) for r in rows}
    assert by_domain["X"]["users"] == "3" and by_domain["X"]["best baseline"] == "pop"
    assert by_domain["Y"]["paired t p"] == "no test users" and by_domain["Y"]["users"] == "0"
