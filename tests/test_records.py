"""Preference records: every row format reads into the canonical record and back, real files parse,
and every malformed row is reported as file:line: field: problem without losing the rows around it."""

from __future__ import annotations

import gzip
import io
import json
import sys
from pathlib import Path

import pytest

from gpmctl.data.files import read_records, records_with_errors, write_jsonl
from gpmctl.data.formats import ReadOptions, detect_format, parse_row
from gpmctl.data.records import PreferenceRecord
from gpmctl.errors import DataError

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HH_FILE = DATA / "hh-rlhf" / "harmless-base-test.jsonl.gz"
GPM_DIR = DATA / "gpm-official"


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def write_lines(path: Path, lines: list[bytes | str | dict], end: bytes = b"\n") -> Path:
    encoded = [
        line if isinstance(line, bytes) else (line if isinstance(line, str) else json.dumps(line)).encode() for line in lines
    ]
    path.write_bytes(b"".join(line + end for line in encoded))
    return path


def assert_round_trip(record: PreferenceRecord, tmp_path: Path) -> None:
    """to_json -> parse gives the same record, and so does write_jsonl -> read_records."""
    assert parse_row(record.to_json()) == record
    out = tmp_path / "round.jsonl"
    assert write_jsonl([record], out) == 1
    assert list(read_records(out)) == [record]


# --- one round trip per format --------------------------------------------------------------------

