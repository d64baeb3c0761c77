"""Tri-CDR (Ma et al., Triple Sequence Learning for Cross-domain Recommendation, ACM TOIS 2024),
as the authors' code computes it (hulkima/Tri-CDR at 11ed252: model.py, Tri_CDR.py, utils.py;
docs/baselines.md maps every component to its line there).

The official code trains one model per target domain. Here one Tri-CDR holds both, ``dirs[d]``
for target domain d: each has three SASRec encoders (mixed, source-domain and target-domain
sequence), a DIN-style target attention (TCA), a fusion MLP (3d -> d), and projection heads for
the contrastive terms. The two share no parameter, so training them on the sum of their losses
with one Adam is training each on its own; what they share is the batches, the learning-rate
schedule and the checkpoint choice (mean validation MRR over both domains: the shared protocol).

Per direction, for the target sequence t_1..t_n of the user's training sequence s (its items of
domain d; s itself is the mixed sequence, its other items the source sequence):
* three encoders (official SASRec blocks: Q = LN(x), x = Q + MHA(Q, x, x), x = FFN(LN(x)) + LN(x))
  over the left-padded sequences in a window of ``seq_len`` positions (official maxlen 200);
* at the input t_j (predicting t_{j+1}), the target-encoder state q queries, by DIN attention
  (MLP over [f, q, f*q, q-f, mean of the mixed states], masked softmax), the mixed states before
  t_{j+1}, the source states before t_{j+1} and the target states up to t_j;
* the three attended vectors, concatenated, -> Linear(3d, d) -> LeakyReLU -> Linear(d, d);
* score = 5 * cosine(that, target encoder's item vector); loss = BCE on the next target item and
  one negative drawn uniformly from domain d outside the user's domain-d items, per position;
* + cl_weight * NT-Xent (tau 0.1) over the three pairs of projected last-position vectors
  + triplet_weight * TripletMarginLoss(anchor = source, positive = mixed, negative = target, L2, margin 1).
Encoders start from SASRec pre-trained on each sequence (``stage=pretrain``, then ``init_from``).

Padding: the official encoders attend to padding (no key mask: a pad key is the in-projection's
bias), so a state depends on how many pads precede it in the fixed maxlen window. A batch here is
only as wide as its longest row; the pads the window would hold are counted exactly by giving the
pad keys a log(count) attention bias (all pad keys are identical), and positions are numbered as
in the window. An attention with no allowed position (no source item before t_{j+1}) is, in the
official code, a uniform average over the whole window, pads included: reproduced as such.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from llmemf.config import check_fields
from llmemf.data.batching import Batch, DataBundle, domain_masks
from llmemf.errors import UserError
from llmemf.models.base import Recommender
from llmemf.models.layers import Dropout

MASKED = float(-(2**31))  # the official code's fill for masked attention scores (model.py:404, 412)


@dataclass
class TriCDRConfig:
    hidden: int = 64  # hidden_units (Tri_CDR.py:65)
    n_blocks: int = 2  # SASRec blocks per encoder (num_blocks)
    n_heads: int = 1  # num_heads
    dropout: float = 0.2  # dropout_rate
    seq_len: int = 200  # maxlen: the position window each sequence is left-padded into (sets positions and pad counts)
    temperature: float = 5.0  # scale of the cosine scores (args.temperature, model.py:329)
    cl_temperature: float = 0.1  # NT-Xent temperature (info_NCE_temperature)
    cl_weight: float = 1.0  # weight of the NT-Xent sum (cl_weight)
    rate_mix_source: float = 1.0  # NT-Xent pair weights, normalised to sum 1 (Tri_CDR.py:121-123)
    rate_mix_target: float = 1.0
    rate_source_target: float = 1.0
    triplet_weight: float = 1.0  # triplet_weight
    triplet_margin: float = 1.0  # triplet_margin (L2 distance)
    stage: str = "finetune"  # "pretrain": train the SASRec encoders alone (SASRec.pytorch BCE) | "finetune": Tri-CDR
    init_from: str = ""  # run directory of a stage=pretrain run whose best.pt initialises the encoders ("" = from scratch)
    pretrain_epochs: int = 200  # epochs of the pre-training run that `llmemf train` / `compare` run first (0 = none)

    def __post_init__(self) -> None:
        check_fields(
            self,
            "model.",
            positive=("hidden", "n_blocks", "n_heads", "seq_len", "temperature", "cl_temperature"),
            nonneg=("cl_weight", "rate_mix_source", "rate_mix_target", "rate_source_target", "triplet_weight", "triplet_margin", "pretrain_epochs"),
            fraction=("dropout",),
            choices={"stage": ("pretrain", "finetune")},
            divides=("hidden", "n_heads"),
        )


def _compact(ids: torch.Tensor, keep: torch.Tensor, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L) ids -> the kept ids right-aligned in (B, width) (width = most kept in a row, >= 1), and each
    one's column in ``ids`` (-1 at padding). Order within a row is preserved."""
    order = torch.sort(keep.to(torch.int8), dim=1, stable=True).indices[:, -max(int(keep.sum(1).max()), 1) :]
    kept = keep.gather(1, order)
    return torch.where(kept, ids.gather(1, order), pad), torch.where(kept, order, -1)


