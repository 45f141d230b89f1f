"""The hard shell of `gpmctl train-gpo`: a bad recipe key or value, a missing judge, a bad prompt file or a
resume whose recipe changed how the saved samples were made is exit code 2 and one stderr line naming the
file and key (or line and field), with nothing in output_dir written or changed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from shell import assert_one_line_error, run, snapshot

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "recipes" / "gpo_tiny.yaml")


@pytest.fixture(scope="module")
def judge(tmp_path_factory) -> Path:
    """An untrained tiny GPM folder (instant): the shell is under test, not the judge."""
    from gpmctl.config import ModelConfig, TinyBackbone
    from gpmctl.models.build import build_model
    from gpmctl.models.io import save_model
    from gpmctl.models.sources import load_tokenizer

    tok = load_tokenizer("tiny")
    tiny = TinyBackbone(hidden_size=32, num_layers=1, intermediate_size=64, initializer_range=0.3)
    cfg = ModelConfig(kind="gpm", dim=8, tau=0.1, tiny=tiny)
    return save_model(build_model(cfg, tok, seed=0), tmp_path_factory.mktemp("judge") / "gpm", tok)


def _small(judge: Path, out: Path) -> list[str]:
    """gpo_tiny at its smallest: 4 prompts, K = 3, one iteration, no warm-up (a run takes about 5 s)."""
    return [
        f"output_dir={out}",
        f"judge.model={judge}",
        "judge.train_recipe=null",
        "data.max_prompts=4",
        "data.max_eval_prompts=2",
        "policy.tiny.hidden_size=32",
        "policy.tiny.num_layers=1",
        "policy.tiny.intermediate_size=64",
        "policy.warmup.steps=0",
        "objective.iterations=1",
        "eval.samples=2",
        "train.epochs=1",
        "train.batch_size=8",
        "generation.k=3",
    ]


def _prepared(tmp_path: Path) -> dict[str, str]:
    """A run folder that already holds a file, and prompt files good and bad."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("my notes on this run\n")
    files = {
        "good.jsonl": b'{"prompt": "name a colour"}\n',
        "empty.jsonl": b"",
        "latin1.jsonl": b'{"prompt": "name a colour"}\n{"prompt": "caf\xe9"}\n',
        "number.jsonl": b'{"prompt": "name a colour"}\n{"prompt": 5}\n',
        "cut.jsonl": b'{"prompt": "name a colour"}\n{"prompt": "na\n',
        "bad_base.yaml": b"kind: gpo\nbase: nowhere_recipe\n",
        "broken.yaml": b"kind: gpo\njudge: [\n",
        "broken_base.yaml": b"kind: gpo\nbase: broken.yaml\n",
        "latin1.yaml": b"kind: gpo\noutput_dir: caf\xe9\n",
        "pickled_policy/config.json": b'{"model_type": "llama"}',
        "pickled_policy/pytorch_model.bin": b"a pickle gpmctl must never open",
    }
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(content)
    return {"out": str(out), "tmp": str(tmp_path), "tiny": TINY}


RECIPE_CASES = {
    # name: (recipe, overrides with {tmp} / {out}; needles), after the smallest-run overrides
    "k-1": ("{tiny}", ["generation.k=1"], ["gpo_tiny.yaml", "generation.k", "got 1"]),
    "train-batch-0": ("{tiny}", ["train.batch_size=0"], ["gpo_tiny.yaml", "train.batch_size"]),
    "generation-batch-0": ("{tiny}", ["generation.batch_size=0"], ["gpo_tiny.yaml", "generation.batch_size"]),
    "judge-batch-0": ("{tiny}", ["judge.batch_size=0"], ["gpo_tiny.yaml", "judge.batch_size"]),
    "warmup-batch-0": ("{tiny}", ["policy.warmup.batch_size=0"], ["gpo_tiny.yaml", "policy.warmup.batch_size"]),
    "logging-steps-0": ("{tiny}", ["train.logging_steps=0"], ["gpo_tiny.yaml", "train.logging_steps"]),
    "top-p-0": ("{tiny}", ["generation.top_p=0"], ["gpo_tiny.yaml", "generation.top_p"]),
    "epochs-0": ("{tiny}", ["train.epochs=0"], ["gpo_tiny.yaml", "train.epochs"]),
    "max-prompts-0": ("{tiny}", ["data.max_prompts=0"], ["gpo_tiny.yaml", "data.max_prompts"]),
    "too-many-items": (
        "{tiny}",
        ["policy.warmup.num_items=40", "policy.warmup.item_weights=null"],
        ["gpo_tiny.yaml", "policy.warmup.num_items"],
    ),
    "beta-negative": ("{tiny}", ["objective.beta=-1"], ["gpo_tiny.yaml", "objective.beta"]),
    "beta-infinite": ("{tiny}", ["objective.beta=.inf"], ["gpo_tiny.yaml", "objective.beta"]),
    "unknown-key": ("{tiny}", ["objective.betta=1"], ["gpo_tiny.yaml", "objective.betta"]),
    "judge-missing": ("{tiny}", ["judge.model={tmp}/no_judge"], ["gpo_tiny.yaml", "judge.model", "no_judge"]),
    "judge-recipe-unknown": (
        "{tiny}",
        ["judge.model={tmp}/no_judge", "judge.train_recipe=nowhere_recipe"],
        ["gpo_tiny.yaml", "judge.train_recipe", "nowhere_recipe"],
    ),
    "judge-recipe-bad-value": (
        "{tiny}",
        ["judge.model={tmp}/no_judge", "judge.train_recipe=cyclic_tiny_gpm", "judge.train_overrides=[model.dim=3]"],
        ["gpo_tiny.yaml", "judge.train_recipe", "model.dim"],
    ),
    "prompts-missing": ("{tiny}", ["data.train={tmp}/none.jsonl"], ["gpo_tiny.yaml: data.train:", "none.jsonl", "no such file"]),
    "prompts-empty": ("{tiny}", ["data.train={tmp}/empty.jsonl"], ["data.train:", "empty.jsonl", "no rows"]),
    "prompts-not-utf8": ("{tiny}", ["data.train={tmp}/latin1.jsonl"], ["gpo_tiny.yaml: data.train:", "latin1.jsonl:2:", "UTF-8"]),
    "prompt-a-number": ("{tiny}", ["data.train={tmp}/number.jsonl"], ["data.train:", "number.jsonl:2:", "prompt:"]),
    "prompts-cut-short": ("{tiny}", ["data.train={tmp}/cut.jsonl"], ["cut.jsonl:2:", "invalid JSON"]),
    "eval-prompts-not-utf8": (
        "{tiny}",
        ["data.train={tmp}/good.jsonl", "data.eval={tmp}/latin1.jsonl"],
        ["gpo_tiny.yaml: data.eval:", "latin1.jsonl:2:", "UTF-8"],
    ),
    "policy-pickled": (
        "{tiny}",
        ["policy.model={tmp}/pickled_policy", "policy.warmup.steps=0"],
        ["pickled_policy", "never unpickles"],
    ),
    "output-dir-under-a-file": ("{tiny}", ["output_dir={tmp}/good.jsonl/run"], ["gpo_tiny.yaml", "output_dir", "is a file"]),
    "recipe-missing": ("{tmp}/none.yaml", [], ["none.yaml", "no such recipe"]),
    "recipe-base-missing": ("{tmp}/bad_base.yaml", [], ["bad_base.yaml", "nowhere_recipe"]),
    "recipe-base-not-yaml": ("{tmp}/broken_base.yaml", [], ["broken.yaml:3", "YAML"]),
    "recipe-not-yaml": ("{tmp}/broken.yaml", [], ["broken.yaml:3", "YAML"]),
    "recipe-not-utf8": ("{tmp}/latin1.yaml", [], ["latin1.yaml", "UTF-8"]),
}


