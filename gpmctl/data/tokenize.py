"""From preference records to padded tensors: the one place where text becomes token ids.

A (prompt, response) becomes the chat-templated conversation, tokenised with the tokenizer's default
special tokens, with EOS at the read position (reference rule, `HeadConfig.eos`), and the index of the
prompt's last token (where the gate reads the prompt). A pair is two such sequences; a batch of B pairs
is ONE tensor of 2B sequences, chosen first, so a training step needs one forward pass: either padded
to [2B, longest] or packed into one row of all real tokens with no padding, each pair's prompt computed
once (`collate_pairs`; packing needs a model that `enable_packing()`). Groups of K responses to one prompt
pack the same way (`pack_groups`).
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


EOS_RULES = ("overwrite", "append", "none", "template", "openrlhf")
"""How a (prompt, response) becomes the token ids whose last one is read (`HeadConfig.eos`, recipe key model.eos):

    overwrite  the paper's code: the rendered conversation tokenised (tokenizer's default special tokens),
               cut to max_length, then its last token set to EOS
    append     as overwrite, but EOS added after the last token unless it already is EOS
    none       as overwrite, tokens unchanged
    template   the field's sequence classifiers (TRL's RewardTrainer, transformers' *ForSequenceClassification,
               RewardBench): the chat template's own tokens (apply_chat_template(tokenize=True), no special
               token added), unchanged, read at the last token that is not padding: trailing pad-id tokens
               are dropped, which leaves a causal model's reward at that token exactly as transformers reads it
    openrlhf   OpenRLHF's reward models: the rendered text with trailing newlines stripped, " " + EOS appended
               unless it ends with EOS, tokenised without added special tokens, cut, last token set to EOS
"""


class SequenceEncoder:
    """Turns (prompt messages, response messages) into token ids following the model's head settings."""

    def __init__(
        self,
        tokenizer,
        max_length: int,
        eos: str = "overwrite",
        gate_prompt: str = "first_turn",
        truncation: str = "right",
        pad_id: int | None = None,
    ):
        """`pad_id`: the token the `template` rule drops from the end (the model config's pad_token_id, which
        transformers' classifiers skip); default the tokenizer's pad token."""
        if eos not in EOS_RULES:
            raise DataError("model", f"eos: expected one of {', '.join(EOS_RULES)}, got {eos!r}", field="eos")
        if tokenizer.eos_token_id is None and eos not in ("none", "template"):
            raise DataError("tokenizer", "has no EOS token; set model.eos: none")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.eos, self.gate_prompt, self.truncation = eos, gate_prompt, truncation
        self.pad_id = tokenizer.pad_token_id if pad_id is None else pad_id
        self.generation_header = generation_header(tokenizer)
        self.truncated = 0  # how many sequences were cut (reported by the caller)
        self.doubled_eos = 0  # how many sequences `overwrite` made end in EOS, EOS (reported by the caller)
        self.encoded = 0  # how many sequences were encoded

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
        return self.tokenizer(text, add_special_tokens=self.eos != "openrlhf")["input_ids"]

    def conversation_ids(self, messages: list[dict]) -> list[int]:
        """The token ids of a whole conversation under the EOS rule, before truncation."""
        tok = self.tokenizer
        if self.eos == "template" and tok.chat_template:
            return template_ids(tok, messages)
        if self.eos == "openrlhf":
            text = self.render(messages).rstrip("\n")
            return self._ids(text if text.endswith(tok.eos_token) else f"{text} {tok.eos_token}")
        return self._ids(self.render(messages))

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """The token ids of the messages before a response (their count is where the prompt ends)."""
        if self.eos == "template" and self.tokenizer.chat_template:
            return template_ids(self.tokenizer, messages)
        return self._ids(self.render_prompt(messages))

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
        ids = self.conversation_ids(prompt + response)
        gate_messages = prompt[:1] if self.gate_prompt == "first_turn" else prompt
        gate_len = min(len(self.prompt_ids(gate_messages)), len(ids))
        prompt_len = gate_len if len(gate_messages) == len(prompt) else min(len(self.prompt_ids(prompt)), len(ids))
        return self._finish(ids, gate_len, prompt_len, where)

    def encode_text(self, text: str, prompt_text: str, where: str = "") -> EncodedSequence:
        """A conversation already rendered (special tokens included, as OpenRLHF's remote reward model client
        sends its queries) and its prompt part: tokenised without added special tokens, then the EOS rule,
        truncation and gate position as `encode` (the gate reads the end of `prompt_text`)."""
        tok = self.tokenizer
        if self.eos == "openrlhf":
            text = text.rstrip("\n")
            text = text if text.endswith(tok.eos_token) else f"{text} {tok.eos_token}"
        ids = tok(text, add_special_tokens=False)["input_ids"]
        prompt_len = min(len(tok(prompt_text, add_special_tokens=False)["input_ids"]), len(ids))
        # A prompt rendered for generation ends with the template's assistant header, which `encode`'s prompt has
        # not: the gate reads the prompt's last token before it. (A multi-turn prompt's gate reads its end here.)
        gate_text = prompt_text.removesuffix(self.generation_header) if self.generation_header else prompt_text
        gate_len = min(len(tok(gate_text, add_special_tokens=False)["input_ids"]), len(ids))
        return self._finish(ids, gate_len, prompt_len, where)

    def _finish(self, ids: list[int], gate_len: int, prompt_len: int, where: str) -> EncodedSequence:
        """Truncation, the EOS rule and the gate position (`encode`) on a conversation's token ids."""
        self.encoded += 1
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
        if self.eos in ("overwrite", "openrlhf"):
            ids[-1] = self.tokenizer.eos_token_id
            # A template that closes the turn with EOS and then a newline (ChatML with EOS = <|im_end|>) now ends
            # in a second EOS: a position whose frozen feature holds little of the response (docs/results.md).
            self.doubled_eos += len(ids) > 1 and ids[-2] == self.tokenizer.eos_token_id
        elif self.eos == "append" and ids[-1] != self.tokenizer.eos_token_id:
            ids.append(self.tokenizer.eos_token_id)
        elif self.eos == "template":
            while len(ids) > 1 and ids[-1] == self.pad_id:
                ids.pop()
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


