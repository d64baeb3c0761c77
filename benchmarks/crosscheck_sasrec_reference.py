"""Does this pipeline (data, batches, trainer, evaluation) reproduce the C2DSR scenarios' reference SASRec?

    PYTHONPATH=src .venv/bin/python benchmarks/crosscheck_sasrec_reference.py DATASET [--out DIR] [--epochs 10] [--threads 1]

The Food-Kitchen scenario README (the C2DSR files' ``README.md``) describes a plain SASRec and its test
MRR on those files: width 256, 2 blocks, 1 head, dropout 0.2, max length 15, Adam lr 1e-3 with betas
(0.9, 0.98), batch 256, no L2, fp32, the full softmax over the target's own domain at every position;
torch's TransformerEncoderLayer with norm_first (ReLU, feed-forward width = hidden) and a final
LayerNorm; learned positions (torch's default init); item rows N(0, 0.02) scaled by sqrt(hidden). "An
implementation far below that has a bug." This script builds exactly that model from the description
(not llmemf's SASRec, which follows the authors' block layout), trains it with llmemf's trainer on
DATASET (early stopping on validation MRR, patience 3) and prints llmemf's test tables beside the
README's numbers. The README: Food 11.9 / Kitchen 6.0 MRR (c2dsr protocol), 1.8 / 0.6 (full ranking).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch
from torch import nn

from llmemf.models import base
from llmemf.models.layers import MergedSequenceModel

README_MRR = {"c2dsr": (11.9, 6.0), "full": (1.8, 0.6)}  # Food, Kitchen; the scenario README's reference


@dataclass
class ReferenceConfig:
    hidden: int = 256
    n_blocks: int = 2
    n_heads: int = 1
    dropout: float = 0.2


class ReferenceSASRec(MergedSequenceModel):
    """The README's SASRec on torch's encoder layers; scores and the per-domain softmax are llmemf's shared ones."""

    Config = ReferenceConfig
    reference = "the C2DSR Food-Kitchen README's reference SASRec"
    summary = "torch TransformerEncoder (norm_first), full softmax over the target's domain"
    adam_betas = (0.9, 0.98)

    def __init__(self, config: ReferenceConfig, bundle):
        super().__init__(config, bundle)
        d = config.hidden
        self.item = nn.Embedding(self.n_items + 1, d, padding_idx=self.pad_id)
        with torch.no_grad():
            nn.init.normal_(self.item.weight, std=0.02)
            self.item.weight[self.pad_id].zero_()
        self.pos = nn.Embedding(bundle.max_len, d)
        self.drop = nn.Dropout(config.dropout)
        layer = nn.TransformerEncoderLayer(d, config.n_heads, d, config.dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, config.n_blocks, enable_nested_tensor=False)
        self.ln_f = nn.LayerNorm(d)

    def encode(self, seq: torch.Tensor) -> torch.Tensor:
        """(B, L) left-padded ids -> (B, L, d); positions counted from the right, as llmemf's windows are."""
        L = seq.shape[1]
        x = self.drop(self.item(seq) * self.config.hidden**0.5 + self.pos(torch.arange(L - 1, -1, -1, device=seq.device))[None])
        causal = torch.ones(L, L, dtype=torch.bool, device=seq.device).triu(1)
        x = self.encoder(x, mask=causal, src_key_padding_mask=seq == self.pad_id)
        return self.ln_f(torch.nan_to_num(x))  # a pad query sees no key (NaN); it is never scored


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset")
    ap.add_argument("--out", default="runs/crosscheck_sasrec_reference")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    base.REGISTRY["sasrec_reference"] = f"{__name__}:ReferenceSASRec"
    from llmemf.cli import app

    print("the README's reference (test MRR %, Food / Kitchen): " + "; ".join(f"{p} {f} / {k}" for p, (f, k) in README_MRR.items()))
    app(
        [
            "train", "-m", "sasrec_reference", "-d", args.dataset, "-o", args.out, "max_len=15", "seed=1",
            f"train.epochs={args.epochs}", "train.patience=3", "train.lr=1e-3", "train.batch_size=256", "train.weight_decay=0",
            "train.bf16=false", f"train.threads={args.threads}", "train.progress=false",
        ],
        standalone_mode=False,
    )  # fmt: skip


if __name__ == "__main__":
    main()
