"""What every evaluator shares besides the model (which is gpmctl.models.embed.Scorer): prompts and answers as
message lists (`user`, `assistant`), and the per-example files written by `--examples` read back for `--scores`
(`example_rows`, `ExampleFields`: every field checked, a bad one is one line naming file, line and field)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gpmctl.errors import DataError


def user(text) -> list[dict]:
    """A prompt field (string or message list) -> message list."""
    return [{"role": "user", "content": text}] if isinstance(text, str) else [dict(m) for m in text]


def assistant(text) -> list[dict]:
    return [{"role": "assistant", "content": text}] if isinstance(text, str) else [dict(m) for m in text]


def groups_by_size(
    scorer, prompts: list[str], responses: list[list[str]], name: str
) -> Iterator[tuple[list[int], object, object]]:
    """Rows whose response lists differ in length, embedded as one group per row, the rows of one size in one
    `scorer.embed` -> (the rows' indices, value, K x K score matrix) per size; `scorer.last_cut` is that call's."""
    sizes: dict[int, list[int]] = {}
    for i, texts in enumerate(responses):
        sizes.setdefault(len(texts), []).append(i)
    for idx in sizes.values():
        value, gate = scorer.embed([user(prompts[i]) for i in idx], [[assistant(t) for t in responses[i]] for i in idx], name)
        yield idx, value, scorer.score_matrix(value, gate)


def example_rows(path: str) -> Iterator[tuple[int, dict]]:
    """(line number, row) of a per-example file written by --examples (jsonl; also .json / .parquet copies).
    A missing, unreadable, non-UTF-8 or empty file, or a line that is not a JSON object, is one DataError;
    the evaluators then read each field through `ExampleFields`."""
    from gpmctl.data.files import file_rows

    count = 0
    for number, row in file_rows(path):
        if not isinstance(row, dict):
            raise DataError(path, f"expected a JSON object, got {type(row).__name__}", line=number)
        count += 1
        yield number, row
    if not count:
        raise DataError(path, "holds no per-example rows")


def example_fields(path: str) -> Iterator["ExampleFields"]:
    """The rows of `example_rows(path)`, each ready for typed reads (`ExampleFields`)."""
    return (ExampleFields(path, number, row) for number, row in example_rows(path))


def json_document(path: str):
    """A whole .json file (a results file, RewardBench's per-subset files); problems (missing, not UTF-8, not
    JSON) are one DataError."""
    p = Path(path)
    if not p.is_file():
        raise DataError(path, "no such file")
    try:
        return json.loads(p.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        raise DataError(path, f"not valid UTF-8 ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise DataError(path, f"invalid JSON ({e.msg})", line=e.lineno) from None


@dataclass
class ExampleFields:
    """Typed reads of one row of a per-example file: a missing or bad value is one DataError
    `file:line: field: problem`. NaN and infinities are not numbers here (they would make every
    aggregate NaN, or a results file that is not JSON)."""

    path: str
    line: int | None  # None for a whole-file JSON object
    row: dict

    def error(self, key: str, problem: str) -> DataError:
        return DataError(self.path, problem, line=self.line, field=key)

    def number(self, key: str, required: bool = True, lo: float = -math.inf, hi: float = math.inf) -> float | None:
        value = self.row.get(key)
        if value is None:
            if required:
                raise self.error(key, "missing")
            return None
        if not _finite(value):
            raise self.error(key, f"expected a finite number, got {_short(value)}")
        if not lo <= value <= hi:
            raise self.error(key, f"must be in [{lo:g}, {hi:g}], got {value!r}")
        return value

    def probability(self, key: str, required: bool = True) -> float | None:
        return self.number(key, required, 0.0, 1.0)

    def text(self, key: str, required: bool = True) -> str | None:
        value = self.row.get(key)
        if value is None and not required:
            return None
        if not isinstance(value, str):
            raise self.error(key, "missing" if value is None else f"expected a string, got {_short(value)}")
        return value

    def numbers(self, key: str, length: int | None = None, required: bool = True) -> list[float] | None:
        """A list of finite numbers (`length` of them when given)."""
        value = self.row.get(key)
        if value is None and not required:
            return None
        if not (isinstance(value, list) and value and all(_finite(v) for v in value) and length in (None, len(value))):
            size = f"{length} " if length else ""
            raise self.error(key, "missing" if value is None else f"expected a list of {size}finite numbers, got {_short(value)}")
        return value

    def matrix(self, key: str, size: int | None = None, required: bool = True) -> list[list[float]] | None:
        """A square list of lists of finite numbers, at least 2 x 2 (`size` x `size` when given)."""
        value = self.row.get(key)
        if value is None and not required:
            return None
        n = len(value) if isinstance(value, list) else 0
        shaped = n >= 2 and size in (None, n)
        if not (shaped and all(isinstance(r, list) and len(r) == n and all(_finite(v) for v in r) for r in value)):
            shape = f"{size} x {size}" if size else "K x K (K >= 2)"
            problem = f"expected a {shape} list of lists of finite numbers, got {_short(value)}"
            raise self.error(key, "missing" if value is None else problem)
        return value


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _short(value, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."
