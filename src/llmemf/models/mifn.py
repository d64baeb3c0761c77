"""MIFN (Ma et al., Mixed Information Flow for Cross-domain Sequential Recommendations, TKDD 2022), as the
authors' TensorFlow code computes it (mamuyang/MIFN, ``MIFN.py``; settings from ``Train.py``).

For target domain A, with B the other domain (both directions in parallel):
  sequential flow   a TF1 GRU over A's items and one over B's (one item table); a filter RNN over B's
                    positions (input [B's output ; A's output at the last A item before]):
                        f = sigmoid([b ; a ; s] W_f + b_f),  c = tanh([b ; s] W_s + b_s),  s' = f c + (1 - f) s
                    and a transfer GRU over the filter's outputs, giving B -> A knowledge
  knowledge flow    a subgraph per sequence: its items and their knowledge-graph neighbours (``n_nodes``),
                    node vectors from the item table. Conditioned on the state of the latest item h (its
                    domain's GRU output) and its transfer output h', attention over the in-domain nodes
                    (query h) and over the cross-domain nodes (query h') weighs each node's vector; a gate
                    sigmoid([h ; h' ; e_n] W_c + b_c) splits them; each part goes through a linear map, the
                    cross part gains a mutual attention between cross- and in-domain nodes, and every
                    relation r aggregates adj_r (part W_r + b_r) (ReLU, one map per relation and part);
                    a GRU cell updates each node vector from the concatenation
  decoder           explore: softmax(dense(dropout([A's GRU state ; B -> A transfer state]))) over A's items;
                    exploit: attention of A's GRU state over the subgraph's A-item nodes, scattered to items;
                    switch P_exploit = sigmoid(w [A's state ; B->A state ; sum of A-node vectors]);
                    p = P_exploit * exploit + (1 - P_exploit) * explore
  loss              -log p(target) - [target not an A node of the subgraph] log(P_explore + 1e-4)
Every GRU / filter cell has TF1's DropoutWrapper (keep 0.8 on input, output, state); Glorot-normal kernels;
filter and GCN biases start at 1.0; the switch's weights N(0, 0.1^2). Defaults are ``Train.py``'s: width 256,
200 subgraph nodes, one propagation step, batch 32, Adam lr 1e-3.

Knowledge-graph substitution: the paper links Amazon items through the metadata relations "also bought",
"also viewed", "bought after viewing", "bought together" (and, for Movie-Book, Wikipedia adaptations);
the released code reads five relation matrices per subgraph from pickles it does not release. Our
datasets carry no such relations, so two relations are built from what the dataset has:
    co-occurrence  items within ``window`` positions of each other in a *training* sequence (both
                   domains, so cross-domain links come from shared accounts) -- the nearest stand-in for
                   the behavioural "also bought / viewed" relations
    title words    items whose titles share a rare word (in at most ``max_word_items`` titles and at least 2)
binary and symmetric, each one relation type of the GCN. The subgraph of a sequence: its items (most
recent first) then their neighbours, most-linked first, up to ``n_nodes``.

Where the released code leaves a choice open (its data preparation is not released; ``Train.py`` calls a
class, ``AINet_all``, that MIFN.py does not define, and a reshape to 12 h for 5 relations x 2 parts):
    - a node is "in-domain" for the attention when it is an item of the latest item's domain, "cross-domain"
      otherwise, and is available at position t once an item at or before t is it or links to it (the
      per-step masks ``nei_L_A_mask`` / ``nei_L_T_mask``);
    - the GCN aggregates raw 0/1 adjacency (the code feeds integer matrices), without self-loops.

Differences forced by the shared protocol (docs/baselines.md): every merged position with a next item is a
training target (the official data give one target per domain per sequence), so the knowledge flow runs
at every position with that position's available nodes; the one trainer does not clip gradient values
(official: each to +-5).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from llmemf.config import check_fields
from llmemf.data.batching import Batch, DataBundle, domain_masks
from llmemf.models.base import Recommender
from llmemf.models.cross_domain import DomainGRU, DomainRNN, domain_decoder
from llmemf.models.layers import Dropout


@dataclass
class MIFNConfig:
    hidden: int = 256  # item / node embedding and every cell's width (official Train.py: 256)
    dropout: float = 0.2  # every cell's input / output / state and the explore decoder's input (official keep_prob 0.8)
    n_nodes: int = 200  # subgraph size per sequence: its items, then their neighbours (official nei_num 200)
    window: int = 2  # co-occurrence links between items at most this many positions apart in a training sequence
    max_word_items: int = 20  # a title word links the items it names only if it names at most this many (rare words)

    def __post_init__(self) -> None:
        check_fields(self, "model.", positive=("hidden", "n_nodes", "window", "max_word_items"), fraction=("dropout",))


TOKEN = re.compile(r"[a-z0-9]+")


def build_knowledge_graph(sequences, titles, n_items: int, window: int, max_word_items: int) -> list[sp.csr_matrix]:
    """The substitute knowledge graph's relations, each a binary symmetric (n_items, n_items) CSR matrix
    without self-loops: [co-occurrence within ``window`` in a training sequence, shared rare title word]."""
    rows, cols = [], []
    for s in sequences:
        s = np.asarray(s, dtype=np.int64)
        for k in range(1, window + 1):
            if len(s) > k:
                rows.append(s[:-k])
                cols.append(s[k:])
    words: dict[str, list[int]] = {}
    for i, t in enumerate(titles):
        if isinstance(t, str):
            for w in set(TOKEN.findall(t.lower())):
                words.setdefault(w, []).append(i)
    wr, wc = [], []
    for members in words.values():
        if 2 <= len(members) <= max_word_items:
            m = np.asarray(members, dtype=np.int64)
            a, b = np.meshgrid(m, m, indexing="ij")
            wr.append(a.ravel())
            wc.append(b.ravel())

    def binary(r: list[np.ndarray], c: list[np.ndarray]) -> sp.csr_matrix:
        r_ = np.concatenate(r) if r else np.zeros(0, np.int64)
        c_ = np.concatenate(c) if c else np.zeros(0, np.int64)
        g = sp.coo_matrix((np.ones(len(r_), np.float32), (r_, c_)), shape=(n_items, n_items)).tocsr()
        g = (g + g.T).tocsr()
        g.setdiag(0)
        g.eliminate_zeros()
        g.data[:] = 1.0
        return g

    return [binary(rows, cols), binary(wr, wc)]


def subgraphs(xy: np.ndarray, pad_id: int, union: sp.csr_matrix, n_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of left-padded ids (B, L): nodes (B, N) item ids (pad_id where empty) -- the row's distinct items,
    most recent first, then their neighbours in ``union``, most-linked first -- and since (B, N) the first
    position at which each node is available (an item at or before it is the node or links to it; L = never)."""
    B, L = xy.shape
    nodes = np.full((B, n_nodes), pad_id, dtype=np.int64)
    since = np.full((B, n_nodes), L, dtype=np.int64)
    for b in range(B):
        first: dict[int, int] = {}
        for t in range(L):
            i = int(xy[b, t])
            if i != pad_id and i not in first:
                first[i] = t
        hist = sorted(first, key=lambda i: -first[i])[:n_nodes]  # most recent first
        links: dict[int, list[int]] = {}
        for i in hist:
            for n in union.indices[union.indptr[i] : union.indptr[i + 1]]:
                if int(n) not in first:
                    links.setdefault(int(n), []).append(first[i])
        neigh = sorted(links, key=lambda n: (-len(links[n]), min(links[n]), n))[: n_nodes - len(hist)]
        ids = hist + neigh
        nodes[b, : len(ids)] = ids
        since[b, : len(ids)] = [first[i] for i in hist] + [min(links[n]) for n in neigh]
    return nodes, since


