"""Linear-cost preference scoring of K aligned response files: K forward passes per prompt, not K^2.

Line i of every input file answers the same prompt. Each response is embedded once (batches sorted
by length to waste little padding); all K x K scores are then 2k-dimensional arithmetic.
Rows are `{"prompt": str | [messages], "response": str}` or `{"messages": [...]}` whose last
message is the response; an `id` is carried to the output. Lines are capped at MAX_LINE_BYTES like
every data reader's, and must be UTF-8; a text far longer than `max_length` tokens is cut (in
characters) before tokenising, since right truncation drops its end anyway.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

from gpmctl.data.files import MAX_LINE_BYTES, stdin_bytes
from gpmctl.data.tokenize import EncodedSequence, SequenceEncoder, pad_sequences
from gpmctl.errors import DataError
from gpmctl.models import preference as P


@dataclass
class Response:
    prompt: list[dict]
    response: list[dict]
    id: str | None


CHARS_PER_TOKEN = 16  # real text has about 4: a text cut at max_length * 16 characters keeps its first max_length tokens
CUT_MARGIN = 8  # tokens past max_length a cut text must still have: tokens merged across the cut are never kept


def _open_lines(path: str) -> BinaryIO:
    if path == "-":
        return stdin_bytes()
    p = Path(path)
    if not p.is_file():
        raise DataError(path, "is a directory, not a file" if p.is_dir() else "no such file")
    try:
        return gzip.open(p, "rb") if p.suffix == ".gz" else open(p, "rb")
    except OSError as e:
        raise DataError(path, f"cannot open: {e.strerror or e}") from None


def _read_line(f: BinaryIO, path: str, number: int) -> str:
    """Line `number` of `f` as text ("" at the end); over MAX_LINE_BYTES or not UTF-8 is a DataError."""
    try:
        raw = f.readline(MAX_LINE_BYTES + 2)  # room for content + "\r\n"
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(path, f"cannot read on from here ({e}); the file is corrupt or cut short", line=number) from None
    if len(raw.rstrip(b"\r\n")) > MAX_LINE_BYTES:
        raise DataError(path, f"line longer than {MAX_LINE_BYTES} bytes; not read", line=number)
    if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(path, f"not valid UTF-8: byte 0x{raw[e.start]:02x} at byte {e.start} of the line", line=number) from None


def text_cutter(tokenizer, max_length: int) -> Callable[[list[dict]], list[dict]]:
    """messages -> the same messages with each content longer than max_length * CHARS_PER_TOKEN characters
    cut there, when the cut text alone still has more than max_length + CUT_MARGIN tokens: the sequence keeps
    only its first max_length tokens, so its ids are unchanged, and the tokenizer no longer spends gigabytes
    on a 16 MB line. A text that would not keep enough tokens (long runs the tokenizer drops) stays whole."""
    limit = max_length * CHARS_PER_TOKEN

    def tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    def cut(messages: list[dict]) -> list[dict]:
        out = []
        for m in messages:
            head = m["content"][:limit]
            if len(head) < len(m["content"]) and tokens(head) > max_length + CUT_MARGIN:
                m = {**m, "content": head}
            out.append(m)
        return out

    return cut


def parse_response(row, path: str, line: int) -> Response:
    """One scoring input row -> Response; problems name file, line and field."""
    if not isinstance(row, dict):
        raise DataError(path, "expected a JSON object", line=line)
    rid = None if row.get("id") is None else str(row["id"])
    if "messages" in row:
        msgs = row["messages"]
        if not (isinstance(msgs, list) and len(msgs) >= 2 and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in msgs)):
            raise DataError(path, "expected a list of >= 2 {role, content} messages", line=line, field="messages")
        return Response([dict(m) for m in msgs[:-1]], [dict(msgs[-1])], rid)
    for key in ("prompt", "response"):
        if key not in row:
            raise DataError(path, "missing", line=line, field=key)
    prompt, response = row["prompt"], row["response"]
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    if not (isinstance(prompt, list) and prompt and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in prompt)):
        raise DataError(path, "expected a string or a list of {role, content} messages", line=line, field="prompt")
    if not isinstance(response, str):
        raise DataError(path, f"expected a string, got {type(response).__name__}", line=line, field="response")
    return Response(prompt, [{"role": "assistant", "content": response}], rid)


def aligned_rows(
    paths: list[str],
    skip: int = 0,
    allow_prompt_mismatch: bool = False,
    shorten: Callable[[list[dict]], list[dict]] | None = None,
) -> Iterator[tuple[int, list[Response]]]:
    """Yield (line number, one Response per file) in lockstep; different lengths or prompts, and inputs with
    no lines, are errors. `shorten` (e.g. text_cutter) is applied to every prompt and response."""
    files = []
    try:
        for p in paths:
            files.append(_open_lines(p))
        number = 0
        while True:
            number += 1
            lines = [_read_line(f, path, number) for f, path in zip(files, paths)]
            ended = [not line for line in lines]
            if all(ended):
                if number == 1:
                    raise DataError(paths[0], "no lines (the file is empty); nothing to score")
                return
            if any(ended):
                short = paths[ended.index(True)]
                raise DataError(short, f"ends at line {number - 1} while {paths[ended.index(False)]} goes on", line=number)
            if number <= skip:
                continue
            rows = []
            for path, line in zip(paths, lines):
                try:
                    rows.append(parse_response(json.loads(line), path, number))
                except json.JSONDecodeError as e:
                    raise DataError(path, f"invalid JSON ({e.msg})", line=number) from None
            if not allow_prompt_mismatch and any(r.prompt != rows[0].prompt for r in rows[1:]):
                other = paths[next(i for i, r in enumerate(rows) if r.prompt != rows[0].prompt)]
                raise DataError(other, f"prompt differs from {paths[0]} on the same line (--allow-prompt-mismatch to accept)", line=number, field="prompt")
            if shorten is not None:
                rows = [Response(shorten(r.prompt), shorten(r.response), r.id) for r in rows]
            yield number, rows
    finally:
        for f, path in zip(files, paths):
            if path != "-":
                f.close()


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
