"""The canonical preference record, and the readers that turn data files into records.

One `PreferenceRecord` is one comparison: a prompt (a list of messages) and two continuations,
`chosen` (preferred) and `rejected`. Every supported row format becomes this record; the format is
detected per row from its keys (`detect_format`):

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
                dialogue (TRL standard implicit prompt): prompt = the shared text up to the last
                "\\n\\nAssistant:" it contains, parsed into turns (Human -> user, Assistant -> assistant).
  gpm-custom    {"instruction", "chosen", "reject", "label"} of the official GPM code's cyclic data;
                "chosen"/"reject" are strings or {"response": str}. Its "label" is an index, not a
                probability: it is ignored. The instruction becomes one user message, rendered like
                every other record: through the model's chat template when its tokenizer has one.
                The authors' code renders this format as `instruction + ' ' + response + ' ' + eos`
                whatever the tokenizer; that is gpmctl's text too for a tokenizer without a chat
                template, and with a template the texts (and so the numbers) differ from theirs.
  ultrafeedback {"prompt" | "instruction": str, "completions": [{"response": str, "overall_score"?,
                "fine-grained_score"?, "annotations": {aspect: {"Rating": "1".."5" | "N/A", ...}}}]}
                (openbmb/UltraFeedback). One row gives zero, one or several records, chosen by
                `ultrafeedback_mode`:
                  binarize (default): chosen = the completion with the highest score, rejected = the
                    one with the lowest (first in file order on ties), margin = the score difference;
                    score = overall_score, else fine-grained_score, else the mean of the numeric aspect
                    ratings. The binarized UltraFeedback recipe draws a random lower completion; the
                    lowest is taken here so the output is deterministic. A row whose scored
                    completions all tie (or that has fewer than two) gives no record.
                  cyclic: the paper's construction (section 8 of the reference): for criteria
                    (c1, ..., cL) (default instruction_following > honesty > truthfulness, "Cyclic No.
                    4"), every ordered choice of L distinct completions X1..XL with X1 > X2 under c1,
                    X2 > X3 under c2, ..., XL > X1 under cL (strictly; "N/A" never wins or loses) is
                    a cycle. Each link is one record, margin = the rating difference, meta kind=cycle,
                    criterion=<the link's aspect>, cycle=<index of the cycle in the row>,
                    cycle_criteria="c1>c2>...". Rows without a cycle give no record.
                Aspect names: instruction_following (alias if), honesty, truthfulness, helpfulness.

Duplicate keys in a JSON object: the last one wins (Python's json, and most JSON readers, do this).

Optional keys of every format: "margin" (a finite number: preference strength), "id" (string or
integer, kept as a string), "subset" (string). Other scalar keys (string, number, boolean) are kept in
`meta` for evaluation breakdowns; null values and nested values are dropped.

Soft-label rule: "label" is read as P(chosen > rejected) in every format except gpm-custom. It must be
a number (not a boolean) in [0, 1]; anything else is an error. Absent or null means 1 (`label=None`).

Roles: in the explicit format each answer (chosen, rejected) must start with an assistant message.

Empty texts: an empty or whitespace-only text is an error, prompt or answer: a pair with an empty
answer is far more often a broken export than a judgement. Data that prefers an empty reply on purpose
(4 of the 2,312 HH-RLHF harmless-base test rows do) is read with `allow_empty_responses=True`
(`--allow-empty-responses`, recipe key `data.allow_empty_responses`); prompts are never empty.

Empty files: a file (or stdin) with no rows at all, only blank lines, or an empty JSON list raises
DataError naming it once the reader reaches its end: it cannot train or score anything.

Line numbers in errors are 1-based physical lines for .jsonl/.jsonl.gz/stdin (blank lines count). For
.json and .parquet there are no meaningful lines: the number is the 1-based row, and the message says
"(row N)". A .json file that does not parse is reported at the real line json gives.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import re
import sys
import zlib
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from gpmctl.errors import DataError
from gpmctl.utils import atomic_path

Message = dict[str, str]  # {"role": "user" | "assistant" | "system", "content": str}

ROLES = ("user", "assistant", "system")
FORMATS = ("explicit", "messages", "hh-rlhf", "gpm-custom", "ultrafeedback")
ULTRAFEEDBACK_MODES = ("binarize", "cyclic")
ASPECTS = ("instruction_following", "honesty", "truthfulness", "helpfulness")
ASPECT_ALIASES = {"if": "instruction_following", "instruction-following": "instruction_following"}
DEFAULT_CYCLE_CRITERIA = ("instruction_following", "honesty", "truthfulness")
SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".parquet", ".csv")
MAX_LINE_BYTES = 16 * 2**20

# Keys the readers interpret; never written or read as `meta`.
RESERVED_KEYS = frozenset(
    {"prompt", "chosen", "rejected", "margin", "label", "id", "subset", "instruction", "reject", "completions"}
)

_BOM = b"\xef\xbb\xbf"
_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")
_HH_ANSWER = "\n\nAssistant:"
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


@dataclass
class PreferenceRecord:
    """One comparison: `chosen` is preferred to `rejected` as an answer to `prompt`."""

    prompt: list[Message]  # the conversation before the compared answers (>= 1 message)
    chosen: list[Message]  # the preferred continuation (normally one assistant message)
    rejected: list[Message]  # the other continuation
    margin: float | None = None  # preference strength (the official GPM code's "margin")
    label: float | None = None  # P(chosen > rejected) in [0, 1]; None means 1
    id: str | None = None
    subset: str | None = None
    meta: dict = field(default_factory=dict)  # other scalar keys of the row, e.g. "kind", "cycle"

    @property
    def prompt_text(self) -> str:
        """The content of the last prompt message (normally the question being answered)."""
        return self.prompt[-1]["content"]

    @property
    def chosen_text(self) -> str:
        """The chosen continuation's contents, joined by blank lines (one message: its content)."""
        return "\n\n".join(m["content"] for m in self.chosen)

    @property
    def rejected_text(self) -> str:
        """The rejected continuation's contents, joined by blank lines (one message: its content)."""
        return "\n\n".join(m["content"] for m in self.rejected)

    def chosen_dialogue(self) -> list[Message]:
        """prompt + chosen: the whole conversation to put through a chat template."""
        return [*self.prompt, *self.chosen]

    def rejected_dialogue(self) -> list[Message]:
        """prompt + rejected: the whole conversation to put through a chat template."""
        return [*self.prompt, *self.rejected]

    def to_json(self) -> dict:
        """The canonical jsonl row (explicit format): single user prompt / single assistant answers
        as strings, anything longer as message lists; optional fields only when set; then `meta`."""
        row: dict[str, Any] = {
            "prompt": _compact(self.prompt, "user"),
            "chosen": _compact(self.chosen, "assistant"),
            "rejected": _compact(self.rejected, "assistant"),
        }
        for key in ("margin", "label", "id", "subset"):
            value = getattr(self, key)
            if value is not None:
                row[key] = value
        row.update((k, v) for k, v in self.meta.items() if k not in RESERVED_KEYS)
        return row

    @classmethod
    def from_json(cls, row: Any, *, allow_empty_responses: bool = False) -> PreferenceRecord:
        """A row of any supported format -> record; a problem raises DataError naming the field."""
        return parse_row(row, allow_empty_responses=allow_empty_responses)


