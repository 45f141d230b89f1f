"""The GPO / SPPO objective in one place (gpm_paper.md section 9.1; paper section 5 and App. B, E.2).

Per prompt x the current policy pi_t drew K responses y_1..y_K and the judge scored every pair once:
    S [N, K, K]   S[n, i, j] = s(y_i > y_j | x_n), the judge's log-odds: P(y_i > y_j) = sigmoid(S_ij)
Each response y gets a regression target for its log-ratio against pi_t:
    GPO   target(y) = (1/beta) * s_hat(y > pi_t),   s_hat(y_i > pi_t) = (1/K) sum_j S_ij      eq. 5.2, 5.3
    SPPO  target(y) = (1/beta) * (P_hat(y > pi_t) - 1/2),  P_hat = (1/K) sum_j sigmoid(S_ij)
and the loss is the squared error, log Z_t(x) set to 0 because s(pi_t > pi_t) = 0 (eq. 5.3 and App. B;
for SPPO P(pi_t > pi_t) = 1/2 plays the same role). The sums run over all K including j = i
(s(y > y) = 0, P(y > y) = 1/2), as eq. 5.2 and the authors' compute_score_from_raw do.
"""

from __future__ import annotations

import torch


def opponent_score(S: torch.Tensor, loss: str) -> torch.Tensor:
    """Score of each response against the policy that drew them: S [..., K, K] -> [..., K].

    gpo:  s_hat(y_i > pi_t) = mean_j s(y_i > y_j)               (eq. 5.2, empirical over the K samples)
    sppo: P_hat(y_i > pi_t) - 1/2 = mean_j sigmoid(S_ij) - 1/2   (SPPO; the -1/2 is its log Z = 0)
    """
    if loss == "gpo":
        return S.mean(-1)
    if loss == "sppo":
        return torch.sigmoid(S).mean(-1) - 0.5
    raise ValueError(f"unknown loss {loss!r} (expected gpo or sppo)")


def regression_target(opponent: torch.Tensor, beta: float, clamp: float | None = None) -> torch.Tensor:
    """(1/beta) * (s_hat - log Z), log Z = 0 (eq. 5.3; MWU step pi_{t+1} ~ pi_t exp(s_hat / beta))."""
    target = opponent / beta
    return target if clamp is None else target.clamp(-clamp, clamp)


def log_ratio(logp: torch.Tensor, ref_logp: torch.Tensor, length: torch.Tensor | None = None, gamma: float = 1.0) -> torch.Tensor:
    """log(pi_theta(y|x) / pi_t(y|x)) from summed response-token log-probs, [B] -> [B].

    With `length` (response tokens |y|, [B]): divided by |y|^gamma, the LN-GPO variant (App. E.2).
    """
    ratio = logp - ref_logp
    if length is None:
        return ratio
    return ratio / length.to(ratio.dtype).clamp(min=1) ** gamma


def squared_loss(ratio: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over sequences of (log-ratio - target)^2 (eq. 5.3). A pair (y_w, y_l) contributes
    1/2 [(r_w - t_w)^2 + (r_l - t_l)^2] per sequence, as the authors' sppo trainer."""
    return (ratio - target).pow(2).mean()


def pair_indices(S: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The authors' pair per prompt: chosen = argmax, rejected = argmin of the aggregate score, [N, K, K] -> ([N], [N]).

    Their aggregate mean_j (T_ij - T_ji) is a positive multiple of mean_j S_ij for a skew-symmetric table;
    they pick the pair by it for both losses (SPPO included, although P_hat may order responses differently).
    """
    aggregate = S.mean(-1)
    return aggregate.argmax(-1), aggregate.argmin(-1)


def score_table(raw: torch.Tensor, tau: float, kind: str, scale: str = "logit") -> torch.Tensor:
    """Judge scores [..., K, K] (GPM s or BT r_i - r_j, before tau) -> the table S of log-odds used above.

    logit:   S = raw / tau, so that P(y_i > y_j) = sigmoid(S_ij) is the judge's probability.
    authors: S = T_ij - T_ji with T = raw / tau (GPM) or raw (BT), the authors' compute_score_from_raw:
             2 raw / tau for a GPM, 2 (r_i - r_j) for BT (gpm_paper.md 9.2, step 3).
    """
    if scale == "logit":
        return raw / tau
    if scale == "authors":
        return 2 * raw / (1.0 if kind == "bt" else tau)
    raise ValueError(f"unknown score scale {scale!r} (expected logit or authors)")
