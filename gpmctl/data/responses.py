"""Aligned response files, the input of `gpmctl score`: line i of every file answers the same prompt.

Rows are `{"prompt": str | [messages], "response": str | [messages]}`, the same with "completion" for
"response" (TRL's prompt-completion rows, standard or conversational), or `{"messages": [...]}` whose last
message is the response; a string prompt is one user message, a string response one assistant message.
An `id` is carried to the output. Lines are read like every jsonl data file's
(gpmctl.data.files.jsonl_lines: capped at MAX_LINE_BYTES, UTF-8), except that a blank line is a bad row
rather than skipped: skipping it would shift the files against each other. A text far longer than
`max_length` tokens is cut (in characters) before tokenising, since right truncation drops its end anyway.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from gpmctl.data.files import MAX_LINE_BYTES, jsonl_lines
from gpmctl.errors import DataError


@dataclass
class Response:
    prompt: list[dict]
    response: list[dict]
    id: str | None


CHARS_PER_TOKEN = 16  # real text has about 4: a text cut at max_length * 16 characters keeps its first max_length tokens
CUT_MARGIN = 8  # tokens past max_length a cut text must still have: tokens merged across the cut are never kept


def _open_lines(path: str) -> Iterator[tuple[int, str | DataError]]:
    """The lines of one input ("-": stdin); a missing file or a folder raises at once."""
    if path == "-":
        return jsonl_lines(path, None, False, MAX_LINE_BYTES)
    p = Path(path)
    if not p.is_file():
        raise DataError(path, "is a directory, not a file" if p.is_dir() else "no such file")
    return jsonl_lines(path, p, p.suffix == ".gz", MAX_LINE_BYTES)


def _next_line(lines: Iterator[tuple[int, str | DataError]]) -> str | None:
    """The next line's text (None at the end); an unreadable line raises its DataError."""
    _, text = next(lines, (0, None))
    if isinstance(text, DataError):
        raise text
    return text


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


def _message_list(value, path: str, line: int, field: str, least: int = 1) -> list[dict]:
    """A list of >= `least` {role, content} messages (string contents), copied; otherwise a one-line DataError."""
    if not (
        isinstance(value, list)
        and len(value) >= least
        and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in value)
    ):
        raise DataError(path, f"expected a list of >= {least} {{role, content}} messages", line=line, field=field)
    return [dict(m) for m in value]


def _side(value, path: str, line: int, field: str, role: str) -> list[dict]:
    """A string (one message of `role`) or a list of messages."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list):
        return _message_list(value, path, line, field)
    raise DataError(
        path, f"expected a string or a list of {{role, content}} messages, got {type(value).__name__}", line=line, field=field
    )


def parse_response(row, path: str, line: int) -> Response:
    """One scoring input row -> Response; problems name file, line and field."""
    if not isinstance(row, dict):
        raise DataError(path, "expected a JSON object", line=line)
    rid = None if row.get("id") is None else str(row["id"])
    if "messages" in row:
        msgs = _message_list(row["messages"], path, line, "messages", least=2)
        return Response(msgs[:-1], msgs[-1:], rid)
    if "prompt" not in row:
        raise DataError(path, "missing", line=line, field="prompt")
    answers = [key for key in ("response", "completion") if key in row]
    if len(answers) != 1:
        problem = (
            "missing (or completion, as in TRL's prompt-completion rows)"
            if not answers
            else "give response or completion, not both"
        )
        raise DataError(path, problem, line=line, field="response")
    prompt = _side(row["prompt"], path, line, "prompt", "user")
    return Response(prompt, _side(row[answers[0]], path, line, answers[0], "assistant"), rid)


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
            lines = [_next_line(f) for f in files]
            ended = [line is None for line in lines]
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
                raise DataError(
                    other,
                    f"prompt differs from {paths[0]} on the same line (--allow-prompt-mismatch to accept)",
                    line=number,
                    field="prompt",
                )
            if shorten is not None:
                rows = [Response(shorten(r.prompt), shorten(r.response), r.id) for r in rows]
            yield number, rows
    finally:
        for f in files:
            f.close()  # closes its file (never stdin)
