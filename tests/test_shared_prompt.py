"""Shared-prompt rows: a prompt that several sequences start with is computed once, and each sequence's
embedding, gate, loss and every gradient equal those of the sequence run alone (float64 reference) or in
today's padded batches, on Llama-, Qwen2- and Gemma-shaped tiny configs, sliding windows included."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_packing import ATOL, family_model, one_at_a_time_float64

from gpmctl.data.records import PreferenceRecord
from gpmctl.data.tokenize import EncodedSequence, SequenceEncoder, collate_pairs, pack_groups, shared_prefix_length
from gpmctl.models.sources import load_tokenizer
from gpmctl.train.reward import pair_loss

# Every family packing meets, shared prompts longer than the windows of 4, so windows cut into the prompt.
FAMILIES = ["llama", "gemma", "qwen2", "qwen2_window_4_from_layer_1", "mistral_window_4", "gemma3_alternating_window_4"]


def seq(ids, prompt_end: int) -> EncodedSequence:
    return EncodedSequence(np.asarray(ids, dtype=np.int32), prompt_end)


def test_the_shared_prefix_is_the_common_start_and_leaves_each_sequence_a_token():
    a, b = seq([5, 6, 7, 8], 1), seq([5, 6, 9], 1)
    assert shared_prefix_length([a, b]) == 2
    assert shared_prefix_length([a, seq([5, 6, 7, 8], 1)]) == 3  # equal sequences: the last token stays each one's own
    assert shared_prefix_length([a, seq([5], 0)]) == 0  # a one-token sequence has nothing to share
    assert shared_prefix_length([a]) == 0 and shared_prefix_length([a, seq([4, 6], 0)]) == 0


def groups_with_a_shared_prompt(vocab: int, seed: int = 0) -> list[list[EncodedSequence]]:
    """Three groups: K=3 behind a 13-token prompt (one response a single token, the gate inside the prompt),
    K=2 whose gate sits after the common part, and K=2 with nothing in common."""
    rng = np.random.default_rng(seed)
    tokens = lambda n: rng.integers(3, vocab, n).tolist()  # noqa: E731
    prompt = tokens(13)
    second = tokens(6)
    return [
        [seq(prompt + tokens(n), 12) for n in (5, 1, 9)],
        [seq(second + [7] + tokens(n), 7) for n in (4, 8)],  # common part: 7 tokens; prompt_end 7 is each one's own
        [seq([3] + tokens(6), 2), seq([4] + tokens(10), 4)],
    ]


@pytest.mark.parametrize("family", FAMILIES)
def test_a_shared_prompt_row_gives_each_sequence_run_alone(family):
    model = family_model(family)
    groups = groups_with_a_shared_prompt(64)
    flat = [s for g in groups for s in g]
    ref_value, ref_gate = one_at_a_time_float64(
        model, [torch.from_numpy(s.ids.astype(np.int64)) for s in flat], [s.prompt_end for s in flat]
    )
    assert model.enable_packing()
    batch = pack_groups(groups)
    separate = sum(len(s.ids) for s in flat)
    assert batch["input_ids"].shape[1] == separate - 2 * 13 - 1 * 7  # the prompts once
    with torch.no_grad():
        out = model(batch["input_ids"], prompt_end=batch["prompt_end"], row=batch["row"])
    torch.testing.assert_close(out.value, ref_value.float(), atol=ATOL, rtol=0)
    torch.testing.assert_close(out.gate, ref_gate.float(), atol=ATOL, rtol=0)
    assert ref_value.std() > 1e-3


def test_no_response_sees_another():
    model = family_model("llama")
    model.enable_packing()
    groups = groups_with_a_shared_prompt(64)
    changed = [list(g) for g in groups]
    changed[0][2] = seq(np.concatenate([groups[0][2].ids[:13], np.full(9, 40)]), 12)  # only response 3 of group 1
    with torch.no_grad():
        a, b = (model(**{k: v for k, v in pack_groups(g).items()}) for g in (groups, changed))
    others = [0, 1, *range(3, 7)]
    torch.testing.assert_close(a.value[others], b.value[others], atol=1e-6, rtol=0)
    torch.testing.assert_close(a.gate, b.gate, atol=1e-6, rtol=0)  # every gate reads inside the prompt or its own part
    assert (a.value[2] - b.value[2]).abs().max() > 1e-3


WORDS = "the a cat dog sat ran on under mat tree quickly slowly red blue big small".split()


def records(n: int, seed: int) -> list[PreferenceRecord]:
    """Multi-turn prompts longer than the responses, as in HH-RLHF; some responses start alike."""
    rng = np.random.default_rng(seed)
    text = lambda k: " ".join(rng.choice(WORDS, k))  # noqa: E731
    out = []
    for i in range(n):
        prompt = [
            {"role": "user", "content": text(12 + i)},
            {"role": "assistant", "content": text(5)},
            {"role": "user", "content": text(6)},
        ]
        start = text(2) if i % 2 else ""
        out.append(
            PreferenceRecord(
                prompt=prompt,
                chosen=[{"role": "assistant", "content": f"{start} {text(3 + i)}".strip()}],
                rejected=[{"role": "assistant", "content": f"{start} {text(8 - i)}".strip()}],
            )
        )
    return out


def loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "prompt_end", "row") if k in batch}
    out = model(**inputs)
    loss, _ = pair_loss(model, batch, model.head.tau, use_margin=False)
    loss.backward()
    return out, loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("family", ["llama", "qwen2_window_4_from_layer_1", "gemma", "gemma3_alternating_window_4"])
@pytest.mark.parametrize("truncation,max_length", [("right", 512), ("right", 40), ("left", 40)])
def test_shared_prompt_training_batches_give_the_padded_values_gates_loss_and_every_gradient(family, truncation, max_length):
    tok = load_tokenizer("tiny")
    encoder = SequenceEncoder(tok, max_length, truncation=truncation)
    pairs = [encoder.encode_pair(r) for r in records(5, seed=1)]
    if max_length == 40:
        assert encoder.truncated >= 4  # the cut is exercised, on both sides
    model = family_model(family, vocab_size=len(tok))
    ref_out, ref_loss, ref_grads = loss_and_grads(model, collate_pairs(pairs, tok.pad_token_id))  # today's padded batch
    assert model.enable_packing()
    shared = collate_pairs(pairs, tok.pad_token_id, packed=True, share_prompt=True)
    separate = collate_pairs(pairs, tok.pad_token_id, packed=True)
    if truncation == "right":  # the prompt is the larger part; left cuts start each sequence at another token
        assert shared["input_ids"].shape[1] < 0.85 * separate["input_ids"].shape[1]
    out, loss, grads = loss_and_grads(model, shared)
    torch.testing.assert_close(out.value, ref_out.value, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.gate, ref_out.gate, atol=ATOL, rtol=0)
    torch.testing.assert_close(loss, ref_loss, atol=ATOL, rtol=0)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=ATOL, rtol=1e-4, msg=name)
    assert ref_out.value.std() > 1e-3


def test_gradient_checkpointing_keeps_packed_and_shared_rows_exact():
    """Without a cache, transformers infers packed sequences from the position ids and would build its own
    [T, T] mask; packed rows pass an all-ones mask so that each block's mask still comes from the row."""
    tok = load_tokenizer("tiny")
    encoder = SequenceEncoder(tok, 512)
    pairs = [encoder.encode_pair(r) for r in records(4, seed=2)]
    model = family_model("qwen2", vocab_size=len(tok)).train()  # checkpointing recomputes in training mode; no dropout
    ref_out, ref_loss, ref_grads = loss_and_grads(model, collate_pairs(pairs, tok.pad_token_id))
    model.enable_packing()
    model.gradient_checkpointing_enable()
    for share in (False, True):
        out, loss, grads = loss_and_grads(model, collate_pairs(pairs, tok.pad_token_id, packed=True, share_prompt=share))
        torch.testing.assert_close(out.value, ref_out.value, atol=ATOL, rtol=0)
        torch.testing.assert_close(loss, ref_loss, atol=ATOL, rtol=0)
        for name in grads:
            torch.testing.assert_close(grads[name], ref_grads[name], atol=ATOL, rtol=1e-4, msg=name)


