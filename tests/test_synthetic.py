"""The embedded synthetic shop: deterministic, sized as asked, leak-free, and each modality carries
the attributes it is meant to (and only those)."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from llmemf.data.dataset import Dataset
from llmemf.data.synthetic import (
    BRANDS,
    CATEGORIES,
    COLOUR_RGB,
    COLOURS,
    PATTERNS,
    STYLES,
    SyntheticConfig,
    SyntheticConfigError,
    generate_synthetic,
    png_bytes,
    render_image,
)

SMALL = ["n_users=400", "n_items_x=150", "n_items_y=200", "image_size=32", "seed=3"]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn") / "a"
    cfg = SyntheticConfig.from_overrides(SMALL)
    generate_synthetic(cfg, out)
    return cfg, out, Dataset.load(out)


def _all_bytes(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_differs(small, tmp_path):
    cfg, out, ds = small
    again = generate_synthetic(SyntheticConfig.from_overrides(SMALL), tmp_path / "b")
    assert again.manifest.content_hash == ds.manifest.content_hash
    a, b = _all_bytes(out), _all_bytes(tmp_path / "b")
    assert a.keys() == b.keys()
    assert all(a[k] == b[k] for k in a), [k for k in a if a[k] != b[k]]  # parquet, json and every PNG
    other = generate_synthetic(SyntheticConfig.from_overrides(SMALL[:-1] + ["seed=4"]), tmp_path / "c")
    assert other.manifest.content_hash != ds.manifest.content_hash


def test_sizes_and_split_counts(small):
    cfg, out, ds = small
    assert [d.n_items for d in ds.manifest.domains] == [150, 200]
    assert ds.domain_names == ["Apparel", "Home"]
    n_eval = round(400 * cfg.eval_fraction)
    assert ds.manifest.splits == {"train": 400 - 2 * n_eval, "valid": n_eval, "test": n_eval}
    users = [set(ds.splits[s]["user"]) for s in ("train", "valid", "test")]
    assert sum(len(u) for u in users) == len(set.union(*users)) == 400  # every user in exactly one split
    assert len(list((out / "images").glob("*.png"))) == 350
    img = Image.open(out / ds.items["image"].iloc[0])
    assert img.size == (32, 32) and img.format == "PNG"
    for split, df in ds.splits.items():
        lengths = df["items"].map(len) + (1 if split != "train" else 0)
        assert lengths.min() >= cfg.min_len and lengths.max() <= cfg.max_len


def test_time_order_targets_and_no_leakage(small):
    _, _, ds = small
    train_max = max(max(t) for t in ds.splits["train"]["timestamps"])
    valid, test = ds.splits["valid"], ds.splits["test"]
    assert train_max < valid["target_timestamp"].min()
    assert valid["target_timestamp"].max() < test["target_timestamp"].min()
    for df in ds.splits.values():
        for ts in df["timestamps"]:
            assert np.all(np.diff(ts) > 0)  # strictly increasing
    for df in (valid, test):
        assert (df["timestamps"].map(max) < df["target_timestamp"]).all()  # the target is the final interaction
        assert (df["target_domain"].to_numpy() == ds.item_domains()[df["target"].to_numpy()]).all()
        assert set(df["target_domain"]) == {0, 1}


def test_cold_items_only_as_targets(small):
    cfg, out, ds = small
    cold = json.loads((out / "cold_items.json").read_text())
    ids = set(cold["items"])
    assert len(cold["by_domain"]["Apparel"]) == round(150 * cfg.cold_fraction) and len(cold["by_domain"]["Home"]) == round(200 * cfg.cold_fraction)
    for split, df in ds.splits.items():
        for seq in df["items"]:
            assert not ids & set(seq), f"cold item in a {split} sequence"
    targets = set(ds.splits["valid"]["target"]) | set(ds.splits["test"]["target"])
    assert ids & targets, "no cold item is ever a target"


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+(?:-[a-z]+)*", text.lower()))


def test_text_carries_text_attributes_never_visual_only_ones(small):
    _, out, ds = small
    attrs = pd.read_parquet(out / "attributes.parquet")
    banned = set(COLOURS) | set(PATTERNS) | {"colour", "color", "pattern", "solid"}
    for text, a in zip(ds.items["title"] + " " + ds.items["description"], attrs.to_dict("records"), strict=True):
        words = _words(text)
        assert not words & banned, (text, words & banned)
        assert a["brand_name"].lower() in words and a["material"] in words
        assert a["style_name"] in words and a["category_name"] in text
    assert attrs["price_band_name"].nunique() == 3
    assert all(a["title"] not in ("", None) for a in ds.items.to_dict("records"))


def _nearest_colour_votes(img: Image.Image) -> np.ndarray:
    px = np.asarray(img.convert("RGB"), dtype=np.float32).reshape(-1, 3)
    palette = np.asarray(COLOUR_RGB, dtype=np.float32)
    d = ((px[:, None, :] - palette[None]) ** 2).sum(-1)  # (P, 8)
    close = d.min(1) < 45.0**2  # pixels that are a palette colour (not background, not ink)
    return np.bincount(d.argmin(1)[close], minlength=len(COLOURS))


def test_images_show_colour_and_ignore_text_attributes(small):
    _, out, ds = small
    attrs = pd.read_parquet(out / "attributes.parquet").to_dict("records")
    for a, rel in zip(attrs, ds.items["image"], strict=True):
        votes = _nearest_colour_votes(Image.open(out / rel))
        assert votes.argmax() == a["colour"], (rel, a["colour_name"], votes)
    a = dict(attrs[0])
    ref = png_bytes(render_image(a, seed=11, size=48))
    for key, n in (("brand", len(BRANDS)), ("material_family", 3), ("price_band", 3), ("price", 500)):
        changed = dict(a, **{key: (a[key] + 1) % n}, material="velvet")
        assert png_bytes(render_image(changed, seed=11, size=48)) == ref, f"{key} leaked into the image"
    for key, n in (("colour", len(COLOURS)), ("pattern", len(PATTERNS)), ("style", len(STYLES)), ("category", len(CATEGORIES[0]))):
        assert png_bytes(render_image(dict(a, **{key: (a[key] + 1) % n}), seed=11, size=48)) != ref, f"{key} is not visible"


def _attr_mrr(ds: Dataset, attrs: pd.DataFrame, keys: tuple[str, ...], shuffle: bool = False) -> float:
    """Full-ranking MRR over all users' final items of a scorer that counts how often a candidate's values of
    ``keys`` occur in the user's history: how much of the next item those attributes alone explain.
    ``shuffle`` pairs each target with another user's history (the no-signal control)."""
    tr = ds.splits["train"]  # each training sequence's last item, predicted from its prefix, adds lines
    tr = pd.DataFrame({"items": tr["items"].map(lambda s: list(s[:-1])), "target": tr["items"].map(lambda s: int(s[-1]))})
    tr["target_domain"] = ds.item_domains()[tr["target"].to_numpy()]
    df = pd.concat([ds.splits["valid"], ds.splits["test"], tr], ignore_index=True)
    hists = list(df["items"])
    if shuffle:
        hists = [hists[i] for i in np.random.default_rng(0).permutation(len(hists))]
    vals = attrs[list(keys)].to_numpy()
    rr = []
    for hist, target, dom in zip(hists, df["target"], df["target_domain"], strict=True):
        lo, hi = ds.manifest.domain_range(int(dom))
        score = np.zeros(hi - lo)
        for j in range(len(keys)):
            counts = np.bincount(vals[np.asarray(hist), j], minlength=vals[:, j].max() + 1)
            score += counts[vals[lo:hi, j]]
        t = score[target - lo]
        rank = 1 + (score > t).sum() + 0.5 * ((score == t).sum() - 1)  # ties averaged
        rr.append(1.0 / rank)
    return float(np.mean(rr))


