"""Before/after for LLM-EMF's encoder batching: three separate SequenceEncoders (X, Y, XY) vs one
StackedSequenceEncoder(3), same width, same input, forward + backward, in one process.

    .venv/bin/python benchmarks/bench_stacked_encoder.py [--width 512] [--batch 256] [--length 15]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from llmemf.models.layers import SequenceEncoder, StackedSequenceEncoder


def timed(fn, reps: int = 7) -> float:
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--length", type=int, default=15)
    args = ap.parse_args()
    torch.manual_seed(0)
    d, B, L = args.width, args.batch, args.length
    x = torch.randn(3, B, L, d)
    valid = torch.rand(3, B, L) > 0.3
    valid[..., -1] = True
    separate = [SequenceEncoder(d, L, 2, 1, 0.3) for _ in range(3)]
    stacked = StackedSequenceEncoder(3, d, L, 2, 1, 0.3)

    def run_separate():
        out = torch.stack([enc(x[i], valid[i]) for i, enc in enumerate(separate)])
        out.sum().backward()

    def run_stacked():
        stacked(x, valid).sum().backward()

    t_sep, t_stk = timed(run_separate), timed(run_stacked)
    print(f"threads {torch.get_num_threads()}, width {d}, batch {B}, length {L}, 2 blocks, forward+backward")
    print(f"three SequenceEncoders   {1000 * t_sep:8.1f} ms (median of 7)")
    print(f"StackedSequenceEncoder   {1000 * t_stk:8.1f} ms (median of 7)")
    print(f"speed-up                 {t_sep / t_stk:8.2f}x")


if __name__ == "__main__":
    main()
