"""Frozen-backbone training on cached features (gpmctl/train/features.py) and last-N-layers fine-tuning."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from gpmctl.cli import app
from gpmctl.config import ModelConfig, TinyBackbone, load_recipe
from gpmctl.errors import ConfigError, ModelError
from gpmctl.models.build import build_model, freeze_backbone
from gpmctl.models.io import load_model
from gpmctl.models.model import Hidden
from gpmctl.models.sources import load_tokenizer
from gpmctl.train.features import extract_features
from gpmctl.train.reward import train_reward_model

SMALL = [
    "data.train=cyclic:train?num_prompts=24",
    "data.eval=cyclic:test?num_prompts=24",
    "model.tiny.hidden_size=32",
    "model.tiny.intermediate_size=64",
    "model.tiny.num_layers=2",
    "train.batch_size=8",
    "train.grad_accum=2",
    "train.max_steps=12",
    "train.lr=1e-2",
    "train.logging_steps=2",
    "train.eval_steps=5",
    "train.keep_best=false",
]
HEAD_TOLERANCE = 1e-5
"""Cached and uncached training differ only in float rounding of the backbone features (other padding)."""


@pytest.fixture(autouse=True)
def feature_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GPMCTL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "features"


def frozen_recipe(tmp_path, name: str, *extra: str):
    return load_recipe(
        "recipes/cyclic_tiny_gpm.yaml", [f"output_dir={tmp_path / name}", *SMALL, "model.freeze_backbone=true", *extra]
    )


def head_weights(folder) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(str(folder / "model.safetensors")).items() if k.endswith("_head.weight")}


@pytest.mark.parametrize(
    "head", [["model.kind=gpm", "model.dim=4", "model.gate=true"], ["model.kind=bt"]], ids=["gpm-gate", "bt"]
)
def test_head_trained_on_cached_features_equals_the_full_model_with_a_frozen_backbone(tmp_path, feature_cache, head):
    # Through the CLI: model.freeze_backbone dispatches to the feature path.
    cli = CliRunner().invoke(
        app,
        [
            "train-rm",
            "recipes/cyclic_tiny_gpm.yaml",
            f"output_dir={tmp_path / 'cached'}",
            *SMALL,
            "model.freeze_backbone=true",
            *head,
        ],
    )
    assert cli.exit_code == 0, cli.output
    assert len(list(feature_cache.glob("*.safetensors"))) == 1
    full = train_reward_model(
        frozen_recipe(tmp_path, "full", *head), cached_features=False
    )  # every step runs the frozen backbone

    cached_heads, full_heads = head_weights(tmp_path / "cached"), head_weights(tmp_path / "full")
    assert cached_heads.keys() == full_heads.keys() and cached_heads
    initial = build_model(frozen_recipe(tmp_path, "x", *head).model, load_tokenizer("tiny"), 42)
    for name, weight in cached_heads.items():
        assert not torch.equal(weight, initial.state_dict()[name])  # the head did train
        torch.testing.assert_close(weight, full_heads[name], atol=HEAD_TOLERANCE, rtol=0)
    # The backbone is saved unchanged, and both runs log the same curve.
    cached_model, full_model = load_model(tmp_path / "cached"), load_model(tmp_path / "full")
    for (name, a), (_, b) in zip(cached_model.backbone.state_dict().items(), initial.backbone.state_dict().items()):
        assert torch.equal(a, b), name
    metrics = json.loads((tmp_path / "cached" / "metrics.json").read_text())
    assert metrics["steps"] == full.steps == 12 and metrics["timing"]["features_cached"] is False
    assert metrics["model_eval"]["accuracy"] == pytest.approx(full.final_metrics["accuracy"])
    assert metrics["model_eval"]["loss"] == pytest.approx(full.final_metrics["loss"], abs=1e-5)

    def curve(folder):
        return [
            (e["step"], e["loss"])
            for e in map(json.loads, (folder / "log.jsonl").read_text().splitlines())
            if e["event"] == "train"
        ]

    assert [s for s, _ in curve(tmp_path / "cached")] == [s for s, _ in curve(tmp_path / "full")]
    assert [loss for _, loss in curve(tmp_path / "cached")] == pytest.approx(
        [loss for _, loss in curve(tmp_path / "full")], abs=1e-5
    )
    del cached_model, full_model


def test_second_run_reads_the_cache_and_gives_the_identical_head(tmp_path, feature_cache):
    first = train_reward_model(frozen_recipe(tmp_path, "a", "model.gate=true"))
    # Another head and seed: the seed moves neither the tiny backbone (model.tiny is seeded by train.seed, so
    # keep it) nor the set of sequences; only the head differs, and the features come from the file.
    second = train_reward_model(frozen_recipe(tmp_path, "b", "model.gate=true"))
    other_head = train_reward_model(frozen_recipe(tmp_path, "c", "model.kind=bt", "model.eos=overwrite"))  # the same tokens
    assert first.timing["features_cached"] is False and first.timing["features_s"] > 0
    assert second.timing["features_cached"] is True and other_head.timing["features_cached"] is True
    assert len(list(feature_cache.glob("*.safetensors"))) == 1
    for name, weight in head_weights(tmp_path / "a").items():
        assert torch.equal(weight, head_weights(tmp_path / "b")[name])
    assert second.final_metrics == first.final_metrics
    # Another backbone never reuses these features.
    train_reward_model(frozen_recipe(tmp_path, "d", "model.tiny.hidden_size=16", "model.tiny.intermediate_size=32"))
    assert len(list(feature_cache.glob("*.safetensors"))) == 2


def test_feature_head_gives_the_model_outputs(tmp_path):
    from gpmctl.data.tokenize import EncodedSequence, pad_sequences

    model = build_model(frozen_recipe(tmp_path, "x", "model.gate=true").model, load_tokenizer("tiny"), 0).eval()
    g = torch.Generator().manual_seed(0)
    seqs = [
        EncodedSequence(torch.randint(3, 90, (n,), generator=g).numpy().astype("int32"), prompt_end=n // 2) for n in (5, 12, 9)
    ]
    features = extract_features(model, seqs, pad_id=0)
    from_features = model(hidden=Hidden(features.read, features.prompt))
    batch = pad_sequences(seqs, pad_id=0)
    with torch.no_grad():
        direct = model(batch["input_ids"], batch["attention_mask"], batch["prompt_end"])
    torch.testing.assert_close(from_features.value, direct.value, atol=1e-5, rtol=0)
    torch.testing.assert_close(from_features.gate, direct.gate, atol=1e-5, rtol=0)


def test_only_the_last_layers_the_final_norm_and_the_head_get_gradients():
    config = ModelConfig(
        kind="gpm", dim=4, gate=True, train_last_layers=1, tiny=TinyBackbone(hidden_size=32, intermediate_size=64, num_layers=3)
    )
    model = build_model(config, load_tokenizer("tiny"), 0)
    ids = torch.randint(3, 90, (4, 10))
    out = model(ids, torch.ones_like(ids), torch.full((4,), 3))
    g = torch.Generator().manual_seed(0)  # random weights: the gate's plain sum is constant (softmax)
    (
        (out.value * torch.randn(out.value.shape, generator=g)).sum()
        + (out.gate * torch.randn(out.gate.shape, generator=g)).sum()
    ).backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert with_grad == trainable
    assert {n.split(".")[0] for n in trainable} == {"backbone", "value_head", "prompt_head"}
    backbone = {n.removeprefix("backbone.") for n in trainable if n.startswith("backbone.")}
    assert backbone and all(n.startswith("layers.2.") or n == "norm.weight" for n in backbone)
    assert "norm.weight" in backbone

    frozen = build_model(ModelConfig(kind="bt", freeze_backbone=True), load_tokenizer("tiny"), 0)
    assert {n for n, p in frozen.named_parameters() if p.requires_grad} == {"value_head.weight"}


def test_last_layers_of_an_encoder_and_too_many_layers():
    from transformers import BertConfig, BertModel

    bert = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32))
    freeze_backbone(bert, 2)
    trainable = {n for n, p in bert.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("encoder.layer.1.", "encoder.layer.2.")) for n in trainable)
    with pytest.raises(ModelError, match="has 3 layers"):
        freeze_backbone(bert, 4)


def test_frozen_backbone_excludes_lora_last_layers_and_several_processes(tmp_path):
    for extra in ("model.lora_rank=4", "model.train_last_layers=1", "launch.num_processes=2"):
        with pytest.raises(ConfigError, match="model.freeze_backbone"):
            frozen_recipe(tmp_path, "x", extra)
    with pytest.raises(ConfigError, match="--overwrite"):
        train_reward_model(frozen_recipe(tmp_path, "x"), resume="auto")


def test_overwrite_after_a_template_that_ends_the_turn_with_eos_is_warned_of_on_a_frozen_backbone(tmp_path, capsys):
    """ChatML with EOS = <|im_end|> (SmolLM2, Qwen): `overwrite` sets the newline after <|im_end|> to EOS again."""
    import copy

    from gpmctl.data.tokenize import SequenceEncoder
    from gpmctl.train.reward import load_pairs

    recipe = frozen_recipe(tmp_path, "x")
    chatml = copy.deepcopy(load_tokenizer("tiny"))
    chatml.eos_token = "<|im_end|>"
    counts = {}
    for name, tokenizer, rule in (
        ("chatml", chatml, "overwrite"),
        ("template", chatml, "template"),
        ("tiny", load_tokenizer("tiny"), "overwrite"),
    ):
        encoder = SequenceEncoder(tokenizer, 64, rule, "first_turn", "left")
        train, held = load_pairs(recipe, encoder)
        counts[name] = encoder.doubled_eos
        if name == "chatml":
            end = chatml.convert_ids_to_tokens(train[0].chosen.ids[-2:].tolist())
            assert end == ["<|im_end|>", "<|im_end|>"]
    assert counts["chatml"] == 2 * (len(train) + len(held)) and counts["template"] == counts["tiny"] == 0
    assert capsys.readouterr().err.count("end in two EOS tokens") == 1
