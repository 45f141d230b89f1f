"""From preference records to padded tensors: the one place where text becomes token ids.

A (prompt, response) becomes the chat-templated conversation, tokenised with the tokenizer's default
special tokens, with EOS at the read position (reference rule, `HeadConfig.eos`), and the index of the
prompt's last token (where the gate reads the prompt). A pair is two such sequences; a batch of B pairs
is ONE tensor of 2B sequences, chosen first, so a training step needs one forward pass: either padded
to [2B, longest] (`collate_pairs`) or packed into one row of all real tokens with no padding
(`pack_pairs`, for models that `enable_packing()`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gpmctl.errors import DataError


@dataclass
class EncodedSequence:
    ids: np.ndarray  # [length] int32
    prompt_end: int  # index (in ids) of the prompt's last token


@dataclass
class EncodedPair:
    chosen: EncodedSequence
    rejected: EncodedSequence
    margin: float = 0.0
    label: float = 1.0
    meta: dict | None = None


class SequenceEncoder:
    """Turns (prompt messages, response messages) into token ids following the model's head settings."""

    def __init__(
        self, tokenizer, max_length: int, eos: str = "overwrite", gate_prompt: str = "first_turn", truncation: str = "right"
    ):
        if tokenizer.eos_token_id is None and eos != "none":
            raise DataError("tokenizer", "has no EOS token; set model.eos: none")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.eos, self.gate_prompt, self.truncation = eos, gate_prompt, truncation
        self.truncated = 0  # how many sequences were cut (reported by the caller)

    def render(self, messages: list[dict]) -> str:
        tok = self.tokenizer
        if tok.chat_template:
            return tok.apply_chat_template(messages, tokenize=False)
        # No template (e.g. encoders, the official custom format): contents joined by spaces, then EOS.
        return " ".join(m["content"] for m in messages) + " " + (tok.eos_token or "")

    def render_prompt(self, messages: list[dict]) -> str:
        """The text of the messages before a response, whose token count says where they end: templated
        like `render`; without a template the contents alone, no trailing space or EOS (the reference
        tokenises the bare instruction), so its tokens are the conversation's first tokens."""
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(messages, tokenize=False)
        return " ".join(m["content"] for m in messages)

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=True)["input_ids"]

    def encode(self, prompt: list[dict], response: list[dict], where: str = "") -> EncodedSequence:
        """One sequence, truncated to max_length, and `prompt_end`, where the gate reads the prompt.

        The reference's rule: response_len = len(tokens(conversation)) - len(tokens(gate prompt)),
        prompt_end = L - response_len - 1 (L the kept length), the gate prompt being the first turn
        (`gate_prompt: first_turn`) or the whole prompt. Right truncation keeps the prompt's first
        tokens, the same for every response, so every response of a prompt reads one gate. Left
        truncation drops prompt tokens from the start but never cuts into the final response while
        the prompt's last token can stay: when the response alone does not fit, the sequence starts at
        that token and the response is cut at its end instead. Where it cuts the gate's own position
        (a multi-turn prompt losing its first turn), the gate reads the first kept token.
        """
        ids = self._ids(self.render(prompt + response))
        gate_messages = prompt[:1] if self.gate_prompt == "first_turn" else prompt
        gate_len = min(len(self._ids(self.render_prompt(gate_messages))), len(ids))
        prompt_len = gate_len if len(gate_messages) == len(prompt) else min(len(self._ids(self.render_prompt(prompt))), len(ids))
        limit = self.max_length - (1 if self.eos == "append" else 0)
        start = 0  # first kept token
        if len(ids) > limit:
            if self.truncation == "error":
                raise DataError(
                    where or "data", f"{len(ids)} tokens, more than data.max_length={self.max_length}", field="length"
                )
            self.truncated += 1
            if self.truncation == "left":
                start = min(len(ids) - limit, max(prompt_len - 1, 0))
            ids = ids[start : start + limit]
        if self.eos == "overwrite":
            ids[-1] = self.tokenizer.eos_token_id
        elif self.eos == "append" and ids[-1] != self.tokenizer.eos_token_id:
            ids.append(self.tokenizer.eos_token_id)
        prompt_end = min(max(gate_len - 1 - start, 0), len(ids) - 1)
        return EncodedSequence(np.asarray(ids, dtype=np.int32), prompt_end)

    def encode_pair(self, record, where: str = "", use_margin: bool = True, use_label: bool = True) -> EncodedPair:
        """`record` is a gpmctl.data.records.PreferenceRecord."""
        return EncodedPair(
            chosen=self.encode(record.prompt, record.chosen, where),
            rejected=self.encode(record.prompt, record.rejected, where),
            margin=float(record.margin) if (use_margin and record.margin is not None) else 0.0,
            label=float(record.label) if (use_label and record.label is not None) else 1.0,
            meta=record.meta or None,
        )


def pad_sequences(seqs: list[EncodedSequence], pad_id: int, side: str = "left") -> dict[str, torch.Tensor]:
    """Pad to the longest: input_ids, attention_mask [n, L] and prompt_end [n] (in padded coordinates)."""
    length = max(len(s.ids) for s in seqs)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    prompt_end = torch.empty(len(seqs), dtype=torch.long)
    for row, s in enumerate(seqs):
        n = len(s.ids)
        start = length - n if side == "left" else 0
        ids[row, start : start + n] = torch.from_numpy(s.ids.astype(np.int64))
        mask[row, start : start + n] = 1
        prompt_end[row] = start + s.prompt_end
    return {"input_ids": ids, "attention_mask": mask, "prompt_end": prompt_end}


def pack_sequences(seqs: list[EncodedSequence]) -> dict[str, torch.Tensor]:
    """Concatenate without padding: input_ids [1, T], cu_seqlens [n + 1] int32 (sequence i is tokens
    cu_seqlens[i]:cu_seqlens[i+1]) and prompt_end [n] (in packed coordinates)."""
    lengths = torch.tensor([len(s.ids) for s in seqs], dtype=torch.int32)
    cu_seqlens = torch.zeros(len(seqs) + 1, dtype=torch.int32)
    torch.cumsum(lengths, 0, out=cu_seqlens[1:])
    ids = torch.from_numpy(np.concatenate([s.ids for s in seqs]).astype(np.int64)).unsqueeze(0)
    prompt_end = cu_seqlens[:-1].long() + torch.tensor([s.prompt_end for s in seqs], dtype=torch.long)
    return {"input_ids": ids, "cu_seqlens": cu_seqlens, "prompt_end": prompt_end}


def collate_pairs(pairs: list[EncodedPair], pad_id: int, side: str = "left", packed: bool = False) -> dict[str, torch.Tensor]:
    """B pairs -> one batch of 2B sequences (0..B-1 chosen, B..2B-1 rejected) plus margin, label [B].

    Padded to [2B, longest] by default; `packed` concatenates them into one row instead (`pack_sequences`)."""
    seqs = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    batch = pack_sequences(seqs) if packed else pad_sequences(seqs, pad_id, side)
    batch["margin"] = torch.tensor([p.margin for p in pairs], dtype=torch.float32)
    batch["label"] = torch.tensor([p.label for p in pairs], dtype=torch.float32)
    return batch


def real_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Non-pad tokens in a padded or packed batch."""
    return int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
