"""The preference math against an independent float64 reference written the slow, obvious way."""

from __future__ import annotations

import math

import pytest
import torch

from gpmctl.models import preference as P

TOL = dict(rtol=1e-10, atol=1e-12)  # float64 vs float64: only summation-order rounding is allowed


def reference_operator(k: int, gate: list[float] | None = None) -> list[list[float]]:
    """R (2k x 2k) as the authors' code builds it: R[i, i+1] = -lambda, R[i+1, i] = +lambda for even i."""
    R = [[0.0] * (2 * k) for _ in range(2 * k)]
    for block in range(k):
        lam = 1.0 if gate is None else gate[block]
        i = 2 * block
        R[i][i + 1] = -lam
        R[i + 1][i] = lam
    return R


def reference_score(a: list[float], b: list[float], gate: list[float] | None = None) -> float:
    """s(a > b) = <R a, b> with plain Python loops."""
    k = len(a) // 2
    R = reference_operator(k, gate)
    Ra = [sum(R[i][j] * a[j] for j in range(2 * k)) for i in range(2 * k)]
    return sum(Ra[i] * b[i] for i in range(2 * k))


def reference_softmax(x: list[float]) -> list[float]:
    m = max(x)
    e = [math.exp(v - m) for v in x]
    return [v / sum(e) for v in e]


def reference_loss(s: float, tau: float, margin: float = 0.0, label: float = 1.0) -> float:
    z = (s - margin) / tau
    log_sig = lambda t: -math.log1p(math.exp(-t)) if t >= 0 else t - math.log1p(math.exp(t))  # noqa: E731
    return -(label * log_sig(z) + (1 - label) * log_sig(-z))


