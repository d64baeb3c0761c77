"""Numeric cross-check of models/tricdr.py against the authors' Tri-CDR code.

    PYTHONPATH=src .venv/bin/python benchmarks/crosscheck_tricdr.py OFFICIAL_CHECKOUT DATASET [--rows 32]

OFFICIAL_CHECKOUT: a checkout of github.com/hulkima/Tri-CDR (model.py, utils.py; read from there,
never copied here). DATASET: an llmemf dataset directory (e.g. Food-Kitchen).

For each target domain d, on the first ``--rows`` training users with at least two items of each
domain: llmemf's Tri-CDR is built (random weights, every bias and LayerNorm perturbed so that the
padding terms are exercised), the same weights are copied into the official SASRec_V12_time_final
(its 'amazon_game' branch: 'target' = domain d), the official inputs are made by the official
code itself (utils.data_partition on these users written as its pickles, utils.sample_function for
the batch and its negatives), and both compute in eval mode (no dropout):
  * the training forward: positive and negative logits, the three projected last-position vectors;
  * the loss terms (Tri_CDR.py:223-244 replayed on the official outputs) with the same negatives;
  * the prediction scores of 100 candidates for the same users' validation histories.
Prints the max absolute differences. Runs on CPU: torch.Tensor.cuda is patched to a no-op.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import pickle
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch

from llmemf.data.batching import DataBundle, left_pad
from llmemf.data.dataset import Dataset
from llmemf.models.base import build_model

INTERVAL = 37868  # hard-coded in the official utils.py:171: ids 1..INTERVAL are the 'toy' (source) domain


def import_official(checkout: Path):
    """model.py and utils.py of the checkout, with its debugging / pickling imports satisfied."""
    sys.modules.setdefault("ipdb", types.SimpleNamespace(set_trace=lambda: (_ for _ in ()).throw(RuntimeError("official code hit ipdb"))))
    try:
        import dill  # noqa: F401
    except ImportError:
        sys.modules["dill"] = pickle  # utils.py only calls dill.load on plain pickles
    torch.Tensor.cuda = lambda self, *a, **k: self  # the official forward moves masks with .cuda()
    sys.path.insert(0, str(checkout))
    import model as off_model
    import utils as off_utils

    return off_model, off_utils


class _Got(Exception):
    pass


class _OneBatch:
    def put(self, item):
        raise _Got(item)


def official_inputs(off_utils, seqs: list[list[int]], n_target: int, seed: int):
    """The official training batch of these users (official ids): data_partition on pickles of
    their logs (each + a dummy valid and test target item, which it holds out), then one
    sample_function draw per user."""
    k_users = len(seqs)
    itemnum = INTERVAL + n_target
    mix = {k + 1: list(s) + [INTERVAL + 1, INTERVAL + 2] for k, s in enumerate(seqs)}
    game = {k: [i - INTERVAL for i in v if i > INTERVAL] for k, v in mix.items()}
    names = np.array([f"g{i}" for i in range(1, n_target + 1)])
    index_mix = {f"t{i}": i for i in range(1, INTERVAL + 1)} | {f"g{i}": INTERVAL + i for i in range(1, n_target + 1)}
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "Dataset").mkdir()
        files = {
            "toy_log_file_final.pkl": {},
            "game_log_file_final.pkl": game,
            "mix_log_file_final.pkl": mix,
            "item_index_toy.pkl": {},
            "item_index_game.pkl": {},
            "item_index_mix.pkl": index_mix,
            "user_index_overleap.pkl": {k: k for k in range(1, k_users + 1)},
        }
        for name, obj in files.items():
            with open(Path(tmp) / "Dataset" / name, "wb") as f:
                pickle.dump(obj, f)
        np.save(Path(tmp) / "Dataset" / "item_index_game.npy", names)
        np.save(Path(tmp) / "Dataset" / "item_index_toy.npy", np.array([]))
        os.chdir(tmp)
        try:
            data = off_utils.data_partition(None, "amazon_game", "Toy_Game", 200)
        finally:
            os.chdir(cwd)
    tr_mix, tr_src, tr_tgt, _, _, mix_idx, src_idx, _, itemnum_read, _ = data
    assert itemnum_read == itemnum
    np.random.seed(seed)
    rows = []
    for k in range(1, k_users + 1):
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                off_utils.sample_function(
                    None, "amazon_game", "Toy_Game", INTERVAL, {1: tr_mix[k]}, {1: tr_src[k]}, {1: tr_tgt[k]}, {1: mix_idx[k]}, {1: src_idx[k]},
                    1, itemnum, 1, 200, _OneBatch(), seed,
                )  # fmt: skip
        except _Got as got:
            rows.append([np.array(x[0]) for x in got.args[0]])
    return [np.stack(col) for col in zip(*rows, strict=True)], itemnum


def window(seqs: list[np.ndarray], to_off: np.ndarray, maxlen: int = 200) -> np.ndarray:
    """Official ids, left-padded with 0 into the maxlen window (utils.py:365-388)."""
    out = np.zeros((len(seqs), maxlen), dtype=np.int32)
    for i, q in enumerate(seqs):
        if len(q):
            out[i, -len(q) :] = to_off[q]
    return out


def copy_weights(ours, off, d: int, to_off: np.ndarray, itemnum: int) -> None:
    """Our direction-d weights into the official model (item rows moved to the official ids)."""
    dr = ours.dirs[d]
    sd = {}
    for role in ("mix", "source", "target"):
        for k, v in getattr(dr, f"enc_{role}").state_dict().items():
            if k == "item_emb.weight":
                w = torch.zeros(itemnum + 1, v.shape[1])
                keep = to_off > 0
                w[torch.from_numpy(to_off[keep])] = v[: len(to_off)][torch.from_numpy(keep)]
                w[0] = v[ours.pad_id]
                v = w
            elif ".conv" in k and k.endswith("weight"):
                v = v[..., None]  # Linear (d, d) -> Conv1d (d, d, 1)
            sd[f"sasrec_embedding_{role}.{k}"] = v
    for name in ("log_feat_map1", "log_feat_map2"):
        for k, v in getattr(dr, name).state_dict().items():
            sd[f"{name}.{k}"] = v
    for role, head in zip(("mix", "source", "target"), dr.heads, strict=True):
        for layer, idx in (("layer1", 0), ("layer2", 2)):
            for k, v in head[idx].state_dict().items():
                sd[f"map_{role}_cl1_{layer}.{k}"] = v
    for k, v in dr.attention.state_dict().items():
        sd[f"model.{k}"] = v
    off.load_state_dict(sd, strict=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("official", type=Path, help="checkout of github.com/hulkima/Tri-CDR")
    ap.add_argument("dataset", type=Path, help="llmemf dataset directory")
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    off_model, off_utils = import_official(args.official)
    torch.set_num_threads(1)

    ds = Dataset.load(args.dataset)
    bundle = DataBundle(ds, 15)
    torch.manual_seed(args.seed)
    ours = build_model("tricdr", {}, bundle).eval()
    with torch.no_grad():  # exercise every bias and LayerNorm (xavier leaves them 0 / 1)
        for p in ours.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    pad = ours.pad_id
    off_args = types.SimpleNamespace(
        device="cpu", hidden_units=64, maxlen=200, dropout_rate=0.2, num_heads=1, num_blocks=2, temperature=5.0, dataset="amazon_game"
    )
    print(f"official: {args.official} | dataset: {args.dataset} | {args.rows} users per direction, eval mode, fp32, CPU\n")
    print("| target domain | quantity | max abs difference | max abs value |")
    print("|---|---|---|---|")
    for d in (0, 1):
        lo, hi = bundle.domain_range(d)
        slo, shi = bundle.domain_range(1 - d)
        # our id -> official id: source items 1..n_src, target items INTERVAL+1.., pad 0
        to_off = np.zeros(bundle.n_items + 1, dtype=np.int64)
        to_off[slo:shi] = np.arange(1, shi - slo + 1)
        to_off[lo:hi] = INTERVAL + 1 + np.arange(hi - lo)
        from_off = {int(o): g for g, o in enumerate(to_off) if o > 0}
        from_off[0] = pad
        train = ds.splits["train"]
        picked, users = [], []
        for user, seq in zip(train["user"], train["items"], strict=True):
            seq = np.asarray(seq)
            in_d = (seq >= lo) & (seq < hi)
            if in_d.sum() > 1 and (~in_d).sum() > 1:
                picked.append(seq)
                users.append(str(user))
            if len(picked) == args.rows:
                break
        (u, seq_mix, seq_src, seq_tgt, pos, neg, mix_idx, src_idx), itemnum = official_inputs(
            off_utils, [to_off[s].tolist() for s in picked], hi - lo, args.seed + d
        )
        torch.manual_seed(0)
        off = off_model.SASRec_V12_time_final(len(picked), itemnum, off_args)
        copy_weights(ours, off, d, to_off, itemnum)
        off.eval()

        rows = {}
        with torch.no_grad():
            o_mix, o_src, o_tgt, o_pos, o_neg = off(u, seq_mix, seq_src, seq_tgt, pos, neg, mix_idx, src_idx)
            # Tri_CDR.py:223-244 (cl_weight = triplet_weight = 1, pair rates 1/3 each, tau 0.1, margin 1)
            bce = torch.nn.BCEWithLogitsLoss()
            idx = np.where(pos != 0)
            o_rec = bce(o_pos[idx], torch.ones(len(idx[0]))) + bce(o_neg[idx], torch.zeros(len(idx[0])))
            ntx = off_model.NTXentLoss(temperature=0.1)
            o_cl = (ntx(o_mix, o_src) + ntx(o_mix, o_tgt) + ntx(o_src, o_tgt)) / 3
            o_tri = torch.nn.TripletMarginLoss(margin=1.0, p=2.0, eps=1e-06)(o_src, o_mix, o_tgt)

            s, _ = left_pad(picked, 15, pad)
            s = torch.from_numpy(s)
            x = ours.direction_inputs(s, d)
            lt = x["target_in"].shape[1]
            negatives = torch.tensor([[from_off[int(v)] for v in row] for row in neg[:, -lt:]])
            out = ours.direction_forward(d, s, negatives)
            terms = ours.direction_losses(out)
            v = out["valid"]
            assert len(out["rows"]) == len(picked) and torch.equal(v, torch.from_numpy(pos[:, -lt:] != 0))
            assert torch.equal(torch.from_numpy(np.vectorize(from_off.get)(pos[:, -lt:]))[v], out["target_next"][v])
            rows["positive logits"] = (out["pos"][v], o_pos[:, -lt:][v])
            rows["negative logits"] = (out["neg"][v], o_neg[:, -lt:][v])
            for k, o in (("mix", o_mix), ("source", o_src), ("target", o_tgt)):
                rows[f"projected {k} vector"] = (out[k], o)
            rows["BCE loss"] = (terms["rec"], o_rec)
            rows["NT-Xent loss"] = (terms["cl"], o_cl)
            rows["triplet loss"] = (terms["triplet"], o_tri)
            rows["total loss"] = (terms["loss"], o_rec + o_cl + o_tri)

            # Prediction on the validation histories of the same users (official predict, model.py:337-393).
            ev = bundle.splits["valid"]
            vrows = np.array([int(np.flatnonzero(ev.user == bundle.user_index[uu])[0]) for uu in users])
            batch = ev.batch(vrows)
            hist = [np.asarray(h) for h in ds.splits["valid"]["items"].to_numpy()[vrows]]
            cand = np.random.default_rng(args.seed).choice(np.arange(lo, hi), 100, replace=False)
            ours_scores = ours.scores(batch, d, torch.from_numpy(np.tile(cand, (len(picked), 1))))

            h_mix = window(hist, to_off)
            h_src = window([h[(h >= slo) & (h < shi)] for h in hist], to_off)
            h_tgt = window([h[(h >= lo) & (h < hi)] for h in hist], to_off)
            o_scores, *_ = off.predict(np.arange(len(hist)), h_mix, h_src, h_tgt, to_off[cand])
            rows["prediction scores (100 candidates)"] = (ours_scores, o_scores)
        name = ds.manifest.domains[d].name
        empty = int((~x["source_mask"].any(-1) & x["valid"]).sum())
        print(f"| {name} | (coverage) | {int(x['valid'].sum())} target positions, {empty} with no source item before the next target | |")
        for k, (a, b) in rows.items():
            print(f"| {name} | {k} | {float((a - b).abs().max()):.2e} | {float(b.abs().max()):.3g} |")


if __name__ == "__main__":
    main()
