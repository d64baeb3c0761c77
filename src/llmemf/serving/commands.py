"""CLI commands that answer for new histories: recommend (one history, in the terminal) and serve (HTTP).
Both go through serving/recommend.py's ServedModel, so they give the same answers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer

from llmemf.errors import UserError


def register(app: typer.Typer) -> None:
    @app.command()
    def recommend(
        checkpoint: Path = typer.Option(..., "--checkpoint", help="run directory or .pt file inside one"),
        history: str = typer.Option(..., "--history", help="comma-separated items, oldest first: original ids (ASINs) or global ids"),
        domain: str = typer.Option(..., "--domain", help="target domain: its name, or X / Y"),
        k: int = typer.Option(10, "-k"),
        include_seen: bool = typer.Option(False, help="allow items already in the history"),
        as_json: bool = typer.Option(False, "--json"),
        cold_id: str | None = typer.Option(
            None, "--cold-id", help="LLM-EMF: how items never seen in training are scored: learned | neutral | content (see models/llmemf.py)"
        ),
    ) -> None:
        """Top-k items of the target domain for a history, with titles and scores."""
        from llmemf.serving.recommend import MAX_K, RecommendRequest, ServedModel

        if not 1 <= k <= MAX_K:
            raise UserError(f"-k {k}: must be between 1 and {MAX_K}")
        served = ServedModel.load(checkpoint)
        tokens = [t.strip() for t in history.split(",") if t.strip()]
        _, unknown = served.resolve_items(tokens)
        if unknown:
            raise UserError(f"--history: unknown item(s) {unknown}: not an original id (e.g. ASIN) nor a global id in 0..{served.bundle.n_items - 1}")
        res = served.recommend(RecommendRequest(tokens, domain, k, exclude_history=not include_seen, cold_id=cold_id))
        if as_json:
            typer.echo(json.dumps([{k: v for k, v in r.__dict__.items() if k != "image"} for r in res.items], indent=2))
            return
        typer.echo(
            f"top {len(res.items)} {res.domain} items for a history of {len(res.history)}"
            + (" (most popular: empty history)" if res.fallback else ":")
        )
        for rank, r in enumerate(res.items, 1):
            score = r.score if r.score is not None else float("-inf")
            typer.echo(f"{rank:3d}. {r.original_id:>12s}  (id {r.item_id})  {score:8.3f}  {r.title or '(no title)'}")

    @app.command()
    def serve(
        runs: list[Path] = typer.Argument(..., help="run directories (of one dataset); the first is the default, the page switches between them"),
        host: str = typer.Option("127.0.0.1", help="interface to bind; the default is loopback only"),
        port: int = typer.Option(8000, help="TCP port"),
        workers: int = typer.Option(1, help="worker processes (each loads the runs)"),
        threads: int = typer.Option(1, help="torch threads per worker for scoring"),
        index: str = typer.Option(
            "exact",
            help="LLM-EMF with logit fusion: exact (score every item), fp16 (score every item against float16 keys: half the bytes, "
            "rounded scores) or ivf (an approximate index, faiss IVF: far faster at large catalogues, at some recall; "
            "knobs as ivf:nlist=1024,nprobe=16). See docs/serving.md",
        ),
        compile_: bool = typer.Option(
            False,
            "--compile",
            help="LLM-EMF with logit fusion: run the query encoders through torch.compile (compiled at start, which takes "
            "a minute or more; the same answers, faster per request). See docs/serving.md",
        ),
    ) -> None:
        """Serve recommendations over HTTP (FastAPI on uvicorn) with a web page at / and API docs at /docs."""
        try:
            import uvicorn

            from llmemf.serving.app import create_app
        except ModuleNotFoundError as e:
            raise UserError(f"`llmemf serve` needs the serve extra ({e.name} is missing): pip install -e '.[serve]'") from None
        import torch

        from llmemf.serving.index import IndexSpec
        from llmemf.serving.recommend import ServedModel

        if workers < 1 or threads < 1:
            raise UserError("--workers and --threads must be at least 1")
        IndexSpec.parse(index)  # a bad spec fails before any run is loaded
        if host not in ("127.0.0.1", "localhost", "::1"):
            typer.secho(f"warning: binding {host}: the service has no authentication", fg=typer.colors.YELLOW, err=True)
        if workers == 1:
            torch.set_num_threads(threads)
            app_ = create_app([ServedModel.load(r, index=index, compile=compile_) for r in runs])
            typer.echo(f"serving {', '.join(map(str, runs))} on http://{host}:{port}/ (docs at /docs)")
            uvicorn.run(app_, host=host, port=port, log_level="warning")
            return
        for r in runs:
            if not (r / "config.yaml").exists():
                raise UserError(f"{r}: no config.yaml; give a run directory written by `llmemf train`")
        os.environ["LLMEMF_SERVE_RUNS"] = os.pathsep.join(str(r.resolve()) for r in runs)
        os.environ["LLMEMF_SERVE_THREADS"] = str(threads)
        os.environ["LLMEMF_SERVE_INDEX"] = index
        os.environ["LLMEMF_SERVE_COMPILE"] = "1" if compile_ else ""
        typer.echo(f"serving {', '.join(map(str, runs))} on http://{host}:{port}/ with {workers} workers (docs at /docs)")
        uvicorn.run("llmemf.serving.app:app_from_env", factory=True, host=host, port=port, workers=workers, log_level="warning")