def _compact(messages: list[Message], role: str) -> str | list[Message]:
    if len(messages) == 1 and messages[0]["role"] == role:
        return messages[0]["content"]
    return [{"role": m["role"], "content": m["content"]} for m in messages]


# ---------------------------------------------------------------------------------------------
# One row -> one record
# ---------------------------------------------------------------------------------------------


class _RowProblem(Exception):
    """A problem inside one row; the reader adds the file and line."""

    def __init__(self, field: str | None, problem: str):
        super().__init__(problem)
        self.field, self.problem = field, problem


def _json_type(value: Any) -> str:
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


def _require(row: dict, key: str) -> Any:
    if key not in row or row[key] is None:
        raise _RowProblem(key, "missing" if key not in row else "is null")
    return row[key]


EMPTY_ANSWER_HINT = " (--allow-empty-responses, or data.allow_empty_responses: true in a recipe, keeps empty answers)"


def _text(value: Any, name: str, *, allow_empty: bool = False, answer: bool = False) -> str:
    """A string field; empty or whitespace-only is an error unless `allow_empty` (`answer`: say how to allow it)."""
    if not isinstance(value, str):
        raise _RowProblem(name, f"expected a string, got {_json_type(value)}")
    if not allow_empty and not value.strip():
        raise _RowProblem(name, ("empty text" if not value else "whitespace-only text") + (EMPTY_ANSWER_HINT if answer else ""))
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate from a "\ud800"-style JSON escape
        raise _RowProblem(name, f"unpaired surrogate escape at character {e.start}") from None
    return value


def _messages(value: Any, name: str, *, continuation: bool, allow_empty_responses: bool) -> list[Message]:
    """A list of {role, content} -> fresh Message dicts (extra keys dropped)."""
    if not isinstance(value, list):
        raise _RowProblem(name, f"expected a list of messages, got {_json_type(value)}")
    if not value:
        raise _RowProblem(name, "empty list of messages")
    out = []
    for i, msg in enumerate(value):
        where = f"{name}[{i}]"
        if not isinstance(msg, dict):
            raise _RowProblem(where, f"expected a message object {{role, content}}, got {_json_type(msg)}")
        for key in ("role", "content"):
            if key not in msg:
                raise _RowProblem(f"{where}.{key}", "missing")
        role = msg["role"]
        if role not in ROLES:
            raise _RowProblem(f"{where}.role", f"{role!r} is not one of {', '.join(ROLES)}")
        answer = continuation and role == "assistant"
        content = _text(msg["content"], f"{where}.content", allow_empty=answer and allow_empty_responses, answer=answer)
        out.append({"role": role, "content": content})
    return out