def _trim(ids: torch.Tensor, pad: int) -> torch.Tensor:
    """Drop leading columns that are padding in every row (left-padded ids)."""
    return ids[:, -max(int((ids != pad).sum(1).max()), 1) :]


def sample_negatives(like: torch.Tensor, lo: int, hi: int, exclude: torch.Tensor) -> torch.Tensor:
    """One id per element of ``like`` (B, L), uniform in [lo, hi) and not in its row of ``exclude``
    (B, K) (utils.py random_neq: redraw until outside the set). Rows whose items fill [lo, hi) keep
    their last draw after 100 rounds."""
    neg = torch.randint(lo, hi, like.shape, device=like.device)
    for _ in range(100):
        bad = (neg[..., None] == exclude[:, None, :]).any(-1)
        if not bad.any():
            break
        neg = torch.where(bad, torch.randint(lo, hi, like.shape, device=like.device), neg)
    return neg


class PointWiseFeedForward(nn.Module):
    """Conv1d(k=1) -> ReLU -> Conv1d(k=1), dropout after each, plus the input (model.py:90-105)."""

    def __init__(self, d: int, dropout: float):
        super().__init__()
        self.conv1, self.conv2 = nn.Linear(d, d), nn.Linear(d, d)  # a kernel-1 Conv1d is a Linear
        self.dropout1, self.dropout2 = Dropout(dropout), Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout2(self.conv2(F.relu(self.dropout1(self.conv1(x))))) + x


