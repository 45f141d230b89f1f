"""Data files: reading their rows and records, writing records.

Readers, from the most used:
  read_records(path)          the records of a file; the first bad row raises DataError
  records_with_errors(path)   (format, record or DataError) for every row, reading on past bad rows
  records_from_rows(rows, s)  the records of rows already decoded (a `datasets.Dataset`, generated rows)
  rows_with_errors(rows, s)   records_with_errors of rows already decoded
  file_rows(path)             (line, decoded row) with no row format applied (scores, tables, logs)

Files: .jsonl and .jsonl.gz (streamed line by line, never more than MAX_LINE_BYTES of one line held),
.json (loaded whole: a list of rows or {"data": [rows]}), .csv (header = keys; cells holding JSON lists
or objects are decoded), .parquet (read by record batches), and "-": jsonl on stdin. Rows become
records through gpmctl.data.formats.

Duplicate keys in a JSON object: the last one wins (Python's json, and most JSON readers, do this).

Empty files: a file (or stdin) with no rows at all, only blank lines, or an empty JSON list raises
DataError naming it once the reader reaches its end: it cannot train or score anything.

Line numbers in errors are 1-based physical lines for .jsonl/.jsonl.gz/stdin (blank lines count). For
.json and .parquet there are no meaningful lines: the number is the 1-based row, and the message says
"(row N)". A .json file that does not parse is reported at the real line json gives.

Writers: `RecordWriter` (.jsonl, .jsonl.gz, .parquet or stdout) and `write_jsonl`; both write a
temporary sibling and rename it into place, so a target is either the old file or the complete new one.
"""

from __future__ import annotations

import gzip
import json
import os
import sys
import zlib
from collections.abc import Generator, Iterable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any, BinaryIO

from gpmctl.data.fields import RowProblem, json_type
from gpmctl.data.formats import ReadOptions, row_format, row_records
from gpmctl.data.records import PreferenceRecord
from gpmctl.errors import ConfigError, DataError
from gpmctl.utils import atomic_path, refuse_inputs_as_output

SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".parquet", ".csv")
OUTPUT_SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet")
MAX_LINE_BYTES = 16 * 2**20
PARQUET_BATCH_ROWS = 16_384

_BOM = b"\xef\xbb\xbf"

Rows = Generator[tuple[int, Any, str], None, None]  # (line or row number, row or DataError, note for messages)
Items = Iterator[tuple[str | None, PreferenceRecord | DataError]]  # (format, record or DataError)


# ---------------------------------------------------------------------------------------------
# Files -> records
# ---------------------------------------------------------------------------------------------


def read_records(
    path: str | Path, *, limit: int | None = None, options: ReadOptions | None = None, max_line_bytes: int = MAX_LINE_BYTES
) -> Iterator[PreferenceRecord]:
    """Records of a data file (see the module docstring), or of stdin jsonl for "-".

    Stops after `limit` rows (an UltraFeedback row may give several records). The first problem raises
    DataError; a missing file or unknown suffix raises at once, before iteration. `options` forces a
    format or picks the UltraFeedback mode (see ReadOptions); `max_line_bytes` caps a jsonl line.
    """
    return records_only(records_with_errors(path, limit=limit, options=options, max_line_bytes=max_line_bytes))


