"""Dataset operations behind `gpmctl data ...`: validate, convert, stats, split, mix.

Every operation streams its input row by row (memory flat in file size), except where the answer
needs a row's neighbours: `stats` keeps one length per row and one 8-byte hash per distinct pair.
Outputs are written to a temporary sibling and renamed into place, so a target is either absent,
the old file, or the complete new one; an output that is one of the inputs is refused before anything
is read.
"""

from __future__ import annotations

import bisect
import gzip
import hashlib
import json
import math
import os
import random
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from gpmctl.data.records import FORMATS, PreferenceRecord, ReadOptions, iter_rows_with_errors
from gpmctl.errors import ConfigError, DataError
from gpmctl.utils import atomic_path, refuse_inputs_as_output

Progress = Callable[[int], None]  # called with the rows done so far, every PROGRESS_EVERY rows
OnError = Callable[[DataError], None]
PROGRESS_EVERY = 4096
PARQUET_BATCH_ROWS = 16_384
OUTPUT_SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet")


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def valid_records(
    path: str | Path,
    *,
    skip_invalid: bool = False,
    on_error: OnError | None = None,
    rename: dict[str, str] | None = None,
    progress: Progress | None = None,
    options: ReadOptions | None = None,
) -> Iterator[PreferenceRecord]:
    """The records of a file. A bad row raises its DataError, or with `skip_invalid` goes to
    `on_error` and reading goes on. `options`: forced format, UltraFeedback mode (ReadOptions)."""
    count = 0
    for _, item in iter_rows_with_errors(path, rename=rename, options=options):
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
    """(path, item number within the file, problem or None) for every record or bad row of every
    file, in one pass. A file that cannot be opened is one problem with row number 0."""
    for path in paths:
        try:
            items = iter_rows_with_errors(path, options=options)
            number = 0
            for _, item in items:
                number += 1
                if progress is not None and number % PROGRESS_EVERY == 0:
                    progress(number)
                yield path, number, item if isinstance(item, DataError) else None
        except DataError as e:
            yield path, 0, e


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def _output_suffix(path: str | Path) -> str:
    name = str(path).lower()
    for suffix in sorted(OUTPUT_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    raise ConfigError(f"{path}: cannot write this file type; expected one of {', '.join(OUTPUT_SUFFIXES)} (or - for stdout)")


def _messages_type():
    import pyarrow as pa

    return pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))


def _meta_arrow_type(key: str, values: list[Any]):
    import pyarrow as pa

    kinds = {type(v) for v in values if v is not None}
    if kinds <= {bool}:
        return pa.bool_()
    if kinds <= {int}:
        return pa.int64()
    if kinds <= {int, float}:
        return pa.float64()
    if kinds <= {str}:
        return pa.string()
    names = ", ".join(sorted(k.__name__ for k in kinds))
    raise DataError(key, f"extra key holds values of several types ({names}); parquet needs one type per column: write jsonl instead")


