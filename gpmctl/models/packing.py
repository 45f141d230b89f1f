"""Padding-free packing: all sequences of a batch in one row, no pad tokens computed, every embedding equal
to the padded one up to float rounding (tests/test_packing.py).

    enable_packing(backbone) -> bool      switch a causal decoder's attention to `packed_sdpa_attention`
    packed_positions(cu_seqlens, total)   positions restarting at 0 in each packed sequence

Then the backbone takes input_ids [1, T] with `cu_seq_lens_q/k` = cu_seqlens [n + 1] (sequence i is tokens
cu_seqlens[i]:cu_seqlens[i+1]) and position ids restarting per sequence; attention never crosses a
sequence boundary. transformers' own packed path (position_ids alone) is exact but builds a dense [T, T]
mask (2 to 6x slower on CPU in a measured baseline); this one runs sdpa per sequence, with each layer's
own mask (causal or sliding window) inside it.
"""

from __future__ import annotations

import inspect

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


def packed_positions(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """Position ids [total] of a packed row: 0, 1, ... restarting at each sequence start."""
    lengths = cu_seqlens.diff()
    starts = cu_seqlens[:-1].long()
    return torch.arange(total, device=cu_seqlens.device) - starts.repeat_interleave(lengths, output_size=total)


PACKED_ATTENTION = "gpmctl_packed_sdpa"


class PackedRowMask:
    """What `_packed_sdpa_mask` returns for an unpadded row instead of a dense [T, T] mask: the arguments
    transformers built this layer type's mask from (its mask function: causal, sliding window, ...), so
    that `packed_sdpa_attention`, which knows the sequence bounds, builds only each sequence's own block."""

    def __init__(self, mask_kwargs: dict):
        self.mask_kwargs = mask_kwargs
        self._blocks = None  # one forward, one set of bounds: built once, shared by the layers of this type

    def dense(self) -> torch.Tensor | None:
        """The mask transformers' sdpa would use for the whole row."""
        from transformers.masking_utils import sdpa_mask

        return sdpa_mask(**self.mask_kwargs)

    def blocks(self, bounds: list[int]) -> list[torch.Tensor | None]:
        """Sequence i's mask [1, 1, n_i, n_i] (tokens bounds[i]:bounds[i+1]), None where it is plain causal.

        Positions restart at 0 in every sequence, so sequence i's mask is the top-left n_i x n_i corner of
        the mask of one sequence of the longest length: one mask per layer type and forward, not one per
        sequence (building masks through transformers costs about a millisecond each)."""
        from transformers.masking_utils import sdpa_mask

        if self._blocks is None:
            lengths = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
            longest = max(lengths)
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
            self._blocks = [None if n <= causal_up_to else full[:, :, :n, :n] for n in lengths]  # None: sdpa's fast kernel
        return self._blocks


def packed_sdpa_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """transformers attention function: sdpa run separately on each packed sequence, under the same
    mask as in a padded batch (causal, or the layer's sliding window), `scaling` and `dropout` as given.

    query [1, heads, T, d], key/value [1, kv_heads, T, d]; `cu_seq_lens_q` [n + 1] (forwarded by the
    model from its forward kwargs) bounds the sequences. A padded batch (a tensor mask) goes to exactly
    transformers' sdpa, so a model switched to it still runs every other command unchanged.
    Returns ([1, T, heads, d], None) as every transformers attention function does."""
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    bounds = kwargs.get("cu_seq_lens_q")
    if isinstance(attention_mask, PackedRowMask) and bounds is None:  # an unpadded batch: one sequence per row
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
    bounds = bounds.tolist()
    parts = [
        torch.nn.functional.scaled_dot_product_attention(
            query[:, :, a:b],
            key[:, :, a:b],
            value[:, :, a:b],
            attn_mask=mask,
            dropout_p=dropout,
            scale=scaling,
            is_causal=mask is None,
        )
        for a, b, mask in zip(bounds[:-1], bounds[1:], attention_mask.blocks(bounds))
    ]
    return torch.cat(parts, dim=2).transpose(1, 2).contiguous(), None


def _packed_sdpa_mask(attention_mask=None, **kwargs):
    """Mask builder paired with `packed_sdpa_attention`: sdpa's mask for a padded batch; for a packed row
    the arguments of that mask (`PackedRowMask`), where sdpa's builder would make a dense [T, T] one."""
    if attention_mask is None:
        return PackedRowMask(kwargs)
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(attention_mask=attention_mask, **kwargs)


def _register_packed_attention() -> None:
    """Registered on first use, so that importing gpmctl does not import transformers."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(PACKED_ATTENTION, packed_sdpa_attention)
    AttentionMaskInterface.register(PACKED_ATTENTION, _packed_sdpa_mask)
