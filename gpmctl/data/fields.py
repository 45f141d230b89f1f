"""Checks of the fields of one row, shared by the row formats (gpmctl.data.formats, gpmctl.data.ultrafeedback).

Each check returns the value it accepts, in canonical form, or raises `RowProblem` naming the field;
the reader that called the format adds the file and line (`RowProblem.error`).
"""

from __future__ import annotations

import json
import math
from typing import Any

from gpmctl.data.records import RESERVED_KEYS, ROLES, Message
from gpmctl.errors import DataError

# Appended to an empty-answer problem: the way to accept such answers.
EMPTY_ANSWER_HINT = " (--allow-empty-responses, or data.allow_empty_responses: true in a recipe, keeps empty answers)"


class RowProblem(Exception):
    """A problem inside one row; the reader adds the file and line."""

    def __init__(self, field: str | None, problem: str):
        super().__init__(problem)
        self.field, self.problem = field, problem

    def error(self, source: str, line: int | None, note: str = "") -> DataError:
        """The DataError of this problem in `source` at `line`; `note` follows the problem (" (row N)")."""
        return DataError(source, self.problem + note, line=line, field=self.field)


def json_type(value: Any) -> str:
    """How a JSON value is named in problems: "a string", "a list", "null", ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def require(row: dict, key: str) -> Any:
    """row[key]; absent or null is a problem."""
    if key not in row or row[key] is None:
        raise RowProblem(key, "missing" if key not in row else "is null")
    return row[key]


def checked_text(value: Any, name: str, *, allow_empty: bool = False, answer: bool = False) -> str:
    """A string field; empty or whitespace-only is an error unless `allow_empty` (`answer`: say how to allow it)."""
    if not isinstance(value, str):
        raise RowProblem(name, f"expected a string, got {json_type(value)}")
    if not allow_empty and not value.strip():
        raise RowProblem(name, ("empty text" if not value else "whitespace-only text") + (EMPTY_ANSWER_HINT if answer else ""))
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate from a "\ud800"-style JSON escape
        raise RowProblem(name, f"unpaired surrogate escape at character {e.start}") from None
    return value


def checked_messages(value: Any, name: str, *, continuation: bool, allow_empty_responses: bool) -> list[Message]:
    """A list of {role, content} -> fresh Message dicts (extra keys dropped)."""
    if not isinstance(value, list):
        raise RowProblem(name, f"expected a list of messages, got {json_type(value)}")
    if not value:
        raise RowProblem(name, "empty list of messages")
    out = []
    for i, msg in enumerate(value):
        where = f"{name}[{i}]"
        if not isinstance(msg, dict):
            raise RowProblem(where, f"expected a message object {{role, content}}, got {json_type(msg)}")
        for key in ("role", "content"):
            if key not in msg:
                raise RowProblem(f"{where}.{key}", "missing")
        role = msg["role"]
        if role not in ROLES:
            raise RowProblem(f"{where}.role", f"{role!r} is not one of {', '.join(ROLES)}")
        answer = continuation and role == "assistant"
        content = checked_text(msg["content"], f"{where}.content", allow_empty=answer and allow_empty_responses, answer=answer)
        out.append({"role": role, "content": content})
    return out


def checked_side(value: Any, name: str, role: str, *, continuation: bool, allow_empty_responses: bool) -> list[Message]:
    """A string (one message of `role`) or a list of messages."""
    if isinstance(value, str):
        content = checked_text(value, name, allow_empty=continuation and allow_empty_responses, answer=continuation)
        return [{"role": role, "content": content}]
    if isinstance(value, list):
        return checked_messages(value, name, continuation=continuation, allow_empty_responses=allow_empty_responses)
    raise RowProblem(name, f"expected a string or a list of messages, got {json_type(value)}")


def _number(row: dict, key: str) -> float | None:
    value = row.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RowProblem(key, f"expected a number, got {json_type(value)} {short(value)}")
    if not math.isfinite(value):
        raise RowProblem(key, f"expected a finite number, got {value}")
    return float(value)


def short(value: Any, width: int = 40) -> str:
    """A value as it is quoted in problems, cut to `width` characters."""
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def optional_fields(row: dict, *, soft_label: bool) -> dict[str, Any]:
    """margin, label, id, subset and meta of any row."""
    label = None
    if soft_label:
        label = _number(row, "label")
        if label is not None and not 0.0 <= label <= 1.0:
            raise RowProblem("label", f"expected a probability in [0, 1] that chosen beats rejected, got {label:g}")
    row_id = row.get("id")
    if row_id is not None:
        if isinstance(row_id, bool) or not isinstance(row_id, (str, int)):
            raise RowProblem("id", f"expected a string or an integer, got {json_type(row_id)}")
        row_id = str(row_id)
    subset = row.get("subset")
    if subset is not None and not isinstance(subset, str):
        raise RowProblem("subset", f"expected a string, got {json_type(subset)}")
    meta = {
        k: v
        for k, v in row.items()
        if k not in RESERVED_KEYS
        and isinstance(k, str)
        and isinstance(v, (str, int, float, bool))
        and not (isinstance(v, float) and not math.isfinite(v))
    }
    return {"margin": _number(row, "margin"), "label": label, "id": row_id, "subset": subset, "meta": meta}


def check_different(chosen: list[Message], rejected: list[Message], name: str = "rejected") -> None:
    """Two identical answers are no comparison."""
    if chosen == rejected:
        raise RowProblem(name, "identical to chosen; a pair needs two different answers")
