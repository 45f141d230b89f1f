"""The by-prompt held-out split, one rule for `train-rm` (data.eval_fraction) and `gpmctl data split`.

A pair is held out when a hash of its prompt messages and the seed, read as a number in [0, 1), falls
below the eval fraction: every pair of a prompt lands on the same side, and the same seed gives the
same sides in both commands. The share of rows held out is close to, not exactly, the fraction.
"""

from __future__ import annotations

import hashlib
import json

from gpmctl.data.records import Message, PreferenceRecord


def held_out(record_or_prompt: PreferenceRecord | list[Message], eval_fraction: float, seed: int) -> bool:
    """Whether a record (or a prompt's message list) belongs to the held-out side."""
    prompt = record_or_prompt.prompt if isinstance(record_or_prompt, PreferenceRecord) else record_or_prompt
    key = json.dumps(prompt, sort_keys=True, ensure_ascii=False) + f"#{seed}"
    return int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big") / 2**64 < eval_fraction


def split_by_prompt(records: list, eval_fraction: float, seed: int) -> tuple[list, list]:
    """records -> (train, held out), each in input order; a prompt never sits on both sides."""
    if eval_fraction <= 0:
        return records, []
    train, held = [], []
    for r in records:
        (held if held_out(r, eval_fraction, seed) else train).append(r)
    return train, held
