"""The preference model shared by every command: any Hugging Face backbone plus a BT or GPM head.

    PreferenceModel(input_ids, attention_mask, prompt_end) -> PreferenceOutput
        value  [batch, 2k] GPM embedding (L2-normalised when `l2`) or [batch] BT reward
        gate   [batch, k]  prompt-dependent block weights, or None

The embedding is read at the last real token of each row (left or right padding both work: positions
come from the attention mask, as in the reference). Scores of pairs and K x K matrices come from
`gpmctl.models.preference`; this module only turns token ids into embeddings.

Padding-free packing (training and evaluation): `enable_packing()` switches a causal backbone's
attention to `packed_sdpa_attention`, and then

    PreferenceModel(input_ids [1, T], cu_seqlens=[0, n1, n1+n2, ...], prompt_end=[...]) -> PreferenceOutput

runs all sequences of a batch as one row with no pad tokens. Positions restart at 0 in each sequence
and attention never crosses a sequence boundary, so every embedding equals the padded one up to
float rounding (tests/test_packing.py).
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass

import torch
from torch import nn

from gpmctl.errors import ModelError
from gpmctl.models import preference as P
from gpmctl.utils import log

HEAD_FILE = "preference_head.json"
HEAD_FORMAT = "gpmctl-preference-head"


@dataclass
class HeadConfig:
    """Everything a loader needs besides the backbone, saved as preference_head.json beside the weights."""

    kind: str = "gpm"  # "gpm" | "bt"
    dim: int = 2  # GPM embedding dimension 2k; 1 for BT
    gate: bool = False
    gate_variant: str = "softmax"
    l2: bool = True
    tau: float = 0.1
    pool: str = "last"  # "last" real token | "first" token
    eos: str = "overwrite"  # how the tokenizer side puts EOS at the read position (see data.tokenize)
    gate_prompt: str = "first_turn"

    @classmethod
    def from_model_config(cls, m) -> "HeadConfig":
        """From a recipe's ModelConfig (gpmctl.config)."""
        return cls(
            kind=m.kind, dim=1 if m.kind == "bt" else m.dim, gate=m.gate, gate_variant=m.gate_variant,
            l2=m.l2, tau=m.resolved_tau(), pool=m.pool, eos=m.eos, gate_prompt=m.gate_prompt,
        )  # fmt: skip

    def to_json(self) -> dict:
        return {"format": HEAD_FORMAT, "version": 1, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, d: dict, source: str = "") -> "HeadConfig":
        if d.get("format") != HEAD_FORMAT:
            raise ModelError(f"{source}: not a gpmctl preference head file")
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class PreferenceOutput:
    value: torch.Tensor  # [batch, 2k] (GPM) or [batch] (BT), float32
    gate: torch.Tensor | None  # [batch, k] or None


