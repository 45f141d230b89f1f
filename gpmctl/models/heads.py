"""The two preference heads: what a hidden state becomes, and how two or K responses are scored.

    GPMHead     value  v = W_v h_read in R^2k (L2-normalised when `l2`), gate lambda(x) = softmax(W_p h_prompt)
                s(a > b) = <R(x) v_a, v_b>         (gpmctl.models.preference.preference_score / score_matrix)
    BTHead      value  r = W_v h_read in R          s(a > b) = r_a - r_b
    HybridHead  value  (r, v) in R^(1 + 2k)         s(a > b) = tau (r_a - r_b) / bt_tau + <R(x) v_a, v_b>
                (kind gpm_bt: transitive structure to the scalar, cyclic to the blocks; s / tau puts each part
                under its own temperature, bt_tau and tau)

A head is its settings (`HeadConfig`, saved beside the weights as preference_head.json) plus that math, so
`model.head.tau`, `model.head.kind` and `model.head.score_matrix(...)` are one object. The weights
themselves (`value_head.weight` [2k or 1, H], `prompt_head.weight` [k, H], the names of the authors'
released checkpoints) are layers of `PreferenceModel`, which hands their outputs to `head.outputs`.
Every command that scores (training loss and eval, `score`, `eval`, the GPO judge) goes through
`pair_score` or `score_matrix`: no caller asks which kind of head it holds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from gpmctl.errors import ModelError
from gpmctl.models import preference as P

HEAD_FILE = "preference_head.json"
HEAD_FORMAT = "gpmctl-preference-head"


@dataclass
class HeadConfig:
    """Everything a loader needs besides the backbone, saved as preference_head.json beside the weights."""

    kind: str = "gpm"  # "gpm" | "bt" | "gpm_bt"
    dim: int = 2  # GPM embedding dimension 2k (gpm_bt: its blocks', 0 allowed); 1 for BT
    gate: bool = False
    gate_variant: str = "softmax"
    l2: bool = True
    tau: float = 0.1
    pool: str = "last"  # "last" real token | "first" token
    eos: str = "overwrite"  # how the tokenizer side puts EOS at the read position (see data.tokenize)
    gate_prompt: str = "first_turn"
    reward_mean: float | None = None
    """BT: mean and std of the rewards on the training run's eval set (OpenRLHF's mean/std)."""
    reward_std: float | None = None
    normalize: bool = False
    """BT: report (r - reward_mean) / reward_std (OpenRLHF's normalize_reward, `gpmctl score --normalize`)."""
    bt_tau: float = 1.0
    """gpm_bt: the temperature of the scalar part, P = sigmoid((r_a - r_b) / bt_tau + <R v_a, v_b> / tau)."""

    @classmethod
    def from_model_config(cls, m) -> "HeadConfig":
        """From a recipe's ModelConfig (gpmctl.config.ModelConfig)."""
        return cls(
            kind=m.kind,
            dim=1 if m.kind == "bt" else m.dim,
            gate=m.gate,
            gate_variant=m.gate_variant,
            l2=m.l2,
            tau=m.resolved_tau(),
            pool=m.pool,
            eos=m.resolved_eos(),
            gate_prompt=m.gate_prompt,
            bt_tau=m.bt_tau,
        )

    def normalization_problem(self) -> str | None:
        """Why rewards cannot be normalised (`normalize`) with this head, as "the model <...>"; None when they can."""
        if self.kind != "bt":
            return (
                "is a GPM (no scalar reward)" if self.kind == "gpm" else f"is a {self.kind} model (its scores are not one reward)"
            )
        if self.reward_mean is None or not self.reward_std:
            return "has no saved reward statistics (train it again with eval pairs)"
        return None

    def to_json(self) -> dict:
        return {"format": HEAD_FORMAT, "version": 1, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, d: dict, source: str = "") -> "HeadConfig":
        if d.get("format") != HEAD_FORMAT:
            raise ModelError(f"{source}: not a gpmctl preference head file")
        known = {f.name for f in dataclasses.fields(HeadConfig)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class PreferenceOutput:
    """What a head gives for a batch of sequences (float32)."""

    value: torch.Tensor  # [batch, 2k] (GPM) or [batch] (BT)
    gate: torch.Tensor | None  # [batch, k] or None: the gate read in each sequence's pass


class PreferenceHead(HeadConfig):
    """A head's settings and its math; `make_head` gives the GPMHead or BTHead a HeadConfig describes."""

    @property
    def value_rows(self) -> int:
        """Rows of value_head.weight."""
        raise NotImplementedError

    def outputs(self, value_logits: torch.Tensor, gate_logits: torch.Tensor | None, hidden_size: int) -> PreferenceOutput:
        """value_head(h_read) [n, rows] and prompt_head(h_prompt) [n, k] (or None) -> PreferenceOutput."""
        raise NotImplementedError

    def pair_score(self, a: PreferenceOutput, b: PreferenceOutput) -> torch.Tensor:
        """s(a > b) for aligned rows [n] (a and b answer the same prompts, one gate per prompt)."""
        raise NotImplementedError

    def prompt_gate(self, gates: torch.Tensor | None) -> torch.Tensor | None:
        """The gates read in the K passes of a prompt's responses [..., K, k] -> one gate per prompt [..., k]."""
        return None if gates is None else P.prompt_gate(gates)

    def score_matrix(self, value: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
        """K responses per prompt -> S [..., K, K] with S[i, j] = s(y_i > y_j).
        value [..., K, 2k] (GPM) or [..., K] (BT); gate: one per prompt [..., k] (`prompt_gate`) or None."""
        raise NotImplementedError


class GPMHead(PreferenceHead):
    """The General Preference Model: embeddings in R^2k scored by the skew-symmetric operator."""

    @property
    def value_rows(self) -> int:
        return self.dim

    def outputs(self, value_logits: torch.Tensor, gate_logits: torch.Tensor | None, hidden_size: int) -> PreferenceOutput:
        value = P.normalize_embedding(value_logits) if self.l2 else value_logits
        gate = None if gate_logits is None else P.eigenvalue_gate(gate_logits, self.gate_variant, hidden_size)
        return PreferenceOutput(value, gate)

    def pair_score(self, a: PreferenceOutput, b: PreferenceOutput) -> torch.Tensor:
        gate = None if a.gate is None else P.prompt_gate(torch.stack([a.gate, b.gate], dim=-2))
        return P.preference_score(a.value, b.value, gate)

    def score_matrix(self, value: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
        return P.score_matrix(value, gate)


class BTHead(PreferenceHead):
    """The Bradley-Terry reward model: one scalar reward per response."""

    @property
    def value_rows(self) -> int:
        return 1

    def outputs(self, value_logits: torch.Tensor, gate_logits: torch.Tensor | None, hidden_size: int) -> PreferenceOutput:
        reward = value_logits.squeeze(-1)
        if self.normalize:
            reward = (reward - self.reward_mean) / self.reward_std
        return PreferenceOutput(reward, None)

    def pair_score(self, a: PreferenceOutput, b: PreferenceOutput) -> torch.Tensor:
        return P.bt_score(a.value, b.value)

    def prompt_gate(self, gates: torch.Tensor | None) -> None:
        return None

    def score_matrix(self, value: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
        return P.bt_score_matrix(value)


class HybridHead(PreferenceHead):
    """A scalar reward and k skew-symmetric blocks (kind gpm_bt): value [.., 1 + 2k] holds r then v. Antisymmetric;
    with k = 0 it is BT (temperature bt_tau); with the scalar row at zero it is the GPM of its blocks."""

    @property
    def value_rows(self) -> int:
        return 1 + self.dim

    def outputs(self, value_logits: torch.Tensor, gate_logits: torch.Tensor | None, hidden_size: int) -> PreferenceOutput:
        r, v = value_logits[..., :1], value_logits[..., 1:]
        if self.l2 and self.dim:
            v = P.normalize_embedding(v)
        gate = None if gate_logits is None else P.eigenvalue_gate(gate_logits, self.gate_variant, hidden_size)
        return PreferenceOutput(torch.cat([r, v], dim=-1), gate)

    def _scale(self) -> float:
        return self.tau / self.bt_tau

    def pair_score(self, a: PreferenceOutput, b: PreferenceOutput) -> torch.Tensor:
        gate = None if a.gate is None else P.prompt_gate(torch.stack([a.gate, b.gate], dim=-2))
        scalar = self._scale() * (a.value[..., 0] - b.value[..., 0])
        return scalar + (P.preference_score(a.value[..., 1:], b.value[..., 1:], gate) if self.dim else 0.0)

    def score_matrix(self, value: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
        r = value[..., 0]
        scalar = self._scale() * (r.unsqueeze(-1) - r.unsqueeze(-2))
        return scalar + (P.score_matrix(value[..., 1:], gate) if self.dim else 0.0)


HEADS = {"gpm": GPMHead, "bt": BTHead, "gpm_bt": HybridHead}


def make_head(config: HeadConfig) -> PreferenceHead:
    """The head a HeadConfig describes (a head passes through); impossible settings are a ModelError."""
    if isinstance(config, PreferenceHead):
        return config
    if config.kind not in HEADS:
        raise ModelError(f"unknown model kind {config.kind!r} (expected gpm, bt or gpm_bt)")
    if config.kind == "gpm" and (config.dim < 2 or config.dim % 2):
        raise ModelError(f"a GPM needs an even embedding dimension >= 2, got {config.dim}")
    if config.kind == "gpm_bt" and (config.dim < 0 or config.dim % 2 or (config.gate and not config.dim)):
        raise ModelError(f"a gpm_bt head needs an even number of block dimensions >= 0 (> 0 with a gate), got {config.dim}")
    if config.normalize and (problem := config.normalization_problem()):
        raise ModelError(f"normalize: the model {problem}")
    return HEADS[config.kind](**dataclasses.asdict(config))
