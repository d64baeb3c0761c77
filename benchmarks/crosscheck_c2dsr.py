"""Numeric cross-check of llmemf's C2DSR against the official code, with the same weights.

    PYTHONPATH=src .venv/bin/python benchmarks/crosscheck_c2dsr.py OFFICIAL_CHECKOUT DATASET [--rows 256] [--eval-rows 512]

OFFICIAL_CHECKOUT is a checkout of cjx96/C2DSR (the directory holding ``C2DSR_src/``; never copied into
this repository). DATASET is an llmemf dataset imported from the C2DSR files (e.g. Food-Kitchen). The
script writes the dataset back in the official file format into a temporary directory, runs the
official loader and GraphMaker on it (so that the official code builds its own batches, corruptions
and graphs), builds the official model (``opt`` = train_rec.py's defaults, dropout 0 so that both
sides are deterministic, on the CPU: ``.cuda()`` is made a no-op at run time, nothing is edited on
disk), copies its weights into llmemf's model (``weight_map``), and prints the max absolute differences:

* the graphs (mixed, and the single-domain X and Y blocks),
* the training loss of the first official batch and the gradient of every mapped weight
  (official ``CDSRTrainer.train_batch`` with lr 0, which computes the loss and gradients; llmemf's
  ``C2DSR.loss`` on the same users, fed the official corrupted sequences),
* the forward pass on validation rows: the merged state at the last position and the scores of
  every item of the target's domain (official ``test_batch``'s lin_X(share + specific)).

The old code needs nothing beyond numpy, scipy, torch and tqdm; what no longer runs as written is
patched here at run time only (``Tensor.cuda`` on a CPU-only torch, ``random.shuffle`` of the
loader turned off so that its first batch is the first rows of the file).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import random
import sys
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from official_c2dsr import OFFICIAL_OPT, import_official, official_files


def weight_map(o: dict[str, torch.Tensor], ours, n_x: int, n_y: int, grads: bool = False) -> dict[str, torch.Tensor]:
    """llmemf state-dict name -> the official tensor it takes, from ``o`` (official name -> weight, or -> gradient
    with ``grads``), sliced or reshaped where the layouts differ."""
    out: dict[str, torch.Tensor] = {}
    pad_row = lambda t: torch.zeros_like(t[:1])  # noqa: E731  (llmemf's X / Y tables end with a padding row)
    out["item_xy.weight"] = o["item_emb.weight"]
    out["item_x.weight"] = torch.cat([o["item_emb_X.weight"][:n_x], pad_row(o["item_emb_X.weight"])])
    out["item_y.weight"] = torch.cat([o["item_emb_Y.weight"][n_x : n_x + n_y], pad_row(o["item_emb_Y.weight"])])
    for mine, theirs in (("gnn_xy", "GNN_encoder"), ("gnn_x", "GNN_encoder_X"), ("gnn_y", "GNN_encoder_Y")):
        for layer in range(len(getattr(ours, mine).bias)):
            out[f"{mine}.bias.{layer}"] = o[f"{theirs}.encoder.{layer}.gc1.bias"]
    for mine, theirs in (("enc_xy", "encoder"), ("enc_x", "encoder_X"), ("enc_y", "encoder_Y")):
        official_pos = o[f"{theirs}.pos_emb.weight"]  # max_len rows; llmemf has one more (position max_len, unused here)
        extra = getattr(ours, mine).pos.weight.detach()[official_pos.shape[0] :]
        out[f"{mine}.pos.weight"] = torch.cat([official_pos, torch.zeros_like(extra) if grads else extra])
        for i in range(len(getattr(ours, mine).attn)):
            for p in ("weight", "bias"):
                out[f"{mine}.attn_norm.{i}.{p}"] = o[f"{theirs}.attention_layernorms.{i}.{p}"]
                out[f"{mine}.ffn_norm.{i}.{p}"] = o[f"{theirs}.forward_layernorms.{i}.{p}"]
            for p in ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"):
                out[f"{mine}.attn.{i}.{p}"] = o[f"{theirs}.attention_layers.{i}.{p}"]
            for k in (1, 2):  # Conv1d(d, d, 1) -> Linear(d, d)
                out[f"{mine}.ffn.{i}.lin{k}.weight"] = o[f"{theirs}.forward_layers.{i}.conv{k}.weight"][:, :, 0]
                out[f"{mine}.ffn.{i}.lin{k}.bias"] = o[f"{theirs}.forward_layers.{i}.conv{k}.bias"]
        for p in ("weight", "bias"):
            out[f"{mine}.norm.{p}"] = o[f"{theirs}.last_layernorm.{p}"]
    for mine, theirs in (("lin_x", "lin_X"), ("lin_y", "lin_Y"), ("lin_pad", "lin_PAD"), ("disc_x", "D_X.f_k"), ("disc_y", "D_Y.f_k")):
        for p in ("weight", "bias"):
            out[f"{mine}.{p}"] = o[f"{theirs}.{p}"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("official", type=Path, help="checkout of cjx96/C2DSR (holds C2DSR_src/)")
    ap.add_argument("dataset", type=Path, help="llmemf dataset directory (C2DSR scenario)")
    ap.add_argument("--eval-rows", type=int, default=512, help="validation rows for the forward-pass comparison")
    ap.add_argument("--seed", type=int, default=2040, help="the official default seed")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--per-weight", action="store_true", help="also print every weight's gradient difference")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from llmemf.data.batching import DataBundle, domain_masks
    from llmemf.data.dataset import Dataset
    from llmemf.models.base import build_model

    ds = Dataset.load(args.dataset)
    n_x, n_y = ds.manifest.domains[0].n_items, ds.manifest.domains[1].n_items
    bundle = DataBundle(ds, max_len=15)

    # ---- the official side, run at run time from the checkout (CPU: .cuda() becomes a no-op)
    official_loader, CDSRTrainer, GraphMaker = import_official(args.official)
    official_loader.random.shuffle = lambda x: None  # first batch = first rows of the file
    name = ds.manifest.name
    stack = contextlib.ExitStack()
    stack.enter_context(official_files(ds))
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    opt = {**OFFICIAL_OPT, "data_dir": name, "dropout": 0.0, "lr": 0.0}  # deterministic; lr 0: train_batch only computes
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # the loader prints "pass sequence x/y" for each row it drops
        train_batches = official_loader.DataLoader(name, opt["batch_size"], opt, evaluation=-1)
    dropped = printed.getvalue().count("pass sequence")
    valid_batches = official_loader.DataLoader(name, opt["batch_size"], opt, evaluation=2)
    opt["itemnum"] = opt["source_item_num"] + opt["target_item_num"] + 1
    graph = GraphMaker(opt, f"./dataset/{name}/traindata_new.txt")
    trainer = CDSRTrainer(opt, graph.adj, graph.adj_single)
    stack.close()
    official = trainer.model

    # ---- llmemf's side with the official weights
    ours = build_model("c2dsr", {"hidden": 256, "dropout": 0.0}, bundle)
    state = ours.state_dict()
    mapped = weight_map(dict(official.named_parameters()), ours, n_x, n_y)
    missing = sorted(set(state) - set(mapped))
    if missing:
        sys.exit(f"unmapped llmemf weights: {missing}")
    ours.load_state_dict({k: v.detach().clone() for k, v in mapped.items()})

    rows = []

    def report(what: str, a: torch.Tensor, b: torch.Tensor) -> None:
        a, b = a.detach().double(), b.detach().double()
        rows.append((what, float((a - b).abs().max()), float(b.abs().max())))

    # graphs (compared sparse: a dense 64k x 64k matrix is 16 GB)
    def scipy_of(t: torch.Tensor) -> sp.csr_matrix:
        t = t.coalesce()
        i = t.indices().numpy()
        return sp.csr_matrix((t.values().double().numpy(), (i[0], i[1])), shape=tuple(t.shape))

    def graph_diff(what: str, mine: sp.csr_matrix, theirs: sp.csr_matrix) -> None:
        diff = (mine.astype(np.float64) - theirs).tocsr()
        rows.append((what, float(np.abs(diff.data).max(initial=0.0)), float(np.abs(theirs.data).max(initial=0.0))))

    adj, adj_single = scipy_of(graph.adj), scipy_of(graph.adj_single)
    graph_diff("graph: mixed", ours.adj[0], adj[: n_x + n_y, : n_x + n_y])
    graph_diff("graph: X", ours.adj[1], adj_single[:n_x, :n_x])
    graph_diff("graph: Y", ours.adj[2], adj_single[n_x : n_x + n_y, n_x : n_x + n_y])
    cross = adj_single[:n_x, n_x:].nnz + adj_single[n_x:, :n_x].nnz
    rows.append(("graph: official single-domain edges across domains (count)", float(cross), 0.0))

    rows.append(("official training rows dropped by its loader (count)", float(dropped), float(len(ds.splits["train"]))))

    # training loss and gradients of the first official batch
    b = next(iter(train_batches))
    seq, corru_x, corru_y = b[0], b[16], b[17]
    train = bundle.train
    padded = np.full((len(train), 15), ds.pad_id)
    for i, s in enumerate(ds.splits["train"]["items"]):
        s = np.asarray(s[:-1])
        padded[i, 15 - len(s) :] = s
    picked, j = [], 0
    for i in range(len(train)):  # official rows are the file's rows minus the ones it skips, in order
        if j < len(seq) and np.array_equal(padded[i], seq[j].numpy()):
            picked.append(i)
            j += 1
    if j != len(seq):
        sys.exit(f"matched {j} of {len(seq)} official training rows")
    batch = train.batch(np.array(picked))
    ours.corruptions = lambda _b, _xy: (corru_y, corru_x)  # random X items (at X positions of corru_y), random Y items
    official_loss = trainer.train_batch(b)  # lr 0: computes loss and gradients, moves nothing
    ours.train()
    loss = ours.loss(batch)
    loss.backward()
    report("training loss (first batch)", loss, torch.tensor(official_loss))
    # (the official GraphConvolution weights are never used by its forward: they get no gradient and are not mapped)
    official_grads = {k: (p.grad if p.grad is not None else torch.zeros_like(p)) for k, p in official.named_parameters()}
    want = weight_map(official_grads, ours, n_x, n_y, grads=True)
    per_weight = []
    for k, p in ours.named_parameters():
        g, w = p.grad.double(), want[k].double()
        per_weight.append((float((g - w).abs().max()), float(w.abs().max()), float((g - w).norm() / w.norm().clamp(min=1e-30)), k))
    worst = max(per_weight)
    rows.append((f"gradients, every weight (worst: {worst[3]})", worst[0], worst[1]))
    worst_rel = max(per_weight, key=lambda t: t[2])
    rows.append((f"gradients: largest ||diff|| / ||official|| ({worst_rel[3]})", worst_rel[2], 1.0))

    # forward pass and scores on validation rows
    official.eval()
    ours.eval()
    vb = valid_batches.data[0][: args.eval_rows]
    cols = list(zip(*vb, strict=True))
    seq, x_seq, y_seq, pos, xpos, ypos = (torch.LongTensor(c) for c in cols[:6])
    x_last, y_last, xory = (torch.LongTensor(c) for c in cols[6:9])
    with torch.no_grad():
        official.graph_convolution()
        h, hx, hy = official(seq, x_seq, y_seq, pos, xpos, ypos)
        ev = bundle.splits["valid"].batch(np.arange(len(vb)))
        r = torch.arange(len(vb))
        xy = ours._left_pad(ev.xy)
        is_x, is_y = domain_masks(xy, n_x, ours.pad_id)
        report("forward: merged encoder, every position", ours.enc_xy(ours._view_inputs(0, xy), xy != ours.pad_id), h)
        report("forward: X encoder, every position", ours._domain_view(xy, is_x, 0), hx)
        report("forward: Y encoder, every position", ours._domain_view(xy, is_y, 1), hy)
        for d, (lin, spec, last) in enumerate(((official.lin_X, hx, x_last), (official.lin_Y, hy, y_last))):
            rows_d = xory == d
            want = lin(h[r, -1] + spec[r, last])[rows_d]
            got = ours.scores(ev, d)[rows_d]
            report(f"scores, {'X' if d == 0 else 'Y'}-target rows, every item of the domain", got, want)

    print(f"official checkout: {args.official.resolve()}")
    print(f"dataset: {args.dataset}  (first official training batch: {len(picked)} rows; {len(vb)} validation rows)\n")
    print(f"| {'compared':62s} | max abs difference | max abs official value |")
    print(f"|{'-' * 64}|--------------------|------------------------|")
    for what, diff, scale in rows:
        print(f"| {what:62s} | {diff:18.3e} | {scale:22.3e} |")
    if args.per_weight:
        print("\n| weight | max abs gradient difference | max abs official gradient | relative L2 difference |\n|---|---|---|---|")
        for diff, scale, rel, k in per_weight:
            print(f"| {k} | {diff:.3e} | {scale:.3e} | {rel:.3e} |")


if __name__ == "__main__":
    main()