class RecordWriter:
    """Canonical records to .jsonl, .jsonl.gz, .parquet, or stdout ("-", jsonl); atomic.

    Parquet columns: prompt/chosen/rejected as lists of {role, content}, margin, label, id, subset,
    then one column per extra (`meta`) key; the extra columns and their types come from the first
    batch of rows, and a later row with a new extra key or a value of another type is an error.

        with RecordWriter("out.parquet") as w:
            for record in records:
                w.write(record)
    """

    def __init__(self, path: str | Path, inputs: tuple = ()):
        self.path, self.rows = str(path), 0
        self.suffix = ".jsonl" if self.path == "-" else _output_suffix(path)
        refuse_inputs_as_output(self.path, inputs)
        self._output = None  # the atomic_path context of the temporary file
        self._tmp: str | None = None
        self._file = self._raw = self._parquet = None
        self._batch: list[dict] = []
        self._schema = None

    def __enter__(self) -> RecordWriter:
        if self.path == "-":
            self._file = sys.stdout
            return self
        self._output = atomic_path(self.path)
        self._tmp = str(self._output.__enter__())
        if self.suffix == ".parquet":  # pyarrow writes the temporary file by name
            return self
        self._raw = open(self._tmp, "wb")
        if self.suffix == ".jsonl.gz":
            self._file = gzip.GzipFile(fileobj=self._raw, mode="wb", mtime=0)
        elif self.suffix == ".jsonl":
            self._file = self._raw
        return self

    def write(self, record: PreferenceRecord) -> None:
        if self.suffix == ".parquet":
            self._batch.append(record)
            if len(self._batch) >= PARQUET_BATCH_ROWS:
                self._flush_parquet()
        else:
            line = json.dumps(record.to_json(), ensure_ascii=False, allow_nan=False) + "\n"
            self._file.write(line if self._file is sys.stdout else line.encode("utf-8"))
        self.rows += 1

    def _flush_parquet(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self._batch:
            return
        rows = [_parquet_row(r) for r in self._batch]
        if self._schema is None:
            extra = list(dict.fromkeys(k for row in rows for k in row if k not in _PARQUET_FIXED))
            fields = [(k, _messages_type()) for k in ("prompt", "chosen", "rejected")]
            fields += [("margin", pa.float64()), ("label", pa.float64()), ("id", pa.string()), ("subset", pa.string())]
            fields += [(k, _meta_arrow_type(k, [row.get(k) for row in rows])) for k in extra]
            self._schema = pa.schema(fields)
            self._parquet = pq.ParquetWriter(self._tmp, self._schema)
        else:
            first = self.rows - len(self._batch) + 1
            for i, row in enumerate(rows):
                unknown = [k for k in row if k not in self._schema.names]
                if unknown:
                    raise DataError(self.path, f"extra key {unknown[0]!r} first appears at output row {first + i}, after the "
                                               "parquet columns were fixed from the first rows: write jsonl instead")  # fmt: skip
        columns = {name: [row.get(name) for row in rows] for name in self._schema.names}
        try:
            table = pa.Table.from_pydict(columns, schema=self._schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise DataError(self.path, f"an extra key changes type after the first rows ({e}): write jsonl instead") from None
        self._parquet.write_table(table)
        self._batch = []

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self.path == "-":
            sys.stdout.flush()
            return False
        try:
            self._close(complete=exc_type is None)
        except BaseException as e:  # finishing failed (the disk filled up?): treated like a failure while writing
            self._output.__exit__(type(e), e, e.__traceback__)
            raise
        return self._output.__exit__(exc_type, exc, tb)  # replaces the target, or removes the temporary file

    def _close(self, complete: bool) -> None:
        """Flush and close the temporary file; `complete=False` (a failure) only closes it."""
        if complete:
            if self.suffix == ".parquet":
                self._flush_parquet()
                if self._parquet is None:  # no rows: still a valid, empty file
                    import pyarrow.parquet as pq

                    self._batch = []
                    self._parquet = pq.ParquetWriter(self._tmp, _empty_parquet_schema())
                self._parquet.close()
            else:
                if self._file is not self._raw:
                    self._file.close()
                self._raw.flush()
                os.fsync(self._raw.fileno())
        if self._raw is not None:
            self._raw.close()
        elif self._parquet is not None and not complete:
            self._parquet.close()


_PARQUET_FIXED = ("prompt", "chosen", "rejected", "margin", "label", "id", "subset")


def _empty_parquet_schema():
    import pyarrow as pa

    return pa.schema([(k, _messages_type()) for k in ("prompt", "chosen", "rejected")]
                     + [("margin", pa.float64()), ("label", pa.float64()), ("id", pa.string()), ("subset", pa.string())])  # fmt: skip


def _parquet_row(record: PreferenceRecord) -> dict:
    """Canonical row with message lists always as lists (parquet needs one type per column)."""
    row = record.to_json()
    for key in ("prompt", "chosen", "rejected"):
        row[key] = getattr(record, key)
    return row


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
    rename: dict[str, str] | None = None,
    skip_invalid: bool = False,
    on_error: OnError | None = None,
    progress: Progress | None = None,
    options: ReadOptions | None = None,
) -> dict:
    """Any readable file -> canonical jsonl / jsonl.gz / parquet (or "-"). -> {"rows", "skipped"}.
    `options` forces a format or picks the UltraFeedback mode (ReadOptions)."""
    count_error = SkipCounter(on_error)

    with RecordWriter(dst, inputs=(src,)) as out:
        for record in valid_records(src, skip_invalid=skip_invalid, on_error=count_error, rename=rename, progress=progress,
                                    options=options):  # fmt: skip
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
) -> dict:
    """Counts and length percentiles of one file; see `gpmctl data stats --help` for the keys."""
    fields = ("prompt", "chosen", "rejected")
    chars = {f: Counter() for f in fields}  # length histograms: memory does not grow with the rows
    tokens = {f: Counter() for f in fields}
    pending: dict[str, list[str]] = {f: [] for f in fields}
    formats = dict.fromkeys(FORMATS, 0)
    seen_pairs: set[bytes] = set()
    prompt_keys: dict[bytes, int] = {}  # normalised prompt hash -> rows
    rows = invalid = duplicates = swapped = 0
    empty = {"chosen": 0, "rejected": 0}
    for fmt, item in iter_rows_with_errors(path, allow_empty_responses=True):  # counted in empty_responses instead
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
        for _, item in iter_rows_with_errors(against, allow_empty_responses=True):
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


