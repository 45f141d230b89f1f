"""Linear-cost preference scoring of K aligned response files: K forward passes per prompt, not K^2.

Line i of every input file answers the same prompt (reading them: gpmctl.data.responses). Each response
is embedded once (batches sorted by length to waste little padding); all K x K scores are then
2k-dimensional arithmetic.
"""

from __future__ import annotations

import torch

from gpmctl.data.responses import Response
from gpmctl.data.tokenize import EncodedSequence, SequenceEncoder, pad_sequences
from gpmctl.models import preference as P


@torch.no_grad()
def embed_sequences(model, seqs: list[EncodedSequence], batch_size: int, pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Embed sequences in length-sorted batches; returns value [n, 2k] (or [n]) and gate [n, k] in input order."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i].ids))
    values, gates = [None] * len(seqs), [None] * len(seqs)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = {k: v.to(device) for k, v in pad_sequences([seqs[i] for i in idx], pad_id).items()}
        out = model(batch["input_ids"], batch["attention_mask"], batch["prompt_end"])
        for j, i in enumerate(idx):
            values[i] = out.value[j].float().cpu()
            gates[i] = None if out.gate is None else out.gate[j].float().cpu()
    gate = None if gates[0] is None else torch.stack(gates)
    return torch.stack(values), gate


def score_rows(model, encoder: SequenceEncoder, chunk: list[tuple[int, list[Response]]], batch_size: int, device, embed_only: bool = False) -> list[dict]:
    """Output records for a chunk of aligned lines: pair probabilities (K = 2) or K x K matrices."""
    K = len(chunk[0][1])
    seqs = [encoder.encode(r.prompt, r.response, f"line {n}") for n, rows in chunk for r in rows]
    value, gate = embed_sequences(model, seqs, batch_size, encoder.tokenizer.pad_token_id, device)
    value = value.view(len(chunk), K, *value.shape[1:])
    if gate is not None:  # one gate per prompt
        gate = P.prompt_gate(gate.view(len(chunk), K, -1))
    head, tau = model.head, model.head.tau
    out = []
    for i, (number, rows) in enumerate(chunk):
        record: dict = {"line": number}
        ids = [r.id for r in rows if r.id is not None]
        if ids:
            record["id"] = ids[0]
        if embed_only:
            record["embeddings"] = value[i].tolist()
            if gate is not None:
                record["gate"] = gate[i].tolist()
            out.append(record)
            continue
        if head.kind == "bt":
            S = P.bt_score_matrix(value[i].double())
        else:
            S = P.score_matrix(value[i].double(), None if gate is None else gate[i].double())
        prob = P.preference_probability(S, tau)
        if K == 2:
            record.update(p=float(prob[0, 1]), logit=float(S[0, 1] / tau))
            if head.kind == "bt":
                record.update(reward_a=float(value[i, 0]), reward_b=float(value[i, 1]))
        else:
            off_diagonal = ~torch.eye(K, dtype=torch.bool)
            record["matrix"] = prob.tolist()
            record["win_rate"] = (prob * off_diagonal).sum(1).div(K - 1).tolist()
        out.append(record)
    return out
