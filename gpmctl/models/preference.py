"""The preference math of the paper in one place: score, gate, probabilities and losses.

Notation (gpm_paper.md sections 1 and 3):
  v          preference embedding of one (prompt, response), shape [..., 2k]
  R          block-diagonal skew-symmetric operator, k blocks [[0, -1], [1, 0]]
  lambda(x)  optional prompt-dependent eigenvalue gate, shape [..., k], one weight per block
  s(a > b)   = <R(x) v_a, v_b> = sum_l lambda_l * (a[2l] * b[2l+1] - a[2l+1] * b[2l])
  P(a > b)   = sigmoid(s / tau)

The sign convention is the one of the authors' code (section 1.2), so released checkpoints give the
same numbers. For a Bradley-Terry model the "embedding" is a scalar reward r and s(a > b) = r_a - r_b.
Everything is vectorised; nothing here loops over pairs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _blocks(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split [..., 2k] into the even and odd coordinates of each 2-D block, each [..., k]."""
    if v.shape[-1] % 2:
        raise ValueError(f"a preference embedding needs an even dimension, got {v.shape[-1]}")
    return v[..., 0::2], v[..., 1::2]


def preference_score(a: torch.Tensor, b: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
    """s(a > b) for aligned pairs: a, b [batch, 2k], gate [batch, k] or None -> [batch]."""
    a_even, a_odd = _blocks(a)
    b_even, b_odd = _blocks(b)
    per_block = a_even * b_odd - a_odd * b_even  # [batch, k]
    if gate is not None:
        per_block = per_block * gate
    return per_block.sum(-1)


def score_matrix(v: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
    """All pairwise scores of K responses to one prompt (or a batch of prompts).

    v [..., K, 2k], gate [..., k] or None -> S [..., K, K] with S[i, j] = s(y_i > y_j).
    K responses cost K embeddings; the K^2 scores are 2k-dimensional arithmetic.
    """
    even, odd = _blocks(v)  # [..., K, k]
    if gate is not None:
        even = even * gate.unsqueeze(-2)
    half = even @ odd.transpose(-1, -2)  # half[i, j] = sum_l lambda_l a_i[2l] a_j[2l+1]
    return half - half.transpose(-1, -2)


def prompt_gate(gates: torch.Tensor) -> torch.Tensor:
    """One gate per prompt from the gates read in each of its K responses' passes: [..., K, k] -> [..., k].

    lambda(x) depends on the prompt only. A causal backbone reads the same prompt tokens in every pass,
    so the K gates are equal (up to float rounding) and their mean is each of them: the reference's
    numbers. Where they differ (left truncation cut the prompt differently), the mean is still one
    gate for all K, so s(a > b) = -s(b > a) holds by construction.
    """
    return gates.mean(dim=-2)


def bt_score(reward_a: torch.Tensor, reward_b: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry score r_a - r_b, [batch] x [batch] -> [batch]."""
    return reward_a - reward_b


def bt_score_matrix(rewards: torch.Tensor) -> torch.Tensor:
    """rewards [..., K] -> [..., K, K] with S[i, j] = r_i - r_j."""
    return rewards.unsqueeze(-1) - rewards.unsqueeze(-2)


def eigenvalue_gate(prompt_logits: torch.Tensor, variant: str = "softmax", hidden_size: int | None = None) -> torch.Tensor:
    """Block weights lambda(x) from the prompt head's logits [batch, k] -> [batch, k].

    "softmax" (default): softmax over blocks, as in every released checkpoint (variant A of section 1.3).
    "scaled_softmax": k * softmax(logits / sqrt(hidden_size)), the authors' later library variant B.
    """
    if variant == "softmax":
        return torch.softmax(prompt_logits, dim=-1)
    if variant == "scaled_softmax":
        if hidden_size is None:
            raise ValueError("the scaled_softmax gate needs hidden_size")
        k = prompt_logits.shape[-1]
        return k * torch.softmax(prompt_logits / hidden_size**0.5, dim=-1)
    raise ValueError(f"unknown gate variant {variant!r} (expected softmax or scaled_softmax)")


def normalize_embedding(v: torch.Tensor) -> torch.Tensor:
    """Unit L2 norm along the last dimension (section 1.4), applied before the gate."""
    return F.normalize(v, p=2, dim=-1)


def preference_probability(score: torch.Tensor, tau: float) -> torch.Tensor:
    """P(a > b) = sigmoid(s / tau); P(a > b) + P(b > a) = 1 exactly follows from s being antisymmetric."""
    return torch.sigmoid(score / tau)


def preference_loss(
    score: torch.Tensor,
    tau: float,
    margin: torch.Tensor | None = None,
    label: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-pair loss for s = s(chosen > rejected) (GPM score or BT reward difference), [batch] -> [batch].

    Hard labels: -log sigmoid((s - m) / tau)                       (code loss.py, eq. A.1 with P_D = 1)
    Soft labels p = P_D(chosen > rejected):
        -[p log sigmoid((s - m) / tau) + (1 - p) log sigmoid(-(s - m) / tau)]   (paper eq. A.1)
    One formula serves BT and GPM: only the meaning of s (and the usual tau) differs.
    """
    logit = score if margin is None else score - margin
    logit = logit / tau
    if label is None:
        return -F.logsigmoid(logit)
    return -(label * F.logsigmoid(logit) + (1 - label) * F.logsigmoid(-logit))