def _side(value: Any, name: str, role: str, *, continuation: bool, allow_empty_responses: bool) -> list[Message]:
    """A string (one message of `role`) or a list of messages."""
    if isinstance(value, str):
        content = _text(value, name, allow_empty=continuation and allow_empty_responses, answer=continuation)
        return [{"role": role, "content": content}]
    if isinstance(value, list):
        return _messages(value, name, continuation=continuation, allow_empty_responses=allow_empty_responses)
    raise _RowProblem(name, f"expected a string or a list of messages, got {_json_type(value)}")


def _number(row: dict, key: str) -> float | None:
    value = row.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _RowProblem(key, f"expected a number, got {_json_type(value)} {_short(value)}")
    if not math.isfinite(value):
        raise _RowProblem(key, f"expected a finite number, got {value}")
    return float(value)


def _short(value: Any, width: int = 40) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _optional_fields(row: dict, *, soft_label: bool) -> dict[str, Any]:
    """margin, label, id, subset and meta of any row."""
    label = None
    if soft_label:
        label = _number(row, "label")
        if label is not None and not 0.0 <= label <= 1.0:
            raise _RowProblem("label", f"expected a probability in [0, 1] that chosen beats rejected, got {label:g}")
    row_id = row.get("id")
    if row_id is not None:
        if isinstance(row_id, bool) or not isinstance(row_id, (str, int)):
            raise _RowProblem("id", f"expected a string or an integer, got {_json_type(row_id)}")
        row_id = str(row_id)
    subset = row.get("subset")
    if subset is not None and not isinstance(subset, str):
        raise _RowProblem("subset", f"expected a string, got {_json_type(subset)}")
    meta = {
        k: v
        for k, v in row.items()
        if k not in RESERVED_KEYS
        and isinstance(k, str)
        and isinstance(v, (str, int, float, bool))
        and not (isinstance(v, float) and not math.isfinite(v))
    }
    return {"margin": _number(row, "margin"), "label": label, "id": row_id, "subset": subset, "meta": meta}


def _check_different(chosen: list[Message], rejected: list[Message], name: str = "rejected") -> None:
    if chosen == rejected:
        raise _RowProblem(name, "identical to chosen; a pair needs two different answers")


def detect_format(row: dict) -> str:
    """Which of FORMATS a row is, from its keys (and, for implicit rows, the type of "chosen")."""
    if "completions" in row and "chosen" not in row:
        return "ultrafeedback"
    if "rejected" not in row and ("reject" in row or "instruction" in row):
        return "gpm-custom"
    if "prompt" in row:
        return "explicit"
    if isinstance(row.get("chosen"), str):
        return "hh-rlhf"
    return "messages"


def explicit_prompt_record(row: dict, *, allow_empty_responses: bool = False) -> PreferenceRecord:
    """{"prompt", "chosen", "rejected"}, each a string or a list of messages."""
    prompt = _side(_require(row, "prompt"), "prompt", "user", continuation=False, allow_empty_responses=False)
    sides = []
    for key in ("chosen", "rejected"):
        value = _require(row, key)
        sides.append(_side(value, key, "assistant", continuation=True, allow_empty_responses=allow_empty_responses))
    chosen, rejected = sides
    n = len(prompt)
    if chosen[:n] == prompt and rejected[:n] == prompt and len(chosen) > n and len(rejected) > n:
        chosen, rejected = chosen[n:], rejected[n:]  # answers that repeat the prompt (UltraFeedback-binarized)
    for key, side in (("chosen", chosen), ("rejected", rejected)):
        if side[0]["role"] != "assistant":  # the answer to the prompt must be the assistant's turn
            raise _RowProblem(f"{key}[0].role", f"an answer must start with an assistant message, got {side[0]['role']!r}")
    _check_different(chosen, rejected)
    return PreferenceRecord(prompt, chosen, rejected, **_optional_fields(row, soft_label=True))


