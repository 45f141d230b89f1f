"""The row formats: which keys a row of a data file holds, and how each kind becomes PreferenceRecords.

One `PreferenceRecord` (gpmctl.data.records) is one comparison: a prompt (a list of messages) and two
continuations, `chosen` (preferred) and `rejected`. Every supported row format becomes this record;
the format is detected per row from its keys (`detect_format`; two plain strings are hh-rlhf when "chosen"
starts like an HH-RLHF dialogue, implicit-text otherwise), or forced (`ReadOptions.format`):

  explicit      {"prompt", "chosen", "rejected"}; each field a string or a list of messages.
                Covers TRL's standard (strings) and conversational (message lists) explicit-prompt
                formats, RewardBench rows ("id", "subset") and mixed rows (message-list prompt,
                string answers). A string prompt is one user message, a string answer one assistant
                message. If both answers repeat the prompt messages at their start
                (UltraFeedback-binarized style), the repeat is removed.
  messages      {"chosen": [msgs], "rejected": [msgs]}, each the whole dialogue (Skywork-Reward-
                Preference, the official GPM code): prompt = the longest common prefix of messages,
                chosen/rejected = what follows it.
  hh-rlhf       {"chosen": str, "rejected": str}, each a whole "\\n\\nHuman: ...\\n\\nAssistant: ..."
                dialogue (Anthropic HH-RLHF): prompt = the shared text up to the last "\\n\\nAssistant:"
                it contains, parsed into turns (Human -> user, Assistant -> assistant).
  implicit-text {"chosen": str, "rejected": str} that are not HH-RLHF dialogues (TRL's standard implicit
                prompt): the prompt is their longest common prefix, cut by characters as TRL's
                `extract_prompt` cuts it; when that prefix ends in a space, the one space goes back to the
                answers ("The sky is blue." / "The sky is green." -> prompt "The sky is", answers
                " blue." / " green."). The prompt becomes one user message, each rest one assistant
                message, texts as given (so reading a row gives the record of TRL's extract_prompt(row) read
                as explicit). Strings sharing no opening text (or only spaces) have no prompt: an error.
                A cut is not held to word boundaries ("The sky is blue" / "The sky is bright" -> prompt
                "The sky is b"), as in TRL; write an explicit prompt where that matters.
  gpm-custom    {"instruction", "chosen", "reject", "label"} of the official GPM code's cyclic data;
                "chosen"/"reject" are strings or {"response": str}. Its "label" is an index, not a
                probability: it is ignored. The instruction becomes one user message, rendered like
                every other record: through the model's chat template when its tokenizer has one.
                The authors' code renders this format as `instruction + ' ' + response + ' ' + eos`
                whatever the tokenizer; that is gpmctl's text too for a tokenizer without a chat
                template, and with a template the texts (and so the numbers) differ from theirs.
  ultrafeedback {"prompt" | "instruction": str, "completions": [{"response": str, "annotations": ...}]}
                (openbmb/UltraFeedback). One row gives zero, one or several records, chosen by
                `ultrafeedback_mode`: binarize (default; best vs worst completion) or cyclic (the
                paper's cyclic triples from the aspect ratings); see gpmctl.data.ultrafeedback.

Optional keys of every format: "margin" (a finite number: preference strength), "id" (string or
integer, kept as a string), "subset" (string). Other scalar keys (string, number, boolean) are kept in
`meta` for evaluation breakdowns; null values and nested values are dropped.

Soft-label rule: "label" is read as P(chosen > rejected) in every format except gpm-custom and
ultrafeedback. It must be a number (not a boolean) in [0, 1]; anything else is an error. Absent or
null means 1 (`label=None`).

Input keys (OpenRLHF's --prompt_key/--chosen_key/--rejected_key): `ReadOptions.keys` renames the keys
that hold prompt, chosen and rejected (`--prompt-key question` on every `gpmctl data` command, recipe key
`data.prompt_key`) before the format is detected. Renaming is strict: a canonical key the row holds itself
is dropped, so a row without the input key has that field missing; errors name the input key
("question: whitespace-only text").

Roles: in the explicit format each answer (chosen, rejected) must start with an assistant message.

Empty texts: an empty or whitespace-only text is an error, prompt or answer: a pair with an empty
answer is far more often a broken export than a judgement. Data that prefers an empty reply on purpose
(4 of the 2,312 HH-RLHF harmless-base test rows do) is read with `allow_empty_responses=True`
(`--allow-empty-responses`, recipe key `data.allow_empty_responses`); prompts are never empty.

Reading whole files (jsonl, json, csv, parquet, stdin) into rows and records is gpmctl.data.files.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

from gpmctl.data.fields import (
    EMPTY_ANSWER_HINT,
    RowProblem,
    check_different,
    checked_messages,
    checked_side,
    checked_text,
    json_type,
    optional_fields,
    require,
    short,
)
from gpmctl.data.records import Message, PreferenceRecord
from gpmctl.data.ultrafeedback import DEFAULT_CYCLE_CRITERIA, ULTRAFEEDBACK_MODES, parse_criteria, ultrafeedback_records
from gpmctl.errors import DataError

FORMATS = ("explicit", "messages", "hh-rlhf", "implicit-text", "gpm-custom", "ultrafeedback")

_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")
_HH_ANSWER = "\n\nAssistant:"
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def detect_format(row: dict) -> str:
    """Which of FORMATS a row is, from its keys (and, for implicit rows, the type of "chosen")."""
    if "completions" in row and "chosen" not in row:
        return "ultrafeedback"
    if "rejected" not in row and ("reject" in row or "instruction" in row):
        return "gpm-custom"
    if "prompt" in row:
        return "explicit"
    if isinstance(row.get("chosen"), str):
        return "hh-rlhf" if _is_hh_dialogue(row["chosen"]) else "implicit-text"
    return "messages"


def explicit_prompt_record(row: dict, *, allow_empty_responses: bool = False) -> PreferenceRecord:
    """{"prompt", "chosen", "rejected"}, each a string or a list of messages."""
    prompt = checked_side(require(row, "prompt"), "prompt", "user", continuation=False, allow_empty_responses=False)
    sides = []
    for key in ("chosen", "rejected"):
        value = require(row, key)
        sides.append(checked_side(value, key, "assistant", continuation=True, allow_empty_responses=allow_empty_responses))
    chosen, rejected = sides
    n = len(prompt)
    if chosen[:n] == prompt and rejected[:n] == prompt and len(chosen) > n and len(rejected) > n:
        chosen, rejected = chosen[n:], rejected[n:]  # answers that repeat the prompt (UltraFeedback-binarized)
    for key, side in (("chosen", chosen), ("rejected", rejected)):
        if side[0]["role"] != "assistant":  # the answer to the prompt must be the assistant's turn
            raise RowProblem(f"{key}[0].role", f"an answer must start with an assistant message, got {side[0]['role']!r}")
    check_different(chosen, rejected)
    return PreferenceRecord(prompt, chosen, rejected, **optional_fields(row, soft_label=True))


def implicit_messages_record(row: dict, *, allow_empty_responses: bool = False) -> PreferenceRecord:
    """{"chosen": [msgs], "rejected": [msgs]}, each the whole dialogue; prompt = common prefix."""
    sides = []
    for key in ("chosen", "rejected"):
        value = require(row, key)
        if not isinstance(value, list):
            raise RowProblem(key, f"expected a list of messages (no prompt field), got {json_type(value)}")
        # Validated as continuations so an empty final answer passes; the prompt is checked below.
        sides.append(checked_messages(value, key, continuation=True, allow_empty_responses=allow_empty_responses))
    chosen, rejected = sides
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    if n == 0:
        raise RowProblem("rejected", "shares no first message with chosen, so no prompt can be found")
    if n == len(chosen) == len(rejected):
        raise RowProblem("rejected", "identical to chosen; a pair needs two different answers")
    for key, side in (("chosen", chosen), ("rejected", rejected)):
        if n == len(side):
            raise RowProblem(key, f"holds only the {n} opening message(s) it shares with the other side, no answer")
    for i, msg in enumerate(chosen[:n]):
        checked_text(msg["content"], f"chosen[{i}].content")  # a prompt message may never be empty
    return PreferenceRecord(chosen[:n], chosen[n:], rejected[n:], **optional_fields(row, soft_label=True))


def _hh_turns(text: str, name: str, first_index: int, *, allow_empty_answer: bool) -> list[Message]:
    """'\\n\\nHuman: a\\n\\nAssistant: b' -> messages; contents stripped of surrounding whitespace."""
    parts = _HH_TURN.split(text)
    if parts[0].strip():
        raise RowProblem(name, f"text before the first 'Human:'/'Assistant:' turn: {short(parts[0])}")
    out = []
    for i in range(1, len(parts), 2):
        speaker, content = parts[i], parts[i + 1].strip()
        turn = first_index + i // 2 + 1
        if not content and not (allow_empty_answer and speaker == "Assistant"):
            hint = EMPTY_ANSWER_HINT if speaker == "Assistant" and first_index > 0 else ""  # an answer, not the prompt
            raise RowProblem(name, f"turn {turn} ({speaker}) is empty{hint}")
        checked_text(content, name, allow_empty=True)
        out.append({"role": _HH_ROLES[speaker], "content": content})
    return out


def _is_hh_dialogue(text: str) -> bool:
    """Whether a string reads as an HH-RLHF dialogue: it opens with a turn and holds an assistant turn."""
    return text.lstrip().startswith(("Human:", "Assistant:")) and _HH_ANSWER in text


def _string_pair(row: dict) -> tuple[str, str]:
    """(chosen, rejected) of an implicit-prompt row whose answers must both be strings."""
    pair = []
    for key, other in (("chosen", "rejected"), ("rejected", "chosen")):
        value = require(row, key)
        if not isinstance(value, str):
            raise RowProblem(key, f"expected a string like {other}, got {json_type(value)}")
        pair.append(value)
    return pair[0], pair[1]


def hh_dialogue_record(row: dict, *, allow_empty_responses: bool = False) -> PreferenceRecord:
    """{"chosen": str, "rejected": str}, whole HH-RLHF dialogues; prompt = text up to the last shared
    '\\n\\nAssistant:'. Read as hh-rlhf (forced, or detected from "chosen"), strings that are not such dialogues
    are an error."""
    chosen_text, rejected_text = _string_pair(row)
    if not (_is_hh_dialogue(chosen_text) and _is_hh_dialogue(rejected_text)):
        raise RowProblem(
            "prompt",
            "missing, and chosen/rejected are plain strings, not HH-RLHF dialogues "
            "('\\n\\nHuman: ...\\n\\nAssistant: ...'), so no prompt can be found",
        )
    if chosen_text == rejected_text:
        raise RowProblem("rejected", "identical to chosen; a pair needs two different answers")
    shared = os.path.commonprefix([chosen_text, rejected_text])
    cut = shared.rfind(_HH_ANSWER)
    if cut < 0:
        raise RowProblem("rejected", "shares no '\\n\\nAssistant:' turn with chosen, so no prompt can be found")
    prompt = _hh_turns(chosen_text[:cut], "chosen", 0, allow_empty_answer=False)
    if not prompt:
        raise RowProblem("chosen", "no 'Human:' turn before the first 'Assistant:' answer")
    answers = []
    for key, value in (("chosen", chosen_text), ("rejected", rejected_text)):
        answers.append(_hh_turns(value[cut:], key, len(prompt), allow_empty_answer=allow_empty_responses))
    check_different(*answers)
    return PreferenceRecord(prompt, answers[0], answers[1], **optional_fields(row, soft_label=True))


def implicit_text_record(row: dict, *, allow_empty_responses: bool = False) -> PreferenceRecord:
    """{"chosen": str, "rejected": str}, TRL's standard implicit prompt: prompt = the longest common prefix,
    less one trailing space (which stays with the answers, as in TRL's extract_prompt)."""
    chosen_text, rejected_text = _string_pair(row)
    if chosen_text == rejected_text:
        raise RowProblem("rejected", "identical to chosen; a pair needs two different answers")
    cut = len(os.path.commonprefix([chosen_text, rejected_text]))
    if cut > 0 and chosen_text[cut - 1] == " ":
        cut -= 1
    prompt = chosen_text[:cut]
    if not prompt.strip():
        raise RowProblem(
            "prompt",
            "missing, and chosen/rejected share no opening text (TRL's implicit prompt), so no prompt can be found",
        )
    answers = []
    for key, other, text in (("chosen", "rejected", chosen_text), ("rejected", "chosen", rejected_text)):
        answer = text[cut:]
        if not answer and not allow_empty_responses:
            raise RowProblem(key, f"holds only the text it shares with {other}, no answer{EMPTY_ANSWER_HINT}")
        answers.append(
            [{"role": "assistant", "content": checked_text(answer, key, allow_empty=allow_empty_responses, answer=True)}]
        )
    return PreferenceRecord(
        [{"role": "user", "content": checked_text(prompt, "prompt")}],
        answers[0],
        answers[1],
        **optional_fields(row, soft_label=True),
    )


def gpm_custom_record(row: dict, *, allow_empty_responses: bool = False) -> PreferenceRecord:
    """{"instruction": str, "chosen": str | {"response": str}, "reject": str | {"response": str}};
    "label" is ignored (an index in the official cyclic data, not a probability)."""
    prompt = [{"role": "user", "content": checked_text(require(row, "instruction"), "instruction")}]
    sides = []
    for key in ("chosen", "reject"):
        value, name = require(row, key), key
        if isinstance(value, dict):
            name = f"{key}.response"
            if value.get("response") is None:
                raise RowProblem(name, "missing" if "response" not in value else "is null")
            value = value["response"]
        elif not isinstance(value, str):
            raise RowProblem(key, f'expected a string or {{"response": str}}, got {json_type(value)}')
        content = checked_text(value, name, allow_empty=allow_empty_responses, answer=True)
        sides.append([{"role": "assistant", "content": content}])
    check_different(*sides, name="reject")
    return PreferenceRecord(prompt, sides[0], sides[1], **optional_fields(row, soft_label=False))


_READERS = {
    "explicit": explicit_prompt_record,
    "messages": implicit_messages_record,
    "hh-rlhf": hh_dialogue_record,
    "implicit-text": implicit_text_record,
    "gpm-custom": gpm_custom_record,
}


@dataclass(frozen=True)
class ReadOptions:
    """How rows are read: `format` forces one reader (None: detect per row); UltraFeedback mode and
    cycle criteria; whether empty answers are allowed; `keys`, the input keys that stand for prompt,
    chosen and rejected ({"question": "prompt"}, see `input_keys`)."""

    format: str | None = None
    ultrafeedback_mode: str = "binarize"
    criteria: tuple[str, ...] = DEFAULT_CYCLE_CRITERIA
    allow_empty_responses: bool = False
    keys: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.format is not None and self.format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if self.ultrafeedback_mode not in ULTRAFEEDBACK_MODES:
            raise ValueError(
                f"ultrafeedback mode must be one of {', '.join(ULTRAFEEDBACK_MODES)}, got {self.ultrafeedback_mode!r}"
            )
        object.__setattr__(self, "criteria", parse_criteria(self.criteria))
        for key, canonical in self.keys.items():
            if canonical not in RENAMEABLE or list(self.keys.values()).count(canonical) > 1:
                raise ValueError(
                    f"input key {key!r} cannot stand for {canonical!r}: give one key each for {', '.join(RENAMEABLE)}"
                )

    def renamed(self, row: Any) -> Any:
        """`row` with its input keys (`keys`) renamed to the canonical ones; a canonical key the row holds
        itself is dropped, so a row without the input key has that field missing. Other values as they are."""
        if not self.keys or not isinstance(row, dict):
            return row
        targets = self.keys.values()
        return {self.keys.get(k, k): v for k, v in row.items() if k in self.keys or k not in targets}

    def input_field(self, problem: RowProblem) -> RowProblem:
        """`problem` with a renamed field named by its input key ("prompt[0].content" -> "question[0].content")."""
        for key, canonical in self.keys.items():
            if problem.field is not None and re.match(rf"{canonical}(?:$|[.\[])", problem.field):
                return RowProblem(key + problem.field[len(canonical) :], problem.problem)
        return problem


RENAMEABLE = ("prompt", "chosen", "rejected")


def input_keys(prompt: str | None = None, chosen: str | None = None, rejected: str | None = None) -> dict[str, str]:
    """The `ReadOptions.keys` of --prompt-key/--chosen-key/--rejected-key (recipe keys data.prompt_key, ...):
    input key -> canonical key, for the keys given. One input key for two fields is a ValueError."""
    given = [(key, canonical) for key, canonical in ((prompt, "prompt"), (chosen, "chosen"), (rejected, "rejected")) if key]
    keys = dict(given)
    if len(keys) < len(given):
        raise ValueError(f"one input key for two fields: {', '.join(f'{c}={k!r}' for k, c in given)}")
    return keys


def parse_row(
    row: Any, *, source: str = "<row>", line: int | None = None, allow_empty_responses: bool = False
) -> PreferenceRecord:
    """One decoded row of any supported format -> record; problems raise DataError(source, ..., line).
    An UltraFeedback row is binarised and must give a pair; use parse_rows for several records."""
    records = parse_rows(row, source=source, line=line, options=ReadOptions(allow_empty_responses=allow_empty_responses))
    if len(records) != 1:
        raise DataError(source, "UltraFeedback row gives no pair (fewer than two scored completions, or all tie)", line=line)
    return records[0]


def parse_rows(
    row: Any, *, source: str = "<row>", line: int | None = None, options: ReadOptions | None = None
) -> list[PreferenceRecord]:
    """One decoded row -> its records (one, except for UltraFeedback rows); problems raise DataError."""
    options = options or ReadOptions()
    try:
        return row_records(options.renamed(row), options)
    except RowProblem as p:
        raise options.input_field(p).error(source, line) from None


def row_format(row: Any, options: ReadOptions) -> str | None:
    """The format `row` is read with: forced by `options`, else detected; None when it is no object or
    has neither "chosen" nor "completions"."""
    if not isinstance(row, dict):
        return None
    if options.format is not None:
        return options.format
    return detect_format(row) if "chosen" in row or "completions" in row else None


def row_records(row: Any, options: ReadOptions) -> list[PreferenceRecord]:
    """One decoded row -> its records; a problem raises RowProblem (the file readers add where it is)."""
    if not isinstance(row, dict):
        raise RowProblem(None, f"expected a JSON object, got {json_type(row)}")
    fmt = row_format(row, options)
    if fmt is None:
        raise RowProblem("chosen", "missing")
    if fmt == "ultrafeedback":
        return ultrafeedback_records(
            row, allow_empty_responses=options.allow_empty_responses, mode=options.ultrafeedback_mode, criteria=options.criteria
        )
    return [_READERS[fmt](row, allow_empty_responses=options.allow_empty_responses)]
