"""Model side of every evaluator: K responses to one prompt -> K embeddings (each response embedded once)
-> all K x K scores s(i > j). Everything after this is arithmetic on saved numbers."""

from __future__ import annotations

from dataclasses import dataclass

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
        gate [n, k] or None. The gate is read from the first response's pass (RewardBench: the chosen one)."""
        from gpmctl.score import embed_sequences

        n, K = len(prompts), len(responses[0])
        encode = self.encoder.encode
        seqs = [encode(p, r, f"{where} row {i + 1}") for i, (p, rs) in enumerate(zip(prompts, responses)) for r in rs]
        value, gate = embed_sequences(self.model, seqs, self.batch_size, self.encoder.tokenizer.pad_token_id, self.device)
        value = value.double().view(n, K, *value.shape[1:])
        if gate is not None:
            gate = gate.double().view(n, K, -1)[:, 0]
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
