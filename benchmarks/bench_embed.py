"""Embedding throughput: the whole `llmemf embed` image path vs the bare model forward on the same batches.

    .venv/bin/python benchmarks/bench_embed.py DATASET [--clip-model ViT-B-32] [--clip-pretrained TAG|FILE] [--bf16 off|on]

Without --clip-pretrained the CLIP weights are randomly initialised (no pretrained weights install
offline here): the compute is that of the real architecture. Writes into DATASET/features/img.* (a
scratch copy of the dataset is advised). Prints items/s of (a) the embed path (decode + preprocess +
forward + write, model load reported apart) and (b) the bare forward on the preprocessed tensors, and
the overhead ratio.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dataset")
    ap.add_argument("--clip-model", default="ViT-B-32")
    ap.add_argument("--clip-pretrained", default="")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--bf16", default="off", choices=["off", "on"])
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from llmemf.data.dataset import Dataset
    from llmemf.features.embed import EmbedConfig, _image_inputs, embed
    from llmemf.features.encoders import ClipEncoder, ClipSpec, load_images

    cfg = EmbedConfig(
        clip_model=args.clip_model,
        clip_pretrained=args.clip_pretrained,
        features=["img"],
        batch_size=args.batch_size,
        bf16=args.bf16,
        force=True,
        progress=False,
        threads=args.threads,
    )
    t0 = time.perf_counter()
    res = embed(args.dataset, cfg, log=lambda s: None)
    t_path = time.perf_counter() - t0
    m = res.written["img"]
    n = m.n_present
    load = res.timings.get("load", 0.0)

    # The bare forward: same model, same images, already preprocessed in memory, same batch size.
    ds = Dataset.load(args.dataset)
    paths, _ = _image_inputs(ds.root, ds.items)
    enc = ClipEncoder(ClipSpec(args.clip_model, args.clip_pretrained), args.threads)
    x, ok = load_images([p for p in paths if p is not None], enc.image_size, 2)
    x = torch.from_numpy(x[ok])
    bf16 = args.bf16 == "on"
    enc.encode_images(x[: args.batch_size], bf16=bf16)  # warm-up
    t0 = time.perf_counter()
    for s in range(0, len(x), args.batch_size):
        enc.encode_images(x[s : s + args.batch_size], bf16=bf16)
    t_bare = time.perf_counter() - t0

    steady = t_path - load
    print(f"model {m.encoder} [{m.weights}], {n} images at {enc.image_size}px")
    print(f"batch {args.batch_size}, bf16={bf16}, threads={torch.get_num_threads()}")
    print(f"{'':34s} {'seconds':>8s} {'items/s':>8s}")
    print(f"{'embed path, incl. model load':34s} {t_path:8.2f} {n / t_path:8.1f}")
    print(f"{'embed path, excl. model load':34s} {steady:8.2f} {n / steady:8.1f}")
    print(f"{'bare forward (same batches)':34s} {t_bare:8.2f} {n / t_bare:8.1f}")
    print("  path timings: " + ", ".join(f"{k} {v:.2f}s" for k, v in res.timings.items()))
    print(f"overhead excl. load: {steady / t_bare - 1:+.1%}   incl. load: {t_path / t_bare - 1:+.1%}")
    fwd = res.timings.get("forward_img", 0.0)
    # On a shared machine the two forward timings drift apart with the load; the path's own non-forward
    # time (decode, preprocess, write) against its own forward time is the overhead the path adds.
    print(f"path's non-forward time / its forward time: {(steady - fwd) / fwd:+.1%}")
    assert np.isfinite(t_bare)


if __name__ == "__main__":
    main()
