"""Dataset operations behind `gpmctl data ...`: validate, convert, stats, split, mix.

Every input is a source spec, read as recipes read data.train (gpmctl.data.sources: files, folders, Hub ids,
mixtures, cyclic: and ultrafeedback: specs), with bad rows reported and read past (`source_items`).

Every operation streams its input row by row (memory flat in file size), except where the answer
needs a row's neighbours: `stats` keeps one length per row and one 8-byte hash per distinct pair.
Outputs are written to a temporary sibling and renamed into place, so a target is either absent,
the old file, or the complete new one; an output that is one of the inputs is refused before anything
is read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from gpmctl.data.files import RecordWriter
from gpmctl.data.formats import FORMATS, ReadOptions
from gpmctl.data.mix import interleave
from gpmctl.data.records import PreferenceRecord
from gpmctl.data.sources import source_items
from gpmctl.data.split import held_out
from gpmctl.errors import ConfigError, DataError

Progress = Callable[[int], None]  # called with the rows done so far, every PROGRESS_EVERY rows
OnError = Callable[[DataError], None]
PROGRESS_EVERY = 4096
EMPTY_ALLOWED = ReadOptions(allow_empty_responses=True)  # stats counts empty answers rather than rejecting them


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def valid_records(
    path: str | Path,
    *,
    skip_invalid: bool = False,
    on_error: OnError | None = None,
    progress: Progress | None = None,
    options: ReadOptions | None = None,
) -> Iterator[PreferenceRecord]:
    """The records of a source. A bad row raises its DataError, or with `skip_invalid` goes to
    `on_error` and reading goes on. `options`: forced format, UltraFeedback mode, input keys (ReadOptions)."""
    count = 0
    for _, item in source_items(str(path), options=options):
        count += 1
        if progress is not None and count % PROGRESS_EVERY == 0:
            progress(count)
        if isinstance(item, DataError):
            if not skip_invalid:
                raise item
            if on_error is not None:
                on_error(item)
            continue
        yield item


def validate(
    paths: list[str], progress: Progress | None = None, options: ReadOptions | None = None
) -> Iterator[tuple[str, int, DataError | None]]:
    """(source, item number within it, problem or None) for every record or bad row of every source, in
    one pass. A source that cannot be opened is one problem with row number 0."""
    for path in paths:
        try:
            items = source_items(path, options=options)
            number = 0
            for _, item in items:
                number += 1
                if progress is not None and number % PROGRESS_EVERY == 0:
                    progress(number)
                yield path, number, item if isinstance(item, DataError) else None
        except DataError as e:
            yield path, 0, e


# ---------------------------------------------------------------------------------------------
# Operations
# ---------------------------------------------------------------------------------------------


class SkipCounter:
    """The `on_error` of valid_records that counts skipped rows and passes each error on."""

    def __init__(self, on_error: OnError | None):
        self.count, self.on_error = 0, on_error

    def __call__(self, e: DataError) -> None:
        self.count += 1
        if self.on_error is not None:
            self.on_error(e)


def convert(
    src: str,
    dst: str,
    *,
    skip_invalid: bool = False,
    on_error: OnError | None = None,
    progress: Progress | None = None,
    options: ReadOptions | None = None,
) -> dict:
    """Any source -> canonical jsonl / jsonl.gz / parquet (or "-"). -> {"rows", "skipped"}.
    `options` forces a format, picks the UltraFeedback mode or renames input keys (ReadOptions)."""
    count_error = SkipCounter(on_error)

    with RecordWriter(dst, inputs=(src,)) as out:
        for record in valid_records(src, skip_invalid=skip_invalid, on_error=count_error, progress=progress, options=options):
            out.write(record)
    return {"input": src, "output": dst, "rows": out.rows, "skipped": count_error.count}


def normalised_prompt(record: PreferenceRecord) -> str:
    """All prompt message contents, casefolded, runs of whitespace made one space."""
    return " ".join(" ".join(m["content"] for m in record.prompt).split()).casefold()


def _digest(value: Any) -> bytes:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()


def percentiles(values) -> dict | None:
    """Nearest-rank p50/p90/p99 and max of a sequence of lengths or of a {length: count} histogram
    (the histogram keeps memory bounded by the number of distinct lengths, not of rows); None if empty."""
    hist = values if isinstance(values, Counter) else Counter(values)
    n = sum(hist.values())
    if not n:
        return None
    ranks = {q: max(0, math.ceil(q / 100 * n) - 1) for q in (50, 90, 99)}
    out, seen = {}, 0
    for length in sorted(hist):
        seen += hist[length]
        for q, rank in ranks.items():
            if f"p{q}" not in out and rank < seen:
                out[f"p{q}"] = length
    out["max"] = max(hist)
    return {k: out[k] for k in ("p50", "p90", "p99", "max")}


def _token_lengths(tokenizer, texts: list[str], into: Counter) -> None:
    if texts:
        into.update(len(ids) for ids in tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"])


def stats(
    path: str,
    *,
    tokenizer=None,
    against: str | None = None,
    limit: int | None = None,
    progress: Progress | None = None,
    options: ReadOptions | None = None,
) -> dict:
    """Counts and length percentiles of one file; see `gpmctl data stats --help` for the keys. `options`
    (ReadOptions) read `path`, always with empty answers allowed; `against` is read with the defaults."""
    fields = ("prompt", "chosen", "rejected")
    chars = {f: Counter() for f in fields}  # length histograms: memory does not grow with the rows
    tokens = {f: Counter() for f in fields}
    pending: dict[str, list[str]] = {f: [] for f in fields}
    formats = dict.fromkeys(FORMATS, 0)
    seen_pairs: set[bytes] = set()
    prompt_keys: dict[bytes, int] = {}  # normalised prompt hash -> rows
    rows = invalid = duplicates = swapped = 0
    empty = {"chosen": 0, "rejected": 0}
    counting_empty = dataclasses.replace(options or ReadOptions(), allow_empty_responses=True)  # see empty_responses
    for fmt, item in source_items(path, options=counting_empty):
        rows += 1
        if progress is not None and rows % PROGRESS_EVERY == 0:
            progress(rows)
        if isinstance(item, DataError):
            invalid += 1
        else:
            formats[fmt] += 1
            prompt = "\n\n".join(m["content"] for m in item.prompt)
            texts = {"prompt": prompt, "chosen": item.chosen_text, "rejected": item.rejected_text}
            for f in fields:
                chars[f][len(texts[f])] += 1
            for f in ("chosen", "rejected"):
                empty[f] += not texts[f].strip()
            pair = _digest([item.prompt, item.chosen, item.rejected])
            if pair in seen_pairs:
                duplicates += 1
            elif _digest([item.prompt, item.rejected, item.chosen]) in seen_pairs:
                swapped += 1
            seen_pairs.add(pair)
            key = _digest(normalised_prompt(item))
            prompt_keys[key] = prompt_keys.get(key, 0) + 1
            if tokenizer is not None:
                for f in fields:
                    pending[f].append(texts[f])
                if len(pending["prompt"]) >= 512:
                    for f in fields:
                        _token_lengths(tokenizer, pending[f], tokens[f])
                        pending[f] = []
        if rows == limit:
            break
    result: dict[str, Any] = {
        "path": path,
        "rows": rows,
        "valid": rows - invalid,
        "invalid": invalid,
        "formats": {k: v for k, v in formats.items() if v},
        "distinct_prompts": len(prompt_keys),
        "duplicate_pairs": duplicates,
        "swapped_pairs": swapped,
        "empty_responses": empty,
        "chars": {f: percentiles(chars[f]) for f in fields},
    }
    if tokenizer is not None:
        for f in fields:
            _token_lengths(tokenizer, pending[f], tokens[f])
        result["tokens"] = {f: percentiles(tokens[f]) for f in fields}
    if against is not None:
        other: set[bytes] = set()
        other_rows = other_invalid = 0
        for _, item in source_items(against, options=EMPTY_ALLOWED):
            other_rows += 1
            if isinstance(item, DataError):
                other_invalid += 1
            else:
                other.add(_digest(normalised_prompt(item)))
        shared = [n for key, n in prompt_keys.items() if key in other]
        result["against"] = {
            "path": against,
            "rows": other_rows,
            "invalid": other_invalid,
            "shared_prompts": len(shared),
            "rows_with_shared_prompt": sum(shared),
        }
    return result


def split(
    src: str,
    out_dir: str,
    *,
    eval_fraction: float,
    seed: int,
    skip_invalid: bool = False,
    on_error: OnError | None = None,
    progress: Progress | None = None,
    options: ReadOptions | None = None,
) -> dict:
    """src -> out_dir/train.jsonl and out_dir/eval.jsonl, split by prompt (gpmctl.data.split). -> counts."""
    if not 0.0 <= eval_fraction <= 1.0:
        raise ConfigError(f"--eval-fraction: expected a number in [0, 1], got {eval_fraction:g}")
    count_error = SkipCounter(on_error)

    out = Path(out_dir)
    with RecordWriter(out / "train.jsonl", inputs=(src,)) as train, RecordWriter(out / "eval.jsonl", inputs=(src,)) as held:
        for record in valid_records(src, skip_invalid=skip_invalid, on_error=count_error, progress=progress, options=options):
            (held if held_out(record, eval_fraction, seed) else train).write(record)
    return {
        "train": str(out / "train.jsonl"),
        "eval": str(out / "eval.jsonl"),
        "train_rows": train.rows,
        "eval_rows": held.rows,
        "skipped": count_error.count,
    }


def mix(
    dst: str,
    sources: list[tuple[str, float]],
    *,
    total: int | None = None,
    skip_invalid: bool = False,
    on_error: OnError | None = None,
    progress: Progress | None = None,
    options: ReadOptions | None = None,
) -> dict:
    """Weighted mixture of sources (any but a mixture) by the rule of recipe mixtures (gpmctl.data.mix): `total` rows, default
    the sum of the sources' valid rows, which are then exactly the records a recipe mixture of the same
    sources reads. -> counts per source."""
    if not sources:
        raise ConfigError("mix: give at least one SOURCE:WEIGHT")
    if total is not None and total < 0:
        raise ConfigError(f"--total: expected a number >= 0, got {total}")
    writer = RecordWriter(dst, inputs=tuple(path for path, _ in sources))  # refuses an input as output before the reading
    sizes, count_error = [], SkipCounter(on_error)

    for path, _ in sources:
        sizes.append(sum(1 for _ in valid_records(path, skip_invalid=skip_invalid, on_error=count_error, options=options)))
        if sizes[-1] == 0:
            raise DataError(path, "no valid rows to mix")
    if total is None:
        total = sum(sizes)

    def read(path: str) -> Iterator[PreferenceRecord]:
        return valid_records(path, skip_invalid=True, options=options)  # errors were reported by the count pass

    taken = [0] * len(sources)
    with writer as out:
        for n, (i, record) in enumerate(interleave(sources, read, total), start=1):
            out.write(record)
            taken[i] += 1
            if progress is not None and n % PROGRESS_EVERY == 0:
                progress(n)
    return {
        "output": dst,
        "rows": out.rows,
        "skipped": count_error.count,
        "sources": [
            {
                "path": p,
                "weight": w,
                "rows": size,
                "taken": t,
                "repeated": max(0, t - size),
                "share": round(t / total, 4) if total else 0.0,
            }
            for (p, w), size, t in zip(sources, sizes, taken)
        ],
    }