def implicit_messages_record(row: dict, *, allow_empty_responses: bool = False) -> PreferenceRecord:
    """{"chosen": [msgs], "rejected": [msgs]}, each the whole dialogue; prompt = common prefix."""
    sides = []
    for key in ("chosen", "rejected"):
        value = _require(row, key)
        if not isinstance(value, list):
            raise _RowProblem(key, f"expected a list of messages (no prompt field), got {_json_type(value)}")
        # Validated as continuations so an empty final answer passes; the prompt is checked below.
        sides.append(_messages(value, key, continuation=True, allow_empty_responses=allow_empty_responses))
    chosen, rejected = sides
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    if n == 0:
        raise _RowProblem("rejected", "shares no first message with chosen, so no prompt can be found")
    if n == len(chosen) == len(rejected):
        raise _RowProblem("rejected", "identical to chosen; a pair needs two different answers")
    for key, side in (("chosen", chosen), ("rejected", rejected)):
        if n == len(side):
            raise _RowProblem(key, f"holds only the {n} opening message(s) it shares with the other side, no answer")
    for i, msg in enumerate(chosen[:n]):
        _text(msg["content"], f"chosen[{i}].content")  # a prompt message may never be empty
    return PreferenceRecord(chosen[:n], chosen[n:], rejected[n:], **_optional_fields(row, soft_label=True))


def _hh_turns(text: str, name: str, first_index: int, *, allow_empty_answer: bool) -> list[Message]:
    """'\\n\\nHuman: a\\n\\nAssistant: b' -> messages; contents stripped of surrounding whitespace."""
    parts = _HH_TURN.split(text)
    if parts[0].strip():
        raise _RowProblem(name, f"text before the first 'Human:'/'Assistant:' turn: {_short(parts[0])}")
    out = []
    for i in range(1, len(parts), 2):
        speaker, content = parts[i], parts[i + 1].strip()
        turn = first_index + i // 2 + 1
        if not content and not (allow_empty_answer and speaker == "Assistant"):
            hint = EMPTY_ANSWER_HINT if speaker == "Assistant" and first_index > 0 else ""  # an answer, not the prompt
            raise _RowProblem(name, f"turn {turn} ({speaker}) is empty{hint}")
        _text(content, name, allow_empty=True)
        out.append({"role": _HH_ROLES[speaker], "content": content})
    return out


def hh_dialogue_record(row: dict, *, allow_empty_responses: bool = False) -> PreferenceRecord:
    """{"chosen": str, "rejected": str}, whole HH-RLHF dialogues; prompt = text up to the last shared
    '\\n\\nAssistant:'. Plain strings that are not such dialogues have no prompt: an error."""
    chosen_text, rejected_text = (_require(row, key) for key in ("chosen", "rejected"))
    for key, value in (("chosen", chosen_text), ("rejected", rejected_text)):
        if not isinstance(value, str):
            other = "rejected" if key == "chosen" else "chosen"
            raise _RowProblem(key, f"expected a string like {other}, got {_json_type(value)}")
    for value in (chosen_text, rejected_text):
        if not (value.lstrip().startswith(("Human:", "Assistant:")) and _HH_ANSWER in value):
            raise _RowProblem(
                "prompt",
                "missing, and chosen/rejected are plain strings, not HH-RLHF dialogues "
                "('\\n\\nHuman: ...\\n\\nAssistant: ...'), so no prompt can be found",
            )
    if chosen_text == rejected_text:
        raise _RowProblem("rejected", "identical to chosen; a pair needs two different answers")
    shared = os.path.commonprefix([chosen_text, rejected_text])
    cut = shared.rfind(_HH_ANSWER)
    if cut < 0:
        raise _RowProblem("rejected", "shares no '\\n\\nAssistant:' turn with chosen, so no prompt can be found")
    prompt = _hh_turns(chosen_text[:cut], "chosen", 0, allow_empty_answer=False)
    if not prompt:
        raise _RowProblem("chosen", "no 'Human:' turn before the first 'Assistant:' answer")
    answers = []
    for key, value in (("chosen", chosen_text), ("rejected", rejected_text)):
        answers.append(_hh_turns(value[cut:], key, len(prompt), allow_empty_answer=allow_empty_responses))
    _check_different(*answers)
    return PreferenceRecord(prompt, answers[0], answers[1], **_optional_fields(row, soft_label=True))


def gpm_custom_record(row: dict, *, allow_empty_responses: bool = False) -> PreferenceRecord:
    """{"instruction": str, "chosen": str | {"response": str}, "reject": str | {"response": str}};
    "label" is ignored (an index in the official cyclic data, not a probability)."""
    prompt = [{"role": "user", "content": _text(_require(row, "instruction"), "instruction")}]
    sides = []
    for key in ("chosen", "reject"):
        value, name = _require(row, key), key
        if isinstance(value, dict):
            name = f"{key}.response"
            if value.get("response") is None:
                raise _RowProblem(name, "missing" if "response" not in value else "is null")
            value = value["response"]
        elif not isinstance(value, str):
            raise _RowProblem(key, f"expected a string or {{\"response\": str}}, got {_json_type(value)}")
        sides.append([{"role": "assistant", "content": _text(value, name, allow_empty=allow_empty_responses, answer=True)}])
    _check_different(*sides, name="reject")
    return PreferenceRecord(prompt, sides[0], sides[1], **_optional_fields(row, soft_label=False))


