"""UltraFeedback rows (openbmb/UltraFeedback): several rated completions of one instruction, turned into pairs.

A row is {"prompt" | "instruction": str, "completions": [{"response": str, "overall_score"?,
"fine-grained_score"?, "annotations": {aspect: {"Rating": "1".."5" | "N/A", ...}}}]}. One row gives
zero, one or several records, chosen by the mode (`ReadOptions.ultrafeedback_mode`):

  binarize (default): chosen = the completion with the highest score, rejected = the one with the
    lowest (first in file order on ties), margin = the score difference; score = overall_score, else
    fine-grained_score, else the mean of the numeric aspect ratings. The binarized UltraFeedback
    recipe draws a random lower completion; the lowest is taken here so the output is deterministic.
    A row whose scored completions all tie (or that has fewer than two) gives no record.
  cyclic: the paper's construction (section 8 of the reference): for criteria (c1, ..., cL) (default
    instruction_following > honesty > truthfulness, "Cyclic No. 4"), every ordered choice of L
    distinct completions X1..XL with X1 > X2 under c1, X2 > X3 under c2, ..., XL > X1 under cL
    (strictly; "N/A" never wins or loses) is a cycle. Each link is one record, margin = the rating
    difference, meta kind=cycle, criterion=<the link's aspect>, cycle=<index of the cycle in the row>,
    cycle_criteria="c1>c2>...". Rows without a cycle give no record.

Aspect names: instruction_following (alias if), honesty, truthfulness, helpfulness. The row's "label"
is not read (no soft label); its "margin" is replaced by the score or rating difference.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import permutations
from typing import Any

from gpmctl.data.fields import RowProblem, checked_text, json_type, optional_fields, require, short
from gpmctl.data.records import PreferenceRecord

ULTRAFEEDBACK_MODES = ("binarize", "cyclic")
ASPECTS = ("instruction_following", "honesty", "truthfulness", "helpfulness")
ASPECT_ALIASES = {"if": "instruction_following", "instruction-following": "instruction_following"}
DEFAULT_CYCLE_CRITERIA = ("instruction_following", "honesty", "truthfulness")


def parse_criteria(criteria: str | Iterable[str]) -> tuple[str, ...]:
    """ "honesty>truthfulness>helpfulness" (or a sequence of names) -> aspect names; ValueError if bad."""
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
        raise RowProblem(name, f'expected a rating like "4" or "N/A", got {json_type(value)}')
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RowProblem(name, f'expected a rating like "4" or "N/A", got {short(value)}') from None
    if not math.isfinite(number):
        raise RowProblem(name, f"expected a finite rating, got {short(value)}")
    return number


@dataclass
class _Completion:
    index: int
    text: str
    ratings: dict[str, float | None]  # aspect -> rating (None: N/A or absent)
    score: float | None  # overall_score, else fine-grained_score, else mean of ratings


def _completions(row: dict, allow_empty_responses: bool) -> list[_Completion]:
    completions = require(row, "completions")
    if not isinstance(completions, list):
        raise RowProblem("completions", f"expected a list of completions, got {json_type(completions)}")
    out = []
    for i, c in enumerate(completions):
        where = f"completions[{i}]"
        if not isinstance(c, dict):
            raise RowProblem(where, f"expected a completion object, got {json_type(c)}")
        response = _require_at(c, "response", where)
        text = checked_text(response, f"{where}.response", allow_empty=allow_empty_responses, answer=True)
        annotations = c.get("annotations") or {}
        if not isinstance(annotations, dict):
            raise RowProblem(f"{where}.annotations", f"expected an object of aspects, got {json_type(annotations)}")
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
                raise RowProblem(f"{where}.annotations.{aspect}", f'expected an object with "Rating", got {json_type(note)}')
        score = None
        for key in ("overall_score", "fine-grained_score"):
            value = c.get(key)
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise RowProblem(f"{where}.{key}", f"expected a finite number, got {short(value)}")
                score = float(value)
                break
        if score is None:
            known = [r for r in ratings.values() if r is not None]
            score = sum(known) / len(known) if known else None
        out.append(_Completion(i, text, ratings, score))
    return out


def _require_at(obj: dict, key: str, where: str) -> Any:
    if obj.get(key) is None:
        raise RowProblem(f"{where}.{key}", "missing" if key not in obj else "is null")
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
        raise RowProblem(key, 'missing (an UltraFeedback row holds its question in "instruction" or "prompt")')
    prompt = [{"role": "user", "content": checked_text(require(row, key), key)}]
    completions = _completions(row, allow_empty_responses)
    optional = optional_fields(row, soft_label=False)
    optional["margin"] = None

    def record(a: _Completion, b: _Completion, margin: float, **meta: Any) -> PreferenceRecord:
        fields = {**optional, "margin": margin, "meta": {**optional["meta"], **meta}}
        return PreferenceRecord(
            prompt, [{"role": "assistant", "content": a.text}], [{"role": "assistant", "content": b.text}], **fields
        )

    if mode == "binarize":
        scored = [c for c in completions if c.score is not None]
        if len(scored) < 2:
            return []
        best = max(scored, key=lambda c: c.score)  # max/min keep the first of equals
        worst = min((c for c in scored if c.text != best.text), key=lambda c: c.score, default=None)
        if worst is None or worst.score >= best.score:
            return []
        return [record(best, worst, best.score - worst.score)]

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
