"""The preference model shared by every command: any Hugging Face backbone plus a BT or GPM head.

    PreferenceModel(input_ids, attention_mask, prompt_end) -> PreferenceOutput
        value  [batch, 2k] GPM embedding (L2-normalised when `l2`) or [batch] BT reward
        gate   [batch, k]  prompt-dependent block weights, or None

The embedding is read at the last real token of each row (left or right padding both work: positions
come from the attention mask, as in the reference). Scores of pairs and K x K matrices come from
`gpmctl.models.preference`; this module only turns token ids into embeddings.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from gpmctl.errors import ModelError
from gpmctl.models import preference as P

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
        self._takes_position_ids = "position_ids" in inspect.signature(base.forward).parameters

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_end: torch.Tensor | None = None
    ) -> PreferenceOutput:
        """input_ids, attention_mask [batch, L]; prompt_end [batch] (index of the prompt's last token)."""
        kwargs = {}
        if self._takes_position_ids:  # positions count real tokens only, so left padding changes nothing
            kwargs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        read_at = read_positions(attention_mask, self.head.pool)
        value = self.value_head(hidden[rows, read_at]).float()
        if self.head.kind == "bt":
            return PreferenceOutput(value.squeeze(-1), None)
        if self.head.l2:
            value = P.normalize_embedding(value)
        gate = None
        if self.prompt_head is not None:
            if prompt_end is None:
                raise ValueError("a gated GPM needs prompt_end (the index of the prompt's last token)")
            logits = self.prompt_head(hidden[rows, prompt_end]).float()
            gate = P.eigenvalue_gate(logits, self.head.gate_variant, hidden.shape[-1])
        return PreferenceOutput(value, gate)

    def pair_scores(self, a: PreferenceOutput, b: PreferenceOutput) -> torch.Tensor:
        """s(a > b) for aligned rows [batch]. The gate of `a` (same prompt as `b`) is used, as in the reference."""
        if self.head.kind == "bt":
            return P.bt_score(a.value, b.value)
        return P.preference_score(a.value, b.value, a.gate)

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
