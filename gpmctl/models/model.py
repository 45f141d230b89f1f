"""The preference model shared by every command: any Hugging Face backbone plus a BT or GPM head, in two stages.

    encode(input_ids, attention_mask, prompt_end)   -> Hidden     the backbone's hidden states at the read
                                                                  position (last real token = EOS, or the
                                                                  first token) and at the prompt's last token
    apply_head(hidden)                              -> PreferenceOutput
        value  [batch, 2k] GPM embedding (L2-normalised when `l2`) or [batch] BT reward
        gate   [batch, k]  prompt-dependent block weights, or None
    forward(...) = apply_head(encode(...)); forward(hidden=Hidden) skips the backbone

Tokens reach `encode` padded ([batch, L], left or right: positions come from the attention mask, as in the
reference) or packed into one row (input_ids [1, T] with its PackedRow, after `enable_packing`:
gpmctl/models/packing.py), where sequences that start with the same prompt compute it once. Cached backbone
features (gpmctl/train/features.py) are a third way to get the first stage's output. Scores of pairs and K x K matrices come from the head (gpmctl/models/heads.py).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import nn

from gpmctl.errors import ModelError
from gpmctl.models import packing
from gpmctl.models.heads import HeadConfig, PreferenceHead, PreferenceOutput, make_head


@dataclass
class Hidden:
    """The backbone's output that a head reads: read [n, H] at each sequence's read position, prompt [n, H] at
    its prompt's last token (None when no gate reads it)."""

    read: torch.Tensor
    prompt: torch.Tensor | None = None


class PreferenceModel(nn.Module):
    """A backbone (`transformers.AutoModel`, decoder or encoder) with a preference head.

    Parameter names follow the authors' released checkpoints: `value_head.weight` [2k or 1, H] and
    `prompt_head.weight` [k, H], both without bias; `self.head` is the head's settings and math.
    """

    def __init__(self, backbone: nn.Module, head: HeadConfig, init_std: float | None = None):
        super().__init__()
        self.head: PreferenceHead = make_head(head)
        self.backbone = backbone
        hidden = hidden_size(backbone.config)
        self.value_head = nn.Linear(hidden, self.head.value_rows, bias=False)
        self.prompt_head = nn.Linear(hidden, self.head.dim // 2, bias=False) if self.head.gate else None
        std = init_std if init_std is not None else 1.0 / (hidden + 1)  # reference init, not 1/sqrt(H)
        for layer in (self.value_head, self.prompt_head):
            if layer is not None:
                nn.init.normal_(layer.weight, mean=0.0, std=std)
                layer.to(next(backbone.parameters()).dtype)
        base = self.base_model
        if self.head.gate and not any(getattr(module, "is_causal", False) for module in base.modules()):
            # The gate reads the hidden state at the prompt's last token; a bidirectional encoder mixes the
            # response into it, so the two responses of one prompt would get different gates.
            raise ModelError(
                f"a gate needs a causal decoder backbone; {type(base).__name__} is a bidirectional encoder "
                "(set model.gate: false)"
            )
        self.takes_position_ids = "position_ids" in inspect.signature(base.forward).parameters

    @property
    def base_model(self) -> nn.Module:
        """The backbone without a peft (LoRA) wrapper."""
        return self.backbone.get_base_model() if hasattr(self.backbone, "get_base_model") else self.backbone

    def enable_packing(self) -> bool:
        """Let `encode` take packed rows (`row`); False where the backbone cannot (gpmctl.models.packing)."""
        return packing.enable_packing(self.backbone)

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        prompt_end: torch.Tensor | None = None,
        row: packing.PackedRow | None = None,
    ) -> Hidden:
        """Stage one: the hidden states the head reads.

        Padded: input_ids, attention_mask [batch, L]. Packed (after `enable_packing`): input_ids [1, T] with its
        `row` (gpmctl.models.packing.PackedRow: sequences one after another, or groups sharing a prompt), no
        attention_mask.
        prompt_end [batch]: index of each prompt's last token, in the same (padded or packed) coordinates."""
        if row is not None:
            if not packing.is_packed(self.backbone):
                raise ValueError("a packed batch needs model.enable_packing() first")
            # An all-ones mask: no padding, and transformers does not infer sequences from the position ids
            # (its packed-sequence mask knows nothing of shared prompts); each block's mask comes from the row.
            hidden = self.backbone(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                position_ids=row.position_ids,
                gpmctl_row=row,
            ).last_hidden_state[0]
            read_at = row.first if self.head.pool == "first" else row.last
            return Hidden(hidden[read_at], hidden[prompt_end] if prompt_end is not None else None)
        kwargs = {}
        if self.takes_position_ids:  # positions count real tokens only, so left padding changes nothing
            kwargs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        read = hidden[rows, read_positions(attention_mask, self.head.pool)]
        return Hidden(read, hidden[rows, prompt_end] if prompt_end is not None else None)

    def apply_head(self, hidden: Hidden) -> PreferenceOutput:
        """Stage two: hidden states [n, H] -> values (and gates), float32."""
        dtype = self.value_head.weight.dtype
        gate_logits = None
        if self.prompt_head is not None:
            if hidden.prompt is None:
                raise ValueError("a gated GPM needs prompt_end (the index of the prompt's last token)")
            gate_logits = self.prompt_head(hidden.prompt.to(dtype)).float()
        return self.head.outputs(self.value_head(hidden.read.to(dtype)).float(), gate_logits, hidden.read.shape[-1])

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        prompt_end: torch.Tensor | None = None,
        row: packing.PackedRow | None = None,
        hidden: Hidden | None = None,
    ) -> PreferenceOutput:
        """`apply_head(encode(tokens))`, or `apply_head(hidden)` for hidden states computed before (cached features)."""
        if hidden is None:
            hidden = self.encode(input_ids, attention_mask, prompt_end, row)
        return self.apply_head(hidden)

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
