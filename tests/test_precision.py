"""Mixed precision trains float32 weights: bf16 autocast over fp32 weights and optimizer state moves the
weights as an fp32 run does, where an optimizer stepping bf16 weights loses every small update."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import load_file

from gpmctl.config import load_recipe
from gpmctl.models.build import build_model
from gpmctl.models.io import model_state_dict
from gpmctl.models.sources import load_tokenizer
from gpmctl.train.reward import train_reward_model

STEPS, LR = 6, 1e-5  # AdamW moves an entry by ~LR a step: far below half a bf16 step of these weights (~1e-3)
SMALL = [
    "data.train=cyclic:train?num_prompts=12",
    "data.eval=null",
    "model.tiny.hidden_size=32",
    "model.tiny.intermediate_size=64",
    "model.tiny.num_layers=1",
    "train.batch_size=8",
    f"train.max_steps={STEPS}",
    f"train.lr={LR}",
    "train.warmup_ratio=0",
    "train.scheduler=constant",
    "train.keep_best=false",
]


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    """accelerate keeps one precision per process: let each run here (and the tests after) choose its own."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    yield
    AcceleratorState._reset_state()


def _trained(tmp_path, name: str, *extra: str) -> dict[str, torch.Tensor]:
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()  # two precisions in one test
    recipe = load_recipe("recipes/cyclic_tiny_gpm.yaml", [f"output_dir={tmp_path / name}", *SMALL, *extra])
    return load_file(train_reward_model(recipe).output_dir / "model.safetensors")


def test_bf16_training_moves_fp32_weights_as_an_fp32_run_does(tmp_path):
    recipe = load_recipe("recipes/cyclic_tiny_gpm.yaml", SMALL)
    fp32_model = dataclasses.replace(recipe.model, dtype="float32")
    initial = model_state_dict(build_model(fp32_model, load_tokenizer("tiny"), recipe.train.seed))
    fp32 = _trained(tmp_path, "fp32", "train.precision=fp32")
    # model.dtype=bfloat16 is what `auto` loads on a bf16 GPU; the optimizer must still step float32 weights
    bf16 = _trained(tmp_path, "bf16", "train.precision=bf16", "model.dtype=bfloat16")
    for name, w0 in initial.items():
        if w0.ndim < 2 or "embed" in name:  # norms start at exactly 1.0; unseen token rows get no gradient
            continue
        assert bf16[name].dtype == torch.float32, name
        reference, update = (fp32[name].double() - w0.double()), (bf16[name].double() - w0.double())
        moved = reference != 0
        assert moved.double().mean() > 0.99, name
        assert (update[moved] != 0).double().mean() > 0.99, name  # an optimizer stepping bf16 weights: ~0.5% here
        # the same steps up to bf16 rounding of the forward: |a - b| / |a| measured ~0.1 here
        assert float((update - reference).norm() / reference.norm()) < 0.25, name


def test_training_weights_are_float32_unless_the_engine_keeps_fp32_copies():
    from gpmctl.models.build import training_dtype

    for name in ("auto", "float32", "bfloat16", "float16"):
        assert training_dtype(name, "cpu", engine_keeps_fp32_copy=False) == torch.float32
    assert training_dtype("bfloat16", "cpu", engine_keeps_fp32_copy=True) == torch.bfloat16  # DeepSpeed mixed precision


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory):
    from gpmctl.config import ModelConfig, TinyBackbone
    from gpmctl.models.io import save_model

    out = tmp_path_factory.mktemp("judge")
    tok = load_tokenizer("tiny")
    cfg = ModelConfig(kind="gpm", dim=8, tau=0.1, tiny=TinyBackbone(hidden_size=32, num_layers=1, intermediate_size=64))
    save_model(build_model(cfg, tok, seed=0), out, tok)
    return out


def test_gpo_trains_a_bf16_policy_in_float32(tmp_path, judge_dir):
    from gpmctl.config import load_gpo_recipe
    from gpmctl.train.gpo import train_gpo

    overrides = [
        f"output_dir={tmp_path / 'gpo'}",
        f"judge.model={judge_dir}",
        "judge.train_recipe=null",
        "data.eval=null",
        "data.max_prompts=4",
        "generation.k=2",
        "generation.max_new_tokens=3",
        "policy.tiny.hidden_size=32",
        "policy.tiny.num_layers=1",
        "policy.tiny.intermediate_size=64",
        "policy.warmup.steps=0",
        "objective.iterations=1",
        "objective.train_on=all",
        "train.batch_size=4",
        "train.epochs=2",
        "train.optimizer=adamw",
        "train.lr=1e-5",
        "train.warmup_ratio=0",
        "train.scheduler=constant",
        "train.precision=bf16",
        "policy.dtype=bfloat16",
    ]
    train_gpo(load_gpo_recipe("recipes/gpo_tiny.yaml", overrides))  # the autouse fixture gave it a fresh precision
    before = load_file(tmp_path / "gpo" / "iter-0" / "policy" / "model.safetensors")
    after = load_file(tmp_path / "gpo" / "iter-1" / "policy" / "model.safetensors")
    for name in (n for n, w in before.items() if w.ndim == 2 and "proj" in n):
        assert after[name].dtype == torch.float32, name
        assert (after[name] != before[name]).double().mean() > 0.99, name  # stepping bf16 weights: none move