class FilterCell(nn.Module):
    """MIFN's filter cell (no members): f = sigmoid([own ; other ; s] W_f + b_f), c = tanh([own ; s] W_s + b_s),
    s' = f * c + (1 - f) * s; biases start at 1.0."""

    def __init__(self, d: int):
        super().__init__()
        self.w_f, self.w_s = nn.Linear(3 * d, d), nn.Linear(2 * d, d)
        with torch.no_grad():
            for lin in (self.w_f, self.w_s):
                nn.init.xavier_normal_(lin.weight)
                lin.bias.fill_(1.0)

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        f = torch.sigmoid(self.w_f(torch.cat([x, s], -1)))
        c = torch.tanh(self.w_s(torch.cat([x[:, : s.shape[1]], s], -1)))
        return f * c + (1 - f) * s


def linear(d_in: int, d_out: int, bias: float | None = 1.0) -> nn.Linear:
    """The code's random_weight / random_bias: Glorot-normal kernel, bias 1.0 (or none)."""
    lin = nn.Linear(d_in, d_out, bias=bias is not None)
    with torch.no_grad():
        nn.init.xavier_normal_(lin.weight)
        if bias is not None:
            lin.bias.fill_(bias)
    return lin


class Attention(nn.Module):
    """a_n = softmax_n over masked nodes of v^T tanh(W_s q + W_e e_n) (the code's softmask / g_decode attention)."""

    def __init__(self, d: int):
        super().__init__()
        self.w_q, self.w_e, self.v = linear(d, d, None), linear(d, d, None), linear(d, 1, None)

    def forward(self, q: torch.Tensor, e: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """q (..., d), e (..., N, d), mask (..., N) -> (..., N) weights (all zero where no node is masked in)."""
        s = self.v(torch.tanh(self.w_q(q)[..., None, :] + self.w_e(e)))[..., 0]
        return torch.softmax(s.masked_fill(~mask, -1e10), -1) * mask.any(-1, keepdim=True)


class KnowledgeFlow(nn.Module):
    """One propagation step over the subgraph (module docstring), at every position: (B, L, N, d) node vectors."""

    def __init__(self, d: int, n_relations: int):
        super().__init__()
        self.att_in, self.att_cross = Attention(d), Attention(d)
        self.gate = linear(3 * d, d)
        self.lin_in, self.lin_cross = linear(d, d), linear(d, d)
        self.mutual = nn.Linear(d, 1, bias=False)
        self.rel_in = nn.ModuleList([linear(d, d) for _ in range(n_relations)])
        self.rel_cross = nn.ModuleList([linear(d, d) for _ in range(n_relations)])
        self.gru = nn.GRUCell(2 * n_relations * d, d)

    def forward(self, e: torch.Tensor, h: torch.Tensor, h_t: torch.Tensor, m_in: torch.Tensor, m_cross: torch.Tensor, adj: list[torch.Tensor]):
        """e (B, N, d) node vectors; h, h_t (B, L, d) queries; m_in, m_cross (B, L, N); adj: per relation (B, N, N)."""
        B, L, d = h.shape
        N = e.shape[1]
        ee = e[:, None].expand(B, L, N, d)
        soft_in = self.att_in(h, ee, m_in)[..., None] * ee  # (B, L, N, d)
        soft_cross = self.att_cross(h_t, ee, m_cross)[..., None] * ee
        f = torch.sigmoid(self.gate(torch.cat([h[:, :, None].expand_as(ee), h_t[:, :, None].expand_as(ee), ee], -1)))
        fin_in = self.lin_in(f * soft_in)
        e_in, e_cross = m_in[..., None] * ee, m_cross[..., None] * ee
        # mutual attention: cross node n gains sum_m w . (e_cross_n * e_in_m) e_in_m
        w = self.mutual.weight[0]  # (d,)
        fin_cross = self.lin_cross((1 - f) * soft_cross) + ((e_cross * w) @ e_in.transpose(-1, -2)) @ e_in
        parts = [torch.relu(a[:, None] @ lin(fin_in)) for a, lin in zip(adj, self.rel_in, strict=True)]
        parts += [torch.relu(a[:, None] @ lin(fin_cross)) for a, lin in zip(adj, self.rel_cross, strict=True)]
        x = torch.cat(parts, -1)  # (B, L, N, 2 R d)
        return self.gru(x.reshape(-1, x.shape[-1]), ee.reshape(-1, d)).view(B, L, N, d)


class MIFN(Recommender):
    Config = MIFNConfig
    reference = "Ma et al., Mixed Information Flow for Cross-domain Sequential Recommendations, ACM TKDD 2022"
    summary = "sequential flow (GRUs, filter, transfer) + knowledge flow over a per-sequence subgraph, explore/exploit decoder"

    def __init__(self, config: MIFNConfig, bundle: DataBundle):
        super().__init__(config, bundle)
        d, p = config.hidden, config.dropout
        self.n_x = self.domain_ranges[0][1]
        ds = bundle.dataset
        titles = ds.items.sort_values("item_id")["title"].tolist() if "title" in ds.items else [None] * self.n_items
        self.relations = build_knowledge_graph(ds.splits["train"]["items"], titles, self.n_items, config.window, config.max_word_items)
        self.union = sum(self.relations[1:], self.relations[0]).tocsr()
        self.item = nn.Embedding(self.n_items + 1, d, padding_idx=self.pad_id)  # items = graph nodes (all_emb_matrix)
        with torch.no_grad():
            nn.init.xavier_normal_(self.item.weight)
            self.item.weight[self.pad_id].zero_()
        self.encoder = nn.ModuleList([DomainGRU(d, d, p) for _ in range(2)])
        # filter[a] / transfer[a] run over domain a's positions and feed the prediction of the OTHER domain
        self.filter = nn.ModuleList([DomainRNN(FilterCell(d), d, p) for _ in range(2)])
        self.transfer = nn.ModuleList([DomainGRU(d, d, p) for _ in range(2)])
        self.knowledge = KnowledgeFlow(d, len(self.relations))
        self.switch = nn.ModuleList([nn.Linear(3 * d, 1) for _ in range(2)])
        self.exploit = nn.ModuleList([Attention(d) for _ in range(2)])
        self.drop = Dropout(p)
        self.out, self.out_bias = domain_decoder(self.n_items, 2 * d, self.domain_ranges)  # the explore decoder
        with torch.no_grad():
            for lin in self.switch:
                nn.init.trunc_normal_(lin.weight, std=0.1, a=-0.2, b=0.2)
                lin.bias.zero_()

    def _adjacency(self, nodes: np.ndarray) -> list[torch.Tensor]:
        """Per relation, (B, N, N) 0/1 adjacency among each row's nodes."""
        B, N = nodes.shape
        real = nodes != self.pad_id
        out = []
        for g in self.relations:
            a = np.zeros((B, N, N), np.float32)
            for b in range(B):
                k = int(real[b].sum())
                if k:
                    a[b, :k, :k] = g[nodes[b, :k]][:, nodes[b, :k]].toarray()
            out.append(torch.from_numpy(a))
        return out

    def flows(self, xy: torch.Tensor):
        """Per target domain a: (states (B, L, d) of a's GRU, B->a transfer states (B, L, d), node vectors
        (B, L, N, d), nodes (B, N), node availability of domain a (B, L, N))."""
        B, L = xy.shape
        at = domain_masks(xy, self.n_x, self.pad_id)
        emb = self.item(xy)
        enc = [self.encoder[d](emb, at[d]) for d in (0, 1)]  # (outputs, states) at merged positions
        trans = []
        for d in (0, 1):  # filter and transfer over d's positions, for predicting the other domain
            f_out, _ = self.filter[d](torch.cat([enc[d][0], enc[1 - d][0]], -1), at[d])
            trans.append(self.transfer[d](f_out, at[d]))
        nodes_np, since_np = subgraphs(xy.cpu().numpy(), self.pad_id, self.union, self.config.n_nodes)
        nodes, since = torch.from_numpy(nodes_np).to(xy.device), torch.from_numpy(since_np).to(xy.device)
        avail = since[:, None, :] <= torch.arange(L, device=xy.device)[None, :, None]  # (B, L, N)
        node_x, node_y = domain_masks(nodes, self.n_x, self.pad_id)  # (B, N)
        last_is_y = at[1]  # (B, L): the latest item's domain at each position (padding counts as X; it has no nodes)
        same = torch.where(last_is_y[..., None], node_y[:, None], node_x[:, None]) & avail
        other = torch.where(last_is_y[..., None], node_x[:, None], node_y[:, None]) & avail
        h = torch.where(last_is_y[..., None], enc[1][0], enc[0][0])  # the latest item's own-domain output
        h_t = torch.where(last_is_y[..., None], trans[1][0], trans[0][0])  # and its transfer output
        g = self.knowledge(self.item(nodes), h, h_t, same, other, [a.to(xy.device) for a in self._adjacency(nodes_np)])
        return [(enc[a][1], trans[1 - a][1], g, nodes, (node_y if a else node_x)[:, None] & avail) for a in (0, 1)]

    def _mixture(self, a: int, state, transfer, g, mask):
        """-> explore logits input (.., 2d), exploit weights over nodes (.., N), P_exploit (..,)."""
        pooled = (mask[..., None] * g).sum(-2)
        p_exploit = torch.sigmoid(self.switch[a](torch.cat([state, transfer, pooled], -1)))[..., 0]
        return self.drop(torch.cat([state, transfer], -1)), self.exploit[a](state, g, mask), p_exploit

    def loss(self, batch: Batch) -> torch.Tensor:
        tgt = batch.xy_target
        total, count = tgt.new_zeros((), dtype=torch.float), 0
        for a, (state, transfer, g, nodes, mask) in enumerate(self.flows(batch.xy)):
            lo, hi = self.domain_ranges[a]
            sel = (tgt >= lo) & (tgt < hi)
            if not bool(sel.any()):
                continue
            t = tgt[sel]
            rows = sel.nonzero()[:, 0]
            x, w, pe = self._mixture(a, state[sel], transfer[sel], g[sel], mask[sel])
            explore = F.softmax((x @ self.out[lo:hi].T + self.out_bias[lo:hi]).float(), -1).gather(1, (t - lo)[:, None])[:, 0]
            hit = (nodes[rows] == t[:, None]) & mask[sel]  # (n, N): the target among the available a-nodes
            exploit = (w * hit).sum(-1)
            p = (pe * exploit + (1 - pe) * explore).clamp(1e-7, 1 - 1e-7)  # keras' sparse_categorical_crossentropy
            switch = -(~hit.any(-1)).float() * torch.log(1 - pe + 1e-4)  # -log P_explore when the target is not in the subgraph
            total = total + (-torch.log(p) + switch).sum()
            count += len(t)
        return total / max(count, 1)

    def scores(self, batch: Batch, domain: int, candidates: torch.Tensor | None = None) -> torch.Tensor:
        state, transfer, g, nodes, mask = self.flows(batch.xy)[domain]
        x, w, pe = self._mixture(domain, state[:, -1], transfer[:, -1], g[:, -1], mask[:, -1])  # after the last item
        lo, hi = self.domain_ranges[domain]
        explore = F.softmax((x @ self.out[lo:hi].T + self.out_bias[lo:hi]).float(), -1)  # (B, n_domain)
        exploit = torch.zeros_like(explore).scatter_add_(1, (nodes - lo).clamp(0, hi - lo - 1), w.float())  # masked nodes weigh 0
        full = torch.log(pe[:, None] * exploit + (1 - pe[:, None]) * explore + 1e-30)  # (B, n_domain)
        return full if candidates is None else full.gather(1, candidates - lo)
