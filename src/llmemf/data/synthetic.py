"""The embedded default dataset: a deterministic two-domain shop (Apparel x Home) with titles,
descriptions, PNG images and users whose hidden tastes span both domains.

Why it looks the way it does (each design choice serves one of the signals LLM-EMF fuses):

- Every item has seven attributes. Where they surface is fixed, so that each modality carries
  something the others cannot:
      image only : colour, pattern                 (drawn, never written)
      text only  : brand, material, price band     (written, never drawn; price only in the description)
      both       : category (silhouette + noun), style (background tint + adjective)
- A user has hidden tastes shared across domains: a style, a two-colour palette, a pattern, two
  favourite brands (every brand sells in both domains), a material family (natural / luxe / modern,
  which maps to different materials per domain) and a price band. Tastes learned in one domain
  therefore predict choices in the other (the cross-domain signal).
- Sequences interleave the domains in time; the next item's category follows the previous item's
  category through a fixed sparse transition table that crosses domains (jacket -> scarf, mug ->
  vase...), which is the sequential signal an ID model can learn.
- Item popularity is long-tailed (lognormal) and interactions are sparse, so many items are seen a
  handful of times: an ID-only model cannot learn their embeddings well, while their text and image
  attributes are shared with popular items.
- A held-out set of cold items per domain (``cold_fraction``) never occurs in any training sequence
  nor in any evaluation history; they occur only as validation/test targets ("new arrivals": an
  evaluation user's final choice is drawn among the cold items with probability
  ``cold_target_rate``, by the same taste model). Their ids go to ``cold_items.json``.

Splits (like the C2DSR files, and like ``prepare log``): users are split, not interactions.
Training users' sequences all end before ``T_cut``; validation users' targets fall in the two
weeks after ``T_cut`` and test users' targets in the two weeks after that, so no training
interaction is later than any evaluation target, and every valid/test line's final interaction
(``split_history_target``) is its target.

Besides the dataset (``Dataset.save``), the output directory holds:
    images/NNNNNN.png   64x64 PNG per item (items.image = "images/NNNNNN.png", relative to the directory)
    cold_items.json     {"items": [...global ids], "by_domain": {...}, "note": ...}
    attributes.parquet  the hidden ground-truth attributes per item (for diagnostics and tests only;
                        no model may read it)
    synthetic.json      the generator config and which attribute lives in which modality
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from PIL import Image, ImageDraw

from llmemf.data.dataset import Dataset, DomainInfo, Manifest, make_items_frame, split_history_target
from llmemf.errors import UserError
from llmemf.io import atomic_write_bytes, atomic_write_table

DOMAINS = ("Apparel", "Home")
CATEGORIES = (
    ("t-shirt", "dress", "jacket", "sweater", "scarf", "hat", "skirt", "sneakers"),
    ("cushion", "vase", "lamp", "rug", "mug", "throw blanket", "clock", "side table"),
)
STYLES = ("rustic", "minimalist", "retro", "bohemian", "industrial", "classic")
# Pale background tint per style: the image-side trace of the style (style is in both modalities).
STYLE_BACKGROUND = ((222, 204, 178), (244, 244, 244), (250, 236, 168), (242, 212, 226), (188, 194, 202), (208, 228, 208))
COLOURS = ("red", "orange", "yellow", "green", "teal", "blue", "purple", "pink")
COLOUR_RGB = ((210, 40, 40), (240, 130, 20), (235, 200, 20), (40, 160, 60), (0, 140, 140), (40, 80, 210), (130, 50, 170), (235, 110, 170))
PATTERNS = ("plain", "striped", "dotted", "checked", "zigzag")
BRANDS = ("Nordhaus", "Kestrel", "Lumen", "Fable", "Oakridge", "Marlowe", "Tessera", "Juniper", "Halden", "Verano", "Aster", "Brindle")
MATERIAL_FAMILIES = ("natural", "luxe", "modern")
MATERIALS = (  # [domain][family] -> materials; one family maps to different words per domain
    (("cotton", "linen", "wool"), ("silk", "cashmere", "leather"), ("polyester", "nylon", "fleece")),
    (("oak", "bamboo", "jute"), ("marble", "brass", "velvet"), ("glass", "steel", "acrylic")),
)
PRICE_BANDS = ("budget", "mid-range", "premium")
PRICE_RANGE = ((8, 30), (30, 90), (90, 400))  # pounds
PRICE_PHRASES = (
    ("An affordable everyday pick", "Great value for the price", "A budget-friendly choice"),
    ("Fairly priced for its quality", "A sensible mid-range buy", "Good quality at a fair price"),
    ("A premium piece made to last", "Luxury finish, investment price", "A high-end statement piece"),
)
STYLE_PHRASES = {
    "rustic": "with a warm, country-cottage character",
    "minimalist": "with clean lines and nothing superfluous",
    "retro": "inspired by the seventies",
    "bohemian": "with a relaxed, free-spirited feel",
    "industrial": "with a raw, workshop-inspired look",
    "classic": "in a timeless, traditional cut",
}
IMAGE_ONLY = ("colour", "pattern")
TEXT_ONLY = ("brand", "material", "price_band")
BOTH = ("category", "style")
DAY = 86_400
EPOCH = 1_704_067_200  # 2024-01-01 00:00 UTC; all timestamps are unix seconds


class SyntheticConfigError(UserError, ValueError):
    """An unknown key or a bad value in the synthetic generator's overrides."""


