"""The hybrid head (model.kind: gpm_bt): s(a > b) = tau (r_a - r_b) / bt_tau + <R(x) v_a, v_b>, against a float64
reference written out term by term; antisymmetric; BT with k = 0 and the GPM of its blocks with the scalar at zero."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from gpmctl.models.heads import HeadConfig, make_head
from gpmctl.models.preference import score_matrix as gpm_score_matrix


def reference(value: torch.Tensor, gate: torch.Tensor | None, tau: float, bt_tau: float) -> torch.Tensor:
    """S[i, j] by the definition, loops and float64."""
    K, k = value.shape[0], (value.shape[1] - 1) // 2
    S = torch.zeros(K, K, dtype=torch.float64)
    for i in range(K):
        for j in range(K):
            a, b = value[i].double(), value[j].double()
            s = tau * (a[0] - b[0]) / bt_tau
            for m in range(k):
                g = 1.0 if gate is None else float(gate[m])
                s += g * (a[1 + 2 * m] * b[2 + 2 * m] - a[2 + 2 * m] * b[1 + 2 * m])
            S[i, j] = s
    return S


@pytest.mark.parametrize("dim,gated", [(4, True), (6, False), (2, True)])
def test_hybrid_scores_equal_the_definition_and_are_antisymmetric(dim, gated):
    g = torch.Generator().manual_seed(dim)
    head = make_head(HeadConfig(kind="gpm_bt", dim=dim, gate=gated, tau=0.1, bt_tau=0.7))
    value = torch.randn(5, 1 + dim, generator=g, dtype=torch.float64)
    gate = torch.softmax(torch.randn(dim // 2, generator=g, dtype=torch.float64), -1) if gated else None
    S = head.score_matrix(value, gate)
    want = reference(value, gate, 0.1, 0.7)
    assert torch.allclose(S, want, atol=1e-12) and torch.allclose(S, -S.T, atol=1e-12)
    from gpmctl.models.heads import PreferenceOutput

    gates = None if gate is None else gate.expand(5, -1)
    pair = head.pair_score(PreferenceOutput(value, gates), PreferenceOutput(value.roll(1, 0), gates))
    assert torch.allclose(pair, torch.stack([want[i, (i - 1) % 5] for i in range(5)]), atol=1e-12)


def test_k_zero_is_bt_and_a_zero_scalar_is_the_gpm_of_the_blocks():
    g = torch.Generator().manual_seed(0)
    r = torch.randn(4, 1, generator=g, dtype=torch.float64)
    bt_only = make_head(HeadConfig(kind="gpm_bt", dim=0, tau=0.1, bt_tau=2.0)).score_matrix(r)
    assert torch.allclose(bt_only / 0.1, (r - r.T) / 2.0, atol=1e-12)  # P = sigmoid((r_a - r_b) / bt_tau)
    v = torch.randn(4, 4, generator=g, dtype=torch.float64)
    gate = torch.tensor([0.3, 0.7], dtype=torch.float64)
    blocks_only = make_head(HeadConfig(kind="gpm_bt", dim=4, gate=True)).score_matrix(
        torch.cat([torch.zeros(4, 1, dtype=torch.float64), v], 1), gate
    )
    assert torch.allclose(blocks_only, gpm_score_matrix(v, gate), atol=1e-12)


def test_outputs_normalise_the_blocks_only():
    head = make_head(HeadConfig(kind="gpm_bt", dim=4, l2=True))
    logits = torch.tensor([[3.0, 1.0, 2.0, 2.0, 4.0]])
    out = head.outputs(logits, None, 8).value
    assert out[0, 0] == 3.0 and torch.allclose(out[0, 1:].norm(), torch.tensor(1.0))


def test_a_hybrid_trains_saves_and_scores_through_every_command(tmp_path):
    from gpmctl.cli import app
    from gpmctl.config import load_recipe
    from gpmctl.models.io import load_model
    from gpmctl.train.reward import train_reward_model

    recipe = load_recipe(
        "recipes/cyclic_tiny_gpm.yaml",
        [
            f"output_dir={tmp_path / 'run'}",
            "model.kind=gpm_bt",
            "model.dim=4",
            "model.gate=true",
            "model.bt_tau=0.5",
            "data.train=cyclic:train?num_prompts=12",
            "data.eval=cyclic:reworded?num_prompts=4",
            "model.tiny.num_layers=1",
            "train.max_steps=4",
            "train.batch_size=8",
        ],
    )
    result = train_reward_model(recipe)
    head = json.loads((tmp_path / "run" / "preference_head.json").read_text())
    assert (head["kind"], head["dim"], head["bt_tau"], head["tau"], head["eos"]) == ("gpm_bt", 4, 0.5, 0.1, "overwrite")
    model = load_model(tmp_path / "run")
    assert model.value_head.weight.shape[0] == 5 and model.prompt_head.weight.shape[0] == 2
    assert result.final_metrics["accuracy"] is not None
    for name, answer in (("a", "jade"), ("b", "amber"), ("c", "silver")):
        (tmp_path / f"{name}.jsonl").write_text(json.dumps({"prompt": "Pick a colour", "response": answer}) + "\n")
    files = [str(tmp_path / f"{n}.jsonl") for n in "abc"]
    done = CliRunner().invoke(app, ["score", *files, "-m", str(tmp_path / "run")])
    assert done.exit_code == 0, done.output
    matrix = json.loads(done.stdout)["matrix"]
    assert all(abs(matrix[i][j] + matrix[j][i] - 1) < 1e-9 for i in range(3) for j in range(3))