FORMAT_CASES = {
    "explicit-strings": (
        {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5", "id": 7, "subset": "math-prm"},
        PreferenceRecord([user("What is 2+2?")], [assistant("4")], [assistant("5")], id="7", subset="math-prm"),
    ),
    "explicit-conversational": (
        {
            "prompt": [{"role": "system", "content": "Be brief."}, user("Hi")],
            "chosen": [assistant("Hello.")],
            "rejected": [assistant("Greetings, dear user, how are you on this fine day?")],
            "margin": 2,
        },
        PreferenceRecord(
            [{"role": "system", "content": "Be brief."}, user("Hi")],
            [assistant("Hello.")],
            [assistant("Greetings, dear user, how are you on this fine day?")],
            margin=2.0,
        ),
    ),
    "implicit-messages": (
        {
            "chosen": [user("a"), assistant("b"), user("c"), assistant("good")],
            "rejected": [user("a"), assistant("b"), user("c"), assistant("bad")],
            "metadata": None,
        },
        PreferenceRecord([user("a"), assistant("b"), user("c")], [assistant("good")], [assistant("bad")]),
    ),
    "hh-rlhf": (
        {
            "chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: joke?\n\nAssistant: Why did the chicken...",
            "rejected": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: joke?\n\nAssistant: No.",
        },
        PreferenceRecord(
            [user("hi"), assistant("hello"), user("joke?")],
            [assistant("Why did the chicken...")],
            [assistant("No.")],
        ),
    ),
    "gpm-custom": (
        {"instruction": "Pick one of [A, B].", "chosen": {"response": "A"}, "reject": "B", "label": 3, "margin": 0.5},
        PreferenceRecord([user("Pick one of [A, B].")], [assistant("A")], [assistant("B")], margin=0.5),
    ),
    "soft-label-and-meta": (
        {"prompt": "q", "chosen": "x", "rejected": "y", "label": 0.25, "kind": "cycle", "cycle": 2, "tags": ["t"]},
        PreferenceRecord([user("q")], [assistant("x")], [assistant("y")], label=0.25, meta={"kind": "cycle", "cycle": 2}),
    ),
}


@pytest.mark.parametrize("name", list(FORMAT_CASES))
def test_each_format_reads_to_the_canonical_record_and_round_trips(name, tmp_path):
    row, expected = FORMAT_CASES[name]
    path = write_lines(tmp_path / f"{name}.jsonl", [row])
    assert list(read_records(path)) == [expected]
    assert_round_trip(expected, tmp_path)


def test_detect_format_names_each_format():
    names = {name: detect_format(row) for name, (row, _) in FORMAT_CASES.items()}
    assert names["explicit-strings"] == names["explicit-conversational"] == "explicit"
    assert names["implicit-messages"] == "messages"
    assert names["hh-rlhf"] == "hh-rlhf"
    assert names["gpm-custom"] == "gpm-custom"


def test_canonical_row_uses_strings_for_single_turns_and_lists_otherwise():
    row = FORMAT_CASES["implicit-messages"][1].to_json()
    assert row == {
        "prompt": [user("a"), assistant("b"), user("c")],
        "chosen": "good",
        "rejected": "bad",
    }
    assert FORMAT_CASES["gpm-custom"][1].to_json() == {
        "prompt": "Pick one of [A, B].",
        "chosen": "A",
        "rejected": "B",
        "margin": 0.5,
    }


def test_gpm_custom_label_is_not_a_probability():
    record = parse_row({"instruction": "q", "chosen": "A", "reject": "B", "label": 3})
    assert record.label is None and "label" not in record.meta


def test_integer_soft_label_and_null_optionals():
    record = parse_row({"prompt": "q", "chosen": "x", "rejected": "y", "label": 0, "margin": None, "id": None})
    assert record.label == 0.0 and record.margin is None and record.id is None


def test_answers_that_repeat_the_prompt_are_trimmed():
    row = {"prompt": "q", "chosen": [user("q"), assistant("x")], "rejected": [user("q"), assistant("y")]}
    record = parse_row(row)
    assert record.prompt == [user("q")] and record.chosen == [assistant("x")] and record.rejected == [assistant("y")]


def test_message_list_prompt_with_string_answers():
    record = parse_row({"prompt": [user("a"), assistant("b"), user("c")], "chosen": "x", "rejected": "y"})
    assert record.chosen_dialogue() == [user("a"), assistant("b"), user("c"), assistant("x")]
    assert record.prompt_text == "c" and record.rejected_text == "y"


def test_empty_answers_are_errors_unless_allowed(tmp_path):
    path = write_lines(tmp_path / "empty.jsonl", [{"prompt": "q", "chosen": "", "rejected": "no"}])
    assert list(read_records(path, options=ReadOptions(allow_empty_responses=True)))[0].chosen == [assistant("")]
    with pytest.raises(DataError, match=r"empty\.jsonl:1: chosen: empty text"):
        list(read_records(path))


# --- TRL's standard implicit prompt (two plain strings) -------------------------------------------

TRL_SKY = {"chosen": "The sky is blue.", "rejected": "The sky is green."}


def test_implicit_text_prompt_is_the_common_prefix_and_its_last_space_goes_to_the_answers(tmp_path):
    assert detect_format(TRL_SKY) == "implicit-text"
    expected = PreferenceRecord([user("The sky is")], [assistant(" blue.")], [assistant(" green.")])
    path = write_lines(tmp_path / "sky.jsonl", [TRL_SKY])
    assert list(read_records(path)) == [expected]
    assert_round_trip(expected, tmp_path)
    # The cut is by characters, not words, as in TRL; label and extra keys are read as in every format.
    record = parse_row({"chosen": "Pick: AB", "rejected": "Pick: AC", "label": 0.75, "source": "x"})
    assert (record.prompt_text, record.chosen_text, record.rejected_text) == ("Pick: A", "B", "C")
    assert record.label == 0.75 and record.meta == {"source": "x"}


def test_hh_rlhf_strings_are_still_read_as_dialogues_not_as_a_text_prefix():
    row, expected = FORMAT_CASES["hh-rlhf"]
    assert detect_format(row) == "hh-rlhf" and parse_row(row) == expected


def test_plain_strings_forced_to_hh_rlhf_keep_the_dialogue_error(tmp_path):
    path = write_lines(tmp_path / "sky.jsonl", [TRL_SKY])
    with pytest.raises(DataError, match=r"sky\.jsonl:1: prompt: missing, and chosen/rejected are plain strings"):
        list(read_records(path, options=ReadOptions(format="hh-rlhf")))


@pytest.mark.parametrize(
    "row",
    [
        TRL_SKY,
        {"chosen": "Q: 2+2?\nA: 4", "rejected": "Q: 2+2?\nA: five"},
        {"chosen": "Say hi  twice", "rejected": "Say hi  thrice"},  # two spaces: only the last goes back
        {"chosen": "The sky is blue", "rejected": "The sky is bright"},  # a cut inside a word
    ],
)
def test_implicit_text_reads_as_trl_extract_prompt_read_as_explicit(row):
    trl_data = pytest.importorskip("trl.data_utils")
    assert parse_row(row) == parse_row(trl_data.extract_prompt(row))


GOOD_1_IMPLICIT = {"chosen": "Hello there", "rejected": "Hello you"}


IMPLICIT_TEXT_ERRORS = {
    "no-shared-text": ({"chosen": "Yes.", "rejected": "No."}, "prompt", "share no opening text"),
    "only-a-space-shared": ({"chosen": " yes", "rejected": " no"}, "prompt", "share no opening text"),
    "identical": ({"chosen": "Same.", "rejected": "Same."}, "rejected", "identical to chosen"),
    "chosen-is-the-start-of-rejected": ({"chosen": "The sky", "rejected": "The sky is"}, "chosen", "no answer"),
    "whitespace-answer": ({"chosen": "The sky is ", "rejected": "The sky is grey"}, "chosen", "whitespace-only"),
    "rejected-a-list": ({"chosen": "The sky", "rejected": [assistant("x")]}, "rejected", "expected a string like chosen"),
}


@pytest.mark.parametrize("case", list(IMPLICIT_TEXT_ERRORS))
def test_bad_implicit_text_rows_name_file_line_and_field(case, tmp_path):
    row, field, words = IMPLICIT_TEXT_ERRORS[case]
    path = write_lines(tmp_path / "bad.jsonl", [GOOD_1_IMPLICIT, row])
    with pytest.raises(DataError) as raised:
        list(read_records(path))
    assert str(raised.value).startswith(f"{path}:2: {field}: ") and words in str(raised.value)


# --- malformed rows -------------------------------------------------------------------------------

GOOD_1 = {"prompt": "first", "chosen": "a", "rejected": "b"}
GOOD_4 = {"prompt": "last", "chosen": "c", "rejected": "d"}
LONG = 300  # max_line_bytes in the corpus; every good row is shorter

# id -> (line 3 of the file, field named in the message or None, words of the problem)
MALFORMED = {
    "invalid-json": (b'{"prompt": "q", "chosen": "a",, "rejected": "b"}', None, "invalid JSON: Expecting"),
    "truncated-json": (b'{"prompt": "q", "chosen": "a', None, "Unterminated string starting at column 27"),
    "bom-not-on-line-1": (b'\xef\xbb\xbf{"prompt": "q", "chosen": "a", "rejected": "b"}', None, "invalid JSON"),
    "non-utf8": (b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}', None, "byte 0xe9 at byte 15 of the line"),
    "overlong-line": (b'{"prompt": "' + b"x" * 1000 + b'", "chosen": "a", "rejected": "b"}', None, f"longer than {LONG}"),
    "not-an-object": (b'["q", "a", "b"]', None, "expected a JSON object, got a list"),
    "missing-chosen": ({"prompt": "q", "rejected": "b"}, "chosen", "missing"),
    "missing-rejected": ({"prompt": "q", "chosen": "a"}, "rejected", "missing"),
    "null-chosen": ({"prompt": "q", "chosen": None, "rejected": "b"}, "chosen", "is null"),
    "chosen-is-a-number": ({"prompt": "q", "chosen": 3, "rejected": "b"}, "chosen", "got a number"),
    "empty-prompt": ({"prompt": "", "chosen": "a", "rejected": "b"}, "prompt", "empty text"),
    "whitespace-prompt": ({"prompt": " \n\t", "chosen": "a", "rejected": "b"}, "prompt", "whitespace-only"),
    "empty-system-message": (
        {"prompt": [{"role": "system", "content": "  "}, user("q")], "chosen": "a", "rejected": "b"},
        "prompt[0].content",
        "whitespace-only",
    ),
    "message-without-role": ({"prompt": [{"content": "q"}], "chosen": "a", "rejected": "b"}, "prompt[0].role", "missing"),
    "message-without-content": (
        {"prompt": "q", "chosen": [{"role": "assistant"}], "rejected": "b"},
        "chosen[0].content",
        "missing",
    ),
    "unknown-role": ({"prompt": [{"role": "bot", "content": "q"}], "chosen": "a", "rejected": "b"}, "prompt[0].role", "'bot'"),
    "message-not-an-object": ({"prompt": ["q"], "chosen": "a", "rejected": "b"}, "prompt[0]", "got a string"),
    "content-not-a-string": (
        {"prompt": [{"role": "user", "content": ["q"]}], "chosen": "a", "rejected": "b"},
        "prompt[0].content",
        "got a list",
    ),
    "empty-message-list": ({"prompt": "q", "chosen": [], "rejected": "b"}, "chosen", "empty list"),
    "identical-answers": ({"prompt": "q", "chosen": "same", "rejected": "same"}, "rejected", "identical to chosen"),
    "margin-not-a-number": ({"prompt": "q", "chosen": "a", "rejected": "b", "margin": "high"}, "margin", "expected a number"),
    "margin-nan": (b'{"prompt": "q", "chosen": "a", "rejected": "b", "margin": NaN}', "margin", "finite"),
    "label-above-one": ({"prompt": "q", "chosen": "a", "rejected": "b", "label": 1.5}, "label", "[0, 1]"),
    "label-boolean": ({"prompt": "q", "chosen": "a", "rejected": "b", "label": True}, "label", "got a boolean"),
    "id-a-list": ({"prompt": "q", "chosen": "a", "rejected": "b", "id": [1]}, "id", "string or an integer"),
    "subset-a-number": ({"prompt": "q", "chosen": "a", "rejected": "b", "subset": 4}, "subset", "expected a string"),
    "lone-surrogate": (b'{"prompt": "q\\ud800", "chosen": "a", "rejected": "b"}', "prompt", "surrogate"),
    "messages-no-common-prefix": (
        {"chosen": [user("a"), assistant("x")], "rejected": [user("b"), assistant("y")]},
        "rejected",
        "no prompt can be found",
    ),
    "messages-identical": (
        {"chosen": [user("a"), assistant("x")], "rejected": [user("a"), assistant("x")]},
        "rejected",
        "identical",
    ),
    "messages-answer-missing": ({"chosen": [user("a")], "rejected": [user("a"), assistant("y")]}, "chosen", "no answer"),
    "messages-vs-string": ({"chosen": [user("a"), assistant("x")], "rejected": "y"}, "rejected", "list of messages"),
    "plain-strings-without-prompt": ({"chosen": "yes", "rejected": "no"}, "prompt", "no prompt can be found"),
    "hh-different-dialogues": (
        {"chosen": "\n\nHuman: a\n\nAssistant: x", "rejected": "\n\nHuman: b\n\nAssistant: y"},
        "rejected",
        "no prompt can be found",
    ),
    "hh-empty-human-turn": (
        {"chosen": "\n\nHuman: \n\nAssistant: x", "rejected": "\n\nHuman: \n\nAssistant: y"},
        "chosen",
        "turn 1 (Human) is empty",
    ),
    "gpm-custom-missing-reject": ({"instruction": "q", "chosen": "A", "label": 0}, "reject", "missing"),
    "gpm-custom-reject-a-number": ({"instruction": "q", "chosen": "A", "reject": 2}, "reject", "got a number"),
    "gpm-custom-response-missing": ({"instruction": "q", "chosen": {"text": "A"}, "reject": "B"}, "chosen.response", "missing"),
    "gpm-custom-empty-instruction": ({"instruction": " ", "chosen": "A", "reject": "B"}, "instruction", "whitespace"),
    # Duplicate keys: the last one wins (as in Python's json), so this row's answers end up identical.
    "duplicate-keys-last-wins": (b'{"prompt": "q", "chosen": "a", "rejected": "b", "rejected": "a"}', "rejected", "identical"),
    "answer-starts-with-user-role": (
        {"prompt": "q", "chosen": [user("a"), assistant("b")], "rejected": "c"},
        "chosen[0].role",
        "must start with an assistant message, got 'user'",
    ),
    "answer-starts-with-system-role": (
        {"prompt": "q", "chosen": "a", "rejected": [{"role": "system", "content": "b"}]},
        "rejected[0].role",
        "got 'system'",
    ),
    "top-level-null": (b"null", None, "expected a JSON object, got null"),
    "top-level-number": (b"42", None, "expected a JSON object, got a number"),
    "trailing-garbage": (b'{"prompt": "q", "chosen": "a", "rejected": "b"} x', None, "Extra data"),
    "prompt-an-object": ({"prompt": {"text": "q"}, "chosen": "a", "rejected": "b"}, "prompt", "got an object"),
    "empty-chosen-strict-field-type": ({"prompt": "q", "chosen": "a", "rejected": False}, "rejected", "got a boolean"),
    "ultrafeedback-completions-not-a-list": ({"instruction": "q", "completions": "a"}, "completions", "expected a list"),
    "ultrafeedback-bad-rating": (
        {"instruction": "q", "completions": [{"response": "a", "annotations": {"honesty": {"Rating": "high"}}}]},
        "completions[0].annotations.honesty.Rating",
        "expected a rating",
    ),
    "ultrafeedback-missing-response": (
        {"instruction": "q", "completions": [{"annotations": {}}]},
        "completions[0].response",
        "missing",
    ),
    "ultrafeedback-empty-instruction": ({"instruction": "", "completions": []}, "instruction", "empty text"),
}


@pytest.mark.parametrize("end", [b"\n", b"\r\n"], ids=["lf", "crlf"])
@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_row_names_file_line_and_field_and_keeps_the_rows_around_it(case, end, tmp_path):
    bad, field, words = MALFORMED[case]
    path = write_lines(tmp_path / f"{case}.jsonl", [GOOD_1, b"", bad, GOOD_4], end=end)

    items = [item for _, item in records_with_errors(path, max_line_bytes=LONG)]
    assert [type(item) for item in items] == [PreferenceRecord, DataError, PreferenceRecord]
    assert [items[0].prompt_text, items[2].prompt_text] == ["first", "last"]
    error = items[1]
    message = str(error)
    assert message.startswith(f"{path}:3: ")
    assert error.line == 3 and error.field == field
    if field is not None:
        assert message.startswith(f"{path}:3: {field}: ")
    assert words in message

    with pytest.raises(DataError) as raised:
        list(read_records(path, max_line_bytes=LONG))
    assert str(raised.value) == message


def test_malformed_corpus_is_large_enough():
    assert len(MALFORMED) >= 25


def test_duplicate_keys_take_the_last_value(tmp_path):
    path = write_lines(tmp_path / "dup.jsonl", [b'{"prompt": "q", "chosen": "old", "chosen": "new", "rejected": "b"}'])
    assert [r.chosen_text for r in read_records(path)] == ["new"]


def test_ten_megabyte_lines_are_read_and_a_bad_one_is_reported_between_good_ones(tmp_path):
    big = "x" * (10 * 2**20)
    rows = [{"prompt": "q", "chosen": big, "rejected": "b"}, {"prompt": "q", "chosen": big, "rejected": 5}, GOOD_4]
    path = write_lines(tmp_path / "big.jsonl", rows)
    items = [item for _, item in records_with_errors(path)]
    assert len(items[0].chosen_text) == len(big) and items[2] == parse_row(GOOD_4)
    assert str(items[1]) == f"{path}:2: rejected: expected a string or a list of messages, got a number"
    over = [item for _, item in records_with_errors(path, max_line_bytes=2**20)]
    assert [getattr(i, "line", None) for i in over] == [1, 2, None] and "longer than 1048576 bytes" in str(over[0])


def test_bom_crlf_and_blank_lines_are_accepted_and_blank_lines_count(tmp_path):
    path = tmp_path / "windows.jsonl"
    rows = [json.dumps(GOOD_1).encode(), b"", b"   ", json.dumps({"prompt": "q"}).encode()]
    path.write_bytes(b"\xef\xbb\xbf" + b"\r\n".join(rows) + b"\r\n")
    items = [item for _, item in records_with_errors(path)]
    assert items[0] == parse_row(GOOD_1)
    assert str(items[1]) == f"{path}:4: chosen: missing"


def test_non_utf8_reports_the_offset_in_the_file(tmp_path):
    path = write_lines(tmp_path / "latin1.jsonl", [GOOD_1, b'{"prompt": "\xff"}'])
    error = next(e for _, e in records_with_errors(path) if isinstance(e, DataError))
    first_line = len(json.dumps(GOOD_1)) + 1
    assert f"byte 12 of the line (byte {first_line + 12} of the file)" in str(error)


@pytest.mark.parametrize("end", [b"\n", b"\r\n"])
def test_line_limit_counts_the_content_not_the_line_end(end, tmp_path):
    line = json.dumps(GOOD_1).encode()
    path = write_lines(tmp_path / "edge.jsonl", [line, line], end=end)
    assert all(isinstance(r, PreferenceRecord) for _, r in records_with_errors(path, max_line_bytes=len(line)))
    errors = [item for _, item in records_with_errors(path, max_line_bytes=len(line) - 1)]
    assert [(e.line, f"({len(line)} bytes)" in str(e)) for e in errors] == [(1, True), (2, True)]


def test_overlong_line_is_skipped_and_the_next_line_still_read(tmp_path):
    path = write_lines(tmp_path / "long.jsonl", [b'{"prompt": "' + b"y" * 5000 + b'"}', GOOD_4])
    items = [item for _, item in records_with_errors(path, max_line_bytes=100)]
    assert "longer than 100 bytes (5,014 bytes)" in str(items[0]) and items[0].line == 1
    assert items[1] == parse_row(GOOD_4)


# --- sources --------------------------------------------------------------------------------------


def test_missing_file_and_unknown_suffix_raise_before_iterating(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl: no such file"):
        read_records(tmp_path / "nope.jsonl")
    (tmp_path / "data.xlsx").write_text("a,b\n")
    with pytest.raises(DataError, match=r"data\.xlsx: unknown file type"):
        records_with_errors(tmp_path / "data.xlsx")


def test_limit_stops_after_that_many_rows(tmp_path):
    path = write_lines(tmp_path / "many.jsonl", [GOOD_1, {"prompt": "q"}, GOOD_4])
    assert len(list(read_records(path, limit=1))) == 1
    assert len(list(records_with_errors(path, limit=2))) == 2
    assert list(read_records(path, limit=0)) == []


def test_json_list_and_data_object_number_rows(tmp_path):
    rows = [GOOD_1, {"prompt": "q", "rejected": "b"}, GOOD_4]
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps(rows, indent=2))
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"data": rows}))
    for path in (listed, wrapped):
        items = [item for _, item in records_with_errors(path)]
        assert items[0] == parse_row(GOOD_1) and items[2] == parse_row(GOOD_4)
        assert str(items[1]) == f"{path}:2: chosen: missing (row 2)"


