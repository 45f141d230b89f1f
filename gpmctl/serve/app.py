"""`gpmctl serve`: a preference (or reward) model as an HTTP service for RL loops and scoring jobs.

    POST /preference   {"prompt": str | [messages], "responses": [K str | [messages]]} or a list of such groups
                       -> per group: "matrix" K x K P(y_i > y_j), "logits" s / tau, "win_rate" mean_{j != i} P,
                          "gpo_score" mean_j s_ij / tau (the GPO target is it / beta, eq. 5.2-5.3),
                          "sppo_score" mean_j P_ij - 1/2 (the SPPO target is it / beta); BT adds "rewards"
    POST /get_reward   OpenRLHF's remote reward model: {"query": [text], "prompts": [text], "labels": [...]}
                       -> {"rewards": [float], "scores": [float], "extra_logs": {...}} (`reward_of_queries`)
    POST /embed        as /preference -> per group "values" [K, 2k] (BT: [K]) and "gate" [k] or null
    GET  /health       {"status": "ok", "model": ..., "kind": ...}
    GET  /metrics      requests, sequences, tokens, batches, batch sizes, latency quantiles, queue depth

Every response is embedded once and all K x K scores come from the embeddings (K passes, not K^2), through the
one embed path of `gpmctl score` (gpmctl.models.embed.Scorer), batched across concurrent requests by
gpmctl.serve.batcher. Safe by default: it binds to 127.0.0.1; with an API key every endpoint but /health needs
`Authorization: Bearer KEY`; request bytes, groups, group size and text length are capped (422 naming the
field); a full queue answers 503 with Retry-After; a failing batch fails only its own requests.
"""

from __future__ import annotations

import hmac
import threading
from typing import Any, Union

import torch
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from gpmctl.serve.batcher import Batcher, Overloaded


class Message(BaseModel):
    role: str
    content: str


Text = Union[str, list[Message]]


class Group(BaseModel):
    prompt: Text
    responses: list[Text]


class RewardRequest(BaseModel):
    query: list[str]
    prompts: list[str] | None = None
    labels: list[Any] | None = None


class Limits(BaseModel):
    max_request_bytes: int = 8 * 2**20
    max_groups: int = 256
    max_group_size: int = 64
    max_text_chars: int = 100_000
    request_timeout_s: float = 120.0


def messages(text: Text, role: str) -> list[dict]:
    return [{"role": role, "content": text}] if isinstance(text, str) else [m.model_dump() for m in text]