def generation_header(tokenizer) -> str:
    """What the chat template adds for `add_generation_prompt=True` (e.g. "<|im_start|>assistant\n"), or ""."""
    if not tokenizer.chat_template:
        return ""
    probe = [{"role": "user", "content": "x"}]
    try:
        plain = tokenizer.apply_chat_template(probe, tokenize=False)
        opened = tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
    except Exception:  # noqa: BLE001 (a template that refuses a lone user message: no header to strip)
        return ""
    return opened[len(plain) :] if opened.startswith(plain) else ""


def template_ids(tokenizer, messages: list[dict]) -> list[int]:
    """apply_chat_template(tokenize=True) as a list of ids (transformers 5 returns a dict, 4.x a list)."""
    out = tokenizer.apply_chat_template(messages, tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


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


def shared_prefix_length(seqs: list[EncodedSequence]) -> int:
    """How many first tokens all of `seqs` have in common (their prompt, when the template and truncation keep
    it the same), leaving each sequence at least one token of its own: that token is where its value is read."""
    longest = min(len(s.ids) for s in seqs) - 1
    if len(seqs) < 2 or longest <= 0:
        return 0
    heads = np.stack([s.ids[:longest] for s in seqs])
    differs = (heads != heads[0]).any(axis=0)
    return int(differs.argmax()) if differs.any() else longest


def pack_groups(groups: list[list[EncodedSequence]], share_prompt: bool = True, member_major: bool = False) -> dict:
    """Groups of sequences (the responses of one prompt) -> one packed row: input_ids [1, T], its `row`
    (gpmctl.models.packing.PackedRow) and prompt_end [n] in row coordinates.

    With `share_prompt`, a group's common first tokens (`shared_prefix_length`) are put in the row once and
    each sequence continues them with its own tokens; the hidden states are those of each whole sequence
    (packing.py). Truncation, the EOS rule and the gate position were applied per sequence before, so they
    are exactly those of separate sequences. Sequences are read group by group (g0 s0, g0 s1, g1 s0, ...),
    or member by member with `member_major` (g0 s0, g1 s0, ..., g0 s1, ...: chosen first, for pairs)."""
    from gpmctl.models.packing import PackedRow

    pieces, blocks, first, last, prompt_end = [], [], [], [], []
    t = 0
    for group in groups:
        prefix = shared_prefix_length(group) if share_prompt else 0
        prefix_start, prefix_block = t, None
        if prefix:
            pieces.append(group[0].ids[:prefix])
            prefix_block = len(blocks)
            blocks.append((prefix, None))
            t += prefix
        for s in group:
            own = len(s.ids) - prefix
            pieces.append(s.ids[prefix:])
            blocks.append((own, prefix_block))
            first.append(prefix_start)
            last.append(t + own - 1)
            prompt_end.append(prefix_start + s.prompt_end if s.prompt_end < prefix else t + s.prompt_end - prefix)
            t += own
    row = PackedRow.of_blocks(blocks, first, last)
    prompt_end = torch.tensor(prompt_end, dtype=torch.long)
    if member_major:
        size = len(groups[0])
        if any(len(g) != size for g in groups):
            raise ValueError("member_major needs groups of one size")
        order = torch.arange(len(prompt_end)).view(len(groups), size).t().reshape(-1)
        row, prompt_end = row.select(order), prompt_end[order]
    ids = torch.from_numpy(np.concatenate(pieces).astype(np.int64)).unsqueeze(0)
    return {"input_ids": ids, "row": row, "prompt_end": prompt_end}


def collate_pairs(
    pairs: list[EncodedPair], pad_id: int, side: str = "left", packed: bool = False, share_prompt: bool = False
) -> dict[str, torch.Tensor]:
    """B pairs -> one batch of 2B sequences (0..B-1 chosen, B..2B-1 rejected) plus margin, label [B].

    Padded to [2B, longest] by default; `packed` puts them in one row instead, without padding, and
    `share_prompt` computes each pair's prompt once in that row (`pack_groups`)."""
    if packed:
        batch = pack_groups([[p.chosen, p.rejected] for p in pairs], share_prompt, member_major=True)
    else:
        batch = pad_sequences([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id, side)
    batch["margin"] = torch.tensor([p.margin for p in pairs], dtype=torch.float32)
    batch["label"] = torch.tensor([p.label for p in pairs], dtype=torch.float32)
    return batch


def real_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Tokens a batch computes: non-pad tokens of a padded batch, the row of a packed one (a shared prompt once)."""
    return int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
