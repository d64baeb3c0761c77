"""Embedding through the real loaders: a tiny random open_clip model saved as a local checkpoint,
the packaged sentence-transformers model, and the offline LiT image encoder; masks, chunking,
manifests and recompute-only-on-change."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from feature_helpers import make_image_dataset
from PIL import Image

from llmemf.features.embed import EmbedConfig, embed
from llmemf.features.encoders import ClipEncoder, ClipSpec, _import_open_clip, clip_preprocess
from llmemf.features.store import feature_identity, load_feature

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    """A randomly initialised open_clip model written the way open_clip reads a local checkpoint."""
    from safetensors.torch import save_file

    open_clip = _import_open_clip()
    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY_CLIP)
    d = tmp_path_factory.mktemp("tiny_clip")
    (d / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP, "preprocess_cfg": {"size": 32}}))
    save_file({k: v.contiguous().clone() for k, v in model.state_dict().items()}, str(d / "open_clip_model.safetensors"))
    return d, model.eval()


def test_clip_preprocess_is_resize_short_side_then_center_crop():
    im = Image.new("RGB", (80, 40), (255, 0, 0))
    im.paste((0, 0, 255), (0, 0, 20, 40))  # a blue band on the left, cropped away by the center crop
    x = clip_preprocess(im, 32)
    assert x.shape == (3, 32, 32) and x.dtype == np.float32
    red = (np.array([1.0, 0, 0]) - np.array([0.48145466, 0.4578275, 0.40821073])) / np.array([0.26862954, 0.26130258, 0.27577711])
    np.testing.assert_allclose(x[:, 16, 16], red, atol=1e-5)
    np.testing.assert_allclose(x[:, 16, 4], red, atol=0.05)  # 80x40 -> 64x32, crop from 16: the band (0..16) is gone


def test_local_clip_checkpoint_chunking_masks_and_cache(tmp_path, tiny_clip_dir):
    d, ref = tiny_clip_dir
    ds = make_image_dataset(tmp_path / "ds", n_x=6, n_y=6)
    long_text = " ".join(f"word{i}" for i in range(150))  # ~450 BPE tokens: several 77-token chunks
    ds.items["llm_text"] = [long_text] + [None] * 11
    ds.save_items()
    cfg = EmbedConfig(clip_model=f"local-dir:{d}", progress=False, batch_size=4)  # 3 image batches, decoded ahead
    logs: list[str] = []
    res = embed(tmp_path / "ds", cfg, log=logs.append)
    assert sorted(res.written) == ["img", "txt_llm", "txt_title"]
    img = load_feature(tmp_path / "ds", "img", n_items=12)
    assert img.values.shape == (12, 32) and img.manifest.encoder.startswith("open_clip:local-dir:")
    assert img.manifest.weights.startswith("sha256:")
    assert img.mask.tolist() == [i not in (5, 6) for i in range(12)]  # missing + corrupt files are masked rows
    assert img.manifest.notes["missing_images"] == 1 and img.manifest.notes["corrupt_images"] == 1
    # The loaded weights are the saved ones: same embedding as the in-memory reference model.
    for i in (0, 11):  # first and last batch: rows stay aligned with their items
        x = torch.from_numpy(clip_preprocess(Image.open(tmp_path / f"ds/images/{i}.png"), 32))[None]
        want = F.normalize(ref.encode_image(x), dim=-1)[0].detach().numpy()
        np.testing.assert_allclose(img.values[i].astype(np.float32), want, atol=2e-3)
    # The long text was chunked (never silently truncated) and its embedding is the chunks' mean direction.
    txt = load_feature(tmp_path / "ds", "txt_llm")
    assert txt.manifest.notes["chunked_texts"] == 1 and any("chunked" in line for line in logs)
    enc = ClipEncoder(ClipSpec(f"local-dir:{d}"))
    tokens, owner, _ = enc.tokenize_chunks([f"{ds.items['title'][0]}. {long_text}"])
    assert len(tokens) >= 4 and (owner == 0).all()
    with torch.inference_mode():
        mean = F.normalize(F.normalize(ref.encode_text(tokens), dim=-1).mean(0), dim=0).numpy()
    np.testing.assert_allclose(txt.values[0].astype(np.float32), mean, atol=2e-3)
    assert load_feature(tmp_path / "ds", "txt_title").manifest.notes["chunked_texts"] == 0

    again = embed(tmp_path / "ds", cfg, log=lambda s: None)  # nothing changed: nothing recomputed
    assert again.written == {} and sorted(again.up_to_date) == ["img", "txt_llm", "txt_title"]
    items = pd.read_parquet(tmp_path / "ds/items.parquet")
    items.loc[3, "title"] = "a brand new title"
    ds.items = items
    ds.save_items()
    third = embed(tmp_path / "ds", cfg, log=lambda s: None)  # a title changed: text features only
    assert sorted(third.written) == ["txt_llm", "txt_title"] and third.up_to_date == ["img"]


def test_offline_text_and_lit_image_encoder(tmp_path):
    make_image_dataset(tmp_path / "ds", n_x=36, n_y=36)
    cfg = EmbedConfig(progress=False)
    cfg.lit.epochs = 6
    logs: list[str] = []
    res = embed(tmp_path / "ds", cfg, log=logs.append)
    title = load_feature(tmp_path / "ds", "txt_title")
    assert title.values.shape == (72, 384) and title.manifest.encoder == "sentence-transformers:all-MiniLM-L6-v2"
    img = load_feature(tmp_path / "ds", "img")
    assert img.manifest.encoder == "offline-lit:tinycnn32" and "OFFLINE" in img.manifest.notes["encoder_description"]
    assert any("no CLIP weights given" in line for line in logs)
    assert img.values.shape == (72, 384) and img.mask.sum() == 70
    # The image features live in the text space: an image is closer to titles sharing its colour/shape.
    v, t = img.values.astype(np.float32), title.values.astype(np.float32)
    ok = img.mask
    sims = v[ok] @ t[ok].T
    titles = pd.read_parquet(tmp_path / "ds/items.parquet")["title"].to_numpy()[ok]
    colour = np.array([s.split()[0] for s in titles])
    same = colour[:, None] == colour[None, :]
    assert sims[same].mean() > sims[~same].mean() + 0.05
    ckpt = tmp_path / "ds" / img.manifest.notes["checkpoint"]
    state = torch.load(ckpt, weights_only=True)  # a plain state_dict
    assert all(isinstance(x, torch.Tensor) for x in state.values())
    assert res.written["img"].notes["lit_n_train"] > 0
    cfg.force = True  # recompute: the cached encoder is reused, not retrained
    logs.clear()
    embed(tmp_path / "ds", cfg, log=logs.append)
    assert any("loaded from cache" in line for line in logs)
    np.testing.assert_allclose(load_feature(tmp_path / "ds", "img").values, img.values)


def test_the_same_weights_installed_again_elsewhere_give_the_same_feature_and_another_precision_another(tmp_path, tiny_clip_dir):
    """A feature's identity (what a run records) follows the weights' bytes and the values computed, never
    where or when the weights were installed: a reinstall (new directory, new file times) recomputes
    nothing and leaves the identity as it was, while values computed in another precision are another feature."""
    d, _ = tiny_clip_dir
    make_image_dataset(tmp_path / "ds", n_x=6, n_y=6)
    cfg = EmbedConfig(clip_model=f"local-dir:{d}", progress=False, features=["txt_title"], bf16="off")
    embed(tmp_path / "ds", cfg, log=lambda s: None)
    first = feature_identity(tmp_path / "ds", "txt_title")

    reinstalled = tmp_path / "site-packages" / "clip"
    shutil.copytree(d, reinstalled)
    for f in reinstalled.iterdir():
        os.utime(f, ns=(1, 1))
    again = embed(tmp_path / "ds", dataclasses.replace(cfg, clip_model=f"local-dir:{reinstalled}"), log=lambda s: None)
    assert again.written == {} and again.up_to_date == ["txt_title"]
    assert feature_identity(tmp_path / "ds", "txt_title") == first

    embed(tmp_path / "ds", dataclasses.replace(cfg, clip_model=f"local-dir:{reinstalled}", force=True), log=lambda s: None)
    assert feature_identity(tmp_path / "ds", "txt_title") == first  # computed again, the same values
    embed(tmp_path / "ds", dataclasses.replace(cfg, bf16="on", force=True), log=lambda s: None)
    assert feature_identity(tmp_path / "ds", "txt_title") != first  # bf16 autocast: other values