@pytest.mark.parametrize("gate", [True, False])
def test_the_scorer_embeds_each_prompt_once_with_the_padded_values(gate):
    """Scorer.embed (score, eval, the GPO judge): shared-prompt rows and length-sorted padded batches agree,
    for K = 4 responses per prompt and batches that end inside and between groups."""
    from gpmctl.models.embed import Scorer, resolve_share_prompt
    from gpmctl.models.heads import HeadConfig
    from gpmctl.models.model import PreferenceModel

    tok = load_tokenizer("tiny")
    base = family_model("qwen2", vocab_size=len(tok))
    model = PreferenceModel(base.backbone, HeadConfig(kind="gpm", dim=8, gate=gate), init_std=0.3).eval()
    encoder = SequenceEncoder(tok, 64)
    recs = records(6, seed=3)
    prompts = [r.prompt for r in recs]
    responses = [[r.chosen, r.rejected, r.chosen[:0] + [{"role": "assistant", "content": "ok"}], r.rejected] for r in recs]
    padded = Scorer(model, encoder, 5, "cpu", share_prompt=False).embed(prompts, responses)
    assert resolve_share_prompt(model, "auto", "test")
    shared = Scorer(model, encoder, 5, "cpu", share_prompt=True).embed(prompts, responses)
    torch.testing.assert_close(shared[0], padded[0], atol=ATOL, rtol=0)
    if gate:
        torch.testing.assert_close(shared[1], padded[1], atol=ATOL, rtol=0)
    else:
        assert shared[1] is None and padded[1] is None


def test_encoders_fall_back_and_share_prompt_true_is_refused_for_them():
    from transformers import AutoModel, BertConfig

    from gpmctl.errors import ConfigError
    from gpmctl.models.embed import resolve_share_prompt
    from gpmctl.models.heads import HeadConfig
    from gpmctl.models.model import PreferenceModel

    bert = AutoModel.from_config(
        BertConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2),
        attn_implementation="sdpa",
    )
    model = PreferenceModel(bert, HeadConfig(pool="first"))
    assert resolve_share_prompt(model, "auto", "m") is False and resolve_share_prompt(model, "false", "m") is False
    with pytest.raises(ConfigError, match="m: share_prompt=true: the backbone cannot run packed rows"):
        resolve_share_prompt(model, "true", "m")


def test_train_rm_refuses_share_prompt_true_without_packing(tmp_path):
    from gpmctl.config import load_recipe
    from gpmctl.errors import ConfigError
    from gpmctl.train.reward import train_reward_model

    recipe = load_recipe(
        "recipes/cyclic_tiny_gpm.yaml",
        [
            f"output_dir={tmp_path / 'run'}",
            "data.train=cyclic:train?num_prompts=10",
            "train.packing=false",
            "train.share_prompt=true",
        ],
    )
    with pytest.raises(ConfigError, match="train.share_prompt=true needs packed batches"):
        train_reward_model(recipe)
    assert not (tmp_path / "run" / "log.jsonl").exists()