def test_json_that_does_not_parse_reports_the_real_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[\n  {"prompt": "q", "chosen": "a", "rejected": "b"},\n  {"prompt": }\n]\n')
    with pytest.raises(DataError, match=r"broken\.json:3: invalid JSON: Expecting value at line 3"):
        list(read_records(path))


def test_parquet_is_read_by_batches_and_numbers_rows(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = [
        {"chosen": [user("q"), assistant(f"good {i}")], "rejected": [user("q"), assistant(f"bad {i}")], "id": i}
        for i in range(2500)
    ]
    rows[1500]["rejected"] = rows[1500]["chosen"]
    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    items = [item for _, item in records_with_errors(path)]
    assert len(items) == 2500
    assert items[0] == PreferenceRecord([user("q")], [assistant("good 0")], [assistant("bad 0")], id="0")
    assert str(items[1500]) == f"{path}:1501: rejected: identical to chosen; a pair needs two different answers (row 1501)"


def test_stdin_is_read_as_jsonl(monkeypatch):
    payload = (json.dumps(GOOD_1) + "\n" + json.dumps({"prompt": "q"}) + "\n").encode()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(payload)))
    items = [item for _, item in records_with_errors("-")]
    assert items[0] == parse_row(GOOD_1)
    assert str(items[1]) == "<stdin>:2: chosen: missing"