@pytest.mark.parametrize("dim", [2, 4, 6, 8])
@pytest.mark.parametrize("gated", [False, True])
def test_pair_score_matches_reference(dim, gated):
    g = torch.Generator().manual_seed(dim * 10 + gated)
    a, b = torch.randn(16, dim, generator=g, dtype=torch.float64), torch.randn(16, dim, generator=g, dtype=torch.float64)
    gate = torch.rand(16, dim // 2, generator=g, dtype=torch.float64) if gated else None
    got = P.preference_score(a, b, gate)
    want = torch.tensor(
        [reference_score(a[i].tolist(), b[i].tolist(), gate[i].tolist() if gated else None) for i in range(16)],
        dtype=torch.float64,
    )
    torch.testing.assert_close(got, want, **TOL)


def test_two_dim_score_is_the_reference_closed_form():
    # loss.py:GeneralPreferenceLoss: chosen[:,0]*reject[:,1] - chosen[:,1]*reject[:,0]
    a, b = torch.tensor([[0.3, -1.2]], dtype=torch.float64), torch.tensor([[2.0, 0.5]], dtype=torch.float64)
    assert P.preference_score(a, b).item() == pytest.approx(0.3 * 0.5 - (-1.2) * 2.0, abs=1e-15)


@pytest.mark.parametrize("gated", [False, True])
def test_score_matrix_matches_reference(gated):
    g = torch.Generator().manual_seed(7)
    v = torch.randn(3, 5, 6, generator=g, dtype=torch.float64)  # 3 prompts, K = 5 responses, 2k = 6
    gate = torch.rand(3, 3, generator=g, dtype=torch.float64) if gated else None
    S = P.score_matrix(v, gate)
    assert S.shape == (3, 5, 5)
    for p in range(3):
        for i in range(5):
            for j in range(5):
                want = reference_score(v[p, i].tolist(), v[p, j].tolist(), gate[p].tolist() if gated else None)
                assert S[p, i, j].item() == pytest.approx(want, rel=1e-10, abs=1e-12)


def test_antisymmetry_self_score_and_probabilities_sum_to_one():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(32, 8, generator=g, dtype=torch.float64), torch.randn(32, 8, generator=g, dtype=torch.float64)
    gate = torch.softmax(torch.randn(32, 4, generator=g, dtype=torch.float64), -1)
    s_ab, s_ba = P.preference_score(a, b, gate), P.preference_score(b, a, gate)
    torch.testing.assert_close(s_ab, -s_ba, rtol=0, atol=1e-15)
    assert P.preference_score(a, a, gate).abs().max().item() == 0.0
    p_ab, p_ba = P.preference_probability(s_ab, 0.1), P.preference_probability(s_ba, 0.1)
    torch.testing.assert_close(p_ab + p_ba, torch.ones_like(p_ab), rtol=0, atol=1e-15)
    S = P.score_matrix(a[:6], gate[0])
    torch.testing.assert_close(S, -S.T, rtol=0, atol=0)
    assert S.diagonal().abs().max().item() == 0.0


def test_gpm_with_one_block_and_constant_coordinate_reduces_to_bt():
    # Paper section 1.1: k = 1, v = [r, c] => s(i > j) = c * (r_i - r_j): a GPM contains every BT model.
    g = torch.Generator().manual_seed(3)
    r_i, r_j = torch.randn(20, generator=g, dtype=torch.float64), torch.randn(20, generator=g, dtype=torch.float64)
    c = 1.7
    v_i = torch.stack([r_i, torch.full_like(r_i, c)], -1)
    v_j = torch.stack([r_j, torch.full_like(r_j, c)], -1)
    torch.testing.assert_close(P.preference_score(v_i, v_j), c * P.bt_score(r_i, r_j), **TOL)
    torch.testing.assert_close(P.score_matrix(v_i)[:5, :5], c * P.bt_score_matrix(r_i[:5]), **TOL)


def test_gate_variants_match_reference():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(10, 4, generator=g, dtype=torch.float64)
    torch.testing.assert_close(
        P.eigenvalue_gate(logits), torch.tensor([reference_softmax(x) for x in logits.tolist()], dtype=torch.float64), **TOL
    )
    H = 64
    want = torch.tensor(
        [[4 * p for p in reference_softmax([v / math.sqrt(H) for v in x])] for x in logits.tolist()], dtype=torch.float64
    )
    torch.testing.assert_close(P.eigenvalue_gate(logits, "scaled_softmax", H), want, **TOL)
    with pytest.raises(ValueError):
        P.eigenvalue_gate(logits, "sparsemax")


def test_l2_normalisation_bounds_the_gated_score():
    g = torch.Generator().manual_seed(5)
    a = P.normalize_embedding(torch.randn(100, 8, generator=g, dtype=torch.float64) * 5)
    b = P.normalize_embedding(torch.randn(100, 8, generator=g, dtype=torch.float64) * 5)
    gate = P.eigenvalue_gate(torch.randn(100, 4, generator=g, dtype=torch.float64))
    torch.testing.assert_close(a.norm(dim=-1), torch.ones(100, dtype=torch.float64), rtol=0, atol=1e-12)
    s = P.preference_score(a, b, gate)
    assert (s.abs() <= gate.max(-1).values + 1e-12).all()  # |s| <= max_l lambda_l (Cauchy-Schwarz)


@pytest.mark.parametrize("with_margin", [False, True])
@pytest.mark.parametrize("soft", [False, True])
def test_loss_matches_reference(with_margin, soft):
    g = torch.Generator().manual_seed(6)
    s = torch.randn(50, generator=g, dtype=torch.float64) * 3
    margin = torch.rand(50, generator=g, dtype=torch.float64) if with_margin else None
    label = torch.rand(50, generator=g, dtype=torch.float64) if soft else None
    for tau in (0.1, 1.0):
        got = P.preference_loss(s, tau, margin, label)
        want = [
            reference_loss(s[i].item(), tau, margin[i].item() if with_margin else 0.0, label[i].item() if soft else 1.0)
            for i in range(50)
        ]
        torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), **TOL)


def test_soft_label_one_equals_hard_label_and_half_is_symmetric():
    s = torch.linspace(-5, 5, 11, dtype=torch.float64)
    torch.testing.assert_close(P.preference_loss(s, 0.1, label=torch.ones_like(s)), P.preference_loss(s, 0.1), **TOL)
    half = P.preference_loss(s, 0.1, label=torch.full_like(s, 0.5))
    torch.testing.assert_close(half, half.flip(0), **TOL)  # at p = 1/2 the loss does not care about the sign


def test_loss_is_stable_for_large_scores():
    s = torch.tensor([-1e4, 1e4], dtype=torch.float32)
    loss = P.preference_loss(s, 0.1)
    assert torch.isfinite(loss).all() and loss[1].item() == 0.0 and loss[0].item() == pytest.approx(1e5)


def test_odd_dimension_is_rejected():
    with pytest.raises(ValueError, match="even"):
        P.preference_score(torch.zeros(2, 3), torch.zeros(2, 3))