def parse_criteria(criteria: str | Iterable[str]) -> tuple[str, ...]:
    """"honesty>truthfulness>helpfulness" (or a sequence of names) -> aspect names; ValueError if bad."""
    names = criteria.split(">") if isinstance(criteria, str) else list(criteria)
    out = tuple(ASPECT_ALIASES.get(n.strip().lower(), n.strip().lower()) for n in names)
    unknown = [n for n in out if n not in ASPECTS]
    if unknown:
        raise ValueError(f"unknown aspect {unknown[0]!r}; known: {', '.join(ASPECTS)} (or if)")
    if len(out) < 3:
        raise ValueError(f"a cycle needs at least 3 criteria, got {len(out)}: {'>'.join(out)}")
    return out


def _rating(value: Any, name: str) -> float | None:
    """An UltraFeedback rating: "4" / 4 -> 4.0; "N/A", "", null -> None; anything else an error."""
    if value is None or (isinstance(value, str) and value.strip().upper() in ("", "N/A", "NA")):
        return None
    if isinstance(value, bool):
        raise _RowProblem(name, f"expected a rating like \"4\" or \"N/A\", got {_json_type(value)}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _RowProblem(name, f"expected a rating like \"4\" or \"N/A\", got {_short(value)}") from None
    if not math.isfinite(number):
        raise _RowProblem(name, f"expected a finite rating, got {_short(value)}")
    return number


@dataclass
class _Completion:
    index: int
    text: str
    ratings: dict[str, float | None]  # aspect -> rating (None: N/A or absent)
    score: float | None  # overall_score, else fine-grained_score, else mean of ratings


def _completions(row: dict, allow_empty_responses: bool) -> list[_Completion]:
    completions = _require(row, "completions")
    if not isinstance(completions, list):
        raise _RowProblem("completions", f"expected a list of completions, got {_json_type(completions)}")
    out = []
    for i, c in enumerate(completions):
        where = f"completions[{i}]"
        if not isinstance(c, dict):
            raise _RowProblem(where, f"expected a completion object, got {_json_type(c)}")
        text = _text(_require_at(c, "response", where), f"{where}.response", allow_empty=allow_empty_responses, answer=True)
        annotations = c.get("annotations") or {}
        if not isinstance(annotations, dict):
            raise _RowProblem(f"{where}.annotations", f"expected an object of aspects, got {_json_type(annotations)}")
        ratings: dict[str, float | None] = {}
        for aspect in ASPECTS:
            note = annotations.get(aspect)
            if isinstance(note, list):  # some UltraFeedback dumps wrap each aspect in a one-item list
                note = note[0] if note else None
            if note is None:
                ratings[aspect] = None
            elif isinstance(note, dict):
                ratings[aspect] = _rating(note.get("Rating"), f"{where}.annotations.{aspect}.Rating")
            else:
                raise _RowProblem(f"{where}.annotations.{aspect}", f"expected an object with \"Rating\", got {_json_type(note)}")
        score = None
        for key in ("overall_score", "fine-grained_score"):
            value = c.get(key)
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise _RowProblem(f"{where}.{key}", f"expected a finite number, got {_short(value)}")
                score = float(value)
                break
        if score is None:
            known = [r for r in ratings.values() if r is not None]
            score = sum(known) / len(known) if known else None
        out.append(_Completion(i, text, ratings, score))
    return out


def _require_at(obj: dict, key: str, where: str) -> Any:
    if obj.get(key) is None:
        raise _RowProblem(f"{where}.{key}", "missing" if key not in obj else "is null")
    return obj[key]


