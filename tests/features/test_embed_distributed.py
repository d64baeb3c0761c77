"""`llmemf embed` under torchrun (gloo, loopback): two ranks each encode half of the items, rank 0 writes
one feature file per feature, equal to a one-process embedding of the same dataset."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from feature_helpers import make_image_dataset
from test_embed import TINY_CLIP

from llmemf.features.embed import EmbedConfig, embed
from llmemf.features.store import load_feature

ROOT = Path(__file__).resolve().parents[2]


def test_two_ranks_write_the_features_one_process_writes(tmp_path):
    from safetensors.torch import save_file

    from llmemf.features.encoders import _import_open_clip

    torch.manual_seed(0)
    model = _import_open_clip().CLIP(**TINY_CLIP)
    clip = tmp_path / "clip"
    clip.mkdir()
    (clip / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP, "preprocess_cfg": {"size": 32}}))
    save_file({k: v.contiguous().clone() for k, v in model.state_dict().items()}, str(clip / "open_clip_model.safetensors"))
    make_image_dataset(tmp_path / "one", n_x=9, n_y=8)  # 17 items: the ranks' shares differ in size
    shutil.copytree(tmp_path / "one", tmp_path / "two")
    opts = {"clip_model": f"local-dir:{clip}", "features": ["img", "txt_title"], "batch_size": 4, "bf16": "off", "progress": False}
    embed(tmp_path / "one", EmbedConfig(**opts), log=lambda _: None)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}"]
    cmd += ["--local-addr=127.0.0.1", "-m", "llmemf.cli", "embed", str(tmp_path / "two"), "--clip-model", opts["clip_model"]]
    cmd += ["--features", "img,txt_title", "--batch-size", "4", "--bf16", "off", "--no-progress"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("embed: 2 written") == 1  # rank 0 alone reports
    for name in ("img", "txt_title"):
        a, b = load_feature(tmp_path / "one", name), load_feature(tmp_path / "two", name)
        np.testing.assert_array_equal(a.mask, b.mask)
        np.testing.assert_allclose(a.values.astype(np.float32), b.values.astype(np.float32), atol=2e-3)
        assert a.manifest.source_hash == b.manifest.source_hash and a.manifest.notes == b.manifest.notes
