"""docs/results_grid.py, the fair BT / GPM / hybrid protocol: its runs are train-rm's frozen-backbone runs, its
splits are disjoint by prompt, its selection never sees the test set, and its tests against BT count right."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from gpmctl.config import load_recipe
from gpmctl.data.tokenize import SequenceEncoder
from gpmctl.models.build import build_model
from gpmctl.models.sources import load_tokenizer
from gpmctl.train.features import cached_features
from gpmctl.train.reward import load_pairs, train_reward_model
from tests.test_eval_official_rules import rmbench_data

spec = importlib.util.spec_from_file_location("results_grid", Path(__file__).parents[1] / "docs" / "results_grid.py")
grid = importlib.util.module_from_spec(spec)
sys.modules["results_grid"] = grid  # dataclasses look their module up
spec.loader.exec_module(grid)

SMALL = [
    "data.train=cyclic:train?num_prompts=24",
    "model.tiny.hidden_size=32",
    "model.tiny.intermediate_size=64",
    "model.tiny.num_layers=2",
    "model.freeze_backbone=true",
    "train.batch_size=8",
    "train.epochs=3",
    "train.lr=1e-2",
    "data.eval_fraction=0.25",
    "train.eval_steps=null",  # once an epoch, as the grid evaluates
]


@pytest.fixture(autouse=True)
def feature_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GPMCTL_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("head", ["bt", "gpm4-gate-l2", "hyb2"])
def test_a_grid_run_is_the_train_rm_run_that_keeps_its_best_epoch(tmp_path, head):
    overrides = [*SMALL, *grid.HEADS[head], "train.keep_best=true", f"output_dir={tmp_path / 'rm'}", "train.weight_decay=0.1"]
    recipe = load_recipe("recipes/cyclic_tiny_gpm.yaml", overrides)
    train, val = load_pairs(
        recipe, SequenceEncoder(load_tokenizer("tiny"), recipe.data.max_length, "overwrite", "first_turn", "left")
    )
    reference = train_reward_model(recipe, overwrite=True, save=False, pairs=(train, val))

    backbone_model = build_model(recipe.model, load_tokenizer("tiny"), recipe.train.seed)
    pad = load_tokenizer("tiny").pad_token_id
    pairs = train + val
    features = cached_features(backbone_model, [p.chosen for p in pairs] + [p.rejected for p in pairs], pad)
    data = grid.Data(
        [], features.rows(list(range(len(pairs)))), features.rows(list(range(len(pairs), 2 * len(pairs)))), pairs, [], features
    )
    model, best = grid.train_head(
        recipe, backbone_model.backbone, data.pairs(list(range(len(train)))), data.pairs(list(range(len(train), len(pairs)))), val
    )

    assert best["step"] == reference.best_metrics["step"]
    for key in ("accuracy", "loss", "mean_prob"):
        assert best["metrics"][key] == pytest.approx(reference.final_metrics[key], abs=1e-6)
    for name, weight in reference.model.named_parameters():
        if name.endswith("_head.weight"):
            torch.testing.assert_close(dict(model.named_parameters())[name], weight, atol=1e-6, rtol=0)


def test_splits_are_disjoint_by_prompt_and_move_with_the_seed():
    recipe = load_recipe("recipes/cyclic_tiny_gpm.yaml", ["data.train=cyclic:train?num_prompts=60"])
    from gpmctl.data.sources import read_source

    records = list(read_source(recipe.data.train))
    data = grid.Data(records, None, None, [], [], None)
    splits = {seed: data.split(0.2, seed) for seed in (1, 2)}
    for train, val, test in splits.values():
        assert sorted(train + val + test) == list(range(len(records)))
        prompts = [{json.dumps(records[i].prompt) for i in part} for part in (train, val, test)]
        assert not (prompts[0] & prompts[1] or prompts[0] & prompts[2] or prompts[1] & prompts[2])
        assert 0.1 < len(test) / len(records) < 0.3 and 0.1 < len(val) / (len(records) - len(test)) < 0.3
    assert splits[1][2] != splits[2][2]


def test_the_same_trials_for_every_head_and_the_recipe_default_first():
    settings = grid.trials(6, 1e-3)
    assert settings == grid.trials(6, 1e-3) and len(set(settings)) == 6
    assert settings[0] == grid.Trial(1e-3, 0.0, None)
    assert all(
        1e-4 <= t.lr <= 1e-2 and t.weight_decay in (0.0, 0.01, 0.1) and t.tau in (0.03, 0.1, 0.3, 1.0) for t in settings[1:]
    )


def test_mcnemar_counts_discordant_pairs_over_seeds():
    only_head, only_bt, p = grid.mcnemar(["1101", "10"], ["1000", "01"])
    assert (only_head, only_bt) == (3, 1)
    assert p == pytest.approx(0.625)  # two-sided exact binomial, 4 discordant pairs, 3 one way: 2 * 5/16
    assert grid.paired_t([0.5, 0.6], [0.5, 0.6]) is None
    assert grid.paired_t([0.6, 0.7, 0.65], [0.5, 0.6, 0.56]) < 0.01


def test_the_grid_end_to_end_selects_on_validation_and_scores_every_rmbench_row(tmp_path, capsys):
    rows, _ = rmbench_data(tmp_path / "rm-bench", "per_domain")
    out = tmp_path / "grid.jsonl"
    overrides = [*SMALL, f"evaluate.rmbench={tmp_path / 'rm-bench'}", "evaluate.rmbench_limit=1"]
    grid.run_grid("recipes/cyclic_tiny_gpm.yaml", [1, 2], out, overrides, ["bt", "gpm2", "hyb2-gate"], 3)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["head"], r["seed"]) for r in records] == [(h, s) for s in (1, 2) for h in ("bt", "gpm2", "hyb2-gate")]
    for r in records:
        assert r["rmbench"]["rows"] == len(rows)  # every row, whatever evaluate.rmbench_limit says
        assert r["trials_validation_accuracy"][r["trial"]] == max(r["trials_validation_accuracy"]) == r["validation"]["accuracy"]
        assert (
            len(r["test"]["correct"]) == r["pairs"]["test"]
            and r["test"]["accuracy"] == r["test"]["correct"].count("1") / r["pairs"]["test"]
        )
    # A second run continues: nothing left to do.
    grid.run_grid("recipes/cyclic_tiny_gpm.yaml", [1, 2], out, overrides, ["bt", "gpm2", "hyb2-gate"], 3)
    assert len(out.read_text().splitlines()) == 6
    grid.print_table([str(out)])
    table = capsys.readouterr().out
    assert "| tiny | gpm2 | 2 |" in table and "| tiny | hyb2-gate | 2 |" in table