def ultrafeedback_records(
    row: dict,
    *,
    allow_empty_responses: bool = False,
    mode: str = "binarize",
    criteria: tuple[str, ...] = DEFAULT_CYCLE_CRITERIA,
) -> list[PreferenceRecord]:
    """One UltraFeedback row -> its records (see the module docstring for the two modes)."""
    if mode not in ULTRAFEEDBACK_MODES:
        raise ValueError(f"ultrafeedback mode must be one of {', '.join(ULTRAFEEDBACK_MODES)}, got {mode!r}")
    key = "prompt" if "prompt" in row else "instruction"
    if key not in row:
        raise _RowProblem(key, 'missing (an UltraFeedback row holds its question in "instruction" or "prompt")')
    prompt = [{"role": "user", "content": _text(_require(row, key), key)}]
    completions = _completions(row, allow_empty_responses)
    optional = _optional_fields(row, soft_label=False)
    optional["margin"] = None

    def record(a: _Completion, b: _Completion, margin: float, **meta: Any) -> PreferenceRecord:
        fields = {**optional, "margin": margin, "meta": {**optional["meta"], **meta}}
        return PreferenceRecord(prompt, [{"role": "assistant", "content": a.text}], [{"role": "assistant", "content": b.text}], **fields)

    if mode == "binarize":
        scored = [c for c in completions if c.score is not None]
        if len(scored) < 2:
            return []
        best = max(scored, key=lambda c: c.score)  # max/min keep the first of equals
        worst = min((c for c in scored if c.text != best.text), key=lambda c: c.score, default=None)
        if worst is None or worst.score >= best.score:
            return []
        return [record(best, worst, best.score - worst.score)]

    from itertools import permutations

    out: list[PreferenceRecord] = []
    names = ">".join(criteria)
    cycle = 0
    for chain in permutations(completions, len(criteria)):
        if chain[0].index != min(c.index for c in chain) and len(set(criteria)) == 1:
            continue  # one criterion all round: rotations are the same cycle
        links = []
        for k, aspect in enumerate(criteria):
            a, b = chain[k], chain[(k + 1) % len(chain)]
            ra, rb = a.ratings[aspect], b.ratings[aspect]
            if ra is None or rb is None or ra <= rb or a.text == b.text:
                break
            links.append((a, b, ra - rb, aspect))
        else:
            for a, b, margin, aspect in links:
                out.append(record(a, b, margin, kind="cycle", criterion=aspect, cycle=cycle, cycle_criteria=names))
            cycle += 1
    return out


_READERS = {
    "explicit": explicit_prompt_record,
    "messages": implicit_messages_record,
    "hh-rlhf": hh_dialogue_record,
    "gpm-custom": gpm_custom_record,
}


@dataclass(frozen=True)
class ReadOptions:
    """How rows are read: `format` forces one reader (None: detect per row); UltraFeedback mode and
    cycle criteria; whether empty answers are allowed."""

    format: str | None = None
    ultrafeedback_mode: str = "binarize"
    criteria: tuple[str, ...] = DEFAULT_CYCLE_CRITERIA
    allow_empty_responses: bool = False

    def __post_init__(self) -> None:
        if self.format is not None and self.format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if self.ultrafeedback_mode not in ULTRAFEEDBACK_MODES:
            raise ValueError(f"ultrafeedback mode must be one of {', '.join(ULTRAFEEDBACK_MODES)}, got {self.ultrafeedback_mode!r}")
        object.__setattr__(self, "criteria", parse_criteria(self.criteria))


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
    try:
        return _parse(row, options or ReadOptions())
    except _RowProblem as p:
        raise DataError(source, p.problem, line=line, field=p.field) from None


def _row_format(row: Any, options: ReadOptions) -> str | None:
    if not isinstance(row, dict):
        return None
    if options.format is not None:
        return options.format
    return detect_format(row) if "chosen" in row or "completions" in row else None


def _parse(row: Any, options: ReadOptions) -> list[PreferenceRecord]:
    if not isinstance(row, dict):
        raise _RowProblem(None, f"expected a JSON object, got {_json_type(row)}")
    fmt = _row_format(row, options)
    if fmt is None:
        raise _RowProblem("chosen", "missing")
    if fmt == "ultrafeedback":
        return ultrafeedback_records(row, allow_empty_responses=options.allow_empty_responses,
                                     mode=options.ultrafeedback_mode, criteria=options.criteria)  # fmt: skip
    return [_READERS[fmt](row, allow_empty_responses=options.allow_empty_responses)]


# ---------------------------------------------------------------------------------------------
# Files -> records
# ---------------------------------------------------------------------------------------------


def _suffix(path: Path) -> str | None:
    name = path.name.lower()
    return next((s for s in sorted(SUFFIXES, key=len, reverse=True) if name.endswith(s)), None)


def _checked_path(path: str | Path) -> tuple[str, Path | None, str]:
    """-> (name shown in errors, path or None for stdin, suffix). File-level problems raise here."""
    if str(path) == "-":
        return "<stdin>", None, ".jsonl"
    p = Path(path)
    suffix = _suffix(p)
    if suffix is None:
        raise DataError(str(path), f"unknown file type; expected one of {', '.join(SUFFIXES)} (or - for stdin jsonl)")
    if not p.exists():
        raise DataError(str(path), "no such file")
    if p.is_dir():
        raise DataError(str(path), "is a directory, not a data file")
    return str(path), p, suffix


