"""Running the official C2DSR code (cjx96/C2DSR) from a checkout, for the scripts that measure against it.

The checkout is given on the command line and never copied into this repository. What no longer runs as
written is patched at run time only: ``Tensor.cuda`` becomes a no-op on a CPU-only torch. The official
loader reads ``./dataset/<name>/`` in its own file format, which ``write_official_files`` writes from an
llmemf dataset.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import sys
import tempfile
from pathlib import Path

import torch

# train_rec.py's defaults, on the CPU
OFFICIAL_OPT = {
    "model": "C2DSR", "hidden_units": 256, "num_blocks": 2, "num_heads": 1, "GNN": 1, "dropout": 0.2,
    "optim": "adam", "lr": 0.001, "lr_decay": 1, "weight_decay": 5e-4, "decay_epoch": 5, "max_grad_norm": 5.0,
    "leakey": 0.1, "maxlen": 15, "cpu": True, "cuda": False, "lambda": 0.7, "batch_size": 256,
}  # fmt: skip


def write_official_files(ds, root: Path) -> None:
    """The dataset in the C2DSR file format: Alist/Blist (one line per item) and
    ``user<TAB>0<TAB>item|ts<TAB>...`` lines, the valid/test target as the last interaction."""
    root.mkdir(parents=True)
    n_x, n_y = ds.manifest.domains[0].n_items, ds.manifest.domains[1].n_items
    for name, n in (("Alist.txt", n_x), ("Blist.txt", n_y)):
        (root / name).write_text("".join(f"{i}\tI{i}\t{i}\n" for i in range(n)))
    for split, fname in (("train", "traindata_new.txt"), ("valid", "validdata_new.txt"), ("test", "testdata_new.txt")):
        lines = []
        for row in ds.splits[split].itertuples(index=False):
            items, stamps = list(row.items), list(row.timestamps)
            if split != "train":
                items, stamps = items + [int(row.target)], stamps + [int(row.target_timestamp)]
            lines.append(f"{row.user}\t0\t" + "\t".join(f"{i}|{t}" for i, t in zip(items, stamps, strict=True)) + "\n")
        (root / fname).write_text("".join(lines))


def import_official(checkout: Path):
    """The checkout's (utils.loader module, CDSRTrainer, GraphMaker), importable on a CPU-only torch."""
    src = (checkout / "C2DSR_src").resolve()
    if not (src / "model" / "trainer.py").is_file():
        raise SystemExit(f"{checkout}: no C2DSR_src/model/trainer.py; pass a checkout of cjx96/C2DSR")
    torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    sys.path.insert(0, str(src))
    import utils.loader as official_loader  # the checkout's modules
    from model.trainer import CDSRTrainer
    from utils.GraphMaker import GraphMaker

    return official_loader, CDSRTrainer, GraphMaker


@contextlib.contextmanager
def official_files(ds):
    """A temporary directory holding ``dataset/<name>/`` in the official format, as the working directory."""
    tmp = Path(tempfile.mkdtemp(prefix="official_c2dsr_"))
    write_official_files(ds, tmp / "dataset" / ds.manifest.name)
    cwd = os.getcwd()
    os.chdir(tmp)  # the official loader reads ./dataset/<name>/
    try:
        yield tmp
    finally:
        os.chdir(cwd)


def official_trainer(checkout: Path, ds, seed: int = 2040):
    """(CDSRTrainer, training DataLoader) of the official code with train_rec.py's defaults on ``ds``."""
    official_loader, CDSRTrainer, GraphMaker = import_official(checkout)
    name = ds.manifest.name
    opt = {**OFFICIAL_OPT, "data_dir": name}
    with official_files(ds):
        random.seed(seed)
        torch.manual_seed(seed)
        with contextlib.redirect_stdout(io.StringIO()):
            loader = official_loader.DataLoader(name, opt["batch_size"], opt, evaluation=-1)
            opt["itemnum"] = opt["source_item_num"] + opt["target_item_num"] + 1
            graph = GraphMaker(opt, f"./dataset/{name}/traindata_new.txt")
    return CDSRTrainer(opt, graph.adj, graph.adj_single), loader
