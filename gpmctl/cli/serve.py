"""`gpmctl serve --model M`: the model as an HTTP service (gpmctl.serve.app has the endpoints)."""

from __future__ import annotations

import os
from typing import Optional

import typer

API_KEY_ENV = "GPMCTL_API_KEY"


def serve(
    model: str = typer.Option(
        ...,
        "--model",
        "-m",
        help="A model: a gpmctl folder, a transformers sequence-classifier or OpenRLHF reward model, a hub id or package:NAME.",
    ),
    host: str = typer.Option("127.0.0.1", help="Address to bind; another than loopback needs --api-key."),
    port: int = typer.Option(8000, min=0, max=65535, help="Port (0: a free one, printed at start)."),
    api_key: Optional[str] = typer.Option(
        None, help=f"Require `Authorization: Bearer KEY` on every endpoint but /health (default: ${API_KEY_ENV} if set)."
    ),
    max_batch_size: int = typer.Option(64, min=1, help="Sequences gathered from concurrent requests into one batch."),
    max_batch_tokens: int = typer.Option(16384, min=1, help="Tokens gathered into one batch."),
    max_wait_ms: float = typer.Option(5.0, min=0, help="How long the first request of a batch waits for others."),
    batching: bool = typer.Option(True, "--batching/--no-batching", help="Batch across requests (off: one request at a time)."),
    max_queue: int = typer.Option(4096, min=1, help="Sequences that may wait; beyond, requests get 503 with Retry-After."),
    max_group_size: int = typer.Option(64, min=1, help="Responses per prompt in a request."),
    max_groups: int = typer.Option(256, min=1, help="Prompts (groups) per request."),
    max_text_chars: int = typer.Option(100_000, min=1, help="Characters per prompt or response."),
    max_request_bytes: int = typer.Option(8 * 2**20, min=1, help="Request body size."),
    request_timeout: float = typer.Option(120.0, min=0.1, help="Seconds a request may wait for its scores (504 after)."),
    batch_size: int = typer.Option(32, min=1, help="Sequences per forward pass (a batch of requests is split into these)."),
    max_length: int = typer.Option(2048, min=2, help="Tokens per (prompt, response); longer ones are cut at the end."),
    dtype: str = typer.Option("auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:1, ..."),
    share_prompt: str = typer.Option("auto", help="auto, true, false: embed a group's responses as one packed row, prompt once."),
) -> None:
    """Serve a preference or reward model over HTTP for RL loops and scoring jobs: POST /preference (K x K
    probabilities, win rates, GPO/SPPO scores), /get_reward (OpenRLHF's remote reward model), /embed; GET
    /health, /metrics; OpenAPI at /docs. Requests from concurrent clients are batched together; results equal
    `gpmctl score` on the same inputs. SIGTERM or Ctrl-C: in-flight requests are answered, then it exits.

    Example: gpmctl serve --model runs/cyclic_tiny_gpm --port 8000
             curl -s localhost:8000/preference -d '{"prompt": "Pick one", "responses": ["jade", "amber"]}'
    """
    from gpmctl.errors import ConfigError
    from gpmctl.utils import DTYPES, log

    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        raise ConfigError("gpmctl serve needs the serve extra: pip install 'gpmctl[serve]' (fastapi, uvicorn)") from None
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
    api_key = api_key or os.environ.get(API_KEY_ENV) or None
    if host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        raise ConfigError(f"--host {host}: a server reachable from other machines needs --api-key (or ${API_KEY_ENV})")

    from gpmctl.models.embed import load_scorer
    from gpmctl.serve.app import Limits, create_app
    from gpmctl.serve.batcher import Batcher

    scorer = load_scorer(model, batch_size, max_length, dtype, device, share_prompt)
    batcher = Batcher(scorer, max_batch_size, max_batch_tokens, max_wait_ms, max_queue, batching)
    limits = Limits(
        max_request_bytes=max_request_bytes,
        max_groups=max_groups,
        max_group_size=max_group_size,
        max_text_chars=max_text_chars,
        request_timeout_s=request_timeout,
    )
    app = create_app(scorer, batcher, limits, api_key, model)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=int(request_timeout) + 5)
    server = uvicorn.Server(config)
    head = scorer.model.head
    log(
        f"serving {model} ({head.kind}, dim {head.dim}, tau {head.tau}) on {scorer.device}; batching "
        f"{'up to ' + str(max_batch_size) + ' sequences / ' + str(max_wait_ms) + ' ms' if batching else 'off'}"
        f"{'; API key required' if api_key else ''}"
    )
    _announce_port(server)
    try:
        server.run()
    finally:
        batcher.close()  # answers every request already taken
        log("stopped")


def _announce_port(server) -> None:
    """Log the address once uvicorn listens (with --port 0 the port is chosen then)."""
    import threading
    import time

    from gpmctl.utils import log

    def wait() -> None:
        for _ in range(600):  # at most 60 s
            if server.started:
                for s in server.servers:
                    for sock in s.sockets:
                        host, port = sock.getsockname()[:2]
                        log(f"listening on http://{host}:{port}")
                return
            time.sleep(0.1)

    threading.Thread(target=wait, daemon=True).start()