def read_records(
    path: str | Path,
    *,
    limit: int | None = None,
    max_line_bytes: int = MAX_LINE_BYTES,
    allow_empty_responses: bool = False,
    options: ReadOptions | None = None,
) -> Iterator[PreferenceRecord]:
    """Records of a .jsonl, .jsonl.gz, .json or .parquet file, or of stdin jsonl for "-".

    jsonl is streamed line by line, parquet by record batches; .json is loaded whole (a list of rows
    or {"data": [rows]}). Stops after `limit` rows (an UltraFeedback row may give several records).
    The first problem raises DataError; a missing file or unknown suffix raises at once, before
    iteration. `options` forces a format or picks the UltraFeedback mode (see ReadOptions).
    """
    items = iter_records_with_errors(
        path, limit=limit, max_line_bytes=max_line_bytes, allow_empty_responses=allow_empty_responses, options=options
    )
    return _raise_first(items)


def _raise_first(items: Iterator[PreferenceRecord | DataError]) -> Iterator[PreferenceRecord]:
    for item in items:
        if isinstance(item, DataError):
            raise item
        yield item


def _options(options: ReadOptions | None, allow_empty_responses: bool) -> ReadOptions:
    if options is None:
        return ReadOptions(allow_empty_responses=allow_empty_responses)
    return options


def _file_rows(path: str | Path, max_line_bytes: int) -> tuple[str, Generator[tuple[int, Any, str], None, None]]:
    name, p, suffix = _checked_path(path)
    if suffix in (".jsonl", ".jsonl.gz"):
        return name, _jsonl_rows(name, p, suffix, max_line_bytes)
    if suffix == ".json":
        return name, _json_rows(name, p)
    if suffix == ".csv":
        return name, _csv_rows(name, p)
    return name, _parquet_rows(name, p)


def iter_records_with_errors(
    path: str | Path,
    *,
    limit: int | None = None,
    max_line_bytes: int = MAX_LINE_BYTES,
    allow_empty_responses: bool = False,
    options: ReadOptions | None = None,
) -> Iterator[PreferenceRecord | DataError]:
    """Like read_records, but each bad row is yielded as a DataError and reading goes on with the
    next row. A problem that ends the file (corrupt gzip, a .json that does not parse) is yielded
    last. `limit` counts rows, good and bad. A missing file or unknown suffix raises at once."""
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    name, rows = _file_rows(path, max_line_bytes)
    return (item for _, item in _records(rows, name, limit, _options(options, allow_empty_responses)))


def iter_row_records(
    rows: Iterable[Any], source: str, *, limit: int | None = None, options: ReadOptions | None = None
) -> Iterator[PreferenceRecord | DataError]:
    """Records (and DataErrors) of already decoded rows, e.g. a `datasets.Dataset`; errors say
    "SOURCE:N" with N the 1-based row number."""

    def numbered() -> Generator[tuple[int, Any, str], None, None]:
        for i, row in enumerate(rows, start=1):
            yield i, row, f" (row {i})"

    return (item for _, item in _records(numbered(), source, limit, options or ReadOptions()))


def _records(
    rows: Generator[tuple[int, Any, str], None, None], name: str, limit: int | None, options: ReadOptions
) -> Iterator[tuple[str | None, PreferenceRecord | DataError]]:
    """(number, row or DataError, suffix for messages) -> (format, record or error), `limit` rows. A source
    with no rows at all raises DataError at its end (after any file-level error it yielded)."""
    if limit == 0:
        return
    count = 0
    try:
        for number, row, note in rows:
            if isinstance(row, DataError):
                yield None, row
            else:
                fmt = _row_format(row, options)
                try:
                    records = _parse(row, options)
                except _RowProblem as p:
                    yield fmt, DataError(name, p.problem + note, line=number, field=p.field)
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


def iter_rows_with_errors(
    path: str | Path,
    *,
    rename: dict[str, str] | None = None,
    max_line_bytes: int = MAX_LINE_BYTES,
    allow_empty_responses: bool = False,
    options: ReadOptions | None = None,
) -> Iterator[tuple[str | None, PreferenceRecord | DataError]]:
    """Like iter_records_with_errors, with each row's format (None when the row could not be decoded
    or is not an object) and its keys renamed before parsing: `rename` maps a key of the file to the
    canonical key it stands for, e.g. {"question": "prompt"}; a key already holding the canonical
    name is replaced. An UltraFeedback row gives one item per record."""
    name, rows = _file_rows(path, max_line_bytes)

    def renamed() -> Generator[tuple[int, Any, str], None, None]:
        try:
            for number, row, note in rows:
                if rename and isinstance(row, dict):
                    row = {rename.get(k, k): v for k, v in row.items() if k not in rename.values() or k in rename}
                yield number, row, note
        finally:
            rows.close()

    return _records(renamed(), name, None, _options(options, allow_empty_responses))