def create_app(scorer, batcher: Batcher, limits: Limits, api_key: str | None = None, model_name: str = "") -> FastAPI:
    app = FastAPI(title="gpmctl serve", description=__doc__.split("\n\n")[0])
    encode_lock = threading.Lock()  # one tokenizer, many request threads
    head = scorer.model.head

    def authorised(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
            raise HTTPException(401, "missing or wrong API key (Authorization: Bearer KEY)", {"WWW-Authenticate": "Bearer"})

    @app.middleware("http")
    async def cap_request_size(request: Request, call_next):
        size = request.headers.get("content-length")
        if size is not None and (not size.isdigit() or int(size) > limits.max_request_bytes):
            return JSONResponse({"detail": f"request body over {limits.max_request_bytes} bytes (--max-request-bytes)"}, 413)
        return await call_next(request)

    def check_text(text: Text, where: str) -> None:
        pieces = [text] if isinstance(text, str) else [m.content for m in text]
        if not pieces or not any(p.strip() for p in pieces):
            raise HTTPException(422, f"{where}: empty text")
        if sum(len(p) for p in pieces) > limits.max_text_chars:
            raise HTTPException(422, f"{where}: over {limits.max_text_chars} characters (--max-text-chars)")

    def encoded_groups(groups: list[Group], where: str) -> list[list]:
        if not groups or len(groups) > limits.max_groups:
            raise HTTPException(422, f"{where}: expected 1 to {limits.max_groups} groups, got {len(groups)}")
        out = []
        for g, group in enumerate(groups):
            at = f"{where}[{g}]." if where else ""
            if not 1 <= len(group.responses) <= limits.max_group_size:
                raise HTTPException(
                    422, f"{at}responses: expected 1 to {limits.max_group_size} responses, got {len(group.responses)}"
                )
            check_text(group.prompt, f"{at}prompt")
            for k, response in enumerate(group.responses):
                check_text(response, f"{at}responses[{k}]")
            prompt = messages(group.prompt, "user")
            with encode_lock:
                out.append([scorer.encoder.encode(prompt, messages(r, "assistant")) for r in group.responses])
        return out

    def embedded(groups: list[list]) -> list:
        try:
            future = batcher.submit(groups)
        except Overloaded as e:
            raise HTTPException(503, f"overloaded: {e}; retry shortly", {"Retry-After": "1"}) from None
        try:
            return future.result(timeout=limits.request_timeout_s)
        except TimeoutError:
            raise HTTPException(504, f"not scored within {limits.request_timeout_s} s") from None
        except Exception as e:  # the model failed on this request (e.g. out of memory): one line, no traceback
            raise HTTPException(500, f"scoring failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None

    def group_report(value: torch.Tensor, gate: torch.Tensor | None) -> dict:
        S = logits(scorer, value, gate)
        P = torch.sigmoid(S)
        K = len(value)
        off = ~torch.eye(K, dtype=torch.bool)
        win = (P * off).sum(-1) / max(K - 1, 1) if K > 1 else torch.full((1,), 0.5, dtype=P.dtype)
        report = {
            "matrix": P.tolist(),
            "logits": S.tolist(),
            "win_rate": win.tolist(),
            "gpo_score": S.mean(-1).tolist(),
            "sppo_score": (P.mean(-1) - 0.5).tolist(),
        }
        if head.kind == "bt":
            report["rewards"] = value.tolist()
        return report

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model": model_name, "kind": head.kind, "dim": head.dim, "tau": head.tau, "bt_tau": head.bt_tau}

    @app.get("/metrics", dependencies=[Depends(authorised)])
    def metrics() -> dict:
        return batcher.stats.snapshot(batcher.queued)

    def per_group(body: Union[Group, list[Group]], report) -> dict | list[dict]:
        """One group or a list of them -> report(value, gate) of each, in the body's shape."""
        many = isinstance(body, list)
        with batcher.arriving():
            encoded = encoded_groups(body if many else [body], "body" if many else "")
        reports = [report(value, gate) for value, gate in embedded(encoded)]
        return reports if many else reports[0]

    @app.post("/preference", dependencies=[Depends(authorised)])
    def preference(body: Union[Group, list[Group]]):
        return per_group(body, group_report)

    @app.post("/embed", dependencies=[Depends(authorised)])
    def embed(body: Union[Group, list[Group]]):
        return per_group(body, lambda value, gate: {"values": value.tolist(), "gate": None if gate is None else gate.tolist()})

    @app.post("/get_reward", dependencies=[Depends(authorised)])
    def get_reward(body: RewardRequest):
        n = len(body.query)
        if not 1 <= n <= limits.max_groups * limits.max_group_size:
            raise HTTPException(422, f"query: expected 1 to {limits.max_groups * limits.max_group_size} texts, got {n}")
        prompts = body.prompts if body.prompts is not None else [""] * n
        if len(prompts) != n:
            raise HTTPException(422, f"prompts: {len(prompts)} texts for {n} queries")
        for i, (text, prompt) in enumerate(zip(body.query, prompts)):
            check_text(text, f"query[{i}]")
            if not text.startswith(prompt):
                raise HTTPException(422, f"prompts[{i}]: is not the start of query[{i}]")
        by_prompt: dict[str, list[int]] = {}
        for i, prompt in enumerate(prompts):
            by_prompt.setdefault(prompt, []).append(i)
        with encode_lock:
            groups = [
                [scorer.encoder.encode_text(body.query[i], prompt) for i in members] for prompt, members in by_prompt.items()
            ]
        results = embedded(groups)
        rewards = [0.0] * n
        for members, (value, gate) in zip(by_prompt.values(), results):
            group = reward_of_queries(scorer, value, gate)
            for i, reward in zip(members, group):
                rewards[i] = reward
        sizes = [len(m) for m in by_prompt.values()]
        return {"rewards": rewards, "scores": rewards, "extra_logs": {"groups": len(sizes), "group_size_mean": n / len(sizes)}}

    return app


def reward_of_queries(scorer, value: torch.Tensor, gate: torch.Tensor | None) -> list[float]:
    """One reward per query of a prompt's group: BT the reward itself; GPM the GPO score within the group,
    mean_j s(y_i > y_j) / tau over the group's queries (j = i included, s = 0), eq. 5.2: the log-odds of beating a
    response drawn like the group's, 0 for a query alone with its prompt. GRPO-style trainers normalise rewards
    within a prompt's group anyway, so a group reward at K passes is what they need; send a prompt's samples in
    one request for it to mean that."""
    if scorer.kind == "bt":
        return value.tolist()
    return logits(scorer, value, gate).mean(-1).tolist()


def logits(scorer, value: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
    """One group's K x K log-odds s(y_i > y_j) / tau from its embeddings (value [K, ...], gate [k] or None)."""
    return scorer.score_matrix(value[None], None if gate is None else gate[None])[0] / scorer.tau