@dataclass
class SyntheticConfig:
    seed: int = 0  # everything (items, users, images) follows from this
    n_users: int = 2000  # users in total, split into train / valid / test users
    n_items_x: int = 500  # Apparel items (domain X)
    n_items_y: int = 500  # Home items (domain Y)
    eval_fraction: float = 0.15  # fraction of users for validation, and again for test
    min_len: int = 5  # interactions per user (the target included), drawn uniformly in [min_len, max_len]
    max_len: int = 15  # the C2DSR cap: a sequence holds at most this many interactions
    min_per_domain: int = 2  # every user interacts at least this often with each domain
    cold_fraction: float = 0.05  # fraction of each domain's items held out of training (cold start)
    cold_target_rate: float = 0.1  # probability that an evaluation target is a cold item ("new arrival")
    image_size: int = 64  # PNG side in pixels
    popularity_sigma: float = 1.0  # spread of the lognormal item popularity (long tail)
    # Strengths of each hidden taste in the choice logit (a match adds the weight):
    w_style: float = 2.5  # in text and image
    w_colour: float = 2.5  # image only
    w_pattern: float = 2.0  # image only
    w_brand: float = 2.5  # text only (title)
    w_material: float = 2.0  # text only (title)
    w_price: float = 1.5  # text only (description)
    w_sequence: float = 2.5  # follow-up category of the previous item (the sequential signal)

    @classmethod
    def from_overrides(cls, overrides: list[str]) -> SyntheticConfig:
        """``["n_users=500", "seed=3"]`` -> config; unknown keys and bad values raise SyntheticConfigError."""
        types = {f.name: f.type for f in fields(cls)}
        values: dict[str, object] = {}
        for ov in overrides:
            key, sep, raw = ov.partition("=")
            key = key.strip()
            if not sep:
                raise SyntheticConfigError(f"override {ov!r} is not key=value")
            if key not in types:
                raise SyntheticConfigError(f"unknown synthetic option {key!r}; known: {', '.join(types)}")
            caster = int if types[key] in (int, "int") else float
            try:
                values[key] = caster(raw)
            except ValueError:
                raise SyntheticConfigError(f"{key}={raw!r}: expected {caster.__name__}") from None
        cfg = cls(**values)
        cfg.check()
        return cfg

    def check(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise SyntheticConfigError(msg)

        need(self.n_items_x >= 20 and self.n_items_y >= 20, "n_items_x and n_items_y must be at least 20")
        need(0 < self.eval_fraction < 0.5, "eval_fraction must lie in (0, 0.5)")
        n_eval = round(self.n_users * self.eval_fraction)
        msg = f"n_users={self.n_users} at eval_fraction={self.eval_fraction} leaves no train or eval users"
        need(n_eval >= 1 and self.n_users - 2 * n_eval >= 1, msg)
        need(2 * self.min_per_domain <= self.min_len <= self.max_len, "need 2*min_per_domain <= min_len <= max_len")
        need(self.min_per_domain >= 1, "min_per_domain must be at least 1")
        need(0 <= self.cold_fraction < 0.5, "cold_fraction must lie in [0, 0.5)")
        need(0 <= self.cold_target_rate <= 1, "cold_target_rate must lie in [0, 1]")
        need(self.cold_fraction == 0 or self.cold_target_rate > 0, "cold items need cold_target_rate > 0 to appear as targets")
        need(16 <= self.image_size <= 512, "image_size must lie in [16, 512]")
        need(self.popularity_sigma >= 0, "popularity_sigma must be >= 0")


# ---- items -----------------------------------------------------------------------------------


def _make_items(cfg: SyntheticConfig, rng: np.random.Generator) -> pd.DataFrame:
    """One row per item: hidden attributes, base popularity, title, description, price."""
    rows = []
    for dom, n in enumerate((cfg.n_items_x, cfg.n_items_y)):
        for k in range(n):
            cat = int(rng.integers(len(CATEGORIES[dom])))
            family = int(rng.integers(len(MATERIAL_FAMILIES)))
            band = int(rng.integers(len(PRICE_BANDS)))
            lo, hi = PRICE_RANGE[band]
            rows.append(
                {
                    "domain": dom,
                    "local": k,
                    "category": cat,
                    "style": int(rng.integers(len(STYLES))),
                    "colour": int(rng.integers(len(COLOURS))),
                    "pattern": int(rng.integers(len(PATTERNS))),
                    "brand": int(rng.integers(len(BRANDS))),
                    "material_family": family,
                    "material": str(MATERIALS[dom][family][int(rng.integers(3))]),
                    "price_band": band,
                    "price": int(rng.integers(lo, hi)),
                    "price_phrase": int(rng.integers(3)),
                    "popularity": float(rng.normal(0.0, cfg.popularity_sigma)),
                }
            )
    df = pd.DataFrame(rows)
    df.insert(0, "item_id", np.arange(len(df), dtype=np.int64))
    return df


def item_text(row: dict) -> tuple[str, str]:
    """Title and description from the text-visible attributes only (never colour or pattern)."""
    dom = int(row["domain"])
    cat = CATEGORIES[dom][int(row["category"])]
    style = STYLES[int(row["style"])]
    brand = BRANDS[int(row["brand"])]
    title = f"{brand} {style} {row['material']} {cat}"
    desc = (
        f"{'An' if style[0] in 'aeiou' else 'A'} {style} {cat} in {row['material']} by {brand}, {STYLE_PHRASES[style]}. "
        f"{PRICE_PHRASES[int(row['price_band'])][int(row['price_phrase'])]}, at £{int(row['price'])}."
    )
    return title, desc


# ---- images ----------------------------------------------------------------------------------


def _silhouette(draw: ImageDraw.ImageDraw, dom: int, cat: int, s: int) -> None:
    """Fill the category's shape with 255 on a mask of side s (drawn at 64 units, scaled)."""
    f = s / 64.0

    def P(pts):  # scale a polygon
        return [(x * f, y * f) for x, y in pts]

    def R(x0, y0, x1, y1):
        return [x0 * f, y0 * f, x1 * f, y1 * f]

    name = CATEGORIES[dom][cat]
    if name == "t-shirt":
        draw.polygon(P([(18, 12), (46, 12), (58, 24), (50, 30), (46, 26), (46, 54), (18, 54), (18, 26), (14, 30), (6, 24)]), fill=255)
    elif name == "dress":
        draw.polygon(P([(26, 8), (38, 8), (40, 22), (54, 56), (10, 56), (24, 22)]), fill=255)
    elif name == "jacket":
        draw.polygon(P([(16, 10), (48, 10), (60, 50), (50, 52), (46, 30), (46, 56), (18, 56), (18, 30), (14, 52), (4, 50)]), fill=255)
    elif name == "sweater":
        draw.rounded_rectangle(R(16, 12, 48, 56), radius=6 * f, fill=255)
        draw.rectangle(R(6, 14, 16, 50), fill=255)
        draw.rectangle(R(48, 14, 58, 50), fill=255)
    elif name == "scarf":
        draw.polygon(P([(8, 16), (20, 8), (56, 44), (44, 56)]), fill=255)
    elif name == "hat":
        draw.pieslice(R(14, 14, 50, 50), 180, 360, fill=255)
        draw.rectangle(R(6, 32, 58, 40), fill=255)
    elif name == "skirt":
        draw.polygon(P([(22, 12), (42, 12), (56, 54), (8, 54)]), fill=255)
    elif name == "sneakers":
        draw.polygon(P([(6, 30), (28, 30), (40, 38), (58, 40), (58, 50), (6, 50)]), fill=255)
    elif name == "cushion":
        draw.rounded_rectangle(R(10, 10, 54, 54), radius=10 * f, fill=255)
    elif name == "vase":
        draw.ellipse(R(14, 24, 50, 58), fill=255)
        draw.rectangle(R(25, 6, 39, 30), fill=255)
    elif name == "lamp":
        draw.polygon(P([(20, 6), (44, 6), (54, 30), (10, 30)]), fill=255)
        draw.rectangle(R(29, 30, 35, 52), fill=255)
        draw.rectangle(R(18, 52, 46, 58), fill=255)
    elif name == "rug":
        draw.rectangle(R(6, 18, 58, 46), fill=255)
        for x in range(8, 58, 4):
            draw.line(R(x, 46, x, 52), fill=255, width=max(1, int(f)))
    elif name == "mug":
        draw.rectangle(R(14, 16, 42, 54), fill=255)
        draw.ellipse(R(36, 24, 56, 44), outline=255, width=max(2, int(5 * f)))
    elif name == "throw blanket":
        draw.polygon(P([(8, 12), (56, 12), (56, 52), (20, 52), (8, 40)]), fill=255)
    elif name == "clock":
        draw.ellipse(R(8, 8, 56, 56), fill=255)
    elif name == "side table":
        draw.rectangle(R(8, 18, 56, 26), fill=255)
        draw.rectangle(R(12, 26, 18, 58), fill=255)
        draw.rectangle(R(46, 26, 52, 58), fill=255)
    else:  # pragma: no cover - the category tables above are exhaustive
        raise KeyError(name)


def _pattern_layer(pattern: int, s: int, base: tuple[int, int, int], ink: tuple[int, int, int], phase: int) -> Image.Image:
    """A full-size square in the item colour carrying its pattern in a contrasting ink."""
    img = Image.new("RGB", (s, s), base)
    d = ImageDraw.Draw(img)
    step = max(4, s // 8)
    w = max(1, step // 3)
    name = PATTERNS[pattern]
    if name == "striped":
        for y in range(phase % step, s, step):
            d.rectangle([0, y, s, y + w], fill=ink)
    elif name == "dotted":
        r = max(1, step // 4)
        for y in range(phase % step, s, step):
            for x in range(phase % step, s, step):
                d.ellipse([x - r, y - r, x + r, y + r], fill=ink)
    elif name == "checked":
        big = 2 * step  # a chequerboard of large squares: unlike the dots at a glance
        for y in range(-big + phase % big, s, big):
            for x in range(-big + phase % big, s, big):
                d.rectangle([x, y, x + step - 1, y + step - 1], fill=ink)
                d.rectangle([x + step, y + step, x + big - 1, y + big - 1], fill=ink)
    elif name == "zigzag":
        for y0 in range(phase % step, s + step, step):
            pts = [(x, y0 + (w * 2 if (x // (step // 2 or 1)) % 2 else 0)) for x in range(0, s + step, step // 2 or 1)]
            d.line(pts, fill=ink, width=w)
    return img


def render_image(attrs: dict, seed: int, size: int = 64) -> Image.Image:
    """The item's picture. Reads ONLY the visual attributes (domain, category, style, colour,
    pattern) plus a per-item seed for small jitter (shade, scale, offset, pattern phase)."""
    rng = np.random.default_rng(seed)
    dom, cat, style = int(attrs["domain"]), int(attrs["category"]), int(attrs["style"])
    colour, pattern = int(attrs["colour"]), int(attrs["pattern"])
    base = tuple(int(np.clip(c + rng.integers(-18, 19), 0, 255)) for c in COLOUR_RGB[colour])
    lum = 0.299 * base[0] + 0.587 * base[1] + 0.114 * base[2]
    ink = (30, 30, 30) if lum > 140 else (250, 250, 250)
    bg = tuple(int(np.clip(c + rng.integers(-6, 7), 0, 255)) for c in STYLE_BACKGROUND[style])
    img = Image.new("RGB", (size, size), bg)
    # Draw the silhouette a little smaller or larger, shifted: items of one kind are not pixel clones.
    scale = float(rng.uniform(0.85, 1.0))
    inner = max(8, int(round(size * scale)))
    mask = Image.new("L", (inner, inner), 0)
    _silhouette(ImageDraw.Draw(mask), dom, cat, inner)
    off = size - inner
    ox, oy = int(rng.integers(0, off + 1)), int(rng.integers(0, off + 1))
    layer = _pattern_layer(pattern, inner, base, ink, int(rng.integers(0, 16)))
    img.paste(layer, (ox, oy), mask)
    if CATEGORIES[dom][cat] == "clock":  # the hands, on top of the pattern
        d = ImageDraw.Draw(img)
        cx, cy = ox + inner / 2, oy + inner / 2
        d.line([cx, cy, cx, cy - inner * 0.3], fill=ink, width=max(1, size // 32))
        d.line([cx, cy, cx + inner * 0.22, cy], fill=ink, width=max(1, size // 32))
    return img


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)  # no timestamps or text chunks: deterministic bytes
    return buf.getvalue()


# ---- users and sequences -------------------------------------------------------------------


def _transition_table(rng: np.random.Generator) -> np.ndarray:
    """(16, 16) 0/1: the follow-up categories of each category (global category index =
    domain * 8 + category); each category has two follow-ups in its own domain and one in the other."""
    n = len(CATEGORIES[0])
    table = np.zeros((2 * n, 2 * n), dtype=np.float32)
    for dom in (0, 1):
        for c in range(n):
            same = rng.choice([k for k in range(n) if k != c], size=2, replace=False)
            other = int(rng.integers(n))
            table[dom * n + c, dom * n + same] = 1.0
            table[dom * n + c, (1 - dom) * n + other] = 1.0
    return table


def _onehot(values: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros((len(values), n), dtype=np.float32)
    out[np.arange(len(values)), values] = 1.0
    return out


def _user_affinity(cfg: SyntheticConfig, items: pd.DataFrame, n_users: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(U, N) static taste logit of every user for every item, and (U,) each user's P(domain X)."""
    U = n_users
    style = rng.integers(len(STYLES), size=U)
    palette = np.stack([rng.choice(len(COLOURS), size=2, replace=False) for _ in range(U)])  # (U, 2)
    pattern = rng.integers(len(PATTERNS), size=U)
    brands = np.stack([rng.choice(len(BRANDS), size=2, replace=False) for _ in range(U)])  # (U, 2)
    family = rng.integers(len(MATERIAL_FAMILIES), size=U)
    price = rng.integers(len(PRICE_BANDS), size=U)
    p_x = np.clip(rng.beta(2.0, 2.0, size=U), 0.2, 0.8)

    def match(user_onehot: np.ndarray, item_values: np.ndarray, n: int) -> np.ndarray:
        return user_onehot @ _onehot(item_values, n).T  # (U, n) @ (n, N) -> (U, N)

    pal = _onehot(palette[:, 0], len(COLOURS)) + _onehot(palette[:, 1], len(COLOURS))
    br = _onehot(brands[:, 0], len(BRANDS)) + _onehot(brands[:, 1], len(BRANDS))
    aff = (
        cfg.w_style * match(_onehot(style, len(STYLES)), items["style"].to_numpy(), len(STYLES))
        + cfg.w_colour * match(pal, items["colour"].to_numpy(), len(COLOURS))
        + cfg.w_pattern * match(_onehot(pattern, len(PATTERNS)), items["pattern"].to_numpy(), len(PATTERNS))
        + cfg.w_brand * match(br, items["brand"].to_numpy(), len(BRANDS))
        + cfg.w_material * match(_onehot(family, 3), items["material_family"].to_numpy(), 3)
        + cfg.w_price * match(_onehot(price, 3), items["price_band"].to_numpy(), 3)
        + items["popularity"].to_numpy(dtype=np.float32)[None, :]
    )
    return aff.astype(np.float32), p_x


def _domain_pattern(length: int, p_x: float, min_per_domain: int, rng: np.random.Generator) -> np.ndarray:
    """(length,) 0/1 domain of each step, interleaved, at least min_per_domain of each."""
    doms = (rng.random(length) >= p_x).astype(np.int64)
    for d in (0, 1):
        while (doms == d).sum() < min_per_domain:
            idx = np.nonzero(doms != d)[0]
            if (doms != d).sum() <= min_per_domain:
                break
            doms[rng.choice(idx)] = d
    return doms


def generate_synthetic(cfg: SyntheticConfig, out_dir: str | Path) -> Dataset:
    """Generate the dataset and write it to ``out_dir`` (dataset files, images, cold items, attributes)."""
    cfg.check()
    out = Path(out_dir)
    item_ss, user_ss, split_ss = np.random.SeedSequence(cfg.seed).spawn(3)
    irng = np.random.default_rng(item_ss)
    items = _make_items(cfg, irng)
    transitions = _transition_table(irng)
    n_x = cfg.n_items_x
    n_items = len(items)
    dom_of = items["domain"].to_numpy()
    gcat = (dom_of * len(CATEGORIES[0]) + items["category"].to_numpy()).astype(np.int64)  # (N,) global category

    # Cold items: a uniform random subset of each domain (not tied to popularity).
    cold = np.zeros(n_items, dtype=bool)
    for lo, hi in ((0, n_x), (n_x, n_items)):
        k = int(round(cfg.cold_fraction * (hi - lo)))
        if k:
            cold[lo + irng.choice(hi - lo, size=k, replace=False)] = True

    # Users: which are train / valid / test is fixed before their sequences are drawn.
    urng = np.random.default_rng(user_ss)
    aff, p_x = _user_affinity(cfg, items, cfg.n_users, urng)
    n_eval = round(cfg.n_users * cfg.eval_fraction)
    role = np.array(["train"] * (cfg.n_users - 2 * n_eval) + ["valid"] * n_eval + ["test"] * n_eval)
    role = role[np.random.default_rng(split_ss).permutation(cfg.n_users)]
    t_cut = EPOCH + 365 * DAY  # every training interaction is before this; every target after it

    domain_mask = [np.where(dom_of == d, 0.0, -np.inf).astype(np.float32) for d in (0, 1)]
    warm_mask = np.where(cold, -np.inf, 0.0).astype(np.float32)
    cold_mask = np.where(cold, 0.0, -np.inf).astype(np.float32)
    rows: dict[str, list[dict]] = {"train": [], "valid": [], "test": []}
    for u in range(cfg.n_users):
        length = int(urng.integers(cfg.min_len, cfg.max_len + 1))
        doms = _domain_pattern(length, float(p_x[u]), cfg.min_per_domain, urng)
        seen = np.zeros(n_items, dtype=np.float32)  # -inf once bought: no repeat purchases
        seq: list[int] = []
        prev_cat = -1
        for t in range(length):
            logit = aff[u] + domain_mask[doms[t]] + seen
            is_target = role[u] != "train" and t == length - 1
            new_arrival = is_target and cold.any() and urng.random() < cfg.cold_target_rate
            logit = logit + (cold_mask if new_arrival else warm_mask)
            if prev_cat >= 0:
                logit = logit + cfg.w_sequence * transitions[prev_cat][gcat]
            if not np.isfinite(logit).any():  # every candidate used up: allow a cold or warm repeat
                logit = aff[u] + domain_mask[doms[t]] + (cold_mask if is_target else warm_mask)
            g = urng.gumbel(size=n_items).astype(np.float32)
            item = int(np.argmax(logit + g))  # Gumbel-max: one draw from softmax(logit)
            seq.append(item)
            seen[item] = -np.inf
            prev_cat = int(gcat[item])
        # Strictly increasing times: gaps of ~2 days (at least one minute).
        gaps = (urng.exponential(2.0 * DAY, size=length - 1) + 60).astype(np.int64)
        if role[u] == "train":
            end = t_cut - 1 - int(urng.integers(0, 120 * DAY))
        else:
            start = t_cut + (14 * DAY if role[u] == "test" else 0)
            end = start + int(urng.integers(0, 14 * DAY))
        stamps = (end - np.concatenate([np.cumsum(gaps[::-1])[::-1], [0]])).astype(np.int64).tolist()
        user = f"u{u:05d}"
        if role[u] == "train":
            rows["train"].append({"user": user, "items": seq, "timestamps": stamps})
        else:
            hist, hts, target, tts = split_history_target(seq, stamps)
            rows[role[u]].append(
                {"user": user, "items": hist, "timestamps": hts, "target": target, "target_domain": int(dom_of[target]), "target_timestamp": tts}
            )

    # Items table: text from text attributes, image from visual attributes.
    prefix = ("A", "H")
    frame = make_items_frame([cfg.n_items_x, cfg.n_items_y], [f"{prefix[d]}{k:05d}" for d, k in zip(items["domain"], items["local"], strict=True)])
    recs = items.to_dict("records")
    texts = [item_text(r) for r in recs]
    frame["title"] = [t for t, _ in texts]
    frame["description"] = [d for _, d in texts]
    frame["image"] = [f"images/{i:06d}.png" for i in range(n_items)]

    img_dir = out / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    wanted = set(frame["image"])
    for stale in img_dir.glob("[0-9][0-9][0-9][0-9][0-9][0-9].png"):  # left by a bigger earlier run
        if f"images/{stale.name}" not in wanted:
            stale.unlink()
    for r in recs:
        data = png_bytes(render_image(r, seed=hash_seed(cfg.seed, int(r["item_id"])), size=cfg.image_size))
        (img_dir / f"{int(r['item_id']):06d}.png").write_bytes(data)

    manifest = Manifest(
        name="synthetic-shop",
        domains=[DomainInfo(DOMAINS[0], cfg.n_items_x, 0), DomainInfo(DOMAINS[1], cfg.n_items_y, cfg.n_items_x)],
        source="synthetic: " + " ".join(f"{k}={v}" for k, v in asdict(cfg).items()),
    )
    ds = Dataset(manifest=manifest, items=frame, splits={k: pd.DataFrame(v) for k, v in rows.items()})
    ds.save(out)

    cold_ids = np.nonzero(cold)[0].tolist()
    cold_doc = {
        "items": cold_ids,
        "by_domain": {DOMAINS[d]: [i for i in cold_ids if dom_of[i] == d] for d in (0, 1)},
        "note": "cold-start items: never in any training sequence nor evaluation history; they occur only as "
        "validation/test targets, so only their image/text features can rank them",
    }
    atomic_write_bytes(out / "cold_items.json", (json.dumps(cold_doc, indent=1) + "\n").encode())
    attrs = items.drop(columns=["local", "price_phrase"]).assign(
        domain_name=[DOMAINS[d] for d in dom_of],
        category_name=[CATEGORIES[d][c] for d, c in zip(dom_of, items["category"], strict=True)],
        style_name=[STYLES[s] for s in items["style"]],
        colour_name=[COLOURS[c] for c in items["colour"]],
        pattern_name=[PATTERNS[p] for p in items["pattern"]],
        brand_name=[BRANDS[b] for b in items["brand"]],
        material_family_name=[MATERIAL_FAMILIES[m] for m in items["material_family"]],
        price_band_name=[PRICE_BANDS[p] for p in items["price_band"]],
        cold=cold,
    )
    atomic_write_table(out / "attributes.parquet", pa.Table.from_pandas(attrs, preserve_index=False))
    meta = {
        "config": asdict(cfg),
        "domains": list(DOMAINS),
        "modalities": {"image_only": list(IMAGE_ONLY), "text_only": list(TEXT_ONLY), "both": list(BOTH)},
        "note": "attributes.parquet holds the hidden ground truth for diagnostics; models must not read it",
        "t_cut": t_cut,
    }
    atomic_write_bytes(out / "synthetic.json", (json.dumps(meta, indent=1) + "\n").encode())
    return ds


def hash_seed(seed: int, item_id: int) -> int:
    """A per-item image seed independent of generation order (so images survive size changes)."""
    return int(np.random.SeedSequence([seed, item_id, 7]).generate_state(1)[0])
