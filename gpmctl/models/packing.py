"""Padding-free packing and shared prompts: the sequences of a batch in one row, no pad token computed, and a
prompt that several sequences start with computed once. Every embedding equals the one-sequence-at-a-time one
up to float rounding (tests/test_packing.py, tests/test_shared_prompt.py).

    enable_packing(backbone) -> bool     switch a causal decoder's attention to `packed_sdpa_attention`
    PackedRow.of_lengths([n_0, ...])     sequences one after another (the layout of plain packing)
    gpmctl.data.tokenize.pack_groups     groups of sequences sharing a prompt -> a row and its PackedRow

A row is a list of blocks of consecutive tokens. A block either starts a sequence or continues a prefix
block (the shared prompt): its position ids continue from the prefix, and its queries see the prefix and
its own earlier tokens, never another block. So a pair is [prompt | chosen' | rejected'] (chosen' the
chosen sequence after the prompt), and each response's hidden states are exactly those of the whole
(prompt, response) sequence run alone, while the prompt is computed once. Gradients reach the prompt's
tokens from every response that reads it, as in separate passes.

The backbone takes input_ids [1, T], position_ids [1, T], an all-ones attention mask and `gpmctl_row` (the
PackedRow, forwarded by transformers to the attention function). transformers' own packed path builds a
dense [T, T] mask (2 to 6x slower on CPU in a measured baseline) and infers sequences from position ids,
which cannot say "continues the prompt"; this one runs sdpa per block, with each layer's own mask (causal
or sliding window) taken at the block's positions.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np
import torch

from gpmctl.errors import ModelError
from gpmctl.utils import log


def enable_packing(backbone) -> bool:
    """Let `backbone` run packed rows; False (with a log line) where it cannot.

    Packing needs a causal decoder whose forward takes position_ids and whose attention goes through
    transformers' AttentionInterface with sdpa (Llama, Qwen2, Mistral, ...). Encoders such as BERT keep
    padding: their absolute position and token-type embeddings and bidirectional attention would need a
    different per-segment rule. Models that transformers cannot run with sdpa (Gemma-2's attention logit
    soft-capping, GPT-OSS's attention sinks) keep padding too."""
    base = backbone.get_base_model() if hasattr(backbone, "get_base_model") else backbone
    config = base.config
    causal = any(getattr(module, "is_causal", False) for module in base.modules())
    takes_positions = "position_ids" in inspect.signature(base.forward).parameters
    if not (takes_positions and causal and not getattr(config, "is_encoder_decoder", False)):
        log(f"packing off: {type(base).__name__} is not a causal decoder taking position_ids; batches are padded")
        return False
    if config._attn_implementation == PACKED_ATTENTION:
        return True
    if config._attn_implementation != "sdpa" or not getattr(base, "_supports_attention_backend", False):
        log(
            f"packing off: {type(base).__name__} runs {config._attn_implementation!r} attention, not sdpa through "
            "transformers' attention interface; batches are padded"
        )
        return False
    _register_packed_attention()
    base.set_attn_implementation(PACKED_ATTENTION)
    return True


def is_packed(backbone) -> bool:
    return backbone.config._attn_implementation == PACKED_ATTENTION


PACKED_ATTENTION = "gpmctl_packed_sdpa"


@dataclass
class PackedRow:
    """Where the sequences of one packed row sit.

    blocks[b] = (length, prefix): the row's next `length` tokens (the blocks, in row order, cover the row),
    continuing block `prefix` (a shared prompt, a block of its own) or starting a sequence (prefix None).
    position_ids [1, T]; first, last [n]: the row index of each sequence's first and last token."""

    blocks: list[tuple[int, int | None]]
    position_ids: torch.Tensor
    first: torch.Tensor
    last: torch.Tensor

    @classmethod
    def of_lengths(cls, lengths: list[int]) -> "PackedRow":
        """Sequences of these lengths one after another, positions restarting at 0 in each."""
        ends = np.cumsum(lengths)
        return cls.of_blocks([(int(n), None) for n in lengths], ends - np.asarray(lengths), ends - 1)

    @classmethod
    def of_blocks(cls, blocks: list[tuple[int, int | None]], first, last) -> "PackedRow":
        """`blocks` as in the class doc; first, last: each sequence's first and last token in the row."""
        length = np.array([n for n, _ in blocks], dtype=np.int64)
        start = np.cumsum(length) - length
        positions = np.arange(length.sum()) - np.repeat(start - offsets(blocks), length)  # continuing the prefix
        return cls(
            blocks,
            torch.from_numpy(positions).unsqueeze(0),
            torch.as_tensor(np.asarray(first, dtype=np.int64)),
            torch.as_tensor(np.asarray(last, dtype=np.int64)),
        )

    def select(self, order: torch.Tensor) -> "PackedRow":
        """The same row with its sequences read in `order` (indices into the current order)."""
        return PackedRow(self.blocks, self.position_ids, self.first[order], self.last[order])

    def to(self, device) -> "PackedRow":
        return PackedRow(self.blocks, self.position_ids.to(device), self.first.to(device), self.last.to(device))


def offsets(blocks: list[tuple[int, int | None]]) -> np.ndarray:
    """Each block's first position: the length of the prefix it continues (0: it starts a sequence)."""
    return np.array([0 if prefix is None else blocks[prefix][0] for _, prefix in blocks], dtype=np.int64)


class PackedRowMask:
    """What `_packed_sdpa_mask` returns instead of a dense mask: the arguments transformers built this layer
    type's mask from (its mask function: causal, sliding window, ...). A padded batch gets transformers'
    dense mask from it (`dense`); a packed row gets one small mask per block (`blocks`)."""

    def __init__(self, attention_mask: torch.Tensor | None, mask_kwargs: dict):
        self.attention_mask, self.mask_kwargs = attention_mask, mask_kwargs
        self._dense, self._blocks = False, None  # built once per forward, shared by the layers of this type

    def dense(self) -> torch.Tensor | None:
        """The mask transformers' sdpa would use for the whole batch (None: plain causal)."""
        from transformers.masking_utils import sdpa_mask

        if self._dense is False:
            self._dense = sdpa_mask(attention_mask=self.attention_mask, **self.mask_kwargs)
        return self._dense

    def blocks(self, row: PackedRow) -> list[torch.Tensor | None]:
        """Block b's mask [1, 1, length, prefix + length], None where sdpa's own causal mask is the same.

        A block's queries sit at positions prefix .. prefix + length - 1 and its keys (prefix, then itself)
        at 0 .. prefix + length - 1, so its mask is rows prefix:prefix + length, columns :prefix + length of
        the mask of ONE sequence of the longest such length: one mask per layer type and forward, not one
        per block (building a mask through transformers costs about a millisecond)."""
        from transformers.masking_utils import sdpa_mask

        if self._blocks is None:
            lengths, starts = [n for n, _ in row.blocks], offsets(row.blocks).tolist()
            longest = max(p + n for p, n in zip(starts, lengths))
            full = sdpa_mask(
                **{
                    **self.mask_kwargs,
                    "batch_size": 1,
                    "q_length": longest,
                    "kv_length": longest,
                    "q_offset": 0,
                    "kv_offset": 0,
                    "allow_is_causal_skip": False,
                    "allow_is_bidirectional_skip": False,
                }
            )
            causal = torch.ones(longest, longest, dtype=torch.bool, device=full.device).tril()
            differs = (full[0, 0] != causal).any(dim=1).nonzero()
            causal_up_to = int(differs[0]) if len(differs) else longest  # rows before the first one a window cuts
            self._blocks = [
                None if p == 0 and n <= causal_up_to else full[:, :, p : p + n, : p + n] for p, n in zip(starts, lengths)
            ]  # None: sdpa's causal kernel
        return self._blocks


def packed_sdpa_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """transformers attention function: sdpa run on each block of a packed row (`PackedRow`, forwarded by the
    model as `gpmctl_row`), a block's keys being its prefix's and its own, under the mask it would have in a
    padded batch (causal, or the layer's sliding window), `scaling` and `dropout` as given.

    query [1, heads, T, d], key/value [1, kv_heads, T, d]. A batch without a row (padded) goes to exactly
    transformers' sdpa, so a model switched to it still runs every other command unchanged.
    Returns ([1, T, heads, d], None) as every transformers attention function does."""
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    row = kwargs.pop("gpmctl_row", None)
    if isinstance(attention_mask, PackedRowMask) and row is None:  # a padded batch
        attention_mask = attention_mask.dense()
    if not isinstance(attention_mask, PackedRowMask):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    dropped = [name for name in ("softcap", "s_aux", "position_bias") if kwargs.get(name) is not None]
    if dropped:  # unreachable with transformers' sdpa models today; never drop them silently
        raise ModelError(f"packed attention cannot apply {', '.join(dropped)}; disable packing (train.packing=false)")
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    # One split per tensor, not a slice per block: a slice's backward writes a zero tensor of the whole row,
    # which costs blocks x T (measured 44% of a shared-prompt step's GPU time); a split's is one cat.
    q, k, v = (x.split([n for n, _ in row.blocks], dim=2) for x in (query, key, value))
    parts = []
    for b, ((_, p), mask) in enumerate(zip(row.blocks, attention_mask.blocks(row))):
        keys, values = (k[b], v[b]) if p is None else (torch.cat([k[p], k[b]], dim=2), torch.cat([v[p], v[b]], dim=2))
        parts.append(
            torch.nn.functional.scaled_dot_product_attention(
                q[b], keys, values, attn_mask=mask, dropout_p=dropout, scale=scaling, is_causal=mask is None
            )
        )
    return torch.cat(parts, dim=2).transpose(1, 2).contiguous(), None


def _packed_sdpa_mask(attention_mask=None, **kwargs):
    """Mask builder paired with `packed_sdpa_attention`: the arguments of sdpa's mask (`PackedRowMask`),
    built into a dense mask only for a padded batch."""
    return PackedRowMask(attention_mask, kwargs)


def _register_packed_attention() -> None:
    """Registered on first use, so that importing gpmctl does not import transformers."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(PACKED_ATTENTION, packed_sdpa_attention)
    AttentionMaskInterface.register(PACKED_ATTENTION, _packed_sdpa_mask)