def iter_file_rows(path: str | Path, max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[tuple[int, Any]]:
    """(line or row number, decoded row) of a .jsonl, .jsonl.gz, .json, .parquet or .csv file, no record
    format applied (score files, benchmark tables, prompt lists); the first unreadable line raises."""
    _, rows = _file_rows(path, max_line_bytes)
    try:
        for number, row, _ in rows:
            if isinstance(row, DataError):
                raise row
            yield number, row
    finally:
        rows.close()


def _open_binary(p: Path | None, suffix: str) -> BinaryIO:
    if p is None:
        return stdin_bytes()
    try:
        return gzip.open(p, "rb") if suffix == ".jsonl.gz" else open(p, "rb")
    except OSError as e:
        raise DataError(str(p), f"cannot open: {e.strerror or e}") from None


def _jsonl_rows(name: str, p: Path | None, suffix: str, max_line_bytes: int) -> Generator[tuple[int, Any, str], None, None]:
    """(line number, decoded row or DataError, "") for each non-blank line; never reads a whole file
    and never holds more than max_line_bytes + 2 bytes of one line (the limit excludes the line end)."""
    stream = _open_binary(p, suffix)
    where = "decompressed file" if suffix == ".jsonl.gz" else "file" if p is not None else "input"
    number, offset = 0, 0
    try:
        while True:
            try:
                raw = stream.readline(max_line_bytes + 2)  # room for content + "\r\n"
            except (OSError, EOFError, zlib.error) as e:
                problem = f"cannot read on from here ({e}); the file is corrupt or cut short"
                yield number + 1, DataError(name, problem, line=number + 1), ""
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
                yield number, DataError(name, problem, line=number), ""
                continue
            if number == 1 and raw.startswith(_BOM):
                raw, start = raw[len(_BOM):], start + len(_BOM)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                problem = (
                    f"not valid UTF-8: byte 0x{raw[e.start]:02x} at byte {e.start} of the line "
                    f"(byte {start + e.start} of the {where})"
                )
                yield number, DataError(name, problem, line=number), ""
                continue
            if not text.strip():
                continue
            yield number, _decode_json(text.rstrip("\r\n"), name, number), ""
    finally:
        if p is not None:
            stream.close()


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


def _json_rows(name: str, p: Path) -> Generator[tuple[int, Any, str], None, None]:
    """(row number, row, " (row N)") for each item of a JSON list or {"data": [...]}."""
    try:
        data = p.read_bytes()
    except OSError as e:
        raise DataError(name, f"cannot read: {e.strerror or e}") from None
    data = data[len(_BOM):] if data.startswith(_BOM) else data
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
        problem = f'expected a JSON list of rows or an object {{"data": [rows]}}, got {_json_type(document)}'
        yield 0, DataError(name, problem), ""
        return
    for i, row in enumerate(document, start=1):
        yield i, row, f" (row {i})"


def _csv_rows(name: str, p: Path) -> Generator[tuple[int, Any, str], None, None]:
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


def _parquet_rows(name: str, p: Path) -> Generator[tuple[int, Any, str], None, None]:
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
# Records -> file
# ---------------------------------------------------------------------------------------------


def write_jsonl(records: Iterable[PreferenceRecord], path: str | Path) -> int:
    """Write canonical rows (`PreferenceRecord.to_json`) as jsonl, gzipped for .jsonl.gz; "-" is
    stdout. A file is written to a temporary sibling and renamed into place, so the target is
    either the old file or the complete new one. Returns the number of rows written."""
    if str(path) == "-":
        count = 0
        for record in records:
            sys.stdout.write(_json_line(record))
            count += 1
        sys.stdout.flush()
        return count
    target = Path(path)
    suffix = _suffix(target)
    if suffix not in (".jsonl", ".jsonl.gz"):
        raise DataError(str(path), "write_jsonl writes .jsonl or .jsonl.gz files (or - for stdout)")
    count = 0
    with atomic_path(target) as tmp, open(tmp, "wb") as raw:
        out = gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) if suffix == ".jsonl.gz" else raw
        for record in records:
            out.write(_json_line(record).encode("utf-8"))
            count += 1
        if out is not raw:
            out.close()
        raw.flush()
        os.fsync(raw.fileno())
    return count


def _json_line(record: PreferenceRecord) -> str:
    return json.dumps(record.to_json(), ensure_ascii=False, allow_nan=False) + "\n"


__all__ = [
    "ASPECTS",
    "FORMATS",
    "ReadOptions",
    "iter_row_records",
    "parse_criteria",
    "parse_rows",
    "ultrafeedback_records",
    "MAX_LINE_BYTES",
    "Message",
    "PreferenceRecord",
    "ROLES",
    "detect_format",
    "explicit_prompt_record",
    "gpm_custom_record",
    "hh_dialogue_record",
    "implicit_messages_record",
    "iter_file_rows",
    "iter_records_with_errors",
    "iter_rows_with_errors",
    "parse_row",
    "read_records",
    "write_jsonl",
]
