"""The canonical preference record: one prompt, a chosen and a rejected continuation.

Every row format (gpmctl.data.formats) is read into a `PreferenceRecord`; training, evaluation and
`gpmctl data` work on these records. `to_json` gives the canonical jsonl row that gpmctl writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Message = dict[str, str]  # {"role": "user" | "assistant" | "system", "content": str}

ROLES = ("user", "assistant", "system")

# Keys the readers interpret; never written or read as `meta`.
RESERVED_KEYS = frozenset(
    {"prompt", "chosen", "rejected", "margin", "label", "id", "subset", "instruction", "reject", "completions"}
)


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


def _compact(messages: list[Message], role: str) -> str | list[Message]:
    if len(messages) == 1 and messages[0]["role"] == role:
        return messages[0]["content"]
    return [{"role": m["role"], "content": m["content"]} for m in messages]