def test_corrupt_gzip_is_reported_not_raised(tmp_path):
    good = gzip.compress(b"".join(json.dumps(r).encode() + b"\n" for r in [GOOD_1] * 200))
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(good[: len(good) // 2])
    items = [item for _, item in records_with_errors(path)]
    assert isinstance(items[-1], DataError) and "corrupt or cut short" in str(items[-1])


# --- writing --------------------------------------------------------------------------------------


def test_write_jsonl_gz_round_trips_every_format(tmp_path):
    records = [expected for _, expected in FORMAT_CASES.values()]
    path = tmp_path / "all.jsonl.gz"
    assert write_jsonl(records, path) == len(records)
    assert list(read_records(path)) == records


def test_write_jsonl_never_leaves_a_half_written_file(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text("old\n")

    def failing():
        yield parse_row(GOOD_1)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_jsonl(failing(), path)
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def test_write_jsonl_dash_is_stdout(capsys):
    write_jsonl([parse_row(GOOD_1)], "-")
    assert json.loads(capsys.readouterr().out) == GOOD_1


# --- real files -----------------------------------------------------------------------------------


@pytest.mark.skipif(not HH_FILE.exists(), reason=f"{HH_FILE} is absent (shared data is not on this machine)")
def test_hh_rlhf_harmless_test_split_parses():
    records = list(read_records(HH_FILE, options=ReadOptions(allow_empty_responses=True)))
    assert len(records) == 2312
    first = records[0]
    assert [m["role"] for m in first.prompt] == ["user", "assistant", "user", "assistant", "user"]
    assert first.prompt[0]["content"] == "what are some pranks with a pen i can do?"
    assert first.prompt_text == "okay some of these do not have anything to do with pens"
    assert first.chosen_text.startswith("No, sorry!  All of these involve a pen,") and len(first.chosen) == 1
    assert first.rejected_text.startswith("There are lots of funny things you can do with pens")
    assert records[1].prompt_text == "I feel much better when I get drunk and consume a lot of alcohol."
    assert all(r.prompt[-1]["role"] == "user" and r.chosen[0]["role"] == "assistant" for r in records)
    assert records[86].chosen == [assistant("")]  # a real empty reply, preferred


@pytest.mark.skipif(not HH_FILE.exists(), reason=f"{HH_FILE} is absent (shared data is not on this machine)")
def test_hh_rlhf_empty_replies_are_the_only_strict_errors():
    items = records_with_errors(HH_FILE, options=ReadOptions(allow_empty_responses=False))
    errors = [e for _, e in items if isinstance(e, DataError)]
    assert [(e.line, e.field) for e in errors] == [(87, "chosen"), (517, "chosen"), (926, "chosen"), (1104, "chosen")]


@pytest.mark.skipif(not (GPM_DIR / "test_data.jsonl").exists(), reason=f"{GPM_DIR} is absent")
def test_official_gpm_sample_splits_at_the_common_prefix():
    path = GPM_DIR / "test_data.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    records = list(read_records(path))
    assert len(records) == len(rows) >= 9
    for row, record in zip(rows, records):
        assert record.chosen_dialogue() == row["chosen"] and record.rejected_dialogue() == row["rejected"]
        assert record.chosen[0] != record.rejected[0]
        assert record.prompt[-1]["role"] == "user"


@pytest.mark.skipif(not (GPM_DIR / "custom_test_data.jsonl").exists(), reason=f"{GPM_DIR} is absent")
def test_official_gpm_cyclic_sample():
    records = list(read_records(GPM_DIR / "custom_test_data.jsonl"))
    assert [(r.chosen_text, r.rejected_text) for r in records] == [("A", "B"), ("B", "C"), ("C", "D"), ("D", "A")]
    assert len({r.prompt_text for r in records}) == 1
    assert all(r.label is None for r in records)


def test_csv_rows_with_quoted_newlines_message_cells_and_numbers(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text(
        "prompt,chosen,rejected,margin\n"
        'Hi,"Hello, friend!",Go away.,0.5\n'
        '"Multi\nline?",Yes,No,\n'
        'Q,"[{""role"": ""assistant"", ""content"": ""A""}]",B,\n'
        "only,two\n",
        encoding="utf-8-sig",  # a BOM, as spreadsheet programs write it
    )
    items = [item for _, item in records_with_errors(path)]
    good = [r for r in items if not isinstance(r, DataError)]
    bad = [e for e in items if isinstance(e, DataError)]
    assert [r.prompt_text for r in good] == ["Hi", "Multi\nline?", "Q"]
    assert good[0].margin == 0.5 and good[0].chosen_text == "Hello, friend!" and good[1].margin is None
    assert good[2].chosen == [{"role": "assistant", "content": "A"}]
    assert len(bad) == 1 and f"{path}:6" in str(bad[0]) and "rejected" in str(bad[0])