def records_with_errors(
    path: str | Path,
    *,
    limit: int | None = None,
    options: ReadOptions | None = None,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> Items:
    """(format, record) for every record of a file, and (format, DataError) for every bad row, reading on
    with the next row. The format is None when the row could not be decoded or is not an object. An
    UltraFeedback row gives one item per record. A problem that ends the file (corrupt gzip, a .json that
    does not parse) is yielded last. `limit` counts rows, good and bad. A missing file or unknown suffix
    raises at once."""
    _check_limit(limit)
    name, rows = _file_rows(path, max_line_bytes)
    return _records(rows, name, limit, options or ReadOptions())


def records_from_rows(
    rows: Iterable[Any], source: str, *, limit: int | None = None, options: ReadOptions | None = None
) -> Iterator[PreferenceRecord]:
    """Records of already decoded rows, e.g. a `datasets.Dataset`; the first bad row raises DataError
    "SOURCE:N: ... (row N)" with N the 1-based row number."""
    return records_only(rows_with_errors(rows, source, limit=limit, options=options))


def rows_with_errors(rows: Iterable[Any], source: str, *, limit: int | None = None, options: ReadOptions | None = None) -> Items:
    """records_with_errors of already decoded rows: (format, record or DataError "SOURCE:N: ... (row N)")."""
    _check_limit(limit)
    numbered = ((i, row, f" (row {i})") for i, row in enumerate(rows, start=1))
    return _records(numbered, source, limit, options or ReadOptions())


def file_rows(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(line or row number, decoded row) of a data file, no record format applied (score files, benchmark
    tables, prompt lists); the first unreadable line raises."""
    _, rows = _file_rows(path, MAX_LINE_BYTES)
    with closing(rows):
        for number, row, _ in rows:
            if isinstance(row, DataError):
                raise row
            yield number, row


def _check_limit(limit: int | None) -> None:
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")


def _records(rows: Rows, name: str, limit: int | None, options: ReadOptions) -> Items:
    """(number, row or DataError, note) -> (format, record or error), `limit` rows. A source with no rows
    at all raises DataError at its end (after any file-level error it yielded)."""
    if limit == 0:
        return
    count = 0
    try:
        for number, row, note in rows:
            if isinstance(row, DataError):
                yield None, row
            else:
                row = options.renamed(row)
                fmt = row_format(row, options)
                try:
                    records = row_records(row, options)
                except RowProblem as p:
                    yield fmt, options.input_field(p).error(name, number, note)
                else:
                    for record in records:
                        yield fmt, record
            count += 1
            if count == limit:
                return  # before the next row is read
    finally:
        rows.close()  # closes the file now, not when the generator is collected
    if count == 0:
        raise DataError(name, "no rows (the input is empty or holds only blank lines); nothing to read")


def records_only(items: Items) -> Iterator[PreferenceRecord]:
    """The records of (format, record or DataError) items; the first DataError raises."""
    for _, item in items:
        if isinstance(item, DataError):
            raise item
        yield item


# ---------------------------------------------------------------------------------------------
# Files -> rows
# ---------------------------------------------------------------------------------------------


def data_suffix(path: Path) -> str | None:
    """The one of SUFFIXES `path` ends with (case-insensitive), or None."""
    name = path.name.lower()
    return next((s for s in sorted(SUFFIXES, key=len, reverse=True) if name.endswith(s)), None)


def _checked_path(path: str | Path) -> tuple[str, Path | None, str]:
    """-> (name shown in errors, path or None for stdin, suffix). File-level problems raise here."""
    if str(path) == "-":
        return "<stdin>", None, ".jsonl"
    p = Path(path)
    suffix = data_suffix(p)
    if suffix is None:
        raise DataError(str(path), f"unknown file type; expected one of {', '.join(SUFFIXES)} (or - for stdin jsonl)")
    if not p.exists():
        raise DataError(str(path), "no such file")
    if p.is_dir():
        raise DataError(str(path), "is a directory, not a data file")
    return str(path), p, suffix


def _file_rows(path: str | Path, max_line_bytes: int) -> tuple[str, Rows]:
    name, p, suffix = _checked_path(path)
    if suffix in (".jsonl", ".jsonl.gz"):
        return name, _jsonl_rows(name, p, suffix, max_line_bytes)
    if suffix == ".json":
        return name, _json_rows(name, p)
    if suffix == ".csv":
        return name, _csv_rows(name, p)
    return name, _parquet_rows(name, p)


def open_bytes(p: Path | None, gzipped: bool) -> BinaryIO:
    """A file (decompressed when `gzipped`) or, for None, stdin, as bytes; failing to open is a DataError."""
    if p is None:
        return stdin_bytes()
    try:
        return gzip.open(p, "rb") if gzipped else open(p, "rb")
    except OSError as e:
        raise DataError(str(p), f"cannot open: {e.strerror or e}") from None


def jsonl_lines(name: str, p: Path | None, gzipped: bool, max_line_bytes: int) -> Iterator[tuple[int, str | DataError]]:
    """(line number, text without its line end, or DataError) for every line of a file or of stdin (None),
    blank lines included. Never reads a whole file and never holds more than max_line_bytes + 2 bytes of
    one line (the limit excludes the line end). A line over the limit or not UTF-8 is a DataError and
    reading goes on; a stream that cannot be read on ends with a DataError."""
    stream = open_bytes(p, gzipped)
    where = "decompressed file" if gzipped else "file" if p is not None else "input"
    number, offset = 0, 0
    try:
        while True:
            try:
                raw = stream.readline(max_line_bytes + 2)  # room for content + "\r\n"
            except (OSError, EOFError, zlib.error) as e:
                problem = f"cannot read on from here ({e}); the file is corrupt or cut short"
                yield number + 1, DataError(name, problem, line=number + 1)
                return
            if not raw:
                return
            number += 1
            start, offset = offset, offset + len(raw)
            ending = 2 if raw.endswith(b"\r\n") else 1 if raw.endswith(b"\n") else 0
            if len(raw) - ending > max_line_bytes:
                size = len(raw) - ending
                if not ending and len(raw) == max_line_bytes + 2:
                    skipped, rest_ending = _skip_rest_of_line(stream, raw[-1:])
                    offset += skipped
                    size += skipped - rest_ending
                problem = f"line longer than {max_line_bytes} bytes ({size:,} bytes); not parsed"
                yield number, DataError(name, problem, line=number)
                continue
            if number == 1 and raw.startswith(_BOM):
                raw, start = raw[len(_BOM) :], start + len(_BOM)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                problem = (
                    f"not valid UTF-8: byte 0x{raw[e.start]:02x} at byte {e.start} of the line "
                    f"(byte {start + e.start} of the {where})"
                )
                yield number, DataError(name, problem, line=number)
                continue
            yield number, text.rstrip("\r\n")
    finally:
        if p is not None:
            stream.close()


def _jsonl_rows(name: str, p: Path | None, suffix: str, max_line_bytes: int) -> Rows:
    """(line number, decoded row or DataError, "") for each non-blank line."""
    with closing(jsonl_lines(name, p, suffix == ".jsonl.gz", max_line_bytes)) as lines:
        for number, text in lines:
            if isinstance(text, DataError):
                yield number, text, ""
            elif text.strip():
                yield number, _decode_json(text, name, number), ""


def stdin_bytes() -> BinaryIO:
    """Standard input as bytes; closed (`<&-`, or a closed stream) is a DataError rather than a crash."""
    if sys.stdin is None or sys.stdin.closed:
        raise DataError("<stdin>", "standard input is closed; nothing to read for -")
    return sys.stdin.buffer


def _skip_rest_of_line(stream: BinaryIO, last: bytes) -> tuple[int, int]:
    """Read to the end of the line in 1 MiB pieces -> (bytes read, bytes of the line end among them).
    `last` is the byte read just before, in case a "\r\n" straddles the two reads."""
    skipped = 0
    while True:
        chunk = stream.readline(2**20)
        skipped += len(chunk)
        if not chunk or chunk.endswith(b"\n"):
            tail = last + chunk
            return skipped, 2 if tail.endswith(b"\r\n") else 1 if tail.endswith(b"\n") else 0
        last = chunk[-1:]


def _decode_json(text: str, name: str, number: int) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        return DataError(name, _json_problem(e, text), line=number)
    except RecursionError:
        return DataError(name, "invalid JSON: nested too deeply", line=number)


def _json_problem(e: json.JSONDecodeError, text: str, with_line: bool = False) -> str:
    near = text[max(0, e.pos - 20) : e.pos + 20].replace("\n", " ").strip()
    where = f"line {e.lineno} column {e.colno}" if with_line else f"column {e.colno}"
    problem = f"invalid JSON: {e.msg.removesuffix(' at')} at {where}"
    if near:
        problem += f", near {near!r}"
    if e.pos >= len(text.rstrip()):
        problem += "; the text ends early (cut short?)"
    return problem


def _json_rows(name: str, p: Path) -> Rows:
    """(row number, row, " (row N)") for each item of a JSON list or {"data": [...]}."""
    try:
        data = p.read_bytes()
    except OSError as e:
        raise DataError(name, f"cannot read: {e.strerror or e}") from None
    data = data[len(_BOM) :] if data.startswith(_BOM) else data
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        yield line, DataError(name, f"not valid UTF-8: byte 0x{data[e.start]:02x} at byte {e.start} of the file", line=line), ""
        return
    try:
        document = json.loads(text)
    except json.JSONDecodeError as e:
        yield e.lineno, DataError(name, _json_problem(e, text, with_line=True), line=e.lineno), ""
        return
    except RecursionError:
        yield 0, DataError(name, "invalid JSON: nested too deeply"), ""
        return
    if isinstance(document, dict) and isinstance(document.get("data"), list):
        document = document["data"]
    if not isinstance(document, list):
        problem = f'expected a JSON list of rows or an object {{"data": [rows]}}, got {json_type(document)}'
        yield 0, DataError(name, problem), ""
        return
    for i, row in enumerate(document, start=1):
        yield i, row, f" (row {i})"


def _csv_rows(name: str, p: Path) -> Rows:
    """(line number, row, "") for each CSV record (header = keys), streamed. Cells holding JSON lists or
    objects (message lists) are decoded; `margin` and `label` cells become numbers; empty cells are absent."""
    import csv

    csv.field_size_limit(MAX_LINE_BYTES)
    try:
        with open(p, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            line = 1
            for raw in reader:
                start, line = line + 1, reader.line_num
                row: dict[str, Any] = {}
                for key, cell in raw.items():
                    if key is None:  # more cells than header names
                        yield start, DataError(name, f"{len(cell)} more cells than the header has names", line=start), ""
                        break
                    if cell is None or cell == "":
                        continue
                    if cell[:1] in "[{":
                        try:
                            row[key] = json.loads(cell)
                            continue
                        except json.JSONDecodeError:
                            pass
                    if key in ("margin", "label"):
                        try:
                            row[key] = float(cell)
                            continue
                        except ValueError:
                            pass
                    row[key] = cell
                else:
                    yield start, row, ""
    except UnicodeDecodeError as e:
        yield 0, DataError(name, f"not valid UTF-8 ({e.reason} at byte {e.start})"), ""
    except csv.Error as e:
        yield 0, DataError(name, f"not valid CSV: {e}"), ""


def _parquet_rows(name: str, p: Path) -> Rows:
    """(row number, row, " (row N)") for each row, read by record batches."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(p)
    except (pa.ArrowException, OSError) as e:
        raise DataError(name, f"not a readable Parquet file: {e}") from None
    number = 0
    try:
        for batch in table.iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                number += 1
                yield number, row, f" (row {number})"
    except (pa.ArrowException, OSError) as e:
        yield number + 1, DataError(name, f"cannot read on from here: {e} (row {number + 1})", line=number + 1), ""
    finally:
        table.close()


# ---------------------------------------------------------------------------------------------
# Records -> files
# ---------------------------------------------------------------------------------------------


def write_jsonl(records: Iterable[PreferenceRecord], path: str | Path) -> int:
    """Write canonical rows (`PreferenceRecord.to_json`) as jsonl, gzipped for .jsonl.gz; "-" is
    stdout. Written like RecordWriter (atomic). Returns the number of rows written."""
    if str(path) != "-" and data_suffix(Path(path)) not in (".jsonl", ".jsonl.gz"):
        raise DataError(str(path), "write_jsonl writes .jsonl or .jsonl.gz files (or - for stdout)")
    with RecordWriter(path) as out:
        for record in records:
            out.write(record)
    return out.rows


class RecordWriter:
    """Canonical records to .jsonl, .jsonl.gz, .parquet, or stdout ("-", jsonl); atomic.

    Parquet columns: prompt/chosen/rejected as lists of {role, content}, margin, label, id, subset,
    then one column per extra (`meta`) key; the extra columns and their types come from the first
    batch of rows, and a later row with a new extra key or a value of another type is an error. A column
    that is null in every row is left out (the file is rewritten without it when it closes), so TRL's
    RewardTrainer reads the file as it is: its collator would turn an all-null margin into a crash.

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
        self._filled: set[str] = {"prompt", "chosen", "rejected"}  # parquet columns holding a value in some row

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
            line = _json_line(record)
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
            fields = _fixed_parquet_fields()
            fields += [(k, _meta_arrow_type(k, [row.get(k) for row in rows])) for k in extra]
            self._schema = pa.schema(fields)
            self._parquet = pq.ParquetWriter(self._tmp, self._schema)
        else:
            first = self.rows - len(self._batch) + 1
            for i, row in enumerate(rows):
                unknown = [k for k in row if k not in self._schema.names]
                if unknown:
                    raise DataError(
                        self.path,
                        f"extra key {unknown[0]!r} first appears at output row {first + i}, after the "
                        "parquet columns were fixed from the first rows: write jsonl instead",
                    )
        columns = {name: [row.get(name) for row in rows] for name in self._schema.names}
        try:
            table = pa.Table.from_pydict(columns, schema=self._schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise DataError(self.path, f"an extra key changes type after the first rows ({e}): write jsonl instead") from None
        self._parquet.write_table(table)
        self._filled.update(name for name in self._schema.names if table.column(name).null_count < len(table))
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

    def _drop_empty_parquet_columns(self) -> None:
        """Rewrite the closed temporary parquet file without the columns that are null in every row."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if all(name in self._filled for name in self._schema.names):
            return
        keep = [field for field in self._schema if field.name in self._filled]
        slimmer = f"{self._tmp}.columns"
        try:
            with pq.ParquetFile(self._tmp) as source, pq.ParquetWriter(slimmer, pa.schema(keep)) as out:
                for batch in source.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[field.name for field in keep]):
                    out.write_batch(batch)
            os.replace(slimmer, self._tmp)
        finally:
            Path(slimmer).unlink(missing_ok=True)

    def _close(self, complete: bool) -> None:
        """Flush and close the temporary file; `complete=False` (a failure) only closes it."""
        if complete:
            if self.suffix == ".parquet":
                self._flush_parquet()
                if self._parquet is None:  # no rows: still a valid, empty file
                    import pyarrow as pa
                    import pyarrow.parquet as pq

                    self._batch = []
                    self._schema = pa.schema(_fixed_parquet_fields())
                    self._parquet = pq.ParquetWriter(self._tmp, self._schema)
                self._parquet.close()
                self._drop_empty_parquet_columns()
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


def _fixed_parquet_fields() -> list:
    """(name, arrow type) of the columns every parquet output starts with, in _PARQUET_FIXED order."""
    import pyarrow as pa

    return [(k, _messages_type()) for k in ("prompt", "chosen", "rejected")] + [
        ("margin", pa.float64()),
        ("label", pa.float64()),
        ("id", pa.string()),
        ("subset", pa.string()),
    ]


def _parquet_row(record: PreferenceRecord) -> dict:
    """Canonical row with message lists always as lists (parquet needs one type per column)."""
    row = record.to_json()
    for key in ("prompt", "chosen", "rejected"):
        row[key] = getattr(record, key)
    return row


def _output_suffix(path: str | Path) -> str:
    suffix = data_suffix(Path(path))
    if suffix in OUTPUT_SUFFIXES:
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
    raise DataError(
        key, f"extra key holds values of several types ({names}); parquet needs one type per column: write jsonl instead"
    )


def _json_line(record: PreferenceRecord) -> str:
    return json.dumps(record.to_json(), ensure_ascii=False, allow_nan=False) + "\n"
