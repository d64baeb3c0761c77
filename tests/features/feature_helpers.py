"""Fixtures of the feature tests: a small dataset whose items have titles and PNG images (colour and
shape named in the title, so an image encoder can learn to match them), and loopback servers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from llmemf.data.dataset import Dataset, DomainInfo, Manifest, make_items_frame, split_history_target

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220), "yellow": (230, 210, 40)}
SHAPES = ("circle", "square", "triangle")


def draw_item(colour: str, shape: str, rng: np.random.Generator, size: int = 72) -> Image.Image:
    bg = tuple(int(c) for c in rng.integers(200, 256, 3))
    im = Image.new("RGB", (size + int(rng.integers(0, 24)), size), bg)  # not square: exercises resize + crop
    d = ImageDraw.Draw(im)
    cx, cy, r = im.width // 2 + int(rng.integers(-6, 7)), size // 2 + int(rng.integers(-6, 7)), int(rng.integers(18, 28))
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        d.ellipse(box, fill=COLOURS[colour])
    elif shape == "square":
        d.rectangle(box, fill=COLOURS[colour])
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=COLOURS[colour])
    return im


def make_sequences(n_x: int, n_y: int, seed: int, n_users: int = 60) -> Dataset:
    """Users walk through neighbouring items (both domains mixed); leave-one-out valid/test lines."""
    rng = np.random.default_rng(seed)
    n = n_x + n_y
    items = make_items_frame([n_x, n_y], [f"I{i:04d}" for i in range(n)])
    rows = {"train": [], "valid": [], "test": []}
    for u in range(n_users):
        length, start = int(rng.integers(5, 10)), int(rng.integers(0, n))
        seq = [(start + 3 * k + int(rng.integers(0, 2))) % n for k in range(length + 2)]
        ts = list(range(1000 * u, 1000 * u + len(seq)))
        rows["train"].append({"user": f"u{u}", "items": seq[:-2], "timestamps": ts[:-2]})
        for split, end in (("valid", -1), ("test", None)):
            s, t = (seq[:end], ts[:end]) if end else (seq, ts)
            hist, hts, target, tts = split_history_target(s, t)
            rows[split].append(
                {"user": f"u{u}", "items": hist, "timestamps": hts, "target": target, "target_domain": int(target >= n_x), "target_timestamp": tts}
            )
    manifest = Manifest(name="features-test", domains=[DomainInfo("Kitchen", n_x, 0), DomainInfo("Food", n_y, n_x)], source="tests")
    return Dataset(manifest=manifest, items=items, splits={k: pd.DataFrame(v) for k, v in rows.items()})


def make_image_dataset(root: Path, n_x: int = 30, n_y: int = 40, seed: int = 0) -> Dataset:
    """The tiny two-domain dataset with a title, a description and a PNG per item (two items have
    problems on purpose: one missing file, one corrupt file)."""
    rng = np.random.default_rng(seed)
    ds = make_sequences(n_x, n_y, seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    titles, descs, paths = [], [], []
    for i in range(ds.n_items):
        colour, shape = list(COLOURS)[i % 4], SHAPES[(i // 4) % 3]
        noun = "mug" if i < n_x else "plate"
        titles.append(f"{colour} {shape} {noun}")
        descs.append(f"A {noun} decorated with a {colour} {shape}." if i % 2 else None)
        rel = f"images/{i}.png"
        draw_item(colour, shape, rng).save(root / rel)
        paths.append(rel)
    if ds.n_items > 6:
        (root / "images/5.png").unlink()  # missing file
        (root / "images/6.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")  # corrupt file
    ds.items["title"], ds.items["description"], ds.items["image"] = titles, descs, paths
    ds.save(root)
    return Dataset.load(root)
