"""A running `gpmctl serve` as the judge of `gpmctl train-gpo` (`judge.url`): policy and judge on different GPUs
or machines. Same interface as the local judge (gpmctl.models.embed.Scorer's embed / score_matrix / tau / kind), so
the GPO loop does not ask which one it has; the K x K scores come from the embeddings with the same head math.

Standard library HTTP only (no extra dependency on the policy side); a 503 (the server's queue is full) is retried
after its Retry-After, at most `retries` times; any other failure is one GpmctlError line naming the URL.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import torch

from gpmctl.errors import GpmctlError
from gpmctl.models.heads import HeadConfig, make_head


class RemoteJudge:
    def __init__(self, url: str, api_key: str | None = None, batch_size: int = 64, timeout: float = 600.0, retries: int = 20):
        self.url, self.api_key, self.batch_size, self.timeout, self.retries = (
            url.rstrip("/"),
            api_key,
            batch_size,
            timeout,
            retries,
        )
        info = self._call("GET", "/health")
        if info.get("kind") not in ("gpm", "bt", "gpm_bt") or not isinstance(info.get("tau"), (int, float)):
            raise GpmctlError(f"judge.url {self.url}: /health does not describe a gpmctl model: {info}")
        dim = info.get("dim") if isinstance(info.get("dim"), int) else 1
        self.head = make_head(
            HeadConfig(kind=info["kind"], dim=dim, tau=float(info["tau"]), bt_tau=float(info.get("bt_tau", 1.0)))
        )
        self.share_prompt = False

    @property
    def kind(self) -> str:
        return self.head.kind

    @property
    def tau(self) -> float:
        return float(self.head.tau)

    def embed(self, prompts: list[list[dict]], responses: list[list[list[dict]]], where: str = "") -> tuple:
        """As Scorer.embed: prompts [n] (messages), responses [n][K] (messages) -> value [n, K, 2k] (BT [n, K]) and
        one gate per prompt [n, k] or None, float64; requests of at most `batch_size` sequences."""
        values, gates = [], []
        per_request = max(1, self.batch_size // max(len(responses[0]), 1))
        for start in range(0, len(prompts), per_request):
            body = [
                {"prompt": p, "responses": rs}
                for p, rs in zip(prompts[start : start + per_request], responses[start : start + per_request])
            ]
            for group in self._call("POST", "/embed", body):
                values.append(torch.tensor(group["values"], dtype=torch.float64))
                gates.append(None if group["gate"] is None else torch.tensor(group["gate"], dtype=torch.float64))
        return torch.stack(values), None if gates[0] is None else torch.stack(gates)

    def score_matrix(self, value: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
        return self.head.score_matrix(value, gate)

    def _call(self, method: str, path: str, body=None):
        headers = {"content-type": "application/json"}
        if self.api_key:
            headers["authorization"] = f"Bearer {self.api_key}"
        data = None if body is None else json.dumps(body).encode()
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as e:
                detail = e.read().decode(errors="replace")[:300]
                if e.code == 503 and attempt < self.retries:
                    time.sleep(float(e.headers.get("Retry-After") or 1))
                    continue
                raise GpmctlError(f"judge.url {self.url}{path}: HTTP {e.code}: {detail}") from None
            except (urllib.error.URLError, OSError) as e:
                raise GpmctlError(
                    f"judge.url {self.url}{path}: {getattr(e, 'reason', e)} (is `gpmctl serve` running there?)"
                ) from None
        raise AssertionError("unreachable")
