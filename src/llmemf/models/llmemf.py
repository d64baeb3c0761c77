"""LLM-EMF: LLM-Enhanced Multimodal Fusion for cross-domain sequential recommendation.

Reconstructed from the paper as written out in shared/spec/METHOD.md:

  items      E_id (learned, d_id) | E_img (frozen CLIP image, any width) | E_txt (frozen text, any width)
  sequences  X (domain-0 items), Y (domain-1 items), XY (merged), each left-padded
  encoders   A_{s,m} for s in {X, Y, XY}, m in {id, img, txt}: nine causal self-attention encoders;
             h_{s,m} = output at the last position, width = the modality's width
  scores     c_{s,m}(i) = cos(h_{s,m}, E_m[i]) / tau
             z_s(i) = c_{s,id}(i) + alpha c_{s,img}(i) + beta c_{s,txt}(i)            (fusion: logits)
             p_s = renorm(softmax c_{s,id} + alpha softmax c_{s,img} + beta softmax c_{s,txt}) (fusion: probabilities)
  training   L = L_XY + lambda_X L_X + lambda_Y L_Y, next-item prediction at every position, each target
             scored by a softmax over its own domain
  predict    target domain T, source S:  z_T + gamma_S z_S + gamma_XY z_XY over T's items

Implementation notes (why it is fast): with logit fusion, the fused score of all modalities is a
dot product of concatenated, normalised, weighted vectors. The frozen modalities share one key
matrix ``frozen_keys`` (unit feature, zero if absent, plus an "absent" indicator column per
modality), so per (sequence batch, domain) the scores are one matmul against keys that need no
gradient plus one addmm for the learned ID keys. Items lacking a feature score through the
indicator column against a learned per-modality "missing" vector.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from llmemf.config import ConfigError, check_fields
from llmemf.data.batching import Batch, DataBundle
from llmemf.features.store import load_feature, principal_axes, project
from llmemf.models.base import Recommender
from llmemf.models.layers import StackedSequenceEncoder, sampled_softmax_nll

MODALITIES = ("id", "img", "txt")
SEQUENCES = ("x", "y", "xy")
COLD_ID_MODES = ("learned", "neutral", "content")
NEGATIVE_SAMPLERS = ("uniform", "popularity", "in_batch")


@dataclass
class LLMEMFConfig:
    d_id: int = 256  # width of the learned ID embedding (and the id encoders)
    modalities: list[str] = field(default_factory=lambda: ["id", "img", "txt"])  # any subset containing "id"
    img_feature: str = "img"  # feature file name for the image modality (DATASET/features/<name>.npy)
    txt_feature: str = "txt_llm"  # "txt_title" = textual fusion, "txt_llm" = title + LLM text (LLM-enhanced)
    n_blocks: int = 2  # self-attention blocks per encoder
    n_heads: int = 1
    dropout: float = 0.3
    tau: float = 0.1  # cosine temperature
    score: str = "cosine"  # "cosine" (unit query and key / tau, the paper) | "dot" (raw inner product, SASRec's; an ablation)
    alpha: float = 0.3  # weight of the image scores
    beta: float = 0.1  # weight of the text scores
    fusion: str = "logits"  # "logits" (sum of scaled cosines) | "probabilities" (mixture of softmaxes)
    lambda_x: float = 1.0  # weight of L_X
    lambda_y: float = 1.0  # weight of L_Y
    gamma_t: float = 1.0  # weight of the target-domain sequence at prediction time (the paper's 1; 0 for the ablations
    #   that predict from the merged sequence alone: gamma_t = gamma_s = lambda_x = lambda_y = 0)
    gamma_s: float = 0.3  # weight of the source-domain sequence at prediction time
    gamma_xy: float = 1.0  # weight of the merged sequence at prediction time
    feature_dtype: str = "float32"  # frozen feature tables in memory: float32 | bfloat16
    # The training defaults below are the measured cheap mode (docs/sampled_softmax.md: Food-Kitchen, 3 seeds, within
    # seed noise of the full softmax at the features' own widths under the c2dsr protocol, slightly below it on Kitchen
    # under the full one; docs/cost.md section 8: what an epoch costs); the paper's own setting is frozen_width=0,
    # train_negatives=0.
    frozen_width: int = 128  # k > 0: each frozen feature wider than k projected first onto its top-k principal
    #   components (features.store.principal_axes), so its encoders and keys are k wide; 0 = its own width (the paper)
    train_negatives: int = 1024  # K > 0: sampled softmax (negative_sampler), negatives shared by the batch, in every
    #   domain of more than K items (a smaller one gets its full softmax); 0 = full softmax over the domain (the paper)
    negative_sampler: str = "popularity"  # with train_negatives > 0: "popularity" (K draws with probability proportional
    #   to 1 + the item's count in training sequences) | "uniform" (K draws over the domain) | "in_batch" (the batch's
    #   distinct targets of the domain; K unused)
    sampled_correction: bool = True  # weigh each negative by 1 / (its expected count): log-Q correction (see _negatives)
    cold_id: str = "learned"  # items never in training: "learned" (their untrained ID vector, the paper) |
    #   "neutral" (ID score = the user's mean ID score over warm items, so image/text rank them) |
    #   "content" (at evaluation, their ID vector is predicted from their image/text features by a ridge
    #   regression fitted on the warm items' learned ID vectors)
    cold_ridge: float = 1.0  # L2 penalty of that regression (features are unit vectors)

    def __post_init__(self) -> None:
        check_fields(
            self,
            "model.",
            positive=("d_id", "n_blocks", "n_heads", "tau"),
            nonneg=("frozen_width", "alpha", "beta", "lambda_x", "lambda_y", "gamma_t", "gamma_s", "gamma_xy", "train_negatives", "cold_ridge"),
            fraction=("dropout",),
            choices={
                "fusion": ("logits", "probabilities"),
                "score": ("cosine", "dot"),
                "feature_dtype": ("float32", "bfloat16"),
                "cold_id": COLD_ID_MODES,
                "negative_sampler": NEGATIVE_SAMPLERS,
            },
            divides=("d_id", "n_heads"),
        )
        if "id" not in self.modalities or not set(self.modalities) <= set(MODALITIES):
            raise ConfigError(f"model.modalities={list(self.modalities)}: must include 'id' and be a subset of {list(MODALITIES)}")
        if self.fusion == "probabilities" and self.train_negatives:
            raise ConfigError(
                f"model.fusion=probabilities with model.train_negatives={self.train_negatives}: a mixture of softmaxes needs "
                "the full softmax; set model.train_negatives=0"
            )
        if self.cold_id == "neutral" and self.fusion != "logits":
            raise ConfigError(
                f"model.cold_id=neutral with model.fusion={self.fusion}: the neutral ID score replaces cold items' ID logits "
                "before they are summed; use model.fusion=logits, or another model.cold_id"
            )
        if self.gamma_t == self.gamma_s == self.gamma_xy == 0:
            raise ConfigError("model.gamma_t, gamma_s and gamma_xy are all 0: at least one sequence must predict")


class LLMEMF(Recommender):
    Config = LLMEMFConfig
    earlier_defaults = {"frozen_width": 0, "train_negatives": 0, "negative_sampler": "uniform"}  # before 2026-12-01
    reference = "LLM-EMF: LLM-Enhanced Multimodal Fusion for Cross-Domain Sequential Recommendation (2025)"
    summary = "nine attention encoders (X, Y, XY x id, image, text); fused cosine scores; LLM-enriched CLIP text"
    # Measured: 1.3-1.6x faster training steps, the same test MRR as fp32 (synthetic shop and a Food-Kitchen
    # subset, 3 seeds each, evaluated in fp32); the full softmax is a few large matmuls that bf16 halves.
    prefers_bf16 = True

    @classmethod
    def features_read(cls, config: LLMEMFConfig) -> list[str]:
        return [name for m, name in (("img", config.img_feature), ("txt", config.txt_feature)) if m in config.modalities]

    def __init__(self, config: LLMEMFConfig, bundle: DataBundle):
        super().__init__(config, bundle)
        if "id" not in config.modalities or not set(config.modalities) <= set(MODALITIES):
            raise ValueError(f"modalities must include 'id' and be a subset of {MODALITIES}, got {config.modalities}")
        if config.fusion not in ("logits", "probabilities"):
            raise ValueError(f"fusion must be 'logits' or 'probabilities', got {config.fusion!r}")
        self.modalities = [m for m in MODALITIES if m in config.modalities]
        self.weights = {"id": 1.0, "img": config.alpha, "txt": config.beta}
        n = self.n_items
        self.item_id = nn.Embedding(n + 1, config.d_id, padding_idx=self.pad_id)
        nn.init.normal_(self.item_id.weight, std=config.d_id**-0.5)
        widths = {"id": config.d_id}
        self.feature_info: dict[str, str] = {}
        self.missing = nn.ParameterDict()
        self.frozen_cols: dict[str, tuple[int, int]] = {}  # modality -> its columns of frozen_keys
        self.projected: dict[str, tuple[str, torch.Tensor]] = {}  # modality -> (feature name, the projection its keys use)
        frozen_parts = []
        root = self.dataset_root = bundle.dataset.root
        for m, name in (("img", config.img_feature), ("txt", config.txt_feature)):
            if m not in self.modalities:
                continue
            if root is None:
                raise ValueError("LLM-EMF with image/text features needs a dataset loaded from a directory")
            feat = load_feature(root, name, n_items=n)
            if 0 < config.frozen_width < feat.manifest.dim:
                mean, basis = principal_axes(feat, config.frozen_width)
                # (1 + k, d): the mean, then the axes. Persistent, so a checkpoint keeps the projection it was
                # trained with even where a recomputation would differ (see _reproject_after_load).
                self.register_buffer(f"{m}_projection", torch.from_numpy(np.vstack([mean, basis.T])))
                self.projected[m] = (name, self.get_buffer(f"{m}_projection").clone())
                feat = project(feat, mean, basis)
            mask = torch.zeros(n + 1, dtype=torch.bool)
            mask[:n] = torch.from_numpy(feat.mask)
            values = torch.zeros(n + 1, feat.manifest.dim)
            values[:n] = F.normalize(torch.from_numpy(feat.values.astype("float32")), dim=-1)
            values[~mask] = 0.0
            # Key columns of modality m: the unit feature (zero if absent) and an indicator of "absent".
            # A query [q, q . unit(missing_m)] against them scores present items by cosine and absent
            # ones by the shared learned missing vector, in one matmul with no gradient for the keys.
            start = sum(p.shape[1] for p in frozen_parts)
            frozen_parts.append(torch.cat([values, (~mask).float()[:, None]], dim=1))
            self.frozen_cols[m] = (start, start + feat.manifest.dim + 1)
            self.register_buffer(f"{m}_mask", mask, persistent=False)  # (N+1,) has the feature
            self.missing[m] = nn.Parameter(torch.randn(feat.manifest.dim) * 0.02)
            widths[m] = feat.manifest.dim
            pca = f", PCA {feat.manifest.notes['projected_from']} -> {feat.manifest.dim}" if m in self.projected else ""
            self.feature_info[m] = f"{name}: {feat.manifest.encoder}{pca} ({feat.manifest.n_present}/{n} items)"
        dtype = getattr(torch, config.feature_dtype)
        self.register_buffer(
            "frozen_keys", torch.cat(frozen_parts, dim=1).to(dtype) if frozen_parts else torch.zeros(n + 1, 0, dtype=dtype), persistent=False
        )  # (N+1, sum over frozen modalities of d_m + 1)
        self.widths = widths
        self.set_cold_id(config.cold_id)
        self._imputed: tuple[tuple, torch.Tensor] | None = None  # cache of the content-imputed ID table
        train_ids = [np.asarray(seq, dtype=np.int64) for seq in bundle.dataset.splits["train"]["items"]]
        counts = np.bincount(np.concatenate(train_ids), minlength=n + 1)[: n + 1] if train_ids else np.zeros(n + 1, np.int64)
        self.register_buffer("warm", torch.from_numpy(counts > 0), persistent=False)  # (N+1,) item occurs in a training sequence
        # (N+1,) how often each item occurs in training sequences: the popularity negative sampler's weights
        self.register_buffer("train_count", torch.from_numpy(counts).float(), persistent=False)

        # Per modality, the encoders of the sequences X, Y, XY as one stack of three: the same function as
        # three SequenceEncoders (tests/test_llmemf.py copies weights across and compares), in batched matmuls.
        # Its initialisation (positions N(0, 0.02), zero biases) is the one every reported LLM-EMF number used.
        stack = (bundle.max_len, config.n_blocks, config.n_heads, config.dropout)
        self.encoders = nn.ModuleDict({m: StackedSequenceEncoder(len(SEQUENCES), widths[m], *stack) for m in self.modalities})
        self.register_load_state_dict_post_hook(LLMEMF._reproject_after_load)

    def _reproject_after_load(self, incompatible) -> None:
        """After load_state_dict: rebuild the frozen keys of every modality whose loaded projection differs
        from the one computed at construction (another machine's eigensolver may return other axes
        among nearly equal eigenvalues), so the model scores with the axes it was trained on."""
        for m, (name, used) in self.projected.items():
            loaded = self.get_buffer(f"{m}_projection")
            if torch.equal(loaded, used):
                continue
            mean, basis = loaded[0].double().cpu().numpy(), loaded[1:].T.double().cpu().numpy()
            feat = project(load_feature(self.dataset_root, name, n_items=self.n_items), mean, basis)
            start, end = self.frozen_cols[m]
            self.frozen_keys[: self.n_items, start : end - 1] = torch.from_numpy(feat.values).to(self.frozen_keys)
            self.projected[m] = (name, loaded.clone())

    def set_cold_id(self, mode: str) -> None:
        """Choose how items never seen in training are scored (see LLMEMFConfig.cold_id); also usable on a
        trained model, e.g. at serving time."""
        if mode not in COLD_ID_MODES:
            raise ValueError(f"cold_id must be one of {', '.join(COLD_ID_MODES)}, got {mode!r}")
        if mode == "content" and self.frozen_keys.shape[1] == 0:
            raise ValueError("cold_id='content' predicts ID vectors from image/text features: enable modality img or txt")
        self.config.cold_id = mode

    def sparse_embeddings(self) -> list[nn.Embedding]:
        # The sampled softmax reads a few rows of the ID table per step; the full softmax reads them all.
        return [self.item_id] if any(self._samples_negatives(hi - lo) for lo, hi in self.domain_ranges) else []

    # ---- item side ---------------------------------------------------------------------------
    def item_table(self, m: str) -> torch.Tensor:
        """(N+1, d_m) item vectors of modality m (learned for id; frozen, missing rows learned, otherwise)."""
        return self.item_vectors(m, slice(None))

    def item_vectors(self, m: str, ids: torch.Tensor | slice) -> torch.Tensor:
        """Encoder inputs (..., d_m) for ids: the ID row, or the frozen unit feature, or (absent) the learned
        missing vector as it is (its direction is what scoring uses; see scoring_keys)."""
        if m == "id":
            if self.config.cold_id == "content" and not self.training:
                return self._content_imputed_ids()[ids]
            if isinstance(ids, slice):
                return self.item_id.weight[ids]
            return F.embedding(ids, self.item_id.weight, sparse=self.item_id.sparse)  # no padding_idx: the pad row learns, as ever
        start, end = self.frozen_cols[m]
        rows = self.frozen_keys[ids, start : end - 1].float()
        return torch.where(getattr(self, f"{m}_mask")[ids][..., None], rows, self.missing[m].float())

    @torch.no_grad()
    def _content_imputed_ids(self) -> torch.Tensor:
        """(N+1, d_id) ID table where items never seen in training get the ID vector that a ridge
        regression from their frozen features (plus a bias) predicts; fitted on the warm items. Cached
        until the ID weights change (their autograd version counter moves with every optimizer step)."""
        weight = self.item_id.weight
        key = (weight._version, weight.data_ptr(), self.config.cold_ridge)
        if self._imputed is not None and self._imputed[0] == key:
            return self._imputed[1]
        feats = torch.cat([self.frozen_keys.float(), weight.new_ones(len(weight), 1, dtype=torch.float32)], dim=1)  # (N+1, D_f + 1)
        warm = self.warm.clone()
        warm[self.pad_id] = False
        cold = ~self.warm
        cold[self.pad_id] = False
        table = weight.detach().clone()
        with torch.autocast(weight.device.type, enabled=False):  # a bf16 Gram matrix would spoil the solve
            x, y = feats[warm], weight[warm].float()
            gram = x.T @ x + self.config.cold_ridge * torch.eye(x.shape[1], device=x.device)
            coef = torch.linalg.solve(gram, x.T @ y)  # (D_f + 1, d_id)
            table[cold] = (feats[cold] @ coef).to(table.dtype)
        self._imputed = (key, table)
        return table

    def scoring_keys(self, m: str, ids: torch.Tensor | slice) -> torch.Tensor:
        """The scoring keys of modality m for ids (any shape) -> (..., d_m): unit-length item vectors, except
        the ID vectors under ``score="dot"``, used as they are."""
        return self._as_keys(m, self.item_vectors(m, ids))

    def _as_keys(self, m: str, vectors: torch.Tensor) -> torch.Tensor:
        return vectors if m == "id" and self.config.score == "dot" else F.normalize(vectors, dim=-1)

    def _augmented_query(self, m: str, qm: torch.Tensor) -> torch.Tensor:
        """(n, d_m) -> (n, d_m + 1): the query and its score for the shared missing vector."""
        return torch.cat([qm, qm @ F.normalize(self.missing[m].float(), dim=0)[:, None]], dim=-1)

    # ---- sequence side -----------------------------------------------------------------------
    def encode(self, batch: Batch, last_only: bool) -> dict[str, torch.Tensor]:
        """Run the nine encoders. Returns per modality (3, B, L, d_m) states (or (3, B, d_m) if last_only),
        stacked in SEQUENCES order (X, Y, XY)."""
        width = batch.xy.shape[1]
        seqs = torch.stack([F.pad(s, (width - s.shape[1], 0), value=self.pad_id) for s in (batch.x, batch.y, batch.xy)])  # (3, B, L)
        valid = seqs != self.pad_id
        out = {}
        for m in self.modalities:
            # (3, B, L, d_m): ID rows scaled like SASRec's input; frozen rows are unit vectors
            vectors = self.item_vectors(m, seqs) * (self.config.d_id**0.5 if m == "id" else 1.0)
            out[m] = self.encoders[m](vectors, valid, last_only)  # (3, B, L, d_m) or (3, B, d_m)
        return out

    def _fused_queries(self, states: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Queries whose dot product with ``scoring_keys`` is the modality's weighted logit: unit-normalised and
        scaled by modality weight / tau, or under ``score="dot"`` the states scaled by the weight alone."""
        if self.config.score == "dot":
            return {m: h.float() * self.weights[m] for m, h in states.items()}
        return {m: F.normalize(h.float(), dim=-1) * (self.weights[m] / self.config.tau) for m, h in states.items()}

    def sequence_weights(self, domain: int) -> dict[int, float]:
        """Prediction weight of each sequence (SEQUENCES order) for targets of ``domain``: T, S, XY."""
        return {domain: self.config.gamma_t, 1 - domain: self.config.gamma_s, 2: self.config.gamma_xy}

    def _domain_logits(self, q: dict[str, torch.Tensor], lo: int, hi: int, candidates: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Per-modality weighted logits of queries q[m] (n, d_m) against items lo..hi-1 or candidates (n, C)."""
        out = {}
        for m, qm in q.items():
            if candidates is None and m != "id":
                start, end = self.frozen_cols[m]
                keys = self.frozen_keys[lo:hi, start:end]  # (N_d, d_m + 1), no grad
                out[m] = (self._augmented_query(m, qm).to(keys.dtype) @ keys.T).float()
            elif candidates is None:
                out[m] = qm @ self.scoring_keys(m, slice(lo, hi)).T
            else:
                keys = self.scoring_keys(m, candidates)  # (n, C, d_m)
                out[m] = torch.einsum("nd,ncd->nc", qm, keys)
        return out

    def _fused_logits(self, q: dict[str, torch.Tensor], lo: int, hi: int) -> torch.Tensor:
        """(n, N_d) logit-fusion scores over items lo..hi-1: one matmul for all frozen modalities (keys
        need no gradient) plus an addmm for the ID modality, with no (n, N_d) temporaries to add up."""
        id_keys = self.scoring_keys("id", slice(lo, hi))  # (N_d, d_id)
        frozen = [m for m in q if m != "id"]
        if not frozen:
            return q["id"] @ id_keys.T
        keys = self.frozen_keys[lo:hi]  # (N_d, D_frozen)
        query = torch.cat([self._augmented_query(m, q[m]) for m in frozen], dim=-1)  # (n, D_frozen)
        return torch.addmm((query.to(keys.dtype) @ keys.T).float(), q["id"], id_keys.T)

    def _domain_scores(self, q: dict[str, torch.Tensor], lo: int, hi: int) -> torch.Tensor:
        """(n, N_d) fused scores (logit fusion) or log mixture probabilities (probability fusion)."""
        if self.config.fusion == "logits":
            return self._fused_logits(q, lo, hi)
        return self._combine(self._domain_logits(q, lo, hi))

    def _combine(self, logits: dict[str, torch.Tensor]) -> torch.Tensor:
        """Fused score z (logit fusion) or log of the mixture probability (probability fusion)."""
        if self.config.fusion == "logits":
            return sum(logits.values())
        # probabilities: log sum_m w_m softmax(c_m), renormalised by sum_m w_m. logits[m] already carries
        # the weight w_m inside the scale, so undo it before the softmax; a modality of weight 0 adds nothing.
        used = [m for m in logits if self.weights[m] > 0]  # the ID modality's weight is always 1
        parts = [torch.log_softmax(logits[m] / self.weights[m], dim=-1) + math.log(self.weights[m]) for m in used]
        total = sum(self.weights[m] for m in used)
        return torch.logsumexp(torch.stack(parts), dim=0) - math.log(total)

    # ---- training ------------------------------------------------------------------------------
    def loss(self, batch: Batch) -> torch.Tensor:
        width = batch.xy.shape[1]
        states = self.encode(batch, last_only=False)  # m -> (3, B, L, d_m)
        targets = torch.stack(
            [F.pad(t, (width - t.shape[1], 0), value=self.pad_id) for t in (batch.x_target, batch.y_target, batch.xy_target)]
        )  # (3, B, L)
        seq_weight = torch.tensor([self.config.lambda_x, self.config.lambda_y, 1.0], device=targets.device)
        total = torch.zeros((), device=targets.device)
        count = int((targets[2] != self.pad_id).sum())  # L_XY's targets: the loss is a mean over them
        q_all = self._fused_queries(states)
        for lo, hi in self.domain_ranges:
            sel = (targets >= lo) & (targets < hi)  # (3, B, L): X-seq targets are X items, etc.
            if not sel.any():
                continue
            q = {m: qm[sel] for m, qm in q_all.items()}  # (n, d_m) queries of all three sequences together
            t = targets[sel]  # (n,)
            if self._samples_negatives(hi - lo):
                ce = self._sampled_cross_entropy(q, t, lo, hi)
            else:
                logits = self._domain_scores(q, lo, hi)  # (n, N_d)
                ce = F.cross_entropy(logits.float(), t - lo, reduction="none")
            w = seq_weight[sel.nonzero()[:, 0]]
            total = total + (ce * w).sum()
        return total / max(count, 1)

    def _samples_negatives(self, n_items: int) -> bool:
        """Whether a domain of n_items trains by sampled softmax: K draws from a domain of at most K items
        would cost more than its full softmax and only estimate it, so such a domain gets the full one."""
        k = self.config.train_negatives
        return k > 0 and (self.config.negative_sampler == "in_batch" or k < n_items)

    def _negatives(self, t: torch.Tensor, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Negatives shared by the rows of one domain, and each one's log-Q correction bias.

        The sampled partition function sum_j exp(s_j + bias_j) estimates the full one (over the
        domain's items other than the target) without bias when bias_j = -log E[count of j]:
          uniform     K draws with replacement, E[count] = K / N          -> bias log(N / K)
          popularity  K draws with q_j = (1 + n_j) / sum (1 + n), E = K q_j -> bias -log(K q_j)
          in_batch    the distinct targets of the batch (n draws from the data's own item
                      distribution, estimated by q_j above); j is in with probability
                      1 - (1 - q_j)^n (Horvitz-Thompson)             -> bias -log(1 - (1 - q_j)^n)
        Returns (ids (K,), bias (K,)); bias is 0 without ``sampled_correction``."""
        sampler, k, device = self.config.negative_sampler, self.config.train_negatives, t.device
        if sampler == "uniform":
            neg = torch.randint(lo, hi, (k,), device=device)
            bias = torch.full((k,), math.log((hi - lo) / k), device=device)
        else:
            weight = self.train_count[lo:hi] + 1.0
            q = weight / weight.sum()  # (N_d,)
            if sampler == "popularity":
                local = torch.multinomial(q, k, replacement=True)
                bias = -torch.log(k * q[local])
            else:  # in_batch
                local = torch.unique(t - lo)
                bias = -torch.log(-torch.expm1(len(t) * torch.log1p(-q[local].clamp(max=1 - 1e-7))))
            neg = local + lo
        return neg, bias if self.config.sampled_correction else torch.zeros_like(bias)

    def _sampled_cross_entropy(self, q: dict[str, torch.Tensor], t: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        """Softmax over [target, negatives of ``_negatives``, shared by the rows]: the target is always
        in, a negative equal to the row's target is masked out, and each negative's logit carries its
        log-Q correction. Probability fusion needs full softmaxes, so it is not allowed here."""
        if self.config.fusion != "logits":
            raise ValueError("train_negatives > 0 needs fusion='logits'")
        neg, bias = self._negatives(t, lo, hi)
        pos = sum((qm * self.scoring_keys(m, t)).sum(-1) for m, qm in q.items())  # (n,)
        # Logit fusion is a sum of dot products: one dot product of the concatenated queries and keys.
        keys = torch.cat([self.scoring_keys(m, neg) for m in q], dim=-1)  # (K, sum d_m)
        return sampled_softmax_nll(torch.cat(list(q.values()), dim=-1), pos, keys, bias, neg, t)

    # ---- prediction ----------------------------------------------------------------------------
    def scores(self, batch: Batch, domain: int, candidates: torch.Tensor | None = None) -> torch.Tensor:
        lo, hi = self.domain_ranges[domain]
        q = self._fused_queries(self.encode(batch, last_only=True))  # m -> (3, B, d_m)
        seq_weight = self.sequence_weights(domain)
        if self.config.fusion == "logits":
            # Logit fusion is linear in the queries: fold the three sequences into one query.
            mixed = {m: sum(seq_weight[s] * qm[s] for s in range(3)) for m, qm in q.items()}
            if self.config.cold_id == "neutral":
                logits = self._domain_logits(mixed, lo, hi)  # (B, N_d) per modality
                warm = self.warm[lo:hi]
                if warm.any() and not warm.all():
                    neutral = logits["id"][:, warm].mean(1, keepdim=True)  # (B, 1)
                    logits["id"] = torch.where(warm[None], logits["id"], neutral)
                full = self._combine(logits)
                return full if candidates is None else full.gather(1, candidates - lo)
            if candidates is None:
                return self._fused_logits(mixed, lo, hi)
            if self._candidates_via_full(candidates.shape[1], hi - lo):
                return self._fused_logits(mixed, lo, hi).gather(1, candidates - lo)
            return self._combine(self._domain_logits(mixed, lo, hi, candidates))
        full = sum(seq_weight[s] * self._domain_scores({m: qm[s] for m, qm in q.items()}, lo, hi) for s in range(3))
        return full if candidates is None else full.gather(1, candidates - lo)

    # None: choose by cost (below); True / False force a path (tests/test_llmemf.py compares them).
    candidates_via_full: bool | None = None

    def candidate_scores_are_full_columns(self, n_candidates: int, domain: int) -> bool:
        lo, hi = self.domain_ranges[domain]
        if self.config.fusion != "logits" or self.config.cold_id == "neutral":
            return True  # scores() picks the columns of the full scores in these modes
        return self._candidates_via_full(n_candidates, hi - lo)

    def _candidates_via_full(self, n_candidates: int, n_domain: int) -> bool:
        """Score (B, C) candidates by gathering their keys (B, C, sum d_m) or by scoring the whole
        domain (B, N_d) in matmuls and picking columns: the second reads fewer numbers whenever
        C x sum d_m > N_d (the c2dsr protocol's 1000 candidates x 256-d ID keys = 256k per user
        against, e.g., 64k Book items), and a matmul beats a gather-then-einsum at equal size."""
        if self.candidates_via_full is not None:
            return self.candidates_via_full
        width = sum(self.widths[m] for m in self.modalities)
        return n_candidates * width >= n_domain

    # ---- serving: logit fusion as one dot product per domain ---------------------------------
    def fused_query(self, batch: Batch, domain: int) -> torch.Tensor:
        """(B, D) query whose dot product with ``fused_keys(domain)`` is ``scores(batch, domain)`` under logit
        fusion: the three sequences' weighted, normalised queries folded into one (scores are linear in
        them), the frozen modalities' augmented parts first (frozen_keys' column order), then the ID part."""
        if self.config.fusion != "logits":
            raise ValueError("fused_query needs fusion='logits' (probability fusion is not one dot product)")
        return self.fold_queries(self.sequence_queries(batch), domain)

    def sequence_queries(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The encoders' part of ``fused_query``, the same for either domain: per modality (3, B, d_m) the
        normalised, weighted queries of the sequences X, Y, XY."""
        return self._fused_queries(self.encode(batch, last_only=True))

    def fold_queries(self, q: dict[str, torch.Tensor], domain: int) -> torch.Tensor:
        """``sequence_queries`` -> the (B, D) ``fused_query`` of a target domain."""
        seq_weight = self.sequence_weights(domain)
        mixed = {m: sum(seq_weight[s] * qm[s] for s in range(3)) for m, qm in q.items()}
        return torch.cat([self._augmented_query(m, mixed[m]) for m in self.frozen_cols] + [mixed["id"]], dim=-1)

    @torch.no_grad()
    def fused_keys(self, domain: int, cold_id: str | None = None) -> torch.Tensor:
        """(N_d, D) float32 key matrix of ``domain``'s items for ``fused_query``, under the cold-start policy
        ``cold_id`` (default: the config's). All three policies are linear in the keys: "content" swaps in
        the imputed ID rows, "neutral" gives every cold item the mean warm unit ID key (so its ID score is
        the user's mean ID score over warm items, as ``scores`` computes it)."""
        mode = cold_id or self.config.cold_id
        if mode not in COLD_ID_MODES or (mode == "content" and self.frozen_keys.shape[1] == 0):
            self.set_cold_id(mode)  # raises the ValueError that names the problem
        lo, hi = self.domain_ranges[domain]
        table = self._content_imputed_ids() if mode == "content" else self.item_id.weight
        ids = self._as_keys("id", table[lo:hi].float())  # (N_d, d_id)
        warm = self.warm[lo:hi]
        if mode == "neutral" and warm.any() and not warm.all():
            ids = torch.where(warm[:, None], ids, ids[warm].mean(0))
        return torch.cat([self.frozen_keys[lo:hi].float(), ids], dim=1)

    def describe_features(self) -> str:
        return "; ".join(f"{m} <- {info}" for m, info in self.feature_info.items()) or "id only"
