"""train-rm end to end on the embedded tiny model: outputs, exact resume, the cyclic headline."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from gpmctl.config import load_recipe
from gpmctl.data.batches import epoch_batches
from gpmctl.data.split import split_by_prompt
from gpmctl.models.io import load_model
from gpmctl.train.reward import Preempted, train_reward_model

SMALL_DATA = ["data.train=cyclic:train?num_prompts=24", "data.eval=cyclic:test?num_prompts=24"]
SMALL_MODEL = ["model.tiny.hidden_size=32", "model.tiny.intermediate_size=64", "model.tiny.num_layers=1"]


def small_recipe(tmp_path, *extra: str, name: str = "run"):
    overrides = [
        f"output_dir={tmp_path / name}",
        *SMALL_DATA,
        *SMALL_MODEL,
        "train.batch_size=8",
        "train.epochs=2",
        "train.logging_steps=2",
        "train.keep_best=false",
        *extra,
    ]
    return load_recipe("recipes/cyclic_tiny_gpm.yaml", overrides)


def test_run_folder_holds_model_recipe_environment_and_logs(tmp_path):
    result = train_reward_model(small_recipe(tmp_path, "model.gate=true", "train.eval_steps=5"))
    out = result.output_dir
    for name in (
        "recipe.yaml",
        "environment.json",
        "log.jsonl",
        "metrics.json",
        "config.json",
        "model.safetensors",
        "preference_head.json",
    ):
        assert (out / name).is_file(), name
    events = [json.loads(line)["event"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert "train" in events and "eval" in events and events[-1] == "done"
    assert json.loads((out / "environment.json").read_text())["versions"]["torch"]
    assert load_recipe(out / "recipe.yaml").model.gate is True  # the saved recipe is itself a valid recipe
    model = load_model(out)
    assert model.head.gate and model.head.dim == 8
    assert 0.0 <= result.final_metrics["accuracy"] <= 1.0 and result.final_metrics["pairs"] > 0


def test_resumed_run_ends_with_the_same_weights_as_an_uninterrupted_run(tmp_path):
    extra = ["train.grad_accum=2", "train.save_steps=3", "train.eval_steps=4"]
    full = train_reward_model(small_recipe(tmp_path, *extra, name="full"))
    with pytest.raises(Preempted):
        train_reward_model(small_recipe(tmp_path, *extra, name="cut"), stop_after_steps=5)
    resumed = train_reward_model(small_recipe(tmp_path, *extra, name="cut"), resume="auto")
    assert resumed.steps == full.steps
    a, b = load_file(full.output_dir / "model.safetensors"), load_file(resumed.output_dir / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert resumed.final_metrics == full.final_metrics


def test_a_finished_run_is_not_overwritten_without_asking(tmp_path):
    from gpmctl.errors import ConfigError

    recipe = small_recipe(tmp_path, "train.max_steps=2")
    train_reward_model(recipe)
    with pytest.raises(ConfigError, match="--resume auto"):
        train_reward_model(recipe)
    train_reward_model(recipe, overwrite=True)


def test_epoch_batches_are_deterministic_and_cover_the_data():
    a, b = epoch_batches(50, 8, seed=1, epoch=3), epoch_batches(50, 8, seed=1, epoch=3)
    assert a == b and sorted(i for batch in a for i in batch) == list(range(50))
    assert epoch_batches(50, 8, seed=1, epoch=4) != a
    ranks = [epoch_batches(50, 4, seed=1, epoch=0, rank=r, world=2) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1])  # ranks stay in lockstep
    assert not {i for batch in ranks[0] for i in batch} & {i for batch in ranks[1] for i in batch}


def test_eval_accuracy_takes_the_side_a_soft_label_prefers():
    from gpmctl.train.reward import pair_metrics

    scores = [2.0, -1.0, 0.5, -3.0, 0.0, 0.7, -0.4]
    labels = [1.0, 0.2, 0.5, 0.9, 0.0, 0.3, 0.1]
    kinds = ["a", "a", "a", "b", "b", "b", "b"]
    tau = 0.5
    metrics = pair_metrics(torch.tensor(scores, dtype=torch.float64), tau, [{"kind": k} for k in kinds], labels)

    def accuracy(rows):  # the slow way: a label above 1/2 asks s > 0, below asks s < 0, exactly 1/2 asks nothing
        decided = [(s, y) for s, y in rows if y != 0.5]
        return sum((s > 0) if y > 0.5 else (s < 0) for s, y in decided) / len(decided)

    def log_sigmoid(x):
        return -math.log1p(math.exp(-x))

    assert metrics["accuracy"] == accuracy(zip(scores, labels)) == 3 / 6
    assert metrics["accuracy/b"] == accuracy([(s, y) for s, y, k in zip(scores, labels, kinds) if k == "b"]) == 1 / 4
    assert metrics["accuracy_pairs"] == 6 and metrics["pairs"] == 7
    loss = sum(-(y * log_sigmoid(s / tau) + (1 - y) * log_sigmoid(-s / tau)) for s, y in zip(scores, labels)) / len(scores)
    assert metrics["loss"] == pytest.approx(loss, abs=1e-12)  # the training loss, soft labels included


def test_split_by_prompt_never_puts_a_prompt_on_both_sides():
    from gpmctl.data.sources import read_source

    records = list(read_source("cyclic:train?num_prompts=60"))
    train, held = split_by_prompt(records, 0.25, seed=0)
    prompts = lambda rs: {json.dumps(r.prompt) for r in rs}  # noqa: E731
    assert held and train and not prompts(train) & prompts(held)
    assert split_by_prompt(records, 0.25, seed=0)[1] == held


@pytest.mark.parametrize("kind,bound", [("gpm", 0.95), ("bt", 0.70)])
def test_cyclic_recipes_reproduce_the_headline(tmp_path, kind, bound):
    """Paper Table 1 in miniature: the GPM learns the held-out cycles, no BT model can."""
    recipe = load_recipe(f"recipes/cyclic_tiny_{kind}.yaml", [f"output_dir={tmp_path / kind}", "train.eval_steps=1000"])
    accuracy = train_reward_model(recipe).final_metrics["accuracy"]
    assert accuracy >= bound if kind == "gpm" else accuracy <= bound


@pytest.mark.parametrize("arch", ["bert", "qwen2"])
def test_a_local_backbone_folder_trains_and_reloads(tmp_path, arch):
    """Any AutoModel backbone from a local folder: an encoder (BERT) and another decoder family (Qwen2)."""
    from transformers import AutoModel, BertConfig, Qwen2Config

    from gpmctl.models.sources import load_tokenizer

    tok = load_tokenizer("tiny")
    shape = dict(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=128,
        pad_token_id=tok.pad_token_id,
    )
    config = BertConfig(**shape) if arch == "bert" else Qwen2Config(num_key_value_heads=1, **shape)
    folder = tmp_path / arch
    AutoModel.from_config(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    pool = "first" if arch == "bert" else "last"
    recipe = load_recipe(
        "recipes/cyclic_tiny_gpm.yaml",
        [
            f"output_dir={tmp_path / 'run'}",
            f"model.backbone={folder}",
            f"model.pool={pool}",
            f"model.gate={str(arch != 'bert').lower()}",  # no gate on an encoder
            *SMALL_DATA,
            "train.max_steps=3",
            "train.batch_size=4",
        ],
    )
    result = train_reward_model(recipe)
    model = load_model(result.output_dir)
    assert type(model.backbone).__name__ == ("BertModel" if arch == "bert" else "Qwen2Model")
    assert model.head.pool == pool and result.final_metrics["pairs"] > 0


def test_lora_trains_adapters_and_heads_only_and_saves_merged_weights(tmp_path):
    pytest.importorskip("peft")
    from safetensors import safe_open

    from gpmctl.data.sources import read_source
    from gpmctl.data.tokenize import SequenceEncoder, collate_pairs
    from gpmctl.models.build import build_model
    from gpmctl.models.sources import load_tokenizer
    from gpmctl.train.reward import pair_loss

    recipe = small_recipe(
        tmp_path, "model.lora_rank=4", "model.lora_alpha=8", "model.gate=true", "train.lr=1e-2", "train.max_steps=4"
    )
    tok = load_tokenizer("tiny")
    fresh = build_model(recipe.model, tok, seed=0)
    trainable = {n for n, p in fresh.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith(("value_head", "prompt_head")) for n in trainable)
    result = train_reward_model(recipe)
    with safe_open(str(result.output_dir / "model.safetensors"), "pt") as f:
        assert not any("lora" in k or "base_model" in k for k in f.keys())  # merged: loads without peft
    model = load_model(result.output_dir, dtype="float32")
    encoder = SequenceEncoder(tok, 128)
    pairs = [encoder.encode_pair(r) for r in read_source("cyclic:test?num_prompts=24", limit=16)]
    _, merged = pair_loss(model, collate_pairs(pairs, tok.pad_token_id), model.head.tau, False)
    assert merged.abs().max() > 0
    # Merging is exact: a LoRA model with non-zero adapters scores as its saved (merged) folder does.
    from gpmctl.models.io import save_model

    with torch.no_grad():
        for name, p in fresh.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    save_model(fresh, tmp_path / "merged", tok)
    batch = collate_pairs(pairs, tok.pad_token_id)
    with torch.no_grad():
        _, with_adapters = pair_loss(fresh.eval(), batch, 0.1, False)
        _, from_folder = pair_loss(load_model(tmp_path / "merged", dtype="float32"), batch, 0.1, False)
    assert (with_adapters - from_folder).abs().max() < 1e-5 and with_adapters.abs().max() > 1e-3
    again = train_reward_model(
        small_recipe(
            tmp_path,
            "model.lora_rank=4",
            "model.lora_alpha=8",
            "model.gate=true",
            "train.lr=1e-2",
            "train.max_steps=4",
            name="again",
        )
    )
    a, b = load_model(again.output_dir, dtype="float32"), model
    for (n, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), n  # deterministic


def test_a_batch_job_log_gets_one_plain_line_per_logging_interval(tmp_path):
    """stderr not a terminal (a Slurm log): no progress bar, a `key=value` line every train.logging_steps steps,
    with the numbers of the run log."""
    from tests.shell import run

    out = tmp_path / "run"
    done = run(
        "train-rm",
        "cyclic_tiny_gpm",
        f"output_dir={out}",
        SMALL_DATA[0],
        "data.eval=null",
        *SMALL_MODEL,
        "train.batch_size=8",
        "train.max_steps=6",
        "train.logging_steps=2",
    )
    assert done.returncode == 0, done.stderr
    assert "\x1b[" not in done.stderr  # no terminal escape codes
    lines = [line.split("] train ", 1)[1] for line in done.stderr.splitlines() if "] train step=" in line]
    fields = [dict(field.split("=", 1) for field in line.split()) for line in lines]
    assert [f["step"] for f in fields] == ["2/6", "4/6", "6/6"]
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    records = [r for r in records if r["event"] == "train"]
    for f, record in zip(fields, records, strict=True):
        assert float(f["loss"]) == pytest.approx(record["loss"], abs=5e-5)
        assert float(f["accuracy"]) == pytest.approx(record["accuracy"], abs=5e-5)
        assert float(f["lr"]) == pytest.approx(record["lr"], rel=1e-3)
        assert float(f["pairs/s"]) > 0 and float(f["epoch"]) > 0
        hours, minutes, seconds = map(int, f["eta"].split(":"))
        assert minutes < 60 and seconds < 60
    assert fields[-1]["eta"] == "0:00:00"
