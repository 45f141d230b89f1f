"""Model side of every evaluator: K responses to one prompt -> K embeddings (each response embedded once)
-> all K x K scores s(i > j). Everything after this is arithmetic on saved numbers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from gpmctl.models import preference as P


@dataclass
class Scorer:
    """A loaded model, its encoder and how to run it."""

    model: object
    encoder: object
    batch_size: int
    device: str

    @property
    def kind(self) -> str:
        return self.model.head.kind

    @property
    def tau(self) -> float:
        return float(self.model.head.tau)

    def embed(self, prompts: list[list[dict]], responses: list[list[list[dict]]], where: str = "") -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
        """prompts [n] (message lists), responses [n][K] (message lists) -> value [n, K, 2k] (BT: [n, K]),
        gate [n, k] or None: one per prompt (`preference.prompt_gate` of the K responses' passes)."""
        from gpmctl.score import embed_sequences

        n, K = len(prompts), len(responses[0])
        encode = self.encoder.encode
        seqs = [encode(p, r, f"{where} row {i + 1}") for i, (p, rs) in enumerate(zip(prompts, responses)) for r in rs]
        value, gate = embed_sequences(self.model, seqs, self.batch_size, self.encoder.tokenizer.pad_token_id, self.device)
        value = value.double().view(n, K, *value.shape[1:])
        if gate is not None:
            gate = P.prompt_gate(gate.double().view(n, K, -1))
        return value, gate

    def score_matrix(self, value: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
        """value [n, K, 2k] (BT [n, K]), gate [n, k] -> S [n, K, K], S[:, i, j] = s(i > j), float64."""
        if self.kind == "bt":
            return P.bt_score_matrix(value)
        return P.score_matrix(value, gate)


def load_scorer(model: str, batch_size: int, max_length: int, dtype: str, device: str) -> Scorer:
    """Load a gpmctl model folder with its tokenizer and an encoder built from the model's head settings."""
    import torch

    from gpmctl.data.tokenize import SequenceEncoder
    from gpmctl.models.loading import load_model, load_tokenizer
    from gpmctl.utils import quiet_libraries

    quiet_libraries()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    net = load_model(model, dtype=dtype, device=device)
    tokenizer = load_tokenizer(model)
    encoder = SequenceEncoder(tokenizer, max_length, net.head.eos, net.head.gate_prompt, "right")
    return Scorer(net, encoder, batch_size, device)


def user(text) -> list[dict]:
    """A prompt field (string or message list) -> message list."""
    return [{"role": "user", "content": text}] if isinstance(text, str) else [dict(m) for m in text]


def assistant(text) -> list[dict]:
    return [{"role": "assistant", "content": text}] if isinstance(text, str) else [dict(m) for m in text]


def example_rows(path: str) -> Iterator[tuple[int, dict]]:
    """(line number, row) of a per-example jsonl written by --examples; bad lines are one-line DataErrors."""
    from gpmctl.errors import DataError

    p = Path(path)
    if not p.is_file():
        raise DataError(path, "no such file")
    with open(p, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(path, f"invalid JSON ({e.msg})", line=number) from None
            if not isinstance(row, dict):
                raise DataError(path, "expected a JSON object", line=number)
            yield number, row
