"""BT reward statistics (OpenRLHF's normalize_reward) and TRL's center_rewards_coefficient."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from gpmctl.cli import app
from gpmctl.config import TinyBackbone, load_recipe
from gpmctl.errors import ConfigError
from gpmctl.models.build import tiny_backbone
from gpmctl.models.heads import HeadConfig
from gpmctl.models.io import load_model, save_model
from gpmctl.models.model import Hidden, PreferenceModel
from gpmctl.models.sources import load_tokenizer
from gpmctl.train.reward import pair_forward, train_reward_model


def test_center_rewards_adds_c_times_the_mean_squared_reward_sum_to_the_loss():
    tok = load_tokenizer("tiny")
    model = PreferenceModel(
        tiny_backbone(tok, TinyBackbone(hidden_size=16, intermediate_size=32, num_layers=1)),
        HeadConfig(kind="bt", dim=1, tau=1.0, l2=False),
    )
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(10, 16, generator=g)  # 5 pairs: chosen rows 0-4, rejected rows 5-9
    batch = {"hidden": Hidden(hidden), "margin": torch.zeros(5), "label": torch.ones(5)}
    loss, score, rewards = pair_forward(model, batch, tau=1.0, use_margin=False, center=0.25)
    r = hidden.double() @ model.value_head.weight.detach().double()[0]  # the reference: float64, written out
    rc, rr = r[:5], r[5:]
    want = -F.logsigmoid(rc - rr).mean() + 0.25 * ((rc + rr) ** 2).mean()
    assert ((rc + rr) ** 2).mean() > 0.01  # the term is not negligible here
    assert loss.item() == pytest.approx(want.item(), abs=1e-5)
    assert torch.allclose(rewards.double(), torch.stack([rc, rr], dim=-1), atol=1e-5)
    plain, _, _ = pair_forward(model, batch, tau=1.0, use_margin=False)
    assert plain.item() == pytest.approx((-F.logsigmoid(rc - rr).mean()).item(), abs=1e-5)


def test_center_rewards_is_a_bt_option():
    with pytest.raises(ConfigError, match="train.center_rewards_coefficient: needs a BT model"):
        load_recipe("recipes/cyclic_tiny_gpm.yaml", ["train.center_rewards_coefficient=0.01"])
    recipe = load_recipe("recipes/cyclic_tiny_gpm.yaml", ["model.kind=bt", "center_rewards_coefficient=0.01"])  # TRL's name, bare
    assert recipe.train.center_rewards_coefficient == 0.01


@pytest.fixture(scope="module")
def bt_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("bt_stats")
    recipe = load_recipe(
        "recipes/cyclic_tiny_gpm.yaml",
        [
            f"output_dir={root / 'bt'}",
            "model.kind=bt",
            "data.train=cyclic:train?num_prompts=12",
            "data.eval=cyclic:reworded?num_prompts=4",
            "model.tiny.num_layers=1",
            "train.max_steps=3",
            "train.batch_size=8",
            "train.center_rewards_coefficient=0.01",
        ],
    )
    return train_reward_model(recipe), root


def test_a_bt_run_saves_the_mean_and_std_of_its_eval_rewards(bt_run):
    from gpmctl.data.sources import read_source
    from gpmctl.models.embed import load_scorer

    result, root = bt_run
    head = json.loads((root / "bt" / "preference_head.json").read_text())
    assert json.loads((root / "bt" / "config.json").read_text())["preference_head"] == head
    scorer = load_scorer(str(root / "bt"), batch_size=16, max_length=128)
    records = list(read_source("cyclic:reworded?num_prompts=4"))
    _, rewards = scorer.pair_scores([r.prompt for r in records], [r.chosen for r in records], [r.rejected for r in records])
    assert head["reward_std"] > 0 and not head["normalize"]
    assert head["reward_mean"] == pytest.approx(float(rewards.mean()), abs=1e-5)
    assert head["reward_std"] == pytest.approx(float(rewards.reshape(-1).std()), abs=1e-5)
    assert result.final_metrics["reward_mean"] == head["reward_mean"]


def test_score_normalize_reports_standardised_rewards(bt_run, tmp_path):
    _, root = bt_run
    model = str(root / "bt")
    for name, answer in (("a", "jade"), ("b", "amber")):
        (tmp_path / f"{name}.jsonl").write_text(json.dumps({"prompt": "Which colour?", "response": answer}) + "\n")
    files = [str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")]
    runner = CliRunner()
    raw = json.loads(runner.invoke(app, ["score", *files, "-m", model]).stdout)
    result = runner.invoke(app, ["score", *files, "-m", model, "--normalize"])
    assert result.exit_code == 0, result.output
    normalized = json.loads(result.stdout)
    head = load_model(model).head
    for side in ("reward_a", "reward_b"):
        assert normalized[side] == pytest.approx((raw[side] - head.reward_mean) / head.reward_std, abs=1e-5)
    gpm = root / "gpm"
    save_model(
        PreferenceModel(
            tiny_backbone(load_tokenizer("tiny"), TinyBackbone(hidden_size=16, intermediate_size=32, num_layers=1)), HeadConfig()
        ),
        gpm,
        load_tokenizer("tiny"),
    )
    refused = runner.invoke(app, ["score", *files, "-m", str(gpm), "--normalize"])
    assert isinstance(refused.exception, ConfigError) and str(refused.exception).endswith("gpm is a GPM (no scalar reward)")


def test_report_to_tensorboard_logs_the_scalars_of_log_jsonl_through_accelerate(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    recipe = load_recipe(
        "recipes/cyclic_tiny_gpm.yaml",
        [
            f"output_dir={tmp_path / 'run'}",
            "data.train=cyclic:train?num_prompts=8",
            "data.eval=null",
            "model.tiny.num_layers=1",
            "train.max_steps=4",
            "train.batch_size=8",
            "train.logging_steps=2",
            "report_to=tensorboard",  # TRL's name, bare
        ],
    )
    train_reward_model(recipe)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    logged = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    train = [r for r in logged if r.get("event") == "train"]
    assert [r["step"] for r in train] == [2, 4]
    got = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert got == [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in train]


def test_report_to_names_a_missing_tracker_package_in_one_line(tmp_path, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else find_spec(name, *a))
    recipe = load_recipe(
        "recipes/cyclic_tiny_gpm.yaml",
        [f"output_dir={tmp_path / 'run'}", "data.train=cyclic:train?num_prompts=4", "train.report_to=wandb"],
    )
    with pytest.raises(ConfigError, match=r"train.report_to: wandb needs its package: pip install wandb"):
        train_reward_model(recipe)
    with pytest.raises(ConfigError, match="train.report_to: expected none or a comma-separated list"):
        load_recipe("recipes/cyclic_tiny_gpm.yaml", ["train.report_to=tensorbord"])