def held_out(record: PreferenceRecord, eval_fraction: float, seed: int) -> bool:
    """The rule of gpmctl.train.reward.split_by_prompt: a hash of the prompt messages and the seed,
    so every pair of a prompt lands on the same side, the same way in `train-rm` and `data split`."""
    key = json.dumps(record.prompt, sort_keys=True, ensure_ascii=False) + f"#{seed}"
    return int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big") / 2**64 < eval_fraction


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
    """src -> out_dir/train.jsonl and out_dir/eval.jsonl, split by prompt. -> counts."""
    if not 0.0 <= eval_fraction <= 1.0:
        raise ConfigError(f"--eval-fraction: expected a number in [0, 1], got {eval_fraction:g}")
    count_error = SkipCounter(on_error)

    out = Path(out_dir)
    with RecordWriter(out / "train.jsonl", inputs=(src,)) as train, RecordWriter(out / "eval.jsonl", inputs=(src,)) as held:
        for record in valid_records(src, skip_invalid=skip_invalid, on_error=count_error, progress=progress, options=options):
            (held if held_out(record, eval_fraction, seed) else train).write(record)
    return {"train": str(out / "train.jsonl"), "eval": str(out / "eval.jsonl"),
            "train_rows": train.rows, "eval_rows": held.rows, "skipped": count_error.count}  # fmt: skip


def parse_mix_source(spec: str) -> tuple[str, float]:
    """"path:weight" -> (path, weight); a spec without ":weight" has weight 1."""
    path, sep, weight = spec.rpartition(":")
    if not sep or not path:
        return spec, 1.0
    try:
        value = float(weight)
    except ValueError:
        return spec, 1.0  # a colon in the path itself
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{spec}: the weight after ':' must be a positive number, got {weight!r}")
    return path, value


def mix(
    dst: str,
    sources: list[tuple[str, float]],
    *,
    seed: int = 0,
    total: int | None = None,
    skip_invalid: bool = False,
    on_error: OnError | None = None,
    progress: Progress | None = None,
    options: ReadOptions | None = None,
) -> dict:
    """Weighted mixture: each output row comes from source i with probability w_i / sum(w); each
    source is read in file order and starts again from its first row when it runs out (so a small,
    heavy source is repeated). `total` rows, default the sum of the sources' valid rows. The same
    seed gives the same file."""
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

    def cycle(i: int) -> Iterator[PreferenceRecord]:
        while True:
            yield from valid_records(sources[i][0], skip_invalid=True, options=options)  # errors were reported by the count pass

    streams = [cycle(i) for i in range(len(sources))]
    cumulative, acc = [], 0.0
    for _, weight in sources:
        acc += weight
        cumulative.append(acc)
    rng = random.Random(seed)
    taken = [0] * len(sources)
    with writer as out:
        for n in range(total):
            i = min(bisect.bisect_right(cumulative, rng.random() * acc), len(sources) - 1)
            out.write(next(streams[i]))
            taken[i] += 1
            if progress is not None and (n + 1) % PROGRESS_EVERY == 0:
                progress(n + 1)
    for stream in streams:
        stream.close()
    return {
        "output": dst,
        "rows": out.rows,
        "skipped": count_error.count,
        "sources": [{"path": p, "weight": w, "rows": size, "taken": t, "repeated": max(0, t - size), "share": round(t / total, 4) if total else 0.0}
                    for (p, w), size, t in zip(sources, sizes, taken)],  # fmt: skip
    }
