"""`gpmctl plot`: PNG files for training curves, GPM embedding planes and reliability diagrams."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

pytest.importorskip("matplotlib")

from gpmctl.cli import app  # noqa: E402
from gpmctl.config import load_recipe  # noqa: E402
from gpmctl.train.reward import train_reward_model  # noqa: E402


def test_plot_writes_the_three_pictures(tmp_path):
    recipe = load_recipe(
        "recipes/cyclic_tiny_gpm.yaml",
        [
            f"output_dir={tmp_path / 'run'}",
            "data.train=cyclic:train?num_prompts=20",
            "data.eval=cyclic:test?num_prompts=20",
            "train.max_steps=6",
            "train.logging_steps=2",
            "train.eval_steps=3",
        ],
    )
    run = train_reward_model(recipe).output_dir
    examples = tmp_path / "examples.jsonl"
    examples.write_text("".join(json.dumps({"p": p / 10}) + "\n" for p in range(11)))
    result = CliRunner().invoke(app, ["plot", str(run), "--data", "cyclic:test?num_prompts=20", "--examples", str(examples)])
    assert result.exit_code == 0, result.output
    plots = json.loads(result.stdout.strip().splitlines()[-1])["plots"]
    assert [p.rsplit("/", 1)[-1] for p in plots] == ["training.png", "embeddings.png", "reliability.png"]
    for p in plots:
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