@pytest.mark.parametrize("case", list(RECIPE_CASES), ids=list(RECIPE_CASES))
def test_bad_recipes_stop_before_output_dir_is_touched(tmp_path, judge, case):
    recipe, overrides, needles = RECIPE_CASES[case]
    names = _prepared(tmp_path)
    before = snapshot(tmp_path)
    result = run("train-gpo", recipe.format(**names), *_small(judge, Path(names["out"])), *(o.format(**names) for o in overrides))
    assert_one_line_error(result, *needles)
    assert snapshot(tmp_path) == before and result.stdout == ""


# ----------------------------------------------------------------------------------------------------
# --resume auto with a changed recipe


@pytest.fixture(scope="module")
def finished(tmp_path_factory, judge) -> Path:
    out = tmp_path_factory.mktemp("gpo") / "run"
    result = run("train-gpo", TINY, *_small(judge, out))
    assert result.returncode == 0, result.stderr
    return out


RESUME_CASES = {
    # name: (override, the saved file it contradicts, the key named)
    "fewer-samples": ("generation.k=2", "iter-1/generations.jsonl", "generation.k"),
    "other-temperature": ("generation.temperature=0.5", "iter-0/eval_generations.jsonl", "generation.temperature"),
    "other-prompts": ("data.max_prompts=3", "iter-1/generations.jsonl", "prompts (data.train)"),
    "other-eval-samples": ("eval.samples=3", "iter-0/eval_generations.jsonl", "eval.samples"),
    "other-judge-length": ("judge.max_length=64", "iter-1/scores.jsonl", "judge.max_length"),
}


def _unfinished(finished: Path, tmp_path: Path) -> Path:
    """The finished run as if stopped after scoring iteration 1: its samples and scores are saved."""
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    (out / "iter-1" / "metrics.json").unlink()
    return out


@pytest.mark.parametrize("case", list(RESUME_CASES), ids=list(RESUME_CASES))
def test_resume_refuses_saved_samples_made_with_other_settings(tmp_path, judge, finished, case):
    """K = 3 generations must not be trained on as K = 2 ones (nor eval samples, prompts or scores of other settings)."""
    override, saved, key = RESUME_CASES[case]
    out = _unfinished(finished, tmp_path)
    before = snapshot(tmp_path)
    result = run("train-gpo", TINY, *_small(judge, out), override, "--resume", "auto")
    line = assert_one_line_error(result, str(out / saved), key, "--overwrite")
    assert "was made with" in line
    assert snapshot(tmp_path) == before


def test_resume_with_the_same_recipe_reuses_the_saved_samples(tmp_path, judge, finished):
    out = _unfinished(finished, tmp_path)
    saved = snapshot(out / "iter-1" / "generations.jsonl", out / "iter-1" / "scores.jsonl")
    result = run("train-gpo", TINY, *_small(judge, out), "--resume", "auto")
    assert result.returncode == 0, result.stderr
    assert snapshot(out / "iter-1" / "generations.jsonl", out / "iter-1" / "scores.jsonl") == saved
    settings = json.loads((out / "iter-1" / "generations.settings.json").read_text())
    assert settings["generation.k"] == 3 and settings["prompts (data.train)"]["count"] == 4
    assert json.loads((out / "iter-1" / "metrics.json").read_text())["iteration"] == 1
