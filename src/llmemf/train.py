"""``python -m llmemf.train ARGS`` is ``llmemf train ARGS``: the module torchrun starts once per rank.

torchrun --nproc_per_node 4 -m llmemf.train --model sasrec --dataset data/fk train.threads=1
"""

from __future__ import annotations

import sys


def main() -> None:
    from llmemf.cli import app

    app(["train", *sys.argv[1:]], prog_name="python -m llmemf.train")


if __name__ == "__main__":
    main()