class SASRecEncoder(nn.Module):
    """The official SASRec_Embedding (model.py:110-185): item table over every item, positions of a
    ``window``-long left-padded sequence, post-attention LayerNorm layout, padding zeroed after each
    block, a final LayerNorm. Its state at a padding position is last_layernorm(0)."""

    def __init__(self, n_items: int, pad_id: int, d: int, window: int, n_blocks: int, n_heads: int, dropout: float):
        super().__init__()
        self.pad_id, self.window, self.n_heads = pad_id, window, n_heads
        self.item_emb = nn.Embedding(n_items + 1, d, padding_idx=pad_id)
        self.pos_emb = nn.Embedding(window, d)
        self.emb_dropout = Dropout(dropout)
        ln = lambda: nn.LayerNorm(d, eps=1e-8)  # noqa: E731
        self.attention_layernorms = nn.ModuleList([ln() for _ in range(n_blocks)])
        self.attention_layers = nn.ModuleList([nn.MultiheadAttention(d, n_heads, dropout, batch_first=True) for _ in range(n_blocks)])
        self.forward_layernorms = nn.ModuleList([ln() for _ in range(n_blocks)])
        self.forward_layers = nn.ModuleList([PointWiseFeedForward(d, dropout) for _ in range(n_blocks)])
        self.last_layernorm = ln()

    def pad_state(self) -> torch.Tensor:
        """(d,) the output at a padding position."""
        return self.last_layernorm(self.last_layernorm.bias.new_zeros(self.last_layernorm.bias.shape))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, L) left-padded ids -> (B, L, d) states, as in a window of ``window`` positions."""
        ids = F.pad(ids, (1, 0), value=self.pad_id)  # one pad column in every row carries the window's pads
        B, width = ids.shape
        if width > self.window:
            raise ValueError(f"tricdr: a sequence of {width - 1} items does not fit the position window seq_len={self.window}")
        real = ids != self.pad_id
        x = self.item_emb(ids) * self.item_emb.embedding_dim**0.5
        x = self.emb_dropout(x + self.pos_emb(torch.arange(self.window - width, self.window, device=ids.device))[None])
        x = x * real[..., None]
        # The window holds window - n pads, here width - n columns: each pad column weighs (window - n) / (width - n).
        n = real.sum(1, keepdim=True)
        pad_bias = torch.log((self.window - n).float() / (width - n).float())  # (B, 1)
        bias = torch.where(real[:, None, :], 0.0, pad_bias[:, :, None]).expand(B, width, width)
        causal = torch.ones(width, width, dtype=torch.bool, device=ids.device).tril()
        bias = bias.masked_fill(~causal, -math.inf).repeat_interleave(self.n_heads, 0)  # (B * heads, width, width)
        for ln_a, attn, ln_f, ffn in zip(self.attention_layernorms, self.attention_layers, self.forward_layernorms, self.forward_layers, strict=True):
            q = ln_a(x)
            out, _ = attn(q, x, x, attn_mask=bias, need_weights=False)
            x = ffn(ln_f(q + out)) * real[..., None]
        return self.last_layernorm(x)[:, 1:]


class Direction(nn.Module):
    """Everything of the official SASRec_V12_time_final (model.py:189-230) for one target domain."""

    def __init__(self, n_items: int, pad_id: int, cfg: TriCDRConfig):
        super().__init__()
        d = cfg.hidden
        enc = lambda: SASRecEncoder(n_items, pad_id, d, cfg.seq_len, cfg.n_blocks, cfg.n_heads, cfg.dropout)  # noqa: E731
        self.enc_mix, self.enc_source, self.enc_target = enc(), enc(), enc()
        self.log_feat_map1, self.log_feat_map2 = nn.Linear(3 * d, d), nn.Linear(d, d)  # fusion
        self.heads = nn.ModuleList([nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d)) for _ in range(3)])  # mix, source, target
        # DIN attention MLP over [fact, query, fact * query, query - fact, mixed mean] (model.py:224-230)
        self.attention = nn.Sequential(nn.Linear(5 * d, 80), nn.PReLU(), nn.Linear(80, 40), nn.PReLU(), nn.Linear(40, 1))

    def din(self, query: torch.Tensor, fact: torch.Tensor, mask: torch.Tensor, mix_mean: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
        """DINAttentionLayer_withmixattn (model.py:396-416) for every query position at once.

        query (B, Q, d), fact (B, F, d), mask (B, Q, F) allowed facts, mix_mean (B, Q, d);
        ``uniform`` (B, d): the result where no fact is allowed (the window-wide average)."""
        d = fact.shape[-1]
        lin1 = self.attention[0]
        w_f, w_q, w_fq, w_d, w_m = lin1.weight.split(d, dim=1)  # (80, d) each
        # Linear([f, q, f*q, q-f, m]) split into its fact, query and product parts (a 5x smaller pairwise tensor).
        pre = (
            (fact @ (w_f - w_d).T)[:, None]
            + (query @ (w_q + w_d).T + mix_mean @ w_m.T + lin1.bias)[:, :, None]
            + (query[:, :, None] * fact[:, None]) @ w_fq.T
        )  # (B, Q, F, 80)
        scores = self.attention[1:](pre).squeeze(-1)  # (B, Q, F)
        p = torch.where(mask, scores, MASKED).softmax(-1)
        out = p @ fact  # (B, Q, d)
        return torch.where(mask.any(-1, keepdim=True), out, uniform[:, None])


class TriCDR(Recommender):
    Config = TriCDRConfig
    reference = "Ma et al., Triple Sequence Learning for Cross-domain Recommendation, ACM TOIS 2024 (code: hulkima/Tri-CDR)"
    summary = "SASRec encoders of the mixed/source/target sequences, DIN target attention, NT-Xent + triplet terms, BCE"
    adam_betas = (0.9, 0.98)  # Tri_CDR.py:171 Adam(betas=(0.9, 0.98)), as SASRec.pytorch, whose pre-training it starts from

    def __init__(self, config: TriCDRConfig, bundle: DataBundle):
        super().__init__(config, bundle)
        if bundle.max_len + 1 > config.seq_len:
            # Official quirk not reproduced: a target sequence filling the window skips attention at its first position.
            raise UserError(f"tricdr: max_len={bundle.max_len} must be below model.seq_len={config.seq_len}; lower max_len or raise model.seq_len")
        self.n_x = self.domain_ranges[0][1]
        self.dirs = nn.ModuleList([Direction(self.n_items, self.pad_id, config) for _ in range(2)])
        for p in self.parameters():  # Tri_CDR.py:149-153: xavier_normal_ on every matrix, defaults elsewhere
            if p.dim() >= 2:
                nn.init.xavier_normal_(p)

    # ---------- data ----------
    def _views(self, s: torch.Tensor, d: int):
        """(mixed, source, target) left-padded sequences of direction d, and each source/target
        item's column in the mixed one."""
        mix = _trim(s, self.pad_id)
        is_x, is_y = domain_masks(mix, self.n_x, self.pad_id)
        in_tgt, in_src = (is_x, is_y) if d == 0 else (is_y, is_x)
        tgt, tcol = _compact(mix, in_tgt, self.pad_id)
        src, scol = _compact(mix, in_src, self.pad_id)
        return mix, src, scol, tgt, tcol

    @staticmethod
    def _full_sequence(batch: Batch) -> torch.Tensor:
        """The training sequence s (B, L + 1): inputs plus the last target."""
        return torch.cat([batch.xy, batch.xy_target[:, -1:]], dim=1)

    # ---------- Tri-CDR ----------
    @staticmethod
    def _uniform(enc: SASRecEncoder, h: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """(B, d) the average over the whole window of states h (B, L, d): the pads' state fills the rest."""
        w = enc.window
        return (h * real[..., None]).sum(1) / w + (w - real.sum(1, keepdim=True)) / w * enc.pad_state()

    def _fuse(self, dr: Direction, q, h_mix, mix_mask, h_src, src_mask, h_tgt, tgt_mask, reals):
        """The three attended vectors (B, Q, d) each and the fused state (B, Q, d)."""
        mix_real, src_real, tgt_real = reals
        mix_uniform = self._uniform(dr.enc_mix, h_mix, mix_real)
        m = mix_mask.float()  # mean of the allowed mixed states (a softmax over equal scores, model.py:404-407)
        mix_mean = torch.where(mix_mask.any(-1, keepdim=True), (m @ h_mix) / m.sum(-1, keepdim=True).clamp(min=1), mix_uniform[:, None])
        f_mix = dr.din(q, h_mix, mix_mask, mix_mean, mix_uniform)
        f_src = dr.din(q, h_src, src_mask, mix_mean, self._uniform(dr.enc_source, h_src, src_real))
        f_tgt = dr.din(q, h_tgt, tgt_mask, mix_mean, self._uniform(dr.enc_target, h_tgt, tgt_real))
        fused = dr.log_feat_map2(F.leaky_relu(dr.log_feat_map1(torch.cat([f_mix, f_src, f_tgt], -1))))
        return (f_mix, f_src, f_tgt), fused

    def direction_inputs(self, s: torch.Tensor, d: int) -> dict[str, torch.Tensor]:
        """Direction d's training inputs from sequences s (B, L) (utils.py:21-80, 224-248): rows with
        fewer than two source or target items are dropped (utils.py:35); the target inputs t_1..t_{n-1},
        their next items, and which mixed / source / target states each input position may attend to:
        mixed and source items before t_{j+1}, target inputs up to t_j (model.py:418-427)."""
        is_x, is_y = domain_masks(s, self.n_x, self.pad_id)
        n_t, n_s = (is_x if d == 0 else is_y).sum(1), (is_y if d == 0 else is_x).sum(1)
        rows = torch.nonzero((n_t > 1) & (n_s > 1)).squeeze(1)  # (then the mixed sequence has > 1 item too)
        mix, src, scol, tgt, tcol = self._views(s[rows], d)
        t_in = tgt[:, :-1]
        valid = t_in != self.pad_id  # (B', Lt) positions with a next target
        nxt = tcol[:, 1:, None]  # (B', Lt, 1) column of t_{j+1} in the mixed sequence
        Lm, Lt = mix.shape[1], t_in.shape[1]
        mix_real, src_real = mix != self.pad_id, src != self.pad_id
        return {
            "rows": rows,
            "mix_items": mix,
            "source_items": src,
            "target_items": tgt,  # the user's domain-d items (also what negatives avoid)
            "target_in": t_in,
            "target_next": tgt[:, 1:],
            "valid": valid,
            "mix_mask": (torch.arange(Lm, device=s.device) < nxt) & mix_real[:, None],  # (B', Lt, Lm)
            "source_mask": (scol[:, None, :] < nxt) & src_real[:, None],  # (B', Lt, Ls)
            "target_mask": torch.ones(Lt, Lt, dtype=torch.bool, device=s.device).tril()[None] & valid[:, None],  # (B', Lt, Lt)
        }

    def direction_forward(self, d: int, s: torch.Tensor, negatives: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The official forward (model.py:232-335) of direction d on training sequences s (B, L):
        positive / negative logits (B', Lt), the projected last-position vectors ``mix``, ``source``,
        ``target`` (and ``attended``, the same before the heads), plus ``direction_inputs``.
        ``negatives`` (B', Lt), aligned with the target inputs, replaces the sampled ones."""
        dr = self.dirs[d]
        x = self.direction_inputs(s, d)
        valid = x["valid"]
        h_mix, h_src, h_tgt = dr.enc_mix(x["mix_items"]), dr.enc_source(x["source_items"]), dr.enc_target(x["target_in"])
        reals = (x["mix_items"] != self.pad_id, x["source_items"] != self.pad_id, valid)
        attended, fused = self._fuse(dr, h_tgt, h_mix, x["mix_mask"], h_src, x["source_mask"], h_tgt, x["target_mask"], reals)
        if negatives is None:
            lo, hi = self.domain_ranges[d]
            negatives = sample_negatives(x["target_in"], lo, hi, x["target_items"])
        table = dr.enc_target.item_emb
        u = F.normalize(fused, dim=-1)
        pos = (u * F.normalize(table(x["target_next"]), dim=-1)).sum(-1) * self.config.temperature
        neg = (u * F.normalize(table(negatives), dim=-1)).sum(-1) * self.config.temperature
        last = tuple(f[:, -1] for f in attended)
        proj = [head(f) for head, f in zip(dr.heads, last, strict=True)]
        return {**x, "pos": pos, "neg": neg, "negatives": negatives, "attended": last, "mix": proj[0], "source": proj[1], "target": proj[2]}

    def direction_losses(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Tri_CDR.py:223-244: BCE on positives and negatives (each a mean over the batch's
        positions), NT-Xent over the three pairs, triplet (anchor source, positive mix, negative target)."""
        cfg = self.config
        v = out["valid"]
        rec = F.binary_cross_entropy_with_logits(out["pos"][v], torch.ones_like(out["pos"][v]))
        rec = rec + F.binary_cross_entropy_with_logits(out["neg"][v], torch.zeros_like(out["neg"][v]))
        m, s, t = out["mix"], out["source"], out["target"]
        rates = torch.tensor([cfg.rate_mix_source, cfg.rate_mix_target, cfg.rate_source_target])
        rates = (rates / rates.sum()).tolist()
        tau = cfg.cl_temperature
        cl = rates[0] * nt_xent(m, s, tau) + rates[1] * nt_xent(m, t, tau) + rates[2] * nt_xent(s, t, tau)
        triplet = F.triplet_margin_loss(s, m, t, margin=cfg.triplet_margin, p=2.0, eps=1e-6)
        return {"rec": rec, "cl": cl, "triplet": triplet, "loss": rec + cfg.cl_weight * cl + cfg.triplet_weight * triplet}

    def loss_terms(self, batch: Batch, negatives: dict[int, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Per direction d: ``d/rec``, ``d/cl``, ``d/triplet``, ``d/loss``; and ``loss``, their sum."""
        s = self._full_sequence(batch)
        terms: dict[str, torch.Tensor] = {}
        total = self.dirs[0].log_feat_map2.bias.sum() * 0.0  # in the graph even when no row qualifies
        for d in (0, 1):
            out = self.direction_forward(d, s, None if negatives is None else negatives.get(d))
            if len(out["rows"]) == 0:
                continue
            for k, v in self.direction_losses(out).items():
                terms[f"{d}/{k}"] = v
            total = total + terms[f"{d}/loss"]
        terms["loss"] = total
        return terms

    # ---------- SASRec pre-training (stage=pretrain) ----------
    @staticmethod
    def _sasrec_bce(enc: SASRecEncoder, seq: torch.Tensor, lo: int, hi: int, pad: int) -> torch.Tensor | None:
        """SASRec.pytorch's loss on left-padded sequences (B, L): next item against one negative
        drawn from [lo, hi) outside the row's items, dot-product logits, BCE means; rows of >= 2 items."""
        seq = seq[(seq != pad).sum(1) > 1]
        if len(seq) == 0:
            return None
        seq = _trim(seq, pad)
        inp, pos = seq[:, :-1], seq[:, 1:]
        valid = inp != pad
        h = enc(inp)
        neg = sample_negatives(inp, lo, hi, seq)
        pl = (h * enc.item_emb(pos)).sum(-1)[valid]
        nl = (h * enc.item_emb(neg)).sum(-1)[valid]
        return F.binary_cross_entropy_with_logits(pl, torch.ones_like(pl)) + F.binary_cross_entropy_with_logits(nl, torch.zeros_like(nl))

    def pretrain_loss(self, batch: Batch) -> torch.Tensor:
        """Three SASRecs: each domain's on its own items (dirs[d].enc_target) and one on the mixed
        sequence (dirs[0].enc_mix, negatives from every item); both directions start from them."""
        s = self._full_sequence(batch)
        is_x, is_y = domain_masks(s, self.n_x, self.pad_id)
        parts = [self._sasrec_bce(self.dirs[0].enc_mix, s, 0, self.n_items, self.pad_id)]
        for d, m in enumerate((is_x, is_y)):
            lo, hi = self.domain_ranges[d]
            parts.append(self._sasrec_bce(self.dirs[d].enc_target, _compact(s, m, self.pad_id)[0], lo, hi, self.pad_id))
        total = self.dirs[0].enc_mix.last_layernorm.bias.sum() * 0.0
        for p in parts:
            if p is not None:
                total = total + p
        return total

    # ---------- the Recommender interface ----------
    def loss(self, batch: Batch) -> torch.Tensor:
        if self.config.stage == "pretrain":
            return self.pretrain_loss(batch)
        return self.loss_terms(batch)["loss"]

    def user_states(self, batch: Batch, d: int) -> torch.Tensor:
        """(B, d) the official predict (model.py:337-393): attention over the whole history."""
        dr = self.dirs[d]
        mix = _trim(batch.xy, self.pad_id)
        src, tgt = (batch.y, batch.x) if d == 0 else (batch.x, batch.y)
        src, tgt = _trim(src, self.pad_id), _trim(tgt, self.pad_id)
        if self.config.stage == "pretrain":
            return dr.enc_target(tgt)[:, -1]
        h_mix, h_src, h_tgt = dr.enc_mix(mix), dr.enc_source(src), dr.enc_target(tgt)
        reals = (mix != self.pad_id, src != self.pad_id, tgt != self.pad_id)
        q = h_tgt[:, -1:]
        _, fused = self._fuse(dr, q, h_mix, reals[0][:, None], h_src, reals[1][:, None], h_tgt, reals[2][:, None], reals)
        return fused[:, 0]

    def scores(self, batch: Batch, domain: int, candidates: torch.Tensor | None = None) -> torch.Tensor:
        u = self.user_states(batch, domain)
        table = self.dirs[domain].enc_target.item_emb.weight
        lo, hi = self.domain_ranges[domain]
        cosine = self.config.stage == "finetune"  # pre-training scores as SASRec.pytorch predicts: dot product
        if cosine:
            u = F.normalize(u, dim=-1)
        if candidates is None:
            items = table[lo:hi]
            return (u @ (F.normalize(items, dim=-1) if cosine else items).T) * (self.config.temperature if cosine else 1.0)
        items = table[candidates]  # (B, C, d)
        items = F.normalize(items, dim=-1) if cosine else items
        return torch.einsum("bd,bcd->bc", u, items) * (self.config.temperature if cosine else 1.0)

    def fit(self, bundle: DataBundle) -> None:
        """Before training: load the pre-trained SASRec encoders of ``init_from`` (Tri_CDR.py:36-56,
        155-163): each direction's target encoder from its domain's SASRec, its source encoder from
        the other domain's, its mixed encoder from the mixed-sequence SASRec."""
        if not self.config.init_from:
            return
        from llmemf.config import load_config

        run = Path(self.config.init_from)
        ckpt, cfg_path = run / "best.pt", run / "config.yaml"
        if not ckpt.exists() or not cfg_path.exists():
            raise UserError(f"tricdr: model.init_from={run} holds no best.pt / config.yaml; train the stage=pretrain run there first")
        pre = load_config(cfg_path)
        if pre.model_name != "tricdr" or pre.model.get("stage") != "pretrain":
            raise UserError(f"tricdr: model.init_from={run} is not a tricdr stage=pretrain run ({cfg_path})")
        state = torch.load(ckpt, map_location="cpu", weights_only=True)

        def sub(prefix: str) -> dict[str, torch.Tensor]:
            return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}

        for d in (0, 1):
            self.dirs[d].enc_target.load_state_dict(sub(f"dirs.{d}.enc_target."))
            self.dirs[d].enc_source.load_state_dict(sub(f"dirs.{1 - d}.enc_target."))
            self.dirs[d].enc_mix.load_state_dict(sub("dirs.0.enc_mix."))

    @staticmethod
    def pretraining_stage(params: dict) -> dict | None:
        """The run that must precede a run of these model params, as model / train overrides, or None:
        SASRec pre-training for a fine-tuning run with no ``init_from`` (read by experiments.runner)."""
        cfg = TriCDRConfig(**params)
        if cfg.stage != "finetune" or cfg.init_from or cfg.pretrain_epochs <= 0:
            return None
        return {"model": {"stage": "pretrain"}, "train": {"epochs": cfg.pretrain_epochs, "patience": cfg.pretrain_epochs, "lr_step": 0}}


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float, eps: float = 1e-6) -> torch.Tensor:
    """NTXentLoss (model.py:13-38), as computed there: each of the 2N rows against the other 2N - 1
    (its own term removed as e^{1/tau}), the positive its pair in the other view."""
    a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    out = torch.cat([a, b])
    neg = torch.exp(out @ out.T / temperature).sum(-1)
    neg = torch.clamp(neg - math.e ** (1 / temperature), min=eps)
    pos = torch.exp((a * b).sum(-1) / temperature)
    pos = torch.cat([pos, pos])
    return -torch.log(pos / (neg + eps)).mean()