class PreferenceModel(nn.Module):
    """A backbone (`transformers.AutoModel`, decoder or encoder) with a preference head.

    Parameter names follow the authors' released checkpoints: `value_head.weight` [2k or 1, H] and
    `prompt_head.weight` [k, H], both without bias.
    """

    def __init__(self, backbone: nn.Module, head: HeadConfig, init_std: float | None = None):
        super().__init__()
        if head.kind not in ("gpm", "bt"):
            raise ModelError(f"unknown model kind {head.kind!r} (expected gpm or bt)")
        if head.kind == "gpm" and (head.dim < 2 or head.dim % 2):
            raise ModelError(f"a GPM needs an even embedding dimension >= 2, got {head.dim}")
        self.backbone = backbone
        self.head = head
        hidden = hidden_size(backbone.config)
        self.value_head = nn.Linear(hidden, 1 if head.kind == "bt" else head.dim, bias=False)
        self.prompt_head = nn.Linear(hidden, head.dim // 2, bias=False) if head.gate else None
        std = init_std if init_std is not None else 1.0 / (hidden + 1)  # reference init, not 1/sqrt(H)
        for layer in (self.value_head, self.prompt_head):
            if layer is not None:
                nn.init.normal_(layer.weight, mean=0.0, std=std)
                layer.to(next(backbone.parameters()).dtype)
        base = backbone.get_base_model() if hasattr(backbone, "get_base_model") else backbone  # peft wraps it
        if head.gate and not any(getattr(module, "is_causal", False) for module in base.modules()):
            # The gate reads the hidden state at the prompt's last token; a bidirectional encoder mixes the
            # response into it, so the two responses of one prompt would get different gates.
            raise ModelError(f"a gate needs a causal decoder backbone; {type(base).__name__} is a bidirectional encoder "
                             "(set model.gate: false)")  # fmt: skip
        self._takes_position_ids = "position_ids" in inspect.signature(base.forward).parameters

    def enable_packing(self) -> bool:
        """Let `forward` take packed batches (`cu_seqlens`); False where the backbone cannot.

        Packing needs a causal decoder whose forward takes position_ids and whose attention goes through
        transformers' AttentionInterface with sdpa (Llama, Qwen2, Mistral, ...). Encoders such as BERT
        keep padding: their absolute position and token-type embeddings and bidirectional attention
        would need a different per-segment rule. transformers' own packed path (position_ids alone) is
        exact but builds a dense [T, T] mask (2 to 6x slower on CPU in a measured baseline); this one runs
        sdpa per sequence, with each layer's own mask (causal or sliding window) inside it. Models that
        transformers cannot run with sdpa (Gemma-2's attention logit soft-capping, GPT-OSS's attention
        sinks) keep padding, and a log line says so."""
        base = self.backbone.get_base_model() if hasattr(self.backbone, "get_base_model") else self.backbone
        config = base.config
        causal = any(getattr(module, "is_causal", False) for module in base.modules())
        if not (self._takes_position_ids and causal and not getattr(config, "is_encoder_decoder", False)):
            log(f"packing off: {type(base).__name__} is not a causal decoder taking position_ids; batches are padded")
            return False
        if config._attn_implementation == PACKED_ATTENTION:
            return True
        if config._attn_implementation != "sdpa" or not getattr(base, "_supports_attention_backend", False):
            log(f"packing off: {type(base).__name__} runs {config._attn_implementation!r} attention, not sdpa through "
                "transformers' attention interface; batches are padded")  # fmt: skip
            return False
        _register_packed_attention()
        base.set_attn_implementation(PACKED_ATTENTION)
        return True

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, prompt_end: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
    ) -> PreferenceOutput:  # fmt: skip
        """Padded: input_ids, attention_mask [batch, L]. Packed (after `enable_packing`): input_ids [1, T] and
        cu_seqlens [batch + 1] (sequence i is tokens cu_seqlens[i]:cu_seqlens[i+1]), no attention_mask.
        prompt_end [batch]: index of each prompt's last token, in the same (padded or packed) coordinates."""
        if cu_seqlens is not None:
            hidden, read_at = self._packed_hidden(input_ids, cu_seqlens)  # [T, H], [batch]
            return self._head(hidden[read_at], hidden[prompt_end] if prompt_end is not None else None)
        kwargs = {}
        if self._takes_position_ids:  # positions count real tokens only, so left padding changes nothing
            kwargs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        last = hidden[rows, read_positions(attention_mask, self.head.pool)]
        return self._head(last, hidden[rows, prompt_end] if prompt_end is not None else None)

    def _packed_hidden(self, input_ids: torch.Tensor, cu_seqlens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Backbone over one packed row -> (hidden [T, H], read positions [batch])."""
        if self.backbone.config._attn_implementation != PACKED_ATTENTION:
            raise ValueError("a packed batch needs model.enable_packing() first")
        lengths = cu_seqlens.diff()
        starts = cu_seqlens[:-1].long()
        total = input_ids.shape[1]
        position_ids = torch.arange(total, device=input_ids.device) - starts.repeat_interleave(lengths, output_size=total)
        hidden = self.backbone(input_ids=input_ids, position_ids=position_ids.unsqueeze(0), cu_seq_lens_q=cu_seqlens,
                               cu_seq_lens_k=cu_seqlens).last_hidden_state[0]  # fmt: skip
        read_at = starts if self.head.pool == "first" else cu_seqlens[1:].long() - 1
        return hidden, read_at

    def _head(self, last: torch.Tensor, prompt: torch.Tensor | None) -> PreferenceOutput:
        """Hidden states at the read position [batch, H] and at the prompt end [batch, H] -> embeddings."""
        value = self.value_head(last).float()
        if self.head.kind == "bt":
            return PreferenceOutput(value.squeeze(-1), None)
        if self.head.l2:
            value = P.normalize_embedding(value)
        gate = None
        if self.prompt_head is not None:
            if prompt is None:
                raise ValueError("a gated GPM needs prompt_end (the index of the prompt's last token)")
            gate = P.eigenvalue_gate(self.prompt_head(prompt).float(), self.head.gate_variant, last.shape[-1])
        return PreferenceOutput(value, gate)

    def pair_scores(self, a: PreferenceOutput, b: PreferenceOutput) -> torch.Tensor:
        """s(a > b) for aligned rows [batch] (a and b answer the same prompts), with one gate per prompt."""
        if self.head.kind == "bt":
            return P.bt_score(a.value, b.value)
        gate = None if a.gate is None else P.prompt_gate(torch.stack([a.gate, b.gate], dim=-2))
        return P.preference_score(a.value, b.value, gate)

    def gradient_checkpointing_enable(self) -> None:
        self.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def hidden_size(config) -> int:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in ("hidden_size", "d_model", "dim", "n_embd"):
        if getattr(text, name, None):
            return int(getattr(text, name))
    raise ModelError(f"cannot find the hidden size in the {type(config).__name__}")


def read_positions(attention_mask: torch.Tensor, pool: str = "last") -> torch.Tensor:
    """Index of the last (or first) real token of each row, for left or right padding. [batch, L] -> [batch]."""
    mask = attention_mask.long()
    length = mask.shape[1]
    if pool == "first":
        return mask.argmax(dim=1)
    return length - 1 - mask.flip(dims=[1]).argmax(dim=1)


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
            full = sdpa_mask(**{**self.mask_kwargs, "batch_size": 1, "q_length": longest, "kv_length": longest,
                                "q_offset": 0, "kv_offset": 0, "allow_is_causal_skip": False,
                                "allow_is_bidirectional_skip": False})  # fmt: skip
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
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)  # fmt: skip
    dropped = [name for name in ("softcap", "s_aux", "position_bias") if kwargs.get(name) is not None]
    if dropped:  # unreachable with transformers' sdpa models today; never drop them silently
        raise ModelError(f"packed attention cannot apply {', '.join(dropped)}; disable packing (train.packing=false)")
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    bounds = bounds.tolist()
    parts = [
        torch.nn.functional.scaled_dot_product_attention(
            query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], attn_mask=mask, dropout_p=dropout, scale=scaling,
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