def test_image_only_and_text_only_attributes_each_predict_the_next_item(small):
    """The users' hidden tastes really are visible through each modality's own attributes."""
    _, out, ds = small
    attrs = pd.read_parquet(out / "attributes.parquet")
    for keys in (("colour", "pattern"), ("brand", "material_family", "price_band")):
        real, control = _attr_mrr(ds, attrs, keys), _attr_mrr(ds, attrs, keys, shuffle=True)
        assert real > 1.5 * control, (keys, real, control)


def test_overrides_are_checked():
    cfg = SyntheticConfig.from_overrides(["n_users=300", "cold_fraction=0.1"])
    assert cfg.n_users == 300 and cfg.cold_fraction == 0.1 and cfg.seed == 0
    with pytest.raises(SyntheticConfigError, match="unknown synthetic option 'n_user'"):
        SyntheticConfig.from_overrides(["n_user=3"])
    with pytest.raises(SyntheticConfigError, match="expected int"):
        SyntheticConfig.from_overrides(["n_users=lots"])
    with pytest.raises(SyntheticConfigError, match="not key=value"):
        SyntheticConfig.from_overrides(["seed"])
    with pytest.raises(SyntheticConfigError, match="eval_fraction"):
        SyntheticConfig.from_overrides(["eval_fraction=0.7"])


def test_cli_prepare_synthetic(tmp_path):
    from llmemf.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["prepare", "synthetic", str(tmp_path / "s"), "n_users=60", "n_items_x=30", "n_items_y=30", "image_size=16"])
    assert res.exit_code == 0, res.output
    assert "Apparel: 30 items" in res.output and "valid: 9 sequences" in res.output
    assert Dataset.load(tmp_path / "s").manifest.splits["train"] == 42
    bad = runner.invoke(app, ["prepare", "synthetic", str(tmp_path / "t"), "n_usr=5"])
    assert bad.exit_code == 2 and "unknown synthetic option" in bad.output
